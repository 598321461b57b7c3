"""Score mode (k=None) of TracInCP / TracInCPFast / TracInCPFastRandProj against the float64 oracle AND captum."""

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from .conftest import Cfg, checkpoints_load_func
from .oracle import assert_scores_close

REFS = ["oracle", "captum"]

SCORE_CASES = [
    # classification MLP: every loss reduction each class accepts
    ("mlp", Cfg("cp", "none")),
    ("mlp", Cfg("cp", "sum", sample_wise=True)),
    ("mlp", Cfg("cp", "mean", sample_wise=True)),
    ("mlp", Cfg("cp", None)),  # loss_fn=None: gradient of the summed outputs
    ("mlp", Cfg("fast", "sum")),
    ("mlp", Cfg("fast", "mean")),
    ("mlp", Cfg("rp", "sum")),
    ("mlp", Cfg("rp", "mean")),
    # tutorial CNN: all layers and subsets
    ("cnn", Cfg("cp", "none")),
    ("cnn", Cfg("cp", "none", layers=("fc2", "fc3"))),
    ("cnn", Cfg("cp", "sum", layers=("conv1", "fc3"), sample_wise=True)),
    ("cnn", Cfg("cp", "mean", sample_wise=True)),
    ("cnn", Cfg("fast", "sum")),
    ("cnn", Cfg("rp", "mean")),
    # regression MLP, MSELoss: "mean" must reproduce Captum's 1/D^2 quirk
    ("reg", Cfg("cp", "none")),
    ("reg", Cfg("cp", "sum", sample_wise=True)),
    ("reg", Cfg("cp", "mean", sample_wise=True)),
    ("reg", Cfg("fast", "sum")),
    ("reg", Cfg("fast", "mean")),
    ("reg", Cfg("rp", "mean")),
    # default loader on plain state-dict files (lr 1)
    ("mlp", Cfg("cp", "none", plain=True)),
    ("mlp", Cfg("fast", "sum", plain=True)),
]
IDS = [f"{n}-{c.id()}" for n, c in SCORE_CASES]


@pytest.mark.parametrize("ref", REFS)
@pytest.mark.parametrize("name,cfg", SCORE_CASES, ids=IDS)
def test_scores_match_reference(eng, tb, get_setup, name, cfg, ref):
    setup = get_setup(name)
    scores = tb.engine(eng, setup, cfg).influence(setup.test, k=None)
    assert isinstance(scores, torch.Tensor)
    assert scores.dtype == torch.float32 and scores.device.type == "cpu"
    assert tuple(scores.shape) == (setup.test[0].shape[0], setup.n_train)
    assert_scores_close(scores, tb.ref_scores(ref, setup, cfg), what=f"engine vs {ref} {cfg.id()}")


@pytest.mark.parametrize("kind", ["cp", "fast"])
def test_mse_mean_is_one_over_d_squared_of_sum(eng, tb, reg, kind):
    sw = kind == "cp"
    s_sum = tb.engine(eng, reg, Cfg(kind, "sum", sample_wise=sw)).influence(reg.test, k=None)
    s_mean = tb.engine(eng, reg, Cfg(kind, "mean", sample_wise=sw)).influence(reg.test, k=None)
    assert_scores_close(s_mean * 9.0, s_sum)


CONTAINER_CFGS = [Cfg("cp", "none"), Cfg("cp", "sum", sample_wise=True), Cfg("fast", "sum"), Cfg("rp", "sum")]


@pytest.mark.parametrize("inputs", ["tuple", "loader"])
@pytest.mark.parametrize("train", ["dataset", "loader"])
@pytest.mark.parametrize("cfg", CONTAINER_CFGS, ids=[c.id() for c in CONTAINER_CFGS])
def test_train_dataset_and_inputs_containers(eng, tb, mlp, cfg, train, inputs):
    """train_dataset: Dataset + batch_size or DataLoader(shuffle=False); inputs: tuple batch or DataLoader."""
    obj = tb.engine(eng, mlp, cfg, train=train)
    test = mlp.test if inputs == "tuple" else mlp.test_loader(batch_size=2)  # 5 test rows -> batches 2, 2, 1
    assert_scores_close(obj.influence(test, k=None), tb.oracle_scores(mlp, cfg))


def test_cnn_train_loader_and_input_loader(eng, tb, cnn):
    cfg = Cfg("cp", "none", layers=("fc2", "fc3"))
    obj = tb.engine(eng, cnn, cfg, train="loader")
    assert_scores_close(obj.influence(cnn.test_loader(3), k=None), tb.oracle_scores(cnn, cfg))


def test_inputs_as_list(eng, tb, mlp):
    cfg = Cfg("fast", "sum")
    scores = tb.engine(eng, mlp, cfg).influence(list(mlp.test), k=None)
    assert_scores_close(scores, tb.oracle_scores(mlp, cfg))


@pytest.mark.parametrize("kind", ["cp", "fast", "rp"])
def test_learning_rate_per_checkpoint(eng, tb, mlp, kind):
    """lr returned by checkpoints_load_func weights each checkpoint (0.5, 1, 2); scores are linear in it."""
    red = "none" if kind == "cp" else "sum"
    with_lr = tb.engine(eng, mlp, Cfg(kind, red)).influence(mlp.test, k=None)
    plain = tb.engine(eng, mlp, Cfg(kind, red, plain=True)).influence(mlp.test, k=None)
    assert_scores_close(with_lr, tb.oracle_scores(mlp, Cfg(kind, red)))
    assert_scores_close(plain, tb.oracle_scores(mlp, Cfg(kind, red, plain=True)))
    assert not torch.allclose(with_lr, plain, rtol=1e-2)  # lr actually used

    def load_times_3(net, path):
        return 3.0 * checkpoints_load_func(net, path)

    tripled = tb.engine(eng, mlp, Cfg(kind, red), checkpoints_load_func=load_times_3).influence(mlp.test, k=None)
    assert_scores_close(tripled, 3.0 * with_lr)


@pytest.mark.parametrize("kind", ["cp", "fast"])
def test_checkpoint_directory(eng, tb, mlp, kind):
    """A directory is accepted (default loader on plain state dicts; custom loader on dict checkpoints)."""
    red = "none" if kind == "cp" else "sum"
    scores = _engine_with_ckpts(eng, mlp, kind, red, mlp.plain_dir, None).influence(mlp.test, k=None)
    assert_scores_close(scores, tb.oracle_scores(mlp, Cfg(kind, red, plain=True)))
    scores = _engine_with_ckpts(eng, mlp, kind, red, mlp.ckpt_dir, checkpoints_load_func).influence(mlp.test, k=None)
    assert_scores_close(scores, tb.oracle_scores(mlp, Cfg(kind, red)))


def test_checkpoint_list_order_irrelevant(eng, tb, mlp):
    ckpts = list(reversed(mlp.ckpts))
    scores = _engine_with_ckpts(eng, mlp, "fast", "sum", ckpts, checkpoints_load_func).influence(mlp.test, k=None)
    assert_scores_close(scores, tb.oracle_scores(mlp, Cfg("fast", "sum")))


@pytest.mark.parametrize("key", ["model_state_dict", "state_dict"])
def test_default_loader_nested_state_dict(eng, tb, mlp, tmp_path, key):
    paths = []
    for i, p in enumerate(mlp.plain_ckpts):
        out = tmp_path / f"ckpt-{i}.pt"
        torch.save({key: torch.load(p)}, out)
        paths.append(str(out))
    scores = _engine_with_ckpts(eng, mlp, "cp", "none", paths, None).influence(mlp.test, k=None)
    assert_scores_close(scores, tb.oracle_scores(mlp, Cfg("cp", "none", plain=True)))


def _engine_with_ckpts(eng, setup, kind, red, ckpts, load):
    kw = dict(loss_fn=setup.loss(red), batch_size=setup.batch_size)
    if load is not None:
        kw["checkpoints_load_func"] = load
    model, ds = setup.model(), setup.train_dataset()
    if kind == "cp":
        return eng.TracInCP(model, ds, ckpts, **kw)
    return eng.TracInCPFast(model, setup.final, ds, ckpts, **kw)


@pytest.mark.parametrize("ref", REFS)
@pytest.mark.parametrize("sw", [False, True])
def test_aggregate_is_sum_over_test_rows(eng, tb, cnn, ref, sw):
    cfg = Cfg("cp", "sum" if sw else "none", layers=("fc2", "fc3"), sample_wise=sw)
    obj = tb.engine(eng, cnn, cfg)
    agg = obj.influence(cnn.test, k=None, aggregate=True)
    assert tuple(agg.shape) == (1, cnn.n_train)
    assert_scores_close(agg, tb.ref_scores(ref, cnn, cfg, aggregate=True))
    assert_scores_close(agg, obj.influence(cnn.test, k=None).sum(0, keepdim=True))


def test_aggregate_with_dataloader_inputs(eng, tb, mlp):
    cfg = Cfg("cp", "none")
    agg = tb.engine(eng, mlp, cfg).influence(mlp.test_loader(2), k=None, aggregate=True)
    assert_scores_close(agg, tb.oracle_scores(mlp, cfg, aggregate=True))


class _Twice(torch.nn.Module):
    """2 x CrossEntropy with the given reduction (a custom loss exposing ``.reduction``)."""

    def __init__(self, reduction):
        super().__init__()
        self.reduction = reduction
        self.ce = torch.nn.CrossEntropyLoss(reduction=reduction)

    def forward(self, out, y):
        return 2.0 * self.ce(out, y)


@pytest.mark.parametrize(
    "cfg", [Cfg("cp", "none"), Cfg("cp", "sum", sample_wise=True), Cfg("fast", "sum")], ids=lambda c: c.id()
)
def test_test_loss_fn_differs_from_loss_fn(eng, tb, mlp, cfg):
    """test_loss_fn is used for the test side only: 2 x loss on the test side doubles the scores (as Captum)."""
    base = tb.engine(eng, mlp, cfg).influence(mlp.test, k=None)
    twice = tb.engine(eng, mlp, cfg, test_loss_fn=_Twice(cfg.reduction)).influence(mlp.test, k=None)
    assert_scores_close(twice, 2.0 * base)
    assert_scores_close(base, tb.oracle_scores(mlp, cfg))


def test_randproj_test_loss_fn_only_on_test_side(eng, tb, mlp):
    """Captum 0.9's RandProj wrongly uses test_loss_fn for the TRAIN embeddings too (4x here, engine-anchors 1.9).

    Decision pinned here: the engine uses it for the test side only, like TracInCP/TracInCPFast (2x)."""
    base = tb.engine(eng, mlp, Cfg("rp", "sum")).influence(mlp.test, k=None)
    twice = tb.engine(eng, mlp, Cfg("rp", "sum"), test_loss_fn=_Twice("sum")).influence(mlp.test, k=None)
    assert_scores_close(twice, 2.0 * base)


def test_unbatched_dataset_batch_size_1_default_like_captum(eng, tb, mlp):
    """Explicit batch_size=1 (Captum's default) still gives the same scores."""
    cfg = Cfg("fast", "mean")
    obj = tb.engine(eng, mlp, cfg, train=TensorDataset(*mlp.train), batch_size=1)
    assert_scores_close(obj.influence(mlp.test, k=None), tb.oracle_scores(mlp, cfg))


def test_odd_batch_size_mean_rescaling(eng, tb, reg):
    """ "mean" rescaling uses each batch's own size (last batch smaller): DataLoader batch 7 on 48 rows."""
    cfg = Cfg("cp", "mean", sample_wise=True)
    loader = DataLoader(TensorDataset(*reg.train), batch_size=7, shuffle=False)
    obj = tb.engine(eng, reg, cfg, train=loader)
    assert_scores_close(obj.influence(reg.test_loader(3), k=None), tb.oracle_scores(reg, cfg))
