"""TracInCPFastRandProj: TracInCPFast with an embedding index for fast top-k queries.

Each example is embedded as ``concat_c sqrt(lr_c) * (g_c P_g) outer (a_c P_a)`` (optionally projected), the
training embeddings are put in the nearest-neighbour index (in the factor store with a ``cache_dir``:
``influence/_embeddings.py``), and a top-k query retrieves candidates from it and reranks them exactly from the
factors.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._argdocs import document
from .._base import (
    Checkpoints,
    Inputs,
    KMostInfluentialResults,
    ProgressCallback,
    _Progress,
    check_k,
    check_proponents,
    locked,
    sqrt_lr,
)
from .._embeddings import EmbeddingFile, EmbeddingWriter, embedding_tag
from .._nearest_neighbors import AnnoyNearestNeighbors, NearestNeighbors
from .._store import FactorStore, dtype_name, stream_rows
from ._bank import FactorBank
from ._fast import TracInCPFast, recovering


@document
class TracInCPFastRandProj(TracInCPFast):
    """TracInCPFast with an embedding index for fast top-k queries, with Captum 0.9's ``TracInCPFastRandProj`` API.

    Each example is embedded as ``concat_c sqrt(lr_c) * (g_c P_g) outer (a_c P_a)`` (``g``, ``a``: the factors of
    ``TracInCPFast``; ``P``: random projections, or none), so that the dot product of two embeddings is their
    (approximate) influence score. The training embeddings are put in ``nearest_neighbors`` in ``__init__``
    (one pass over the training data, as in Captum). ``self_influence`` is exact (from the factors).

    Examples:
        >>> from torch import nn
        >>> from tracin_widgets.influence import ExactNearestNeighbors, TracInCPFastRandProj
        >>> loss = nn.CrossEntropyLoss(reduction="sum")
        >>> tracin = TracInCPFastRandProj(net, "fc3", train_dataset, checkpoint_dir, loss_fn=loss)  # builds the index
        >>> top = tracin.influence((x_test, y_test), k=10)  # 500 candidates from the index, reranked exactly
        >>> exact = TracInCPFastRandProj(
        ...     net, "fc3", train_dataset, checkpoint_dir, loss_fn=loss, nearest_neighbors=ExactNearestNeighbors()
        ... )
        >>> embeddings = tracin.compute_intermediate_quantities((x_test, y_test))  # (n_test, embedding size)
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
        nearest_neighbors: NearestNeighbors | None = None,
        projection_dim: int | None = None,
        seed: int = 0,
        *,
        rerank: int | None = 50,
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
        super().__init__(
            model,
            final_fc_layer,
            train_dataset,
            checkpoints,
            checkpoints_load_func,
            loss_fn,
            batch_size,
            test_loss_fn,
            vectorize,
            device=device,
            num_workers=num_workers,
            progress_callback=progress_callback,
            cache_dir=cache_dir,
            weights_only=weights_only,
            data_version=data_version,
            max_memory=max_memory,
            factor_dtype=factor_dtype,
            label_key=label_key,
            output_key=output_key,
        )
        if projection_dim is not None and (
            isinstance(projection_dim, bool) or not isinstance(projection_dim, int) or projection_dim <= 0
        ):
            raise ValueError(f"projection_dim must be a positive int or None, got {projection_dim!r}.")
        if nearest_neighbors is None:
            nearest_neighbors = AnnoyNearestNeighbors()
        if not hasattr(nearest_neighbors, "setup") or not hasattr(nearest_neighbors, "get_nearest_neighbors"):
            raise TypeError("nearest_neighbors must provide setup(data) and get_nearest_neighbors(query, k).")
        self.nearest_neighbors = nearest_neighbors
        self.projection_dim = projection_dim
        self.seed = seed
        if rerank is not None and (isinstance(rerank, bool) or not isinstance(rerank, int) or rerank < 1):
            raise ValueError(
                f"rerank must be a positive int (candidates per requested example) or None, got {rerank!r}."
            )
        self.rerank = rerank
        self._projections: tuple[torch.Tensor, torch.Tensor] | None = None
        self._train_embeddings: torch.Tensor | None = None
        self._embeddings_file: EmbeddingFile | None = None  # streamed projected embeddings (k=None reads them)
        self._build()

    @locked
    @recovering()
    def _build(self) -> None:
        bank = self._prepare_factors()
        da, dg = bank.dims
        self._projections = self._make_projections(dg, da)
        self._embeddings_file = None
        store = self._complete_store(bank)
        if store is not None and self._build_in_store(bank, store, da, dg):
            return
        emb = self._embeddings_in_memory(bank)
        prog = _Progress("nearest-neighbour index", emb.shape[0], False, self.progress_callback)
        self.nearest_neighbors.setup(emb)
        prog.update(emb.shape[0])
        prog.close()
        if self._projections is not None:
            self._train_embeddings = emb

    def _embeddings_in_memory(self, bank: FactorBank) -> torch.Tensor:
        resident = bank.resident()
        if resident is not None:
            return self._embed(*resident)
        # streamed, in host memory or half precision: embedded block by block on the device, in full precision
        return torch.cat([self._embed(A, G) for _, A, G in bank.blocks(1 << 16)])

    def _complete_store(self, bank: FactorBank) -> FactorStore | None:
        """The complete factor store in ``cache_dir`` (None without one, or when it could not be written)."""
        if bank.store is not None:
            return bank.store
        if self.cache_dir is None or self._cache_unwritable is not None:
            return None
        folder, expect = self._store_target()
        store = FactorStore.read(folder, expect, self._on_damage) if folder is not None else None
        return store if store is not None and store.complete else None

    def _build_in_store(self, bank: FactorBank, store: FactorStore, da: int, dg: int) -> bool:
        """The training embeddings into ``E-<tag>.bin`` of the store and the index from them (an Annoy index built
        on disk there, or memory-mapped when built before: ``influence/_embeddings.py``). The embeddings stay in
        memory only when the factors do; streamed factors are embedded and indexed block by block. False when the
        embeddings cannot be written (warned: the caller builds everything in memory)."""
        _, lrs = self._checkpoint_states()
        projected = self._projections is not None
        parts = {
            "store": store.meta.get("fingerprint"),
            "rows": store.rows,
            "learning_rates": [float(x).hex() for x in lrs],
            "dtype": dtype_name(bank.compute_dtype),
            "factor_dtype": dtype_name(store.dtype),
            "dims": [da, dg],
            "projection_dim": self.projection_dim if projected else None,
            "seed": self.seed if projected else None,
        }
        tag = embedding_tag(parts, self._projections)
        rows, folder = store.rows, store.folder
        pg, pa = (self._projections[0].shape[1], self._projections[1].shape[1]) if self._projections else (dg, da)
        item = torch.empty((), dtype=bank.compute_dtype).element_size()
        step = stream_rows(store.C * pg * pa * item, self.max_memory)
        emb = None if bank.streamed else self._embeddings_in_memory(bank)  # in memory as the factors are
        ef = EmbeddingFile.read(folder, tag, rows)
        if ef is None:
            writer: EmbeddingWriter | None = None
            try:
                writer = EmbeddingWriter(folder, tag)
                if emb is not None:
                    for s in range(0, rows, step):
                        writer.append(emb[s : s + step])
                else:
                    for _, A, G in bank.blocks(step):
                        writer.append(self._embed(A, G))
                ef = writer.finish({k: parts[k] for k in ("store", "projection_dim", "seed")})
            except OSError as e:
                if writer is not None:
                    writer.abort()
                self._warn_store_embeddings(folder, e, "the training embeddings", "they are kept in memory")
                return False
            except BaseException:
                if writer is not None:
                    writer.abort()
                raise
        index = self.nearest_neighbors
        prog = _Progress("nearest-neighbour index", rows, False, self.progress_callback)
        try:
            if isinstance(index, AnnoyNearestNeighbors) and type(index).setup is AnnoyNearestNeighbors.setup:
                path = folder / f"annoy-{tag}-t{index.num_trees}.ann"
                if not index.load(path, rows, ef.dim):

                    def blocks() -> Iterator[torch.Tensor]:
                        chunks = ((s, emb[s : s + step]) for s in range(0, rows, step)) if emb is not None else None
                        for _, block in chunks or ef.blocks(step):
                            yield block
                            prog.update(block.shape[0])

                    try:
                        index.build_on_disk(path, blocks(), rows, ef.dim)
                    except OSError as e:
                        self._warn_store_embeddings(folder, e, "the Annoy index", "it is built in memory")
                        index.setup(emb if emb is not None else ef.mapped())
            else:  # a CPU tensor mapped from the file (read as touched) when the factors are streamed
                index.setup(emb if emb is not None else ef.mapped())
            prog.finish()
        finally:
            prog.close()
        self._train_embeddings = emb if projected else None
        self._embeddings_file = ef if projected and emb is None else None
        return True

    def _embeddings_damaged(self) -> None:
        self._build()  # the embeddings written again from the factors (and the index, unless its own is sound)

    def _warn_store_embeddings(self, folder: Path, e: OSError, what: str, instead: str) -> None:
        self._warn(
            f"cannot write {what} into the factor store {str(folder)!r} ({type(e).__name__}: {e.strerror or e}): "
            f"{instead} instead, not saved. Free some space there (or pass another cache_dir) for later instances "
            "to reuse them.",
            stacklevel=6,
        )

    def _make_projections(self, g_dim: int, a_dim: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        d = self.projection_dim
        if d is None or g_dim * a_dim <= d:
            return None
        gen = torch.Generator().manual_seed(self.seed)
        pg = min(int(d**0.5), g_dim)
        pa = min(int(d**0.5), a_dim)
        Pg = torch.randn(g_dim, pg, generator=gen) / math.sqrt(pg)
        Pa = torch.randn(a_dim, pa, generator=gen) / math.sqrt(pa)
        return Pg.to(self.device), Pa.to(self.device)

    def _embed(self, A: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
        _, lrs = self._checkpoint_states()
        roots = [sqrt_lr(lr, p) for lr, p in zip(lrs, self.checkpoints, strict=True)]
        parts = []
        for c, root in enumerate(roots):
            g, a = G[:, c], A[:, c]
            if self._projections is not None:
                g = g @ self._projections[0].to(g.dtype)
                a = a @ self._projections[1].to(a.dtype)
            parts.append((g.unsqueeze(2) * a.unsqueeze(1)).flatten(1) * root)
        return torch.cat(parts, dim=1)

    @locked
    def compute_intermediate_quantities(self, inputs: Inputs, aggregate: bool = False) -> torch.Tensor:
        """The embeddings of ``inputs`` (with ``test_loss_fn``): per checkpoint c, ``sqrt(lr_c)`` times
        ``(g_c P_g) outer (a_c P_a)`` flattened, concatenated over the checkpoints. Their dot products with the
        training embeddings are the (approximate; exact with ``projection_dim=None``) scores.

        Args:
            inputs: the test examples: one batch ``(*features, labels)`` (the model is called as
                ``model(*inputs[:-1])``) or a ``DataLoader`` of such batches that yields every row once, in order.
            aggregate: return the sum over the examples (one row) instead (as TracInCP's; Captum's RandProj has
                no ``aggregate``).

        Returns:
            A float tensor ``(n, D * C)`` on the CPU (``(1, D * C)`` with ``aggregate=True``): ``D`` is
            ``dim(g) * dim(a)``, or the projected dimensions' product, and ``C`` the number of checkpoints.

        Raises:
            TypeError, ValueError: before any pass over the training data, when ``inputs`` is not a batch with
                labels (or is empty), the model cannot take it, or a label is not a class of the model (for a
                loss that takes class indices); ValueError when gradients are not finite, naming the rows.
        """
        At, Gt = self._test_factors(inputs)
        emb = self._embed(At, Gt)
        return (emb.sum(0, keepdim=True) if aggregate else emb).cpu()

    @locked
    @recovering()
    def influence(
        self,
        inputs: Inputs | None = None,
        k: int | None = 5,
        proponents: bool = True,
        show_progress: bool = False,
        *,
        distributed: bool = False,
    ) -> torch.Tensor | KMostInfluentialResults:
        """The most influential training examples of each example of ``inputs``, from the index (as Captum,
        note the default ``k=5``), or the score matrix with ``k=None``.

        Args:
            inputs: the test examples: one batch ``(*features, labels)`` (the model is called as
                ``model(*inputs[:-1])``) or a ``DataLoader`` of such batches that yields every row once, in order.
            k: a positive int (default 5): the ``k`` most influential training examples of each test example,
                found as ``rerank`` says. None: the full score matrix, from the embeddings' dot products
                (approximate when projected, exact with ``projection_dim=None``).
            proponents: True (the default) for the highest scores, False for the opponents (the lowest scores,
                most negative first).
            show_progress: show tqdm bars for the passes.
            distributed: keyword-only; True under ``torchrun`` is a ``ValueError`` (the index holds every training
                row on every rank, so any rank may query it alone). Default False.

        Returns:
            ``k=None``: a float tensor ``(n_test, n_train)`` on the CPU. ``k`` int:
            ``KMostInfluentialResults(indices, influence_scores)``, both ``(n_test, k)`` (fewer columns when the
            training set is smaller) on the CPU, ``indices`` int64, sorted by descending score (proponents) or
            ascending score (opponents); the scores are exact with ``rerank``, the index's own without.

        Raises:
            TypeError, ValueError: ``k`` is not a positive int or None, ``proponents`` is not a bool.
            TypeError, ValueError: before any pass over the training data, when ``inputs`` is not a batch with
                labels (or is empty), the model cannot take it, or a label is not a class of the model (for a
                loss that takes class indices); ValueError when gradients are not finite, naming the rows.
        """
        if self._query_group(distributed) is not None:
            raise ValueError(
                "TracInCPFastRandProj.influence(distributed=True): its nearest-neighbour index holds every training "
                "row on every rank, so its queries are not split over the ranks. Call influence without "
                "distributed=True (any rank may query alone), or use TracInCPFast's influence(distributed=True) for "
                "an exact top-k split over the ranks; self_influence(distributed=True) works here too."
            )
        k = check_k(k)
        proponents = check_proponents(proponents)
        At, Gt = self._test_factors(inputs, show_progress=show_progress)
        bank = self._prepare_factors(show_progress)
        if k is None:
            ef = self._embeddings_file
            if self._train_embeddings is None and ef is None:
                return self._scores_or_topk(bank, At, Gt, None, proponents, show_progress)
            prog = _Progress("influence", bank.n_rows, show_progress, None)
            q = self._embed(At, Gt)
            if self._train_embeddings is not None:
                scores = (q @ self._train_embeddings.T).cpu()
            else:  # streamed: the embeddings file block by block
                assert ef is not None
                step = stream_rows(ef.dim * ef.item, self.max_memory)
                scores = torch.cat([(q @ b.to(q.device, q.dtype).T).cpu() for _, b in ef.blocks(step)], dim=1)
            prog.finish()
            return scores
        q = self._embed(At, Gt)
        n_train = bank.n_rows
        kk = min(n_train, k * self.rerank) if self.rerank else k
        prog = _Progress("nearest neighbours", q.shape[0], show_progress, None)
        idx, vals = self.nearest_neighbors.get_nearest_neighbors(q if proponents else -q, kk)
        prog.finish()
        idx = torch.as_tensor(idx).to(torch.int64)
        vals = torch.as_tensor(vals).to(q.dtype)  # an index may return float64 (annoy's Python floats)
        if not self.rerank:
            return KMostInfluentialResults(idx.cpu(), (vals if proponents else -vals).cpu())
        # exact rerank of the candidates from the cached factors
        cand = idx.to(self.device)
        A, G = bank.rows(cand)
        gg = torch.einsum("ncd,nkcd->nkc", Gt, G)
        aa = torch.einsum("ncd,nkcd->nkc", At, A)
        exact = (gg * aa * self._lr_tensor(A)).sum(-1)
        vals, pos = torch.topk(exact, min(k, exact.shape[1]), dim=1, largest=proponents)
        return KMostInfluentialResults(torch.gather(cand, 1, pos).cpu(), vals.cpu())
