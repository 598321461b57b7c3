"""Datasets of the tutorial: CIFAR-10 (as in Captum's tutorial) or the offline scikit-learn digits."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

__all__ = [
    "CIFAR10_CLASSES",
    "DIGITS_CLASSES",
    "DIGITS_IMAGE_SIZE",
    "DatasetUnavailableError",
    "DigitsDataset",
    "Transforms",
    "get_transforms",
    "load_datasets",
]

CIFAR10_CLASSES = ("plane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
DIGITS_CLASSES = tuple(str(d) for d in range(10))
#: The 8x8 digits are upsampled (nearest neighbour, each pixel -> a 4x4 block) to the CIFAR size, so that the
#: tutorial's Net is used unchanged apart from in_channels=1.
DIGITS_IMAGE_SIZE = 32
DIGITS_TEST_SIZE = 0.2
DIGITS_SPLIT_SEED = 0
DATASETS = ("digits", "cifar10")


class DatasetUnavailableError(RuntimeError):
    """The requested dataset can neither be found locally nor downloaded."""


class Transforms(NamedTuple):
    """``normalize`` maps a raw image to the network input, ``inverse_normalize`` maps an input back to [0, 1]."""

    normalize: Callable
    inverse_normalize: Callable
    in_channels: int
    image_size: int


def _check_name(name: str) -> str:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset name {name!r}; use one of {', '.join(map(repr, DATASETS))}")
    return name


class _DigitsNormalize:
    """8x8 array with values 0..16 -> 1x32x32 tensor in [-1, 1] (nearest upsampling, then Normalize(0.5, 0.5))."""

    def __call__(self, image) -> torch.Tensor:
        x = torch.as_tensor(np.asarray(image, dtype=np.float32)) / 16.0
        if x.ndim == 2:
            x = x.unsqueeze(0)
        x = F.interpolate(x.unsqueeze(0), size=(DIGITS_IMAGE_SIZE, DIGITS_IMAGE_SIZE), mode="nearest")[0]
        return (x - 0.5) / 0.5

    def __repr__(self) -> str:
        return f"DigitsNormalize(8x8 /16 -> nearest {DIGITS_IMAGE_SIZE}x{DIGITS_IMAGE_SIZE} -> Normalize(0.5, 0.5))"


def get_transforms(name: str) -> Transforms:
    """The tutorial's ``normalize`` / ``inverse_normalize`` pair for ``"cifar10"`` or ``"digits"``.

    CIFAR-10: ``Compose([ToTensor(), Normalize((0.5,)*3, (0.5,)*3)])`` and its inverse, verbatim from the tutorial.
    Digits: scale 0..16 to [0, 1], upsample 8x8 -> 32x32 (nearest), ``Normalize((0.5,), (0.5,))``; the inverse is
    the same two ``Normalize`` steps as the tutorial's, with one channel.
    """
    import torchvision.transforms as transforms

    _check_name(name)
    if name == "cifar10":
        normalize = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))])
        inverse_normalize = transforms.Compose(
            [
                transforms.Normalize(mean=[0.0, 0.0, 0.0], std=[1 / 0.5, 1 / 0.5, 1 / 0.5]),
                transforms.Normalize(mean=[-0.5, -0.5, -0.5], std=[1.0, 1.0, 1.0]),
            ]
        )
        return Transforms(normalize, inverse_normalize, 3, 32)
    inverse_normalize = transforms.Compose(
        [
            transforms.Normalize(mean=[0.0], std=[1 / 0.5]),
            transforms.Normalize(mean=[-0.5], std=[1.0]),
        ]
    )
    return Transforms(_DigitsNormalize(), inverse_normalize, 1, DIGITS_IMAGE_SIZE)


class DigitsDataset(Dataset):
    """scikit-learn's 8x8 digits as a map-style dataset returning ``(transform(image), int label)``, like CIFAR10.

    The transform is applied once, up front (1,797 small images), so indexing is cheap.
    """

    def __init__(
        self,
        images: np.ndarray,
        targets: np.ndarray,
        transform: Callable | None = None,
        indices: np.ndarray | None = None,
    ):
        self.images = np.asarray(images, dtype=np.float32)
        self.targets = [int(t) for t in targets]
        self.indices = None if indices is None else np.asarray(indices)  # positions in load_digits()
        self.transform = transform
        if transform is None:
            self.data = torch.as_tensor(self.images).unsqueeze(1)
        else:
            self.data = torch.stack([transform(img) for img in self.images]) if len(self.images) else torch.empty(0)

    def __getitem__(self, i: int):
        return self.data[i], self.targets[i]

    def __len__(self) -> int:
        return len(self.targets)


def _load_digits(transform) -> tuple[DigitsDataset, DigitsDataset]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    positions = np.arange(len(digits.target))
    train_idx, test_idx = train_test_split(
        positions, test_size=DIGITS_TEST_SIZE, random_state=DIGITS_SPLIT_SEED, stratify=digits.target
    )
    train = DigitsDataset(digits.images[train_idx], digits.target[train_idx], transform, train_idx)
    test = DigitsDataset(digits.images[test_idx], digits.target[test_idx], transform, test_idx)
    return train, test


def _load_cifar10(root: str, transform):
    import torchvision

    path = os.path.join(root, "cifar_10")
    try:
        train = torchvision.datasets.CIFAR10(root=path, train=True, download=True, transform=transform)
        test = torchvision.datasets.CIFAR10(root=path, train=False, download=True, transform=transform)
    except (OSError, RuntimeError, ValueError) as exc:  # URLError/HTTPError/socket errors are OSErrors
        reason = f"{type(exc).__name__}: {exc}".strip()
        raise DatasetUnavailableError(
            f"CIFAR-10 is not available: it is not in {path!r} and could not be downloaded ({reason}). "
            'This machine probably has no network access. Set DATASET = "digits" in the parameter cell to run '
            "the tutorial offline, or put cifar-10-python.tar.gz (or the extracted cifar-10-batches-py folder) "
            f"into {path!r}."
        ) from None
    return train, test


def load_datasets(name: str = "digits", root: str | os.PathLike = "data"):
    """Return ``(train_dataset, test_dataset, class_names)`` for ``"digits"`` or ``"cifar10"``.

    - ``"digits"``: scikit-learn's ``load_digits`` (shipped with scikit-learn, no network), split 80/20 with a
      fixed seed and stratified by class (1,437 train / 360 test), transformed by ``get_transforms("digits")``.
      ``root`` is not used.
    - ``"cifar10"``: ``torchvision.datasets.CIFAR10(root=<root>/cifar_10, download=True)`` for both splits, as in
      the tutorial. If the data is neither present nor downloadable, raises :class:`DatasetUnavailableError`
      (one error saying what to do, not a chain of download tracebacks).
    """
    _check_name(name)
    normalize = get_transforms(name).normalize
    if name == "digits":
        train, test = _load_digits(normalize)
        return train, test, DIGITS_CLASSES
    train, test = _load_cifar10(os.fspath(root), normalize)
    return train, test, CIFAR10_CLASSES
