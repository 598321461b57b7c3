"""``Host``: what the explorer's background run (``_pipeline.Pipeline``) and its galleries (``_galleries.Galleries``)
may ask of the explorer that owns them. One small protocol instead of a callback per need, so the parts never reach
into the controller beyond it."""

from __future__ import annotations

from typing import Any, Protocol


class Host(Protocol):
    """The owner of a pipeline and its galleries, as they see it.

    ``status`` is the explorer's status trait. ``begin(run)`` announces a new background run (called under the
    explorer's lock, before its thread starts). ``show(**traits)`` sets traits in one sync (with the engine's notes
    so far). ``fail(e, where)`` reports an error (banner, log, ``wait()``). ``computed(what)`` refreshes the views
    once a step of the run stored new arrays (``what``: one of ``_pipeline``'s ``TEST_PREDICTIONS``,
    ``SELF_INFLUENCE``, ``TRAIN_PREDICTIONS``).
    """

    @property
    def status(self) -> str: ...

    def begin(self, run: int) -> None: ...

    def show(self, **traits: Any) -> None: ...

    def fail(self, e: BaseException, where: str) -> None: ...

    def computed(self, what: str) -> None: ...
