"""TracInCP: TracIn over any set of layers.

Per-example gradients are never computed in a Python loop over examples where the layers allow it: hooks on one
forward and one backward per chunk of rows give a factorised ``nn.Linear`` (dot products (g.g')(a.a' + 1), never
materialised), a Linear over tokens or an embedding (token-Gram dot products, or materialised when cheaper),
a Conv2d's and a normalisation layer's gradients; ``torch.func.vmap(grad(...))`` gives the rest (``cp._grad_sample``).
One pass over the training data (checkpoints loaded once, batches outer, chunks of rows, checkpoints inner) gives
the scores for a test batch and the self-influence of every training example; each chunk's gradients are dropped
once scored (``cp._pass``). Nothing kept grows with n_test * n_train unless the whole score matrix is asked for
(``k=None``): with ``k`` the pass keeps a running top-k of the proponents and the opponents.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from .._argdocs import document
from .._checks import check_k, check_proponents, check_train_indices, sqrt_lr
from .._data import batch_len, input_batches, split_rows
from .._loss import loss_mode
from .._store import parse_max_memory
from .._topk import FullScores, RunningTopK, TopKPair, topk_of
from .._types import Checkpoints, Inputs, KMostInfluentialResults, ProgressCallback, _Progress, locked
from ._grad_sample import Plan, Workspace, blocks_dot, select_params
from ._pass import BlockPass
from ._score_cache import ScoreCache, check_matrix_fits


@document
class TracInCP(BlockPass):
    """TracIn over the parameters of ``layers`` (every trainable parameter when None), with Captum 0.9's API.

    The influence of training example ``z`` on test example ``z'`` is ``sum_c lr_c grad_c(z) . grad_c(z')`` over
    the checkpoints ``c``, with ``grad_c`` the per-example gradient of the loss w.r.t. the selected parameters.
    Per-example gradients come from hooks on one forward and one backward per chunk wherever the layer allows it:
    an ``nn.Linear`` on 2-D inputs is factorised (its gradients are never materialised), one over tokens
    (``(batch, tokens, features)``, a transformer's) and ``nn.Embedding`` / 2-D ``nn.EmbeddingBag`` keep their
    inputs and output gradients and are scored by the token-Gram trick or materialised, whichever costs less for
    the query, ``Conv2d`` gradients are materialised from hooks, and ``LayerNorm`` / ``GroupNorm`` / eval-mode
    ``BatchNorm`` affine parameters come in closed form; anything else comes from ``torch.func.vmap`` (or, where
    vmap cannot run the model, a loop over the rows). ``gradient_paths()`` says which each layer got. One pass
    over the training data gives the scores of a test batch and every self-influence; both are kept for later
    calls (the self-influence also in ``cache_dir``).

    Memory is bounded by one chunk of training rows: each batch is cut into chunks whose per-example gradients
    (of one checkpoint at a time, with the temporaries that compute them) fit ``max_memory``, and whose forward
    and backward fit in the free memory; each chunk is scored against the test gradients, added into the
    self-influence and dropped. What else is held: the test rows' gradients for every checkpoint (``n_test x
    parameters x checkpoints`` values, for the pass of one query), the checkpoints' weights, one batch of training
    rows (merged loader batches, up to 512 rows on a CPU), ``n_train`` floats of self-influence, and for
    ``influence(k=...)`` a running top-k (the proponents and the opponents, ``n_test * k`` values) instead of the
    ``(n_test, n_train)`` matrix that only ``k=None`` builds. Results kept for later calls take at most
    ``score_cache_bytes`` (512 MB). ``batch_size`` does not bound the memory; ``max_memory`` does.

    Examples:
        >>> from torch import nn
        >>> from tracin_widgets.influence import TracInCP
        >>> loss = nn.CrossEntropyLoss(reduction="none")  # one loss per example
        >>> tracin = TracInCP(net, train_dataset, checkpoint_dir, layers=["fc2", "fc3"], loss_fn=loss)
        >>> top = tracin.influence((x_test, y_test), k=10)  # one pass; keeps the proponents and the opponents
        >>> opponents = tracin.influence((x_test, y_test), k=10, proponents=False)  # no second pass
        >>> scores = tracin.self_influence()  # (n_train,), kept in cache_dir when one is given
    """

    _cache_kind = "cp"

    def __init__(
        self,
        model: nn.Module,
        train_dataset: Any,
        checkpoints: Checkpoints,
        checkpoints_load_func: Callable[[nn.Module, str], Any] | None = None,
        layers: Sequence[str | nn.Module] | None = None,
        loss_fn: Callable[..., torch.Tensor] | None = None,
        batch_size: int | None = None,
        test_loss_fn: Callable[..., torch.Tensor] | None = None,
        sample_wise_grads_per_batch: bool = False,
        *,
        device: str | int | torch.device | None = None,
        num_workers: int | None = None,
        progress_callback: ProgressCallback | None = None,
        cache_dir: str | os.PathLike | None = None,
        weights_only: bool = True,
        data_version: str | None = None,
        max_memory: int | str | None = None,
    ) -> None:
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
        )
        self.sample_wise_grads_per_batch = sample_wise_grads_per_batch
        if sample_wise_grads_per_batch:
            allowed: tuple[str, ...] = ("sum", "mean", "outputs")
            missing = "sum"
            ctx = "TracInCP with sample_wise_grads_per_batch=True"
        else:
            allowed, missing = ("none", "outputs"), "none"
            ctx = "TracInCP with sample_wise_grads_per_batch=False (the default)"
        self.reduction_type = loss_mode(loss_fn, "loss_fn", allowed, ctx, missing)
        self.test_reduction_type = (
            self.reduction_type
            if test_loss_fn is None
            else loss_mode(test_loss_fn, "test_loss_fn", allowed, ctx, missing)
        )
        self.layers = layers
        self.max_memory = parse_max_memory(max_memory)
        self._param_names = select_params(self.model, self._net, layers)
        self._plan: Plan | None = None
        self._self_influence: torch.Tensor | None = None
        self._score_cache = ScoreCache()
        self._warned_loop = False

    @locked
    def fit(self, show_progress: bool = False) -> TracInCP:
        """Compute the training set's self-influence now (one pass over the training data, or a read of
        ``cache_dir``), with tqdm bars when ``show_progress``. Optional: ``self_influence()`` does it on first
        use. Returns ``self``; raises what ``self_influence()`` raises."""
        self.self_influence(show_progress=show_progress)
        return self

    @locked
    def influence(
        self,
        inputs: Inputs | None = None,
        k: int | None = None,
        proponents: bool = True,
        show_progress: bool = False,
        aggregate: bool = False,
    ) -> torch.Tensor | KMostInfluentialResults:
        """Influence of every training example on each example of ``inputs``.

        With ``k``, one pass keeps a running top-k of both the proponents and the opponents (never the whole
        score matrix: memory ``n_test * k`` values plus one training batch's scores), so asking for the other
        direction, or for a smaller ``k``, of the same inputs afterwards costs no second pass. Among equal
        scores the lower training index comes first (``torch.topk`` leaves ties in any order), whatever the
        batching. ``k=None`` builds the ``(n_test, n_train)`` matrix (a later top-k of
        the same inputs reads it). Results are kept up to ``score_cache_bytes`` (512 MB, least recently used
        dropped first; a larger matrix is returned but not kept).

        Args:
            inputs: the test examples: one batch ``(*features, labels)`` (the model is called as
                ``model(*inputs[:-1])``) or a ``DataLoader`` of such batches that yields every row once, in order.
            k: None (the default) for the full score matrix; a positive int for the ``k`` most influential
                training examples of each test example.
            proponents: with ``k``: True (the default) for the highest scores, False for the opponents (the
                lowest scores, most negative first).
            show_progress: show tqdm bars for the passes.
            aggregate: score the sum of the test examples' gradients instead: one row (Captum's ``aggregate``).

        Returns:
            ``k=None``: a float tensor ``(n_test, n_train)`` on the CPU (``(1, n_train)`` with
            ``aggregate=True``), in the checkpoints' dtype. ``k`` int: ``KMostInfluentialResults(indices,
            influence_scores)``, both ``(n_test, min(k, n_train))`` on the CPU, ``indices`` int64, sorted by
            descending score (proponents) or ascending score (opponents).

        Raises:
            TypeError, ValueError: ``k`` is not a positive int or None, ``proponents`` is not a bool.
            ValueError: ``k=None`` and the score matrix is larger than this machine's memory (before the pass).
            TypeError, ValueError: before any pass over the training data, when ``inputs`` is not a batch with
                labels (or is empty), the model cannot take it, or a label is not a class of the model (for a
                loss that takes class indices); ValueError when gradients are not finite, naming the rows.
        """
        k = check_k(k)
        proponents = check_proponents(proponents)
        batches = self._test_batches(inputs, show_progress=show_progress)
        key, n_test = self._test_key(batches), sum(batch_len(b) for b in batches)
        found = self._score_cache.find(key, k, aggregate)
        if found is None:
            with self._computing():
                states, _ = self._checkpoint_states(show_progress)
                if k is None:
                    rows, itemsize = 1 if aggregate else n_test, states[0][self._param_names[0]].element_size()
                    check_matrix_fits(rows, self._n_train(), itemsize)
                prog = _Progress("test gradients", n_test, show_progress, None)
                try:
                    test_blocks = self._test_blocks(batches, states, prog)
                finally:
                    prog.close()
                sink = FullScores(aggregate, self._n_train()) if k is None else RunningTopK(aggregate, k)
                self._pass(test_blocks, show_progress, "influence", sink)
            entry = sink.result()
            shared = self._score_cache.put((key, aggregate), entry, self.score_cache_bytes)
        else:
            entry, shared = found
            if show_progress:  # no pass needed: still show that the call ran
                _Progress("influence (cached)", self._n_train(), True, None).finish()
        if isinstance(entry, TopKPair):
            assert k is not None  # a top-k entry is only found or made for a k
            return entry.get(k, proponents)
        if k is None:
            return entry.clone() if shared else entry
        return topk_of(entry, k).get(k, proponents)

    score_cache_bytes = 512 << 20  # the query results kept for later calls (least recently used dropped first)

    @locked
    def influence_by_checkpoint(self, inputs: Inputs, train_indices: Any) -> torch.Tensor:
        """Each checkpoint's term ``lr_c grad_c(z_t) . grad_c(z_i)`` of the influence of training examples
        ``train_indices`` on each example of ``inputs``: whether an influence comes from early or late training.
        Only the given training rows are read (no pass over the training data); the terms sum over the
        checkpoints to ``influence(inputs, k=None)[:, train_indices]``.

        Args:
            inputs: the test examples: one batch ``(*features, labels)`` (the model is called as
                ``model(*inputs[:-1])``) or a ``DataLoader`` of such batches that yields every row once, in order.
            train_indices: positions in the training set (a list of ints, or a 1-D int tensor / array), read from
                ``train_dataset`` by index (a map-style dataset).

        Returns:
            A float tensor ``(n_test, len(train_indices), n_checkpoints)`` on the CPU, in the checkpoints' dtype,
            the last axis in ``checkpoints`` order (``learning_rates()`` gives each one's ``lr_c``).

        Raises:
            TypeError, ValueError: ``train_indices`` is not a non-empty sequence of ints in ``[0, n_train)``, the
                training set cannot be read by index; what ``influence`` raises for ``inputs``.
        """
        idx = check_train_indices(train_indices, self._n_train())
        batches = self._test_batches(inputs)
        with self._computing():
            states, lrs = self._checkpoint_states()
            test_blocks = self._test_blocks(batches, states)  # the plan's choice for these test rows
            rows = self._train_rows(idx)
            train_blocks = self._all_blocks(rows, states, self.reduction_type, self.loss_fn, "training rows")
            terms = [lr * blocks_dot(tb, rb) for lr, tb, rb in zip(lrs, test_blocks, train_blocks, strict=True)]
        return torch.stack(terms, -1).cpu()

    @locked
    def self_influence(
        self, inputs: Inputs | None = None, show_progress: bool = False, outer_loop_by_checkpoints: bool = False
    ) -> torch.Tensor:
        """Self-influence ``sum_c lr_c |grad_c(z)|^2`` of each example: high values flag unusual or mislabelled
        training examples.

        Args:
            inputs: None (the default) for the training set: one pass, then kept (and saved in ``cache_dir``).
                Or one batch ``(*features, labels)`` or a ``DataLoader`` of such batches (scored with
                ``loss_fn``), read one batch at a time: only ``n`` floats are kept, whatever its size.
            show_progress: show tqdm bars for the passes.
            outer_loop_by_checkpoints: accepted for Captum compatibility; the result does not depend on it
                (every checkpoint is loaded once per instance anyway).

        Returns:
            A float tensor ``(n,)`` on the CPU, in the checkpoints' dtype (``n = len(train_dataset)`` when
            ``inputs`` is None).

        Raises:
            TypeError, ValueError: before any pass over the training data, when ``inputs`` is not a batch with
                labels (or is empty), the model cannot take it, or a label is not a class of the model (for a
                loss that takes class indices); for a ``DataLoader``, each batch is checked as it is read (a bad
                later batch stops the call there). ValueError when gradients are not finite, naming the rows.
        """
        if inputs is None:
            if self._self_influence is None:
                cached = self._cache_load(self._cache_file("self", self._key()))
                if cached is not None:
                    self._self_influence = cached["self"].cpu()
                    if show_progress:
                        _Progress("self influence (cached)", len(self._self_influence), True, None).finish()
                else:
                    with self._computing():
                        self._pass(None, show_progress, "self influence")
            elif show_progress:
                _Progress("self influence (cached)", len(self._self_influence), True, None).finish()
            assert self._self_influence is not None  # set by the cache read or the pass above
            return self._self_influence.clone()
        # a DataLoader is streamed (each batch checked as it comes): its rows never need to fit in memory at once
        batches = self._checked_batches(input_batches(inputs), loss="train", show_progress=show_progress)
        first = next(batches)  # the first batch is checked before any gradient
        total = batch_len(first)
        if isinstance(inputs, torch.utils.data.DataLoader):
            try:
                total = len(inputs.dataset)  # type: ignore[arg-type]
            except TypeError:
                total = -1
        with self._computing():
            states, lrs = self._checkpoint_states(show_progress)
            out, start, ws = [], 0, Workspace()
            prog = _Progress("self influence", total if total >= 0 else None, show_progress, self.progress_callback)
            try:
                for b in itertools.chain([first], batches):
                    self._ensure_plan(states, b, "batch").choose(0)
                    for off, part in self._chunks(b, states, "batch", start):
                        out.append(self._score_chunk(part, states, lrs, None, "batch", off, ws)[0].cpu())
                    start += batch_len(b)
                    prog.update(batch_len(b))
            finally:
                prog.close()
        return torch.cat(out)

    # ------------------------------------------------------------------ embeddings
    @locked
    def compute_intermediate_quantities(self, inputs: Inputs, aggregate: bool = False) -> torch.Tensor:
        """Captum's per-example "embeddings" of ``inputs``: per checkpoint c, ``sqrt(lr_c)`` times the
        per-example gradient of the training loss (``loss_fn``) w.r.t. the selected parameters (in ``layers``
        order, each flattened), concatenated over the checkpoints. The dot product of two rows is their
        influence score.

        The gradients of factorised Linear layers are materialised here (a bounded number of rows at a time).
        Captum scales each checkpoint by ``lr_c`` instead of ``sqrt(lr_c)``, so its dot products carry
        ``lr_c ** 2`` (they equal with lr 1); ours are the influence scores its docstring promises.

        Args:
            inputs: the test examples: one batch ``(*features, labels)`` (the model is called as
                ``model(*inputs[:-1])``) or a ``DataLoader`` of such batches that yields every row once, in order.
            aggregate: return the sum over the examples (one row) instead.

        Returns:
            A float tensor ``(n, D * C)`` on the CPU (``(1, D * C)`` with ``aggregate=True``), ``D`` the number
            of selected parameters and ``C`` of checkpoints, in the checkpoints' dtype.

        Raises:
            TypeError, ValueError: before any pass over the training data, when ``inputs`` is not a batch with
                labels (or is empty), the model cannot take it, or a label is not a class of the model (for a
                loss that takes class indices); ValueError when gradients are not finite, naming the rows.
        """
        batches = self._test_batches(inputs, loss="train")
        with self._computing():
            states, lrs = self._checkpoint_states()
            roots = [sqrt_lr(lr, p) for lr, p in zip(lrs, self.checkpoints, strict=True)]
            sizes = [states[0][k].numel() for k in self._param_names]
            D, C = sum(sizes), len(states)
            dtype = states[0][self._param_names[0]].dtype
            n_all = sum(batch_len(b) for b in batches)
            out = torch.zeros(1 if aggregate else n_all, D * C, dtype=dtype, device=self.device if aggregate else "cpu")
            row = 0
            for b in batches:
                self._ensure_plan(states, b, "batch").choose(0)
                n = batch_len(b)
                step = max(1, self._grad_budget(out.element_size()) // max(1, D * out.element_size()))
                for part in split_rows(b, n, min(step, self._rows(self._merge_rows(), backward=True))):
                    m = batch_len(part)
                    per_ckpt = self._all_blocks_rows(part, states, self.reduction_type, self.loss_fn, "batch")
                    for c, (root, blocks) in enumerate(zip(roots, per_ckpt, strict=True)):
                        named = self._named_grads(blocks, m)
                        cols = torch.cat([named[k] for k in self._param_names], dim=1) * root
                        if aggregate:
                            out[0, c * D : (c + 1) * D] += cols.sum(0)
                        else:
                            out[row : row + m, c * D : (c + 1) * D] = cols
                    row += m
        return out.cpu()
