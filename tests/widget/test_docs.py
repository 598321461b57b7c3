"""The explorer documents itself where ``help()`` shows it: an ``Args:`` entry for every constructor argument (in the
constructor's order, the same list the unknown-keyword hint offers) and an ``Examples:`` section."""

from __future__ import annotations

import inspect
import pydoc
import re

import pytest

from tracin_widgets.widget import InfluenceExplorer
from tracin_widgets.widget._traits import ARGS


def _params(cls: type) -> list[str]:
    return [
        p.name
        for p in inspect.signature(cls.__init__).parameters.values()
        if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]


def _section(doc: str, title: str) -> str:
    match = re.search(rf"^\s*{title}:\n(.*?)(?=^\s*(?:Args|Returns|Raises|Examples):|\Z)", doc, re.S | re.M)
    assert match, f"no {title}: section"
    return match.group(1)


def documented(cls: type) -> list[str]:
    """The names with an ``Args:`` entry in ``cls``'s own docstring, in order."""
    doc = inspect.cleandoc(cls.__dict__.get("__doc__") or "")
    return re.findall(r"^ {4}(\w+): \S", _section(doc, "Args"), re.M)


def check_documents_every_argument(cls: type) -> None:
    missing = [n for n in _params(cls) if n not in documented(cls)]
    assert missing == [], f"{cls.__name__}'s docstring has no Args: entry for {missing}"


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pydoc reads ipywidgets' deprecated class attributes
def test_every_constructor_argument_is_documented_in_order():
    check_documents_every_argument(InfluenceExplorer)
    assert documented(InfluenceExplorer) == _params(InfluenceExplorer) == list(ARGS)
    assert len(ARGS) == 19
    shown = pydoc.render_doc(InfluenceExplorer, renderer=pydoc.plaintext)  # what help(InfluenceExplorer) prints
    assert all(f"{n}: " in shown for n in ARGS)


def test_the_docstring_has_an_examples_section_that_builds_an_explorer():
    examples = _section(InfluenceExplorer.__doc__ or "", "Examples")
    assert ">>> explorer = InfluenceExplorer(" in examples and "wait()" in examples and "save_html" in examples


def test_the_docs_check_fails_for_an_undocumented_argument():
    class Undocumented(InfluenceExplorer):
        """Like InfluenceExplorer.

        Args:
            model: the model.
        """

        def __init__(self, model, extra=None):  # pragma: no cover - never constructed
            pass

    with pytest.raises(AssertionError, match=r"no Args: entry for \['extra'\]"):
        check_documents_every_argument(Undocumented)
