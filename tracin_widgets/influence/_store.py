"""The factor store of ``cache_dir=``, ``max_memory=`` and ``factor_dtype=`` (TracInCPFast and RandProj).

A store is a folder ``tracin-fast-store-<fingerprint>`` inside ``cache_dir`` holding plain row-major files,
one per checkpoint ``c`` and factor: ``A-<c>.bin`` (rows x dim(a)) and ``G-<c>.bin`` (rows x dim(g)) in the
factor dtype, ``norms.bin`` (rows x checkpoints x 2: ``|g|^2`` and ``|a|^2`` in the computation dtype, so
self-influence needs no second pass and stays exact with half-precision factors) and ``manifest.json``
(format, fingerprint, rows, dims, dtypes, learning rates, loss, layer and ``rows_complete``).

The factor pass appends blocks of rows; every few seconds, at the end, and when the pass is interrupted (an
exception, ``Cancelled``, Ctrl-C) the files are fsynced *before* the manifest records their rows, so a later
pass resumes after the last recorded row whatever happened (a killed job loses at most the last seconds).
A manifest that does not match what the engine expects makes the store unused (recomputed from row 0). One
writer at a time: ``.lock`` is ``flock``-ed for the pass (a second writer gets an error naming the pid).

Files are read with ``preadv`` into reused buffers rather than memory-mapped: mapped pages count towards the
process's resident memory until unmapped, read pages live in the kernel's page cache, which the kernel frees.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from .._io import atomic_write
from ._memory import free_memory

FORMAT = 1
DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}
FACTOR_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
COMFORT = 0.5  # the factors stay in host memory when they take at most this fraction of its free bytes
DEVICE_COMFORT = 0.75  # on the compute device: a GPU holds little else (ImageNet's 78 GB fp32 fit an H200)
STREAM_BLOCK_BYTES = 64 << 20  # bytes of factors per streamed block (at most; max_memory // 4 when smaller)

_UNITS = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?)\s*([KMGT]i?B)\s*$", re.I)


def parse_max_memory(value: Any) -> int | None:
    """``max_memory=`` in bytes: an int, or a string with a unit as Hugging Face accelerate reads them
    (``"512MB"``, ``"10GB"``: decimal; ``"512MiB"``, ``"10GiB"``: binary). None stays None."""
    if value is None:
        return None
    fix = "pass bytes as an int (e.g. 2_000_000_000), a string such as '512MB' or '10GiB', or None"
    if isinstance(value, (bool, float)) or not isinstance(value, (int, str)):
        raise TypeError(f"max_memory must be an int (bytes), a str such as '10GiB' or None, got {value!r}: {fix}.")
    if isinstance(value, int):
        if value <= 0:
            raise ValueError(f"max_memory must be a positive number of bytes, got {value}: {fix}.")
        return value
    m = _SIZE.match(value)
    if m is None:
        raise ValueError(
            f"max_memory={value!r} is not a size: {fix} (units KB, MB, GB, TB are powers of 1000; KiB, MiB, GiB, "
            "TiB powers of 1024)."
        )
    if m.group(2)[-1] == "b" and m.group(2)[1] not in "iI":  # accelerate reads '10Gb' as gigabits: refuse it
        raise ValueError(
            f"max_memory={value!r} ends in a lowercase 'b' (bits?): write the unit with 'B' for bytes, e.g. "
            f"'{m.group(1)}{m.group(2)[:-1].upper()}B'."
        )
    nbytes = int(float(m.group(1)) * _UNITS[m.group(2).upper()])
    if nbytes <= 0:
        raise ValueError(f"max_memory must be a positive size, got {value!r}: {fix}.")
    return nbytes


def check_factor_dtype(value: Any) -> torch.dtype | None:
    if value is None:
        return None
    if isinstance(value, str):  # 'bfloat16' / 'torch.bfloat16'
        value = DTYPES.get(value.removeprefix("torch."), value)
    if value not in FACTOR_DTYPES:
        raise ValueError(
            f"factor_dtype must be torch.float32 (exact), torch.bfloat16 or torch.float16 (half the memory and "
            f"disk, approximate scores), torch.float64, or None (the model's dtype), got {value!r}."
        )
    return value  # type: ignore[no-any-return]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def human(nbytes: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if nbytes < 1000:
            return f"{nbytes:.3g} {unit}"
        nbytes /= 1000
    return f"{nbytes:.3g} TB"


def placement(nbytes: int, device: torch.device, max_memory: int | None, has_store: bool) -> str:
    """Where factors of ``nbytes`` live: ``"device"`` (the compute device), ``"host"`` (CPU memory, copied to the
    device block by block) or ``"stream"`` (read from the store block by block)."""
    if max_memory is not None and nbytes > max_memory:
        return "stream"
    host_free = free_memory(torch.device("cpu"))
    if device.type != "cpu" and nbytes <= DEVICE_COMFORT * free_memory(device):
        return "device"
    if nbytes <= COMFORT * host_free or not has_store:
        return "device" if device.type == "cpu" else "host"
    return "stream"


def stream_rows(row_bytes: int, max_memory: int | None) -> int:
    budget = STREAM_BLOCK_BYTES if max_memory is None else min(STREAM_BLOCK_BYTES, max_memory // 4)
    return max(1, budget // max(1, row_bytes))


# ---------------------------------------------------------------------------------------------------------------------
# raw file IO
# ---------------------------------------------------------------------------------------------------------------------
def _as_bytes(t: torch.Tensor) -> memoryview:
    t = t.detach().cpu().contiguous()
    if t.dtype in (torch.bfloat16, torch.float16):
        t = t.view(torch.int16)
    return t.numpy().data.cast("B")


def _write_at(fd: int, buf: memoryview, offset: int) -> None:
    done = 0
    while done < len(buf):
        done += os.pwrite(fd, buf[done:], offset + done)


def _read_into(fd: int, t: torch.Tensor, offset: int, path: Path) -> None:
    """Fill the contiguous CPU tensor ``t`` from ``offset`` of the file."""
    view = t.view(torch.int16) if t.dtype in (torch.bfloat16, torch.float16) else t
    buf = view.numpy().data.cast("B")
    done = 0
    while done < len(buf):
        n = os.preadv(fd, [buf[done:]], offset + done)
        if n == 0:
            raise OSError(errno.EIO, f"the factor store file {str(path)!r} is shorter than its manifest says")
        done += n


class StoreLock:
    """An exclusive, non-blocking ``flock`` on ``folder/.lock`` (released when the process dies, whatever
    the cause); the holder's pid is written into the file for the error message of a second writer."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / ".lock"
        self.file: Any = None

    def acquire(self) -> None:
        import fcntl  # POSIX (Linux, macOS): imported here so that the package still imports elsewhere

        f = open(self.path, "a+")  # closed in release()
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            pid = f.read().strip() or "unknown"
            f.close()
            raise ValueError(
                f"the factor store {str(self.path.parent)!r} (cache_dir) is being written by another process (pid "
                f"{pid}): two writers would corrupt it. Wait for that process to finish (it then holds the "
                "factors for this one), stop it, or pass another cache_dir."
            ) from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        self.file = f

    def release(self) -> None:
        if self.file is not None:
            import fcntl

            with contextlib.suppress(OSError):
                fcntl.flock(self.file, fcntl.LOCK_UN)
            self.file.close()
            self.file = None


# ---------------------------------------------------------------------------------------------------------------------
# the store
# ---------------------------------------------------------------------------------------------------------------------
def store_folder(cache_dir: Path, kind: str, fingerprint: str) -> Path:
    return cache_dir / f"tracin-{kind}-store-{fingerprint}"


class FactorStore:
    """An open store (see the module docstring). ``meta`` is its manifest."""

    def __init__(self, folder: Path, meta: dict[str, Any]) -> None:
        self.folder, self.meta = folder, meta
        self.C = int(meta["checkpoints"])
        self.da, self.dg = int(meta["dims"]["A"]), int(meta["dims"]["G"])
        self.dtype = DTYPES[meta["dtype"]]
        self.norm_dtype = DTYPES[meta["norm_dtype"]]
        self.item = torch.empty((), dtype=self.dtype).element_size()
        self.norm_item = torch.empty((), dtype=self.norm_dtype).element_size()

    # ----- manifest
    @property
    def rows_complete(self) -> int:
        return int(self.meta["rows_complete"])

    @property
    def complete(self) -> bool:
        return bool(self.meta["complete"])

    @property
    def rows(self) -> int:
        return int(self.meta["rows"] if self.complete else self.meta["rows_complete"])

    @property
    def row_bytes(self) -> int:
        return self.C * (self.da + self.dg) * self.item

    def files(self) -> list[tuple[Path, int]]:
        """Every data file with its bytes per row."""
        out = []
        for c in range(self.C):
            out += [
                (self.folder / f"A-{c}.bin", self.da * self.item),
                (self.folder / f"G-{c}.bin", self.dg * self.item),
            ]
        return [*out, (self.folder / "norms.bin", self.C * 2 * self.norm_item)]

    @staticmethod
    def read(folder: Path, expect: dict[str, Any]) -> FactorStore | None:
        """The store in ``folder`` when its manifest matches ``expect`` (every key) and its files hold the rows
        it records; None otherwise (missing, another format or setup, truncated files: never used)."""
        try:
            meta = json.loads((folder / "manifest.json").read_text())
            if not isinstance(meta, dict) or meta.get("format") != FORMAT:
                return None
            if any(meta.get(k) != v for k, v in expect.items() if k != "rows"):
                return None
            if "rows" in expect and meta.get("rows") not in (None, expect["rows"]):
                return None  # (an incomplete store of a dataset without a length records no rows yet)
            if meta.get("complete") and not isinstance(meta.get("rows"), int):
                return None
            store = FactorStore(folder, meta)
            for path, nb in store.files():
                if path.stat().st_size < store.rows_complete * nb:
                    return None
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return store

    def write_manifest(self) -> None:
        text = json.dumps(self.meta, indent=1).encode()
        atomic_write(self.folder / "manifest.json", lambda f: f.write(text))

    # ----- reading
    def _open(self) -> list[int]:
        return [os.open(p, os.O_RDONLY) for p, _ in self.files()]

    def norms(self) -> torch.Tensor:
        """``(rows, C, 2)``: ``|g|^2`` and ``|a|^2`` per row and checkpoint."""
        out = torch.empty(self.rows, self.C, 2, dtype=self.norm_dtype)
        path = self.folder / "norms.bin"
        fd = os.open(path, os.O_RDONLY)
        try:
            _read_into(fd, out, 0, path)
        finally:
            os.close(fd)
        return out

    def read_rows(self, fds: list[int], start: int, stop: int, pin: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows ``start:stop`` as ``(A (n, C, da), G (n, C, dg))`` CPU tensors in the store dtype."""
        n = stop - start
        A = torch.empty(n, self.C, self.da, dtype=self.dtype, pin_memory=pin)
        G = torch.empty(n, self.C, self.dg, dtype=self.dtype, pin_memory=pin)
        bufa = torch.empty(n, self.da, dtype=self.dtype)
        bufg = torch.empty(n, self.dg, dtype=self.dtype)
        paths = self.files()
        for c in range(self.C):
            _read_into(fds[2 * c], bufa, start * self.da * self.item, paths[2 * c][0])
            A[:, c] = bufa
            _read_into(fds[2 * c + 1], bufg, start * self.dg * self.item, paths[2 * c + 1][0])
            G[:, c] = bufg
        return A, G

    def blocks(
        self, rows: int, pin: bool = False, start: int = 0, stop: int | None = None
    ) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        """``(start, A, G)`` blocks of at most ``rows`` rows of rows ``start:stop`` (default all; the next block
        is read while the caller computes)."""
        end = self.rows if stop is None else stop
        fds = self._open()
        try:
            with ThreadPoolExecutor(1) as ex:
                starts = list(range(start, end, rows))
                nxt = ex.submit(self.read_rows, fds, start, min(start + rows, end), pin) if starts else None
                for i, s in enumerate(starts):
                    assert nxt is not None
                    A, G = nxt.result()
                    if i + 1 < len(starts):
                        t = starts[i + 1]
                        nxt = ex.submit(self.read_rows, fds, t, min(t + rows, end), pin)
                    yield s, A, G
        finally:
            for fd in fds:
                os.close(fd)

    def last_G(self, rows: int) -> Iterator[tuple[int, torch.Tensor]]:
        """``(start, G (n, dg))`` blocks of at most ``rows`` rows of the last checkpoint's ``G`` file only (the
        training predictions need nothing else: 1/(C (1 + da/dg)) of the store)."""
        path = self.folder / f"G-{self.C - 1}.bin"
        fd = os.open(path, os.O_RDONLY)
        try:
            for s in range(0, self.rows, rows):
                buf = torch.empty(min(rows, self.rows - s), self.dg, dtype=self.dtype)
                _read_into(fd, buf, s * self.dg * self.item, path)
                yield s, buf
        finally:
            os.close(fd)

    def load(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every row, as ``(A (N, C, da), G (N, C, dg))`` CPU tensors."""
        fds = self._open()
        try:
            return self.read_rows(fds, 0, self.rows)
        finally:
            for fd in fds:
                os.close(fd)

    def gather(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The rows ``idx`` (any shape) as ``(A (*idx.shape, C, da), G (*idx.shape, C, dg))``."""
        flat = idx.reshape(-1).cpu()
        uniq, inverse = torch.unique(flat, return_inverse=True)
        A = torch.empty(len(uniq), self.C, self.da, dtype=self.dtype)
        G = torch.empty(len(uniq), self.C, self.dg, dtype=self.dtype)
        fds = self._open()
        try:
            for j, r in enumerate(uniq.tolist()):
                a, g = self.read_rows(fds, r, r + 1)
                A[j], G[j] = a[0], g[0]
        finally:
            for fd in fds:
                os.close(fd)
        shape = tuple(idx.shape)
        return A[inverse].reshape(*shape, self.C, self.da), G[inverse].reshape(*shape, self.C, self.dg)


def lock_store(folder: Path, expect: dict[str, Any]) -> tuple[StoreLock, FactorStore | None]:
    """Create ``folder`` and take its lock; also return the store there when it matches ``expect`` (read under
    the lock: another writer may have completed it meanwhile)."""
    folder.mkdir(parents=True, exist_ok=True)
    lock = StoreLock(folder)
    lock.acquire()
    try:
        return lock, FactorStore.read(folder, expect)
    except BaseException:
        lock.release()
        raise


class StoreWriter:
    """Appends blocks of rows to a store during the factor pass, holding its lock (see the module docstring).

    ``append`` copies a block to the host and writes it on a background thread while the pass computes the next
    one (one block in flight; its error, e.g. a full disk, is raised by the next ``append`` or ``commit``);
    ``commit`` waits for it, fsyncs the files, then records their rows in the manifest.
    """

    commit_seconds = 2.0  # at most this much work is lost when the process is killed mid-pass

    def __init__(self, store: FactorStore) -> None:
        self.store = store
        self.rows_written = store.rows_complete  # rows written completely (not all of them synced yet)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="tracin-store")
        self._pending: Future[None] | None = None
        self.fds = [os.open(p, os.O_RDWR | os.O_CREAT, 0o644) for p, _ in store.files()]
        self._last_commit = time.monotonic()
        try:
            for fd, (_, nb) in zip(self.fds, store.files(), strict=True):
                os.ftruncate(fd, store.rows_complete * nb)  # drop a block written but never recorded
        except BaseException:
            self.close()
            raise

    @staticmethod
    def create(folder: Path, meta: dict[str, Any]) -> StoreWriter:
        """A new, empty store in ``folder`` (locked by the caller), replacing whatever else is there."""
        for p in folder.iterdir():
            if p.name != ".lock":
                shutil.rmtree(p) if p.is_dir() else p.unlink()
        store = FactorStore(folder, {**meta, "rows_complete": 0, "complete": False})
        store.write_manifest()
        return StoreWriter(store)

    @property
    def rows_complete(self) -> int:
        return self.store.rows_complete

    def append(self, A: torch.Tensor, G: torch.Tensor, norms: torch.Tensor) -> None:
        """Write the next rows (``A``/``G``: ``(n, C, d)`` in the store dtype; ``norms``: ``(n, C, 2)``)."""
        s, n = self.store, A.shape[0]
        host = [_as_bytes(A[:, c]) for c in range(s.C)], [_as_bytes(G[:, c]) for c in range(s.C)], _as_bytes(norms)
        self._wait()
        r = self.rows_written

        def write() -> None:
            for c in range(s.C):
                _write_at(self.fds[2 * c], host[0][c], r * s.da * s.item)
                _write_at(self.fds[2 * c + 1], host[1][c], r * s.dg * s.item)
            _write_at(self.fds[-1], host[2], r * s.C * 2 * s.norm_item)
            self.rows_written = r + n

        self._pending = self._pool.submit(write)

    def _wait(self) -> None:
        """Wait for the block in flight; raise its error."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def maybe_commit(self) -> None:
        if time.monotonic() - self._last_commit >= self.commit_seconds:
            self.commit()

    def commit(self, rows: int | None = None) -> None:
        """fsync the files, then record the rows written in the manifest (``rows``: the training set's size,
        marking the store complete). A failed write is raised after the rows before it are recorded."""
        self._last_commit = time.monotonic()
        failed: BaseException | None = None
        try:
            self._wait()
        except BaseException as e:
            failed, rows = e, None
        if self.rows_written != self.store.rows_complete or rows is not None:
            self._record(rows)
        if failed is not None:
            raise failed

    def _record(self, rows: int | None) -> None:
        for fd in self.fds:
            os.fsync(fd)
        meta = {**self.store.meta, "rows_complete": self.rows_written}
        if rows is not None:
            meta.update(rows=rows, complete=True)
        old, self.store.meta = self.store.meta, meta
        try:
            self.store.write_manifest()
        except BaseException:
            self.store.meta = old
            raise

    def close(self) -> None:
        """Close the files (the lock is released by its owner); a block still in flight is finished first."""
        with contextlib.suppress(Exception):
            self._wait()
        self._pool.shutdown(wait=True)
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds = []


def store_error(folder: Path, e: OSError, rows: int) -> OSError:
    """The error that stops a pass whose store cannot be written (the complete rows are kept)."""
    what = "the disk is full" if e.errno == errno.ENOSPC else f"{type(e).__name__}: {e.strerror or e}"
    return OSError(
        e.errno,
        f"cannot write the factor store {str(folder)!r} ({what}). The {rows} rows written before are kept: free "
        "some space (or pass another cache_dir, or a larger max_memory to keep the factors in memory) and call "
        "again to resume from there.",
    )
