"""The disk cache of ``cache_dir=``: what the key is made of, and how files are read and written.

A cache file is reused only when everything that determines its numbers is unchanged: the engine kind and
layer, the loss (type and every public attribute and buffer), the checkpoints' file contents and learning
rates, the load function, the model's architecture (``repr`` and every state-dict entry's name, shape and
dtype), the compute device type and default dtype, the training data and the user's ``data_version``.

Training data backed by arrays (``TensorDataset`` and other datasets exposing ``.tensors``, ``Subset``\\ s of
them, torchvision's in-memory datasets with ``.data``/``.targets`` such as CIFAR10/MNIST) are hashed in full,
without copies; any other dataset is hashed by type, length and a spread of ``n_samples`` items, which cannot
see every change: the user names the data version with ``data_version=`` then.

Hashing speed (600 MiB of uint8 on this project's 2-core AMD EPYC dev box, hashlib from a memoryview, no copy):
sha256 0.35 s (SHA-NI), blake2b 0.67 s, md5 0.82 s; sha256 in chunks on 2 threads 0.19 s. The old ``tobytes()``
copy alone took 0.76 s. So: sha256, chunked over threads for large buffers; ``dataset_fingerprint`` of a
614 MB float32 TensorDataset (50k x 3x32x32) takes 0.27-0.35 s there (2 cores shared with other jobs).
"""

from __future__ import annotations

import hashlib
import inspect
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset, TensorDataset

from .._io import atomic_write

_CHUNK = 16 << 20  # bytes per hashed chunk of a large buffer (fixed: the digest must not depend on the cores)
_PARALLEL_MIN = 64 << 20  # buffers from this size are hashed chunk-wise on several threads
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def new_hash() -> hashlib._Hash:
    return hashlib.sha256()


def _hash_buffer(buf: memoryview, h: hashlib._Hash) -> None:
    """Hash a contiguous byte buffer; a large one as a list of chunk digests computed on threads (hashlib
    releases the GIL), which is what makes 600 MB take a fraction of a second."""
    n = buf.nbytes
    if n < _PARALLEL_MIN:
        h.update(buf)
        return
    workers = max(1, min(8, (os.cpu_count() or 1)))
    starts = range(0, n, _CHUNK)
    with ThreadPoolExecutor(workers) as ex:
        digests = list(ex.map(lambda s: hashlib.sha256(buf[s : s + _CHUNK]).digest(), starts))
    h.update(f"chunked{n}".encode())
    h.update(b"".join(digests))


def _hash_array(a: np.ndarray, h: hashlib._Hash) -> None:
    h.update(f"nd{a.shape}{a.dtype.str}".encode())
    if a.dtype.hasobject:  # pointers, not values: hash the elements
        hash_tensors(a.ravel().tolist(), h)
        return
    a = np.ascontiguousarray(a)  # a copy only when the array is not contiguous already
    if a.size:
        _hash_buffer(a.reshape(-1).view(np.uint8).data, h)


def _hash_tensor(t: torch.Tensor, h: hashlib._Hash) -> None:
    t = t.detach()
    if t.layout != torch.strided:
        t = t.to_dense()
    t = t.resolve_conj().resolve_neg().cpu().contiguous()  # no copy for a contiguous CPU tensor
    h.update(f"t{tuple(t.shape)}{t.dtype}".encode())
    if t.numel():
        _hash_buffer(t.reshape(-1).view(torch.uint8).numpy().data, h)


def hash_tensors(objs: Iterable[Any], h: hashlib._Hash) -> None:
    """Hash tensors, arrays and (nested) containers of them by value; anything else by ``repr``."""
    for o in objs:
        if isinstance(o, torch.Tensor):
            _hash_tensor(o, h)
        elif isinstance(o, np.ndarray):
            _hash_array(o, h)
        elif isinstance(o, (list, tuple)):
            h.update(f"{type(o).__name__}{len(o)}".encode())
            hash_tensors(o, h)
        elif isinstance(o, Mapping):  # dict items (a Hugging Face dataset's, a tokenizer's BatchEncoding)
            h.update(f"dict{len(o)}".encode())
            for k in o:
                hash_tensors([k, o[k]], h)
        elif hasattr(o, "__array_interface__"):  # e.g. a PIL image: its pixels, not its repr
            _hash_array(np.asarray(o), h)
        else:
            h.update(repr(o).encode())


def _hash_labels(targets: Any, h: hashlib._Hash) -> None:
    """A list of 50k int labels as one array (one buffer hash instead of 50k reprs)."""
    if isinstance(targets, list) and targets and all(type(t) is int for t in targets):
        _hash_array(np.asarray(targets, dtype=np.int64), h)
    else:
        hash_tensors([targets], h)


def _qualname(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', type(obj).__qualname__)}"


def _opaque_repr(obj: Any) -> tuple[str, bool]:
    """``repr(obj)`` without memory addresses, and whether that repr says everything (no address, no Lambda)."""
    r = repr(obj)
    clean = _ADDRESS.sub("", r)
    return clean, clean == r and "Lambda" not in r


def _hash_dataset(ds: Any, h: hashlib._Hash) -> bool:
    """Hash what a dataset's items are made of; True when that determines every item (no sampling needed)."""
    h.update(_qualname(type(ds)).encode())
    try:
        h.update(f"len{len(ds)}".encode())
    except TypeError:
        h.update(b"len?")
    if isinstance(ds, Subset):
        _hash_array(np.asarray(ds.indices, dtype=np.int64), h)
        return _hash_dataset(ds.dataset, h) and type(ds) is Subset
    tensors: Any = getattr(ds, "tensors", None)
    arrays = isinstance(tensors, (tuple, list)) and len(tensors) > 0
    if arrays and all(isinstance(t, (torch.Tensor, np.ndarray)) for t in tensors):
        hash_tensors(list(tensors), h)
        return type(ds) is TensorDataset
    data, targets = getattr(ds, "data", None), getattr(ds, "targets", None)
    if isinstance(data, (torch.Tensor, np.ndarray)) and targets is not None:
        hash_tensors([data], h)
        _hash_labels(targets, h)
        complete = type(ds).__module__.startswith("torchvision.datasets")
        for name in ("transform", "target_transform"):
            r, said_all = _opaque_repr(getattr(ds, name, None))
            h.update(f"{name}={r}".encode())
            complete = complete and said_all
        return complete
    samples = getattr(ds, "samples", None)
    if isinstance(samples, list):  # torchvision's ImageFolder: (path, class) of every item
        h.update(repr(samples).encode())
    return False


def _hash_loader(loader: DataLoader, h: hashlib._Hash) -> None:
    """What of a DataLoader changes which rows come in which order (not its batch size)."""
    sampler = loader.sampler
    h.update(_qualname(type(sampler)).encode())
    h.update(_qualname(type(loader.batch_sampler)).encode())
    indices = getattr(sampler, "indices", None)
    if indices is not None:
        _hash_array(np.asarray(indices, dtype=np.int64), h)
    h.update(_qualname(loader.collate_fn).encode())
    h.update(f"drop_last={loader.drop_last}".encode())
    if loader.drop_last:
        h.update(f"batch_size={loader.batch_size}".encode())


SAMPLED_ITEMS = 24  # items of a dataset without arrays that its fingerprint is made of


def dataset_fingerprint(loader: DataLoader, n_samples: int = SAMPLED_ITEMS, report: dict | None = None) -> str:
    """Fingerprint of a training set: every array/tensor it is made of where it has them (see the module
    docstring), else its type, length and ``n_samples`` items spread over it (``report["sampled"]`` says
    which, when a dict is given)."""
    h = new_hash()
    ds: Any = getattr(loader, "dataset", None)
    _hash_loader(loader, h)
    complete = _hash_dataset(ds, h)
    try:
        n = len(ds)
    except TypeError:
        n = -1
    if report is not None:
        report["sampled"] = not complete
    if not complete and n > 0 and hasattr(ds, "__getitem__"):
        idx = sorted(set(np.linspace(0, n - 1, min(n, n_samples)).round().astype(int).tolist()))
        for i in idx:
            hash_tensors([ds[i]], h)
    return h.hexdigest()[:32]


def file_fingerprint(path: str) -> str:
    h = new_hash()
    with open(path, "rb") as f:
        buf = bytearray(8 << 20)
        view = memoryview(buf)
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()[:32]


def _public_state(obj: Any, h: hashlib._Hash) -> None:
    """Every public attribute of ``obj`` by value, sorted by name; for a module also those of its submodules,
    its buffers and parameters (e.g. a loss's ``reduction``, ``label_smoothing`` and class ``weight``)."""
    objs = list(obj.named_modules()) if isinstance(obj, nn.Module) else [("", obj)]
    for prefix, o in objs:
        h.update(f"{prefix}:{_qualname(type(o))}".encode())
        _code(getattr(type(o), "forward" if isinstance(o, nn.Module) else "__call__", None), h)
        attrs = {k: v for k, v in vars(o).items() if not k.startswith("_") and k != "training"}
        for k in sorted(attrs):
            h.update(k.encode())
            v = attrs[k]
            if callable(v) and not isinstance(v, (torch.Tensor, nn.Module)):
                h.update(callable_fingerprint(v).encode())
            else:
                hash_tensors([v], h)
    if isinstance(obj, nn.Module):
        for k, v in [*obj.named_buffers(), *obj.named_parameters()]:
            h.update(k.encode())
            hash_tensors([v], h)


def _code(fn: Any, h: hashlib._Hash) -> None:
    """A Python function's body: bytecode, names and constants (a lambda's ``reduction='sum'``...)."""
    code = getattr(fn, "__code__", None)
    if code is None:
        return
    h.update(code.co_code)
    h.update(repr(code.co_names).encode())
    h.update(_ADDRESS.sub("", repr([c for c in code.co_consts if not inspect.iscode(c)])).encode())


def callable_fingerprint(fn: Any) -> str:
    """A loss or load function: a module or callable object by type and public state, a ``functools.partial``
    by its function and arguments, a plain function by qualified name, code, defaults and closure."""
    h = new_hash()
    if fn is None:
        h.update(b"None")
    elif hasattr(fn, "func") and hasattr(fn, "args") and hasattr(fn, "keywords"):  # functools.partial
        h.update(b"partial")
        h.update(callable_fingerprint(fn.func).encode())
        hash_tensors([list(fn.args), dict(fn.keywords or {})], h)
    elif inspect.isfunction(fn) or inspect.ismethod(fn) or inspect.isbuiltin(fn):
        h.update(_qualname(fn).encode())
        _code(fn, h)
        func = getattr(fn, "__func__", fn)
        cells = [c.cell_contents for c in (getattr(func, "__closure__", None) or ()) if _has(c)]
        hash_tensors([list(getattr(func, "__defaults__", None) or ()), cells], h)
        if inspect.ismethod(fn) and hasattr(fn.__self__, "__dict__"):
            _public_state(fn.__self__, h)
    else:
        h.update(_qualname(type(fn)).encode())
        if hasattr(fn, "__dict__"):
            _public_state(fn, h)
    return h.hexdigest()[:32]


def _has(cell: Any) -> bool:
    """False for a closure cell not bound yet (reading it raises ValueError)."""
    try:
        return cell.cell_contents is not _UNSET
    except ValueError:
        return False


_UNSET = object()


def model_fingerprint(model: nn.Module) -> str:
    """Architecture and precision: the module tree's repr and every state-dict entry's name, shape, dtype."""
    h = new_hash()
    h.update(_qualname(type(model)).encode())
    h.update(_ADDRESS.sub("", repr(model)).encode())
    for k, v in model.state_dict().items():
        h.update(f"{k}{tuple(v.shape)}{v.dtype}".encode())
    return h.hexdigest()[:32]


def compute_fingerprint(
    *,
    kind: str,
    extra: str,
    model: nn.Module,
    load_func: Callable,
    checkpoints: list[str],
    lrs: list[float],
    loss_fn: Any,
    loader: DataLoader,
    device: torch.device,
    data_version: str | None,
    report: dict | None = None,
) -> str:
    """The cache key (see the module docstring for what it is made of; ``report`` as for
    ``dataset_fingerprint``)."""
    h = new_hash()
    for part in (
        kind,
        extra,
        model_fingerprint(model),
        callable_fingerprint(load_func),
        callable_fingerprint(loss_fn),
        f"device={device.type}",
        f"default_dtype={torch.get_default_dtype()}",
        f"data_version={data_version!r}",
        f"lrs={[float(x).hex() for x in lrs]}",
    ):
        h.update(part.encode() + b"\0")
    for p in checkpoints:
        h.update(file_fingerprint(p).encode())
    h.update(dataset_fingerprint(loader, report=report).encode())
    if data_version is None and not _has_len(getattr(loader, "dataset", None)):
        h.update(os.urandom(16))  # nothing to verify an IterableDataset by: never reused without data_version
    return h.hexdigest()[:32]


def unrecognisable(loader: DataLoader, data_version: str | None) -> str | None:
    """Why nothing computed from this training data can be reused by a later run (an ``IterableDataset``
    without a length or ``data_version``: its key is random), for the warning that nothing is saved; else None."""
    ds = getattr(loader, "dataset", None)
    if data_version is not None or _has_len(ds):
        return None
    return (
        f"train_dataset is a {type(ds).__name__} without a length, which a later run cannot recognise (nothing to "
        "compare its items by), so nothing is written to cache_dir: it could never be reused"
    )


def sampled_note(ds: Any) -> str:
    """The warning that factors were reused for a dataset recognised by a sample of its items only."""
    return (
        f"the training factors were reused from cache_dir: train_dataset (a {type(ds).__name__}) is recognised by "
        f"its type, length and {SAMPLED_ITEMS} of its items only, so a change elsewhere in it is not seen. Pass "
        "data_version='...' naming the version of the data (changed whenever the data changes) to say which data "
        "the cache holds."
    )


def _has_len(ds: Any) -> bool:
    try:
        len(ds)
    except TypeError:
        return False
    return True


# ---------------------------------------------------------------------------------------------------------------------
# files
# ---------------------------------------------------------------------------------------------------------------------
def cache_path(cache_dir: Path, kind: str, name: str, fingerprint: str) -> Path:
    return cache_dir / f"tracin-{kind}-{name}-{fingerprint}.pt"


_LONGEST_INSIDE = 96  # characters the engine appends to cache_dir (a store folder, a file, a temporary name)


def _limit(folder: Path, name: str, default: int) -> int:
    """``os.pathconf`` of the nearest existing ancestor of ``folder`` (``default`` where it cannot tell)."""
    for parent in (folder, *folder.parents):
        try:
            if parent.is_dir():
                return int(os.pathconf(parent, name))
        except (OSError, ValueError):
            return default
    return default


def check_cache_dir_name(cache_dir: Path) -> None:
    """A ``ValueError`` naming ``cache_dir`` when its path cannot exist on its filesystem: a folder name longer
    than ``NAME_MAX`` (255 bytes on most filesystems), or a path too long for the files the engine writes there
    (``PATH_MAX``), rather than an ``OSError`` from the first glob or write."""
    path = Path(os.path.abspath(cache_dir))
    name_max = _limit(path, "PC_NAME_MAX", 255)
    for part in path.parts[1:]:
        if len(os.fsencode(part)) > name_max:
            raise ValueError(
                f"cache_dir {str(cache_dir)!r}: the folder name {part[:40]!r}... is {len(os.fsencode(part))} bytes, "
                f"longer than its filesystem allows ({name_max}, NAME_MAX). Pass a cache_dir with shorter names."
            )
    path_max = _limit(path, "PC_PATH_MAX", 4096)
    if len(os.fsencode(str(path))) + _LONGEST_INSIDE > path_max:
        raise ValueError(
            f"cache_dir {str(cache_dir)!r} is {len(os.fsencode(str(path)))} bytes long: with the names of the files "
            f"the engine writes there (up to {_LONGEST_INSIDE} more) it passes its filesystem's limit ({path_max}, "
            "PATH_MAX). Pass a shorter cache_dir."
        )


def unwritable_reason(cache_dir: Path) -> str | None:
    """Why files cannot be saved in ``cache_dir`` (creating it if needed), or None when they can: tried for
    real with a temporary file, since permission bits do not tell (root, read-only mounts, ACLs)."""
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=".tracin-probe-", suffix=".tmp")
        os.close(fd)
        os.remove(tmp)
    except OSError as e:
        return f"{type(e).__name__}: {e.strerror or e}"
    return None


def not_saved_message(cache_dir: Path, reason: str) -> str:
    return (
        f"cache_dir {str(cache_dir)!r} cannot be written ({reason}): the results are computed in memory and not "
        "saved. Pass a writable folder as cache_dir (or cache_dir=None to silence this)."
    )


def cache_load(path: Path | None, device: torch.device) -> dict | None:
    """The cached dict at ``path``, or None (missing, unreadable, or not written for this fingerprint)."""
    if path is None or not path.is_file():
        return None
    try:
        obj = torch.load(path, map_location=device, weights_only=True)
    except Exception:  # a corrupt cache is recomputed, never trusted
        return None
    if not isinstance(obj, dict) or obj.get("fingerprint") != path.stem.rsplit("-", 1)[-1]:
        return None
    return obj


def cache_save(path: Path, obj: dict) -> str | None:
    """Save ``obj`` atomically; return why it failed (the caller warns and keeps its result) or None."""
    obj = {**obj, "fingerprint": path.stem.rsplit("-", 1)[-1]}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda f: torch.save(obj, f))
    except (OSError, RuntimeError) as e:  # torch.save reports a full disk as RuntimeError
        return f"{type(e).__name__}: {e}"
    return None
