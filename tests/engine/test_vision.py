"""Vectorised reading of torchvision's CIFAR datasets: bit-identical rows, same scores, and the per-item path for
anything it does not recognise."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from torch import nn
from torch.utils.data import DataLoader, Subset, TensorDataset
from torchvision.datasets import CIFAR10, CIFAR100

from tracin_widgets.influence import TracInCP, TracInCPFast
from tracin_widgets.influence._vision import VectorisedImages, vectorised_source

from .oracle import assert_scores_close
from .problems import save_perturbed_checkpoints

NORM = T.Normalize((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))


def make_cifar(n=40, transform=None, cls=CIFAR10, seed=0, target_transform=None):
    """A real torchvision CIFAR10 object holding generated images (no files, no download)."""
    rng = np.random.default_rng(seed)
    ds = cls.__new__(cls)
    ds.root, ds.train = "unused", True
    ds.transform, ds.target_transform = transform, target_transform
    ds.data = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    ds.targets = rng.integers(0, 10, size=n).tolist()
    return ds


def per_item(ds):
    return next(iter(DataLoader(ds, batch_size=len(ds), shuffle=False)))


@pytest.mark.parametrize(
    "transform",
    [
        T.ToTensor(),
        T.Compose([T.ToTensor()]),
        T.Compose([T.ToTensor(), NORM]),
        T.Compose([T.ToTensor(), T.Normalize((0.5,) * 3, (0.5,) * 3, inplace=True), NORM]),
    ],
)
def test_blocks_are_bit_identical_to_getitem(transform):
    ds = make_cifar(transform=transform)
    src = vectorised_source(ds)
    assert isinstance(src, VectorisedImages)
    x, y = per_item(ds)
    parts = list(src.batches(7, torch.device("cpu")))
    assert torch.equal(torch.cat([p[0] for p in parts]), x) and torch.equal(torch.cat([p[1] for p in parts]), y)
    assert parts[0][1].dtype == y.dtype == torch.int64


def test_subsets_and_cifar100():
    ds = make_cifar(n=30, transform=T.Compose([T.ToTensor(), NORM]), cls=CIFAR100)
    sub = Subset(Subset(ds, list(range(29, -1, -2))), [3, 0, 7, 7, 14])
    src = vectorised_source(sub)
    assert src is not None and src.n == 5
    x, y = per_item(sub)
    bx, by = src.block(0, 5, torch.device("cpu"))
    assert torch.equal(bx, x) and torch.equal(by, y)


class MyCIFAR(CIFAR10):
    def __getitem__(self, i):
        x, y = super().__getitem__(i)
        return x * 2, y


@pytest.mark.parametrize(
    "kwargs",
    [
        {"transform": T.Compose([T.RandomCrop(32, padding=4), T.ToTensor()])},
        {"transform": T.Compose([T.ToTensor(), NORM]), "target_transform": lambda t: t},
        {"transform": None},
        {"transform": T.Compose([T.ToTensor(), NORM]), "cls": MyCIFAR},
        {"transform": T.Compose([NORM, T.ToTensor()])},
    ],
    ids=["random-crop", "target-transform", "no-transform", "subclass", "wrong-order"],
)
def test_anything_else_keeps_the_per_item_path(kwargs):
    assert vectorised_source(make_cifar(**kwargs)) is None


def test_a_mismatch_on_the_sampled_rows_keeps_the_per_item_path(monkeypatch):
    ds = make_cifar(transform=T.ToTensor())
    real = VectorisedImages.block
    monkeypatch.setattr(
        VectorisedImages, "block", lambda self, s, e, d: (real(self, s, e, d)[0] + 1e-6, real(self, s, e, d)[1])
    )
    assert vectorised_source(ds) is None


class SmallNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 5, stride=3)
        self.pool = nn.MaxPool2d(2, 2)
        self.fc1 = nn.Linear(4 * 5 * 5, 12)
        self.fc2 = nn.Linear(12, 10)

    def forward(self, x):
        x = self.pool(torch.relu(self.conv(x)))
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    torch.manual_seed(0)
    model = SmallNet()
    paths = save_perturbed_checkpoints(model, tmp_path_factory.mktemp("vision"), 3, 0.1, prefix="c")
    return model, paths


def test_engine_scores_equal_the_per_item_path(ckpts):
    model, paths = ckpts
    ds = make_cifar(n=45, transform=T.Compose([T.ToTensor(), NORM]))
    x, y = per_item(ds)
    test = (x[:3] * 0.9, y[:3])
    loss = nn.CrossEntropyLoss(reduction="sum")
    ours = TracInCPFast(model, "fc2", ds, paths, loss_fn=loss, batch_size=16)
    ref = TracInCPFast(model, "fc2", TensorDataset(x, y), paths, loss_fn=loss, batch_size=16)
    assert_scores_close(ours.influence(test), ref.influence(test))
    assert_scores_close(ours.self_influence(), ref.self_influence(), what="self-influence")
    assert isinstance(ours._vector_source, VectorisedImages)
    cp = TracInCP(model, Subset(ds, range(0, 45, 2)), paths, loss_fn=loss, sample_wise_grads_per_batch=True)
    cp_ref = TracInCP(model, TensorDataset(x[::2], y[::2]), paths, loss_fn=loss, sample_wise_grads_per_batch=True)
    assert_scores_close(cp.influence(test), cp_ref.influence(test))
    assert_scores_close(cp.self_influence(), cp_ref.self_influence(), what="self-influence")
    assert isinstance(cp._vector_source, VectorisedImages)


def test_a_user_dataloader_is_read_as_given(ckpts):
    model, paths = ckpts
    ds = make_cifar(n=20, transform=T.ToTensor())
    ours = TracInCPFast(model, "fc2", DataLoader(ds, batch_size=8), paths, loss_fn=nn.CrossEntropyLoss(reduction="sum"))
    ours.fit()
    assert ours._vectorised() is None
