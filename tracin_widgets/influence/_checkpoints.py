"""Finding, reading and validating checkpoints."""

from __future__ import annotations

import math
import numbers
import os
import re
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ._errors import TracInWarning


def _natural_key(path: str) -> list:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", str(path))]


def checkpoint_folder(checkpoints: Any) -> str | None:
    """The folder when ``checkpoints`` names one (its files are the checkpoints), else None."""
    if isinstance(checkpoints, (str, os.PathLike)) and Path(checkpoints).is_dir():
        return str(checkpoints)
    return None


def duplicate_checkpoints(paths: list[str]) -> str | None:
    """The warning for ``paths`` that name one file more than once (the same path, or another name through a
    link): each listing counts, as in Captum, so that file's checkpoint weighs twice or more. None otherwise."""
    seen: dict[tuple[int, int], list[str]] = {}
    for p in paths:
        try:
            st = os.stat(p)
        except OSError:
            continue
        seen.setdefault((st.st_dev, st.st_ino), []).append(p)
    groups = [names for names in seen.values() if len(names) > 1]
    if not groups:
        return None
    shown = "; ".join(" = ".join(repr(n) for n in names) for names in groups[:5])
    return (
        f"checkpoints names the same file more than once ({shown}{'; ...' if len(groups) > 5 else ''}): each "
        "listing counts, as in Captum, so that checkpoint contributes once per listing. Remove the duplicates "
        "(or the link) if each checkpoint should count once."
    )


def resolve_checkpoints(checkpoints: Any, warn: Callable[[str], None] | None = None) -> list[str]:
    """Turn ``checkpoints`` (a folder, a path, or a list of paths) into a natural-sorted list of files.

    A folder contributes every regular, non-hidden file in it, whatever its extension (as Captum does). One file
    named twice (``duplicate_checkpoints``) is kept twice, with a ``TracInWarning`` (``warn(message)`` when
    given)."""
    out = _checkpoint_files(checkpoints)
    message = duplicate_checkpoints(out)
    if message is not None:
        if warn is not None:
            warn(message)
        else:
            warnings.warn(message, TracInWarning, stacklevel=4)  # the user's engine constructor
    return out


def _checkpoint_files(checkpoints: Any) -> list[str]:
    if isinstance(checkpoints, (str, os.PathLike)):
        p = Path(checkpoints)
        if p.is_dir():
            files = [str(f) for f in p.iterdir() if f.is_file() and not f.name.startswith(".")]
            if not files:
                raise ValueError(
                    f"no checkpoints: the folder {str(p)!r} holds no files (hidden files and subfolders are "
                    "skipped). Save checkpoints there (e.g. torch.save(model.state_dict(), 'ckpt-1.pt')) or pass "
                    "a list of paths."
                )
            return sorted(files, key=_natural_key)
        if p.is_file():
            return [str(p)]
        raise ValueError(f"checkpoints: {str(p)!r} is neither a folder nor a file. Pass a folder or a list of paths.")
    if isinstance(checkpoints, (bytes, Mapping)) or not hasattr(checkpoints, "__iter__"):
        raise TypeError(
            f"checkpoints must be a folder or a list of checkpoint paths, not {type(checkpoints).__name__}."
        )
    items = list(checkpoints)
    if not items:
        raise ValueError(
            "no checkpoints: `checkpoints` is an empty list. Pass the paths of at least one saved "
            "checkpoint (TracIn sums over several; 5 or more evenly spaced ones work well)."
        )
    out = []
    for item in items:
        if not isinstance(item, (str, os.PathLike)):
            raise TypeError(f"checkpoints must hold file paths, got {type(item).__name__}: {item!r}.")
        if Path(item).is_dir():
            raise ValueError(
                f"checkpoints: {str(item)!r} is a folder, not a checkpoint file; pass the folder itself as "
                "`checkpoints` (its files are the checkpoints) or list its files."
            )
        if not Path(item).is_file():
            raise ValueError(f"checkpoint file not found: {str(item)!r}. Check the path.")
        out.append(str(item))
    return sorted(out, key=_natural_key)


def _unwrap_state_dict(obj: Any, path: str) -> tuple[Mapping, float]:
    lr = 1.0
    if isinstance(obj, nn.Module):
        return obj.state_dict(), lr
    if not isinstance(obj, Mapping):
        raise ValueError(
            f"checkpoint {path!r} holds a {type(obj).__name__}, not a state dict. Save "
            "model.state_dict() (optionally inside {'model_state_dict': ...}) or pass a checkpoints_load_func."
        )
    for key in ("model_state_dict", "state_dict", "model"):
        inner = obj.get(key)
        if isinstance(inner, Mapping):
            lr = obj.get("learning_rate", obj.get("lr", 1.0))
            return inner, lr
    if "learning_rate" in obj and not isinstance(obj["learning_rate"], torch.Tensor):
        lr = obj["learning_rate"]
        obj = {k: v for k, v in obj.items() if k != "learning_rate"}
    return obj, lr


WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # nn.DataParallel / DistributedDataParallel, torch.compile


def match_prefixes(sd: Mapping, own: Mapping) -> Mapping:
    """``sd``'s keys with the prefix of a wrapper (``WRAPPER_PREFIXES``) removed where every key of ``sd`` has it and
    no key of the model's ``own`` state dict does, or added where it is the other way round."""
    for prefix in WRAPPER_PREFIXES:
        ours, theirs = ([k.startswith(prefix) for k in d] for d in (own, sd))
        if theirs and all(theirs) and not any(ours):
            sd = {k[len(prefix) :]: v for k, v in sd.items()}
        elif ours and all(ours) and not any(theirs):
            sd = {prefix + k: v for k, v in sd.items()}
    return sd


def load_checkpoint(model: nn.Module, path: str, *, weights_only: bool = True) -> float:
    """Default ``checkpoints_load_func``: load a state dict into ``model`` in place; return the learning rate.

    Accepts a bare state dict, ``{"model_state_dict": ...}`` / ``{"state_dict": ...}`` (the learning rate is
    read from a ``"learning_rate"`` or ``"lr"`` entry, else 1.0), and the ``module.`` (DataParallel) and ``_orig_mod.``
    (``torch.compile``) prefixes.
    """
    try:
        obj = torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as e:  # whatever torch.load raises: re-raised with the file name and the fix
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        hint = (
            " It holds objects that weights_only=True refuses to unpickle: if you trust the file, pass "
            "weights_only=False, or pass a checkpoints_load_func that loads it."
            if weights_only
            and ("weights_only" in str(e) or "Unpickl" in type(e).__name__ or "pickle" in str(e).lower())
            else " Is it a torch checkpoint? Pass a checkpoints_load_func for other formats."
        )
        raise ValueError(f"could not read checkpoint {path!r}: {type(e).__name__}: {first}.{hint}") from e
    sd, lr = _unwrap_state_dict(obj, path)
    own = model.state_dict()
    sd = match_prefixes(sd, own)
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    if missing or unexpected:
        raise ValueError(
            f"checkpoint {path!r} does not fit the model: missing keys {missing[:8]}"
            f"{' …' if len(missing) > 8 else ''}, unexpected keys {unexpected[:8]}"
            f"{' …' if len(unexpected) > 8 else ''}. Is it a checkpoint of this architecture? "
            "Pass a checkpoints_load_func if it is stored differently."
        )
    bad = [
        f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(v.shape)}"
        for k, v in own.items()
        if isinstance(sd[k], torch.Tensor) and tuple(sd[k].shape) != tuple(v.shape)
    ]
    if bad:
        raise ValueError(f"checkpoint {path!r} does not fit the model: shape mismatch for {bad[:5]}.")
    model.load_state_dict(sd)
    return lr


def check_lr(lr: Any, path: str, is_default: bool) -> float:
    """A learning rate is a finite number >= 0 (0: the checkpoint contributes nothing); numpy scalars and
    one-element tensors/arrays count as numbers."""
    wanted = "the learning rate used up to that checkpoint as a float (1.0 if it is unknown)."
    fix = (
        f"Fix the checkpoint's 'learning_rate'/'lr' entry, or pass a checkpoints_load_func that returns {wanted}"
        if is_default
        else f"Make checkpoints_load_func return {wanted}"
    )
    if (
        (isinstance(lr, torch.Tensor) and lr.numel() == 1)
        or (isinstance(lr, np.ndarray) and lr.size == 1)
        or isinstance(lr, np.generic)
    ):
        lr = lr.item()
    if isinstance(lr, bool) or not isinstance(lr, numbers.Real):
        raise TypeError(
            f"the learning rate for checkpoint {path!r} is {type(lr).__name__} {_short(lr)}, not a number. {fix}"
        )
    lr = float(lr)
    if not math.isfinite(lr) or lr < 0:
        what = "negative" if lr < 0 else "not finite"
        raise ValueError(
            f"the learning rate for checkpoint {path!r} is {lr} ({what}): TracIn needs a finite learning rate "
            f">= 0 (0 makes that checkpoint contribute nothing). {fix}"
        )
    return lr


def _short(obj: Any) -> str:
    r = repr(obj)
    return r if len(r) <= 60 else r[:57] + "..."


def call_load_func(
    load_func: Callable, model: nn.Module, path: str, is_default: bool, folder: str | None = None
) -> float:
    """Run a checkpoints_load_func and validate what it returns. ``folder``: the checkpoints folder the file
    was found in (its every file is read), named in the error with the way out."""
    hint = (
        f" Every non-hidden file of the checkpoints folder {folder!r} is read as a checkpoint (as Captum does): "
        "remove that file from it, or pass a list of checkpoint paths."
        if folder is not None
        else ""
    )
    try:
        lr = load_func(model, path)
    except Exception as e:
        if is_default and isinstance(e, ValueError):  # load_checkpoint's message names the file and the fix
            if not hint:
                raise
            raise ValueError(f"{e}{hint}") from e
        who = "loading" if is_default else "checkpoints_load_func"
        raise ValueError(f"{who} failed on checkpoint {path!r}: {type(e).__name__}: {e}{hint}") from e
    return check_lr(lr, path, is_default)
