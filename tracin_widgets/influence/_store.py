"""The factor store of ``cache_dir=``, ``max_memory=`` and ``factor_dtype=`` (TracInCPFast and RandProj).

A store is a folder ``tracin-fast-store-<fingerprint>`` inside ``cache_dir`` holding plain row-major files,
one per checkpoint ``c`` and factor: ``A-<c>.bin`` (rows x dim(a)) and ``G-<c>.bin`` (rows x dim(g)) in the
factor dtype, ``norms.bin`` (rows x checkpoints x 2: ``|g|^2`` and ``|a|^2`` in the computation dtype, so
self-influence needs no second pass and stays exact with half-precision factors), ``sums.bin`` (rows x files:
a 64-bit checksum of each row of each of those files, ``influence/_integrity.py``) and ``manifest.json``
(format, checksum scheme, fingerprint, rows, dims, dtypes, learning rates, loss, layer and ``rows_complete``).

The factor pass appends blocks of rows (with their checksums); every few seconds, at the end, and when the pass
is interrupted (an exception, ``Cancelled``, Ctrl-C) the files are fsynced *before* the manifest records their
rows, so a later pass resumes after the last recorded row whatever happened (a killed job loses at most the last
seconds). While a store is incomplete, ``.reserve`` holds the room of the manifest's next rewrite (freed just
before it), so on a full disk the blocks written completely are still recorded. One writer at a time: ``.lock``
is ``flock``-ed for the pass (``influence/_lock.py``). No file of a store is opened through a symbolic link.

Nothing damaged is used: a manifest that does not match what the engine expects makes the store unused; one that
contradicts itself or its files (dtype, dims, rows, sizes, links) is *damaged*; and every read (a block, the
whole store, single rows of a rerank, the norms) verifies each row's checksum. Damage is a ``StoreDamaged``
naming the file and rows, raised before any value is returned.

Files are read with ``preadv`` into reused buffers rather than memory-mapped: mapped pages count towards the
process's resident memory until unmapped, read pages live in the kernel's page cache, which the kernel frees.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._io import atomic_write
from ._files import (
    StoreLock,
    _as_bytes,
    _fill,
    _np_bytes,
    _read_into,
    _verifier,
    _write_at,
    link_problem,
    open_file,
    read_text,
    remove_entry,
)
from ._integrity import CHECK, SUM, StoreDamaged, manifest_problem, row_sums, seed, verify_rows
from ._memory import free_memory
from ._sizes import (  # noqa: F401 (re-exported for the engine)
    DTYPES,
    FACTOR_DTYPES,
    STREAM_BLOCK_BYTES,
    check_factor_dtype,
    dtype_name,
    human,
    parse_max_memory,
    stream_rows,
)

FORMAT = 1
COMFORT = 0.5  # the factors stay in host memory when they take at most this fraction of its free bytes
DEVICE_COMFORT = 0.75  # on the compute device: a GPU holds little else (ImageNet's 78 GB fp32 fit an H200)
SUMS = "sums.bin"
RESERVE = ".reserve"
MANIFEST_ROOM = 64 << 10  # bytes kept free for the manifest's rewrite (a manifest takes about 1 KB)
OnDamage = Callable[[StoreDamaged], None]


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


# ---------------------------------------------------------------------------------------------------------------------
# the store
# ---------------------------------------------------------------------------------------------------------------------
def store_folder(cache_dir: Path, kind: str, fingerprint: str) -> Path:
    return cache_dir / f"tracin-{kind}-store-{fingerprint}"


class FactorStore:
    """An open store (see the module docstring). ``meta`` is its manifest."""

    verify_reads = True  # False skips the checksums of reads (only to measure what they cost: benchmarks/)

    def __init__(self, folder: Path, meta: dict[str, Any]) -> None:
        self.folder, self.meta = folder, meta
        self.C = int(meta["checkpoints"])
        self.da, self.dg = int(meta["dims"]["A"]), int(meta["dims"]["G"])
        self.dtype = DTYPES[meta["dtype"]]
        self.norm_dtype = DTYPES[meta["norm_dtype"]]
        self.item = torch.empty((), dtype=self.dtype).element_size()
        self.norm_item = torch.empty((), dtype=self.norm_dtype).element_size()
        layout = []  # (name, values per row, dtype name, bytes per row) of every data file
        for c in range(self.C):
            layout += [
                (f"A-{c}.bin", self.da, meta["dtype"], self.item),
                (f"G-{c}.bin", self.dg, meta["dtype"], self.item),
            ]
        layout.append(("norms.bin", 2 * self.C, meta["norm_dtype"], self.norm_item))
        self._layout = [(folder / n, w * it) for n, w, _, it in layout]
        self.seeds = [seed(n, dt, w) for n, w, dt, _ in layout]

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
        """Every data file with its bytes per row, then ``sums.bin`` (a checksum per row and data file)."""
        return [*self._layout, (self.folder / SUMS, 8 * len(self._layout))]

    @staticmethod
    def inspect(folder: Path, expect: dict[str, Any]) -> tuple[FactorStore | None, StoreDamaged | None]:
        """``(store, None)`` when ``folder`` holds the store ``expect`` describes (every key matches; ``rows`` also
        when the manifest has none yet) and its files hold the rows it records; ``(None, None)`` when it holds none
        (missing, another format, checksum scheme or setup); ``(None, damage)`` when it is that store but damaged:
        a manifest that contradicts itself or its files' sizes, a link where a file should be."""
        manifest = folder / "manifest.json"
        try:
            if folder.is_symlink():
                return None, StoreDamaged(folder, "the store folder is a symbolic link (never written through)")
            problem = link_problem(manifest)
            if problem is not None:
                return None, StoreDamaged(manifest, problem)
            meta = json.loads(read_text(manifest))
        except (FileNotFoundError, NotADirectoryError):  # no store there (cache_dir a file: said elsewhere)
            return None, None
        except (OSError, ValueError) as e:
            return None, StoreDamaged(manifest, f"it cannot be read ({type(e).__name__}: {e})")
        if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("check") != CHECK:
            return None, None
        if any(meta.get(k) != v for k, v in expect.items() if k != "rows"):
            return None, None
        if "rows" in expect and meta.get("rows") not in (None, expect["rows"]):
            return None, None  # (an incomplete store of a dataset without a length records no rows yet)
        problem = manifest_problem(meta)
        if problem is not None:
            return None, StoreDamaged(manifest, problem)
        store = FactorStore(folder, meta)
        for path, nb in store.files():
            problem = link_problem(path)
            if problem is not None:
                return None, StoreDamaged(path, problem)
            size = path.stat().st_size if path.exists() else 0
            need = store.rows_complete * nb
            if size < need or (store.complete and size != need):
                return None, StoreDamaged(
                    path, f"it holds {size} bytes where the manifest records {store.rows_complete} rows of {nb}"
                )
        return store, None

    @staticmethod
    def read(folder: Path, expect: dict[str, Any], on_damage: OnDamage | None = None) -> FactorStore | None:
        """The store of ``inspect`` or None (never used); ``on_damage(damage)`` is called for a damaged one."""
        store, damage = FactorStore.inspect(folder, expect)
        if damage is not None and on_damage is not None:
            on_damage(damage)
        return store

    def write_manifest(self) -> None:
        text = json.dumps(self.meta, indent=1).encode()
        atomic_write(self.folder / "manifest.json", lambda f: f.write(text))

    def truncate(self, rows: int) -> None:
        """Record only the first ``rows`` rows (at most those recorded): a resume recomputes the rest (the damaged
        rows of a ``StoreDamaged``, from its ``first_row``). Call it holding the lock."""
        done = min(rows, self.rows_complete)
        self.meta = {**self.meta, "rows_complete": done, "complete": False}
        self.write_manifest()

    # ----- reading
    def _open(self) -> list[int]:
        return [open_file(p, os.O_RDONLY) for p, _ in self.files()]

    def _sums(self, fd: int, start: int, n: int) -> np.ndarray | None:
        """The checksums of rows ``start:start + n``: ``(n, data files)`` uint64 (None when reads are not verified)."""
        if not self.verify_reads:
            return None
        out = np.empty((n, len(self._layout)), dtype=SUM)
        _fill(fd, out.reshape(-1).view(np.uint8).data, start * out.shape[1] * 8, self.folder / SUMS)
        return out

    def _check(self, t: torch.Tensor, f: int, sums: np.ndarray | None, start: int) -> None:
        """Verify rows ``start:`` of data file ``f`` read into ``t`` against their checksums."""
        if sums is not None:
            verify_rows(_np_bytes(t), t.shape[0], self.seeds[f], sums[:, f], self._layout[f][0], start)

    def norms(self) -> torch.Tensor:
        """``(rows, C, 2)``: ``|g|^2`` and ``|a|^2`` per row and checkpoint."""
        out = torch.empty(self.rows, self.C, 2, dtype=self.norm_dtype)
        path, sums = self.folder / "norms.bin", self.folder / SUMS
        fd, sfd = open_file(path, os.O_RDONLY), open_file(sums, os.O_RDONLY)
        try:
            _read_into(fd, out, 0, path)
            self._check(out, len(self._layout) - 1, self._sums(sfd, 0, self.rows), 0)
        finally:
            os.close(fd)
            os.close(sfd)
        return out

    def read_rows(self, fds: list[int], start: int, stop: int, pin: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows ``start:stop`` as ``(A (n, C, da), G (n, C, dg))`` CPU tensors in the store dtype, verified (each
        file's rows on a second thread while the next file is read)."""
        n = stop - start
        A = torch.empty(n, self.C, self.da, dtype=self.dtype, pin_memory=pin)
        G = torch.empty(n, self.C, self.dg, dtype=self.dtype, pin_memory=pin)
        sums = self._sums(fds[-1], start, n)
        bufs = [torch.empty(n, d, dtype=self.dtype) for d in (self.da, self.dg, self.da, self.dg)]
        checks: list[Future[None] | None] = [None] * 4  # the check of the file last read into each buffer
        try:
            for f in range(2 * self.C):
                buf, d = bufs[f % 4], (self.da, self.dg)[f % 2]
                last = checks[f % 4]
                if last is not None:
                    last.result()  # the file last read into it is verified: the buffer is free
                _read_into(fds[f], buf, start * d * self.item, self._layout[f][0])
                if sums is not None:
                    checks[f % 4] = _verifier().submit(self._check, buf, f, sums, start)
                (A, G)[f % 2][:, f // 2] = buf
        finally:
            for check in checks:
                if check is not None:
                    check.result()  # the first damage found is raised (after every check has finished)
        return A, G

    def blocks(
        self, rows: int, pin: bool = False, start: int = 0, stop: int | None = None
    ) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        """``(start, A, G)`` blocks of at most ``rows`` rows of rows ``start:stop`` (default all; the next block
        is read and verified while the caller computes)."""
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
        f = 2 * self.C - 1
        path = self._layout[f][0]
        fd, sfd = open_file(path, os.O_RDONLY), open_file(self.folder / SUMS, os.O_RDONLY)
        try:
            for s in range(0, self.rows, rows):
                buf = torch.empty(min(rows, self.rows - s), self.dg, dtype=self.dtype)
                _read_into(fd, buf, s * self.dg * self.item, path)
                self._check(buf, f, self._sums(sfd, s, buf.shape[0]), s)
                yield s, buf
        finally:
            os.close(fd)
            os.close(sfd)

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

    def damaged(self, rows: int = 1 << 16) -> list[StoreDamaged]:
        """Every damaged data file with all its damaged rows (each file read once, ``rows`` rows at a time)."""
        out = []
        fds = self._open()
        try:
            for f, (path, nb) in enumerate(self._layout):
                bad: list[tuple[int, int]] = []
                for s in range(0, self.rows, rows):
                    n = min(rows, self.rows - s)
                    buf = np.empty(n * nb, dtype=np.uint8)
                    _fill(fds[f], buf.data, s * nb, path)
                    sums = self._sums(fds[-1], s, n)
                    assert sums is not None
                    try:
                        verify_rows(buf, n, self.seeds[f], sums[:, f], path, s)
                    except StoreDamaged as e:
                        bad += e.rows or []
                if bad:
                    out.append(StoreDamaged(path, "its bytes do not match their checksums", bad))
        finally:
            for fd in fds:
                os.close(fd)
        return out

    def verify(self) -> None:
        """Raise the ``StoreDamaged`` of the file with the earliest damaged row (nothing when all rows are sound)."""
        found = self.damaged()
        if found:
            raise min(found, key=lambda e: e.first_row)


def lock_store(
    folder: Path, expect: dict[str, Any], on_damage: OnDamage | None = None
) -> tuple[StoreLock, FactorStore | None]:
    """Create ``folder`` and take its lock; also return the store there when it matches ``expect`` (read under
    the lock: another writer may have completed it meanwhile; ``on_damage`` as for ``FactorStore.read``)."""
    folder.mkdir(parents=True, exist_ok=True)
    lock = StoreLock(folder)
    lock.acquire()
    try:
        return lock, FactorStore.read(folder, expect, on_damage)
    except BaseException:
        lock.release()
        raise


class StoreWriter:
    """Appends blocks of rows to a store during the factor pass, holding its lock (see the module docstring).

    ``append`` copies a block to the host and writes it (and its checksums) on a background thread while the pass
    computes the next one (one block in flight; its error, e.g. a full disk, is raised by the next ``append`` or
    ``commit``); ``commit`` waits for it, fsyncs the files, then records their rows in the manifest.
    """

    commit_seconds = 2.0  # at most this much work is lost when the process is killed mid-pass

    def __init__(self, store: FactorStore) -> None:
        self.store = store
        self.rows_written = store.rows_complete  # rows written completely (not all of them synced yet)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="tracin-store")
        self._pending: Future[None] | None = None
        self.fds: list[int] = []
        self._last_commit = time.monotonic()
        try:
            for p, nb in store.files():
                self.fds.append(open_file(p, os.O_RDWR | os.O_CREAT))
                os.ftruncate(self.fds[-1], store.rows_complete * nb)  # drop a block written but never recorded
        except BaseException:
            self.close()
            raise
        with contextlib.suppress(OSError):  # no room even for it: the first block's write says so
            self._reserve()

    @staticmethod
    def create(folder: Path, meta: dict[str, Any]) -> StoreWriter:
        """A new, empty store in ``folder`` (locked by the caller), replacing whatever else is there (links are
        removed themselves, never what they point to)."""
        for p in folder.iterdir():
            if p.name != ".lock":
                remove_entry(p)
        store = FactorStore(folder, {**meta, "check": CHECK, "rows_complete": 0, "complete": False})
        store.write_manifest()
        return StoreWriter(store)

    @property
    def rows_complete(self) -> int:
        return self.store.rows_complete

    def _reserve(self) -> None:
        """Hold ``MANIFEST_ROOM`` bytes in ``.reserve`` (incompressible bytes: allocated on every filesystem)."""
        path = self.store.folder / RESERVE
        if link_problem(path) is not None:
            remove_entry(path)
        fd = open_file(path, os.O_RDWR | os.O_CREAT)
        try:
            have = os.fstat(fd).st_size
            if have < MANIFEST_ROOM:
                _write_at(fd, memoryview(os.urandom(MANIFEST_ROOM - have)), have)
        finally:
            os.close(fd)

    def _free_reserve(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.store.folder / RESERVE)

    def append(self, A: torch.Tensor, G: torch.Tensor, norms: torch.Tensor) -> None:
        """Write the next rows (``A``/``G``: ``(n, C, d)`` in the store dtype; ``norms``: ``(n, C, 2)``)."""
        s, n = self.store, A.shape[0]
        host = [b for c in range(s.C) for b in (_as_bytes(A[:, c]), _as_bytes(G[:, c]))] + [_as_bytes(norms)]
        self._wait()
        r = self.rows_written

        def write() -> None:
            sums = np.empty((n, len(host)), dtype=SUM)
            for f, buf in enumerate(host):
                sums[:, f] = row_sums(np.frombuffer(buf, dtype=np.uint8), n, s.seeds[f])
            for fd, buf, (_, nb) in zip(self.fds, [*host, sums.data.cast("B")], s.files(), strict=True):
                _write_at(fd, buf, r * nb)
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
        """Record ``rows_written`` (the manifest's rewrite takes the reserve's room, which is then taken again;
        a complete store keeps no reserve). An ``OSError`` after the manifest is written leaves it recorded."""
        for fd in self.fds:
            os.fsync(fd)
        meta = {**self.store.meta, "rows_complete": self.rows_written}
        if rows is not None:
            meta.update(rows=rows, complete=True)
        self._free_reserve()
        old, self.store.meta = self.store.meta, meta
        try:
            self.store.write_manifest()
        except BaseException:
            self.store.meta = old
            raise
        if rows is None:
            self._reserve()

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
