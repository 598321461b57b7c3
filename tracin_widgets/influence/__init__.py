"""The influence engine: Captum 0.9-compatible TracIn, exact and fast.

Only torch and numpy are imported here (annoy lazily); no widget library is ever imported.
"""

from __future__ import annotations

from ._base import KMostInfluentialResults, TracInCPBase
from ._checkpoints import load_checkpoint
from ._errors import Cancelled, TracInWarning
from ._layers import find_final_linear_layer
from ._nearest_neighbors import AnnoyNearestNeighbors, ExactNearestNeighbors, NearestNeighbors
from ._predict import Predictions, predict
from .cp import TracInCP
from .fast import TracInCPFast, TracInCPFastRandProj

__all__ = [
    "AnnoyNearestNeighbors",
    "Cancelled",
    "ExactNearestNeighbors",
    "KMostInfluentialResults",
    "NearestNeighbors",
    "Predictions",
    "TracInCP",
    "TracInCPBase",
    "TracInCPFast",
    "TracInCPFastRandProj",
    "TracInWarning",
    "find_final_linear_layer",
    "load_checkpoint",
    "predict",
]
