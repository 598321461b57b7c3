"""The factor pass: one pass over the training data (each checkpoint loaded once) that fills a ``FactorBank``.

Three ways, chosen by ``_prepare_factors``: a complete store in ``cache_dir`` is read (no pass); the plain pass
keeps the factors in memory (no store, ``max_memory`` or ``factor_dtype``); the store pass checks each block,
casts it to ``factor_dtype``, appends it to the store (resuming one an earlier call left incomplete) and keeps it
in memory unless the factors are read from the store. Under torchrun each rank runs the store pass on its own rows
into a shard (``influence/_distributed.py``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from .. import _cache, _distributed
from .._base import _Progress
from .._batch import Batch
from .._files import remove_entry
from .._integrity import StoreDamaged
from .._store import FORMAT as STORE_FORMAT
from .._store import (
    FactorStore,
    StoreLock,
    StoreWriter,
    dtype_name,
    human,
    lock_store,
    store_error,
    store_folder,
)
from ._bank import FactorBank, _Kept, _row_norms
from ._capture import FactorCapture

EMPTY = "train_dataset is empty: there is nothing to compute influence against."


class FactorPass(FactorCapture):
    """Choosing and running the factor pass of ``TracInCPFast``: each pass returns a new bank, and
    ``_prepare_factors`` keeps it as ``self.factors_``."""

    _cache_kind = "fast"  # TracInCPFastRandProj reuses TracInCPFast's cached factors
    block_bytes = 256 << 20  # factors kept in host memory (or converted) go to the device in blocks of this size
    max_memory: int | None
    factor_dtype: torch.dtype | None
    factors_: FactorBank | None

    def _new_bank(self) -> FactorBank:
        return FactorBank(self.device, self.max_memory, self.factor_dtype, self.block_bytes)

    def _prepare_factors(self, show_progress: bool = False) -> FactorBank:
        """The training-set factors (``self.factors_``): read from a complete store in ``cache_dir``, else one
        pass (resuming a store); the same bank once they are there."""
        if self.factors_ is not None:
            return self.factors_
        group = _distributed.process_group(self.device)
        folder: Path | None = None
        expect: dict[str, Any] = {}  # empty: the plain path, no store, max_memory or factor_dtype
        if group is None and not (self.cache_dir is None and self.max_memory is None and self.factor_dtype is None):
            folder, expect = self._store_target()
        store = FactorStore.read(folder, expect, self._on_damage) if folder is not None else None
        if group is not None:
            bank = _distributed.sharded_pass(self, *group, show_progress)
        elif not expect:
            bank = self._memory_pass(show_progress)  # the plain path: exactly as without a store
        elif store is not None and store.complete:
            bank = self._adopt(store)
            if show_progress:
                _Progress("training factors (cache file)", store.rows, True, None).finish()
        else:
            self._probe_cache()  # a cache_dir that cannot be written: warn now, before the pass
            bank = self._store_pass(None if self._cache_unwritable is not None else folder, expect, show_progress)
        self.factors_ = bank
        return bank

    def _on_damage(self, e: StoreDamaged) -> None:
        self._warn(f"{e}: it is computed again", stacklevel=7)  # the user's call

    def _recover(self, e: StoreDamaged) -> None:
        """A read found ``e``: warn (naming the file) and make the next call compute the damaged part again: an
        embeddings file (``E-<tag>.*``) is removed and rebuilt; a factor file's store is truncated (under its
        lock) to its first damaged row, so that the pass resumes there, and the bank is dropped."""
        self._warn(f"{e}: it is computed again", stacklevel=4)  # the user's call, through locked
        if e.path.name.startswith("E-"):
            tag = e.path.name[2:].split(".")[0]
            for p in e.path.parent.glob(f"E-{tag}.*"):
                remove_entry(p)
            self._embeddings_damaged()
            return
        self.factors_ = None
        folder, expect = self._store_target()
        if folder is None or e.path.parent != folder:
            return
        with contextlib.suppress(OSError, ValueError):  # another writer holds it: the next read says so again
            lock, store = lock_store(folder, expect)
            try:
                if store is not None:
                    first = min([e.first_row, *(d.first_row for d in store.damaged())])
                    store.truncate(first)
            finally:
                lock.release()

    def _embeddings_damaged(self) -> None:
        """The embeddings file was damaged and removed (TracInCPFastRandProj rebuilds it)."""

    def _check_layer_once(self, state: dict, batch: Batch, merge: int) -> None:
        """The layer check, on the rows one forward may take (once per layer)."""
        if not self._layer_checked:
            self._measure_rows(state, batch, "training batch")
            self._check_layer(state, batch.split(self._rows(merge))[0])

    def _merge_rows(self) -> int:
        return self.gpu_rows if self.device.type == "cuda" else self.cpu_chunk

    def _memory_pass(self, show_progress: bool) -> FactorBank:
        bank = self._new_bank()
        with self._computing():
            states, _ = self._checkpoint_states(show_progress)
            kept: _Kept | None = None
            rows, where = 0, "device"
            prog = _Progress("training factors", self._n_train(), show_progress, self.progress_callback)
            try:
                merge = self._merge_rows()
                for offset, batch in self._train_batches(self._pass_rows(states[-1], merge)):
                    self._check_layer_once(states[-1], batch, merge)
                    # on a GPU, checked once after the pass: a check per batch would make the host wait for it
                    on_cpu = self.device.type == "cpu"
                    A, G = self._factors_of(
                        [batch], states, self.reduction_type, self.loss_fn, "training batch", on_cpu, offset, False
                    )
                    if kept is None:  # a GPU without room for all of them: keep them in host memory
                        bank.set_dims(A.shape[-1], G.shape[-1], A.dtype)
                        bank.n_ckpts = A.shape[1]
                        n = self._n_train()
                        where = "device" if n is None else self._place(bank, n, False)
                        # written into tensors of all the rows: no second copy from concatenating at the end
                        kept = _Kept(n, bank.target(where))
                    kept.add(offset, A, G, _row_norms(A, G))
                    rows = offset + A.shape[0]
                    prog.update(batch.n)
            finally:
                prog.close()
        if kept is None:
            raise ValueError(EMPTY)
        A, G, norms = kept.result(rows)
        if self.device.type != "cpu":
            self._check_factors(A, G, "training batch")
        return bank.keep(where, A, G, norms)

    # ------------------------------------------------------------------ the store (influence/_store.py)
    def _layer_key(self) -> str:
        return f"{self.final_fc_layer_name}|{self.reduction_type}"

    def _store_key(self) -> str:
        dtype = "" if self.factor_dtype is None else f"|factors={dtype_name(self.factor_dtype)}"
        return self._layer_key() + dtype

    def _store_target(self) -> tuple[Path | None, dict[str, Any]]:
        """The store folder (None without cache_dir) and what its manifest must say."""
        _, lrs = self._checkpoint_states()
        loss = self.loss_fn
        expect: dict[str, Any] = {
            "format": STORE_FORMAT,
            "kind": self._cache_kind,
            "layer": self.final_fc_layer_name,
            "loss": f"{type(loss).__module__}.{type(loss).__qualname__}|{self.reduction_type}",
            "learning_rates": [float(x) for x in lrs],
            "checkpoints": len(lrs),
        }
        if self.factor_dtype is not None:
            expect["dtype"] = dtype_name(self.factor_dtype)
        n = self._n_train()
        if n is not None:
            expect["rows"] = n
        if self.cache_dir is None:
            return None, expect
        fp = self._compute_fingerprint(self._store_key())
        expect["fingerprint"] = fp
        return store_folder(self.cache_dir, self._cache_kind, fp), expect

    def _place(self, bank: FactorBank, rows: int | None, has_store: bool) -> str:
        """Where factors of ``rows`` rows go (``FactorBank.place``): too big for memory without a store is a
        ValueError; host memory for a GPU is a warning (once)."""
        where = bank.place(rows, has_store)
        if where == "stream" and not has_store:
            assert rows is not None
            self._raise_too_big(bank, rows)
        note = bank.host_note(rows) if where == "host" and rows is not None else None
        if note is not None:
            self._warn(note, stacklevel=7)  # the user's fit() (or first query)
        return where

    def _raise_too_big(self, bank: FactorBank, rows: int) -> None:
        why = (
            f"cache_dir {str(self.cache_dir)!r} cannot be written ({self._cache_unwritable})"
            if self.cache_dir is not None
            else "no cache_dir was given"
        )
        raise ValueError(
            f"the training-set factors take {human(bank.nbytes(rows))} ({rows} rows x {bank.n_ckpts} "
            f"checkpoints x {sum(bank.dims)} values in {dtype_name(bank.factor_dtype)}), more than "
            f"max_memory={self.max_memory!r} ({human(self.max_memory or 0)}), and {why} to keep them on disk. "
            "Pass cache_dir= a writable folder with room for them (they are then read block by block), a larger "
            "max_memory, or factor_dtype=torch.bfloat16 (half the bytes)."
        )

    def _adopt(self, store: FactorStore) -> FactorBank:
        """A bank on a complete store: loaded where ``_place`` says, or streamed."""
        self._note_reuse()
        bank = self._new_bank()
        bank.describe(store)
        return bank.adopt(store, self._place(bank, store.rows, True))

    def _note_reuse(self) -> None:
        """Factors reused from the store for training data recognised by a sample of its items: say so (once),
        unless ``data_version`` names the data."""
        if self._data_sampled and self.data_version is None:
            self._warn(_cache.sampled_note(self.train_dataloader.dataset), stacklevel=7)  # the user's call

    def _probe_dims(self, bank: FactorBank, states: list[dict]) -> bool:
        """Learn dim(a), dim(g) and the dtype from a forward of a few training rows (False: nothing to probe)."""
        probe = self._probe_batch()
        if probe is None:
            return False
        g, a = self._chunk_factors(states[:1], probe, self.reduction_type, self.loss_fn, "training batch", self._net)
        bank.set_dims(a.shape[-1], g.shape[-1], a.dtype)
        return True

    def _store_pass(
        self, folder: Path | None, expect: dict[str, Any], show_progress: bool, rows: tuple[int, int] | None = None
    ) -> FactorBank:
        """The factor pass when a store, ``max_memory`` or ``factor_dtype`` is involved: each block is checked,
        cast to ``factor_dtype``, appended to the store (resuming it) and kept in memory unless streamed.
        ``rows=(start, stop)``: only those training rows, into the store only (a torchrun rank's shard)."""
        with self._computing():
            states, _ = self._checkpoint_states(show_progress)
            run = _StoreRun(self, folder, expect, rows, len(states))
            found = run.open()
            if found is not None:
                return self._adopt(found)
            run.resume(states)
            prog = _Progress("training factors", run.n_train, show_progress, self.progress_callback)
            try:
                run.keep_stored()
                merge = self._merge_rows()
                source = self._train_batches(self._pass_rows(states[-1], merge), rows)
                for offset, batch, n in run.batches(source, prog):
                    self._check_layer_once(states[-1], batch, merge)
                    at = run.lo + offset
                    A, G = self._factors_of(
                        [batch], states, self.reduction_type, self.loss_fn, "training batch", True, at, False
                    )
                    run.add(A, G, offset, n)
                    prog.update(n)
                run.finish()
            except BaseException:
                run.keep_written()
                raise
            finally:
                prog.close()
                run.close()
        return run.result()

    def _stored_rows(self, store: FactorStore, rows: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        fds = store._open()
        try:
            A, G = store.read_rows(fds, 0, rows)
        finally:
            for fd in fds:
                os.close(fd)
        return A, G, store.norms()[:rows]

    def _new_store(self, bank: FactorBank, folder: Path, expect: dict[str, Any], where: str) -> StoreWriter | None:
        """A new store for this pass (the dims are known); None when it cannot be written (warned)."""
        meta = {
            **expect,
            "rows": expect.get("rows"),
            "dims": {"A": bank.dims[0], "G": bank.dims[1]},
            "dtype": dtype_name(bank.factor_dtype),
            "norm_dtype": dtype_name(bank.compute_dtype),
        }
        try:
            return StoreWriter.create(folder, meta)
        except OSError as e:
            if where == "stream":
                raise store_error(folder, e, 0) from e
            with contextlib.suppress(OSError):
                shutil.rmtree(folder)  # nothing in it worth keeping
            self._store_unwritable(folder, e)
            return None

    def _store_failed(self, writer: StoreWriter, e: OSError, where: str) -> None:
        """Writing the store failed: stop with an error naming it when the factors live only there, else warn
        (once) and go on in memory. Every block recorded in the manifest is kept for a later call."""
        with contextlib.suppress(OSError):
            writer.commit()  # the blocks appended completely before
        writer.close()
        store = writer.store
        if where == "stream":
            raise store_error(store.folder, e, store.rows_complete) from e
        if store.rows_complete == 0:
            with contextlib.suppress(OSError):
                shutil.rmtree(store.folder)
        self._store_unwritable(store.folder, e)

    def _store_unwritable(self, folder: Path, e: OSError) -> None:
        self._cache_unwritable = f"{type(e).__name__}: {e}"
        self._warn(_cache.not_saved_message(self.cache_dir or folder, self._cache_unwritable), stacklevel=5)


class _StoreRun:
    """One store pass: its store's lock and writer, where the factors go, what is kept in memory. The steps:
    ``open`` (a complete store: nothing to compute) and ``resume`` (an incomplete one: the rows written), then
    per block ``add`` (``write`` it to the store, ``keep`` it in memory), and ``finish`` / ``result``."""

    def __init__(
        self, eng: FactorPass, folder: Path | None, expect: dict[str, Any], rows: tuple[int, int] | None, C: int
    ) -> None:
        self.eng, self.folder, self.expect = eng, folder, expect
        self.shard = rows is not None  # a torchrun rank's rows, into the store only
        self.lo: int = 0 if rows is None else rows[0]
        self.hi: int | None = None if rows is None else rows[1]
        self.n_train = eng._n_train() if self.hi is None else self.hi - self.lo
        self.bank = eng._new_bank()
        self.bank.n_ckpts = C
        self.where: str | None = None
        self.lock: StoreLock | None = None
        self.writer: StoreWriter | None = None
        self.kept: _Kept | None = None
        self.done = self.total = 0

    def place(self, has_store: bool) -> str:
        return "stream" if self.shard else self.eng._place(self.bank, self.n_train, has_store)

    # ------------------------------------------------------------------ resume
    def open(self) -> FactorStore | None:
        """Lock the store; a complete one is returned (unlocked) for use as it is."""
        if self.folder is None:
            return None
        try:
            on_damage = self.eng._on_damage if self.shard else None  # (else warned by _prepare_factors)
            self.lock, found = lock_store(self.folder, self.expect, on_damage)
        except OSError as e:
            if self.shard:  # a rank's shard lives only in the store
                raise store_error(self.folder, e, 0) from e
            self.eng._store_unwritable(self.folder, e)
            return None
        if found is not None and found.complete:
            self.release()
            return found
        if found is not None and found.rows_complete:
            self.writer = StoreWriter(found)
            self.bank.set_dims(found.da, found.dg, found.norm_dtype)
        return None

    def resume(self, states: list[dict]) -> None:
        """Where the factors go, when known before the first block: a store resumed, or (``max_memory``) a
        probe's dims (too big without a store is said before the pass)."""
        if self.writer is None and self.eng.max_memory is not None and self.eng._probe_dims(self.bank, states):
            self.where = self.place(self.lock is not None)
        if self.writer is not None:
            self.eng._note_reuse()
            self.done = self.writer.rows_written
            self.where = self.place(True)

    def keep_stored(self) -> None:
        """Resumed in memory: the rows stored already, as stored."""
        if self.writer is not None and self.where != "stream":
            self.kept = _Kept(self.n_train, self.bank.target(self.where or "device"))
            self.kept.add(0, *self.eng._stored_rows(self.writer.store, self.done))

    def batches(self, source: Iterator[tuple[int, Batch]], prog: _Progress) -> Iterator[tuple[int, Batch, int]]:
        """``(offset, batch, rows)`` still to compute: within the shard's rows (offsets then count from its
        start) and after the rows the store holds already."""
        lo, hi = self.lo, self.hi
        for offset, batch in source:
            n = batch.n
            if hi is not None:  # a rank's rows only
                if offset >= hi:
                    return
                if offset + n <= lo:
                    continue
                a, b = max(lo, offset) - offset, min(hi, offset + n) - offset
                batch, n, offset = batch.rows(a, b), b - a, offset + a - lo
            self.total = offset + n
            if self.total <= self.done:  # stored already
                prog.update(n)
                continue
            if offset < self.done:
                batch = batch.rows(self.done - offset, n)
                prog.update(self.done - offset)
                n, offset = self.total - self.done, self.done
            yield offset, batch, n

    # ------------------------------------------------------------------ write / keep
    def add(self, A: torch.Tensor, G: torch.Tensor, offset: int, n: int) -> None:
        bank = self.bank
        if self.where is None:
            bank.set_dims(A.shape[-1], G.shape[-1], A.dtype)
            self.where = self.place(self.lock is not None)
        norms = _row_norms(A, G)
        A, G = bank.cast(A, G, self.lo + offset)
        self.write(A, G, norms)
        if self.where != "stream":
            self.keep(A, G, norms, offset, n)

    def write(self, A: torch.Tensor, G: torch.Tensor, norms: torch.Tensor) -> None:
        """Append the block to the store (created on the first block); a failure goes on in memory (warned) or,
        for streamed factors, is an error."""
        assert self.where is not None
        if self.lock is not None and self.writer is None:
            assert self.folder is not None
            self.writer = self.eng._new_store(self.bank, self.folder, self.expect, self.where)
            if self.writer is None:
                self.release()
        if self.writer is None:
            return
        try:
            self.writer.append(A, G, norms)
            self.writer.maybe_commit()
        except OSError as e:
            self.eng._store_failed(self.writer, e, self.where)
            self.writer = None
            self.release()  # written no more: the pass goes on in memory

    def keep(self, A: torch.Tensor, G: torch.Tensor, norms: torch.Tensor, offset: int, n: int) -> None:
        """Keep the block in memory; without a length or a store, ``max_memory`` is checked as the rows come."""
        if self.kept is None:
            self.kept = _Kept(self.n_train, self.bank.target(self.where or "device"))
        self.kept.add(offset, A, G, norms)
        cap = self.eng.max_memory
        if self.n_train is None and cap is not None and self.writer is None and self.bank.nbytes(offset + n) > cap:
            self.eng._raise_too_big(self.bank, offset + n)

    # ------------------------------------------------------------------ the end
    def finish(self) -> None:
        if self.total == 0:
            raise ValueError(EMPTY)
        if self.writer is not None:
            assert self.where is not None
            try:
                self.writer.commit(rows=self.total)
            except OSError as e:
                self.eng._store_failed(self.writer, e, self.where)
                self.writer = None

    def keep_written(self) -> None:
        """The pass failed: keep every block written completely (the next call resumes there)."""
        if self.writer is not None:
            with contextlib.suppress(OSError):
                self.writer.commit()

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.release()

    def result(self) -> FactorBank:
        if self.where == "stream":
            assert self.writer is not None
            return self.bank.keep_store(self.writer.store)
        assert self.kept is not None and self.where is not None
        A, G, norms = self.kept.result(self.total)
        return self.bank.keep(self.where, A, G, norms)
