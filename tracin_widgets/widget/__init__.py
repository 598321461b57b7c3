"""The ``InfluenceExplorer`` widget (anywidget). Importing this pulls in anywidget/traitlets, never the reverse."""

from ._protocols import InfluenceSource
from ._widget import InfluenceExplorer

__all__ = ["InfluenceExplorer", "InfluenceSource"]
