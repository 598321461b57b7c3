"""Batches that are not one row per feature row, and targets that are not class indices: an ``nn.EmbeddingBag``
model called as ``model(tokens, offsets)`` through a ``collate_fn`` (never merged nor split: exact, as Captum),
regression labels whose shape would broadcast against the outputs (refused before any pass), multi-label
``BCEWithLogitsLoss`` targets, and checkpoints saved from a ``torch.compile``'d model."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tracin_widgets.influence import TracInCPFast, load_checkpoint
from tracin_widgets.influence._batch import Batch

from .oracle import TracInOracle, assert_scores_close


class BagModel(nn.Module):
    def __init__(self, vocab: int = 30, dim: int = 8, classes: int = 3) -> None:
        super().__init__()
        self.bag = nn.EmbeddingBag(vocab, dim, mode="mean")
        self.fc = nn.Linear(dim, classes)

    def forward(self, tokens, offsets):
        return self.fc(self.bag(tokens, offsets))


def _texts(n: int, seed: int) -> list[tuple[torch.Tensor, int]]:
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randint(0, 30, (int(torch.randint(1, 7, (1,), generator=g)),), generator=g), int(i % 3))
        for i in range(n)
    ]


def collate(items):
    tokens = torch.cat([t for t, _ in items])
    offsets = torch.tensor([0, *torch.cumsum(torch.tensor([len(t) for t, _ in items]), 0)[:-1].tolist()])
    return tokens, offsets, torch.tensor([y for _, y in items])


def _checkpoints(model: nn.Module, folder, n: int = 3) -> list[str]:
    g = torch.Generator().manual_seed(5)
    paths = []
    for i in range(n):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))
        paths.append(str(folder / f"checkpoint-{i}.pt"))
        torch.save(model.state_dict(), paths[-1])
    return paths


def test_embedding_bag_batches_are_never_merged_or_split(tmp_path):
    torch.manual_seed(0)
    model = BagModel()
    paths = _checkpoints(model, tmp_path)
    train, test = _texts(40, 1), _texts(6, 2)
    loss = nn.CrossEntropyLoss(reduction="sum")
    loader = DataLoader(train, batch_size=4, collate_fn=collate)
    eng = TracInCPFast(model, "fc", loader, paths, loss_fn=loss)
    scores = eng.influence(collate(test))
    ci = pytest.importorskip("captum.influence")
    captum = ci.TracInCPFast(model, model.fc, loader, paths, loss_fn=loss)
    assert_scores_close(scores, captum.influence(collate(test), k=None), rtol=1e-5)

    # one example at a time, in float64: g (the loss gradient w.r.t. the output) and a (fc's input) of each text
    def factors(items, path):
        net = copy.deepcopy(model).double()
        net.load_state_dict(torch.load(path))
        rows = []
        for tokens, label in items:
            a = net.bag(tokens, torch.tensor([0])).detach().requires_grad_(False)
            out = net.fc(a).detach().requires_grad_(True)
            (g,) = torch.autograd.grad(loss(out, torch.tensor([label])), out)
            rows.append(torch.outer(g[0], a[0]).reshape(-1))
        return torch.stack(rows)

    expect = sum(factors(test, p) @ factors(train, p).T for p in paths)
    assert_scores_close(scores, expect, rtol=1e-5)
    assert_scores_close(eng.self_influence(), sum((factors(train, p) ** 2).sum(1) for p in paths), rtol=1e-5)


def test_row_alignment():
    tokens, offsets, y = collate(_texts(4, 3))
    bag = Batch((tokens, offsets), y)
    assert not bag.aligned and not bag.joinable
    assert bag.split(2) == [bag]
    with pytest.raises(ValueError, match="not row-aligned"):
        bag.rows(0, 2)
    x = torch.randn(4, 3)
    a, b = Batch((x, 2.0), y), Batch((x,), y)
    assert a.aligned and not a.joinable and b.joinable
    assert [p.n for p in b.split(3)] == [3, 1]
    assert Batch.cat([b, b]).n == 8 and b.joins(b) and not b.joins(Batch((x.double(),), y))
    kw = Batch((), y, {"x": x})
    assert kw.keyword and kw.call(lambda **f: f["x"]) is x and kw.rows(1, 3).kwargs["x"].shape == (2, 3)
    assert not kw.joins(b)


def _regression(tmp_path, labels_shape: tuple, loss: nn.Module, out: int = 1):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, out))
    paths = _checkpoints(model, tmp_path, 2)
    x = torch.randn(30, 4)
    y = torch.randn(30, *labels_shape)
    return model, paths, x, y


@pytest.mark.parametrize("form", ["tensors", "loader"])
def test_labels_that_would_broadcast_are_refused_before_any_pass(tmp_path, form):
    model, paths, x, y = _regression(tmp_path, (), nn.MSELoss(reduction="sum"))
    data = TensorDataset(x, y) if form == "tensors" else DataLoader(list(zip(x, y, strict=True)), batch_size=8)
    eng = TracInCPFast(model, "2", data, paths, loss_fn=nn.MSELoss(reduction="sum"))
    msg = (
        r"^train_dataset labels have shape \((30|8),\), but the model outputs shape \(n, 1\): MSELoss compares them "
        r"element by element, so they would broadcast to shape \((30|8), (30|8)\) and every loss and score would be "
        r"wrong\. Fix: labels\.unsqueeze\(1\) \(or labels\.view\(-1, 1\)\) in the dataset, or a model output of "
        r"shape \(n,\)\.$"
    )
    with pytest.raises(ValueError, match=msg):
        eng.fit()
    assert eng.factors_ is None
    good = TracInCPFast(model, "2", TensorDataset(x, y[:, None]), paths, loss_fn=nn.MSELoss(reduction="sum"))
    with pytest.raises(ValueError, match=r"^inputs labels have shape \(3,\), but the model outputs shape \(n, 1\)"):
        good.influence((x[:3], y[:3]))
    assert good.factors_ is None
    oracle = TracInOracle(model, paths, final_fc_layer="2", loss_fn=nn.MSELoss(reduction="sum"))
    expect = oracle.influence((x[:3], y[:3, None]), (x, y[:, None]))
    assert_scores_close(good.influence((x[:3], y[:3, None])), expect, rtol=1e-5)


def test_multi_label_bce_targets(tmp_path):
    model, paths, x, _ = _regression(tmp_path, (), nn.BCEWithLogitsLoss(reduction="sum"), out=5)
    y = (torch.rand(30, 5, generator=torch.Generator().manual_seed(3)) > 0.5).float()
    loss = nn.BCEWithLogitsLoss(reduction="sum")
    eng = TracInCPFast(model, "2", TensorDataset(x, y), paths, loss_fn=loss)
    oracle = TracInOracle(model, paths, final_fc_layer="2", loss_fn=loss)
    assert_scores_close(eng.influence((x[:4], y[:4])), oracle.influence((x[:4], y[:4]), (x, y)), rtol=1e-5)
    assert_scores_close(eng.self_influence(), oracle.self_influence((x, y)), rtol=1e-5)
    with pytest.raises(
        ValueError,
        match=r"^inputs labels are torch\.int64, but BCEWithLogitsLoss needs float targets of the output's shape "
        r"\(n, 5\) \(for multi-label data one 0/1 per class\): pass labels\.float\(\)\.$",
    ):
        eng.influence((x[:4], y[:4].long()))
    with pytest.raises(ValueError, match=r"^inputs labels have shape \(4,\), but the model outputs shape \(n, 5\)"):
        eng.influence((x[:4], y[:4, 0]))


def test_torch_compile_checkpoint_prefixes(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3))
    compiled = torch.compile(model)  # never run: only its state dict's "_orig_mod." names
    assert all(k.startswith("_orig_mod.") for k in compiled.state_dict())
    torch.save(compiled.state_dict(), tmp_path / "compiled.pt")
    torch.save(model.state_dict(), tmp_path / "plain.pt")
    fresh = nn.Sequential(nn.Linear(4, 3))
    load_checkpoint(fresh, str(tmp_path / "compiled.pt"))
    assert torch.equal(fresh[0].weight, model[0].weight)
    other = torch.compile(nn.Sequential(nn.Linear(4, 3)))
    load_checkpoint(other, str(tmp_path / "plain.pt"))
    assert torch.equal(other._orig_mod[0].weight, model[0].weight)
    x, y = torch.randn(10, 4), torch.randint(0, 3, (10,))
    loss = nn.CrossEntropyLoss(reduction="sum")
    a = TracInCPFast(model, "0", TensorDataset(x, y), [str(tmp_path / "compiled.pt")], loss_fn=loss)
    b = TracInCPFast(model, "0", TensorDataset(x, y), [str(tmp_path / "plain.pt")], loss_fn=loss)
    assert torch.equal(a.influence((x[:2], y[:2])), b.influence((x[:2], y[:2])))
