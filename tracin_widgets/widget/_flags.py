"""Reading and writing flag files (JSON or CSV by suffix), atomically (the package's ``atomic_write``). No widget
imports."""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from .._io import atomic_write

SUFFIXES = (".json", ".csv")


def check_suffix(path: os.PathLike | str, argname: str = "path") -> Path:
    p = Path(path)
    if p.suffix.lower() not in SUFFIXES:
        raise ValueError(f"{argname} must end in .json or .csv (the format is chosen by suffix), got {str(p)!r}.")
    return p


def normalise(flagged: Iterable[Any], n_train: int | None = None, what: str = "flagged") -> list[int]:
    """Sorted, unique ints; each in [0, n_train) when n_train is given."""
    out = set()
    for v in flagged:
        if isinstance(v, bool) or not hasattr(v, "__index__"):
            if isinstance(v, float) and v.is_integer():
                v = int(v)
            else:
                raise ValueError(f"{what} must hold integer training indices, got {v!r}.")
        out.add(int(v))
    result = sorted(out)
    if n_train is not None and result and (result[0] < 0 or result[-1] >= n_train):
        bad = [v for v in result if v < 0 or v >= n_train][:5]
        raise ValueError(f"{what} holds indices outside the training set [0, {n_train}): {bad}.")
    return result


def dumps(flagged: Sequence[int], suffix: str) -> str:
    if suffix.lower() == ".json":
        return json.dumps(list(flagged)) + "\n"
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["index"])
    w.writerows([i] for i in flagged)
    return buf.getvalue()


def write(path: os.PathLike | str, flagged: Sequence[int]) -> Path:
    """Write flags to ``path`` atomically (temp file in the same folder, fsync, ``os.replace``): a crash leaves
    the old file or the new one, never half of one."""
    p = check_suffix(path)
    data = dumps(flagged, p.suffix).encode("utf-8")
    p.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(p, lambda f: f.write(data))
    return p


def read(path: os.PathLike | str, n_train: int | None = None) -> list[int]:
    """Read a flags file written by :func:`write` (JSON list, ``{"flagged": [...]}``, or CSV with an ``index`` column).

    Raises ValueError naming the file when it cannot be parsed; the file is never modified.
    """
    p = check_suffix(path)
    try:
        text = p.read_text(encoding="utf-8")
        if p.suffix.lower() == ".json":
            data = json.loads(text)
            if isinstance(data, dict) and "flagged" in data:
                data = data["flagged"]
            if not isinstance(data, list):
                raise ValueError("expected a JSON list of training indices")
            values = data
        else:
            rows = list(csv.reader(io.StringIO(text)))
            rows = [r for r in rows if r and any(c.strip() for c in r)]
            if not rows:
                values = []
            else:
                header = [c.strip().lower() for c in rows[0]]
                if "index" not in header:
                    raise ValueError("expected a CSV with an 'index' column")
                col = header.index("index")
                values = []
                for r in rows[1:]:
                    try:
                        values.append(int(r[col]))
                    except (ValueError, IndexError):
                        raise ValueError(f"bad row {r!r}") from None
        return normalise(values, n_train, what=f"flags file {str(p)!r}")
    except (ValueError, UnicodeDecodeError) as e:  # json.JSONDecodeError is a ValueError
        raise ValueError(
            f"flags file {str(p)!r} is corrupt or not a flags file ({e}). It was left untouched: fix or delete it, "
            "or pass another flags_path."
        ) from e
