"""The factor pass split over the ranks of ``torchrun`` (``torch.distributed``), for TracInCPFast/RandProj.

Each rank computes a contiguous range of training rows into its own *shard*: a complete store of its rows
(``<store>.rows-<start>-<stop>``, with its own manifest and lock, so it resumes after an interruption exactly as
a single-process store and never blocks the other ranks). After the ranks agree that every shard is complete,
rank 0 joins the shards into the store (the same files, byte for byte, as a single-process pass writes: a
copy, in the kernel where it can, under the store's own lock), records it complete, and removes the shards;
every rank then reads the whole store. Queries afterwards run in any process over the whole store, or across
the ranks (``distributed=True``: each rank scores its own rows, ``gather_columns`` joins the parts, and every
local step is followed by ``agree`` so that a rank's error or a different call never leaves the others waiting).

Why shards and a copy rather than every rank writing its rows into one preallocated store: each shard is an
ordinary store, so the resume (a manifest recording the rows complete, one prefix per store) and the lock (one
writer per store) hold per rank unchanged; one shared store would need per-rank progress records and a lock that
several writers share. The price is disk: the store and the shards coexist until the join is complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import BatchSampler, DataLoader, IterableDataset, SequentialSampler
from torch.utils.data._utils.collate import default_collate

from ._files import open_file, remove_entry
from ._store import FactorStore, StoreLock

if TYPE_CHECKING:
    from ._base import KMostInfluentialResults
    from .fast._bank import FactorBank
    from .fast._fast import TracInCPFast
    from .fast._pass import FactorPass

TORCHRUN_ENV = ("WORLD_SIZE", "RANK", "LOCAL_RANK")
# the longest a rank of a group initialised here waits for the others at one collective (the slowest rank's part
# of the pass included); a rank's error reaches the others at once through ``agree``
INIT_TIMEOUT = timedelta(minutes=60)


def process_group(device: torch.device) -> tuple[int, int] | None:
    """``(rank, world size)`` when this process is one of several ranks of ``torch.distributed``: a default
    process group the user initialised, or torchrun's environment (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``),
    in which case the default group is initialised here (backend ``"nccl"`` on CUDA devices, ``"gloo"`` on
    the CPU). None for a single process."""
    import torch.distributed as dist

    if not dist.is_available():
        return None
    if not dist.is_initialized():
        if not all(k in os.environ for k in TORCHRUN_ENV) or int(os.environ["WORLD_SIZE"]) <= 1:
            return None
        if device.type == "cuda" and device.index is not None:
            torch.cuda.set_device(device)  # NCCL's collectives run on the current device: this rank's
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=INIT_TIMEOUT)
    world = dist.get_world_size()
    return None if world <= 1 else (dist.get_rank(), world)


def _flag_device(device: torch.device) -> torch.device:
    import torch.distributed as dist

    if dist.get_backend() != "nccl":
        return torch.device("cpu")
    return device if device.type == "cuda" else torch.device("cuda", torch.cuda.current_device())


def all_ok(ok: bool, device: torch.device) -> bool:
    """True when every rank passes ``ok=True`` (also a barrier)."""
    import torch.distributed as dist

    flag = torch.tensor([1 if ok else 0], dtype=torch.int32, device=_flag_device(device))
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def failures(error: BaseException | None, device: torch.device, limit: int = 2000) -> list[tuple[int, str]]:
    """``(rank, "Type: message")`` of every rank whose ``error`` is not None, on every rank: the messages (at most
    ``limit`` bytes each) ``all_gather``-ed as uint8 tensors padded to the longest (gloo and NCCL alike)."""
    import torch.distributed as dist

    text = b"" if error is None else f"{type(error).__name__}: {error}".encode()[:limit]
    dev, world = _flag_device(device), dist.get_world_size()
    size = torch.tensor([len(text)], dtype=torch.int64, device=dev)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    width = max(1, *(int(x.item()) for x in sizes))
    mine = torch.zeros(width, dtype=torch.uint8)
    mine[: len(text)] = torch.frombuffer(bytearray(text), dtype=torch.uint8) if text else mine[:0]
    mine = mine.to(dev)
    parts = [torch.zeros_like(mine) for _ in range(world)]
    dist.all_gather(parts, mine)
    return [
        (r, bytes(parts[r][: int(n.item())].cpu().tolist()).decode(errors="replace"))
        for r, n in enumerate(sizes)
        if int(n.item())
    ]


def all_equal(key: str, device: torch.device) -> bool:
    """Does every rank hold the same hexadecimal ``key`` (its first 60 bits compared)?"""
    import torch.distributed as dist

    value = int(key[:15], 16)
    lo = torch.tensor([value], dtype=torch.int64, device=_flag_device(device))
    hi = lo.clone()
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    return int(lo.item()) == int(hi.item()) == value


def agree(error: BaseException | None, key: str | None, device: torch.device, call: str) -> None:
    """The agreement step of a call every rank makes (the same collectives on every rank, whatever happened on
    it, so a rank's own error never leaves the others waiting): raise on every rank when any rank failed (its
    own error on that rank, a ``RuntimeError`` on the others) or, with ``key``, when the ranks' keys differ."""
    if not all_ok(error is None, device):
        failed = failures(error, device)
        if error is not None:
            raise error
        said = "; ".join(f"rank {r}: {m}" for r, m in failed) or "see its error"
        raise RuntimeError(f"another rank of torch.distributed failed in {call} ({said}); so does this one.")
    if key is not None and not all_equal(key, device):
        raise ValueError(
            f"the ranks of torch.distributed (torchrun) made different {call} calls with distributed=True: every "
            "rank must make the same call, with the same arguments and the same inputs, once each rank has the "
            "training-set factors or none has (a rank that queried alone before computed them alone)."
        )


def call_key(*parts: Any) -> str:
    """A hexadecimal digest of a call's arguments (tensors by dtype, shape and bytes; lists and tuples by their
    items; anything else by its ``repr``), compared across the ranks by ``agree``."""
    h = hashlib.sha256()

    def add(x: Any) -> None:
        if isinstance(x, torch.Tensor):
            t = x.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}|".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(x, (list, tuple)):
            h.update(f"L{len(x)}|".encode())
            for y in x:
                add(y)
        else:
            h.update(f"R{x!r}|".encode())

    add(parts)
    return h.hexdigest()


def gather_columns(local: torch.Tensor, widths: list[int], device: torch.device) -> torch.Tensor:
    """Every rank's ``local`` (``(n, widths[rank], ...)``) joined along dim 1 in rank order, on every rank (CPU):
    an ``all_gather`` of tensors padded to the widest, no pickled objects (NCCL-safe)."""
    import torch.distributed as dist

    dev = _flag_device(device)
    padded = torch.zeros(local.shape[0], max(widths), *local.shape[2:], dtype=local.dtype, device=dev)
    padded[:, : local.shape[1]] = local
    parts = [torch.empty_like(padded) for _ in widths]
    dist.all_gather(parts, padded)
    return torch.cat([p[:, :w] for p, w in zip(parts, widths, strict=True)], dim=1).cpu()


def row_range(rows: int, rank: int, world: int) -> tuple[int, int]:
    """The contiguous rows of ``rank``: ``rows`` split as evenly as possible, in rank order."""
    return rank * rows // world, (rank + 1) * rows // world


def rank_loader(loader: DataLoader, start: int, stop: int) -> tuple[DataLoader, int]:
    """A loader that reads only rows ``start:stop`` of ``loader``'s rows (a rank's range), and the first row it
    yields.

    A plain batched, sequential loader over a map-style dataset (what the engine builds around a Dataset, and
    what a user's ``DataLoader(dataset, batch_size=B)`` is) becomes the same loader (same dataset, batch size,
    collate function, workers, pinning) over the indices ``start:stop``. With a ``collate_fn`` other than
    torch's default, whose output may depend on the rows batched together (e.g. padding to the longest), the
    range is widened to the loader's batch boundaries (at most ``B - 1`` more rows each side) so every batch
    holds the same rows as in a single-process pass. Anything else (an ``IterableDataset``, an unbatched loader)
    is ``loader`` itself from row 0: the rows before ``start`` are then read and skipped."""
    ds, bs = loader.dataset, loader.batch_size
    if (
        isinstance(ds, IterableDataset)
        or bs is None
        or type(loader.sampler) is not SequentialSampler
        or type(loader.batch_sampler) is not BatchSampler
        or loader.drop_last
    ):
        return loader, 0
    if loader.collate_fn is not default_collate:
        start, stop = start // bs * bs, min(len(ds), -(-stop // bs) * bs)  # type: ignore[arg-type]
    extra: dict[str, Any] = {}
    if loader.num_workers > 0:
        extra["prefetch_factor"] = loader.prefetch_factor
    if hasattr(loader, "in_order"):  # torch >= 2.6
        extra["in_order"] = loader.in_order
    sub = DataLoader(
        ds,
        batch_size=bs,
        sampler=range(start, stop),
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        timeout=loader.timeout,
        worker_init_fn=loader.worker_init_fn,
        multiprocessing_context=loader.multiprocessing_context,
        generator=loader.generator,
        persistent_workers=loader.persistent_workers,
        pin_memory_device=loader.pin_memory_device,
        **extra,
    )
    return sub, start


def shard_target(folder: Path, expect: dict[str, Any], start: int, stop: int) -> tuple[Path, dict[str, Any]]:
    """The shard folder of rows ``start:stop`` and what its manifest must say."""
    return folder.with_name(f"{folder.name}.rows-{start}-{stop}"), {
        **expect,
        "rows": stop - start,
        "shard": [start, stop],
    }


def _copy(src: int, dst: int, nbytes: int) -> None:
    """Append ``nbytes`` from the start of ``src`` to ``dst`` (both file descriptors at their positions)."""
    left = nbytes
    with contextlib.suppress(OSError, AttributeError):  # copy_file_range: Linux, and not across every filesystem
        while left:
            n = os.copy_file_range(src, dst, left)
            if n == 0:
                break
            left -= n
    while left:
        chunk = os.read(src, min(left, 64 << 20))
        if not chunk:
            raise OSError(f"a factor store shard is shorter than its manifest says ({left} bytes missing)")
        view = memoryview(chunk)
        while view:
            view = view[os.write(dst, view) :]
        left -= len(chunk)


def join_shards(folder: Path, expect: dict[str, Any], shards: list[tuple[Path, dict[str, Any]]]) -> None:
    """Rank 0: join the complete shards (in row order) into the store in ``folder``, then remove them."""
    stores = []
    for path, want in shards:
        store = FactorStore.read(path, want)
        if store is None or not store.complete:
            raise ValueError(
                f"the factor store shard {str(path)!r} of rows {want['shard'][0]}:{want['shard'][1]} is missing or "
                "incomplete after every rank finished its pass (cache_dir must be one folder that every rank "
                "shares, e.g. on a shared filesystem when the ranks run on several machines)."
            )
        stores.append(store)
    folder.mkdir(parents=True, exist_ok=True)
    lock = StoreLock(folder)
    lock.acquire()
    try:
        found = FactorStore.read(folder, expect)
        if found is None or not found.complete:
            for p in folder.iterdir():
                if p.name != ".lock":
                    remove_entry(p)  # a link removed itself, never what it points to
            meta = {k: v for k, v in stores[0].meta.items() if k != "shard"}
            rows = sum(s.rows for s in stores)
            store = FactorStore(
                folder, {**meta, "rows": expect.get("rows", rows), "rows_complete": 0, "complete": False}
            )
            store.write_manifest()
            for i, (path, nb) in enumerate(store.files()):
                fd = open_file(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)  # never through a link
                try:
                    for s in stores:
                        src = open_file(s.files()[i][0], os.O_RDONLY)
                        try:
                            _copy(src, fd, s.rows * nb)
                        finally:
                            os.close(src)
                    os.fsync(fd)
                finally:
                    os.close(fd)
            store.meta = {**store.meta, "rows_complete": rows, "rows": rows, "complete": True}
            store.write_manifest()
    finally:
        lock.release()
    for path, _ in shards:
        with contextlib.suppress(OSError):
            remove_entry(path)


# ---------------------------------------------------------------------------------------------------------------------
# the factor pass and the queries of TracInCPFast over the ranks (``_base`` imports this module: its names are
# imported where they are used)
# ---------------------------------------------------------------------------------------------------------------------
def _joined_store(eng: FactorPass, folder: Path, expect: dict[str, Any], rank: int, world: int, show: bool) -> None:
    """Each rank's rows into its shard, then rank 0 joins the shards into the store in ``folder``."""
    n = expect["rows"]
    shards = [shard_target(folder, expect, *row_range(n, r, world)) for r in range(world)]
    start, stop = row_range(n, rank, world)
    error: BaseException | None = None
    try:
        if stop > start:
            eng._store_pass(shards[rank][0], shards[rank][1], show, rows=(start, stop))  # this rank's rows only
    except Exception as e:
        error = e
    agree(error, None, eng.device, "the factor pass (the rows done are kept)")
    if rank == 0:
        try:
            join_shards(folder, expect, [s for s in shards if s[1]["rows"] > 0])
        except Exception as e:
            error = e
    agree(error, None, eng.device, "joining the factor store shards")


def sharded_pass(eng: FactorPass, rank: int, world: int, show_progress: bool) -> FactorBank:
    """Under torchrun: this rank's rows into its shard, rank 0 joins the shards into the store, every rank then
    reads the whole store (a bank on it)."""
    from ._base import _Progress

    if eng.cache_dir is None:
        raise ValueError(
            f"this process is rank {rank} of {world} of torch.distributed (torchrun), which splits the factor "
            "pass over the ranks through a store, but cache_dir is None: pass cache_dir= a folder that every "
            "rank shares (the ranks write their rows there and each then reads them all), or run the engine "
            "in a single process."
        )
    error: Exception | None = None
    try:
        folder, expect = eng._store_target()  # every checkpoint loaded, the cache key computed
    except Exception as e:
        error = e
    agree(error, None, eng.device, "loading the checkpoints and the training data before the factor pass")
    assert folder is not None
    if not all_equal(expect["fingerprint"], eng.device):
        raise ValueError(
            "the ranks of torch.distributed (torchrun) disagree on the training-set factors' cache key: every "
            "rank must build the engine with the same model, checkpoints, loss, layer, training data, "
            "data_version, factor_dtype and cache_dir."
        )
    if expect.get("rows") is None:
        raise ValueError(
            "under torch.distributed (torchrun) the factor pass is split by rows, so train_dataset must have a "
            "length (len(train_dataset)); an IterableDataset cannot be split: run it in a single process."
        )
    store = FactorStore.read(folder, expect)
    if store is None or not store.complete:
        _joined_store(eng, folder, expect, rank, world, show_progress)
        store = FactorStore.read(folder, expect)
        if store is None or not store.complete:
            raise ValueError(
                f"the factor store {str(folder)!r} joined by rank 0 cannot be read by rank {rank}: cache_dir "
                "must be one folder that every rank shares (e.g. on a shared filesystem across machines)."
            )
    bank = eng._adopt(store)
    if show_progress:
        _Progress("training factors (cache file)", store.rows, True, None).finish()
    return bank


def rank_widths(bank: FactorBank, world: int, k: int | None) -> tuple[list[tuple[int, int]], list[int]]:
    """Each rank's contiguous training rows and the width of its part of a result (``k``: of its top-k)."""
    ranges = [row_range(bank.n_rows, r, world) for r in range(world)]
    return ranges, [b - a if k is None else min(k, b - a) for a, b in ranges]


def _local_scores(
    eng: TracInCPFast, bank: FactorBank, span: tuple[int, int], inputs: Any, batches: list[tuple], k: Any, pro: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's score columns (``k`` None) or its top-k ``(values, indices)`` over the training rows ``span``."""
    from ._base import merge_topk

    At, Gt = eng._test_factors(inputs, batches=batches)
    empty = torch.empty(At.shape[0], 0, dtype=bank.compute_dtype, device=eng.device)
    if k is None:
        parts = [sc for _s, sc in eng._score_chunks(bank, At, Gt, span)]
        return (torch.cat(parts, dim=1) if parts else empty), empty.long()
    best = None
    for s, sc in eng._score_chunks(bank, At, Gt, span):
        best = merge_topk(best, sc, s, k, largest=pro)
    return best if best is not None else (empty, empty.long())


def influence_across_ranks(
    eng: TracInCPFast, rank: int, world: int, inputs: Any, k: Any, proponents: Any, show_progress: bool
) -> torch.Tensor | KMostInfluentialResults:
    """``influence(distributed=True)``: each rank scores its contiguous training rows; the local top-k (or
    score columns) of every rank are joined with all_gather, so every rank returns the whole result. Every
    local step is followed by an agreement step (``agree``)."""
    from ._base import KMostInfluentialResults, check_k, check_proponents

    error: Exception | None = None
    batches: list[tuple] = []
    key = ""
    try:
        k = check_k(k)
        proponents = check_proponents(proponents)
        batches = eng._test_batches(inputs, show_progress=show_progress)
        key = call_key("influence", k, proponents, eng.factors_ is not None, batches)
    except Exception as e:
        error = e
    agree(error, key, eng.device, "influence")
    bank = eng._prepare_factors(show_progress)  # its own collectives when the factors are not there yet
    ranges, widths = rank_widths(bank, world, k)
    local = idx = torch.empty(0)
    try:
        local, idx = _local_scores(eng, bank, ranges[rank], inputs, batches, k, proponents)
    except Exception as e:
        error = e
    agree(error, None, eng.device, "influence")
    scores = gather_columns(local, widths, eng.device)
    if k is None:
        return scores
    indices = gather_columns(idx, widths, eng.device)
    vals, pos = torch.topk(scores, min(k, scores.shape[1]), dim=1, largest=proponents)
    return KMostInfluentialResults(torch.gather(indices, 1, pos).to(torch.int64), vals)


def self_influence_across_ranks(
    eng: TracInCPFast, rank: int, world: int, inputs: Any, show_progress: bool
) -> torch.Tensor:
    """``self_influence(distributed=True)``: each rank its contiguous rows, joined with all_gather."""
    error: Exception | None = None
    key = ""
    try:
        if inputs is not None:
            raise ValueError(
                "self_influence(inputs, distributed=True): distributed=True splits the training set's "
                "self-influence over the ranks; for inputs, call self_influence(inputs) without it (each rank "
                "computes them), or split the inputs over the ranks yourself."
            )
        key = call_key("self_influence", eng.factors_ is not None)
    except Exception as e:
        error = e
    agree(error, key, eng.device, "self_influence")
    bank = eng._prepare_factors(show_progress)  # its own collectives when the factors are not there yet
    ranges, widths = rank_widths(bank, world, None)
    local = torch.empty(0)
    try:
        local = eng._train_self_influence(bank, ranges[rank])
    except Exception as e:
        error = e
    agree(error, None, eng.device, "self_influence")
    return gather_columns(local.unsqueeze(0), widths, eng.device)[0]
