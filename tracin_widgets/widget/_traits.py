"""The explorer's argument checks and trait types: what the constructor and the page may set, and the messages that
say what was wrong."""

from __future__ import annotations

import difflib
import operator
from collections.abc import Callable, Sequence
from typing import Any

import traitlets as t

ARGS = (
    "model",
    "checkpoints",
    "train_dataset",
    "test_dataset",
    "checkpoints_load_func",
    "final_fc_layer",
    "loss_fn",
    "engine",
    "class_names",
    "k",
    "is_mislabelled",
    "flags_path",
    "to_image",
    "batch_size",
    "device",
    "test_indices",
    "cache_dir",
    "view",
    "review_path",
)
"""The constructor's arguments (in order), offered when an unknown keyword is passed."""
ALIASES = {
    "topk": "k",
    "top_k": "k",
    "n": "k",
    "layer": "final_fc_layer",
    "layers": "final_fc_layer",
    "loss": "loss_fn",
    "tracer": "engine",
    "influence": "engine",
    "classes": "class_names",
    "labels": "class_names",
    "mislabelled": "is_mislabelled",
    "is_mislabeled": "is_mislabelled",
    "cache": "cache_dir",
    "cache_path": "cache_dir",
    "tab": "view",
    "initial_view": "view",
    "review": "review_path",
    "review_file": "review_path",
}
"""Likely names for the constructor's arguments (Captum's, other libraries'), mapped to ours."""


def suggest(name: str) -> str | None:
    """The argument an unknown keyword ``name`` probably meant, or None."""
    if name in ALIASES:
        return ALIASES[name]
    m = difflib.get_close_matches(name, ARGS, 1, cutoff=0.6)
    return m[0] if m else None


def unexpected_kwargs_error(kwargs: dict) -> TypeError:
    hints = [f"{b!r} (did you mean {m!r}?)" if (m := suggest(b)) else repr(b) for b in sorted(kwargs)]
    return TypeError(
        f"InfluenceExplorer() got unexpected keyword argument(s) {', '.join(hints)}. "
        f"Valid arguments: {', '.join(ARGS)}."
    )


def check_arguments(
    kwargs: dict,
    train_dataset: Any,
    test_dataset: Any,
    k: Any,
    class_names: Sequence[str] | None,
    batch_size: Any,
    to_image: Callable[[Any], Any] | None,
) -> list[str] | None:
    """Refuse the constructor's arguments that cannot work, before anything is computed; returns ``class_names`` as a
    list of str."""
    if kwargs:
        raise unexpected_kwargs_error(kwargs)
    if train_dataset is None:
        raise TypeError("InfluenceExplorer() needs train_dataset (a map-style dataset of (features, label) items).")
    for name, ds in (("train_dataset", train_dataset), ("test_dataset", test_dataset)):
        if ds is not None and not (hasattr(ds, "__len__") and hasattr(ds, "__getitem__")):
            raise TypeError(
                f"{name} must be a map-style dataset (with __len__ and __getitem__), got {type(ds).__name__}."
            )
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(k_error(k))
    if class_names is not None:
        if isinstance(class_names, (str, bytes)):
            raise TypeError(single_string_error(class_names))
        if not hasattr(class_names, "__iter__"):
            raise TypeError(
                f"class_names must be a list with one name per class, got {type(class_names).__name__}: pass a "
                "list, e.g. ['cat', 'dog']."
            )
        class_names = [str(c) for c in class_names]
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}.")
    if to_image is not None and not callable(to_image):
        raise TypeError("to_image must be a callable (tensor -> HxWxC uint8 or float image in [0, 1]).")
    return class_names


VIEWS = ("test", "ranking")
"""The explorer's tabs: the test predictions with their galleries, and the self-influence ranking."""


def view_error(value: Any) -> str:
    return (
        f'view must be one of {", ".join(map(repr, VIEWS))}, got {type(value).__name__} {value!r}: "test" opens on '
        'the test predictions, "ranking" on the self-influence ranking of the training set.'
    )


def check_view(view: Any, n_test: int) -> str:
    """The first tab: ``view`` checked, or its default (``"test"`` with a test set, else ``"ranking"``)."""
    if view is None:
        return "test" if n_test else "ranking"
    if not isinstance(view, str) or view not in VIEWS:
        raise ValueError(view_error(view))
    if view == "test" and not n_test:
        raise ValueError(
            'view="test" needs test examples, but there is no test_dataset (or test_indices is empty): pass a '
            'test_dataset, or leave view out (without a test set the explorer opens on the "ranking").'
        )
    return view


def k_error(value: Any) -> str:
    return (
        f"k must be a positive int, got {type(value).__name__} {value!r}: set k to the number of proponents and of "
        "opponents to show (1 or more)."
    )


def single_string_error(value: Any) -> str:
    return (
        f"class_names must be a list with one name per class, got the single string {value!r}: pass a list, "
        "e.g. ['cat', 'dog']."
    )


def names(n: int) -> str:
    return f"{n} name" if n == 1 else f"{n} names"


class IndexList(t.List):
    """``List(Int)`` that also takes numpy / torch integers and any iterable of them (e.g. ``np.flatnonzero(mask)``)."""

    def validate(self, obj, value):
        if value is not None and not isinstance(value, (list, str, bytes, dict)) and hasattr(value, "__iter__"):
            value = list(value.tolist() if hasattr(value, "tolist") else value)
        if isinstance(value, list):
            value = [int(v) if hasattr(v, "__index__") and not isinstance(v, bool) else v for v in value]
            bad = [(i, v) for i, v in enumerate(value) if not isinstance(v, int) or isinstance(v, bool)][:1]
            if bad:
                i, v = bad[0]
                raise t.TraitError(
                    f"{self.name} must be a list of training indices (ints), got {type(v).__name__} {v!r} at position "
                    f"{i}: give each example by its integer index."
                )
        return super().validate(obj, value)


class PositiveInt(t.Int):
    """``Int`` of at least 1 that also takes numpy / torch integers; bools and floats are refused."""

    def validate(self, obj, value):
        if hasattr(value, "__index__") and not isinstance(value, (bool, int)):
            try:
                value = operator.index(value)  # numpy / torch integers; a float tensor raises, never truncates
            except TypeError:
                pass
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise t.TraitError(k_error(value))
        return value


class ClassNames(t.List):
    """``List(Unicode)`` that refuses a single string (which a list() would split into letters, and traitlets'
    ``List.set`` would silently wrap)."""

    def set(self, obj, value):
        if isinstance(value, (str, bytes)):
            raise t.TraitError(single_string_error(value))
        super().set(obj, value)

    def validate(self, obj, value):
        if isinstance(value, (str, bytes)):
            raise t.TraitError(single_string_error(value))
        return super().validate(obj, value)


class View(t.Unicode):
    """``Unicode`` limited to :data:`VIEWS`, with a message that names ``view`` and its choices."""

    def validate(self, obj, value):
        if not isinstance(value, str) or value not in VIEWS:
            raise t.TraitError(view_error(value))
        return value
