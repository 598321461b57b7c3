"""A griffe extension (``mkdocs.yml`` loads it for the API pages; it is not a page): the docstrings of the classes
decorated with ``@document`` get their ``Args:`` section, as at import.

The engine's classes write each constructor-argument paragraph once, in ``tracin_widgets/influence/_argdocs.py``,
and ``@document`` builds ``__doc__`` from them when the module is imported. griffe reads the source without
importing it, so it would see only the class's own docstring (the introduction and the examples); this extension
loads ``_argdocs.py`` on its own (it imports the standard library only, never torch) and calls the same ``build``
with the class's own docstring and its ``__init__``'s arguments as griffe read them.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import griffe

ARGDOCS = Path(__file__).resolve().parents[1] / "tracin_widgets" / "influence" / "_argdocs.py"
_SKIP = {griffe.ParameterKind.var_positional, griffe.ParameterKind.var_keyword}


def _load_argdocs() -> Any:
    spec = importlib.util.spec_from_file_location("_tracin_widgets_argdocs", ARGDOCS)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {ARGDOCS}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class ArgDocs(griffe.Extension):
    """Builds the docstring of every class decorated with ``document`` (``@document``, ``@_argdocs.document``)."""

    def __init__(self) -> None:
        super().__init__()
        self.argdocs = _load_argdocs()

    def on_class(self, *, cls: griffe.Class, **kwargs: Any) -> None:
        if not any(str(d.value).split(".")[-1] == "document" for d in cls.decorators):
            return
        if cls.docstring is None:
            raise griffe.GriffeError(f"{cls.path} is decorated with @document but has no docstring of its own.")
        init = cls.members.get("__init__")
        if not isinstance(init, griffe.Function):
            raise griffe.GriffeError(f"{cls.path} is decorated with @document but defines no __init__ of its own.")
        params = [p.name for p in init.parameters if p.name != "self" and p.kind not in _SKIP]
        cls.docstring.value = self.argdocs.build(cls.name, cls.docstring.value, params)
