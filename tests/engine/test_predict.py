"""The batched prediction helper the explorer uses: the same predictions and probabilities as calling the model on one
item at a time in eval mode, read in blocks by the engine's readers, the model's flags restored, its lock held."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from torch import nn
from torch.utils.data import Dataset, Subset, TensorDataset
from torchvision.datasets import CIFAR10

from tracin_widgets.influence import _predict
from tracin_widgets.influence._model import model_lock
from tracin_widgets.tutorial import Net

from .test_vision import NORM, make_cifar
from .tolerances import RTOL_REORDER, atol_reorder


class PerItem(Dataset):
    """A generic Dataset no reader recognises."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i])


class Checked(nn.Module):
    """Net with dropout and batch norm (eval mode matters), checking in forward that the locks are held."""

    def __init__(self, lock: threading.Lock | None = None):
        super().__init__()
        self.net = Net()
        self.bn = nn.BatchNorm1d(10)
        self.drop = nn.Dropout(0.5)
        self.lock = lock
        self.calls = 0
        self.lock_seen: list[bool] = []

    def forward(self, x):
        self.calls += 1
        if self.lock is not None:
            got = []

            def try_lock() -> None:  # from another thread: the model's own lock must be taken
                lk = model_lock(self)
                got.append(lk.acquire(blocking=False))
                if got[0]:
                    lk.release()

            t = threading.Thread(target=try_lock)
            t.start()
            t.join()
            self.lock_seen.append(self.lock.locked() and not got[0])
        return self.drop(self.bn(self.net(x)))


def oracle(model: nn.Module, dataset, indices=None):
    """One item at a time, plain torch, eval mode."""
    ids = range(len(dataset)) if indices is None else indices
    labels, preds, probs = [], [], []
    was = [(m, m.training) for m in model.modules()]
    model.eval()
    with torch.no_grad():
        for i in ids:
            x, y = dataset[i][0], dataset[i][-1]
            p = torch.softmax(model(x.unsqueeze(0)).double(), dim=1)[0]
            labels.append(int(y))
            preds.append(int(p.argmax()))
            probs.append(float(p.max()))
    for m, t in was:
        m.training = t
    return np.array(labels), np.array(preds), np.array(probs)


def make_model(seed: int = 0, lock: threading.Lock | None = None) -> Checked:
    torch.manual_seed(seed)
    model = Checked(lock)
    with torch.no_grad():  # non-trivial running statistics
        model.bn.running_mean.uniform_(-0.1, 0.1)
        model.bn.running_var.uniform_(0.5, 2.0)
    return model


def images(n: int = 37, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)


DATASETS = {
    "cifar": lambda: make_cifar(n=37, transform=T.Compose([T.ToTensor(), NORM])),
    "tensor": lambda: TensorDataset(*images()),
    "subset-of-tensor": lambda: Subset(TensorDataset(*images(50)), list(range(49, 0, -3))),
    "per-item": lambda: PerItem(*images()),
}


@pytest.mark.parametrize("kind", sorted(DATASETS))
@pytest.mark.parametrize("indices", [None, [5, 0, 3, 3, 11]])
def test_same_predictions_as_the_per_item_model_call(kind, indices):
    ds = DATASETS[kind]()
    model = make_model()
    want = oracle(model, ds, indices)
    got = _predict.predict(model, ds, indices, batch_size=8)
    np.testing.assert_array_equal(got.labels, want[0])
    np.testing.assert_array_equal(got.preds, want[1])
    np.testing.assert_allclose(got.probs, want[2], rtol=RTOL_REORDER, atol=atol_reorder(torch.as_tensor(want[2])))
    assert got.labels.dtype == got.preds.dtype == np.int64 and got.probs.dtype == np.float64


def test_train_mode_restored_module_by_module_and_locks_held():
    lock = threading.Lock()
    model = make_model(lock=lock)
    model.train()
    model.net.eval()  # the user's own mix of flags comes back as it was
    flags = [m.training for m in model.modules()]
    ds = TensorDataset(*images(20))
    want = oracle(model, ds)
    model.lock_seen.clear()
    seen = []
    got = _predict.predict(model, ds, batch_size=4, lock=lock, progress=lambda d, n: seen.append((d, n)))
    np.testing.assert_array_equal(got.preds, want[1])
    assert [m.training for m in model.modules()] == flags
    assert model.lock_seen and all(model.lock_seen)  # the explorer's lock and the model's own, in every block
    assert not lock.locked() and model_lock(model).acquire(blocking=False)
    model_lock(model).release()
    assert seen[0] == (0, 20) and seen[-1] == (20, 20)


@pytest.mark.slow
def test_known_datasets_are_read_in_blocks_not_item_by_item(monkeypatch):
    calls = {"cifar": 0, "tensor": 0}
    real_cifar, real_tensor = CIFAR10.__getitem__, TensorDataset.__getitem__

    def cifar_item(self, i):
        calls["cifar"] += 1
        return real_cifar(self, i)

    def tensor_item(self, i):
        calls["tensor"] += 1
        return real_tensor(self, i)

    monkeypatch.setattr(CIFAR10, "__getitem__", cifar_item)
    monkeypatch.setattr(TensorDataset, "__getitem__", tensor_item)
    model = make_model()
    n = 3000  # more than one block
    cifar = make_cifar(n=n, transform=T.Compose([T.ToTensor(), NORM]))
    got = _predict.predict(model, cifar, batch_size=64)
    assert len(got.preds) == n and calls["cifar"] <= 3  # only the reader's own check of a few items
    assert model.calls == -(-n // _predict.BLOCK_ROWS)
    sub = np.arange(0, n, 7)
    want = oracle(model, cifar, sub.tolist())
    got = _predict.predict(model, cifar, sub.tolist(), batch_size=64)
    np.testing.assert_array_equal(got.preds, want[1])
    _predict.predict(model, TensorDataset(*images(100)), batch_size=8)
    assert calls["tensor"] == 0
