"""TracInCPFastRandProj's training embeddings and Annoy index next to the factors of a complete store.

In the store folder (``influence/_store.py``), for one embedding *tag* (a hash of the store's fingerprint and row
count, the learning rates, the dtype and the projection: ``projection_dim``, ``seed`` and the matrices themselves):

- ``E-<tag>.bin``: the embeddings, rows x dim, row-major in the computation dtype (float32 for a float32 model),
  readable with ``numpy.memmap``; ``E-<tag>.sums``: a 64-bit checksum per row (``influence/_checksum.py``),
  verified by every read; ``E-<tag>.json`` records rows, dim, dtype, the checksum scheme and what they were
  computed from;
- ``annoy-<tag>-t<num_trees>.ann`` (+ ``.json``): the Annoy index built from them on disk (Annoy's
  ``on_disk_build``), memory-mapped by later instances (``AnnoyNearestNeighbors.build_on_disk`` / ``load``).

Each file is written under a temporary name (``.<name>.<host>.<pid>.tmp``), fsynced and renamed when complete;
its json is written (atomically) after the rename, so a file without a matching json (an interrupted or foreign
build) is never used, and a tag that differs in anything the embeddings depend on names other files. Temporary
files left by a process of this host that died are removed by the next writer. No file is opened through a
symbolic link: a link where a file should be makes it unused (and is replaced by the next writer, not followed).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._io import atomic_write
from ._files import _as_bytes, _fill, _np_bytes, _read_into, _write_at, link_problem, open_file, read_text
from ._integrity import CHECK, SUM, row_sums, seed, verify_rows
from ._sizes import DTYPES, dtype_name

FORMAT = 1
_HOST = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname()) or "host"
_TEMP = re.compile(r"^\..+\.(?P<host>[A-Za-z0-9_-]+)\.(?P<pid>\d+)\.tmp$")


def temp_path(path: Path) -> Path:
    """Where ``path`` is written before it is complete (renamed to ``path`` then)."""
    return path.with_name(f".{path.name}.{_HOST}.{os.getpid()}.tmp")


def remove_dead_temps(folder: Path) -> None:
    """Remove the temporary files of writers of this host that are no longer running (killed mid-write)."""
    with contextlib.suppress(OSError):
        for p in folder.iterdir():
            m = _TEMP.match(p.name)
            if m is None or m["host"] != _HOST or int(m["pid"]) == os.getpid():
                continue
            try:
                os.kill(int(m["pid"]), 0)
            except ProcessLookupError:
                with contextlib.suppress(OSError):
                    p.unlink()
            except OSError:  # alive (another user's process): not ours to remove
                pass


def fsync_path(path: Path) -> None:
    fd = open_file(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def embedding_tag(parts: dict[str, Any], projections: tuple[torch.Tensor, torch.Tensor] | None) -> str:
    """A hash of everything the training embeddings depend on (``parts``: JSON-able) and the projection matrices."""
    h = hashlib.sha256(json.dumps(parts, sort_keys=True).encode())
    for p in projections or ():
        p = p.detach().cpu().contiguous()
        h.update(str(tuple(p.shape)).encode())
        h.update(_as_bytes(p))
    return h.hexdigest()[:24]


def _seed(dim: int, dtype: str) -> int:
    return seed("E", dtype, dim)


def _fresh(path: Path) -> int:
    """Create ``path`` anew for writing (whatever was there, a link included, is removed first, not followed)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    return open_file(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)


class EmbeddingFile:
    """A complete ``E-<tag>.bin`` with its checksums ``E-<tag>.sums`` (see the module docstring)."""

    def __init__(self, folder: Path, tag: str, rows: int, dim: int, dtype: torch.dtype) -> None:
        self.folder, self.tag, self.rows, self.dim, self.dtype = folder, tag, rows, dim, dtype
        self.item = torch.empty((), dtype=dtype).element_size()
        self.seed = _seed(dim, dtype_name(dtype))

    @staticmethod
    def paths(folder: Path, tag: str) -> tuple[Path, Path]:
        return folder / f"E-{tag}.bin", folder / f"E-{tag}.json"

    @staticmethod
    def sums_path(folder: Path, tag: str) -> Path:
        return folder / f"E-{tag}.sums"

    @property
    def path(self) -> Path:
        return self.paths(self.folder, self.tag)[0]

    @staticmethod
    def read(folder: Path, tag: str, rows: int) -> EmbeddingFile | None:
        """The embeddings of ``tag`` when complete: the json matches (this checksum scheme), the files are no
        links and have exactly their bytes; else None."""
        path, meta_path = EmbeddingFile.paths(folder, tag)
        sums = EmbeddingFile.sums_path(folder, tag)
        try:
            if any(link_problem(p) is not None for p in (path, meta_path, sums)):
                return None
            meta = json.loads(read_text(meta_path))
            if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("tag") != tag:
                return None
            if meta.get("check") != CHECK or meta.get("rows") != rows:
                return None
            if not isinstance(meta.get("dim"), int) or meta["dim"] <= 0:
                return None
            out = EmbeddingFile(folder, tag, rows, meta["dim"], DTYPES[meta["dtype"]])
            if path.stat().st_size != rows * out.dim * out.item or sums.stat().st_size != 8 * rows:
                return None
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return out

    def blocks(self, rows: int) -> Iterator[tuple[int, torch.Tensor]]:
        """``(start, (n, dim) CPU tensor)`` blocks of at most ``rows`` rows, read with ``preadv`` (no mapping) and
        verified (``StoreDamaged`` naming the file and rows)."""
        fd = open_file(self.path, os.O_RDONLY)
        sums_path = self.sums_path(self.folder, self.tag)
        sfd = open_file(sums_path, os.O_RDONLY)
        try:
            for s in range(0, self.rows, rows):
                out = torch.empty(min(rows, self.rows - s), self.dim, dtype=self.dtype)
                _read_into(fd, out, s * self.dim * self.item, self.path)
                sums = np.empty(out.shape[0], dtype=SUM)
                _fill(sfd, sums.view(np.uint8).data, 8 * s, sums_path)
                verify_rows(_np_bytes(out), out.shape[0], self.seed, sums, self.path, s)
                yield s, out
        finally:
            os.close(fd)
            os.close(sfd)

    def mapped(self) -> torch.Tensor:
        """All rows as a ``(rows, dim)`` CPU tensor memory-mapped from the file (copy-on-write: writing to it
        never changes the file); pages are read as they are touched. Every row is verified first (one read of
        the file, which leaves it in the page cache for the mapping)."""
        for _ in self.blocks(max(1, (64 << 20) // max(1, self.dim * self.item))):
            pass
        if link_problem(self.path) is not None:
            raise OSError(f"{str(self.path)!r} was replaced by a link")
        flat = torch.from_file(str(self.path), shared=False, size=self.rows * self.dim, dtype=self.dtype)
        return flat.view(self.rows, self.dim)


class EmbeddingWriter:
    """Writes ``E-<tag>.bin`` (and its checksums) block by block under temporary names; ``finish`` makes it
    complete."""

    def __init__(self, folder: Path, tag: str) -> None:
        self.folder, self.tag = folder, tag
        self.path, self.meta_path = EmbeddingFile.paths(folder, tag)
        self.sums_path = EmbeddingFile.sums_path(folder, tag)
        remove_dead_temps(folder)
        self.tmp, self.sums_tmp = temp_path(self.path), temp_path(self.sums_path)
        self.fd = self.sums_fd = -1
        try:
            self.fd, self.sums_fd = _fresh(self.tmp), _fresh(self.sums_tmp)
        except BaseException:
            self.abort()
            raise
        self.rows, self.dim, self.dtype, self.offset = 0, 0, torch.float32, 0

    def append(self, block: torch.Tensor) -> None:
        block = block.detach().reshape(len(block), -1)
        self.dim, self.dtype = block.shape[1], block.dtype
        buf = _as_bytes(block)
        sums = row_sums(np.frombuffer(buf, dtype=np.uint8), block.shape[0], _seed(self.dim, dtype_name(self.dtype)))
        _write_at(self.fd, buf, self.offset)
        _write_at(self.sums_fd, sums.data.cast("B"), 8 * self.rows)
        self.offset += len(buf)
        self.rows += block.shape[0]

    def finish(self, info: dict[str, Any]) -> EmbeddingFile:
        """fsync, rename the checksums then ``E-<tag>.bin``, then record it (with ``info``) in ``E-<tag>.json``."""
        for name in ("fd", "sums_fd"):
            fd = getattr(self, name)
            os.fsync(fd)
            os.close(fd)
            setattr(self, name, -1)
        os.replace(self.sums_tmp, self.sums_path)
        os.replace(self.tmp, self.path)
        meta = {
            **info,
            "format": FORMAT,
            "check": CHECK,
            "tag": self.tag,
            "rows": self.rows,
            "dim": self.dim,
            "dtype": dtype_name(self.dtype),
        }
        text = json.dumps(meta, indent=1).encode()
        atomic_write(self.meta_path, lambda f: f.write(text))
        return EmbeddingFile(self.folder, self.tag, self.rows, self.dim, self.dtype)

    def abort(self) -> None:
        """Close and remove the temporary files (nothing is recorded)."""
        for name in ("fd", "sums_fd"):
            fd = getattr(self, name, -1)
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
            setattr(self, name, -1)
        for tmp in (self.tmp, self.sums_tmp):
            with contextlib.suppress(OSError):
                tmp.unlink()
