"""Matplotlib helpers of the tutorial; every helper returns its figure(s)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

__all__ = ["display_proponents_and_opponents", "display_test_example", "display_training_examples", "imshow_transform"]


def imshow_transform(tensor_in_dataset: torch.Tensor, inverse_normalize: Callable) -> np.ndarray:
    """Dataset tensor (C, H, W) -> array for ``imshow``: ``inverse_normalize``, clip to [0, 1], HWC (HW if C == 1)."""
    x = torch.as_tensor(tensor_in_dataset).detach().cpu().float()
    if x.ndim == 4 and x.shape[0] == 1:
        x = x[0]
    if x.ndim == 2:
        x = x.unsqueeze(0)
    image = torch.clip(inverse_normalize(x), 0, 1).permute(1, 2, 0).numpy()
    return image[:, :, 0] if image.shape[2] == 1 else image


def _show(ax, tensor, inverse_normalize, title=None):
    image = imshow_transform(tensor, inverse_normalize)
    ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=1)
    ax.set_xticks([])
    ax.set_yticks([])
    if title is not None:
        ax.set_title(title, fontsize=9)


def _as_int(x) -> int:
    return int(x.item()) if isinstance(x, torch.Tensor) else int(x)


def _as_float(x) -> float:
    return float(x.item()) if isinstance(x, torch.Tensor) else float(x)


def display_test_example(
    example,
    true_label,
    predicted_label,
    predicted_prob,
    label_to_class: Sequence[str],
    inverse_normalize: Callable,
    *,
    verbose: bool = True,
):
    """One test example with its true / predicted class and probability (printed, as in the tutorial, and in the
    title). Returns the figure (one axis)."""
    import matplotlib.pyplot as plt

    true_label, predicted_label = _as_int(true_label), _as_int(predicted_label)
    prob = _as_float(predicted_prob)
    if verbose:
        print("true_class:", label_to_class[true_label])
        print("predicted_class:", label_to_class[predicted_label])
        print("predicted_prob", round(prob, 4))
    fig, ax = plt.subplots(figsize=(2.5, 2.5))
    _show(
        ax,
        example,
        inverse_normalize,
        f"true: {label_to_class[true_label]}\npred: {label_to_class[predicted_label]} ({prob:.2f})",
    )
    return fig


def display_training_examples(
    examples,
    true_labels,
    label_to_class: Sequence[str],
    inverse_normalize: Callable,
    figsize=(10, 4),
    *,
    scores=None,
    indices=None,
    title: str | None = None,
):
    """A row of training examples titled with their labels (and influence scores / dataset indices if given).
    Returns the figure (one axis per example)."""
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=figsize)
    _fill_row(fig, examples, true_labels, label_to_class, inverse_normalize, scores=scores, indices=indices)
    if title:
        fig.suptitle(title)
    return fig


def _fill_row(fig, examples, labels, label_to_class, inverse_normalize, *, scores=None, indices=None):
    num_examples = len(examples)
    for i in range(num_examples):
        ax = fig.add_subplot(1, num_examples, i + 1)
        parts = [label_to_class[_as_int(labels[i])]]
        if indices is not None:
            parts.append(f"#{_as_int(indices[i])}")
        if scores is not None:
            parts.append(f"{_as_float(scores[i]):.3g}")
        _show(ax, examples[i], inverse_normalize, "\n".join(parts))


def display_proponents_and_opponents(
    test_examples_batch,
    proponents_indices,
    opponents_indices,
    test_examples_true_labels,
    test_examples_predicted_labels,
    test_examples_predicted_probs,
    *,
    train_dataset,
    label_to_class: Sequence[str],
    inverse_normalize: Callable,
    proponents_scores=None,
    opponents_scores=None,
    figsize=None,
):
    """For each test example, one figure: the test example on top, its proponents (most positive influence first)
    in the middle row and its opponents (most negative first) in the bottom row, each titled with its training
    label, index and influence score. Returns the list of figures (each with ``1 + 2 k`` axes)."""
    import matplotlib.pyplot as plt

    figures = []
    for n, (test_example, props, opps, true_label, pred_label, pred_prob) in enumerate(
        zip(
            test_examples_batch,
            proponents_indices,
            opponents_indices,
            test_examples_true_labels,
            test_examples_predicted_labels,
            test_examples_predicted_probs,
            strict=False,
        )
    ):
        props = [_as_int(i) for i in props]
        opps = [_as_int(i) for i in opps]
        k = max(len(props), len(opps), 1)
        fig = plt.figure(figsize=figsize or (1.6 * max(k, 4), 7.0), layout="constrained")
        # matplotlib's stubs type subfigures() as SubFigure | ndarray; 3 rows give an array of 3
        top, middle, bottom = fig.subfigures(3, 1, height_ratios=[1.15, 1, 1])  # type: ignore[misc]
        ax = top.subplots(1, 1)
        true_label, pred_label, prob = _as_int(true_label), _as_int(pred_label), _as_float(pred_prob)
        _show(ax, test_example, inverse_normalize)
        top.suptitle(
            f"test example {n}: true {label_to_class[true_label]}, "
            f"predicted {label_to_class[pred_label]} (p={prob:.2f})",
            fontsize=11,
        )
        for sub, idx, scores, name in (
            (middle, props, proponents_scores, "proponents"),
            (bottom, opps, opponents_scores, "opponents"),
        ):
            if not idx:
                continue
            tensors, labels = zip(*[train_dataset[i] for i in idx], strict=False)
            row_scores = None if scores is None else scores[n]
            _fill_row(sub, tensors, labels, label_to_class, inverse_normalize, scores=row_scores, indices=idx)
            sub.suptitle(name, fontsize=10)
        figures.append(fig)
    return figures
