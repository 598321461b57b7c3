"""The factor cache on disk: reused when nothing changed, never when checkpoints, data or layer change."""

from __future__ import annotations

import copy
import json
import os
import re
import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from tracin_widgets.influence import TracInWarning

from .oracle import TracInOracle, assert_scores_close
from .problems import save_perturbed_checkpoints
from .tolerances import RTOL_REORDER, atol_reorder


def _setup(tmp_path, seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    paths = save_perturbed_checkpoints(model, tmp_path, 2, 0.2)
    x, y = torch.randn(20, 6), torch.randint(0, 3, (20,))
    return model, paths, TensorDataset(x, y), (torch.randn(4, 6), torch.randint(0, 3, (4,)))


def _saved(cache, kind="fast"):
    """The saved results in ``cache``: TracInCPFast's complete factor stores, TracInCP's ``.pt`` files."""
    if kind == "cp":
        return list(cache.glob("*.pt"))
    return [p for p in cache.glob("tracin-fast-store-*") if json.loads((p / "manifest.json").read_text())["complete"]]


def _engine(model, paths, ds, cache, phases, layer="2"):
    from tracin_widgets.influence import TracInCPFast

    return TracInCPFast(
        model,
        layer,
        ds,
        paths,
        loss_fn=nn.CrossEntropyLoss(reduction="sum"),
        batch_size=7,
        cache_dir=cache,
        progress_callback=lambda phase, done, total: phases.append(phase),
    )


def test_cache_reused_then_invalidated(tmp_path):
    model, paths, ds, test = _setup(tmp_path)
    cache = tmp_path / "cache"
    phases: list[str] = []
    first = _engine(model, paths, ds, cache, phases).influence(test)
    assert "training factors" in phases and len(_saved(cache)) == 1

    phases.clear()
    again = _engine(model, paths, ds, cache, phases)
    assert torch.equal(again.influence(test), first)
    assert "training factors" not in phases  # read from the cache, no pass over the data

    # a changed checkpoint (same path) must not reuse the stale factors
    sd = torch.load(paths[1], weights_only=True)
    sd["2.weight"] = sd["2.weight"] * 2
    torch.save(sd, paths[1])
    phases.clear()
    changed = _engine(model, paths, ds, cache, phases).influence(test)
    assert "training factors" in phases
    oracle = TracInOracle(model, paths, final_fc_layer="2", loss_fn=nn.CrossEntropyLoss(reduction="sum"))
    assert_scores_close(changed, oracle.influence(test, ds.tensors).float())
    assert not torch.allclose(changed, first)

    # changed data -> recompute
    x, y = ds.tensors
    phases.clear()
    _engine(model, paths, TensorDataset(x + 1, y), cache, phases).influence(test)
    assert "training factors" in phases


def test_corrupt_cache_is_recomputed_not_trusted(tmp_path):
    model, paths, ds, test = _setup(tmp_path)
    cache = tmp_path / "cache"
    first = _engine(model, paths, ds, cache, []).influence(test)
    (store,) = _saved(cache)
    manifest = (store / "manifest.json").read_text()
    (store / "manifest.json").write_bytes(b"not a manifest")
    phases: list[str] = []
    assert torch.equal(_engine(model, paths, ds, cache, phases).influence(test), first)
    assert "training factors" in phases
    # a data file shorter than the manifest says (a copy cut short): recomputed too
    with open(store / "G-1.bin", "r+b") as f:
        f.truncate(f.seek(0, 2) - 4)
    phases.clear()
    assert torch.equal(_engine(model, paths, ds, cache, phases).influence(test), first)
    assert "training factors" in phases
    # a manifest of another setup in this folder: never used
    (store / "manifest.json").write_text(manifest.replace('"learning_rates": [', '"learning_rates": [2.0, '))
    phases.clear()
    assert torch.equal(_engine(model, paths, ds, cache, phases).influence(test), first)
    assert "training factors" in phases


# ---------------------------------------------------------------------------------------------------------------------
# the key: one test per ingredient that changes the numbers
# ---------------------------------------------------------------------------------------------------------------------
N_BIG = 10_000
UNSAMPLED_ROW = 1  # the 24-row spread of an opaque dataset (0, 435, 870, ...) misses it


def _big(tmp_path, dtype=torch.float32):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    paths = save_perturbed_checkpoints(model, tmp_path, 2, 0.2)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(N_BIG, 6, generator=g), torch.randint(0, 3, (N_BIG,), generator=g)
    test = (torch.randn(4, 6, generator=g), torch.randint(0, 3, (4,), generator=g))
    return model, paths, x, y, test


_LR = [1.0]  # read by _load_lr: a changed rate leaves the load function (and the files) exactly as they were


def _load_lr(net, path):
    net.load_state_dict(torch.load(path, weights_only=True))
    return _LR[0]


BASE = dict(
    loss=lambda: nn.CrossEntropyLoss(reduction="sum"),
    layer="2",
    lr=1.0,
    data_version=None,
    label=False,
    dtype=torch.float32,
)
CHANGES = {
    "one training label": dict(label=True),
    "loss label_smoothing": dict(loss=lambda: nn.CrossEntropyLoss(reduction="sum", label_smoothing=0.1)),
    "loss class weight": dict(loss=lambda: nn.CrossEntropyLoss(reduction="sum", weight=torch.tensor([1.0, 2.0, 3.0]))),
    "loss type": dict(loss=lambda: nn.MultiMarginLoss(reduction="sum")),
    "learning rate": dict(lr=3.0),
    "layer": dict(layer="0"),
    "data_version": dict(data_version="labels-v2"),
    "dtype": dict(dtype=torch.float64),
}


def _ingredient_run(kind, model, paths, x, y, test, cache, phases, cfg):
    from tracin_widgets.influence import TracInCP, TracInCPFast

    m = copy.deepcopy(model).to(cfg["dtype"])
    if cfg["label"]:
        y = y.clone()
        y[UNSAMPLED_ROW] = (y[UNSAMPLED_ROW] + 1) % 3
    ds = TensorDataset(x.to(cfg["dtype"]), y)
    loss = cfg["loss"]()
    if cfg["dtype"] != torch.float32 and getattr(loss, "weight", None) is not None:
        loss = loss.to(cfg["dtype"])
    _LR[0] = cfg["lr"]
    kw = dict(
        checkpoints_load_func=_load_lr,
        batch_size=512,
        cache_dir=cache,
        data_version=cfg["data_version"],
        progress_callback=lambda phase, done, total: phases.append(phase),
    )
    if kind == "fast":
        obj = TracInCPFast(m, cfg["layer"], ds, paths, loss_fn=loss, **kw)
        return obj.influence((test[0].to(cfg["dtype"]), test[1]), k=None)
    loss.reduction = "none"
    obj = TracInCP(m, ds, paths, layers=[cfg["layer"]], loss_fn=loss, **kw)
    return obj.self_influence()


@pytest.mark.filterwarnings("ignore:final_fc_layer '0'")
@pytest.mark.parametrize("kind", ["fast", "cp"])
@pytest.mark.parametrize("what", list(CHANGES))
def test_cache_key_ingredient_changes_recompute(tmp_path, kind, what):
    """Factors (Fast) / self-influence (TracInCP) saved for one setup are never reused for a setup that differs
    in one ingredient: the result equals a fresh uncached engine's."""
    model, paths, x, y, test = _big(tmp_path)
    cache = tmp_path / "cache"
    before = _ingredient_run(kind, model, paths, x, y, test, cache, [], BASE)
    assert len(_saved(cache, kind)) == 1
    changed_cfg = {**BASE, **CHANGES[what]}
    phases: list[str] = []
    changed = _ingredient_run(kind, model, paths, x, y, test, cache, phases, changed_cfg)
    assert ("training factors" if kind == "fast" else "self influence") in phases, "the stale cache was reused"
    fresh = _ingredient_run(kind, model, paths, x, y, test, None, [], changed_cfg)
    assert torch.equal(changed, fresh)
    assert len(_saved(cache, kind)) == 2  # the first setup's file is kept, not overwritten
    if what == "data_version":
        assert torch.equal(changed, before)  # same numbers: only the name changed
    elif what == "dtype":
        assert changed.dtype == torch.float64 and before.dtype == torch.float32
    elif what == "learning rate" and kind == "fast":
        assert torch.allclose(changed, 3 * before, rtol=RTOL_REORDER, atol=atol_reorder(3 * before))
    else:
        assert not torch.allclose(changed, before)
    if what == "one training label":
        cols = changed - before if kind == "cp" else (changed - before).abs().sum(0)
        assert int(torch.count_nonzero(cols)) == 1 and float(cols[UNSAMPLED_ROW]) != 0


@pytest.mark.parametrize("kind", ["fast", "cp"])
def test_unchanged_setup_reuses_the_cache(tmp_path, kind, monkeypatch):
    from tracin_widgets.influence._base import TracInCPBase

    model, paths, x, y, test = _big(tmp_path)
    cache = tmp_path / "cache"
    first = _ingredient_run(kind, model, paths, x, y, test, cache, [], BASE)

    def no_pass(self, *a, **k):
        raise AssertionError("a pass over the training data ran although the cache holds the result")

    monkeypatch.setattr(TracInCPBase, "_train_batches", no_pass)
    again = _ingredient_run(kind, model, paths, x, y, test, cache, [], BASE)
    assert torch.equal(again, first)


# ---------------------------------------------------------------------------------------------------------------------
# the data part of the key
# ---------------------------------------------------------------------------------------------------------------------
class Opaque(Dataset):
    """A per-item dataset the fingerprint cannot look into."""

    def __init__(self, x, y):
        self._x, self._y = x, y

    def __len__(self):
        return len(self._x)

    def __getitem__(self, i):
        return self._x[i], self._y[i]


class NumpyBacked(Dataset):
    """A numpy-backed dataset exposing ``.tensors``."""

    def __init__(self, x, y):
        self.tensors = (x, y)

    def __len__(self):
        return len(self.tensors[0])

    def __getitem__(self, i):
        return torch.from_numpy(self.tensors[0][i]), int(self.tensors[1][i])


def _fp(ds):
    from tracin_widgets.influence._cache import dataset_fingerprint

    return dataset_fingerprint(DataLoader(ds, batch_size=64, shuffle=False))


def _relabelled(y):
    y = y.copy() if isinstance(y, np.ndarray) else list(y) if isinstance(y, list) else y.clone()
    y[UNSAMPLED_ROW] = (y[UNSAMPLED_ROW] + 1) % 3
    return y


def test_array_backed_datasets_are_hashed_in_full():
    x, y = torch.randn(N_BIG, 6), torch.randint(0, 3, (N_BIG,))
    y2 = _relabelled(y)
    assert _fp(TensorDataset(x, y)) == _fp(TensorDataset(x.clone(), y.clone()))  # by value, not identity
    assert _fp(TensorDataset(x, y)) != _fp(TensorDataset(x, y2))
    keep = list(range(0, N_BIG, 2))
    assert _fp(Subset(TensorDataset(x, y), keep)) != _fp(Subset(TensorDataset(x, y2), keep))
    assert _fp(Subset(TensorDataset(x, y), keep)) != _fp(Subset(TensorDataset(x, y), keep[::-1]))
    xn, yn = x.numpy(), y.numpy()
    assert _fp(NumpyBacked(xn, yn)) == _fp(NumpyBacked(xn.copy(), yn.copy()))
    assert _fp(NumpyBacked(xn, yn)) != _fp(NumpyBacked(xn, _relabelled(yn)))
    assert _fp(NumpyBacked(xn, yn)) != _fp(NumpyBacked(xn.astype(np.float64), yn))  # dtype is part of it
    # a non-contiguous tensor hashes like its contiguous copy
    xt = torch.randn(6, N_BIG).T
    assert _fp(TensorDataset(xt, y)) == _fp(TensorDataset(xt.contiguous(), y))


def test_torchvision_in_memory_datasets_are_hashed_in_full():
    import torchvision.transforms as T

    from .test_vision import NORM, make_cifar

    tf = T.Compose([T.ToTensor(), NORM])
    a = make_cifar(n=3000, transform=tf)
    b = make_cifar(n=3000, transform=tf)
    assert _fp(a) == _fp(b)
    b.targets = _relabelled(b.targets)
    assert _fp(a) != _fp(b)  # row 1: not one of the 24 sampled
    c = make_cifar(n=3000, transform=tf)
    c.data = c.data.copy()
    c.data[UNSAMPLED_ROW, 0, 0, 0] ^= 1
    assert _fp(a) != _fp(c)
    d = make_cifar(n=3000, transform=T.Compose([T.ToTensor(), T.Normalize((0.5,) * 3, (0.25,) * 3)]))
    assert _fp(a) != _fp(d)  # the transform's repr


def test_lambda_transform_and_image_folder_lists():
    """A Lambda's function is not in its repr: the sampled items are hashed too. An ImageFolder-style
    ``samples`` list (path, class) is hashed in full."""
    import torchvision.transforms as T

    from .test_vision import make_cifar

    a = make_cifar(n=100, transform=T.Compose([T.ToTensor(), T.Lambda(lambda t: t)]))
    b = make_cifar(n=100, transform=T.Compose([T.ToTensor(), T.Lambda(lambda t: t * 2)]))
    assert repr(a.transform) == repr(b.transform) and _fp(a) != _fp(b)

    class Folder(Opaque):
        def __init__(self, samples):
            super().__init__(torch.zeros(len(samples), 2), torch.zeros(len(samples), dtype=torch.long))
            self.samples = samples

    files = [(f"img/{i}.png", i % 3) for i in range(N_BIG)]
    moved = list(files)
    moved[UNSAMPLED_ROW] = (moved[UNSAMPLED_ROW][0], 2)
    assert _fp(Folder(files)) == _fp(Folder(list(files))) and _fp(Folder(files)) != _fp(Folder(moved))


def test_opaque_datasets_are_sampled_and_data_version_names_them(tmp_path):
    """What docs/engine.md (*The disk cache*) states: an opaque dataset is verified by type, length and 24 items
    spread over it; a change elsewhere is only seen through ``data_version``."""
    x, y = torch.randn(N_BIG, 6), torch.randint(0, 3, (N_BIG,))
    assert _fp(Opaque(x, y)) == _fp(Opaque(x, _relabelled(y)))  # the documented limit
    y0 = y.clone()
    y0[0] = (y0[0] + 1) % 3
    assert _fp(Opaque(x, y)) != _fp(Opaque(x, y0))  # a sampled row
    assert _fp(Opaque(x, y)) != _fp(Opaque(x[:-1], y[:-1]))  # the length
    assert _fp(Opaque(x, y)) != _fp(TensorDataset(x, y))  # the type

    model, paths, *_ = _big(tmp_path)
    cache = tmp_path / "cache"
    from tracin_widgets.influence import TracInCPFast

    def run(ds, version, phases):
        return TracInCPFast(
            model,
            "2",
            ds,
            paths,
            loss_fn=nn.CrossEntropyLoss(reduction="sum"),
            batch_size=512,
            cache_dir=cache,
            data_version=version,
            progress_callback=lambda p, d, t: phases.append(p),
        ).self_influence()

    first = run(Opaque(x, y), "v1", [])
    phases: list[str] = []
    second = run(Opaque(x, _relabelled(y)), "v2", phases)
    assert "training factors" in phases
    assert not torch.equal(first, second) and second[UNSAMPLED_ROW] != first[UNSAMPLED_ROW]


def test_hash_tensors_by_value_without_repr_truncation():
    from tracin_widgets.influence._cache import hash_tensors, new_hash

    def digest(obj):
        h = new_hash()
        hash_tensors([obj], h)
        return h.hexdigest()

    big = torch.zeros(10_000)
    other = big.clone()
    other[5000] = 1  # repr() of both is the same truncated "tensor([0., 0., ..., 0.])"
    assert digest({"x": big}) != digest({"x": other})
    assert digest(np.zeros(3, np.float32)) != digest(np.zeros(3, np.float64))
    assert digest(torch.zeros(2, 3)) != digest(torch.zeros(3, 2))
    assert digest(torch.arange(6.0)[::2]) == digest(torch.tensor([0.0, 2.0, 4.0]))


# ---------------------------------------------------------------------------------------------------------------------
# a cache_dir that cannot be written: warn before the pass, keep the result in memory
# ---------------------------------------------------------------------------------------------------------------------
def _unwritable(tmp_path, how):
    if how == "a file":
        (tmp_path / "cachefile").write_text("not a folder")
        return tmp_path / "cachefile"
    if how == "under a file":
        (tmp_path / "cachefile").write_text("not a folder")
        return tmp_path / "cachefile" / "sub"
    ro = tmp_path / "readonly"
    ro.mkdir()
    ro.chmod(0o500)
    return ro


@pytest.mark.parametrize("kind", ["fast", "cp"])
@pytest.mark.parametrize("how", ["a file", "under a file", "read-only"])
def test_unwritable_cache_dir_warns_before_the_pass(tmp_path, kind, how, monkeypatch):
    model, paths, x, y, _ = _big(tmp_path)
    cache = _unwritable(tmp_path, how)
    if how == "read-only" and os.geteuid() == 0:  # root writes anyway: give it what a user gets there
        from tracin_widgets.influence import _cache

        def denied(*a, **k):
            raise PermissionError(13, "Permission denied")

        monkeypatch.setattr(_cache.tempfile, "mkstemp", denied)
    seen: list[tuple[str, int]] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        from tracin_widgets.influence import TracInCP, TracInCPFast

        _LR[0] = 1.0
        kw = dict(
            checkpoints_load_func=_load_lr,
            batch_size=512,
            cache_dir=cache,
            progress_callback=lambda p, d, t: seen.append((p, len(caught))),
        )
        ds = TensorDataset(x, y)
        if kind == "fast":
            result = TracInCPFast(
                model, "2", ds, paths, loss_fn=nn.CrossEntropyLoss(reduction="sum"), **kw
            ).self_influence()
        else:
            result = TracInCP(model, ds, paths, loss_fn=nn.CrossEntropyLoss(reduction="none"), **kw).self_influence()
    mine = [w for w in caught if issubclass(w.category, TracInWarning)]
    assert len(mine) == 1, [str(w.message) for w in caught]
    assert re.search(
        rf"cache_dir '{re.escape(str(cache))}' cannot be written \(\w+Error: .+\): the results are computed in memory "
        r"and not saved\. Pass a writable folder as cache_dir",
        str(mine[0].message),
    ), str(mine[0].message)
    phase = "training factors" if kind == "fast" else "self influence"
    assert [n for p, n in seen if p == phase][0] == 1, "the warning must come before the pass"
    assert result.shape == (N_BIG,) and bool(torch.isfinite(result).all())


def test_unwritable_cache_dir_warns_before_a_tracincp_influence_pass(tmp_path):
    """TracInCP.influence saves the self-influence its pass computes on the side: the warning still comes first."""
    from tracin_widgets.influence import TracInCP

    model, paths, x, y, test = _big(tmp_path)
    cache = _unwritable(tmp_path, "a file")
    seen: list[tuple[str, int]] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        obj = TracInCP(
            model,
            TensorDataset(x, y),
            paths,
            loss_fn=nn.CrossEntropyLoss(reduction="none"),
            cache_dir=cache,
            batch_size=512,
            progress_callback=lambda p, d, t: seen.append((p, len(caught))),
        )
        scores = obj.influence(test, k=None)
    mine = [str(w.message) for w in caught if issubclass(w.category, TracInWarning)]
    assert len(mine) == 1 and "cannot be written (FileExistsError" in mine[0], mine
    assert [n for p, n in seen if p == "influence"][0] == 1, "the warning must come before the pass"
    fresh = TracInCP(model, TensorDataset(x, y), paths, loss_fn=nn.CrossEntropyLoss(reduction="none"), batch_size=512)
    assert torch.equal(scores, fresh.influence(test, k=None))


def test_read_only_cache_with_a_valid_file_is_read_without_warning(tmp_path, monkeypatch):
    """A shared cache that holds the result: reused, and no warning about saving (nothing needs saving)."""
    from tracin_widgets.influence import _cache

    model, paths, x, y, test = _big(tmp_path)
    cache = tmp_path / "cache"
    first = _ingredient_run("fast", model, paths, x, y, test, cache, [], BASE)

    def denied(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(_cache.tempfile, "mkstemp", denied)  # what a read-only folder gives
    with warnings.catch_warnings():
        warnings.simplefilter("error", TracInWarning)
        phases: list[str] = []
        again = _ingredient_run("fast", model, paths, x, y, test, cache, phases, BASE)
    assert torch.equal(again, first) and "training factors" not in phases


def test_failed_save_warns_and_keeps_the_result(tmp_path, monkeypatch):
    """The disk fills up while the factors are written: a warning, the result, and no file (nor temp file) left."""
    from tracin_widgets.influence import _cache

    model, paths, x, y, test = _big(tmp_path)
    cache = tmp_path / "cache"
    fresh = _ingredient_run("fast", model, paths, x, y, test, None, [], BASE)

    def full_disk(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(_cache.os, "fsync", full_disk)
    with pytest.warns(TracInWarning, match=r"cannot be written \(OSError: \[Errno 28\] No space left on device\)"):
        result = _ingredient_run("fast", model, paths, x, y, test, cache, [], BASE)
    assert torch.equal(result, fresh)
    assert list(cache.iterdir()) == []  # the half-written temporary file was removed


def test_atomic_write_replaces_whole_files_only(tmp_path, monkeypatch):
    from tracin_widgets import _io as _cache

    target = tmp_path / "f.bin"
    target.write_bytes(b"old")
    calls: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(_cache.os, "fsync", lambda fd: (calls.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(_cache.os, "replace", lambda a, b: (calls.append("replace"), real_replace(a, b))[1])
    _cache.atomic_write(target, lambda f: f.write(b"new"))
    assert target.read_bytes() == b"new" and calls == ["fsync", "replace"]

    def boom(f):
        f.write(b"half")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        _cache.atomic_write(target, boom)
    assert target.read_bytes() == b"new" and sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]


def test_dataset_without_length_is_reused_only_with_data_version(tmp_path):
    from torch.utils.data import IterableDataset

    from tracin_widgets.influence import TracInCPFast

    class Stream(IterableDataset):
        def __init__(self, x, y):
            self.x, self.y = x, y

        def __iter__(self):
            return iter(zip(self.x, self.y, strict=False))

    model, paths, x, y, _ = _big(tmp_path)
    x, y = x[:300], y[:300]
    cache = tmp_path / "cache"

    def run(version):
        phases: list[str] = []
        TracInCPFast(
            model,
            "2",
            Stream(x, y),
            paths,
            loss_fn=nn.CrossEntropyLoss(reduction="sum"),
            batch_size=64,
            cache_dir=cache,
            data_version=version,
            progress_callback=lambda p, d, t: phases.append(p),
        ).self_influence()
        return "training factors" in phases

    assert run(None) and run(None)  # nothing to verify the stream by: computed again
    assert run("stream-v1") and not run("stream-v1")  # the user named the version: reused
