"""Reading and writing flag files (JSON or CSV by suffix), atomically (the package's ``atomic_write``), and the
review export (one record per flagged or relabelled row), which reads back as a flags file. No widget imports."""

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
EXPORT_COLUMNS = ("index", "given_label", "suggested_label", "new_label", "flagged", "self_influence")
"""The columns of ``export_flagged``: one record per flagged or relabelled training row."""


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


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    return repr(v) if isinstance(v, float) else str(v)


def dumps_records(records: Sequence[dict], suffix: str) -> str:
    """The export's text: JSON (a list of objects with ``EXPORT_COLUMNS`` keys, in that order, ``null`` for none)
    or CSV (those columns, empty for none, ``true``/``false`` for ``flagged``)."""
    if suffix.lower() == ".json":
        return json.dumps([{c: r[c] for c in EXPORT_COLUMNS} for r in records]) + "\n"
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(EXPORT_COLUMNS)
    w.writerows([_cell(r[c]) for c in EXPORT_COLUMNS] for r in records)
    return buf.getvalue()


def write_records(path: os.PathLike | str, records: Sequence[dict]) -> Path:
    """Write the review export to ``path`` (``.json`` or ``.csv``) atomically."""
    p = check_suffix(path)
    data = dumps_records(records, p.suffix).encode("utf-8")
    p.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(p, lambda f: f.write(data))
    return p


def _flagged_cell(v: Any) -> bool:
    return str(v).strip().lower() not in ("false", "0", "")


def _json_values(data: Any) -> list:
    if isinstance(data, dict) and "flagged" in data:
        data = data["flagged"]
    if not isinstance(data, list):
        raise ValueError("expected a JSON list of training indices")
    if data and all(isinstance(r, dict) for r in data):  # the review export: its flagged records
        if any("index" not in r for r in data):
            raise ValueError("expected records with an 'index' key")
        return [r["index"] for r in data if r.get("flagged", True) is not False]
    return data


def write(path: os.PathLike | str, flagged: Sequence[int]) -> Path:
    """Write flags to ``path`` atomically (temp file in the same folder, fsync, ``os.replace``): a crash leaves
    the old file or the new one, never half of one."""
    p = check_suffix(path)
    data = dumps(flagged, p.suffix).encode("utf-8")
    p.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(p, lambda f: f.write(data))
    return p


def read(path: os.PathLike | str, n_train: int | None = None) -> list[int]:
    """Read a flags file written by :func:`write` (JSON list, ``{"flagged": [...]}``, or CSV with an ``index`` column)
    or an export of :func:`write_records` (its flagged rows).

    Raises ValueError naming the file when it cannot be parsed; the file is never modified.
    """
    p = check_suffix(path)
    try:
        text = p.read_text(encoding="utf-8")
        if p.suffix.lower() == ".json":
            values = _json_values(json.loads(text))
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
                fcol = header.index("flagged") if "flagged" in header else None  # the review export
                values = []
                for r in rows[1:]:
                    try:
                        if fcol is None or _flagged_cell(r[fcol]):
                            values.append(int(r[col]))
                    except (ValueError, IndexError):
                        raise ValueError(f"bad row {r!r}") from None
        return normalise(values, n_train, what=f"flags file {str(p)!r}")
    except (ValueError, UnicodeDecodeError) as e:  # json.JSONDecodeError is a ValueError
        raise ValueError(
            f"flags file {str(p)!r} is corrupt or not a flags file ({e}). It was left untouched: fix or delete it, "
            "or pass another flags_path."
        ) from e
