"""self_influence() on all three classes: training set (inputs=None), explicit batch, DataLoader; == diag(influence)."""

import pytest
import torch

from .conftest import Cfg
from .oracle import assert_scores_close
from .tolerances import RTOL_POSITIVE

SELF_CASES = [
    ("mlp", Cfg("cp", "none")),
    ("mlp", Cfg("cp", "sum", sample_wise=True)),
    ("mlp", Cfg("fast", "sum")),
    ("mlp", Cfg("rp", "sum")),
    ("cnn", Cfg("cp", "none", layers=("conv1", "fc3"))),
    ("cnn", Cfg("fast", "mean")),
    ("cnn", Cfg("rp", "mean")),
    ("reg", Cfg("cp", "mean", sample_wise=True)),
    ("reg", Cfg("fast", "mean")),
]
IDS = [f"{n}-{c.id()}" for n, c in SELF_CASES]


@pytest.mark.parametrize("ref", ["oracle", "captum"])
@pytest.mark.parametrize("name,cfg", SELF_CASES, ids=IDS)
def test_self_influence_training_set(eng, tb, get_setup, name, cfg, ref):
    setup = get_setup(name)
    s = tb.engine(eng, setup, cfg).self_influence()
    assert isinstance(s, torch.Tensor) and tuple(s.shape) == (setup.n_train,)
    assert s.dtype == torch.float32 and s.device.type == "cpu"
    assert_scores_close(s, tb.ref_self(ref, setup, cfg))


@pytest.mark.parametrize("name,cfg", SELF_CASES, ids=IDS)
def test_self_influence_explicit_batch_and_loader(eng, tb, get_setup, name, cfg):
    setup = get_setup(name)
    obj = tb.engine(eng, setup, cfg)
    expected = tb.oracle_self(setup, cfg, batch=setup.test)
    assert_scores_close(obj.self_influence(setup.test), expected, what="tuple batch")
    assert_scores_close(obj.self_influence(setup.test_loader(2)), expected, what="DataLoader")


@pytest.mark.parametrize("kind", ["cp", "fast", "rp"])
def test_self_influence_is_diagonal_of_influence(eng, tb, mlp, kind):
    cfg = Cfg(kind, "none" if kind == "cp" else "sum")
    diag = torch.diagonal(tb.oracle(mlp, cfg).influence(mlp.train, mlp.train))
    obj = tb.engine(eng, mlp, cfg)
    assert_scores_close(obj.self_influence(), diag)
    # and the engine's own influence(train, train) diagonal agrees
    assert_scores_close(torch.diagonal(obj.influence(mlp.train, k=None)), diag)


@pytest.mark.parametrize("kind", ["cp", "fast", "rp"])
def test_outer_loop_by_checkpoints_same_result(eng, tb, mlp, kind):
    cfg = Cfg(kind, "none" if kind == "cp" else "sum")
    obj = tb.engine(eng, mlp, cfg)
    a = obj.self_influence(outer_loop_by_checkpoints=False)
    b = obj.self_influence(outer_loop_by_checkpoints=True)
    assert_scores_close(a, b, rtol=1e-5)


@pytest.mark.parametrize("name", ["mlp", "cnn", "reg"])
def test_randproj_without_projection_equals_fast(eng, tb, get_setup, name):
    setup = get_setup(name)
    red = "mean"
    fast = tb.engine(eng, setup, Cfg("fast", red)).self_influence()
    rp = tb.engine(eng, setup, Cfg("rp", red), projection_dim=None).self_influence()
    assert_scores_close(rp, fast, rtol=1e-5)
    fast_b = tb.engine(eng, setup, Cfg("fast", red)).self_influence(setup.test)
    rp_b = tb.engine(eng, setup, Cfg("rp", red), projection_dim=None).self_influence(setup.test)
    assert_scores_close(rp_b, fast_b, rtol=1e-5)


def test_self_influence_with_train_loader(eng, tb, cnn):
    cfg = Cfg("fast", "sum")
    s = tb.engine(eng, cnn, cfg, train="loader").self_influence()
    assert_scores_close(s, tb.oracle_self(cnn, cfg))


def test_training_self_influence_comes_from_the_norms_written_with_the_factors(tmp_path, monkeypatch):
    """An in-memory pass keeps each row's |g|^2 and |a|^2 per checkpoint (as the store does): self-influence never
    reads the factors again (78 GB of host-resident factors at ImageNet's size took 7.3 s on an H100), and gives
    what the factors give."""
    from .problems import Problem

    p = Problem(tmp_path, n=400)
    eng = p.engine(cache=False).fit()
    assert eng.factors_.norms is not None and eng.factors_.norms.shape == (400, 3, 2)
    A, G = eng.factors_.factors
    expected = eng._self_from_factors(A, G)

    def no_read(*a, **k):
        raise AssertionError("self-influence read the factors")

    monkeypatch.setattr(eng.factors_, "blocks", no_read)
    got = eng.self_influence()
    torch.testing.assert_close(got, expected, rtol=RTOL_POSITIVE, atol=0)
