"""Fixtures for the engine correctness suite.

Three seeded tiny problems (classification MLP, the Captum tutorial's CNN ``Net``, a regression MLP with MSELoss),
each with 3 checkpoints written under pytest's tmp dir and a tutorial-style ``checkpoints_load_func`` returning a
different learning rate per checkpoint, plus the same checkpoints as plain state-dict files (default loader, lr 1).

Reference scores come from two oracles: ``oracle.TracInOracle`` (naive float64) and captum 0.9.0 (test-only import).
The ``eng`` fixture is the engine package, ``tracin_widgets.influence``; other small problems come from
``problems.py`` and the tolerances of every comparison from ``tolerances.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import tracin_widgets.influence as influence

from .oracle import TracInOracle

LRS = (0.5, 1.0, 2.0)
EPOCHS = (1, 5, 10)  # file names checkpoint-1.pt, checkpoint-5.pt, checkpoint-10.pt (natural sort != lexical)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "tests/engine/" not in str(item.fspath).replace("\\", "/"):
            continue
        # captum's own chatter (memory warning, "Input Tensor 0 did not already require gradients")
        item.add_marker(pytest.mark.filterwarnings("ignore::UserWarning:captum.*"))


# ---------------------------------------------------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------------------------------------------------
class MLP(nn.Module):
    """8 -> 16 -> 4 classifier."""

    def __init__(self, d_in=8, hidden=16, d_out=4):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.relu1 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, d_out)

    def forward(self, x):
        return self.fc2(self.relu1(self.fc1(x)))


class RegMLP(MLP):
    """8 -> 16 -> 3 regressor (MSELoss on D=3 outputs)."""

    def __init__(self):
        super().__init__(8, 16, 3)


class Net(nn.Module):
    """The Captum TracInCP tutorial's CNN, registration order kept: relu1..relu4 come AFTER fc3."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool1 = nn.MaxPool2d(2, 2)
        self.pool2 = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)
        self.relu1 = nn.ReLU()
        self.relu2 = nn.ReLU()
        self.relu3 = nn.ReLU()
        self.relu4 = nn.ReLU()

    def forward(self, x):
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        x = x.view(-1, 16 * 5 * 5)
        x = self.relu3(self.fc1(x))
        x = self.relu4(self.fc2(x))
        x = self.fc3(x)
        return x


def checkpoints_load_func(net, path):
    """Tutorial-style loader; our checkpoints carry their own learning rate."""
    weights = torch.load(path)
    net.load_state_dict(weights["model_state_dict"])
    return weights["lr"]


# ---------------------------------------------------------------------------------------------------------------------
# problems
# ---------------------------------------------------------------------------------------------------------------------
@dataclass
class Setup:
    name: str
    model_cls: type
    loss_cls: type
    final: str  # name of the true final linear layer
    train: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor]
    ckpts: list  # dict checkpoints {"model_state_dict", "lr", "epoch"}; use checkpoints_load_func
    ckpt_dir: str
    plain_ckpts: list  # plain state dicts (same weights), default loader, lr 1
    plain_dir: str
    batch_size: int
    user_seed: int = 1234
    lrs: tuple = LRS
    load_func: object = field(default=checkpoints_load_func)

    def model(self) -> nn.Module:
        """A fresh model with the USER's weights (different from every checkpoint)."""
        torch.manual_seed(self.user_seed)
        return self.model_cls()

    @property
    def n_train(self):
        return self.train[0].shape[0]

    def train_dataset(self):
        return TensorDataset(*self.train)

    def train_loader(self, batch_size=None):
        return DataLoader(self.train_dataset(), batch_size=batch_size or self.batch_size, shuffle=False)

    def test_loader(self, batch_size=2):
        return DataLoader(TensorDataset(*self.test), batch_size=batch_size, shuffle=False)

    def loss(self, reduction):
        return None if reduction is None else self.loss_cls(reduction=reduction)


def _make_setup(tmp_path_factory, name, model_cls, loss_cls, final, x_shape, n_train, n_test, n_classes, batch_size):
    g = torch.Generator().manual_seed(sum(map(ord, name)))
    n = n_train + n_test
    x = torch.randn((n, *x_shape), generator=g)
    if n_classes:
        y = torch.randint(0, n_classes, (n,), generator=g)
    else:
        y = torch.randn((n, 3), generator=g)
    train, test = (x[:n_train], y[:n_train]), (x[n_train:], y[n_train:])

    torch.manual_seed(0)
    net = model_cls()
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    loss_fn = loss_cls()
    root = tmp_path_factory.mktemp(f"ckpt_{name}")
    ckpt_dir, plain_dir = root / "dict", root / "plain"
    ckpt_dir.mkdir()
    plain_dir.mkdir()
    ckpts, plain = [], []
    for epoch, lr in zip(EPOCHS, LRS, strict=False):
        for _ in range(3):
            opt.zero_grad()
            loss_fn(net(train[0]), train[1]).backward()
            opt.step()
        with torch.no_grad():  # a perturbation so that the checkpoints differ clearly
            for p in net.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=g))
        sd = {k: v.clone() for k, v in net.state_dict().items()}
        path = ckpt_dir / f"checkpoint-{epoch}.pt"
        torch.save({"epoch": epoch, "model_state_dict": sd, "lr": lr, "loss": 0.0}, path)
        ppath = plain_dir / f"checkpoint-{epoch}.pt"
        torch.save(sd, ppath)
        ckpts.append(str(path))
        plain.append(str(ppath))
    return Setup(
        name=name,
        model_cls=model_cls,
        loss_cls=loss_cls,
        final=final,
        train=train,
        test=test,
        ckpts=ckpts,
        ckpt_dir=str(ckpt_dir),
        plain_ckpts=plain,
        plain_dir=str(plain_dir),
        batch_size=batch_size,
    )


@pytest.fixture(scope="session")
def mlp(tmp_path_factory):
    return _make_setup(tmp_path_factory, "mlp", MLP, nn.CrossEntropyLoss, "fc2", (8,), 50, 5, 4, 16)


@pytest.fixture(scope="session")
def cnn(tmp_path_factory):
    return _make_setup(tmp_path_factory, "cnn", Net, nn.CrossEntropyLoss, "fc3", (3, 32, 32), 40, 5, 10, 16)


@pytest.fixture(scope="session")
def reg(tmp_path_factory):
    return _make_setup(tmp_path_factory, "reg", RegMLP, nn.MSELoss, "fc2", (8,), 48, 5, None, 16)


@pytest.fixture(scope="module", autouse=True)
def _single_thread():
    """Tiny models: one intra-op thread is fastest and avoids oversubscription on a shared 2-core box."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def get_setup(request):
    return lambda name: request.getfixturevalue(name)


# ---------------------------------------------------------------------------------------------------------------------
# configurations and reference scores
# ---------------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Cfg:
    """One TracIn configuration.

    kind: "cp" (TracInCP), "fast" (TracInCPFast), "rp" (TracInCPFastRandProj, projection_dim=None).
    reduction: loss reduction ("none"/"sum"/"mean"), None = loss_fn=None (TracInCP only).
    final: final_fc_layer NAME for fast/rp ("fc3", "relu4", ...); None = the setup's true final layer.
    """

    kind: str
    reduction: str | None = "sum"
    layers: tuple | None = None
    final: str | None = None
    sample_wise: bool = False
    plain: bool = False  # plain state-dict checkpoints + default loader (lr 1)

    def id(self):
        parts = [self.kind, str(self.reduction)]
        if self.layers:
            parts.append("+".join(self.layers))
        if self.final:
            parts.append(self.final)
        if self.sample_wise:
            parts.append("sw")
        if self.plain:
            parts.append("plain")
        return "-".join(parts)


class Toolbox:
    """Builds oracle / captum / engine objects for (setup, cfg), caching the reference scores."""

    def __init__(self):
        self._cache = {}

    # ---- shared ----
    @staticmethod
    def final_name(setup, cfg):
        return cfg.final or setup.final

    @staticmethod
    def ckpts(setup, cfg):
        return (setup.plain_ckpts, None) if cfg.plain else (setup.ckpts, setup.load_func)

    # ---- oracle ----
    def oracle(self, setup, cfg) -> TracInOracle:
        ckpts, load = self.ckpts(setup, cfg)
        if cfg.kind == "cp":
            return TracInOracle(setup.model(), ckpts, load, layers=cfg.layers, loss_fn=setup.loss(cfg.reduction))
        return TracInOracle(
            setup.model(), ckpts, load, final_fc_layer=self.final_name(setup, cfg), loss_fn=setup.loss(cfg.reduction)
        )

    def oracle_scores(self, setup, cfg, aggregate=False):
        key = ("oracle", setup.name, cfg, aggregate)
        if key not in self._cache:
            self._cache[key] = self.oracle(setup, cfg).influence(setup.test, setup.train, aggregate=aggregate)
        return self._cache[key]

    def oracle_self(self, setup, cfg, batch=None):
        key = ("oracle_self", setup.name, cfg, batch is None)
        if batch is not None:
            return self.oracle(setup, cfg).self_influence(batch)
        if key not in self._cache:
            self._cache[key] = self.oracle(setup, cfg).self_influence(setup.train)
        return self._cache[key]

    # ---- captum ----
    def captum(self, setup, cfg, model=None, train=None, **kw):
        ci = pytest.importorskip("captum.influence")
        model = setup.model() if model is None else model
        ckpts, load = self.ckpts(setup, cfg)
        if load is not None:
            kw["checkpoints_load_func"] = load
        train = setup.train_dataset() if train is None else train
        common = dict(loss_fn=setup.loss(cfg.reduction), batch_size=setup.batch_size, **kw)
        if cfg.kind == "cp":
            return ci.TracInCP(
                model,
                train,
                ckpts,
                layers=None if cfg.layers is None else list(cfg.layers),
                sample_wise_grads_per_batch=cfg.sample_wise,
                **common,
            )
        final = dict(model.named_modules())[self.final_name(setup, cfg)]
        if cfg.kind == "fast":
            return ci.TracInCPFast(model, final, train, ckpts, **common)
        with torch.random.fork_rng():  # captum's RandProj calls torch.manual_seed
            return ci.TracInCPFastRandProj(model, final, train, ckpts, projection_dim=None, **common)

    def captum_scores(self, setup, cfg, aggregate=False):
        key = ("captum", setup.name, cfg, aggregate)
        if key not in self._cache:
            obj = self.captum(setup, cfg)
            kw = {"aggregate": True} if aggregate else {}
            with torch.random.fork_rng():
                self._cache[key] = obj.influence(setup.test, k=None, **kw).detach().clone()
        return self._cache[key]

    def captum_self(self, setup, cfg):
        key = ("captum_self", setup.name, cfg)
        if key not in self._cache:
            assert cfg.kind != "rp", "captum's RandProj has no self_influence"
            self._cache[key] = self.captum(setup, cfg).self_influence(None).detach().clone()
        return self._cache[key]

    def ref_scores(self, ref, setup, cfg, aggregate=False):
        if ref == "oracle":
            return self.oracle_scores(setup, cfg, aggregate)
        return self.captum_scores(setup, cfg, aggregate)

    def ref_self(self, ref, setup, cfg):
        if ref == "oracle":
            return self.oracle_self(setup, cfg)
        if cfg.kind == "rp":  # captum has none; RandProj without projection == Fast
            cfg = Cfg("fast", cfg.reduction, cfg.layers, cfg.final, cfg.sample_wise, cfg.plain)
        return self.captum_self(setup, cfg)

    # ---- engine ----
    def engine(self, eng, setup, cfg, model=None, train="dataset", final=None, **kw):
        """Our engine for (setup, cfg).  train: "dataset" | "loader" | a Dataset/DataLoader object."""
        model = setup.model() if model is None else model
        ckpts, load = self.ckpts(setup, cfg)
        if load is not None:
            kw.setdefault("checkpoints_load_func", load)
        if train == "dataset":
            train, bs = setup.train_dataset(), setup.batch_size
        elif train == "loader":
            train, bs = setup.train_loader(), None
        else:
            bs = kw.pop("batch_size", setup.batch_size)
        kw.setdefault("loss_fn", setup.loss(cfg.reduction))
        if bs is not None:
            kw.setdefault("batch_size", bs)
        if cfg.kind == "cp":
            kw.setdefault("layers", None if cfg.layers is None else list(cfg.layers))
            kw.setdefault("sample_wise_grads_per_batch", cfg.sample_wise)
            return eng.TracInCP(model, train, ckpts, **kw)
        if final is None:
            final = self.final_name(setup, cfg)
        if cfg.kind == "fast":
            return eng.TracInCPFast(model, final, train, ckpts, **kw)
        kw.setdefault("nearest_neighbors", eng.ExactNearestNeighbors())
        kw.setdefault("projection_dim", None)
        return eng.TracInCPFastRandProj(model, final, train, ckpts, **kw)


@pytest.fixture(scope="session")
def tb():
    return Toolbox()


@pytest.fixture(scope="session")
def eng():
    """The engine package, ``tracin_widgets.influence``."""
    return influence


def state_snapshot(model):
    """Everything the engine must restore: weights, per-module training flags, per-param requires_grad."""
    return (
        {k: v.detach().clone() for k, v in model.state_dict().items()},
        {name: m.training for name, m in model.named_modules()},
        {name: p.requires_grad for name, p in model.named_parameters()},
    )


def assert_state_equal(model, snap):
    weights, modes, rg = snap
    now = state_snapshot(model)
    for k, v in weights.items():
        assert torch.equal(now[0][k], v), f"weight {k} not restored"
    assert now[1] == modes, f"train/eval flags changed: {now[1]} != {modes}"
    assert now[2] == rg, f"requires_grad flags changed: {now[2]} != {rg}"


@pytest.fixture(scope="session")
def snapshot():
    return state_snapshot


@pytest.fixture(scope="session")
def assert_restored():
    return assert_state_equal
