"""TracInCPFast: last-layer TracIn from cached rank-one factors.

For the hooked layer, the gradient of example i's loss w.r.t. the layer weight is g_i a_i^T, with a_i the
layer's input and g_i the loss gradient w.r.t. the model output (Captum's semantics). So

    influence(t, i) = sum_c lr_c (g_t . g_i)(a_t . a_i),      self(i) = sum_c lr_c |g_i|^2 |a_i|^2.

One pass over the training data computes (a, g) for every checkpoint (each checkpoint loaded once,
``_pass.py``) into a ``FactorBank`` (``_bank.py``); after it every query is a couple of matrix products.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import torch
from torch import nn

from .. import _distributed, _predict
from .._argdocs import document
from .._base import (
    TRANSPARENT,
    Checkpoints,
    Inputs,
    KMostInfluentialResults,
    ProgressCallback,
    _Progress,
    check_k,
    check_proponents,
    check_train_indices,
    locked,
    merge_topk,
)
from .._integrity import StoreDamaged
from .._layers import resolve_module
from .._loss import loss_mode
from .._store import check_factor_dtype, parse_max_memory
from .._topk import finish_topk
from . import _bank
from ._bank import FactorBank
from ._pass import FactorPass

_F = TypeVar("_F", bound=Callable[..., Any])


def recovering(refit: bool = False) -> Callable[[_F], _F]:
    """Run a public call again once when a read of the store finds damage (``StoreDamaged``): the damage is
    warned about and made to be computed again first (``FactorPass._recover``); a second ``StoreDamaged``
    propagates. ``refit``: compute the factors before the second run (a call that never starts a pass)."""

    def wrap(method: _F) -> _F:
        @functools.wraps(method)
        def run(self: FactorPass, *args: Any, **kwargs: Any) -> Any:
            try:
                return method(self, *args, **kwargs)
            except StoreDamaged as e:
                if kwargs.get("distributed"):  # every rank would have to agree on it: raised as it is
                    raise
                self._recover(e)
            if refit:
                self._prepare_factors()
            return method(self, *args, **kwargs)

        TRANSPARENT.add(run.__code__)  # type: ignore[attr-defined]  # warnings: the user's call as without it
        return run  # type: ignore[return-value]

    return wrap


@document
class TracInCPFast(FactorPass):
    """TracIn on the last fully-connected layer with the rank-one trick, with Captum 0.9's ``TracInCPFast`` API.

    The loss gradient w.r.t. ``final_fc_layer``'s weight is ``g a^T`` (``a``: the layer's input, ``g``: the loss
    gradient w.r.t. the model output), so ``influence(t, i) = sum_c lr_c (g_t . g_i)(a_t . a_i)`` over the
    checkpoints ``c``. One pass over the training data keeps ``a`` and ``g`` of every checkpoint (the
    "factors"); after it every query is a couple of matrix products. Like Captum, the layer's bias gradient is
    left out and ``final_fc_layer``'s *input* is hooked while the loss gradient is taken w.r.t. the *model
    output*; a ``TracInWarning`` says so when ``final_fc_layer`` is not the linear layer that produces the
    output.

    Examples:
        With a trained ``net``, its training data and its checkpoints (Captum's code runs unchanged with this
        import):

        >>> from torch import nn
        >>> from tracin_widgets.influence import TracInCPFast
        >>> loss = nn.CrossEntropyLoss(reduction="sum")
        >>> tracin = TracInCPFast(net, "fc3", train_dataset, checkpoint_dir, loss_fn=loss)
        >>> top = tracin.influence((x_test, y_test), k=10)  # top.indices, top.influence_scores: (n_test, 10)
        >>> opponents = tracin.influence((x_test, y_test), k=10, proponents=False)  # from the cached factors
        >>> scores = tracin.influence((x_test, y_test))  # the (n_test, n_train) matrix
        >>> suspects = tracin.self_influence().argsort(descending=True)[:20]  # likely mislabelled examples first
    """

    def __init__(
        self,
        model: nn.Module,
        final_fc_layer: nn.Module | str,
        train_dataset: Any,
        checkpoints: Checkpoints,
        checkpoints_load_func: Callable[[nn.Module, str], Any] | None = None,
        loss_fn: Callable[..., torch.Tensor] | None = None,
        batch_size: int | None = None,
        test_loss_fn: Callable[..., torch.Tensor] | None = None,
        vectorize: bool = False,
        *,
        device: str | int | torch.device | None = None,
        num_workers: int | None = None,
        progress_callback: ProgressCallback | None = None,
        cache_dir: str | os.PathLike | None = None,
        weights_only: bool = True,
        data_version: str | None = None,
        max_memory: int | str | None = None,
        factor_dtype: torch.dtype | None = None,
        label_key: str | None = None,
        output_key: str | int | None = None,
    ) -> None:
        self.max_memory = parse_max_memory(max_memory)
        self.factor_dtype = check_factor_dtype(factor_dtype)
        super().__init__(
            model,
            train_dataset,
            checkpoints,
            checkpoints_load_func,
            loss_fn,
            batch_size,
            test_loss_fn,
            device=device,
            num_workers=num_workers,
            progress_callback=progress_callback,
            cache_dir=cache_dir,
            weights_only=weights_only,
            data_version=data_version,
            label_key=label_key,
            output_key=output_key,
        )
        self.factors_: FactorBank | None = None  # the training-set factors, set by fit() (or the first query)
        self._lr_rows: dict[tuple, torch.Tensor] = {}  # the learning rates as a tensor, by dtype and device
        self._init_capture()
        self.final_fc_layer = final_fc_layer
        self.vectorize = vectorize  # accepted for compatibility; gradients here need no jacobian
        ctx = type(self).__name__
        self.reduction_type = loss_mode(loss_fn, "loss_fn", ("sum", "mean"), ctx, "sum")
        self.test_reduction_type = (
            self.reduction_type
            if test_loss_fn is None
            else loss_mode(test_loss_fn, "test_loss_fn", ("sum", "mean"), ctx, "sum")
        )

    @property
    def final_fc_layer(self) -> nn.Module:
        return self._final_fc_layer

    @final_fc_layer.setter
    def final_fc_layer(self, layer: nn.Module | str) -> None:
        self.final_fc_layer_name, self._final_fc_layer = resolve_module(self.model, layer, "final_fc_layer")
        self.factors_ = None
        self._self_influence: torch.Tensor | None = None
        self._fingerprint = None
        self._reset_capture()

    @locked
    @recovering(refit=True)
    def train_probabilities(
        self,
        model: nn.Module,
        labels: Any = None,
        read_labels: Callable[[Any], Any] | None = None,
        rows: int = 65536,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, str]:
        """The softmax probabilities ``(n_train, C)`` (CPU, the computation dtype) of ``model`` on the training set
        and the labels ``(n_train,)`` int64, read off the factors without a forward pass, and why (or why not):
        ``(None, None, reason)`` when that would not be exact.

        With ``nn.CrossEntropyLoss`` (reduction "sum" or "mean", no class ``weight``, no label smoothing) the stored
        loss gradient of row i at the last checkpoint is ``softmax(z_i) - onehot(y_i)`` (Captum's "mean" is rescaled
        by the batch size, so the same), and ``model(*x_i)`` in eval mode gives ``z_i`` when ``model``'s weights
        equal the last checkpoint's, tensor by tensor. Needs the factors computed (never starts a pass), kept as
        computed (no half-precision ``factor_dtype``), and every label a class index other than ``ignore_index``.

        Labels: ``labels`` (one int per training row) when given; else the TensorDataset's own; else, when the
        caller knows the labels are int class indices and passes ``read_labels(rows) -> labels of those rows``,
        each row's label is its gradient's one negative entry (``p - 1``), and only rows without one (``p == 1``
        in float, or an ignored row's zero gradient) are read.
        """
        return _predict.train_probabilities(self, model, labels, read_labels, rows)

    @locked
    @recovering()
    def fit(self, show_progress: bool = False) -> TracInCPFast:
        """Compute the training-set factors now (one pass over the training data, or a read of ``cache_dir``),
        with tqdm bars when ``show_progress``; otherwise the first query does it. Returns ``self``.

        Raises:
            ValueError: the training set is empty, the model cannot take its batches, a label is not a class of
                the model, or a factor is not finite (naming the rows).
        """
        if self.factors_ is not None and show_progress:  # still show the call ran
            _Progress("training factors (cached)", self.factors_.n_rows, True, None).finish()
        self._prepare_factors(show_progress)
        return self

    # ------------------------------------------------------------------ scores
    def _lr_tensor(self, like: torch.Tensor) -> torch.Tensor:
        key = (like.dtype, like.device)
        lr = self._lr_rows.get(key)
        if lr is None:
            _, lrs = self._checkpoint_states()
            lr = self._lr_rows[key] = torch.tensor(lrs, dtype=like.dtype, device=like.device)
        return lr

    @staticmethod
    def _chunk_rows(n_test: int, n_ckpt: int, budget: int = 1 << 25) -> int:
        """Training rows per block of scores: about ``budget`` products (at least 1024 rows)."""
        return max(1024, budget // max(1, n_test * max(1, n_ckpt)))

    def _score_chunks(
        self, bank: FactorBank, At: torch.Tensor, Gt: torch.Tensor, span: tuple[int, int] | None = None
    ) -> Iterator[tuple[int, torch.Tensor]]:
        lr = self._lr_tensor(At).view(-1, 1, 1)
        step = self._chunk_rows(At.shape[0], At.shape[1])
        half = self._native_half(bank, At, Gt)
        if half is not None:  # half-precision factors on a GPU: read as they are, products summed in float32
            Ah, Gh = half
            mm32 = _bank._mm32
            for s, A, G in bank.blocks(step, span, native=True):
                terms = [lr[c, 0] * mm32(G[:, c], Gh[:, c]) * mm32(A[:, c], Ah[:, c]) for c in range(A.shape[1])]
                yield s, functools.reduce(torch.add, terms).T
            return
        for s, A, G in bank.blocks(step, span):
            gg = torch.einsum("ncd,mcd->cnm", Gt, G)
            aa = torch.einsum("ncd,mcd->cnm", At, A)
            yield s, (gg * aa * lr).sum(0)

    def _native_half(
        self, bank: FactorBank, At: torch.Tensor, Gt: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The test factors in the training factors' half precision, when the products can read those as they
        are (CUDA: ``torch.mm(..., out_dtype=torch.float32)``, float32 accumulation and result) instead of
        converting every block to float32 first (3x the memory traffic: 39 GB of bfloat16 factors at ImageNet
        size would need 78 GB of float32 copies). None otherwise, or when a test factor is out of float16's
        range."""
        dt = bank.factor_dtype
        if dt not in (torch.bfloat16, torch.float16) or not _bank._mm32_supported(self.device):
            return None
        Ah, Gh = At.to(dt), Gt.to(dt)
        if dt == torch.float16 and not bool(torch.isfinite(Ah).all() and torch.isfinite(Gh).all()):
            return None
        return Ah, Gh

    def _scores_or_topk(
        self,
        bank: FactorBank,
        At: torch.Tensor,
        Gt: torch.Tensor,
        k: int | None,
        proponents: bool,
        show_progress: bool = False,
    ) -> torch.Tensor | KMostInfluentialResults:
        prog = _Progress("influence", bank.n_rows, True, None) if show_progress else None  # a per-query step
        try:
            if k is None:
                parts = []
                for _s, sc in self._score_chunks(bank, At, Gt):
                    parts.append(sc.cpu())
                    if prog is not None:
                        prog.update(sc.shape[1])
                return torch.cat(parts, dim=1)
            best = None
            for s, sc in self._score_chunks(bank, At, Gt):
                best = merge_topk(best, sc, s, k, largest=proponents)
                if prog is not None:
                    prog.update(sc.shape[1])
            return finish_topk(best, At.shape[0])
        finally:
            if prog is not None:
                prog.close()

    def _query_group(self, distributed: Any) -> tuple[int, int] | None:
        """``(rank, world)`` when ``distributed`` is True and this process is one of several ranks."""
        if not isinstance(distributed, bool):
            raise TypeError(
                "distributed must be a bool (True: split the query over the ranks of torch.distributed, every "
                f"rank making the same call), got {type(distributed).__name__}."
            )
        return _distributed.process_group(self.device) if distributed else None

    # ------------------------------------------------------------------ queries
    @locked
    @recovering()
    def influence(
        self,
        inputs: Inputs | None = None,
        k: int | None = None,
        proponents: bool = True,
        show_progress: bool = False,
        *,
        distributed: bool = False,
    ) -> torch.Tensor | KMostInfluentialResults:
        """Influence of every training example on each example of ``inputs``.

        The first call computes the training-set factors (one pass); later calls only compute the factors of
        ``inputs`` and a couple of matrix products.

        Args:
            inputs: the test examples: one batch ``(*features, labels)`` (the model is called as
                ``model(*inputs[:-1])``) or a ``DataLoader`` of such batches that yields every row once, in order.
            k: None (the default) for the full score matrix; a positive int for the ``k`` most influential
                training examples of each test example.
            proponents: with ``k``: True (the default) for the highest scores, False for the opponents (the
                lowest scores, most negative first).
            show_progress: show tqdm bars for the passes.
            distributed: keyword-only, under ``torchrun``: True splits the query over the ranks, each scoring its
                contiguous share of the training rows (its local top-k, or its score columns, joined with
                ``torch.distributed.all_gather``); every rank gets the whole result, the same as a single
                process's ([Several GPUs: torchrun][engine-torchrun] on the engine page of the documentation).
                Every rank must then make the same call with the same inputs (the ranks check that they did, and a
                rank's error is raised on every rank instead of leaving the others waiting). Default False: this
                process alone answers, as in Captum. In a single process True changes nothing.

        Returns:
            ``k=None``: a float tensor ``(n_test, n_train)`` on the CPU, in the checkpoints' dtype. ``k`` int:
            ``KMostInfluentialResults(indices, influence_scores)``, both ``(n_test, min(k, n_train))`` on the
            CPU, ``indices`` int64, sorted by descending score (proponents) or ascending score (opponents).

        Raises:
            TypeError, ValueError: ``k`` is not a positive int or None, ``proponents`` is not a bool.
            TypeError, ValueError: before any pass over the training data, when ``inputs`` is not a batch with
                labels (or is empty), the model cannot take it, or a label is not a class of the model (for a
                loss that takes class indices); ValueError when gradients are not finite, naming the rows.
            ValueError: with ``distributed=True``, the ranks made different calls (another rank's error is a
                ``RuntimeError`` on this one).
        """
        group = self._query_group(distributed)
        if group is not None:
            return _distributed.influence_across_ranks(self, *group, inputs, k, proponents, show_progress)
        k = check_k(k)
        proponents = check_proponents(proponents)
        # validate before the (possibly long) training pass
        batches = self._test_batches(inputs, show_progress=show_progress)
        bank = self.factors_ or self._prepare_factors(show_progress)
        At, Gt = self._test_factors(inputs, batches=batches, show_progress=show_progress)
        return self._scores_or_topk(bank, At, Gt, k, proponents, show_progress)

    @locked
    @recovering()
    def influence_by_checkpoint(self, inputs: Inputs, train_indices: Any) -> torch.Tensor:
        """Each checkpoint's term ``lr_c (g_t . g_i)(a_t . a_i)`` of the influence of training examples
        ``train_indices`` on each example of ``inputs``: whether an influence comes from early or late training.
        Exact, from the cached factors (``TracInCPFastRandProj``'s projection and index are not used), so the
        terms sum over the checkpoints to ``influence(inputs, k=None)[:, train_indices]``.

        Args:
            inputs: the test examples: one batch ``(*features, labels)`` (the model is called as
                ``model(*inputs[:-1])``) or a ``DataLoader`` of such batches that yields every row once, in order.
            train_indices: positions in the training set (a list of ints, or a 1-D int tensor / array).

        Returns:
            A float tensor ``(n_test, len(train_indices), n_checkpoints)`` on the CPU, in the checkpoints' dtype,
            the last axis in ``checkpoints`` order (``learning_rates()`` gives each one's ``lr_c``).

        Raises:
            TypeError, ValueError: ``train_indices`` is not a non-empty sequence of ints in ``[0, n_train)``; and,
                before any pass over the training data, what ``influence`` raises for ``inputs``.
        """
        idx = check_train_indices(train_indices, self._n_train())
        batches = self._test_batches(inputs)
        bank = self._prepare_factors()  # in memory or streamed from the store: only the requested rows are read
        idx = check_train_indices(idx, bank.n_rows)  # a training set without a length is checked once read
        At, Gt = self._test_factors(inputs, batches=batches)
        A, G = bank.rows(idx)
        gg = torch.einsum("ncd,kcd->nkc", Gt.to(G.dtype), G)
        aa = torch.einsum("ncd,kcd->nkc", At.to(A.dtype), A)
        return (gg * aa * self._lr_tensor(A)).cpu()

    @locked
    @recovering()
    def self_influence(
        self,
        inputs: Inputs | None = None,
        show_progress: bool = False,
        outer_loop_by_checkpoints: bool = False,
        *,
        distributed: bool = False,
    ) -> torch.Tensor:
        """Self-influence ``sum_c lr_c |g_c|^2 |a_c|^2`` of each example (exact, from the factors): high values
        flag unusual or mislabelled training examples.

        Args:
            inputs: None (the default) for the training set (from the training-set factors, computed once).
                Or one batch ``(*features, labels)`` or a ``DataLoader`` of such batches (scored with
                ``loss_fn``).
            show_progress: show tqdm bars for the passes.
            outer_loop_by_checkpoints: accepted for Captum compatibility; the result does not depend on it
                (every checkpoint is loaded once per instance anyway).
            distributed: keyword-only, under ``torchrun``: True splits the training set's self-influence over the
                ranks (each its contiguous rows, joined with ``all_gather``; every rank gets all of it), as in
                ``influence``; every rank must make the same call. Only with ``inputs=None`` (a ``ValueError``
                otherwise). Default False: this process alone answers.

        Returns:
            A float tensor ``(n,)`` on the CPU, in the checkpoints' dtype (``n = len(train_dataset)`` when
            ``inputs`` is None).

        Raises:
            TypeError, ValueError: before any pass over the training data, when ``inputs`` is not a batch with
                labels (or is empty), the model cannot take it, or a label is not a class of the model (for a
                loss that takes class indices); ValueError when gradients are not finite, naming the rows.
        """
        group = self._query_group(distributed)
        if group is not None:
            self._self_influence = _distributed.self_influence_across_ranks(self, *group, inputs, show_progress)
            return self._self_influence.clone()
        if inputs is not None:
            A, G = self._test_factors(
                inputs, loss="train", show_progress=show_progress, phase="self influence", callback=True
            )
            return self._self_from_factors(A, G).cpu()
        if self._self_influence is None:
            cached = self.factors_ is not None
            bank = self._prepare_factors(show_progress)
            self._self_influence = self._train_self_influence(bank).cpu()
            if cached and show_progress:  # the factors were ready: still show that the call ran
                _Progress("self influence", len(self._self_influence), True, None).finish()
        elif show_progress:
            _Progress("self influence (cached)", len(self._self_influence), True, None).finish()
        return self._self_influence.clone()

    def _train_self_influence(self, bank: FactorBank, span: tuple[int, int] | None = None) -> torch.Tensor:
        """Self-influence of the training rows ``span=(start, stop)`` (default all), from the bank's norms."""
        return torch.cat([self._self_from_norms(norms) for norms in bank.row_norms(span)])

    def _self_from_factors(self, A: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
        return self._self_from_norms(_bank._row_norms(A, G))

    def _self_from_norms(self, norms: torch.Tensor) -> torch.Tensor:
        """``sum_c lr_c |g_c|^2 |a_c|^2`` per row from ``(n, C, 2)`` norms."""
        return (norms[..., 0] * norms[..., 1] * self._lr_tensor(norms)).sum(1)
