"""tracin_widgets: a fast, Captum-compatible TracIn engine and an interactive explorer.

``tracin_widgets.influence`` is the engine (torch + numpy only). ``InfluenceExplorer`` (anywidget)
is imported lazily, so importing the engine never pulls in widget libraries.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("tracin_widgets")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = ["InfluenceExplorer", "__version__"]


def __getattr__(name: str):
    if name == "InfluenceExplorer":
        from .widget import InfluenceExplorer

        return InfluenceExplorer
    raise AttributeError(f"module 'tracin_widgets' has no attribute {name!r}")
