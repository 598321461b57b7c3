"""Fixtures for the widget tests: a NumPy-backed fake influence source and tiny seeded datasets/models."""

from __future__ import annotations

import threading
from collections import namedtuple

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

N_TRAIN, N_TEST, D, C = 60, 12, 16, 3

Result = namedtuple("Result", "indices influence_scores")


class FakeSource:
    """influence = <features(test), features(train)>; self-influence = |features|^2. Pure numpy.

    ``progress_callback`` is called like the engine's; ``gate`` (an Event) pauses self_influence after its first
    step until set, so tests can cancel mid-computation; ``fail`` makes self_influence raise.
    """

    def __init__(self, train_x: np.ndarray):
        self.X = np.asarray(train_x, dtype=np.float64).reshape(len(train_x), -1)
        self.progress_callback = None
        self.gate: threading.Event | None = None
        self.started = threading.Event()
        self.fail: Exception | None = None
        self.influence_calls = 0

    def scores(self, x) -> np.ndarray:
        q = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
        return q @ self.X.T

    def influence(self, inputs, k=None, proponents=True):
        self.influence_calls += 1
        s = self.scores(inputs[0].numpy())
        if k is None:
            return torch.from_numpy(s)
        o = np.argsort(-s if proponents else s, axis=1, kind="stable")[:, :k]
        return Result(torch.from_numpy(o), torch.from_numpy(np.take_along_axis(s, o, 1)))

    def self_influence(self):
        n = len(self.X)
        for i in range(n):
            if self.progress_callback is not None:
                self.progress_callback("self influence", i, n)
            if i == 1:
                self.started.set()
                if self.gate is not None:
                    assert self.gate.wait(20), "test gate never opened"
        if self.fail is not None:
            raise self.fail
        return torch.from_numpy((self.X**2).sum(1))


@pytest.fixture(autouse=True)
def user_cache(tmp_path_factory, monkeypatch):
    """Each test's own user cache folder: the explorers' default review files never reach the real one, nor restore
    another test's flags."""
    folder = tmp_path_factory.mktemp("user-cache")
    monkeypatch.setenv("XDG_CACHE_HOME", str(folder))
    return folder


@pytest.fixture
def data():
    torch.manual_seed(0)
    x_train = torch.randn(N_TRAIN, D)
    y_train = torch.randint(0, C, (N_TRAIN,))
    x_test = torch.randn(N_TEST, D)
    y_test = torch.randint(0, C, (N_TEST,))
    model = nn.Linear(D, C)
    return {
        "model": model,
        "train": TensorDataset(x_train, y_train),
        "test": TensorDataset(x_test, y_test),
        "x_train": x_train.numpy().astype(np.float64),
        "x_test": x_test.numpy().astype(np.float64),
    }


@pytest.fixture
def fake(data):
    return FakeSource(data["x_train"])


@pytest.fixture
def make(data, fake):
    """make(**kwargs) -> a ready InfluenceExplorer on the fake source (waits for the background work)."""
    from tracin_widgets.widget import InfluenceExplorer

    made = []

    def _make(wait=True, **kw):
        kw.setdefault("engine", fake)
        test = kw.pop("test_dataset", data["test"])
        w = InfluenceExplorer(data["model"], None, data["train"], test, **kw)
        made.append(w)
        if wait:
            w.wait(30)
        return w

    yield _make
    for w in made:
        w.cancel()


class Sent(list):
    """Records Widget.send(content, buffers)."""

    def __call__(self, content, buffers=None):
        self.append((content, list(buffers or [])))


@pytest.fixture
def sent():
    return Sent()


def train_digits(tmp_path, *, lr: float, epochs: int):
    """A tiny MLP trained on the first 200 of scikit-learn's digits (the next 20 are the test set), one checkpoint
    per epoch: ``(model, checkpoint paths, train TensorDataset, test TensorDataset)``."""
    from sklearn.datasets import load_digits
    from torch.utils.data import DataLoader

    torch.manual_seed(0)
    d = load_digits()
    x = torch.tensor(d.images[:220] / 16.0, dtype=torch.float32).unsqueeze(1)  # (n, 1, 8, 8)
    y = torch.tensor(d.target[:220], dtype=torch.long)
    train, test = TensorDataset(x[:200], y[:200]), TensorDataset(x[200:], y[200:])
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    ckpts = []
    loader = DataLoader(train, batch_size=20, shuffle=True, generator=torch.Generator().manual_seed(0))
    for epoch in range(epochs):
        for xb, yb in loader:
            opt.zero_grad()
            nn.functional.cross_entropy(model(xb), yb).backward()
            opt.step()
        path = tmp_path / f"checkpoint-{epoch}.pt"
        torch.save(model.state_dict(), path)
        ckpts.append(str(path))
    return model, ckpts, train, test
