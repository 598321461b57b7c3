"""A damaged factor store is never used as if sound: every row of every file has a checksum verified when it is read
(memory load, streamed blocks, single rows of a rerank, the norms, the last checkpoint's G, the embeddings), the
manifest is checked against itself and the files, and the Annoy index against the checksum its record names, before
it is memory-mapped. Damage is real here: bytes flipped or zeroed in the files, manifests rewritten."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tracin_widgets.influence import AnnoyNearestNeighbors, TracInCPFast, TracInCPFastRandProj, TracInWarning
from tracin_widgets.influence._integrity import StoreDamaged, file_digest, row_sums, seed
from tracin_widgets.influence._store import FactorStore

from .oracle import assert_scores_close
from .problems import Problem as StoreProblem

N = 600
ROW = {"A": 16 * 4, "G": 5 * 4, "norms": 3 * 2 * 4}  # bytes per row of each file (float32, 3 checkpoints)


def _manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def _flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x10]))


@pytest.fixture
def built(tmp_path):
    p = StoreProblem(tmp_path, n=N)
    fresh = p.engine(cache=False)
    p.engine().fit()  # the complete store
    return p, fresh


def _expect(p: StoreProblem) -> dict:
    return p.engine()._store_target()[1]


# ---------------------------------------------------------------------------------------------------------------------
# the checksums
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("words", [21, 22])  # 84 bytes a row: 32-bit words; 88: 64-bit words
def test_row_sums_change_with_any_word_and_never_give_zero_for_zeros(words):
    rng = np.random.default_rng(0)
    rows = rng.integers(0, 2**32, (50, words), dtype=np.uint32)
    s = seed("A-0.bin", "float32", words)
    base = row_sums(rows.view(np.uint8).reshape(-1), 50, s)
    assert base.dtype == np.uint64
    for j in (0, 7, words - 1):
        for bit in (0, 15, 31):
            changed = rows.copy()
            changed[3, j] ^= np.uint32(1 << bit)
            got = row_sums(changed.view(np.uint8).reshape(-1), 50, s)
            assert got[3] != base[3] and np.array_equal(np.delete(got, 3), np.delete(base, 3))
    zeros = row_sums(np.zeros(50 * 4 * words, dtype=np.uint8), 50, s)
    assert (zeros == s).all() and s != 0
    assert seed("A-0.bin", "float16", 2 * words) != s  # a manifest saying another dtype or width fails every row
    halves = row_sums(np.arange(5 * 6, dtype=np.uint8), 5, 1)  # 6 bytes a row: 16-bit words
    assert halves.shape == (5,) and len(set(halves.tolist())) == 5


def test_the_writer_records_a_checksum_per_row_and_file(built):
    p, _ = built
    folder = p.store()
    m = _manifest(folder)
    assert m["check"] == "rows-u64-1"
    sums = np.fromfile(folder / "sums.bin", dtype=np.uint64).reshape(N, 7)
    g2 = np.fromfile(folder / "G-2.bin", dtype=np.uint8)
    assert np.array_equal(sums[:, 5], row_sums(g2, N, seed("G-2.bin", "float32", 5)))
    store = FactorStore.read(folder, _expect(p))
    assert store is not None and store.damaged() == []
    store.verify()


# ---------------------------------------------------------------------------------------------------------------------
# damaged bytes: every reader refuses them
# ---------------------------------------------------------------------------------------------------------------------
def _recomputed(name: str, rows: str):
    """The warning of a damaged file that is computed again (naming the file and its first damaged rows)."""
    return pytest.warns(TracInWarning, match=rf"{re.escape(name)}' is damaged \(rows {rows}\)[^:]*: .*computed again")


def _query(engine, reader, p):
    if reader == "training predictions":
        return engine.train_probabilities(p.model, rows=64)[0]
    if reader == "streamed self-influence":
        return engine.self_influence()
    return engine.influence(p.test, k=3)


@pytest.mark.parametrize(
    "reader", ["memory load", "streamed influence", "streamed self-influence", "training predictions"]
)
def test_flipped_bytes_are_recomputed_by_every_reader(built, reader):
    p, fresh = built
    folder = p.store()
    target = {"memory load": "A-1.bin", "streamed influence": "A-1.bin", "streamed self-influence": "norms.bin"}
    name = target.get(reader, "G-2.bin")
    _flip(folder / name, 417 * ROW[name.split("-")[0].removesuffix(".bin")] + 5)
    kw = {} if reader == "memory load" else {"max_memory": 4000}
    clean = _query(fresh.fit(), reader, p)
    with _recomputed(name, "417:418") as rec:
        eng = p.engine(**kw).fit()
        got = _query(eng, reader, p)
    assert {w.filename for w in rec if "damaged" in str(w.message)} == {__file__}  # the user's call
    assert any(f"{name}' is damaged" in n for n in eng.notes)
    if isinstance(got, tuple):
        assert torch.equal(got.indices, clean.indices)
        assert_scores_close(got.influence_scores, clean.influence_scores)
    else:
        assert_scores_close(got, clean)
    store = FactorStore.read(folder, _expect(p))
    assert store is not None and store.complete and store.damaged() == []


def test_a_zero_filled_block_is_recomputed(built):
    p, fresh = built
    path = p.store() / "G-2.bin"
    expected = fresh.influence(p.test)
    for kw, rows in (({}, "100:164"), ({"max_memory": 4000}, "100:102")):  # one block; blocks of 3 rows
        with open(path, "r+b") as f:
            f.seek(100 * ROW["G"])
            f.write(bytes(64 * ROW["G"]))
        with _recomputed("G-2.bin", rows):
            assert_scores_close(p.engine(**kw).influence(p.test), expected)


def test_a_second_damage_in_the_same_call_is_raised(built, monkeypatch):
    p, _ = built
    _flip(p.store() / "A-1.bin", 417 * ROW["A"])
    monkeypatch.setattr(TracInCPFast, "_recover", lambda self, e: None)  # nothing made to be computed again
    with pytest.raises(StoreDamaged, match=r"A-1\.bin' is damaged \(rows 417:418\)"):
        p.engine().fit()


def test_the_rerank_verifies_the_rows_it_reads(tmp_path):
    p = StoreProblem(tmp_path, n=N)
    kw = {"projection_dim": 16, "max_memory": 4000}
    first = p.engine(TracInCPFastRandProj, **kw)
    expected = first.influence(p.test, k=2)
    cand = expected.indices[0, 0].item()  # a row the rerank will read
    _flip(p.store() / "G-0.bin", cand * ROW["G"] + 2)
    with _recomputed("G-0.bin", f"{cand}:{cand + 1}"):
        got = first.influence(p.test, k=2)
    assert torch.equal(got.indices, expected.indices)
    assert_scores_close(got.influence_scores, expected.influence_scores)


def test_damaged_lists_every_damaged_file_and_truncate_lets_a_resume_recompute_from_there(built, monkeypatch):
    p, fresh = built
    expected = fresh.influence(p.test)
    folder = p.store()
    _flip(folder / "A-1.bin", 300 * ROW["A"])
    _flip(folder / "A-1.bin", 302 * ROW["A"] + 63)
    _flip(folder / "norms.bin", 500 * ROW["norms"])
    store = FactorStore.read(folder, _expect(p))
    assert store is not None
    found = {e.path.name: e.rows for e in store.damaged(rows=128)}
    assert found == {"A-1.bin": [(300, 301), (302, 303)], "norms.bin": [(500, 501)]}
    with pytest.raises(StoreDamaged, match=r"A-1\.bin' is damaged \(rows 300:301, 302:303\)") as e:
        store.verify()
    store.truncate(e.value.first_row)  # what the pass does before resuming (holding the lock)
    assert _manifest(folder)["rows_complete"] == 300 and _manifest(folder)["complete"] is False
    computed: list[int] = []
    real = TracInCPFast._factors_of

    def spy(self, batches, *a, **k):
        computed.append(sum(b[0].shape[0] for b in batches))
        return real(self, batches, *a, **k)

    monkeypatch.setattr(TracInCPFast, "_factors_of", spy)
    assert_scores_close(p.engine().fit().influence(p.test), expected)
    assert sum(computed) == N - 300 + len(p.test[0])  # the rows from the first damaged one, and the test rows
    assert FactorStore.read(folder, _expect(p)).damaged() == []  # type: ignore[union-attr]


# ---------------------------------------------------------------------------------------------------------------------
# manifests that contradict the files: the store is not used (recomputed), never a NaN, never a crash
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("change", "blamed", "reason"),
    [
        ({"dtype": "float16"}, "A-0.bin", r"holds 38400 bytes where the manifest records 600 rows of 32"),
        ({"norm_dtype": "bfloat16"}, "norms.bin", r"holds 14400 bytes where the manifest records 600 rows of 12"),
        ({"dims": {"A": 16, "G": 7}}, "G-0.bin", r"holds 12000 bytes where the manifest records 600 rows of 28"),
        (
            {"rows_complete": -5, "complete": False},
            "manifest.json",
            r"rows_complete=-5, complete=False are not row counts",
        ),
        ({"rows_complete": 10}, "manifest.json", r"rows_complete=10 does not fit rows=600 \(complete=True\)"),
        ({"empty": True}, "A-0.bin", r"holds 0 bytes where the manifest records 600 rows of 64"),
    ],
)
def test_a_manifest_that_contradicts_the_files_is_damage_and_the_store_is_recomputed(built, change, blamed, reason):
    p, fresh = built
    folder = p.store()
    m = _manifest(folder)
    if change.pop("empty", False):
        for f in folder.glob("*.bin"):
            f.write_bytes(b"")
    m.update(change)
    (folder / "manifest.json").write_text(json.dumps(m))
    store, damage = FactorStore.inspect(folder, _expect(p))
    assert store is None and damage is not None and damage.path == folder / blamed
    assert re.search(reason, str(damage)), str(damage)
    seen: list[StoreDamaged] = []
    assert FactorStore.read(folder, _expect(p), seen.append) is None and [e.path for e in seen] == [damage.path]
    with pytest.warns(TracInWarning, match=rf"{re.escape(blamed)}' is damaged: .*it is computed again"):
        assert_scores_close(p.engine().influence(p.test), fresh.influence(p.test))
    assert_scores_close(p.engine(max_memory=4000).influence(p.test), fresh.influence(p.test))
    assert _manifest(folder)["complete"] is True and FactorStore.read(folder, _expect(p)) is not None


def test_a_manifest_whose_dtype_and_dims_fit_the_file_sizes_is_caught_by_the_checksums(built):
    p, fresh = built
    folder = p.store()
    m = _manifest(folder)
    m.update(dtype="float16", dims={"A": 32, "G": 10})  # the same bytes per row as 16 and 5 float32
    (folder / "manifest.json").write_text(json.dumps(m))
    with _recomputed("A-0.bin", "0:600"):
        assert_scores_close(p.engine().influence(p.test), fresh.influence(p.test))


def test_the_store_of_an_older_format_without_checksums_is_not_used(built):
    p, fresh = built
    folder = p.store()
    m = _manifest(folder)
    del m["check"]
    (folder / "manifest.json").write_text(json.dumps(m))
    assert FactorStore.inspect(folder, _expect(p)) == (None, None)
    assert_scores_close(p.engine().influence(p.test), fresh.influence(p.test))
    assert _manifest(folder)["check"] == "rows-u64-1"


# ---------------------------------------------------------------------------------------------------------------------
# RandProj: the embeddings file and the Annoy index
# ---------------------------------------------------------------------------------------------------------------------
def test_flipped_bytes_in_the_embeddings_file_are_rebuilt(tmp_path):
    p = StoreProblem(tmp_path, n=N)
    kw = {"projection_dim": 16, "max_memory": 4000}
    expected = p.engine(TracInCPFastRandProj, **kw).influence(p.test, k=None)
    (emb,) = p.store().glob("E-*.bin")
    _flip(emb, 123 * 48 * 4 + 1)  # 48 values a row: 4 x 4 per checkpoint
    with _recomputed(emb.name, "123:124"):
        assert_scores_close(p.engine(TracInCPFastRandProj, **kw).influence(p.test, k=None), expected)
    assert emb.read_bytes() and FactorStore.read(p.store(), _expect(p)) is not None


def _index(tmp_path: Path, tag: str, scale: float = 1.0) -> Path:
    data = torch.randn(500, 12, generator=torch.Generator().manual_seed(0)) * scale
    path = tmp_path / f"annoy-{tag}-t4.ann"
    AnnoyNearestNeighbors(num_trees=4).build_on_disk(path, [data], rows=500, dim=12)
    return path


def test_the_index_record_names_what_it_was_built_from(tmp_path):
    pytest.importorskip("annoy")
    path = _index(tmp_path, "aa11")
    record = json.loads(path.with_name(path.name + ".json").read_text())
    assert record["name"] == path.name and record["tag"] == "aa11"
    assert (record["items"], record["dim"], record["trees"], record["bytes"]) == (500, 12, 4, path.stat().st_size)
    with open(path, "rb") as f:
        assert record["digest"] == file_digest(f.fileno(), path.stat().st_size)
    assert AnnoyNearestNeighbors(num_trees=4).load(path, 500, 12)
    assert not AnnoyNearestNeighbors(num_trees=4).load(path, 500, 12, tag="bb22")


_LOAD = """
import sys
from tracin_widgets.influence import AnnoyNearestNeighbors
print("loaded" if AnnoyNearestNeighbors(num_trees=4).load(sys.argv[1], 500, 12) else "refused", flush=True)
"""


@pytest.mark.parametrize("damage", ["flipped", "another index and its record"])
def test_a_damaged_or_foreign_index_is_refused_before_it_is_mapped(tmp_path, damage):
    """In a subprocess: a damaged index memory-mapped by Annoy can kill the process (SIGSEGV)."""
    pytest.importorskip("annoy")
    path = _index(tmp_path, "aa11")
    if damage == "flipped":  # the size is unchanged
        for offset in range(0, path.stat().st_size, 997):
            _flip(path, offset)
    else:  # another build (another seed, another tag) copied over this one, with its record
        other = _index(tmp_path, "bb22", scale=2.0)
        path.write_bytes(other.read_bytes())
        path.with_name(path.name + ".json").write_bytes(other.with_name(other.name + ".json").read_bytes())
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", _LOAD, str(path)], capture_output=True, text=True, timeout=120, cwd=root
    )
    assert done.returncode == 0 and done.stdout.strip() == "refused", done.stdout + done.stderr
