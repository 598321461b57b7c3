"""The factor store of ``cache_dir=`` (format, resume, lock, full disk), ``max_memory=`` (streamed queries equal the
in-memory ones) and ``factor_dtype=`` (float32 unchanged, bfloat16 within its documented tolerance)."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from tracin_widgets.influence import (
    Cancelled,
    TracInCPFast,
    TracInCPFastRandProj,
    TracInWarning,
    _store,
)
from tracin_widgets.influence.fast import FactorBank

from .oracle import assert_scores_close
from .problems import Problem
from .tolerances import ATOL_HALF_OF_MAX, RTOL_POSITIVE, RTOL_REORDER, atol_reorder

N = 3000
LRS = Problem.LRS


def _manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def _count_rows(monkeypatch) -> list[int]:
    """Rows the engine computes factors for (training batches only)."""
    rows: list[int] = []
    real = TracInCPFast._factors_of

    def spy(self, batches, *a, **k):
        if a[3] == "training batch":
            rows.append(sum(b[0].shape[0] for b in batches))
        return real(self, batches, *a, **k)

    monkeypatch.setattr(TracInCPFast, "_factors_of", spy)
    return rows


# ---------------------------------------------------------------------------------------------------------------------
# the store's format
# ---------------------------------------------------------------------------------------------------------------------
def test_store_files_and_manifest(tmp_path):
    p = Problem(tmp_path)
    obj = p.engine()
    self_inf = obj.self_influence()
    folder = p.store()
    m = _manifest(folder)
    assert folder.name == f"tracin-fast-store-{m['fingerprint']}"
    assert m["format"] == 1 and m["kind"] == "fast" and m["layer"] == "2"
    assert m["rows"] == m["rows_complete"] == N and m["complete"] is True and m["checkpoints"] == 3
    assert m["dims"] == {"A": 16, "G": 5} and m["dtype"] == m["norm_dtype"] == "float32"
    assert m["learning_rates"] == list(LRS) and m["loss"].endswith("CrossEntropyLoss|sum")
    A, G = obj.factors_.factors
    for c in range(3):  # plain row-major files, readable with numpy.memmap
        a = np.memmap(folder / f"A-{c}.bin", dtype=np.float32, mode="r", shape=(N, 16))
        g = np.memmap(folder / f"G-{c}.bin", dtype=np.float32, mode="r", shape=(N, 5))
        assert np.array_equal(a, A[:, c].numpy()) and np.array_equal(g, G[:, c].numpy())
    norms = np.fromfile(folder / "norms.bin", dtype=np.float32).reshape(N, 3, 2)
    lr = np.asarray(LRS, dtype=np.float32)
    np.testing.assert_allclose((norms[..., 0] * norms[..., 1] * lr).sum(1), self_inf.numpy(), rtol=RTOL_POSITIVE)


def test_old_pt_factor_files_are_ignored(tmp_path):
    p = Problem(tmp_path, n=300)
    p.cache.mkdir()
    fresh = p.engine(cache=False).influence(p.test)
    obj = p.engine()
    fp = obj._store_target()[1]["fingerprint"]
    (p.cache / f"tracin-fast-factors-{fp}.pt").write_bytes(b"an old cache file")  # the .pt of earlier versions
    phases: list = []
    assert torch.equal(p.engine(phases=phases).influence(p.test), fresh)
    assert any(ph == "training factors" for ph, _ in phases)


# ---------------------------------------------------------------------------------------------------------------------
# an interrupted pass resumes
# ---------------------------------------------------------------------------------------------------------------------
def test_cancelled_pass_resumes_from_the_last_block(tmp_path, monkeypatch):
    p = Problem(tmp_path)
    fresh = p.engine(cache=False)
    expected, expected_self = fresh.influence(p.test), fresh.self_influence()

    seen = {"done": 0}

    def cancel_after_a_third(phase, done, total):
        if phase == "training factors" and done >= N // 3:
            seen["done"] = done
            raise Cancelled()

    with pytest.raises(Cancelled):
        p.engine(progress_callback=cancel_after_a_third).influence(p.test)
    m = _manifest(p.store())
    assert m["complete"] is False and m["rows_complete"] == seen["done"] and 0 < seen["done"] < N

    rows = _count_rows(monkeypatch)
    obj = p.engine()
    assert_scores_close(obj.influence(p.test), expected)
    assert sum(rows) == N - seen["done"], "the stored rows were computed again"
    assert_scores_close(obj.self_influence(), expected_self)
    assert _manifest(p.store())["complete"] is True


@pytest.mark.slow
def test_killed_pass_resumes_from_the_last_recorded_block(tmp_path):
    """A job killed mid-pass (no exception handler runs): the blocks the manifest records survive it."""
    p = Problem(tmp_path)
    script = textwrap.dedent(
        f"""
        import os, torch
        from torch import nn
        from torch.utils.data import TensorDataset
        from tracin_widgets.influence import TracInCPFast, _store
        _store.StoreWriter.commit_seconds = 0.0  # a commit after every block
        x, y = torch.load({str(tmp_path / "data.pt")!r})
        model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 5))
        def kill(phase, done, total):
            if phase == "training factors" and done >= {N // 2}:
                os._exit(3)
        TracInCPFast(model, "2", TensorDataset(x, y), {p.paths!r}, loss_fn=nn.CrossEntropyLoss(reduction="sum"),
                     batch_size=100, cache_dir={str(p.cache)!r}, progress_callback=kill).self_influence()
        """
    )
    torch.save((p.x, p.y), tmp_path / "data.pt")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 3, run.stderr
    kept = _manifest(p.store())["rows_complete"]
    assert 0 < kept < N
    fresh = TracInCPFast(p.model, "2", TensorDataset(p.x, p.y), p.paths, loss_fn=nn.CrossEntropyLoss(reduction="sum"))
    phases: list = []
    again = TracInCPFast(
        p.model,
        "2",
        TensorDataset(p.x, p.y),
        p.paths,
        loss_fn=nn.CrossEntropyLoss(reduction="sum"),
        cache_dir=p.cache,
        progress_callback=lambda ph, d, t: phases.append((ph, d)),
    )
    assert_scores_close(again.influence(p.test), fresh.influence(p.test))
    assert _manifest(p.store())["complete"] is True


# ---------------------------------------------------------------------------------------------------------------------
# a full disk, a second writer
# ---------------------------------------------------------------------------------------------------------------------
def _fill_disk_after(monkeypatch, writes: int) -> None:
    real = os.pwrite
    count = {"n": 0}

    def pwrite(fd, data, offset):
        count["n"] += 1
        if count["n"] > writes:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data, offset)

    monkeypatch.setattr(_store.os, "pwrite", pwrite)


def test_full_disk_stops_with_an_error_naming_the_store_and_keeps_the_blocks(tmp_path, monkeypatch):
    p = Problem(tmp_path)
    expected = p.engine(cache=False).influence(p.test, k=5)
    monkeypatch.setattr(_store.StoreWriter, "commit_seconds", 0.0)
    _fill_disk_after(monkeypatch, 7 * 3)  # 7 files per block (A, G per checkpoint, norms): 3 blocks fit
    with pytest.raises(
        OSError, match=r"cannot write the factor store '.*tracin-fast-store-\w+' \(the disk is full\)\. "
    ):
        p.engine(max_memory=10_000).influence(p.test, k=5)
    m = _manifest(p.store())
    assert m["complete"] is False and m["rows_complete"] > 0
    kept = m["rows_complete"]
    monkeypatch.undo()
    rows = _count_rows(monkeypatch)
    got = p.engine(max_memory=10_000).influence(p.test, k=5)
    assert sum(rows) == N - kept
    assert torch.equal(got.indices, expected.indices)
    assert_scores_close(got.influence_scores, expected.influence_scores)


def test_full_disk_with_factors_in_memory_warns_and_keeps_the_result(tmp_path, monkeypatch):
    """When the factors fit in memory the store is only a cache: a full disk warns (as before) and the result
    is still computed; the complete blocks are kept for a later call."""
    p = Problem(tmp_path)
    expected = p.engine(cache=False).influence(p.test)
    monkeypatch.setattr(_store.StoreWriter, "commit_seconds", 0.0)
    _fill_disk_after(monkeypatch, 7 * 2)
    with pytest.warns(TracInWarning, match=r"cannot be written \(OSError: \[Errno 28\] No space left on device\)"):
        got = p.engine().influence(p.test)
    assert torch.equal(got, expected)
    assert _manifest(p.store())["rows_complete"] > 0


def test_a_second_writer_is_refused_naming_the_first(tmp_path):
    p = Problem(tmp_path, n=300)
    obj = p.engine()
    folder = obj._store_target()[0]
    folder.mkdir(parents=True)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, fcntl, os; f = open(sys.argv[1], 'a+'); fcntl.flock(f, fcntl.LOCK_EX); "
            "f.write(str(os.getpid())); f.flush(); print('locked', flush=True); sys.stdin.read()",
            str(folder / ".lock"),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(
            ValueError, match=rf"is being written by another process \(pid {holder.pid}\).*another cache_dir"
        ):
            obj.self_influence()
    finally:
        holder.communicate("", timeout=30)
    assert torch.equal(obj.self_influence(), p.engine(cache=False).self_influence())  # the lock is free again


# ---------------------------------------------------------------------------------------------------------------------
# max_memory: streaming equals in memory
# ---------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def streamed(tmp_path_factory):
    p = Problem(tmp_path_factory.mktemp("stream"))
    mem = p.engine(cache=False)
    row_bytes = 3 * (16 + 5) * 4
    stream = p.engine(max_memory=row_bytes * 40)  # 10-row blocks: 300 of them
    stream.fit()
    assert stream.factors_.placement == "stream" and stream.factors_.factors is None
    return p, mem, stream


@pytest.mark.parametrize("proponents", [True, False])
def test_streamed_top_k_equals_in_memory(streamed, proponents):
    p, mem, stream = streamed
    a = mem.influence(p.test, k=10, proponents=proponents)
    b = stream.influence(p.test, k=10, proponents=proponents)
    assert torch.equal(a.indices, b.indices)
    torch.testing.assert_close(
        b.influence_scores, a.influence_scores, rtol=RTOL_REORDER, atol=atol_reorder(a.influence_scores)
    )


def test_streamed_checkpoint_terms_equal_in_memory(streamed):
    """influence_by_checkpoint reads only the requested rows from the store (no factors in memory)."""
    p, mem, stream = streamed
    rows = [0, 7, 2999, 1234]
    a = mem.influence_by_checkpoint(p.test, rows)
    b = stream.influence_by_checkpoint(p.test, rows)
    assert stream.factors_.factors is None
    torch.testing.assert_close(b, a, rtol=RTOL_REORDER, atol=atol_reorder(a))
    torch.testing.assert_close(
        b.sum(-1), mem.influence(p.test, k=None)[:, rows], rtol=RTOL_REORDER, atol=atol_reorder(a)
    )


def test_streamed_scores_and_self_influence_equal_in_memory(streamed):
    p, mem, stream = streamed
    expected = mem.influence(p.test, k=None)
    atol = atol_reorder(expected)  # fp32 rounding of sums of products (chunked differently)
    torch.testing.assert_close(stream.influence(p.test, k=None), expected, rtol=RTOL_REORDER, atol=atol)
    torch.testing.assert_close(stream.self_influence(), mem.self_influence(), rtol=RTOL_POSITIVE, atol=0)


def test_a_complete_store_is_streamed_without_a_pass(streamed, monkeypatch):
    from tracin_widgets.influence._base import TracInCPBase

    p, mem, _ = streamed
    ref = p.engine(TracInCPFastRandProj, cache=False)

    def no_pass(self, *a, **k):
        raise AssertionError("a pass over the training data ran although the store is complete")

    monkeypatch.setattr(TracInCPBase, "_train_batches", no_pass)
    again = p.engine(max_memory="3KB")
    got = again.influence(p.test, k=3, proponents=False)
    assert again.factors_.placement == "stream"
    assert torch.equal(got.indices, mem.influence(p.test, k=3, proponents=False).indices)
    rp = p.engine(TracInCPFastRandProj, max_memory="3KB")  # its index is built from the streamed blocks
    a, b = rp.influence(p.test, k=4), ref.influence(p.test, k=4)
    assert torch.equal(a.indices, b.indices)
    torch.testing.assert_close(
        a.influence_scores, b.influence_scores, rtol=RTOL_REORDER, atol=atol_reorder(b.influence_scores)
    )


def test_max_memory_too_small_without_cache_dir_is_an_error_before_the_pass(tmp_path):
    p = Problem(tmp_path, n=300)
    phases: list = []
    with pytest.raises(
        ValueError,
        match=r"the training-set factors take 75.6 KB \(300 rows x 3 checkpoints x 21 values in float32\), more "
        r"than max_memory=1000 \(1 KB\), and no cache_dir was given to keep them on disk\. Pass cache_dir=",
    ):
        p.engine(cache=False, max_memory=1000, phases=phases).self_influence()
    assert not any(ph == "training factors" for ph, _ in phases)


def test_max_memory_with_an_unwritable_cache_dir_is_an_error_before_the_pass(tmp_path):
    p = Problem(tmp_path, n=300)
    (tmp_path / "file").write_text("not a folder")
    p.cache = tmp_path / "file"
    phases: list = []
    with (
        pytest.warns(TracInWarning, match="cannot be written"),
        pytest.raises(
            ValueError, match=r"more than max_memory=1000 \(1 KB\), and cache_dir '.*file' cannot be written"
        ),
    ):
        p.engine(max_memory=1000, phases=phases).self_influence()
    assert not any(ph == "training factors" for ph, _ in phases)


@pytest.mark.parametrize(
    "value, expected",
    [(1000, 1000), ("512MB", 512 * 10**6), ("10GiB", 10 * 2**30), ("1.5GB", 1_500_000_000), (" 64 kib ", 65536)],
)
def test_max_memory_sizes(value, expected):
    assert _store.parse_max_memory(value) == expected


@pytest.mark.parametrize(
    "value, exc, msg",
    [
        ("ten", ValueError, r"max_memory='ten' is not a size: pass bytes as an int"),
        ("10 GB/s", ValueError, r"is not a size"),
        ("10", ValueError, r"is not a size"),
        ("10Gb", ValueError, r"max_memory='10Gb' ends in a lowercase 'b' \(bits\?\): .* e\.g\. '10GB'"),
        (0, ValueError, r"max_memory must be a positive number of bytes, got 0"),
        (-5, ValueError, r"max_memory must be a positive number of bytes"),
        (1.5e9, TypeError, r"max_memory must be an int \(bytes\), a str such as '10GiB' or None, got 1500000000.0"),
        (True, TypeError, r"max_memory must be an int"),
    ],
)
def test_max_memory_errors(tmp_path, value, exc, msg):
    p = Problem(tmp_path, n=20)
    with pytest.raises(exc, match=msg):
        p.engine(max_memory=value)


# ---------------------------------------------------------------------------------------------------------------------
# factor_dtype
# ---------------------------------------------------------------------------------------------------------------------
def test_float32_factors_are_the_default_numbers(tmp_path):
    p = Problem(tmp_path)
    default = p.engine(cache=False)
    explicit = p.engine(factor_dtype=torch.float32)
    assert torch.equal(explicit.influence(p.test), default.influence(p.test))
    assert torch.equal(explicit.self_influence(), default.self_influence())
    assert explicit.factors_.factors.A.dtype == torch.float32


BF16_TOLERANCE = 0.01  # |score - fp32 score| <= this x max |fp32 score| of the test row (docs/engine.md states it)


def _check_half(fp32, half, test):
    s32, s16 = fp32.influence(test), half.influence(test)
    err = (s16 - s32).abs().amax(1) / s32.abs().amax(1)
    assert float(err.max()) <= BF16_TOLERANCE, err
    k = min(10, s32.shape[1] // 4)
    top32, top16 = s32.topk(k, dim=1).indices, s16.topk(k, dim=1).indices
    overlap = np.mean([len(set(a.tolist()) & set(b.tolist())) / k for a, b in zip(top32, top16, strict=True)])
    assert overlap >= 0.9, overlap
    torch.testing.assert_close(half.self_influence(), fp32.self_influence(), rtol=RTOL_POSITIVE, atol=0)  # exact norms
    return float(err.max()), overlap


@pytest.mark.parametrize("cache", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_bfloat16_factors_within_tolerance(tmp_path, cache):
    p = Problem(tmp_path)
    half = p.engine(cache=cache, factor_dtype=torch.bfloat16)
    _check_half(p.engine(cache=False), half, p.test)
    assert half.factors_.factors.A.dtype == torch.bfloat16
    if cache:
        m = _manifest(p.store())
        assert m["dtype"] == "bfloat16" and m["norm_dtype"] == "float32"
        assert (p.store() / "A-0.bin").stat().st_size == N * 16 * 2
        again = p.engine(factor_dtype=torch.bfloat16, max_memory="1KB")  # streamed from the bf16 store
        assert torch.equal(again.influence(p.test, k=5).indices, half.influence(p.test, k=5).indices)


@pytest.mark.parametrize("setup", ["mlp", "cnn"])
def test_bfloat16_on_the_fixtures(eng, tb, setup, request):
    from .conftest import Cfg

    s = request.getfixturevalue(setup)
    cfg = Cfg("fast", "sum")
    _check_half(tb.engine(eng, s, cfg), tb.engine(eng, s, cfg, factor_dtype=torch.bfloat16), s.test)


def test_float16_overflow_is_an_error(tmp_path):
    p = Problem(tmp_path, n=200)
    p.x = p.x * 1e5  # layer inputs beyond float16's range
    with pytest.raises(ValueError, match=r"factor_dtype=torch.float16 cannot hold the factors of training rows from 0"):
        p.engine(cache=False, factor_dtype=torch.float16).self_influence()


def test_factor_dtype_errors(tmp_path):
    p = Problem(tmp_path, n=20)
    with pytest.raises(
        ValueError, match=r"factor_dtype must be torch.float32 \(exact\), torch.bfloat16 or .* got torch.int8"
    ):
        p.engine(factor_dtype=torch.int8)


def test_default_placement(monkeypatch):
    """Default: on a GPU under 3/4 of its free memory, else in host memory under half of its free memory, else
    (with a store) read from the store; max_memory smaller than the factors: read from the store."""
    free = {"cuda": 1000, "cpu": 10_000}
    monkeypatch.setattr(_store, "free_memory", lambda d: free[d.type])
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert _store.placement(750, cuda, None, True) == "device"
    assert _store.placement(751, cuda, None, True) == "host"
    assert _store.placement(5001, cuda, None, True) == "stream"
    assert _store.placement(5001, cuda, None, False) == "host"  # nowhere else to go
    assert _store.placement(5000, cpu, None, True) == "device"
    assert _store.placement(5001, cpu, None, True) == "stream"
    assert _store.placement(400, cuda, 300, True) == "stream"
    assert _store.placement(300, cuda, 300, True) == "device"


def test_kept_rows_fill_preallocated_tensors_and_survive_a_wrong_length():
    from tracin_widgets.influence.fast._bank import _Kept

    blocks = [torch.arange(6.0).reshape(3, 2), torch.arange(6.0, 12.0).reshape(3, 2)]
    kept = _Kept(6, torch.device("cpu"))
    kept.add(0, blocks[0])
    kept.add(3, blocks[1])
    assert kept.parts == [] and torch.equal(kept.result(6)[0], torch.cat(blocks))
    short = _Kept(4, torch.device("cpu"))  # a dataset whose len() said 4 but that yields 6 rows
    short.add(0, blocks[0])
    short.add(3, blocks[1])
    assert torch.equal(short.result(6)[0], torch.cat(blocks))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("max_memory", [None, pytest.param("1KB", marks=pytest.mark.slow)])
def test_half_factors_are_read_as_they_are_on_a_gpu(tmp_path, monkeypatch, dtype, max_memory):
    """On CUDA, half-precision factors are multiplied as they are (``torch.mm(..., out_dtype=torch.float32)``:
    float32 accumulation and result) instead of being converted to float32 block by block (3x the memory
    traffic). Emulated here on the CPU: the scores stay within the half-precision tolerance of float32, and no
    block is converted."""
    from tracin_widgets.influence.fast import _bank

    p = Problem(tmp_path)
    fp32 = p.engine(cache=False)
    half = p.engine(factor_dtype=dtype, max_memory=max_memory)
    converted = half.influence(p.test)
    seen: list[torch.dtype] = []
    monkeypatch.setattr(_bank, "_mm32_supported", lambda device: True)

    def mm32(train, test):
        seen.append(train.dtype)
        return train.double().mm(test.double().T).float()  # float32 result of exact products

    monkeypatch.setattr(_bank, "_mm32", mm32)
    native = half.influence(p.test)
    assert set(seen) == {dtype} and len(seen) % 6 == 0  # A and G of the 3 checkpoints per block, read as kept
    _check_half(fp32, half, p.test)
    assert torch.equal(half.influence(p.test, k=5).indices, fp32.influence(p.test, k=5).indices)
    # the only difference from the converted path: the test factors rounded to the factors' precision
    torch.testing.assert_close(native, converted, rtol=0, atol=float(converted.abs().max()) * ATOL_HALF_OF_MAX)
    assert not torch.equal(native, converted)


def test_factors_not_kept_as_computed_reach_the_device_in_bounded_blocks(tmp_path, monkeypatch):
    """Factors in host memory for a GPU (or kept in half precision) are copied / converted in blocks of at most
    ``block_bytes``, never whole: 78 GB of float32 factors in host memory must not be copied to an 80 GB GPU at
    once. The blocks' scores are the same as one product over all rows."""
    p = Problem(tmp_path)
    half = p.engine(cache=False, factor_dtype=torch.bfloat16)
    whole = half.influence(p.test)
    row = 3 * (16 + 5) * 4  # float32 copies of the bfloat16 rows
    monkeypatch.setattr(half.factors_, "block_bytes", 100 * row)
    sizes: list[int] = []
    blocks = FactorBank.blocks

    def spy(self, step, span=None, native=False):
        for s, A, G in blocks(self, step, span, native):
            sizes.append(A.shape[0])
            yield s, A, G

    monkeypatch.setattr(FactorBank, "blocks", spy)
    torch.testing.assert_close(half.influence(p.test), whole)
    assert max(sizes) == 100 and sum(sizes) == p.x.shape[0]
    sizes.clear()
    torch.testing.assert_close(
        half.self_influence(), p.engine(cache=False).self_influence(), rtol=RTOL_POSITIVE, atol=0
    )


def test_training_predictions_from_a_store_read_only_the_last_checkpoints_G(tmp_path, monkeypatch):
    """The explorer's training predictions (softmax of the last checkpoint) come off the loss gradients: a streamed
    store reads only the file of the last checkpoint's G (at ImageNet's shape 1/15 of the store), and gives what
    the model itself predicts and what the in-memory factors give."""
    p = Problem(tmp_path, n=500)
    p.engine().fit()  # write the store
    stream = p.engine(max_memory=2_000)
    stream.fit()
    assert stream.factors_.store is not None
    files: list[str] = []
    read = []
    real = _store._read_into

    def spy(fd, t, offset, path):
        files.append(Path(path).name)
        read.append(t.numel() * t.element_size())
        return real(fd, t, offset, path)

    monkeypatch.setattr(_store, "_read_into", spy)
    probs, labels, why = stream.train_probabilities(p.model, rows=64)
    monkeypatch.setattr(_store, "_read_into", real)
    assert probs is not None and labels is not None, why
    assert set(files) == {"G-2.bin"} and sum(read) == 500 * 5 * 4
    p.model.eval()
    with torch.no_grad():
        expected = torch.softmax(p.model(p.x), 1)
    torch.testing.assert_close(probs, expected, rtol=RTOL_REORDER, atol=atol_reorder(expected))
    assert torch.equal(labels, p.y)
    mem, mem_labels, _ = p.engine(cache=False).fit().train_probabilities(p.model, rows=64)
    assert torch.equal(probs, mem) and torch.equal(labels, mem_labels)


def test_factors_kept_in_host_memory_for_a_gpu_say_so_once(tmp_path, monkeypatch):
    """Factors over 3/4 of the GPU's free memory live in host memory and every query copies them over (7.3 s for
    ImageNet's float32 factors on an H100): a TracInWarning says so once, with the size and the bfloat16 fix."""
    from tracin_widgets.influence.fast import _bank

    monkeypatch.setattr(_bank, "placement", lambda *a, **k: "host")  # what a too-small GPU gives
    p = Problem(tmp_path, n=300)
    eng = p.engine(cache=False)
    with pytest.warns(TracInWarning) as rec:
        eng.fit()
    (w,) = [r for r in rec if "host memory" in str(r.message)]
    text = str(w.message)
    size = _store.human(eng.factors_.nbytes())
    assert text.startswith(f"the training factors take {size} (float32), more than 75% of")
    assert "every query copies them to cpu" in text and "; factor_dtype=torch.bfloat16 halves them" in text
    assert w.filename == __file__  # points at the user's call
    assert eng.factors_.placement == "host"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        eng.influence(p.test, k=3)  # said once
    half = p.engine(cache=False, factor_dtype=torch.bfloat16)
    with pytest.warns(TracInWarning, match="a GPU with more free memory keeps them there"):
        half.fit()
