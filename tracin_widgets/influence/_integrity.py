"""Integrity of the factor store: row and file checksums, manifest checks, the exception a damaged store raises.

Every row of every store file has a 32-bit checksum, written with its block and verified whenever the row is read
(a block, one row of a rerank, the norms). The checksum of a row of ``w`` 32-bit words ``x_j`` (its bytes, little
or big endian as the machine stores them) is ``seed + sum_j x_j * m_j mod 2**32``: ``m_j`` are fixed odd
multipliers, so a change of any one word always changes it (``m_j`` is invertible mod ``2**32``) and a zero-filled
row gives ``seed``, not 0. ``seed`` is derived from the file's name, dtype and row width, so a manifest that says
another dtype or width (or a file copied over another of the same size) fails every row. Rows whose bytes are not
a multiple of 4 (half precision with an odd width) are hashed as 16-bit words.

It is a uint32 matrix-vector product (numpy, which releases the GIL): 2.3-4.4 GB/s on one core of the project's
2-core AMD EPYC dev box for rows of 16-2049 words, about twice zlib's crc32 (2.0 GB/s) and adler32 (1.7 GB/s)
there, and per row, so a rerank reading single rows verifies exactly what it reads. It detects accidental damage
(flipped bits, zeroed or truncated blocks, stale files), not tampering: it is not a cryptographic hash.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path
from typing import Any

import numpy as np

CHECK = "rows-u32-1"  # the manifests' name of this scheme: a store recorded with another is not used
_DIGEST_ROW = 1024  # words per row when a whole file is hashed (file_digest)
_multipliers: dict[int, np.ndarray] = {}


def _mult(width: int) -> np.ndarray:
    """``width`` odd uint32 multipliers (a splitmix64 sequence: the same on every machine and numpy version)."""
    m = _multipliers.get(width)
    if m is None:
        with np.errstate(over="ignore"):
            z = (np.arange(1, width + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)).astype(np.uint64)
            z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
            z = z ^ (z >> np.uint64(31))
        m = (z.astype(np.uint32) | np.uint32(1)).astype(np.uint32)
        _multipliers[width] = m
    return m


def seed(name: str, dtype: str, width: int) -> int:
    """The checksum seed of a file: its name, the dtype and the number of values per row."""
    return zlib.crc32(f"tracin|{CHECK}|{name}|{dtype}|{width}".encode())


def row_sums(data: np.ndarray, rows: int, seed: int) -> np.ndarray:
    """The ``(rows,)`` uint32 checksums of ``data``: the flat uint8 bytes of ``rows`` rows of equal length."""
    if rows == 0:
        return np.zeros(0, dtype=np.uint32)
    flat = data.reshape(-1)
    row_bytes = flat.size // rows
    if row_bytes % 4 == 0:
        words = flat.view(np.uint32).reshape(rows, row_bytes // 4)
    else:  # half precision with an odd width: 16-bit words (a copy)
        words = flat.view(np.uint16).reshape(rows, row_bytes // 2).astype(np.uint32)
    with np.errstate(over="ignore"):
        return (words @ _mult(words.shape[1])) + np.uint32(seed)  # type: ignore[no-any-return]


def file_digest(fd: int, size: int, block: int = 16 << 20) -> str:
    """A hexadecimal checksum of the first ``size`` bytes of the open file ``fd`` (read with ``preadv`` in blocks
    of ``block`` bytes): the crc32 of its rows' checksums (rows of 4 KiB) and of the last partial row."""
    row = 4 * _DIGEST_ROW
    block = max(row, block // row * row)
    buf = np.empty(block, dtype=np.uint8)
    crc, done = 0, 0
    while done < size:
        n = min(block, size - done)
        view = buf.data[:n]
        got = 0
        while got < n:
            k = os.preadv(fd, [view[got:]], done + got)
            if k == 0:
                raise OSError(f"the file is shorter than the {size} bytes to check")
            got += k
        full = n // row * row
        if full:
            crc = zlib.crc32(row_sums(buf[:full], full // row, 0).tobytes(), crc)
        crc = zlib.crc32(view[full:], crc)
        done += n
    return f"{CHECK}:{size}:{crc:08x}"


def _ranges(rows: np.ndarray) -> list[tuple[int, int]]:
    """Sorted row numbers as ``[(start, stop), ...]`` runs."""
    out: list[tuple[int, int]] = []
    for r in rows.tolist():
        if out and out[-1][1] == r:
            out[-1] = (out[-1][0], r + 1)
        else:
            out.append((r, r + 1))
    return out


class StoreDamaged(Exception):
    """A file of the factor store (or of its embeddings) does not hold what its manifest and checksums record.

    ``path``: the file; ``rows``: the damaged rows as ``(start, stop)`` runs (None when the whole file is unusable:
    a link, a wrong size, a manifest that contradicts the files); ``first_row``: where a resume must restart.
    Raised by the store's readers before any damaged value is returned; the engine catches it, warns
    (``TracInWarning``) and recomputes.
    """

    def __init__(self, path: Path, reason: str, rows: list[tuple[int, int]] | None = None) -> None:
        self.path, self.reason, self.rows = Path(path), reason, rows
        where = ""
        if rows:
            shown = ", ".join(f"{a}:{b}" for a, b in rows[:4]) + (" ..." if len(rows) > 4 else "")
            where = f" (rows {shown})"
        super().__init__(f"the factor store file {str(self.path)!r} is damaged{where}: {reason}")

    @property
    def first_row(self) -> int:
        return self.rows[0][0] if self.rows else 0


def verify_rows(data: np.ndarray, rows: int, seed: int, expected: np.ndarray, path: Path, start: int) -> None:
    """Raise ``StoreDamaged`` naming ``path`` and the rows (numbered from ``start``) whose checksum differs."""
    bad = np.flatnonzero(row_sums(data, rows, seed) != expected)
    if bad.size:
        raise StoreDamaged(path, "its bytes do not match their checksums", _ranges(bad + start))


DTYPE_NAMES = ("float32", "float64", "bfloat16", "float16")
FACTOR_DTYPE_NAMES = DTYPE_NAMES


def manifest_problem(meta: dict[str, Any]) -> str | None:
    """What makes a manifest contradict itself (None when nothing does)."""

    def count(v: Any, low: int) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= low

    dims = meta.get("dims")
    if not count(meta.get("checkpoints"), 1):
        return f"checkpoints={meta.get('checkpoints')!r} is not a positive int"
    if not isinstance(dims, dict) or not all(count(dims.get(k), 1) for k in ("A", "G")):
        return f"dims={dims!r} are not positive ints for A and G"
    if meta.get("dtype") not in FACTOR_DTYPE_NAMES or meta.get("norm_dtype") not in DTYPE_NAMES:
        return f"dtype={meta.get('dtype')!r} or norm_dtype={meta.get('norm_dtype')!r} is not a dtype of a store"
    rows, done, complete = meta.get("rows"), meta.get("rows_complete"), meta.get("complete")
    if not isinstance(complete, bool) or not count(done, 0) or not (rows is None or count(rows, 0)):
        return f"rows={rows!r}, rows_complete={done!r}, complete={complete!r} are not row counts"
    if (rows is not None and done > rows) or (complete and done != rows):
        return f"rows_complete={done} does not fit rows={rows!r} (complete={complete})"
    return None
