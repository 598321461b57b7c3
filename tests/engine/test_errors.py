"""Clear errors: ValueError / TypeError (never AssertionError) naming the argument and the fix.

Where an error may be raised either at construction or at the first call (lazy loading), both are inside the
``pytest.raises`` block.
"""

import argparse
import os
import re

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from .conftest import Cfg
from .oracle import assert_scores_close

ERR = (ValueError, TypeError)


def _run(eng, setup, ckpts, load=None, kind="fast", **kw):
    kw.setdefault("loss_fn", setup.loss("none" if kind == "cp" else "sum"))
    kw.setdefault("batch_size", setup.batch_size)
    if load is not None:
        kw["checkpoints_load_func"] = load
    model, ds = setup.model(), kw.pop("train", setup.train_dataset())
    if kind == "cp":
        obj = eng.TracInCP(model, ds, ckpts, **kw)
    elif kind == "fast":
        obj = eng.TracInCPFast(model, kw.pop("final_fc_layer", setup.final), ds, ckpts, **kw)
    else:
        obj = eng.TracInCPFastRandProj(model, kw.pop("final_fc_layer", setup.final), ds, ckpts, **kw)
    return obj.influence(setup.test, k=None)


# ---------------------------------------------------------------------------------------------------------------------
# checkpoints
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["cp", "fast", "rp"])
def test_empty_checkpoint_list(eng, mlp, kind):
    with pytest.raises(ValueError, match=r"(?i)no checkpoints|checkpoints.*empty|empty.*checkpoints"):
        _run(eng, mlp, [], kind=kind)


def test_empty_checkpoint_folder(eng, mlp, tmp_path):
    """Every regular, non-hidden file of a folder is a checkpoint (see test_config.py); hidden files and
    subfolders are not, so this folder holds none."""
    (tmp_path / ".notes.txt").write_text("not a checkpoint")
    (tmp_path / "old").mkdir()
    with pytest.raises(ValueError, match=r"(?i)no checkpoints|checkpoints.*empty|empty.*checkpoints") as ei:
        _run(eng, mlp, str(tmp_path))
    assert str(tmp_path) in str(ei.value) or tmp_path.name in str(ei.value)


def test_unloadable_checkpoint_names_the_file(eng, mlp, tmp_path):
    bad = tmp_path / "checkpoint-2.pt"
    bad.write_bytes(b"this is not a torch file")
    with pytest.raises(ERR, match=re.escape(bad.name)):
        _run(eng, mlp, [mlp.plain_ckpts[0], str(bad)])


def test_checkpoint_keys_do_not_fit(eng, mlp, cnn):
    """An MLP checkpoint for the CNN: the message names the file and the missing/unexpected keys."""
    path = mlp.plain_ckpts[1]
    with pytest.raises(ERR, match=re.escape(os.path.basename(path))) as ei:
        _run(eng, cnn, [path])
    msg = str(ei.value)
    assert re.search(r"(?i)missing|unexpected", msg), msg
    assert "conv1.weight" in msg or "fc3.weight" in msg, msg


def test_nan_checkpoint_names_the_file(eng, tb, mlp, tmp_path):
    sd = torch.load(mlp.plain_ckpts[1])
    sd["fc1.weight"][0, 0] = float("nan")
    nan_path = tmp_path / "checkpoint-nan.pt"
    torch.save(sd, nan_path)
    for kind in ("cp", "fast"):
        with pytest.raises(ERR, match=re.escape(nan_path.name)):
            _run(eng, mlp, [mlp.plain_ckpts[0], str(nan_path)], kind=kind)


def test_weights_only_by_default(eng, tb, mlp, tmp_path):
    """A checkpoint with a pickled custom object fails under weights_only=True, suggesting the way out."""
    paths = []
    for i, p in enumerate(mlp.plain_ckpts):
        out = tmp_path / f"checkpoint-{i}.pt"
        torch.save({"model_state_dict": torch.load(p), "hparams": argparse.Namespace(lr=0.1)}, out)
        paths.append(str(out))
    with pytest.raises(ERR, match=r"weights_only") as ei:
        _run(eng, mlp, paths)
    assert re.search(r"weights_only=False|checkpoints_load_func|loader", str(ei.value)), str(ei.value)
    scores = _run(eng, mlp, paths, weights_only=False)
    assert_scores_close(scores, tb.oracle_scores(mlp, Cfg("fast", "sum", plain=True)))


# ---------------------------------------------------------------------------------------------------------------------
# layers / final_fc_layer
# ---------------------------------------------------------------------------------------------------------------------
def test_unknown_layer_name_suggests_close_name(eng, cnn):
    with pytest.raises(ERR, match=r"(?s)(?=.*fc_3)(?=.*\bfc3\b)"):
        _run(eng, cnn, cnn.ckpts, cnn.load_func, kind="cp", layers=["fc2", "fc_3"])


@pytest.mark.parametrize("kind", ["fast", "rp"])
def test_unknown_final_fc_layer_suggests_close_name(eng, cnn, kind):
    with pytest.raises(ERR, match=r"(?s)(?=.*fc_3)(?=.*\bfc3\b)"):
        _run(eng, cnn, cnn.ckpts, cnn.load_func, kind=kind, final_fc_layer="fc_3")


def test_empty_layers(eng, mlp):
    with pytest.raises(ERR, match=r"layers"):
        _run(eng, mlp, mlp.ckpts, mlp.load_func, kind="cp", layers=[])


# ---------------------------------------------------------------------------------------------------------------------
# loss_fn reductions
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["fast", "rp"])
def test_fast_rejects_reduction_none(eng, mlp, kind):
    with pytest.raises(ValueError, match=r"(?s)loss_fn.*(sum.*mean|mean.*sum)"):
        _run(eng, mlp, mlp.ckpts, mlp.load_func, kind=kind, loss_fn=nn.CrossEntropyLoss(reduction="none"))


@pytest.mark.parametrize("kind", ["fast", "rp"])
def test_fast_rejects_missing_loss(eng, mlp, kind):
    with pytest.raises(ERR, match=r"loss_fn"):
        _run(eng, mlp, mlp.ckpts, mlp.load_func, kind=kind, loss_fn=None)


def test_tracincp_loop_mode_rejects_sum(eng, mlp):
    with pytest.raises(ValueError, match=r"(?s)loss_fn.*none"):
        _run(eng, mlp, mlp.ckpts, mlp.load_func, kind="cp", loss_fn=nn.CrossEntropyLoss(reduction="sum"))


def test_tracincp_sample_wise_rejects_none(eng, mlp):
    with pytest.raises(ValueError, match=r"(?s)loss_fn.*(sum.*mean|mean.*sum)"):
        _run(
            eng,
            mlp,
            mlp.ckpts,
            mlp.load_func,
            kind="cp",
            loss_fn=nn.CrossEntropyLoss(reduction="none"),
            sample_wise_grads_per_batch=True,
        )


# ---------------------------------------------------------------------------------------------------------------------
# influence() arguments
# ---------------------------------------------------------------------------------------------------------------------
@pytest.fixture
def fast_obj(eng, mlp):
    return eng.TracInCPFast(
        mlp.model(), "fc2", mlp.train_dataset(), mlp.ckpts, mlp.load_func, loss_fn=mlp.loss("sum"), batch_size=16
    )


@pytest.mark.parametrize("k", [0, -1])
def test_bad_k_value(fast_obj, mlp, k):
    with pytest.raises(ValueError, match=r"\bk\b"):
        fast_obj.influence(mlp.test, k=k)


@pytest.mark.parametrize("k", [2.5, "3"])
def test_bad_k_type(fast_obj, mlp, k):
    with pytest.raises(ERR, match=r"\bk\b"):
        fast_obj.influence(mlp.test, k=k)


@pytest.mark.parametrize("kind", ["cp", "fast", "rp"])
@pytest.mark.parametrize("how", ["bare tensor", "1-tuple"])
def test_inputs_without_labels(eng, tb, mlp, kind, how):
    obj = tb.engine(eng, mlp, Cfg(kind, "none" if kind == "cp" else "sum"))
    inputs = mlp.test[0] if how == "bare tensor" else (mlp.test[0],)
    with pytest.raises(ERR, match=r"(?i)label"):
        obj.influence(inputs, k=None)
    with pytest.raises(ERR, match=r"(?i)label"):
        obj.self_influence(inputs)


def test_inputs_none(fast_obj):
    with pytest.raises(ERR, match=r"(?i)inputs"):
        fast_obj.influence(None, k=None)


@pytest.mark.parametrize("kind", ["cp", "fast", "rp"])
def test_test_batch_model_cannot_take(eng, tb, mlp, kind):
    obj = tb.engine(eng, mlp, Cfg(kind, "none" if kind == "cp" else "sum"))
    bad = (torch.randn(3, 7), torch.tensor([0, 1, 2]))
    with pytest.raises(ERR, match=r"(?i)test.?batch|inputs"):
        obj.influence(bad, k=None)


@pytest.mark.parametrize("kind", ["cp", "fast", "rp"])
def test_shuffled_train_loader_rejected(eng, mlp, kind):
    loader = DataLoader(mlp.train_dataset(), batch_size=16, shuffle=True)
    with pytest.raises(ValueError, match=r"shuffle"):
        _run(eng, mlp, mlp.ckpts, mlp.load_func, kind=kind, train=loader, batch_size=None)


def test_dataset_without_batch_size_is_not_an_assertion(eng, tb, mlp):
    """Captum asserts here; the engine either picks a batch size (and is right) or raises a clear error."""
    try:
        scores = _run(eng, mlp, mlp.ckpts, mlp.load_func, batch_size=None)
    except ERR as exc:
        assert "batch_size" in str(exc)
    else:
        assert_scores_close(scores, tb.oracle_scores(mlp, Cfg("fast", "sum")))
