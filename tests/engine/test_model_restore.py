"""The user's model is restored after every call: weights, per-module train/eval flags, requires_grad flags.
Also: computation happens in eval mode; progress_callback contract; Cancelled aborts cleanly."""

import pytest
import torch
from torch import nn

from .conftest import MLP, Cfg
from .oracle import assert_scores_close

RESTORE_CFGS = [
    Cfg("cp", "none", layers=("conv1", "fc3")),
    Cfg("cp", "sum", sample_wise=True, layers=("conv1", "fc3")),
    Cfg("cp", "none"),
    Cfg("fast", "sum"),
    Cfg("rp", "sum"),
]


def _user_model(setup):
    model = setup.model()
    model.train()
    model.relu2.eval()  # mixed per-module flags must survive as they are
    model.conv1.weight.requires_grad_(False)  # frozen, but inside the selected layers
    model.fc3.weight.requires_grad_(False)
    model.fc1.bias.requires_grad_(False)
    return model


@pytest.mark.parametrize("cfg", RESTORE_CFGS, ids=[c.id() for c in RESTORE_CFGS])
def test_model_restored_after_every_call(eng, tb, cnn, snapshot, assert_restored, cfg):
    model = _user_model(cnn)
    snap = snapshot(model)
    obj = tb.engine(eng, cnn, cfg, model=model)
    assert_restored(model, snap)
    if hasattr(obj, "fit"):
        assert obj.fit() is obj
        assert_restored(model, snap)
    scores = obj.influence(cnn.test, k=None)
    assert_restored(model, snap)
    obj.influence(cnn.test, k=3, proponents=False)
    assert_restored(model, snap)
    obj.self_influence()
    assert_restored(model, snap)
    obj.self_influence(cnn.test, outer_loop_by_checkpoints=True)
    assert_restored(model, snap)
    if cfg.layers is not None or cfg.kind != "cp":
        # frozen parameters of the selected layers are still used (Captum turns requires_grad on for them)
        assert_scores_close(scores, tb.oracle_scores(cnn, cfg))


def test_frozen_params_all_layers_restored(eng, tb, mlp, snapshot, assert_restored):
    model = mlp.model()
    model.fc1.weight.requires_grad_(False)
    snap = snapshot(model)
    obj = tb.engine(eng, mlp, Cfg("cp", "none"), model=model)
    obj.influence(mlp.test, k=None)
    obj.self_influence()
    assert_restored(model, snap)


@pytest.mark.parametrize("kind", ["cp", "fast", "rp"])
def test_restored_after_an_error(eng, tb, mlp, snapshot, assert_restored, kind):
    model = mlp.model().train()
    snap = snapshot(model)
    obj = tb.engine(eng, mlp, Cfg(kind, "none" if kind == "cp" else "sum"), model=model)
    bad = (torch.randn(3, 7), torch.tensor([0, 1, 2]))  # wrong feature size
    with pytest.raises((ValueError, TypeError, RuntimeError)):
        obj.influence(bad, k=None)
    assert_restored(model, snap)


class DropMLP(MLP):
    """MLP + dropout: in train mode every forward differs; state-dict compatible with MLP checkpoints."""

    def __init__(self):
        super().__init__()
        self.drop = nn.Dropout(p=0.5)

    def forward(self, x):
        return self.fc2(self.drop(self.relu1(self.fc1(x))))


@pytest.mark.parametrize("kind", ["cp", "fast"])
def test_computed_in_eval_mode(eng, tb, mlp, kind):
    cfg = Cfg(kind, "none" if kind == "cp" else "sum")
    torch.manual_seed(mlp.user_seed)
    model = DropMLP().train()
    scores = tb.engine(eng, mlp, cfg, model=model).influence(mlp.test, k=None)
    assert model.training and model.drop.training
    assert_scores_close(scores, tb.oracle_scores(mlp, cfg))  # the oracle uses eval mode (no dropout)


# ---------------------------------------------------------------------------------------------------------------------
# progress_callback
# ---------------------------------------------------------------------------------------------------------------------
def _check_progress_calls(calls):
    assert calls, "progress_callback never called"
    last = {}
    for phase, done, total in calls:
        assert isinstance(phase, str) and phase
        assert isinstance(done, int) and isinstance(total, int)
        assert 0 <= done <= total, (phase, done, total)
        last[phase] = (done, total)
    for phase, (done, total) in last.items():
        assert done == total, f"phase {phase!r} ended at {done}/{total}"


@pytest.mark.parametrize("kind", ["cp", "fast", "rp"])
@pytest.mark.parametrize("method", ["influence", "topk", "self_influence"])
def test_progress_callback_contract(eng, tb, mlp, kind, method):
    """On a fresh object (nothing cached yet) the first computation reports (phase, done, total), done reaching
    total; later calls, when they report at all, keep the same contract."""
    calls = []
    cfg = Cfg(kind, "none" if kind == "cp" else "sum")
    obj = tb.engine(eng, mlp, cfg, progress_callback=lambda phase, done, total: calls.append((phase, done, total)))
    run = {
        "influence": lambda: obj.influence(mlp.test, k=None),
        "topk": lambda: obj.influence(mlp.test, k=2),
        "self_influence": obj.self_influence,
    }[method]
    run()  # construction + first call
    _check_progress_calls(calls)
    calls.clear()
    run()
    if calls:
        _check_progress_calls(calls)


@pytest.mark.parametrize("kind", ["cp", "fast"])
@pytest.mark.parametrize("method", ["influence", "self_influence"])
def test_cancelled_aborts_and_restores(eng, tb, mlp, snapshot, assert_restored, kind, method):
    cfg = Cfg(kind, "none", layers=("fc1", "fc2")) if kind == "cp" else Cfg(kind, "sum")
    model = mlp.model().train()
    model.fc1.weight.requires_grad_(False)
    snap = snapshot(model)
    state = {"cancel": False, "calls_after_cancel": 0}

    def cb(phase, done, total):
        if state["cancel"]:
            state["calls_after_cancel"] += 1
            raise eng.Cancelled()

    obj = tb.engine(eng, mlp, cfg, model=model, progress_callback=cb)
    state["cancel"] = True
    with pytest.raises(eng.Cancelled):
        if method == "influence":
            obj.influence(mlp.test, k=None)
        else:
            obj.self_influence()
    assert state["calls_after_cancel"] == 1, "computation went on after the callback raised"
    assert_restored(model, snap)
    # the object is still usable and its cache was not corrupted
    state["cancel"] = False
    assert_scores_close(obj.influence(mlp.test, k=None), tb.oracle_scores(mlp, cfg))
    assert_scores_close(obj.self_influence(), tb.oracle_self(mlp, cfg))
    assert_restored(model, snap)


def test_cancelled_during_randproj_construction(eng, tb, mlp, snapshot, assert_restored):
    """TracInCPFastRandProj does its work in __init__ (like Captum): cancelling there restores the model."""
    model = mlp.model().train()
    snap = snapshot(model)
    seen = []

    def cb(phase, done, total):
        seen.append(phase)
        raise eng.Cancelled()

    with pytest.raises(eng.Cancelled):
        obj = tb.engine(eng, mlp, Cfg("rp", "sum"), model=model, progress_callback=cb)
        obj.influence(mlp.test, k=None)  # in case the engine builds lazily
    assert len(seen) == 1
    assert_restored(model, snap)


def test_cancelled_is_an_exception_class(eng):
    assert issubclass(eng.Cancelled, Exception)


def test_find_final_linear_layer_keeps_each_module_flag(eng, cnn):
    """model.train(was_training) would flip a submodule the user had put in eval mode."""
    model = _user_model(cnn)
    flags = {n: m.training for n, m in model.named_modules()}
    name, _ = eng.find_final_linear_layer(model, cnn.test[0][:2])
    assert name == "fc3"
    assert {n: m.training for n, m in model.named_modules()} == flags
    model.eval()
    model.fc1.train()
    flags = {n: m.training for n, m in model.named_modules()}
    eng.find_final_linear_layer(model, cnn.test[0][:2])
    assert {n: m.training for n, m in model.named_modules()} == flags
