"""Constructor inputs that are not what they claim to be: learning rates, loss functions, devices, checkpoint
folders. Each is refused (or accepted and right) the same way in all three classes, before any pass."""

from __future__ import annotations

import math
import re
import shutil
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tracin_widgets.influence import TracInWarning

from .conftest import Cfg
from .oracle import TracInOracle, assert_scores_close

ERR = (ValueError, TypeError)
KINDS = ["cp", "fast", "rp"]


def _build(eng, setup, kind, ckpts=None, load="setup", **kw):
    """An engine of ``kind`` on ``setup`` (construction only: RandProj runs its pass here, the others lazily)."""
    kw.setdefault("loss_fn", setup.loss("none" if kind == "cp" else "sum"))
    kw.setdefault("batch_size", setup.batch_size)
    if load == "setup":
        load = setup.load_func
    if load is not None:
        kw["checkpoints_load_func"] = load
    ckpts = setup.ckpts if ckpts is None else ckpts
    model, ds = setup.model(), setup.train_dataset()
    if kind == "cp":
        return eng.TracInCP(model, ds, ckpts, **kw)
    if kind == "fast":
        return eng.TracInCPFast(model, setup.final, ds, ckpts, **kw)
    kw.setdefault("nearest_neighbors", eng.ExactNearestNeighbors())
    return eng.TracInCPFastRandProj(model, setup.final, ds, ckpts, **kw)


def _scores(eng, setup, kind, **kw):
    return _build(eng, setup, kind, **kw).influence(setup.test, k=None)


def _lr_loader(lr_of):
    """A tutorial-style loader returning ``lr_of(index of the checkpoint)`` as the learning rate."""

    def load(net, path):
        weights = torch.load(path)
        net.load_state_dict(weights["model_state_dict"])
        return lr_of(int(re.search(r"checkpoint-(\d+)", path).group(1)))

    return load


# ---------------------------------------------------------------------------------------------------------------------
# learning rates
# ---------------------------------------------------------------------------------------------------------------------
BAD_LRS = [
    (-0.5, ValueError, r"is -0\.5 \(negative\): TracIn needs a finite learning rate >= 0"),
    (float("nan"), ValueError, r"is nan \(not finite\): TracIn needs a finite learning rate >= 0"),
    (float("inf"), ValueError, r"is inf \(not finite\): TracIn needs a finite learning rate >= 0"),
    (torch.tensor(float("nan")), ValueError, r"is nan \(not finite\)"),
    (np.float32(-1.0), ValueError, r"is -1\.0 \(negative\)"),
    ("0.1", TypeError, r"is str '0\.1', not a number"),
    (None, TypeError, r"is NoneType None, not a number"),
    (True, TypeError, r"is bool True, not a number"),
    (torch.tensor([0.1, 0.2]), TypeError, r"is Tensor tensor\(\[0\.1000, 0\.2000\]\), not a number"),
    (1 + 2j, TypeError, r"is complex \(1\+2j\), not a number"),
]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("lr,exc,msg", BAD_LRS, ids=[repr(b[0]) for b in BAD_LRS])
def test_bad_learning_rate_names_the_checkpoint_before_any_pass(eng, mlp, kind, lr, exc, msg):
    phases: list[str] = []
    load = _lr_loader(lambda epoch: lr if epoch == 5 else 1.0)
    with pytest.raises(exc, match=r"the learning rate for checkpoint '[^']*checkpoint-5\.pt' " + msg) as ei:
        _scores(eng, mlp, kind, load=load, progress_callback=lambda p, d, t: phases.append(p))
    assert str(ei.value).endswith(
        "Make checkpoints_load_func return the learning rate used up to that checkpoint as a float (1.0 if it is "
        "unknown)."
    )
    assert set(phases) <= {"load checkpoints"}, phases  # refused while loading, before any pass over the data


@pytest.mark.parametrize("kind", KINDS)
def test_nan_learning_rate_in_a_checkpoint_file(eng, mlp, kind, tmp_path):
    """The default loader reads the rate from the file's 'lr' entry: the same rule, pointing at that entry."""
    paths = []
    for i, p in enumerate(mlp.ckpts):
        d = torch.load(p)
        d["lr"] = float("nan") if i == 1 else 1.0
        paths.append(str(tmp_path / f"checkpoint-{i}.pt"))
        torch.save(d, paths[-1])
    msg = (
        r"checkpoint-1\.pt' is nan \(not finite\).*Fix the checkpoint's 'learning_rate'/'lr' entry, or pass a "
        r"checkpoints_load_func that returns the learning rate"
    )
    with pytest.raises(ValueError, match=msg):
        _scores(eng, mlp, kind, ckpts=paths, load=None)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "wrap",
    [np.float32, np.float64, torch.tensor, lambda v: torch.tensor([v]), lambda v: np.array([v]), int],
    ids=["np.float32", "np.float64", "0-d tensor", "1-element tensor", "1-element array", "int"],
)
def test_numeric_learning_rates_are_numbers(eng, mlp, kind, wrap):
    """numpy scalars, one-element tensors/arrays and ints are learning rates; 0 drops the checkpoint."""
    lrs = {1: 0, 5: 1, 10: 2}  # int-valued so that every wrapper holds them exactly
    scores = _scores(eng, mlp, kind, load=_lr_loader(lambda e: wrap(lrs[e])))
    loss = mlp.loss("none" if kind == "cp" else "sum")
    plain = _lr_loader(lambda e: float(lrs[e]))
    oracle = (
        TracInOracle(mlp.model(), mlp.ckpts, plain, loss_fn=loss)
        if kind == "cp"
        else TracInOracle(mlp.model(), mlp.ckpts, plain, final_fc_layer=mlp.final, loss_fn=loss)
    )
    assert_scores_close(scores, oracle.influence(mlp.test, mlp.train))
    without_first = _lr_loader(lambda e: float(lrs[e]))
    oracle2 = TracInOracle(
        mlp.model(),
        mlp.ckpts[1:],
        without_first,
        **({"loss_fn": loss} if kind == "cp" else {"final_fc_layer": mlp.final, "loss_fn": loss}),
    )
    assert_scores_close(scores, oracle2.influence(mlp.test, mlp.train))  # lr 0: that checkpoint adds nothing


# ---------------------------------------------------------------------------------------------------------------------
# loss_fn that is not a loss
# ---------------------------------------------------------------------------------------------------------------------
NOT_LOSSES = [
    (nn.ReLU(), r"ReLU\.forward\(input"),
    (nn.Softmax(dim=1), r"Softmax\.forward\(input"),
    (nn.TripletMarginLoss(), r"TripletMarginLoss\.forward\(anchor.*missing a required argument"),
    (lambda out: out.sum(), r"<lambda>\(out\)"),
]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("arg", ["loss_fn", "test_loss_fn"])
@pytest.mark.parametrize("fn,msg", NOT_LOSSES, ids=["ReLU", "Softmax", "Triplet", "lambda"])
def test_loss_fn_that_is_not_a_loss(eng, mlp, kind, arg, fn, msg):
    with warnings.catch_warnings():
        warnings.simplefilter("error", TracInWarning)  # the TypeError comes first, no reduction warning
        with pytest.raises(
            TypeError,
            match=rf"{arg} is not a loss: it is called as {arg}\(outputs, labels\), but {msg}"
            r".*Pass a loss such as nn\.",
        ):
            _build(eng, mlp, kind, **{arg: fn})


@pytest.mark.parametrize("kind", KINDS)
def test_functional_losses_still_accepted(eng, mlp, kind):
    """F.cross_entropy and lambdas take (outputs, labels): accepted, with the reduction warning as before."""
    red = "none" if kind == "cp" else "sum"
    for fn in (
        lambda o, y: F.cross_entropy(o, y, reduction=red),
        lambda o, y, *rest, **kw: F.cross_entropy(o, y, reduction=red),
    ):
        with pytest.warns(TracInWarning, match=r"loss_fn has no `reduction` attribute"):
            scores = _scores(eng, mlp, kind, loss_fn=fn)
        ref = _scores(eng, mlp, kind, loss_fn=nn.CrossEntropyLoss(reduction=red))
        assert_scores_close(scores, ref)
    with pytest.warns(TracInWarning, match=r"loss_fn has no `reduction` attribute"):
        _build(
            eng, mlp, kind, loss_fn=F.cross_entropy, **({"sample_wise_grads_per_batch": True} if kind == "cp" else {})
        )


# ---------------------------------------------------------------------------------------------------------------------
# device
# ---------------------------------------------------------------------------------------------------------------------
@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


@pytest.fixture
def one_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)


@pytest.mark.parametrize("kind", KINDS)
def test_cuda_without_gpu(eng, mlp, kind, no_gpu):
    with pytest.raises(
        ValueError,
        match=r"device='cuda' but no CUDA GPU is available here \(torch\.cuda\.is_available\(\) is False\): "
        r"use device='cpu' or omit it",
    ):
        _build(eng, mlp, kind, device="cuda")


@pytest.mark.parametrize("kind", KINDS)
def test_cuda_index_beyond_the_gpus(eng, mlp, kind, one_gpu):
    with pytest.raises(ValueError, match=r"device='cuda:3' but this machine has 1 CUDA GPU\(s\) \(cuda:0 to cuda:0\)"):
        _build(eng, mlp, kind, device="cuda:3")
    with pytest.raises(ValueError, match=r"device=device\(type='cuda', index=1\) but this machine has 1 CUDA GPU"):
        _build(eng, mlp, kind, device=torch.device("cuda", 1))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "device,msg",
    [
        ("gpu", r"device='gpu' is not a device name \(.*\): use device='cpu' or omit it .*, or name one like 'cuda:0'"),
        ("cuda:x", r"device='cuda:x' is not a device name"),
        ("meta", r"device='meta' holds no data"),
    ],
)
def test_device_names_that_do_not_work(eng, mlp, kind, device, msg):
    with pytest.raises(ValueError, match=msg):
        _build(eng, mlp, kind, device=device)


@pytest.mark.parametrize("kind", KINDS)
def test_mps_unavailable(eng, mlp, kind, monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"device='mps' but MPS \(Apple GPU\) is not available here: use device='cpu'"):
        _build(eng, mlp, kind, device="mps")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("device", [object(), 1.5, True, ["cpu"]], ids=["object", "float", "bool", "list"])
def test_device_of_the_wrong_type(eng, mlp, kind, device):
    with pytest.raises(
        TypeError, match=r"device must be a str such as 'cpu' or 'cuda:0', a torch\.device or None, not "
    ):
        _build(eng, mlp, kind, device=device)


@pytest.mark.parametrize("device", ["cpu", "cpu:0", torch.device("cpu")])
def test_cpu_device_forms(eng, tb, mlp, device):
    obj = _build(eng, mlp, "fast", device=device)
    assert obj.device == torch.device("cpu")
    assert_scores_close(obj.influence(mlp.test, k=None), tb.oracle_scores(mlp, Cfg("fast", "sum")))


# ---------------------------------------------------------------------------------------------------------------------
# checkpoint folders: every regular, non-hidden file, natural-sorted
# ---------------------------------------------------------------------------------------------------------------------
def test_folder_takes_every_file_whatever_its_extension(eng, tb, mlp, tmp_path):
    names = ["epoch-1", "epoch-5.weights", "epoch-10.PT"]  # natural order 1, 5, 10 (lexical: 1, 10, 5)
    for src, name in zip(mlp.plain_ckpts, names, strict=False):
        shutil.copy(src, tmp_path / name)
    (tmp_path / ".DS_Store").write_bytes(b"\0\0junk")  # hidden: skipped
    (tmp_path / "sub").mkdir()  # folders: skipped
    (tmp_path / "sub" / "x.pt").write_bytes(b"junk")
    obj = eng.TracInCPFast(
        mlp.model(), mlp.final, mlp.train_dataset(), str(tmp_path), loss_fn=mlp.loss("sum"), batch_size=16
    )
    assert [p.rsplit("/", 1)[-1] for p in obj.checkpoints] == names
    assert_scores_close(obj.influence(mlp.test, k=None), tb.oracle_scores(mlp, Cfg("fast", "sum", plain=True)))


@pytest.mark.parametrize("kind", KINDS)
def test_folder_with_a_file_that_is_not_a_checkpoint(eng, mlp, kind, tmp_path):
    for src in mlp.plain_ckpts:
        shutil.copy(src, tmp_path)
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    with pytest.raises(
        ValueError,
        match=r"(?s)could not read checkpoint '[^']*notes\.txt'.*Every non-hidden file of the checkpoints folder "
        r"'[^']*' is read as a checkpoint \(as Captum does\): remove that file from it, or pass a list of checkpoint "
        r"paths\.",
    ):
        _scores(eng, mlp, kind, ckpts=str(tmp_path), load=None)


def test_folder_file_failing_a_custom_loader(eng, mlp, tmp_path):
    for src in mlp.ckpts:
        shutil.copy(src, tmp_path)
    (tmp_path / "README").write_text("how these were trained")
    with pytest.raises(
        ValueError,
        match=r"checkpoints_load_func failed on checkpoint '[^']*README': .*remove that file from it, or pass a list",
    ):
        _scores(eng, mlp, "fast", ckpts=str(tmp_path))


def test_folder_without_visible_files(eng, mlp, tmp_path):
    (tmp_path / ".hidden.pt").write_bytes(b"")
    (tmp_path / "sub").mkdir()
    with pytest.raises(ValueError, match=r"no checkpoints: the folder '[^']*' holds no files \(hidden files and "):
        _build(eng, mlp, "fast", ckpts=str(tmp_path))


def test_cache_dir_must_not_be_the_checkpoints_folder(eng, mlp):
    with pytest.raises(ValueError, match=r"cache_dir '[^']*' is the checkpoints folder: every file there is read"):
        _build(eng, mlp, "fast", ckpts=mlp.ckpt_dir, cache_dir=mlp.ckpt_dir)


@pytest.mark.parametrize("kind", KINDS)
def test_data_version_must_be_a_string(eng, mlp, kind):
    with pytest.raises(TypeError, match=r"data_version must be a str naming the version of the training data"):
        _build(eng, mlp, kind, data_version=3)


def test_lr_zero_everywhere_gives_zero_scores(eng, mlp):
    scores = _scores(eng, mlp, "fast", load=_lr_loader(lambda e: 0.0))
    assert torch.count_nonzero(scores) == 0 and not math.isnan(float(scores.sum()))
