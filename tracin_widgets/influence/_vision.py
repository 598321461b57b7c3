"""Vectorised reading of torchvision's CIFAR datasets (the tutorial's training data).

``CIFAR10.__getitem__`` builds a PIL image per example and runs the transform on it: about 100-200 us per
image, which is most of a cold pass (50k images: ~5-10 CPU-seconds, more than the model's forwards on a GPU).
When the dataset is exactly ``torchvision.datasets.CIFAR10``/``CIFAR100`` (optionally inside ``Subset``\\ s),
its ``transform`` is ``ToTensor()`` optionally followed by ``Normalize``\\ s and there is no
``target_transform``, the same arithmetic runs on whole blocks of the ``uint8`` array instead: ToTensor's
``float(x) / 255`` and each Normalize's own ``forward`` (which accepts batches). The rows are bit-identical
to ``__getitem__``'s; this is checked on a few examples before the first use, and any mismatch (or any other
transform, subclass or target transform) keeps the per-item path.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Subset


class VectorisedImages:
    """Blocks ``(x, y)`` of a recognised dataset, computed from its arrays on ``device``."""

    def __init__(
        self, data: np.ndarray, targets: np.ndarray, index: np.ndarray | None, normalizers: list, dataset: Any
    ) -> None:
        self.data, self.targets, self.index, self.normalizers, self.dataset = data, targets, index, normalizers, dataset
        self.n = len(index) if index is not None else len(data)

    def block(self, s: int, e: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        sel = self.index[s:e] if self.index is not None else slice(s, e)
        u8 = torch.from_numpy(np.ascontiguousarray(self.data[sel]))
        y = torch.from_numpy(np.ascontiguousarray(self.targets[sel]))
        if device.type == "cuda":  # copy the 4x smaller uint8 rows (pinned: asynchronous, full speed)
            u8 = u8.pin_memory().to(device, non_blocking=True)
            y = y.pin_memory().to(device, non_blocking=True)
        elif device.type != "cpu":
            u8, y = u8.to(device), y.to(device)
        # ToTensor: HWC -> CHW, then float / 255 (torch's default float dtype)
        x = u8.permute(0, 3, 1, 2).contiguous().to(dtype=torch.get_default_dtype()).div(255)
        for t in self.normalizers:
            x = t(x)
        return x, y

    def batches(
        self, rows: int, device: torch.device, start: int = 0, stop: int | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Blocks of ``rows`` rows of rows ``start:stop`` (default all)."""
        n = self.n if stop is None else stop
        for s in range(start, n, rows):
            yield self.block(s, min(s + rows, n), device)

    def verified(self) -> bool:
        """The vectorised rows equal ``dataset[i]`` exactly for a spread of examples."""
        for i in sorted({0, self.n // 2, self.n - 1}):
            x, y = self.block(i, i + 1, torch.device("cpu"))
            item = self.dataset[i]
            if not (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], torch.Tensor)):
                return False
            if item[0].dtype != x.dtype or not torch.equal(item[0], x[0]) or int(item[1]) != int(y[0]):
                return False
        return True


def vectorised_source(dataset: Any) -> VectorisedImages | None:
    """A ``VectorisedImages`` for ``dataset`` when it qualifies (see the module docstring), else None."""
    index = None
    ds = dataset
    while isinstance(ds, Subset):
        sub = np.asarray(ds.indices, dtype=np.int64)
        index = sub if index is None else sub[index]
        ds = ds.dataset
    if not type(ds).__module__.startswith("torchvision.datasets"):
        return None
    try:
        import torchvision.transforms as T
        from torchvision.datasets import CIFAR10, CIFAR100
    except ImportError:  # pragma: no cover - torchvision is a dependency
        return None
    if type(ds) not in (CIFAR10, CIFAR100) or getattr(ds, "target_transform", None) is not None:
        return None
    data, targets = getattr(ds, "data", None), getattr(ds, "targets", None)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 4 or targets is None:
        return None
    tf = ds.transform
    steps = list(tf.transforms) if type(tf) is T.Compose else [tf]
    if not steps or type(steps[0]) is not T.ToTensor or not all(type(t) is T.Normalize for t in steps[1:]):
        return None
    targets = np.asarray(targets)
    if targets.ndim != 1 or len(targets) != len(data) or not np.issubdtype(targets.dtype, np.integer):
        return None
    if index is not None and len(index) and (index.min() < -len(data) or index.max() >= len(data)):
        return None
    src = VectorisedImages(data, targets.astype(np.int64), index, steps[1:], dataset)
    if src.n == 0 or not src.verified():
        return None
    return src
