"""Validate the float64 oracle itself: against captum 0.9.0, and against identities it must satisfy.

They need no engine: a broken oracle fails here before it is used to judge the engine.
"""

import copy

import pytest
import torch

from .conftest import Cfg
from .oracle import TracInOracle, assert_scores_close
from .tolerances import RTOL_FLOAT64

# (setup, cfg) pairs covering every loss/layer/mode combination the engine suite relies on
ORACLE_CASES = [
    ("mlp", Cfg("cp", "none")),
    ("mlp", Cfg("cp", "sum", sample_wise=True)),
    ("mlp", Cfg("cp", "mean", sample_wise=True)),
    ("mlp", Cfg("cp", None)),
    ("mlp", Cfg("cp", "none", layers=("fc2",))),
    ("mlp", Cfg("fast", "sum")),
    ("mlp", Cfg("fast", "mean")),
    ("mlp", Cfg("rp", "sum")),
    ("mlp", Cfg("cp", "none", plain=True)),
    ("mlp", Cfg("fast", "sum", plain=True)),
    ("cnn", Cfg("cp", "none")),
    ("cnn", Cfg("cp", "sum", sample_wise=True)),
    ("cnn", Cfg("cp", "none", layers=("fc2", "fc3"))),
    ("cnn", Cfg("cp", "mean", layers=("conv1", "fc3"), sample_wise=True)),
    ("cnn", Cfg("fast", "sum")),
    ("cnn", Cfg("fast", "mean")),
    ("cnn", Cfg("fast", "sum", final="relu4")),
    ("cnn", Cfg("rp", "sum", final="relu4")),
    ("reg", Cfg("cp", "none")),
    ("reg", Cfg("cp", "sum", sample_wise=True)),
    ("reg", Cfg("cp", "mean", sample_wise=True)),
    ("reg", Cfg("fast", "sum")),
    ("reg", Cfg("fast", "mean")),
    ("reg", Cfg("rp", "mean")),
]


@pytest.mark.parametrize("name,cfg", ORACLE_CASES, ids=[f"{n}-{c.id()}" for n, c in ORACLE_CASES])
def test_oracle_matches_captum_scores(get_setup, tb, name, cfg):
    setup = get_setup(name)
    assert_scores_close(tb.captum_scores(setup, cfg), tb.oracle_scores(setup, cfg), what=f"captum vs oracle {cfg.id()}")


SELF_CASES = [
    ("mlp", Cfg("cp", "none")),
    ("mlp", Cfg("fast", "sum")),
    ("cnn", Cfg("cp", "mean", sample_wise=True)),
    ("cnn", Cfg("fast", "sum", final="relu4")),
    ("reg", Cfg("fast", "mean")),
    ("reg", Cfg("cp", "none", layers=("fc1",))),
]


@pytest.mark.parametrize("name,cfg", SELF_CASES, ids=[f"{n}-{c.id()}" for n, c in SELF_CASES])
def test_oracle_matches_captum_self_influence(get_setup, tb, name, cfg):
    setup = get_setup(name)
    assert_scores_close(tb.captum_self(setup, cfg), tb.oracle_self(setup, cfg), what="captum vs oracle self")


def test_oracle_captum_aggregate(cnn, tb):
    cfg = Cfg("cp", "sum", layers=("fc2", "fc3"), sample_wise=True)
    agg = tb.oracle_scores(cnn, cfg, aggregate=True)
    assert agg.shape == (1, cnn.n_train)
    assert_scores_close(agg, tb.oracle_scores(cnn, cfg).sum(0, keepdim=True))
    assert_scores_close(tb.captum_scores(cnn, cfg, aggregate=True), agg)


@pytest.mark.parametrize("kind", ["cp", "fast"])
def test_mse_mean_quirk_is_one_over_d_squared(reg, tb, kind):
    """Captum rescales "mean" by N only: MSE-mean on D=3 outputs gives exactly 1/9 of "sum"."""
    sw = kind == "cp"
    s_sum = tb.oracle_scores(reg, Cfg(kind, "sum", sample_wise=sw))
    s_mean = tb.oracle_scores(reg, Cfg(kind, "mean", sample_wise=sw))
    d = reg.train[1].shape[1]
    assert d == 3
    assert_scores_close(s_mean * d**2, s_sum, rtol=RTOL_FLOAT64)
    c_sum = tb.captum_scores(reg, Cfg(kind, "sum", sample_wise=sw))
    c_mean = tb.captum_scores(reg, Cfg(kind, "mean", sample_wise=sw))
    assert_scores_close(c_mean * d**2, c_sum)


def test_ce_reductions_agree(mlp, tb):
    """For CrossEntropy (mean divides by N only) none/sum/mean all give the same scores."""
    ref = tb.oracle_scores(mlp, Cfg("cp", "none"))
    assert_scores_close(tb.oracle_scores(mlp, Cfg("cp", "sum", sample_wise=True)), ref, rtol=RTOL_FLOAT64)
    assert_scores_close(tb.oracle_scores(mlp, Cfg("cp", "mean", sample_wise=True)), ref, rtol=RTOL_FLOAT64)


def test_oracle_self_is_diagonal(cnn, tb):
    cfg = Cfg("cp", "none", layers=("conv1", "fc3"))
    orc = tb.oracle(cnn, cfg)
    full = orc.influence(cnn.train, cnn.train)
    assert_scores_close(tb.oracle_self(cnn, cfg), torch.diagonal(full), rtol=RTOL_FLOAT64)


def test_oracle_learning_rates_weight_checkpoints(mlp):
    """The dict checkpoints (lr .5/1/2) = lr-weighted sum of the per-checkpoint scores of the plain ones."""
    loss = torch.nn.CrossEntropyLoss(reduction="none")
    o_lr = TracInOracle(mlp.model(), mlp.ckpts, mlp.load_func, loss_fn=loss)
    o_plain = TracInOracle(mlp.model(), mlp.plain_ckpts, None, loss_fn=loss)
    gt, gr = o_plain.gradients(mlp.test, test=True), o_plain.gradients(mlp.train)
    assert [lr for lr, _ in gt] == [1.0, 1.0, 1.0]
    assert [lr for lr, _ in o_lr.gradients(mlp.test)] == list(mlp.lrs)
    manual = sum(lr * a @ b.T for lr, (_, a), (_, b) in zip(mlp.lrs, gt, gr, strict=False))
    assert_scores_close(o_lr.influence(mlp.test, mlp.train), manual, rtol=1e-12)
    # and the checkpoints really differ (otherwise lr tests would be vacuous)
    assert not torch.allclose(gr[0][1], gr[2][1])


def test_oracle_fast_mode_is_last_layer_weight_gradient(mlp):
    """Hook semantics on the true final layer == per-example gradient w.r.t. fc2.weight (no bias)."""
    loss = torch.nn.CrossEntropyLoss(reduction="sum")
    orc = TracInOracle(mlp.model(), mlp.ckpts[:1], mlp.load_func, final_fc_layer="fc2", loss_fn=loss)
    ((_, g_fast),) = orc.gradients(mlp.test)
    net = copy.deepcopy(mlp.model()).double()
    mlp.load_func(net, mlp.ckpts[0])
    for i in range(mlp.test[0].shape[0]):
        x, y = mlp.test[0][i : i + 1].double(), mlp.test[1][i : i + 1]
        (gw,) = torch.autograd.grad(loss(net(x), y), net.fc2.weight)
        torch.testing.assert_close(g_fast[i], gw.reshape(-1), rtol=1e-12, atol=1e-12)


def test_oracle_does_not_touch_user_model(mlp):
    model = mlp.model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    TracInOracle(model, mlp.ckpts, mlp.load_func, loss_fn=torch.nn.CrossEntropyLoss(reduction="none")).influence(
        mlp.test, mlp.train
    )
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]) and v.dtype == torch.float32
