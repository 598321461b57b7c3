"""TracInCPFastRandProj with a ``cache_dir`` store: the training embeddings in ``E-<tag>.bin``, the Annoy index built
on disk and memory-mapped by later instances, stale or partial files never used, streamed queries (``max_memory``)
equal to in-memory ones, and the exact rerank reading only the candidates' factor rows."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tracin_widgets.influence import (
    AnnoyNearestNeighbors,
    ExactNearestNeighbors,
    NearestNeighbors,
    TracInCPFastRandProj,
    TracInWarning,
    _nearest_neighbors,
    _store,
)
from tracin_widgets.influence._embeddings import temp_path

from .problems import Problem
from .tolerances import RTOL_REORDER, atol_reorder

pytest.importorskip("annoy")

N = 1500
ROW_BYTES = 3 * (16 + 5) * 4  # checkpoints x (dim a + dim g) x float32


class _Problem(Problem):
    def __init__(self, tmp_path: Path):
        super().__init__(tmp_path, n=N)  # the MLP's last layer: dim g x dim a = 80 per checkpoint

    def engine(self, cache=True, **kw):
        kw.setdefault("nearest_neighbors", ExactNearestNeighbors())
        kw.setdefault("projection_dim", 16)  # 4 x 4 per checkpoint
        return super().engine(TracInCPFastRandProj, cache=cache, **kw)

    def files(self, pattern: str) -> list[Path]:
        return sorted(self.store().glob(pattern))


def _embeddings_on_disk(path: Path) -> np.ndarray:
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["dtype"] == "float32" and meta["rows"] == N
    return np.memmap(path, dtype=np.float32, mode="r", shape=(meta["rows"], meta["dim"]))


def _mapped(path: Path) -> bool:
    """Whether this process memory-maps ``path``."""
    return str(path) in Path("/proc/self/maps").read_text()


def _no_build(monkeypatch) -> None:
    def refuse(*a, **k):
        raise AssertionError("the index was built although a complete one is in the store")

    monkeypatch.setattr(AnnoyNearestNeighbors, "build_on_disk", refuse)
    monkeypatch.setattr(AnnoyNearestNeighbors, "setup", refuse)


def _count_builds(monkeypatch) -> list[Path]:
    built: list[Path] = []
    real = AnnoyNearestNeighbors.build_on_disk

    def spy(self, path, *a, **k):
        built.append(Path(path))
        return real(self, path, *a, **k)

    monkeypatch.setattr(AnnoyNearestNeighbors, "build_on_disk", spy)
    return built


def _same_topk(a, b, rtol=RTOL_REORDER):
    assert torch.equal(a.indices, b.indices)
    torch.testing.assert_close(a.influence_scores, b.influence_scores, rtol=rtol, atol=atol_reorder(b.influence_scores))


@pytest.fixture(scope="module")
def problem(tmp_path_factory):
    return _Problem(tmp_path_factory.mktemp("rp"))


@pytest.fixture
def fresh(tmp_path):
    return _Problem(tmp_path)


# ---------------------------------------------------------------------------------------------------------------------
# the embeddings file
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("projection_dim", [16, None])
def test_embeddings_file_holds_the_training_embeddings(fresh, projection_dim):
    obj = fresh.engine(projection_dim=projection_dim)
    (path,) = fresh.files("E-*.bin")
    on_disk = torch.from_numpy(np.array(_embeddings_on_disk(path)))
    dim = 3 * (16 if projection_dim else 80)
    assert on_disk.shape == (N, dim) and path.stat().st_size == N * dim * 4
    # the embedding of a training row is compute_intermediate_quantities of that row (same loss)
    expected = obj.compute_intermediate_quantities((fresh.x, fresh.y))
    torch.testing.assert_close(on_disk, expected, rtol=RTOL_REORDER, atol=atol_reorder(expected))
    if projection_dim:  # equal to the embeddings an instance without cache_dir keeps in memory
        mem = fresh.engine(cache=False, projection_dim=projection_dim)
        torch.testing.assert_close(on_disk, mem._train_embeddings, rtol=RTOL_REORDER, atol=atol_reorder(on_disk))


def test_no_cache_dir_writes_nothing_and_keeps_the_embeddings_in_memory(fresh):
    obj = fresh.engine(cache=False)
    assert obj._train_embeddings is not None and obj._embeddings_file is None
    assert not fresh.cache.exists()


def test_embeddings_file_that_cannot_be_written_warns_and_stays_in_memory(fresh, monkeypatch):
    import errno

    from tracin_widgets.influence import _embeddings

    def full(self, block):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(_embeddings.EmbeddingWriter, "append", full)
    with pytest.warns(TracInWarning, match=r"cannot write the training embeddings into the factor store .*No space"):
        obj = fresh.engine(max_memory=ROW_BYTES * 40)
    assert fresh.files("E-*") == [] and fresh.files(".E-*") == []  # the temporary file is removed
    _same_topk(obj.influence(fresh.test, k=5), fresh.engine(cache=False).influence(fresh.test, k=5))


# ---------------------------------------------------------------------------------------------------------------------
# the Annoy index on disk
# ---------------------------------------------------------------------------------------------------------------------
def test_annoy_index_built_on_disk_and_memory_mapped_by_the_next_instance(fresh, monkeypatch):
    first = fresh.engine(nearest_neighbors=AnnoyNearestNeighbors(num_trees=5), rerank=None)
    (index,) = fresh.files("annoy-*-t5.ann")
    (emb,) = fresh.files("E-*.bin")
    assert index.name == f"annoy-{emb.stem[2:]}-t5.ann"  # keyed by the embeddings' tag and num_trees
    assert _mapped(index)  # built on disk (on_disk_build): the file is the index
    a = first.influence(fresh.test, k=7)
    mtime = index.stat().st_mtime_ns
    _no_build(monkeypatch)
    second = fresh.engine(nearest_neighbors=AnnoyNearestNeighbors(num_trees=5), rerank=None)
    assert index.stat().st_mtime_ns == mtime
    assert second.nearest_neighbors.index.get_n_items() == N
    _same_topk(second.influence(fresh.test, k=7), a, rtol=0)
    # the default rerank scores the index's candidates exactly
    third = fresh.engine(nearest_neighbors=AnnoyNearestNeighbors(num_trees=5))
    exact = fresh.engine(cache=False, projection_dim=None).influence(fresh.test, k=None)
    got = third.influence(fresh.test, k=7)
    torch.testing.assert_close(
        got.influence_scores, torch.gather(exact, 1, got.indices), rtol=RTOL_REORDER, atol=atol_reorder(exact)
    )


@pytest.mark.parametrize(
    ("change", "new_embeddings"),
    [({"seed": 1}, True), ({"projection_dim": 25}, True), ({"projection_dim": None}, True), ({"num_trees": 7}, False)],
)
def test_a_stale_setting_never_reuses_the_files(problem, monkeypatch, change, new_embeddings):
    settings = {"seed": 0, "projection_dim": 16, "num_trees": 5}
    problem.engine(nearest_neighbors=AnnoyNearestNeighbors(num_trees=5), seed=0, projection_dim=16)
    before_e, before_i = problem.files("E-*.bin"), problem.files("annoy-*.ann")
    built = _count_builds(monkeypatch)
    settings.update(change)
    trees = settings.pop("num_trees")
    obj = problem.engine(nearest_neighbors=AnnoyNearestNeighbors(num_trees=trees), rerank=None, **settings)
    assert len(built) == 1 and built[0] not in before_i
    assert (set(problem.files("E-*.bin")) - set(before_e) != set()) == new_embeddings
    # its neighbours are those of its own embeddings: their scores are the dot products with them
    ref = problem.engine(cache=False, rerank=None, **settings)
    got = obj.influence(problem.test, k=5)
    approx = ref.influence(problem.test, k=None)
    torch.testing.assert_close(
        got.influence_scores, torch.gather(approx, 1, got.indices), rtol=RTOL_REORDER, atol=atol_reorder(approx)
    )


def _dead_pid() -> int:
    p = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(p.stdout)


@pytest.mark.parametrize("damage", ["truncated", "no_record", "record_of_another_build", "temp_only"])
def test_a_partial_or_foreign_index_file_is_ignored_and_rebuilt(fresh, monkeypatch, damage):
    first = fresh.engine(nearest_neighbors=AnnoyNearestNeighbors(num_trees=5), rerank=None)
    a = first.influence(fresh.test, k=5)
    (index,) = fresh.files("annoy-*.ann")
    record = index.with_name(index.name + ".json")
    del first
    if damage == "truncated":
        with open(index, "r+b") as f:
            f.truncate(index.stat().st_size // 2)
    elif damage == "no_record":  # killed between the rename and the record
        record.unlink()
    elif damage == "record_of_another_build":
        meta = json.loads(record.read_text())
        record.write_text(json.dumps({**meta, "items": N - 1}))
    else:  # killed during the build: only a truncated temporary file of a dead process
        dead = temp_path(index).name.rsplit(".", 2)[0] + f".{_dead_pid()}.tmp"
        index.rename(index.with_name(dead))
        with open(index.with_name(dead), "r+b") as f:
            f.truncate(1000)
        record.unlink()
    built = _count_builds(monkeypatch)
    again = fresh.engine(nearest_neighbors=AnnoyNearestNeighbors(num_trees=5), rerank=None)
    assert built == [index]
    assert json.loads(record.read_text())["bytes"] == index.stat().st_size
    assert [p.name for p in fresh.store().glob(".annoy-*")] == []  # the dead process's temporary file is gone
    b = again.influence(fresh.test, k=5)
    assert b.indices.shape == a.indices.shape
    approx = fresh.engine(cache=False, rerank=None).influence(fresh.test, k=None)
    torch.testing.assert_close(
        b.influence_scores, torch.gather(approx, 1, b.indices), rtol=RTOL_REORDER, atol=atol_reorder(approx)
    )


def test_a_truncated_embeddings_file_is_recomputed(fresh):
    fresh.engine()
    (path,) = fresh.files("E-*.bin")
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - 4)
    fresh.engine(max_memory=ROW_BYTES * 40)
    expected = fresh.engine(cache=False)._train_embeddings
    torch.testing.assert_close(
        torch.from_numpy(np.array(_embeddings_on_disk(path))), expected, rtol=RTOL_REORDER, atol=atol_reorder(expected)
    )


def test_annoy_without_room_on_disk_warns_and_builds_in_memory(fresh, monkeypatch):
    class Usage:
        free = 1000

    monkeypatch.setattr(_nearest_neighbors.shutil, "disk_usage", lambda folder: Usage)
    with pytest.warns(
        TracInWarning, match=r"cannot write the Annoy index into the factor store .*no room.*GB are free"
    ):
        obj = fresh.engine(nearest_neighbors=AnnoyNearestNeighbors(num_trees=5))
    assert fresh.files("annoy-*") == [] and fresh.files(".annoy-*") == []
    exact = fresh.engine(cache=False, projection_dim=None).influence(fresh.test, k=None)
    got = obj.influence(fresh.test, k=3)
    torch.testing.assert_close(
        got.influence_scores, torch.gather(exact, 1, got.indices), rtol=RTOL_REORDER, atol=atol_reorder(exact)
    )


def test_annoy_build_on_disk_and_load(tmp_path):
    g = torch.Generator().manual_seed(0)
    data = torch.randn(500, 12, generator=g)
    path = tmp_path / "index.ann"
    a = AnnoyNearestNeighbors(num_trees=4)
    a.build_on_disk(path, [data[:200], data[200:]], rows=500, dim=12)
    b = AnnoyNearestNeighbors(num_trees=4)
    assert b.load(path, n_items=500, dim=12)
    q = torch.randn(3, 12, generator=g)
    ia, va = a.get_nearest_neighbors(q, 5)
    ib, vb = b.get_nearest_neighbors(q, 5)
    assert torch.equal(ia, ib) and torch.equal(va, vb)
    torch.testing.assert_close(vb, (q @ data.T).gather(1, ib), rtol=RTOL_REORDER, atol=atol_reorder(q @ data.T))
    assert not AnnoyNearestNeighbors(num_trees=5).load(path)  # another num_trees
    assert not b.load(path, n_items=499) and not b.load(path, dim=11)
    assert not b.load(tmp_path / "missing.ann")
    with pytest.raises(ValueError, match=r"build_on_disk got 500 rows in its blocks, not rows=600"):
        a.build_on_disk(tmp_path / "other.ann", [data], rows=600, dim=12)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.ann", "index.ann.json"]


def test_a_custom_annoy_subclass_or_index_gets_setup_with_the_mapped_embeddings(fresh):
    got: list[torch.Tensor] = []

    class Custom(NearestNeighbors):
        def setup(self, data):
            got.append(data)
            self.inner = ExactNearestNeighbors()
            self.inner.setup(data)

        def get_nearest_neighbors(self, query, k):
            return self.inner.get_nearest_neighbors(query, k)

    class MyAnnoy(AnnoyNearestNeighbors):
        def setup(self, data):
            got.append(data)
            super().setup(data)

    streamed = fresh.engine(nearest_neighbors=Custom(), max_memory=ROW_BYTES * 40)
    (path,) = fresh.files("E-*.bin")
    assert got[0].device.type == "cpu" and tuple(got[0].shape) == (N, 3 * 16) and _mapped(path)
    torch.testing.assert_close(
        got[0], fresh.engine(cache=False)._train_embeddings, rtol=RTOL_REORDER, atol=atol_reorder(got[0])
    )
    _same_topk(streamed.influence(fresh.test, k=4), fresh.engine(cache=False).influence(fresh.test, k=4))
    fresh.engine(nearest_neighbors=MyAnnoy(num_trees=3))  # its own setup: not replaced by the on-disk build
    assert len(got) == 2 and fresh.files("annoy-*") == []


# ---------------------------------------------------------------------------------------------------------------------
# streamed factors (max_memory) equal in memory
# ---------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def streamed(problem):
    mem = problem.engine(cache=False)
    stream = problem.engine(max_memory=ROW_BYTES * 40)  # 10-row blocks
    assert stream.factors_.placement == "stream" and stream.factors_.factors is None
    assert stream._train_embeddings is None and stream._embeddings_file is not None  # never all in memory
    return problem, mem, stream


@pytest.mark.parametrize("proponents", [True, False])
@pytest.mark.parametrize("rerank", [50, None])
def test_streamed_top_k_equals_in_memory(streamed, proponents, rerank):
    p, mem, stream = streamed
    mem.rerank = stream.rerank = rerank
    try:
        _same_topk(
            stream.influence(p.test, k=6, proponents=proponents), mem.influence(p.test, k=6, proponents=proponents)
        )
    finally:
        mem.rerank = stream.rerank = 50


def test_streamed_projected_scores_equal_in_memory(streamed, monkeypatch):
    """k=None with a projection reads the embeddings file block by block."""
    from tracin_widgets.influence._embeddings import EmbeddingFile

    p, mem, stream = streamed
    reads: list[int] = []
    real = EmbeddingFile.blocks

    def spy(self, rows):
        for s, b in real(self, rows):
            reads.append(b.shape[0])
            yield s, b

    monkeypatch.setattr(EmbeddingFile, "blocks", spy)
    expected = mem.influence(p.test, k=None)
    got = stream.influence(p.test, k=None)
    assert sum(reads) == N and max(reads) < N
    torch.testing.assert_close(got, expected, rtol=RTOL_REORDER, atol=atol_reorder(expected))


def test_streamed_unprojected_scores_equal_in_memory(fresh):
    stream = fresh.engine(projection_dim=None, max_memory=ROW_BYTES * 40)
    mem = fresh.engine(cache=False, projection_dim=None)
    assert stream._embeddings_file is None  # exact: scored from the factors
    expected = mem.influence(fresh.test, k=None)
    torch.testing.assert_close(
        stream.influence(fresh.test, k=None), expected, rtol=RTOL_REORDER, atol=atol_reorder(expected)
    )


def test_the_exact_rerank_reads_only_the_candidates_rows(streamed, monkeypatch):
    p, mem, stream = streamed
    read_bytes: list[int] = []
    real = _store._read_into

    def spy(fd, t, offset, path):
        read_bytes.append(t.numel() * t.element_size())
        return real(fd, t, offset, path)

    candidates: list[torch.Tensor] = []
    real_gather = _store.FactorStore.gather

    def gather(self, idx):
        candidates.append(idx)
        return real_gather(self, idx)

    monkeypatch.setattr(_store, "_read_into", spy)
    monkeypatch.setattr(_store.FactorStore, "gather", gather)
    stream.rerank = 4
    try:
        got = stream.influence(p.test, k=3)
    finally:
        stream.rerank = 50
    (idx,) = candidates
    assert idx.shape == (6, 12)
    unique = len(torch.unique(idx))
    assert sum(read_bytes) == unique * ROW_BYTES < N * ROW_BYTES // 20
    exact = p.engine(cache=False, projection_dim=None).influence(p.test, k=None)
    torch.testing.assert_close(
        got.influence_scores, torch.gather(exact, 1, got.indices), rtol=RTOL_REORDER, atol=atol_reorder(exact)
    )
