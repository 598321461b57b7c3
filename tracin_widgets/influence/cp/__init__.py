"""TracInCP: TracIn over any set of layers (``_tracincp``), from per-example gradient blocks (``_grad_sample``)."""

from ._tracincp import TracInCP

__all__ = ["TracInCP"]
