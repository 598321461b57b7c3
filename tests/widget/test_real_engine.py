"""One end-to-end check with the real engine: default TracInCPFast on scikit-learn digits vs an autograd oracle."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tracin_widgets.influence import ExactNearestNeighbors, TracInCPFast, TracInCPFastRandProj
from tracin_widgets.widget import InfluenceExplorer


@pytest.fixture
def digits_problem(tmp_path):
    torch.manual_seed(0)
    d = load_digits()
    x = torch.tensor(d.images[:220] / 16.0, dtype=torch.float32).unsqueeze(1)  # (n, 1, 8, 8)
    y = torch.tensor(d.target[:220], dtype=torch.long)
    train, test = TensorDataset(x[:200], y[:200]), TensorDataset(x[200:], y[200:])
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    ckpts = []
    loader = DataLoader(train, batch_size=20, shuffle=True, generator=torch.Generator().manual_seed(0))
    for epoch in range(2):
        for xb, yb in loader:
            opt.zero_grad()
            nn.functional.cross_entropy(model(xb), yb).backward()
            opt.step()
        path = tmp_path / f"checkpoint-{epoch}.pt"
        torch.save(model.state_dict(), path)
        ckpts.append(str(path))
    return model, ckpts, train, test


def final_weight_grads(model, state, x, y):
    """Per-example gradients of the summed cross-entropy w.r.t. the final layer's weight (TracInCPFast's space)."""
    m = copy.deepcopy(model)
    m.load_state_dict(torch.load(state, weights_only=True))
    m.eval()
    out = []
    for i in range(len(x)):
        m.zero_grad()
        nn.functional.cross_entropy(m(x[i : i + 1]), y[i : i + 1], reduction="sum").backward()
        out.append(m[3].weight.grad.detach().flatten().double().clone())
    return torch.stack(out)


def test_default_engine_galleries_and_self_influence_match_an_autograd_oracle(digits_problem):
    model, ckpts, train, test = digits_problem
    w = InfluenceExplorer(model, ckpts, train, test, k=5, class_names=[str(i) for i in range(10)], batch_size=64)
    w.wait(120)
    assert w.status == "ready" and w.error == ""
    assert isinstance(w.source, TracInCPFast)

    xt, yt = train.tensors
    xq, yq = test.tensors[0][:1], test.tensors[1][:1]
    scores = torch.zeros(len(xt), dtype=torch.float64)
    self_inf = torch.zeros(len(xt), dtype=torch.float64)
    for ck in ckpts:  # default loader: learning rate 1
        gt = final_weight_grads(model, ck, xt, yt)
        gq = final_weight_grads(model, ck, xq, yq)
        scores += gt @ gq[0]
        self_inf += (gt**2).sum(1)

    np.testing.assert_allclose(w.self_influence, self_inf.numpy(), rtol=1e-3, atol=1e-6)
    g = w.gallery
    assert g["query"] == {"source": "test", "index": 0}
    pro = [r["index"] for r in g["proponents"]]
    opp = [r["index"] for r in g["opponents"]]
    assert pro == torch.argsort(scores, descending=True)[:5].tolist()
    assert opp == torch.argsort(scores)[:5].tolist()
    np.testing.assert_allclose([r["score"] for r in g["proponents"]], scores[pro].numpy(), rtol=1e-3)
    with torch.no_grad():
        assert g["item"]["pred"] == int(model(xq).argmax(1))
    assert g["proponents"][0]["image"]["shape"] == [8, 8, 1]


def test_cache_dir_saves_the_factors_and_the_next_explorer_skips_the_factor_pass(digits_problem, tmp_path):
    model, ckpts, train, test = digits_problem
    phases: list[set] = []

    class Recording(InfluenceExplorer):  # sees every progress update, from the first one on
        def _publish_progress(self, info):
            phases[-1].add(info["phase"])
            super()._publish_progress(info)

    results, stats = [], []
    for _ in range(2):
        phases.append(set())
        w = Recording(model, ckpts, train, test, k=5, batch_size=64, cache_dir=tmp_path / "cache")
        w.wait(120)
        assert w.status == "ready" and w.error == ""
        results.append((w.self_influence, [r["index"] for r in w.gallery["proponents"]]))
        files = list((tmp_path / "cache").glob("tracin-fast-store-*"))
        assert len(files) == 1, files
        st = files[0].stat()
        stats.append((files[0], st.st_ino, st.st_mtime_ns))
    assert "training factors" in phases[0]
    # The second explorer loaded the factors: the same results, no factor pass, the cache file left as it was.
    assert "training factors" not in phases[1]
    assert stats[1] == stats[0]
    np.testing.assert_array_equal(results[1][0], results[0][0])
    assert results[1][1] == results[0][1]


# a neighbour-index engine is asked for its k best (EngineAdapter decides by capability, never by class name)
def test_the_random_projection_engine_gives_the_galleries_its_own_top_k(digits_problem):
    model, ckpts, train, test = digits_problem
    exact, loss = ExactNearestNeighbors(), nn.CrossEntropyLoss(reduction="sum")
    engine = TracInCPFastRandProj(model, model[3], train, ckpts, loss_fn=loss, nearest_neighbors=exact)
    w = InfluenceExplorer(model, None, train, test, engine=engine, k=5).wait(120)
    assert w.status == "ready" and w.error == ""
    batch = (test.tensors[0][:1], test.tensors[1][:1])
    for name, proponents in (("proponents", True), ("opponents", False)):
        expected = engine.influence(batch, k=5, proponents=proponents)
        assert [r["index"] for r in w.gallery[name]] == expected.indices[0].tolist()
        got = [r["score"] for r in w.gallery[name]]
        np.testing.assert_allclose(got, expected.influence_scores[0].to(torch.float64).numpy(), rtol=1e-6)
