"""Sizes and dtypes of the factor store: ``max_memory=`` in bytes, ``factor_dtype=``, their names, block rows."""

from __future__ import annotations

import re
from typing import Any

import torch

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}
FACTOR_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
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


def stream_rows(row_bytes: int, max_memory: int | None) -> int:
    """Rows per streamed block of rows of ``row_bytes``."""
    budget = STREAM_BLOCK_BYTES if max_memory is None else min(STREAM_BLOCK_BYTES, max_memory // 4)
    return max(1, budget // max(1, row_bytes))
