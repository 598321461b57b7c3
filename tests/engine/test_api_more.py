"""More of Captum's API on real inputs: compute_intermediate_quantities, get_name, wrapped (DataParallel / DDP)
models, progress bars in every mode, RandProj's score dtype."""

from __future__ import annotations

import inspect

import pytest
import torch
from torch import nn

from .conftest import Cfg
from .oracle import assert_scores_close
from .tolerances import RTOL_CAPTUM_GRADS, RTOL_REORDER, atol_reorder

captum_influence = pytest.importorskip("captum.influence")

CLASSES = ["TracInCP", "TracInCPFast", "TracInCPFastRandProj"]


# ---------------------------------------------------------------------------------------------------------------------
# get_name
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", CLASSES)
def test_get_name_is_the_class_name_as_in_captum(eng, name):
    ours, theirs = getattr(eng, name), getattr(captum_influence, name)
    assert ours.get_name() == theirs.get_name() == name
    assert isinstance(inspect.getattr_static(ours, "get_name"), classmethod)


# ---------------------------------------------------------------------------------------------------------------------
# compute_intermediate_quantities
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["TracInCP", "TracInCPFastRandProj"])
def test_compute_intermediate_quantities_signature_extends_captums(eng, name):
    params = list(inspect.signature(getattr(eng, name).compute_intermediate_quantities).parameters)
    theirs = list(inspect.signature(getattr(captum_influence, name).compute_intermediate_quantities).parameters)
    assert params[: len(theirs)] == theirs
    assert params == ["self", "inputs", "aggregate"]


def _captum_blocks_to_ours(theirs: torch.Tensor, lrs, n_ckpt: int) -> torch.Tensor:
    """Captum scales checkpoint c's gradients by lr_c; ours by sqrt(lr_c) (dot products = influence scores)."""
    d = theirs.shape[1] // n_ckpt
    return torch.cat([theirs[:, c * d : (c + 1) * d] / lr**0.5 for c, lr in enumerate(lrs)], dim=1)


CIQ_CASES = [
    ("mlp", Cfg("cp", "none")),
    ("mlp", Cfg("cp", "none", layers=("fc2",))),
    ("mlp", Cfg("cp", "sum", sample_wise=True)),
    ("mlp", Cfg("cp", "mean", layers=("fc1",), sample_wise=True)),
    ("cnn", Cfg("cp", "none")),
    ("cnn", Cfg("cp", "none", layers=("conv2", "fc3"))),
    ("cnn", Cfg("cp", "sum", layers=("fc1", "conv1"), sample_wise=True)),
]


@pytest.mark.parametrize("setup_name,cfg", CIQ_CASES, ids=[f"{s}-{c.id()}" for s, c in CIQ_CASES])
@pytest.mark.parametrize("loader", [False, True], ids=["batch", "loader"])
@pytest.mark.parametrize("aggregate", [False, True], ids=["rows", "aggregate"])
def test_tracincp_intermediate_quantities_match_captum(eng, tb, request, setup_name, cfg, loader, aggregate):
    s = request.getfixturevalue(setup_name)
    inputs = s.test_loader(batch_size=2) if loader else s.test
    theirs = tb.captum(s, cfg).compute_intermediate_quantities(inputs, aggregate=aggregate).detach()
    ours = tb.engine(eng, s, cfg).compute_intermediate_quantities(inputs, aggregate=aggregate)
    assert ours.shape == theirs.shape == (1 if aggregate else len(s.test[1]), theirs.shape[1])
    assert ours.dtype == torch.float32 and ours.device.type == "cpu"
    want = _captum_blocks_to_ours(theirs, s.lrs, len(s.ckpts))
    torch.testing.assert_close(ours, want, rtol=RTOL_CAPTUM_GRADS, atol=atol_reorder(want))


def test_tracincp_intermediate_quantities_equal_captums_with_unit_learning_rates(eng, tb, cnn):
    cfg = Cfg("cp", "none", layers=("conv1", "fc2"), plain=True)
    theirs = tb.captum(cnn, cfg).compute_intermediate_quantities(cnn.test).detach()
    ours = tb.engine(eng, cnn, cfg).compute_intermediate_quantities(cnn.test)
    torch.testing.assert_close(ours, theirs, rtol=RTOL_CAPTUM_GRADS, atol=atol_reorder(theirs))


@pytest.mark.parametrize("setup_name", ["mlp", "cnn"])
def test_tracincp_intermediate_quantities_dot_products_are_the_scores(eng, tb, request, setup_name):
    s = request.getfixturevalue(setup_name)
    cfg = Cfg("cp", "none")
    obj = tb.engine(eng, s, cfg)
    test_emb = obj.compute_intermediate_quantities(s.test)
    train_emb = obj.compute_intermediate_quantities(s.train_loader())
    assert_scores_close(test_emb @ train_emb.T, tb.oracle_scores(s, cfg))
    agg = obj.compute_intermediate_quantities(s.test, aggregate=True)
    torch.testing.assert_close(agg, test_emb.sum(0, keepdim=True), rtol=RTOL_REORDER, atol=atol_reorder(test_emb))


def test_tracincp_intermediate_quantities_in_bounded_chunks(eng, tb, cnn, monkeypatch):
    """Materialised per-example gradients are computed a bounded number of rows at a time: same values."""
    cfg = Cfg("cp", "none")
    want = tb.engine(eng, cnn, cfg).compute_intermediate_quantities(cnn.test_loader(batch_size=5))
    obj = tb.engine(eng, cnn, cfg)
    seen = []
    obj.model.conv1.register_forward_hook(
        lambda m, i, o: seen.append(i[0].shape[0]) if torch.is_grad_enabled() else None
    )
    monkeypatch.setattr(eng.TracInCP, "max_grad_floats", 2 * 62006)  # the Net has 62,006 parameters
    got = obj.compute_intermediate_quantities(cnn.test_loader(batch_size=5))
    # chunks of 2 rows and of 5 sum each gradient's terms (a conv weight's: one per output position) in another
    # order, so float32 rounding differs by a few ulps of the largest term, not of each value
    torch.testing.assert_close(got, want, rtol=RTOL_REORDER, atol=atol_reorder(want))
    assert max(seen) == 2


def test_randproj_intermediate_quantities_aggregate(eng, tb, mlp):
    obj = tb.engine(eng, mlp, Cfg("rp", "sum"))
    rows = obj.compute_intermediate_quantities(mlp.test_loader())
    agg = obj.compute_intermediate_quantities(mlp.test_loader(), aggregate=True)
    assert agg.shape == (1, rows.shape[1])
    torch.testing.assert_close(agg, rows.sum(0, keepdim=True))


# ---------------------------------------------------------------------------------------------------------------------
# DataParallel / DistributedDataParallel
# ---------------------------------------------------------------------------------------------------------------------
def _wrapped_checkpoints(wrapper, setup, folder):
    """Checkpoints saved from the wrapper (``module.`` keys), with their learning rates."""
    paths = []
    for i, path in enumerate(setup.ckpts):
        wrapper.module.load_state_dict(torch.load(path)["model_state_dict"])
        paths.append(str(folder / f"wrapped-{i}.pt"))
        torch.save({"model_state_dict": wrapper.state_dict(), "lr": setup.lrs[i]}, paths[-1])
    return paths


def _load_into_wrapper(model, path):
    ckpt = torch.load(path)
    model.load_state_dict(ckpt["model_state_dict"])  # fails unless ``model`` is the wrapper (module. keys)
    return ckpt["lr"]


def _check_wrapped(eng, tb, s, wrapper, tmp_path, snapshot, assert_restored):
    wrapper.module.load_state_dict(s.model().state_dict())  # the user's weights
    paths = _wrapped_checkpoints(wrapper, s, tmp_path)
    wrapper.module.load_state_dict(s.model().state_dict())
    wrapper.train()
    snap = snapshot(wrapper)
    loss_sum, loss_none = s.loss("sum"), s.loss("none")
    for load in (_load_into_wrapper, None):  # the user's load func (into the wrapper) and the default loader
        ckpts = paths
        kw = {"checkpoints_load_func": load} if load else {}
        cp = eng.TracInCP(wrapper, s.train_dataset(), ckpts, layers=["module.fc1", "fc2"], loss_fn=loss_none, **kw)
        cp_ref = tb.engine(eng, s, Cfg("cp", "none", layers=("fc1", "fc2")))  # the default loader reads "lr" too
        assert_scores_close(cp.influence(s.test), cp_ref.influence(s.test))
        assert_scores_close(cp.self_influence(), cp_ref.self_influence(), what="self-influence")
        torch.testing.assert_close(
            cp.compute_intermediate_quantities(s.test), cp_ref.compute_intermediate_quantities(s.test)
        )
        for final in ("module.fc2", "fc2", wrapper.module.fc2):
            fast = eng.TracInCPFast(wrapper, final, s.train_dataset(), ckpts, loss_fn=loss_sum, **kw)
            assert fast.final_fc_layer_name == "fc2"
            ref = tb.engine(eng, s, Cfg("fast", "sum"))
            assert_scores_close(fast.influence(s.test), ref.influence(s.test))
            assert_scores_close(fast.self_influence(), ref.self_influence(), what="self-influence")
        rp = eng.TracInCPFastRandProj(
            wrapper,
            "module.fc2",
            s.train_dataset(),
            ckpts,
            loss_fn=loss_sum,
            nearest_neighbors=eng.ExactNearestNeighbors(),
            **kw,
        )
        rp_ref = tb.engine(eng, s, Cfg("rp", "sum"))
        got, want = rp.influence(s.test, k=3), rp_ref.influence(s.test, k=3)
        assert torch.equal(got.indices, want.indices)
        assert_restored(wrapper, snap)
    with pytest.raises(ValueError, match="the model has no layer named 'module.fc9'"):
        eng.TracInCPFast(wrapper, "module.fc9", s.train_dataset(), paths, loss_fn=loss_sum)


def test_data_parallel_models_score_like_the_unwrapped_model(eng, tb, mlp, tmp_path, snapshot, assert_restored):
    wrapper = nn.DataParallel(mlp.model())  # without GPUs it just calls the module
    _check_wrapped(eng, tb, mlp, wrapper, tmp_path, snapshot, assert_restored)


def test_distributed_data_parallel_models_score_like_the_unwrapped_model(
    eng, tb, mlp, tmp_path, snapshot, assert_restored
):
    dist = pytest.importorskip("torch.distributed")
    if not dist.is_available():
        pytest.skip("torch.distributed is not available in this build")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    try:
        wrapper = nn.parallel.DistributedDataParallel(mlp.model())
        _check_wrapped(eng, tb, mlp, wrapper, tmp_path, snapshot, assert_restored)
    finally:
        dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------------------------------
# show_progress
# ---------------------------------------------------------------------------------------------------------------------
def _printed(capsys) -> str:
    return capsys.readouterr().err


@pytest.mark.parametrize("kind", ["cp", "fast", "rp"])
def test_show_progress_prints_a_bar_in_every_mode(eng, tb, mlp, capsys, kind):
    obj = tb.engine(eng, mlp, Cfg(kind, "none" if kind == "cp" else "sum"))
    _printed(capsys)
    calls = {
        "influence(batch)": lambda: obj.influence(mlp.test, k=None, show_progress=True),
        "influence(loader)": lambda: obj.influence(mlp.test_loader(), k=None, show_progress=True),
        "influence(k)": lambda: obj.influence(mlp.test_loader(), k=2, show_progress=True),
        "opponents(k)": lambda: obj.influence(mlp.test, k=2, proponents=False, show_progress=True),
        "self_influence()": lambda: obj.self_influence(show_progress=True),
        "self_influence() again": lambda: obj.self_influence(show_progress=True),
        "self_influence(loader)": lambda: obj.self_influence(mlp.test_loader(), show_progress=True),
        "self_influence(batch)": lambda: obj.self_influence(mlp.test, show_progress=True),
        "fit": lambda: obj.fit(show_progress=True),
    }
    if kind == "cp":
        calls["influence(batch) again"] = calls["influence(batch)"]
        calls["influence(aggregate)"] = lambda: obj.influence(mlp.test, show_progress=True, aggregate=True)
    for what, call in calls.items():
        call()
        err = _printed(capsys)
        assert "100%" in err, f"{kind} {what} printed no finished progress bar: {err!r}"
    obj.influence(mlp.test, k=None)
    obj.self_influence(mlp.test_loader())
    assert _printed(capsys) == ""  # show_progress=False stays quiet


@pytest.mark.parametrize("kind", ["cp", "fast"])
def test_show_progress_on_a_fresh_object_shows_the_passes(eng, tb, mlp, capsys, kind):
    obj = tb.engine(eng, mlp, Cfg(kind, "none" if kind == "cp" else "sum"))
    _printed(capsys)
    obj.self_influence(mlp.test_loader(), show_progress=True)
    err = _printed(capsys)
    assert "load checkpoints" in err and "self influence" in err
    obj.influence(mlp.test, show_progress=True)
    err = _printed(capsys)
    assert ("influence" if kind == "cp" else "training factors") in err


def test_self_influence_of_a_loader_reports_to_the_progress_callback(eng, tb, mlp):
    calls = []
    obj = tb.engine(eng, mlp, Cfg("fast", "sum"), progress_callback=lambda *a: calls.append(a))
    obj.fit()
    calls.clear()
    obj.self_influence(mlp.test_loader())
    assert ("self influence", len(mlp.test[1]), len(mlp.test[1])) in calls


# ---------------------------------------------------------------------------------------------------------------------
# RandProj score dtype
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("rerank", [None, 3])
def test_randproj_scores_are_float32_like_captums(eng, tb, mlp, rerank):
    pytest.importorskip("annoy")
    cfg = Cfg("rp", "sum")
    obj = tb.engine(eng, mlp, cfg, nearest_neighbors=eng.AnnoyNearestNeighbors(), rerank=rerank)
    theirs = tb.captum(mlp, cfg)
    with torch.random.fork_rng():
        want_k, want_all = theirs.influence(mlp.test, k=3), theirs.influence(mlp.test, k=None)
    for proponents in (True, False):
        res = obj.influence(mlp.test, k=3, proponents=proponents)
        assert res.influence_scores.dtype == want_k.influence_scores.dtype == torch.float32
        assert res.indices.dtype == torch.int64
    assert obj.influence(mlp.test, k=None).dtype == want_all.dtype == torch.float32
    projected = tb.engine(eng, mlp, cfg, nearest_neighbors=eng.AnnoyNearestNeighbors(), rerank=rerank, projection_dim=4)
    assert projected.influence(mlp.test, k=3).influence_scores.dtype == torch.float32
    assert projected.influence(mlp.test, k=None).dtype == torch.float32
