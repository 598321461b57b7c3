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

from .conftest import train_digits


@pytest.fixture
def digits_problem(tmp_path):
    return train_digits(tmp_path, lr=0.2, epochs=2)


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


# --- the tutorial's digits (as tests/e2e/explorer_digits.ipynb): label choice, badges, per-checkpoint breakdown -------
@pytest.fixture(scope="module")
def tutorial_explorer(tmp_path_factory):
    """The e2e notebook's set-up: a seeded MLP trained 3 epochs on 400 digits, 3 checkpoints, 40 test digits."""
    torch.manual_seed(0)
    d = load_digits()
    x = torch.tensor(d.images / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(d.target, dtype=torch.long)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    tr, te = order[:400], order[400:440]
    train, test = TensorDataset(x[tr], y[tr]), TensorDataset(x[te], y[te])
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    loader = DataLoader(train, batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(0))
    folder, ckpts = tmp_path_factory.mktemp("tutorial-ckpts"), []
    for epoch in range(3):
        for xb, yb in loader:
            opt.zero_grad()
            nn.functional.cross_entropy(model(xb), yb).backward()
            opt.step()
        torch.save(model.state_dict(), folder / f"checkpoint-{epoch}.pt")
        ckpts.append(str(folder / f"checkpoint-{epoch}.pt"))
    w = InfluenceExplorer(model, ckpts, train, test, k=10, class_names=[str(i) for i in range(10)]).wait(120)
    assert w.status == "ready" and w.error == ""
    yield w
    w.close()


def show(w, source, index, explain="label"):
    w.explain = explain
    w.query = {"source": source, "index": index}
    w.wait(60)
    assert w.gallery["query"] == {"source": source, "index": index} and w.gallery["error"] is None
    return w.gallery


def checkpoint_average(w) -> np.ndarray:
    """The oracle of the suggestions: each checkpoint file loaded into a fresh copy of the model, its softmax over the
    training set, averaged over the checkpoints."""
    net = copy.deepcopy(w._examples.model)
    x = w._examples.train.tensors[0]
    probs = []
    for path in w.source.checkpoints:
        net.load_state_dict(torch.load(path, weights_only=True))
        with torch.no_grad():
            probs.append(torch.softmax(net.eval()(x).double(), 1).numpy())
    return np.mean(probs, axis=0)


def misclassified(w) -> list[int]:
    labels = w._examples.test.tensors[1].numpy()
    return np.flatnonzero(w._examples.test_preds != labels).tolist()


def test_on_misclassified_test_examples_badges_are_the_checkpoints_average_against_the_label(tutorial_explorer):
    w = tutorial_explorer
    wrong = misclassified(w)
    assert len(wrong) >= 3
    train_labels = w._examples.train.tensors[1].numpy()
    suggested = checkpoint_average(w).argmax(1)
    np.testing.assert_array_equal(w.suggested_labels, np.where(suggested != train_labels, suggested, -1))
    for explain in ("label", "prediction"):
        for i in wrong:
            g = show(w, "test", i, explain)
            tiles = g["proponents"] + g["opponents"]
            assert len(tiles) == 20
            for r in tiles:  # each badge is about the training example itself: the checkpoints' average prediction
                j = r["index"]
                assert bool(r["badge"]) == (suggested[j] != train_labels[j])
                assert r["suggested"] == (None if suggested[j] == train_labels[j] else suggested[j])


def test_the_label_choice_explains_the_label_or_the_prediction(tutorial_explorer):
    w = tutorial_explorer
    engine, test = w.source, w._examples.test
    i = misclassified(w)[0]
    label, pred = int(test.tensors[1][i]), int(w._examples.test_preds[i])
    assert label != pred
    x = test.tensors[0][i : i + 1]
    for explain, target in (("label", label), ("prediction", pred)):
        g = show(w, "test", i, explain)
        assert g["explain"] == explain and g["explained_label"] == target and g["same_label"] is False
        scores = engine.influence((x, torch.tensor([target])), k=None)[0].double().numpy()
        assert [r["index"] for r in g["proponents"]] == np.argsort(-scores, kind="stable")[:10].tolist()
        np.testing.assert_allclose([r["score"] for r in g["opponents"]], np.sort(scores)[:10], rtol=1e-5)
    # a correctly classified example: both choices are the same question, answered from one score row
    j = next(j for j in range(len(test)) if int(w._examples.test_preds[j]) == int(test.tensors[1][j]))
    a = show(w, "test", j, "label")
    calls = len(w._engine._score_cache)
    b = show(w, "test", j, "prediction")
    assert a["same_label"] and b["same_label"] and a["explained_label"] == b["explained_label"]
    assert len(w._engine._score_cache) == calls and a["proponents"] == b["proponents"]


def test_walking_to_a_training_example_explains_its_own_label_or_its_prediction(tutorial_explorer):
    w = tutorial_explorer
    train = w._examples.train
    k = int(
        np.flatnonzero(train.tensors[1].numpy() != w._examples.train_preds)[0]
    )  # a training example the model gets wrong
    label, pred = int(train.tensors[1][k]), int(w._examples.train_preds[k])
    x = train.tensors[0][k : k + 1]
    for explain, target in (("label", label), ("prediction", pred)):
        g = show(w, "train", k, explain)
        assert g["explained_label"] == target
        scores = w.source.influence((x, torch.tensor([target])), k=None)[0].double().numpy()
        assert [r["index"] for r in g["proponents"]] == np.argsort(-scores, kind="stable")[:10].tolist()
    w.explain = "label"


def test_checkpoint_contributions_sum_to_the_gallery_scores_and_match_the_engine(tutorial_explorer, tmp_path):
    w = tutorial_explorer
    test = w._examples.test
    i = misclassified(w)[0]
    for explain in ("label", "prediction"):
        g = show(w, "test", i, explain)
        target = g["explained_label"]
        for row in (g["proponents"][0], g["opponents"][0]):
            terms = w.checkpoint_contributions(i, row["index"], explain=explain)
            assert [t["checkpoint"] for t in terms] == ["checkpoint-0.pt", "checkpoint-1.pt", "checkpoint-2.pt"]
            assert [t["lr"] for t in terms] == [1.0, 1.0, 1.0]
            expected = w.source.influence_by_checkpoint(
                (test.tensors[0][i : i + 1], torch.tensor([target])), [row["index"]]
            )
            np.testing.assert_allclose([t["contribution"] for t in terms], expected[0, 0].double().numpy(), rtol=1e-6)
            assert sum(t["contribution"] for t in terms) == pytest.approx(row["score"], rel=1e-4, abs=1e-6)
    w.explain = "label"
    # the page asks by message, with the gallery's explained label: the same numbers
    sent = []
    w.send = lambda content, buffers=None: sent.append(content)
    g = show(w, "test", i)
    j = g["proponents"][1]["index"]
    w._handle_custom_msg(
        {"kind": "contributions", "id": 7, "query": g["query"], "label": g["explained_label"], "index": j}, []
    )
    w.wait(30)
    (reply,) = sent
    assert reply["id"] == 7 and reply["error"] is None and reply["index"] == j
    assert [t["contribution"] for t in reply["checkpoints"]] == [
        t["contribution"] for t in w.checkpoint_contributions(i, j)
    ]
    assert reply["total"] == pytest.approx(g["proponents"][1]["score"], rel=1e-4)
    with pytest.raises(ValueError, match=r"explain must be 'label' or 'prediction', got 'truth'"):
        w.checkpoint_contributions(i, j, explain="truth")
    with pytest.raises(ValueError, match=r"query index 400 is outside the train set \[0, 400\)"):
        w.checkpoint_contributions(i, 400)
