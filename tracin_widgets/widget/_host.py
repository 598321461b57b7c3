"""``Host``: what the explorer's background run (``_pipeline.Pipeline``) and its galleries (``_galleries.Galleries``)
may ask of the explorer that owns them. One small protocol instead of a callback per need, so the parts never reach
into the controller beyond it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ._widget import InfluenceExplorer


class Host(Protocol):
    """The owner of a pipeline and its galleries, as they see it.

    ``status`` is the explorer's status trait. ``begin(run)`` announces a new background run (called under the
    explorer's lock, before its thread starts). ``show(**traits)`` sets traits in one sync (with the engine's notes
    so far). ``fail(e, where)`` reports an error (banner, log, ``wait()``). ``computed(what)`` refreshes the views
    once a step of the run stored new arrays (``what``: one of ``_pipeline``'s ``TEST_PREDICTIONS``,
    ``SELF_INFLUENCE``, ``TRAIN_PREDICTIONS``, ``SUGGESTIONS``).
    """

    @property
    def status(self) -> str: ...

    def begin(self, run: int) -> None: ...

    def show(self, **traits: Any) -> None: ...

    def fail(self, e: BaseException, where: str) -> None: ...

    def computed(self, what: str) -> None: ...


class ExplorerHost:
    """The ``Host`` of an ``InfluenceExplorer``: each call goes to the explorer's own method."""

    def __init__(self, explorer: InfluenceExplorer):
        self._explorer = explorer

    @property
    def status(self) -> str:
        return str(self._explorer.status)

    def begin(self, run: int) -> None:
        self._explorer._begin_run(run)

    def show(self, **traits: Any) -> None:
        self._explorer._show(**traits)

    def fail(self, e: BaseException, where: str) -> None:
        self._explorer._fail(e, where)

    def computed(self, what: str) -> None:
        self._explorer._on_computed(what)
