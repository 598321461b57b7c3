"""The factor pass under ``torchrun``: two CPU ranks (gloo) each read and write only their
rows of the store, rank 0 joins them; the store equals a single-process store byte for byte, and a single process
then queries it without a pass, with the same results as a plain in-memory engine. Queries split over the ranks
(``distributed=True``) give every rank the single process's top-k, score matrix and self-influence; a
disagreement or one rank's error is raised on every rank."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from tracin_widgets.influence import Cancelled, TracInCPFast, TracInCPFastRandProj
from tracin_widgets.influence import _distributed as dist_module

from .problems import Problem, save_perturbed_checkpoints
from .tolerances import RTOL_REORDER, atol_reorder

ROOT = Path(__file__).resolve().parents[2]
N = 200

SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import torch
    from torch import nn
    from torch.utils.data import TensorDataset
    from tracin_widgets.influence import TracInCPFast

    tmp = sys.argv[1]
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 5))
    x, y = torch.load(os.path.join(tmp, "data.pt"))
    paths = json.load(open(os.path.join(tmp, "paths.json")))
    rank = os.environ["RANK"]
    try:
        TracInCPFast(model, "2", TensorDataset(x, y), paths, loss_fn=nn.CrossEntropyLoss(reduction="sum")).fit()
    except ValueError as e:
        print(f"rank {rank} without cache_dir: {e}")
    computed = []
    obj = TracInCPFast(
        model, "2", TensorDataset(x, y), paths, loss_fn=nn.CrossEntropyLoss(reduction="sum"), batch_size=64,
        cache_dir=os.path.join(tmp, "cache"),
        progress_callback=lambda phase, done, total: computed.append((phase, done, total)),
    ).fit()
    A, G = obj.factors_.factors
    print(f"rank {rank}: {A.shape[0]} rows, world {torch.distributed.get_world_size()}")
    print(f"rank {rank} computed {max(t for ph, d, t in computed if ph == 'training factors')} rows")

    # queries split over the ranks: in memory, then streamed from the store (max_memory=1 byte)
    test = torch.load(os.path.join(tmp, "test.pt"))
    out = {
        "pro": tuple(obj.influence(test, k=5, distributed=True)),
        "opp": tuple(obj.influence(test, k=5, proponents=False, distributed=True)),
        "full": obj.influence(test, distributed=True),
        "self": obj.self_influence(distributed=True),
    }
    streamed = TracInCPFast(
        model, "2", TensorDataset(x, y), paths, loss_fn=nn.CrossEntropyLoss(reduction="sum"), batch_size=64,
        cache_dir=os.path.join(tmp, "cache"), max_memory=1,
    )
    out["stream_opp150"] = tuple(streamed.influence(test, k=150, proponents=False, distributed=True))
    out["stream_self"] = streamed.self_influence(distributed=True)
    print(f"rank {rank} streamed: {streamed.factors_.store is not None}")
    # the ranks disagree, or one fails alone: an error on every rank, none waits forever
    try:
        obj.influence(test, k=3 + int(rank), distributed=True)
    except ValueError as e:
        print(f"rank {rank} different k: {e}")
    bad = (test[0], test[1] + 7) if rank == "1" else test
    try:
        obj.influence(bad, k=5, distributed=True)
    except (ValueError, RuntimeError) as e:
        print(f"rank {rank} one bad batch: {type(e).__name__}: {e}")
    out["after"] = tuple(obj.influence(test, k=5, distributed=True))  # the ranks are still in step
    torch.save(out, os.path.join(tmp, f"rank{rank}.pt"))
    torch.distributed.destroy_process_group()
    """
)


def _problem(tmp_path: Path) -> tuple[nn.Module, TensorDataset, list[str], tuple]:
    p = Problem(tmp_path, n=N)
    return p.model, p.train, p.paths, p.test


def _engine(model, data, paths, cache_dir=None, cls=TracInCPFast):
    return cls(
        model, "2", data, paths, loss_fn=nn.CrossEntropyLoss(reduction="sum"), batch_size=64, cache_dir=cache_dir
    )


def _store(cache: Path) -> Path:
    (folder,) = cache.glob("tracin-fast-store-*")
    return folder


@pytest.mark.slow
def test_torchrun_pass_on_two_cpu_ranks_equals_a_single_process(tmp_path, monkeypatch):
    model, data, paths, test = _problem(tmp_path)
    torch.save(data.tensors, tmp_path / "data.pt")
    (tmp_path / "paths.json").write_text(json.dumps(paths))
    torch.save(test, tmp_path / "test.pt")
    (tmp_path / "run.py").write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    done = subprocess.run(
        [*cmd, str(tmp_path / "run.py"), str(tmp_path)], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    for r in (0, 1):  # every rank reads the whole store; without cache_dir the message names it
        assert f"rank {r}: {N} rows, world 2" in done.stdout
        assert f"rank {r} computed {N // 2} rows" in done.stdout  # its half of the pass only
        assert f"rank {r} without cache_dir: this process is rank {r} of 2" in done.stdout
    assert "cache_dir is None" in done.stdout
    for r in (0, 1):  # a disagreement or one rank's error is raised on every rank
        assert f"rank {r} streamed: True" in done.stdout
        assert (
            f"rank {r} different k: the ranks of torch.distributed (torchrun) made different influence" in done.stdout
        )
    assert re.search(
        r"rank 1 one bad batch: ValueError: inputs .*Labels must be int64 class indices in 0..4", done.stdout
    )
    assert "rank 0 one bad batch: RuntimeError: another rank of torch.distributed failed in influence" in done.stdout

    dist_store = _store(tmp_path / "cache")
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [dist_store.name]  # the shards are removed
    manifest = json.loads((dist_store / "manifest.json").read_text())
    assert manifest["rows"] == manifest["rows_complete"] == N and manifest["complete"] is True
    assert "shard" not in manifest

    # a single-process pass writes the same files, byte for byte
    _engine(model, data, paths, tmp_path / "single").fit()
    single_store = _store(tmp_path / "single")
    assert single_store.name == dist_store.name
    names = sorted(p.name for p in single_store.iterdir() if p.name != ".lock")
    assert names == sorted(p.name for p in dist_store.iterdir() if p.name != ".lock")
    for name in names:
        assert (single_store / name).read_bytes() == (dist_store / name).read_bytes(), name

    # a single process reuses the torchrun store without a pass, with the in-memory engine's results
    plain = _engine(model, data, paths)
    expected = plain.influence(test, k=5)
    expected_self = plain.self_influence()

    def no_pass(*a, **k):
        raise AssertionError("the store written under torchrun was not reused")

    monkeypatch.setattr(TracInCPFast, "_store_pass", no_pass)
    monkeypatch.setattr(TracInCPFast, "_memory_pass", no_pass)
    reused = _engine(model, data, paths, tmp_path / "cache")
    got = reused.influence(test, k=5)
    assert torch.equal(got.indices, expected.indices) and torch.equal(got.influence_scores, expected.influence_scores)
    assert torch.equal(reused.self_influence(), expected_self)
    assert torch.equal(reused.influence(test), plain.influence(test))

    # the queries split over the ranks: every rank got the single process's results
    want = {
        "pro": expected,
        "opp": plain.influence(test, k=5, proponents=False),
        "full": plain.influence(test),
        "self": expected_self,
        "stream_opp150": plain.influence(test, k=150, proponents=False),
        "stream_self": expected_self,
        "after": expected,
    }
    for r in (0, 1):
        got = torch.load(tmp_path / f"rank{r}.pt")
        for name, exp in want.items():
            if isinstance(exp, torch.Tensor):
                torch.testing.assert_close(got[name], exp, msg=f"rank {r} {name}")
                continue
            indices, scores = got[name]
            assert indices.dtype == torch.int64 and torch.equal(indices, exp.indices), (r, name)
            torch.testing.assert_close(scores, exp.influence_scores, msg=f"rank {r} {name}")


def test_torchrun_without_cache_dir_is_an_error(tmp_path, monkeypatch):
    model, data, paths, _ = _problem(tmp_path)
    monkeypatch.setattr(dist_module, "process_group", lambda device: (1, 2))
    for cls in (TracInCPFast, TracInCPFastRandProj):
        with pytest.raises(ValueError, match=r"rank 1 of 2 .*torchrun.*cache_dir is None: pass cache_dir= a folder"):
            _engine(model, data, paths, cls=cls).fit()


def test_torchrun_ranks_with_different_keys_is_an_error(tmp_path, monkeypatch):
    model, data, paths, _ = _problem(tmp_path)
    monkeypatch.setattr(dist_module, "process_group", lambda device: (0, 2))
    monkeypatch.setattr(dist_module, "all_equal", lambda key, device: False)
    monkeypatch.setattr(dist_module, "all_ok", lambda ok, device: ok)
    with pytest.raises(ValueError, match=r"ranks of torch.distributed \(torchrun\) disagree on .* cache key"):
        _engine(model, data, paths, tmp_path / "cache").fit()


def _as_rank(monkeypatch, rank: int) -> None:
    """This process plays ``rank`` of 2 (the collectives answer for this rank alone)."""
    monkeypatch.setattr(dist_module, "process_group", lambda device: (rank, 2))
    monkeypatch.setattr(dist_module, "all_equal", lambda key, device: True)
    monkeypatch.setattr(dist_module, "all_ok", lambda ok, device: ok)
    monkeypatch.setattr(dist_module, "failures", lambda error, device: [])


def test_rank_shards_resume_and_are_joined_by_rank_0(tmp_path, monkeypatch):
    model, data, paths, test = _problem(tmp_path)
    cache = tmp_path / "cache"
    # rank 1 first: its shard is written, but the store is not complete until rank 0 joins it
    _as_rank(monkeypatch, 1)
    with pytest.raises(ValueError, match=r"joined by rank 0 cannot be read by rank 1: cache_dir must be one folder"):
        _engine(model, data, paths, cache).fit()
    (shard,) = cache.glob("tracin-fast-store-*.rows-100-200")
    assert json.loads((shard / "manifest.json").read_text())["complete"] is True
    # rank 0 cancelled after its first block: its shard keeps the rows written; the next call resumes there
    _as_rank(monkeypatch, 0)

    def cancel(phase, done, total):
        if phase == "training factors" and done >= 64:
            raise Cancelled()

    monkeypatch.setattr(TracInCPFast, "cpu_chunk", 32)  # blocks of the loader's 64 rows
    obj = _engine(model, data, paths, cache)
    obj.progress_callback = cancel
    with pytest.raises(Cancelled):
        obj.fit()
    (shard0,) = cache.glob("tracin-fast-store-*.rows-0-100")
    kept = json.loads((shard0 / "manifest.json").read_text())
    assert kept["complete"] is False and kept["rows_complete"] == 64 and kept["shard"] == [0, 100]
    computed: list[int] = []
    real = TracInCPFast._factors_of

    def spy(self, batches, *a, **k):
        computed.append(sum(b[0].shape[0] for b in batches))
        return real(self, batches, *a, **k)

    monkeypatch.setattr(TracInCPFast, "_factors_of", spy)
    joined = _engine(model, data, paths, cache).fit()
    assert sum(computed) == 36  # only the rest of rank 0's rows
    assert sorted(p.name for p in cache.iterdir()) == [_store(cache).name]  # the shards are removed
    monkeypatch.setattr(dist_module, "process_group", lambda device: None)  # a single process from here on
    _engine(model, data, paths, tmp_path / "single").fit()
    for name in ("A-0.bin", "G-2.bin", "norms.bin", "manifest.json"):
        assert (_store(cache) / name).read_bytes() == (_store(tmp_path / "single") / name).read_bytes(), name
    plain = _engine(model, data, paths)
    assert torch.equal(joined.influence(test), plain.influence(test))


def test_a_missing_shard_stops_rank_0(tmp_path, monkeypatch):
    model, data, paths, _ = _problem(tmp_path)
    _as_rank(monkeypatch, 0)
    with pytest.raises(
        ValueError,
        match=r"shard .* of rows 100:200 is missing or incomplete after every rank finished its pass \(cache_dir",
    ):
        _engine(model, data, paths, tmp_path / "cache").fit()


class _Counted(torch.utils.data.Dataset):
    """A map-style dataset that records the rows read while ``counting`` is on (the pass itself)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y, self.read, self.counting = x, y, [], False

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.counting:
            self.read.append(int(i))
        return self.x[i], self.y[i]


def _padding_collate(items: list) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.stack([x for x, _ in items]), torch.stack([y for _, y in items])


@pytest.mark.parametrize("form", ["dataset", "loader", "loader with its own collate_fn"])
def test_each_rank_reads_only_its_rows(tmp_path, monkeypatch, form):
    model, data, paths, test = _problem(tmp_path)
    ds = _Counted(*data.tensors)
    train = {
        "dataset": ds,
        "loader": torch.utils.data.DataLoader(ds, batch_size=64),
        "loader with its own collate_fn": torch.utils.data.DataLoader(ds, batch_size=64, collate_fn=_padding_collate),
    }[form]
    real = TracInCPFast._train_batches

    def counted(self, *a, **k):  # only the pass's own reads (not the cache key's samples or the memory probe)
        ds.counting = True
        try:
            yield from real(self, *a, **k)
        finally:
            ds.counting = False

    monkeypatch.setattr(TracInCPFast, "_train_batches", counted)
    cache = tmp_path / "cache"
    _as_rank(monkeypatch, 1)
    with pytest.raises(ValueError, match="joined by rank 0 cannot be read by rank 1"):
        _engine(model, train, paths, cache).fit()
    # rank 1's rows are 100:200; a collate_fn of the user's own gets the same batches as in one pass (64:128 ...)
    assert sorted(ds.read) == list(range(64 if form.endswith("collate_fn") else 100, N))
    ds.read.clear()
    _as_rank(monkeypatch, 0)
    joined = _engine(model, train, paths, cache).fit()
    assert sorted(ds.read) == list(range(0, 128 if form.endswith("collate_fn") else 100))
    monkeypatch.setattr(dist_module, "process_group", lambda device: None)
    plain = _engine(model, data, paths)
    torch.testing.assert_close(
        joined.influence(test), plain.influence(test), rtol=RTOL_REORDER, atol=atol_reorder(plain.influence(test))
    )


@pytest.mark.parametrize("form", ["TensorDataset", "CIFAR10"])
def test_rank_rows_of_array_datasets_are_sliced(tmp_path, form):
    """A TensorDataset is sliced and torchvision's CIFAR arrays are read in blocks from the rank's first row: the
    batches of rows 13:29 are exactly those rows of a whole pass."""
    import torchvision.transforms as T

    from .test_vision import make_cifar

    model, data, paths, _ = _problem(tmp_path)
    if form == "CIFAR10":
        data = make_cifar(n=40, transform=T.ToTensor())
        model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))
        paths = save_perturbed_checkpoints(model, tmp_path, 1, 0.1, prefix="cifar-")
    obj = TracInCPFast(model, model[-1], data, paths, loss_fn=nn.CrossEntropyLoss(reduction="sum"), batch_size=8)
    assert (obj._vectorised() is not None) == (form == "CIFAR10")
    whole = [b for _, b in obj._train_batches()]
    x, y = torch.cat([b[0] for b in whole]), torch.cat([b[1] for b in whole])
    part = list(obj._train_batches(0, (13, 29)))
    assert [o for o, _ in part] == [13, 21]
    assert torch.equal(torch.cat([b[0] for _, b in part]), x[13:29])
    assert torch.equal(torch.cat([b[1] for _, b in part]), y[13:29])


def test_a_rank_scores_only_its_rows_in_a_distributed_query(tmp_path, monkeypatch):
    """Rank 1 of 2 scores rows 100:200 only (the other rank's part is left to all_gather, faked here)."""
    model, data, paths, test = _problem(tmp_path)
    plain = _engine(model, data, paths)
    scores, self_influence = plain.influence(test), plain.self_influence()
    _engine(model, data, paths, tmp_path / "cache").fit()  # the store, from a single process
    _as_rank(monkeypatch, 1)

    def agree(error, key, device, call):
        if error is not None:
            raise error

    sent: list[torch.Tensor] = []

    def gather(local, widths, device):
        sent.append(local.cpu())
        return torch.cat([torch.zeros(local.shape[0], widths[0], dtype=local.dtype), local.cpu()], dim=1)

    monkeypatch.setattr(dist_module, "agree", agree)
    monkeypatch.setattr(dist_module, "gather_columns", gather)
    obj = _engine(model, data, paths, tmp_path / "cache")
    assert obj.influence(test).shape == (6, N) and not sent  # without distributed=True: this rank alone, every row
    obj.influence(test, distributed=True)
    torch.testing.assert_close(sent[-1], scores[:, 100:])
    obj.influence(test, k=5, proponents=False, distributed=True)
    values, indices = sent[-2:]
    expected = scores[:, 100:].topk(5, dim=1, largest=False)
    assert torch.equal(indices, expected.indices + 100)
    torch.testing.assert_close(values, expected.values)
    obj.self_influence(distributed=True)
    torch.testing.assert_close(sent[-1], self_influence[100:].unsqueeze(0))


def test_distributed_query_arguments(tmp_path, monkeypatch):
    model, data, paths, test = _problem(tmp_path)
    obj = _engine(model, data, paths)
    with pytest.raises(TypeError, match=r"distributed must be a bool \(True: split the query over the ranks"):
        obj.influence(test, k=5, distributed="yes")
    # a single process: distributed=True changes nothing
    assert torch.equal(obj.influence(test, k=5, distributed=True).indices, obj.influence(test, k=5).indices)
    assert torch.equal(obj.self_influence(distributed=True), obj.self_influence())
    rp = _engine(model, data, paths, cls=TracInCPFastRandProj)
    monkeypatch.setattr(dist_module, "process_group", lambda device: (0, 2))
    monkeypatch.setattr(dist_module, "agree", lambda error, key, device, call: None if error is None else _raise(error))
    with pytest.raises(ValueError, match=r"self_influence\(inputs, distributed=True\): distributed=True splits the"):
        obj.self_influence(test, distributed=True)
    with pytest.raises(ValueError, match=r"RandProj.influence\(distributed=True\): its nearest-neighbour index holds"):
        rp.influence(test, k=5, distributed=True)


def _raise(error: BaseException) -> None:
    raise error


def test_rank_0_joins_the_shards_without_following_links(tmp_path, monkeypatch):
    model, data, paths, test = _problem(tmp_path)
    cache = tmp_path / "cache"
    _as_rank(monkeypatch, 1)
    with pytest.raises(ValueError, match=r"joined by rank 0 cannot be read by rank 1"):
        _engine(model, data, paths, cache).fit()
    (shard,) = cache.glob("tracin-fast-store-*.rows-100-200")
    store = cache / shard.name.split(".rows-")[0]
    store.mkdir()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("the user's")
    (tmp_path / "user.bin").write_bytes(b"u" * 5000)
    (store / "old").symlink_to(mine)  # an entry of the folder that is cleared: removed itself
    (store / "A-0.bin").symlink_to(tmp_path / "user.bin")  # a file the join writes: never written through
    _as_rank(monkeypatch, 0)
    joined = _engine(model, data, paths, cache).fit()
    assert (mine / "notes.txt").read_text() == "the user's" and (tmp_path / "user.bin").read_bytes() == b"u" * 5000
    assert not (store / "A-0.bin").is_symlink() and not (store / "old").exists()
    monkeypatch.setattr(dist_module, "process_group", lambda device: None)
    assert torch.equal(joined.influence(test), _engine(model, data, paths).influence(test))


FAILING = textwrap.dedent(
    """
    import json, os, sys, time
    import torch
    from torch import nn
    from torch.utils.data import TensorDataset
    from tracin_widgets.influence import TracInCPFast

    tmp, rank = sys.argv[1], os.environ["RANK"]
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 5))
    x, y = torch.load(os.path.join(tmp, "data.pt"))
    paths = json.load(open(os.path.join(tmp, f"paths{rank}.json")))
    start = time.monotonic()
    try:
        TracInCPFast(
            model, "2", TensorDataset(x, y), paths, loss_fn=nn.CrossEntropyLoss(reduction="sum"),
            cache_dir=os.path.join(tmp, "cache"),
        ).fit()
        print(f"rank {rank} no error")
    except Exception as e:
        print(f"rank {rank} raised {type(e).__name__}: {e}")
    print(f"rank {rank} waited {time.monotonic() - start:.1f}")
    time.sleep(3)  # alive (a caught error, a notebook): the other rank must not wait for this one to exit
    torch.distributed.destroy_process_group()
    """
)


def test_a_rank_failing_before_the_pass_stops_every_rank_with_its_message(tmp_path):
    """Two gloo ranks under torchrun: rank 1's checkpoint cannot be read (rank 0's can): both raise at once, and
    rank 0's error names rank 1 and the file, while both processes stay alive."""
    model, data, paths, _ = _problem(tmp_path)
    torch.save(data.tensors, tmp_path / "data.pt")
    broken = tmp_path / "broken-1.pt"
    broken.write_bytes(b"not a checkpoint" * 10)
    (tmp_path / "paths0.json").write_text(json.dumps(paths))
    (tmp_path / "paths1.json").write_text(json.dumps([*paths[:2], str(broken)]))
    (tmp_path / "run.py").write_text(FAILING)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    done = subprocess.run(
        [*cmd, str(tmp_path / "run.py"), str(tmp_path)], env=env, capture_output=True, text=True, timeout=300
    )
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert re.search(rf"rank 1 raised \w+: .*{re.escape(broken.name)}", out), out
    zero = re.search(r"rank 0 raised RuntimeError: (.*)", out)
    assert zero is not None, out
    assert "another rank of torch.distributed failed in loading the checkpoints" in zero.group(1)
    assert re.search(rf"\(rank 1: \w+: .*{re.escape(broken.name)}", zero.group(1)), zero.group(1)
