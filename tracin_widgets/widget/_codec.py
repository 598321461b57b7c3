"""The one Python -> JS codec of the explorer: images, buffers, rows and badges; pure functions on numpy (torch
tensors are accepted duck-typed).

Nothing here imports anywidget, ipywidgets or torch. Images travel as ``{"data": bytes, "shape": [h, w, c]}``
(uint8, row-major HWC, c in {1, 3, 4}); inside traits ipywidgets ships the bytes as binary buffers, inside custom
messages :func:`pack_buffers` swaps them for ``{"buffer": i}`` references plus a buffer list.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ._protocols import ImageB64, ImageData, ImageRef, Row

THUMB_SIZE = 64  # longest side of gallery / table thumbnails (smaller images are sent as they are)
DETAIL_SIZE = 256  # longest side of the details view image


# ---------------------------------------------------------------------------------------------------------------------
# images
# ---------------------------------------------------------------------------------------------------------------------
def as_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # torch.Tensor, duck-typed
        return x.detach().cpu().float().numpy()
    return np.asarray(x)


def _is_torch(x: Any) -> bool:
    return hasattr(x, "detach") and hasattr(x, "dim")


def as_hwc(x: Any) -> np.ndarray:
    """A CHW / HW / HWC image (tensor or array, any float or int dtype) as a float HWC array.

    Torch tensors are read as CHW (torch's convention) unless only their last axis looks like channels;
    numpy arrays as HWC unless only their first axis does. A flat vector of a square length (e.g. sklearn's
    64-pixel digits) becomes a square grayscale image.
    """
    torch_like = _is_torch(x)
    a = as_numpy(x)
    if a.dtype == bool:
        a = a.astype(np.float32)
    a = np.squeeze(a) if a.ndim > 3 else a
    if a.ndim == 1:
        side = math.isqrt(a.size)
        if side * side == a.size and side > 0:
            a = a.reshape(side, side)
        else:
            a = a.reshape(1, -1)
    if a.ndim == 2:
        return a[:, :, None]
    if a.ndim != 3:
        raise ValueError(f"cannot turn an array of shape {a.shape} into an image; pass to_image=<tensor -> HxWxC>.")
    first, last = a.shape[0] in (1, 3, 4), a.shape[-1] in (1, 3, 4)
    chw = first and (torch_like or not last)
    if chw:
        a = np.moveaxis(a, 0, -1)
    return a


def minmax_image(x: Any) -> np.ndarray:
    """The default ``to_image``: per-image min-max scaling to uint8 HxWxC (works for normalised inputs)."""
    a = as_hwc(x).astype(np.float64)
    lo, hi = float(np.nanmin(a)) if a.size else 0.0, float(np.nanmax(a)) if a.size else 0.0
    if not np.isfinite(lo) or not np.isfinite(hi) or hi <= lo:
        scaled = np.zeros_like(a)
    else:
        scaled = (a - lo) / (hi - lo)
    return np.ascontiguousarray(np.clip(np.round(np.nan_to_num(scaled) * 255), 0, 255).astype(np.uint8))


def coerce_image(img: Any) -> np.ndarray:
    """Validate what a ``to_image`` hook returned: HxWxC/HxW, uint8 or float in [0, 1] -> uint8 HxWxC."""
    a = as_numpy(img)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[-1] not in (1, 3, 4):
        raise ValueError(f"to_image must return an HxWxC (C in 1, 3, 4) or HxW array, got shape {tuple(a.shape)}.")
    if a.dtype == np.uint8:
        return np.ascontiguousarray(a)
    if not np.issubdtype(a.dtype, np.number) and a.dtype != bool:
        raise ValueError(f"to_image must return uint8 or floats in [0, 1], got dtype {a.dtype}.")
    a = np.nan_to_num(a.astype(np.float64))
    return np.ascontiguousarray(np.clip(np.round(a * 255), 0, 255).astype(np.uint8))


def resize_max(img: np.ndarray, max_side: int) -> np.ndarray:
    """Shrink (never enlarge) a uint8 HxWxC image so that its longest side is at most ``max_side``.

    Integer factors use block means (good for photos); the remainder uses nearest sampling.
    """
    h, w = img.shape[:2]
    side = max(h, w)
    if side <= max_side:
        return img
    f = math.ceil(side / max_side)
    hh, ww = (h // f) * f, (w // f) * f
    if hh and ww:
        blocks = img[:hh, :ww].reshape(hh // f, f, ww // f, f, img.shape[2]).astype(np.float32)
        img = np.round(blocks.mean(axis=(1, 3))).astype(np.uint8)
    h, w = img.shape[:2]
    if max(h, w) > max_side:
        s = max_side / max(h, w)
        rows = np.minimum((np.arange(max(1, round(h * s))) / s).astype(int), h - 1)
        cols = np.minimum((np.arange(max(1, round(w * s))) / s).astype(int), w - 1)
        img = img[rows][:, cols]
    return np.ascontiguousarray(img)


def encode_image(x: Any, to_image: Callable[[Any], Any] | None = None, max_side: int = THUMB_SIZE) -> ImageData:
    """A dataset feature tensor -> ``{"data": bytes, "shape": [h, w, c]}`` (uint8 HWC, longest side <= max_side)."""
    img = coerce_image(to_image(x)) if to_image is not None else minmax_image(x)
    img = resize_max(img, max_side)
    return {"data": img.tobytes(), "shape": [int(s) for s in img.shape]}


def decode_image(payload: ImageData | ImageB64 | dict) -> np.ndarray:
    """Inverse of :func:`encode_image` and of :func:`as_base64`'s images (tests, debugging)."""
    p = dict(payload)
    data = base64.b64decode(p["b64"]) if "b64" in p else bytes(p["data"])
    return np.frombuffer(data, dtype=np.uint8).reshape(p["shape"])


def _map_images(obj: Any, image: Callable[[dict], dict]) -> Any:
    if isinstance(obj, dict):
        if "data" in obj and isinstance(obj["data"], (bytes, bytearray, memoryview)):
            return image(obj)
        return {k: _map_images(v, image) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_map_images(v, image) for v in obj]
    return obj


def as_base64(obj: Any) -> Any:
    """``obj`` with every ``{"data": bytes, "shape": ...}`` image as ``{"b64": str, "shape": ...}`` (the same bytes,
    standard padded base64): for notebook hosts that drop binary buffers."""

    def image(o: dict) -> dict:
        rest = {k: v for k, v in o.items() if k != "data"}
        return {**rest, "b64": base64.b64encode(bytes(o["data"])).decode("ascii")}

    return _map_images(obj, image)


def pack_buffers(obj: Any) -> tuple[Any, list[bytes]]:
    """Replace every ``{"data": bytes, "shape": ...}`` image inside ``obj`` by ``{"buffer": i, "shape": ...}``.

    For custom messages (``Widget.send(content, buffers)``), which do not extract nested buffers themselves.
    """
    buffers: list[bytes] = []

    def image(o: dict) -> dict:
        buffers.append(bytes(o["data"]))
        return {**{k: v for k, v in o.items() if k != "data"}, "buffer": len(buffers) - 1}

    return _map_images(obj, image), buffers


# ---------------------------------------------------------------------------------------------------------------------
# rows
# ---------------------------------------------------------------------------------------------------------------------
def _num(x: Any) -> float | None:
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def item_row(
    index: int,
    label: int | None,
    *,
    score: float | None = None,
    pred: int | None = None,
    prob: float | None = None,
    rank: int | None = None,
    image: ImageData | ImageRef | None = None,
    badge: str | None = None,
    suggested: int | None = None,
    new_label: int | None = None,
) -> Row:
    """One tile / table row (``_protocols.Row``). Keys are stable: the JS reads exactly these."""
    return {
        "index": int(index),
        "label": None if label is None else int(label),
        "pred": None if pred is None else int(pred),
        "prob": _num(prob),
        "score": _num(score),
        "rank": None if rank is None else int(rank),
        "badge": badge,
        "suggested": None if suggested is None else int(suggested),
        "new_label": None if new_label is None else int(new_label),
        "image": image,
    }


def class_label(c: int, names: Sequence[str] = ()) -> str:
    """Class ``c`` in words: ``8 (cat)`` with class names (just ``8`` when its name is ``"8"`` or it has none)."""
    name = names[c] if 0 <= c < len(names) else None
    return f"{c} ({name})" if name is not None and name != str(c) else str(c)


def topk_rows(
    indices: np.ndarray | Sequence[int],
    scores: np.ndarray | Sequence[float],
    labels: Callable[[int], int | None],
    *,
    image: Callable[[int], ImageData],
    rank: np.ndarray | None = None,
    preds: np.ndarray | None = None,
    review: Callable[[Row], Row] | None = None,
) -> list[Row]:
    """Gallery rows for one query from the engine's (indices, scores) of that query; ``review`` adds each training
    example's suggested label, badge and new label (``Examples.reviewed``)."""
    rows = []
    for i, s in zip(
        np.asarray(indices).reshape(-1).tolist(), np.asarray(scores, dtype=np.float64).reshape(-1), strict=False
    ):
        row = item_row(
            i,
            labels(i),
            score=s,
            pred=None if preds is None else int(preds[i]),
            rank=None if rank is None else int(rank[i]),
            image=image(i),
        )
        rows.append(review(row) if review is not None else row)
    return rows
