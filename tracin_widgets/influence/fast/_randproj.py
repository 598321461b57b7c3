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
from ._fast import TracInCPFast


class TracInCPFastRandProj(TracInCPFast):
    """TracInCPFast with an embedding index for fast top-k queries, with Captum 0.9's ``TracInCPFastRandProj`` API.

    Each example is embedded as ``concat_c sqrt(lr_c) * (g_c P_g) outer (a_c P_a)`` (``g``, ``a``: the factors of
    ``TracInCPFast``; ``P``: random projections, or none), so that the dot product of two embeddings is their
    (approximate) influence score. The training embeddings are put in ``nearest_neighbors`` in ``__init__``
    (one pass over the training data, as in Captum). ``self_influence`` is exact (from the factors).

    Args:
        model: the trained ``nn.Module`` (an ``nn.DataParallel`` / ``DistributedDataParallel`` wrapper is fine: the
            module inside is computed on). It is called as ``model(*batch[:-1])`` and must return a tensor whose
            first dimension is the batch. Scores are computed in eval mode, and after every call the model is as
            it was given (weights, train/eval flags, ``requires_grad``, device).
        final_fc_layer: the model's last fully-connected layer, as the module (``model.fc3``) or its name
            (``"fc3"``); ``find_final_linear_layer(model, x)`` finds it. It must run exactly once per forward
            pass. An unknown name is a ``ValueError`` suggesting close ones.
        train_dataset: the training data: a ``Dataset`` whose items are ``(*features, label)``, or a ``DataLoader``
            of such batches that yields every row once, in order (no shuffling sampler, no ``drop_last``). Other
            forms (a tuple ``(X, Y)``, dict items) are a ``TypeError`` at construction saying how to wrap them.
        checkpoints: the checkpoint files: a list of paths (natural-sorted, as Captum), one file, or a folder
            (every regular, non-hidden file in it, whatever its extension). Each is loaded once per instance.
        checkpoints_load_func: ``f(model, path) -> lr``: loads the checkpoint at ``path`` into ``model`` and
            returns its learning rate (a finite number >= 0; checked as each loads). Default None: a state dict,
            or a dict holding one under ``"model_state_dict"`` / ``"state_dict"`` (learning rate from its
            ``"learning_rate"`` or ``"lr"`` entry, else 1.0), loaded with ``torch.load(weights_only=weights_only)``.
        loss_fn: the training loss ``loss_fn(outputs, labels)`` with ``reduction="sum"`` or ``"mean"`` (the
            gradient is then multiplied back by the batch size, as Captum); required (None is a ``ValueError``).
            A loss without a ``reduction`` attribute is assumed to sum, with a ``TracInWarning``.
        batch_size: rows per batch when ``train_dataset`` is a Dataset (ignored for a DataLoader). Default None
            means 512 (Captum's default is 1). Scores do not depend on it: the rows per forward pass follow
            the measured activation memory.
        test_loss_fn: the loss of the test examples in ``influence`` and ``compute_intermediate_quantities``,
            with the same rules (default None: ``loss_fn``). ``self_influence(inputs)`` uses ``loss_fn``.
        vectorize: accepted for Captum compatibility (Captum's jacobian switch); the gradients here need no
            jacobian, so it changes nothing (default False).
        nearest_neighbors: the index answering top-k queries: a ``NearestNeighbors`` (``setup(data)``,
            ``get_nearest_neighbors(query, k)``). Default None: ``AnnoyNearestNeighbors()`` (approximate);
            ``ExactNearestNeighbors()`` searches exactly. Anything else is a ``TypeError``. With a ``cache_dir``
            the training embeddings are also written into the store (``E-<tag>.bin``, the tag a hash of the store,
            ``projection_dim``, ``seed`` and the projection), and an ``AnnoyNearestNeighbors`` is built on disk
            there (Annoy's ``on_disk_build``, fed block by block) and memory-mapped by later instances with the
            same settings instead of being rebuilt; other indexes get ``setup`` with the embeddings, memory-mapped
            from that file when the factors are streamed (``max_memory``).
        projection_dim: None (the default): nothing is projected, an embedding has ``dim(g) * dim(a)`` entries
            per checkpoint and its dot products are the exact scores. A positive int: when ``dim(g) * dim(a)``
            is larger, ``g`` and ``a`` are each projected to ``int(sqrt(projection_dim))`` dimensions (at most
            their own) by Gaussian matrices: a smaller index, approximate scores. Anything else is a
            ``ValueError``.
        seed: the seed of the projection matrices' own ``torch.Generator`` (default 0; the global RNG is left
            alone). Used only when something is projected.
        rerank: keyword-only, default 50: ``influence(k=...)`` retrieves ``rerank * k`` candidates from the index
            and scores them exactly from the cached factors, so the returned scores are exact and the recall is
            much higher than the index alone gives. None returns the index's own (approximate) scores, as
            Captum does. Anything but a positive int or None is a ``ValueError``.
        device: where to compute: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, a ``torch.device`` (default None: the
            model's device). Checked against this machine at construction (a missing GPU is a ``ValueError``);
            the model is moved there for each call and back afterwards, and batches are moved for you.
        num_workers: ``DataLoader`` workers reading ``train_dataset`` (not used when it is a DataLoader). Default
            None: none on the CPU, for a ``TensorDataset`` (sliced directly) or a recognised torchvision CIFAR
            dataset (read vectorised); on a GPU up to one per spare core (at most 16), trimmed to
            ``sqrt(read time / 20 ms)`` after timing a few items. Scores do not depend on it.
        progress_callback: ``f(phase: str, done: int, total: int)``, called as each phase of a long computation
            advances (``total`` is -1 when unknown). Raising from it (e.g. ``tracin_widgets.influence.Cancelled``)
            aborts cleanly: the model is restored and nothing partial is used as complete (a ``cache_dir`` store
            keeps the blocks written so far, and the next call resumes from them). Default None.
        cache_dir: a folder where the training-set factors (shared by ``TracInCPFast`` and
            ``TracInCPFastRandProj``) are written during the pass, as a store (a folder of plain row-major files
            and a ``manifest.json``, see ``influence/_store.py``), and reused by later instances (default None:
            kept in memory only). An interrupted pass (an exception, ``Cancelled``, Ctrl-C, a killed job) resumes
            from the last block written; a second process writing the same store is refused. A store is reused
            only when the loss (type and settings), the layers, the checkpoint files' contents and learning rates,
            ``checkpoints_load_func``, the model's architecture and precision, the device type, ``data_version``
            and the training data are all the same. A folder that cannot be written gives a ``TracInWarning``
            before the pass (results stay in memory); the checkpoints folder itself is a ``ValueError``.
            Under ``torchrun`` (a ``torch.distributed`` default process group, or torchrun's ``WORLD_SIZE``,
            ``RANK`` and ``LOCAL_RANK`` environment, in which case the default group is initialised here with
            backend ``"nccl"`` on a CUDA device, ``"gloo"`` on the CPU; give each rank its own GPU with
            ``device=f"cuda:{LOCAL_RANK}"``) the pass is split by rank over contiguous row ranges, each rank
            writing its rows into its own shard next to the store; rank 0 joins the shards into the store (the
            same files as one process writes) and every rank then reads all of it. ``cache_dir`` is then
            required, a folder every rank shares: None is a ``ValueError`` (every rank computing everything
            would multiply the work, not share it). Every rank must make the call that needs the factors
            (``fit()`` first is simplest): the ranks wait for each other there.
        weights_only: passed to ``torch.load`` by the default ``checkpoints_load_func`` (default True: only
            tensors and plain containers are unpickled). Pass False only for checkpoint files you trust.
        data_version: any string naming the version of the training data (default None), part of the cache
            key. Array-backed datasets (``TensorDataset``, a ``Subset`` of one, torchvision's CIFAR/MNIST) are
            hashed in full; any other dataset only by its type, length and 24 items spread over it, so change
            ``data_version`` when its contents change (a dataset without a length is reused only with one).
        max_memory: the most memory the training-set factors may take: bytes as an int, or a string such as
            ``"512MB"`` or ``"10GiB"`` (MB/GB: powers of 1000, MiB/GiB: of 1024, as in Hugging Face accelerate).
            Factors larger than that stay in the ``cache_dir`` store and every query reads it block by block (same
            results, at disk speed); without a ``cache_dir`` that is a ``ValueError`` before the pass. Default
            None: on the compute device when they take less than 3/4 of a GPU's free memory (half of the
            CPU's), else in host memory, else (with a ``cache_dir``) read from the store.
        factor_dtype: the dtype the factors are kept in: None (the default: as computed, ``torch.float32`` for a
            float32 model, Captum's numbers), ``torch.float32``, or ``torch.bfloat16`` / ``torch.float16`` (half
            the memory, disk and traffic; products still accumulate in float32; scores are approximate: with
            bfloat16 within 0.25 % of each test row's largest score and the same top-10 on the tests' models and
            the tutorial's, see ``benchmarks/probes/factor_dtype.py``). Self-influence stays exact (its norms are
            kept in the computation dtype). Anything else is a ``ValueError``.
        label_key: the key of a dict batch that holds the labels (default None: ``"labels"``, else ``"label"``),
            as for ``TracInCPFast``.
        output_key: what of a model output that is not a tensor is differentiated (default None: ``"logits"``),
            as for ``TracInCPFast``.
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
        store = FactorStore.read(folder, expect) if folder is not None else None
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
