"""Integrity of the factor store: row and file checksums, manifest checks, the exception a damaged store raises.

Every row of every store file has a 64-bit checksum, written with its block and verified whenever the row is read
(a block, one row of a rerank, the norms). The checksum of a row of ``w`` words ``x_j`` (64-bit words where the
row's bytes allow, else 32-bit, as the machine stores them) is ``seed + sum_j x_j * m_j`` modulo the word size:
``m_j`` are fixed odd multipliers, so a change of any one word always changes it (an odd ``m_j`` is invertible)
and a zero-filled row gives ``seed``, not 0. ``seed`` is derived from the file's name, dtype and row width, so a
manifest that says another dtype or width (or a file copied over another of the same size) fails every row. Rows
whose bytes are not a multiple of 4 (half precision with an odd width) are hashed as 16-bit words (a copy).

It is an integer matrix-vector product (numpy, which releases the GIL, so the store verifies a file on a second
thread while it reads the next): on the project's 2-core AMD EPYC dev box, one core, contiguous rows, best of 15,
uint64 words 9.5-12.6 GB/s and uint32 words 5.7-6.4 GB/s for rows of 10 and 84 float32, where zlib's crc32 gives
1.9-2.9 GB/s and adler32 1.7-2.0 GB/s; and per row, so a rerank reading single rows verifies exactly what it
reads. It detects accidental damage (flipped bits, zeroed or truncated blocks, stale files), not tampering: it
is not a cryptographic hash.
"""

from __future__ import annotations

import hashlib
import os
import zlib
from pathlib import Path
from typing import Any

import numpy as np

CHECK = "rows-u64-1"  # the manifests' name of this scheme: a store recorded with another is not used
SUM = np.uint64  # the dtype of a row's checksum
_DIGEST_ROW = 512  # 64-bit words per row when a whole file is hashed (file_digest)
_multipliers: dict[int, np.ndarray] = {}


def _mult(width: int) -> np.ndarray:
    """``width`` odd uint64 multipliers (a splitmix64 sequence: the same on every machine and numpy version)."""
    m = _multipliers.get(width)
    if m is None:
        with np.errstate(over="ignore"):
            z = np.arange(1, width + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
            z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
            m = (z ^ (z >> np.uint64(31))) | np.uint64(1)
        _multipliers[width] = m
    return m


def seed(name: str, dtype: str, width: int) -> int:
    """The checksum seed of a file: its name, the dtype and the number of values per row."""
    text = f"tracin|{CHECK}|{name}|{dtype}|{width}".encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little")


def row_sums(data: np.ndarray, rows: int, seed: int) -> np.ndarray:
    """The ``(rows,)`` uint64 checksums of ``data``: the flat uint8 bytes of ``rows`` rows of equal length."""
    if rows == 0:
        return np.zeros(0, dtype=SUM)
    flat = data.reshape(-1)
    row_bytes = flat.size // rows
    size = next(k for k in (8, 4, 2) if row_bytes % k == 0)
    words = flat.view({8: np.uint64, 4: np.uint32, 2: np.uint16}[size]).reshape(rows, row_bytes // size)
    if size == 2:  # half precision with an odd width: (a copy) as 32-bit words
        words = words.astype(np.uint32)
    with np.errstate(over="ignore"):
        m = _mult(words.shape[1])
        h = words @ (m if words.dtype == np.uint64 else m.astype(np.uint32))
        return h.astype(SUM) + SUM(seed)  # type: ignore[no-any-return]


def file_digest(fd: int, size: int, block: int = 16 << 20) -> str:
    """A hexadecimal checksum of the first ``size`` bytes of the open file ``fd`` (read with ``preadv`` in blocks
    of ``block`` bytes): the crc32 of its rows' checksums (rows of 4 KiB) and of the last partial row."""
    row = 8 * _DIGEST_ROW
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
