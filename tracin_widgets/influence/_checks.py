"""Argument checks shared by the engines, and the non-finite checks that name the rows (or the checkpoint) a
NaN or inf comes from."""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._data import nonfinite_parts, nonfinite_rows, tensor_fast_path
from ._types import EngineFields


def check_proponents(proponents: Any) -> bool:
    if not isinstance(proponents, (bool, np.bool_)):
        raise TypeError(
            f"proponents must be True (most helpful examples, highest scores first) or False (opponents, lowest "
            f"first), got {type(proponents).__name__} {proponents!r}."
        )
    return bool(proponents)


def check_k(k: Any) -> int | None:
    if k is None:
        return None
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"k must be a positive int (or None for the full score matrix), got {type(k).__name__} {k!r}.")
    if k <= 0:
        raise ValueError(f"k must be a positive int (or None for the full score matrix), got k={k}.")
    return k


def check_train_indices(train_indices: Any, n_train: int | None) -> torch.Tensor:
    """``train_indices`` (ints, a 1-D int tensor or array) as an int64 CPU tensor, each in ``[0, n_train)``."""
    fix = "pass training-set positions, e.g. train_indices=[3, 17] or the indices returned by influence(k=...)"
    if isinstance(train_indices, (str, bytes)) or not (
        isinstance(train_indices, (torch.Tensor, np.ndarray, Sequence)) or hasattr(train_indices, "__iter__")
    ):
        raise TypeError(f"train_indices must be a sequence of ints, got {type(train_indices).__name__}: {fix}.")
    values = train_indices.tolist() if isinstance(train_indices, (torch.Tensor, np.ndarray)) else list(train_indices)
    if isinstance(values, int):  # a 0-dim tensor or array
        values = [values]
    bad = [v for v in values if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer))]
    if bad:
        raise TypeError(f"train_indices must be ints, got {type(bad[0]).__name__} {bad[0]!r}: {fix}.")
    if not values:
        raise ValueError(f"train_indices is empty: {fix}.")
    if n_train is not None and any(not 0 <= int(v) < n_train for v in values):
        out = next(int(v) for v in values if not 0 <= int(v) < n_train)
        raise ValueError(f"train_indices holds {out}, outside the training set [0, {n_train}): {fix}.")
    return torch.tensor([int(v) for v in values], dtype=torch.int64)


def sqrt_lr(lr: float, path: str) -> float:
    if lr < 0:
        raise ValueError(f"learning rate {lr} for checkpoint {path!r} is negative; TracIn needs lr >= 0.")
    return math.sqrt(lr)


def check_cache_dir(cache_dir: Any, ckpt_folder: str | None) -> Path | None:
    if cache_dir is None:
        return None
    if not isinstance(cache_dir, (str, os.PathLike)):
        raise TypeError(
            f"cache_dir must be a folder path (str or os.PathLike) or None, not {type(cache_dir).__name__}."
        )
    path = Path(cache_dir)
    if ckpt_folder is not None and path.resolve() == Path(ckpt_folder).resolve():
        raise ValueError(
            f"cache_dir {str(path)!r} is the checkpoints folder: every file there is read as a checkpoint, the "
            "cache files too. Pass another folder as cache_dir, e.g. a 'tracin-cache' folder next to it."
        )
    return path


class _Checks(EngineFields):
    """``TracInCPBase``'s finiteness checks: a checkpoint's weights, and the rows whose quantities are not finite."""

    def _check_weights(self, state: dict[str, torch.Tensor], path: str) -> None:
        """A checkpoint with a NaN/inf weight makes every score NaN: name it when it is loaded (one sync)."""
        floats = [(k, v) for k, v in state.items() if v.is_floating_point() or v.is_complex()]
        if not floats:
            return
        ok = torch.stack([torch.isfinite(v).all() for _, v in floats])
        if bool(ok.all()):
            return
        bad = [(k, int((~torch.isfinite(v)).sum())) for (k, v), f in zip(floats, ok.tolist(), strict=True) if not f]
        names = ", ".join(f"{k} ({c} value{'s' * (c != 1)})" for k, c in bad[:4]) + (", ..." if len(bad) > 4 else "")
        raise ValueError(
            f"checkpoint {path!r} has non-finite (NaN or inf) weights: {names}. Every score would be NaN. The "
            "training run had probably diverged by then: drop this file from `checkpoints`."
        )

    def _raise_nonfinite(
        self, masks: dict[str, torch.Tensor], offset: int, what: str, row_of: Callable[[int], Any], complete: bool
    ) -> None:
        """``masks[quantity][i, c]``: that quantity of row ``offset + i`` is non-finite at checkpoint c.
        Raise a ValueError naming the rows and why: their features or labels are non-finite, or (inputs and
        weights finite) the model or loss overflows on them. Returns when no row is non-finite."""
        bad = functools.reduce(torch.logical_or, masks.values())
        rows = bad.any(1).nonzero().flatten().cpu()
        if rows.numel() == 0:
            return
        src = "train_dataset" if what.startswith("train") else "inputs"
        n_rows = bad.shape[0]
        first, glob = int(rows[0]), [offset + int(r) for r in rows]
        ckpt = int(bad[first].nonzero()[0])
        quantity = next(q for q, m in masks.items() if bool(m[first, ckpt]))
        total = self._n_train() if src == "train_dataset" else self._test_rows
        if total is not None and offset + n_rows >= total:
            complete = True  # the rows before ``offset`` were checked already
        scope = "" if complete else f"; rows after {offset + n_rows - 1} were not checked yet"

        def show(ix: list[int]) -> str:
            return ", ".join(map(str, ix[:5])) + (", ..." if len(ix) > 5 else "")

        in_rows: list[int] = []
        feat = lab = False
        if src == "train_dataset" and tensor_fast_path(self.train_dataloader):
            found, feat, lab = nonfinite_rows(self.train_dataloader.dataset.tensors)  # type: ignore[attr-defined]
            in_rows, scope_in = found.tolist(), ""
        else:
            scope_in = scope
            for i in glob[:20]:
                try:
                    bad_feat, bad_lab = nonfinite_parts(row_of(i))
                except Exception:  # a row that cannot be read back: say the cause is unknown
                    continue
                if bad_feat or bad_lab:
                    in_rows.append(i)
                    feat, lab = feat or bad_feat, lab or bad_lab
        if in_rows:
            parts = " and ".join(p for p, b in (("features", feat), ("labels", lab)) if b)
            raise ValueError(
                f"{src} has non-finite (NaN or inf) {parts} in row(s) {show(in_rows)} ({len(in_rows)} row(s)"
                f"{scope_in}): every influence score involving them would be NaN. Fix or drop these rows (e.g. "
                "torch.utils.data.Subset(dataset, kept_indices))."
            )
        raise ValueError(
            f"{src} row(s) {show(glob)} ({len(glob)} row(s){scope}) give non-finite (NaN or inf) {quantity} at "
            f"checkpoint {self.checkpoints[ckpt]!r}, although their features and labels and the checkpoint's "
            "weights are finite: the model or the loss overflows on them (very large feature values? float16?). "
            "Rescale these rows' features, or drop them (torch.utils.data.Subset)."
        )

    @staticmethod
    def _check_finite(t: torch.Tensor, path: str, what: str) -> None:
        if not bool(torch.isfinite(t.sum())):  # one reduction: NaN/inf anywhere makes the sum non-finite
            raise ValueError(
                f"non-finite (NaN or inf) {what} at checkpoint {path!r}: the scores would be NaN. Check that "
                "checkpoint's weights (a diverged training step?) or drop it from `checkpoints`."
            )

    def _check_all_finite(self, sums: torch.Tensor, whats: list[str], locate: Callable[[], None] | None = None) -> None:
        """``sums[j, c]``: a sum over quantity ``whats[j]`` at checkpoint c. One device sync for all of them
        (a per-tensor check would stall the GPU once per checkpoint and block). On failure ``locate`` raises
        naming the rows (see ``_raise_nonfinite``); if it returns, every value is finite and only a sum
        overflowed."""
        ok = torch.isfinite(sums)
        if bool(ok.all()):
            return
        if locate is not None:
            locate()
            return
        j, c = (int(v) for v in (~ok).nonzero()[0])
        self._check_finite(sums[j, c], self.checkpoints[c], whats[j])
