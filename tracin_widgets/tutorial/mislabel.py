"""Artificially mislabelled training data, as in the tutorial's second half."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch.utils.data import DataLoader, Dataset

__all__ = ["MislabelledDataset", "MislabelledLabels", "make_mislabelled_labels", "most_probable_incorrect_labels"]


class MislabelledLabels(NamedTuple):
    labels: torch.Tensor  # int64 (n,): the labels of the mislabelled dataset
    correct_labels: torch.Tensor  # int64 (n,): the original labels
    incorrect_labels: torch.Tensor  # int64 (n,): the correct model's most probable wrong class, for every example
    is_mislabelled: torch.Tensor  # bool (n,): labels != correct_labels (the ground truth for evaluation)


@torch.no_grad()
def most_probable_incorrect_labels(correct_dataset: Dataset, correct_net: torch.nn.Module, batch_size: int = 128):
    """For every example, the class ``correct_net`` finds most probable among the wrong ones.

    Returns ``(incorrect_labels, correct_labels)``, both int64 of length ``len(correct_dataset)``. The tutorial zeroes
    the true class's softmax probability and takes the argmax; we mask the true class's logit with ``-inf`` instead,
    which ranks the other classes identically but cannot pick the true class when all other probabilities underflow.
    """
    incorrect, correct = [], []
    param = next(correct_net.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    for batch_features, batch_correct_labels in DataLoader(correct_dataset, batch_size=batch_size, shuffle=False):
        batch_correct_labels = torch.as_tensor(batch_correct_labels).long()
        logits = correct_net(batch_features.to(device)).detach().float().cpu()
        logits[torch.arange(len(logits)), batch_correct_labels] = float("-inf")
        incorrect.append(torch.argmax(logits, dim=1))
        correct.append(batch_correct_labels)
    if not incorrect:
        empty = torch.empty(0, dtype=torch.long)
        return empty, empty.clone()
    return torch.cat(incorrect), torch.cat(correct)


def make_mislabelled_labels(
    correct_dataset: Dataset,
    correct_net: torch.nn.Module,
    proportion: float = 0.1,
    generator: torch.Generator | None = None,
    batch_size: int = 128,
) -> MislabelledLabels:
    """The tutorial's relabelling: each example is, with probability ``proportion`` (``torch.rand(n) < proportion``,
    drawn from ``generator``), relabelled to ``correct_net``'s most probable wrong class; others keep their label."""
    if not 0.0 <= proportion <= 1.0:
        raise ValueError(f"proportion must be in [0, 1], got {proportion}")
    incorrect_labels, correct_labels = most_probable_incorrect_labels(correct_dataset, correct_net, batch_size)
    use_incorrect = torch.rand(len(incorrect_labels), generator=generator) < proportion
    labels = torch.where(use_incorrect, incorrect_labels, correct_labels)
    return MislabelledLabels(labels, correct_labels, incorrect_labels, labels != correct_labels)


class MislabelledDataset(Dataset):
    """``correct_dataset``'s features with ``mislabelled_dataset_labels`` (the tutorial's class)."""

    def __init__(self, correct_dataset: Any, mislabelled_dataset_labels):  # a map-style Dataset with a length
        labels = torch.as_tensor(mislabelled_dataset_labels).long()
        if len(labels) != len(correct_dataset):
            raise ValueError(
                f"mislabelled_dataset_labels has {len(labels)} labels but correct_dataset has {len(correct_dataset)} "
                "examples; they must match"
            )
        self.correct_dataset, self.mislabelled_dataset_labels = correct_dataset, labels

    def __getitem__(self, i):
        return self.correct_dataset[i][0], int(self.mislabelled_dataset_labels[i])

    def __len__(self):
        return len(self.correct_dataset)
