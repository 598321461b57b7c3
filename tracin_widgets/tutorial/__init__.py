"""Reusable pieces of Captum's TracInCP tutorial (``notebooks/tutorial.ipynb``).

Torch/torchvision/scikit-learn/matplotlib only; no widget libraries are imported.
"""

from .data import (
    CIFAR10_CLASSES,
    DIGITS_CLASSES,
    DatasetUnavailableError,
    DigitsDataset,
    Transforms,
    get_transforms,
    load_datasets,
)
from .display import (
    display_proponents_and_opponents,
    display_test_example,
    display_training_examples,
    imshow_transform,
)
from .mislabel import MislabelledDataset, MislabelledLabels, make_mislabelled_labels, most_probable_incorrect_labels
from .model import Net
from .training import TrainingHistory, checkpoint_path, checkpoints_load_func, evaluate, train

__all__ = [
    "CIFAR10_CLASSES",
    "DIGITS_CLASSES",
    "DatasetUnavailableError",
    "DigitsDataset",
    "MislabelledDataset",
    "MislabelledLabels",
    "Net",
    "TrainingHistory",
    "Transforms",
    "checkpoint_path",
    "checkpoints_load_func",
    "display_proponents_and_opponents",
    "display_test_example",
    "display_training_examples",
    "evaluate",
    "get_transforms",
    "imshow_transform",
    "load_datasets",
    "make_mislabelled_labels",
    "most_probable_incorrect_labels",
    "train",
]
