"""TracInCPFast and TracInCPFastRandProj: last-layer TracIn from cached rank-one factors.

``_capture`` computes (a, g) per batch, ``_pass`` runs the factor pass into a ``FactorBank`` (``_bank``: where the
factors live), ``_fast`` is the engine (fit, queries, scoring) and ``_randproj`` adds the embedding index.
"""

from __future__ import annotations

from ._bank import FactorBank, Factors
from ._fast import TracInCPFast
from ._randproj import TracInCPFastRandProj

__all__ = ["FactorBank", "Factors", "TracInCPFast", "TracInCPFastRandProj"]
