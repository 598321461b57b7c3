"""The public API documents itself where ``help()`` shows it: each class's docstring has an ``Args:`` entry for
every constructor argument and an ``Examples:`` section, each public method's docstring names its arguments and what
it returns, and no docstring of the public API points at a file of the repository (they are not in the wheel).
The engine's ``Args:`` sections are built from ``influence/_argdocs.py``; the documentation site, which reads the
source without importing it, builds the same text (``docs/griffe_argdocs.py``)."""

from __future__ import annotations

import inspect
import pydoc
import re
import types
from pathlib import Path

import pytest

import tracin_widgets
import tracin_widgets.influence
import tracin_widgets.widget
from tracin_widgets.influence import TracInCP, TracInCPFast, TracInCPFastRandProj, _argdocs

REPO = Path(__file__).resolve().parents[2]

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
    match = re.search(r"^\s*Args:\n(.*?)(?:^\s*(?:Returns|Raises|Examples):|\Z)", doc, re.S | re.M)
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


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_class_docstring_has_examples_after_its_arguments(cls):
    doc = inspect.getdoc(cls) or ""
    assert re.search(r"^Args:\n(?:.|\n)*^Examples:\n(?:.|\n)*^\s+>>> ", doc, re.M), (
        f"{cls.__name__} has no Examples: section"
    )


def test_an_argument_without_a_paragraph_is_an_error_at_import():
    class Extra:
        """An engine class."""

        def __init__(self, model, not_documented_anywhere=None):  # pragma: no cover - never constructed
            pass

    with pytest.raises(LookupError, match=r"Extra.__init__ takes 'not_documented_anywhere', which has no paragraph"):
        _argdocs.document(Extra)
    with pytest.raises(ValueError, match=r"Extra's own docstring has an Args: section: _argdocs builds it"):
        _argdocs.build("Extra", "Intro.\n\nArgs:\n    model: the model.", ["model"])


def test_a_class_paragraph_replaces_the_shared_one():
    assert _argdocs.paragraph("TracInCP", "cache_dir").startswith("a folder where the training set's self-influence")
    assert _argdocs.paragraph("TracInCPFast", "cache_dir").startswith("a folder where the training-set factors")
    assert "cache_dir: a folder where the training set's self-influence" in " ".join(TracInCP.__doc__.split())


# a file or folder of the repository: a top-level folder, a module file, a README and the like
_REPO_PATH = re.compile(
    r"(?<![\w./])(?:benchmarks|tests|docs|notebooks|js|\.ci|tracin_widgets)/"
    r"|\b(?:influence|widget|tutorial)/"
    r"|\b\w+\.(?:py|md|ipynb|toml|mjs)\b"
    r"|\b(?:README|CONTRIBUTING|RESULTS)\b"
)


def _public_docstrings() -> dict[str, str]:
    """Every docstring ``help()`` shows for the public names: the packages, their ``__all__`` and their members."""
    docs: dict[str, str] = {}
    for module in (tracin_widgets, tracin_widgets.influence, tracin_widgets.widget):
        docs[module.__name__] = inspect.getdoc(module) or ""
        for name in module.__all__:
            obj = getattr(module, name)
            if not isinstance(obj, (type, types.FunctionType)):
                continue
            docs[f"{module.__name__}.{name}"] = inspect.getdoc(obj) or ""
            for klass in obj.__mro__ if isinstance(obj, type) else ():  # its own and inherited members ...
                if not klass.__module__.startswith("tracin_widgets"):  # ... that this package defines
                    continue
                for member, value in vars(klass).items():
                    if member.startswith("_") and member != "__init__":
                        continue
                    value = value.fget if isinstance(value, property) else getattr(value, "__func__", value)
                    if callable(value) and getattr(value, "__doc__", None):
                        docs.setdefault(f"{module.__name__}.{name}.{member}", inspect.getdoc(value) or "")
    return docs


def _repository_paths(docs: dict[str, str]) -> list[str]:
    return [
        f"{where}: {line.strip()}"
        for where, doc in docs.items()
        for line in doc.splitlines()
        if _REPO_PATH.search(line)
    ]


def test_no_public_docstring_names_a_repository_path():
    docs = _public_docstrings()
    assert {"tracin_widgets.influence.TracInCPFast.influence", "tracin_widgets.widget.InfluenceExplorer"} <= set(docs)
    assert _repository_paths(docs) == []


@pytest.mark.parametrize(
    "line",
    [
        "see ``benchmarks/probes/factor_dtype.py``",
        "a store (see ``influence/_store.py``)",
        "as the README says",
        "the tests in tests/engine",
        "documented in docs/engine.md",
    ],
)
def test_the_repository_path_check_finds_one(line):
    assert _repository_paths({"fake": f"A docstring.\n\n{line}."}) == [f"fake: {line}."]
    assert _repository_paths({"fake": "e.g. ``tracin_widgets.influence.Cancelled`` and a ``manifest.json``"}) == []


def test_the_site_builds_the_same_docstrings_as_import():
    griffe = pytest.importorskip("griffe")  # the docs extra; the site reads the source, never imports it
    extensions = griffe.load_extensions(f"{REPO / 'docs' / 'griffe_argdocs.py'}:ArgDocs")
    package = griffe.load("tracin_widgets", search_paths=[str(REPO)], extensions=extensions, resolve_aliases=False)
    for cls in CLASSES:
        seen = package[f"{cls.__module__.removeprefix('tracin_widgets.')}.{cls.__name__}"].docstring.value
        assert seen.strip() == inspect.getdoc(cls), f"the site shows another docstring of {cls.__name__}"
