"""The public API documents itself where ``help()`` shows it: each class's docstring has an ``Args:`` entry for
every constructor argument, and each public method's docstring names its arguments and what it returns."""

from __future__ import annotations

import inspect
import pydoc
import re

import pytest

from tracin_widgets.influence import TracInCP, TracInCPFast, TracInCPFastRandProj

CLASSES = [TracInCP, TracInCPFast, TracInCPFastRandProj]
METHODS = [
    "influence",
    "self_influence",
    "fit",
    "compute_intermediate_quantities",
    "get_name",
    "influence_by_checkpoint",
    "learning_rates",
]


def _params(fn) -> list[str]:
    return [
        p.name
        for p in inspect.signature(fn).parameters.values()
        if p.name not in ("self", "cls") and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]


def _args_section(doc: str) -> str:
    match = re.search(r"^\s*Args:\n(.*?)(?:^\s*(?:Returns|Raises):|\Z)", doc, re.S | re.M)
    assert match, "no Args: section"
    return match.group(1)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_class_docstring_documents_every_constructor_argument(cls):
    own = cls.__dict__.get("__doc__") or ""
    args = _args_section(own)
    missing = [n for n in _params(cls.__init__) if not re.search(rf"^\s+{n}: \S", args, re.M)]
    assert missing == [], f"{cls.__name__}'s docstring has no Args: entry for {missing}"
    shown = pydoc.render_doc(cls, renderer=pydoc.plaintext)  # what help(cls) prints
    assert all(f"{n}: " in shown for n in _params(cls.__init__))


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
@pytest.mark.parametrize("name", METHODS)
def test_public_methods_document_arguments_and_results(cls, name):
    method = getattr(cls, name, None)
    if method is None:
        pytest.skip(f"{cls.__name__} has no {name} (as in Captum)")
    doc = inspect.getdoc(method) or ""
    params = _params(method)
    if len(params) > 1:  # a proper Args: section with one entry per argument
        args = _args_section(doc)
        missing = [n for n in params if not re.search(rf"^\s+{n}: \S", args, re.M)]
    else:
        missing = [n for n in params if not re.search(rf"\b{n}\b", doc)]
    assert missing == [], f"{cls.__name__}.{name}'s docstring does not document {missing}"
    assert re.search(r"Returns|returns|Return", doc), f"{cls.__name__}.{name}'s docstring says nothing of its result"


def test_the_docs_check_fails_for_an_undocumented_argument():
    # the checks above are not vacuous: an argument without an Args: entry is found
    class Undocumented(TracInCPFast):
        """Like TracInCPFast.

        Args:
            model: the model.
        """

        def __init__(self, model, extra=None):  # pragma: no cover - never constructed
            pass

    with pytest.raises(AssertionError, match=r"no Args: entry for \['extra'\]"):
        test_class_docstring_documents_every_constructor_argument(Undocumented)
