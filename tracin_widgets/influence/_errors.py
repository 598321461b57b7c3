"""Exceptions and warnings of the influence engine."""

from __future__ import annotations


class TracInWarning(UserWarning):
    """A likely mistake that still lets the computation run (e.g. a non-final ``final_fc_layer``)."""


class Cancelled(Exception):
    """Raise this from a ``progress_callback`` to abort a computation cleanly.

    The model is restored and no partial result is cached.
    """
