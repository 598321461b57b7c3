"""Scores do not depend on how rows are batched: CPU row chunks, the TensorDataset fast path, workers."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from .oracle import TracInOracle, assert_scores_close
from .problems import Problem, save_perturbed_checkpoints
from .tolerances import RTOL_REORDER, atol_reorder


class PlainDataset(Dataset):
    """Per-item dataset (no fast path)."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


@pytest.fixture(scope="module")
def problem(tmp_path_factory):
    p = Problem(
        tmp_path_factory.mktemp("batching"),
        n=23,
        seed=7,
        layers=(5, 7, 3),
        act=nn.Tanh,
        checkpoints=2,
        n_test=4,
        rows_from_global=True,
    )
    return p.model, p.paths, p.x, p.y, p.test


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_cpu_row_chunks_match_oracle(problem, monkeypatch, reduction):
    from tracin_widgets.influence import TracInCPFast

    model, paths, x, y, test = problem
    monkeypatch.setattr(TracInCPFast, "cpu_chunk", 4)  # force 10-row batches through 4-row chunks
    loss = nn.CrossEntropyLoss(reduction=reduction)
    ours = TracInCPFast(model, "2", TensorDataset(x, y), paths, loss_fn=loss, batch_size=10)
    oracle = TracInOracle(model, paths, final_fc_layer="2", loss_fn=loss)
    assert_scores_close(ours.influence(test), oracle.influence(test, (x, y)).float())
    assert_scores_close(ours.self_influence(), oracle.self_influence((x, y)).float(), what="self-influence")


def test_fast_path_and_per_item_loaders_agree(problem):
    from tracin_widgets.influence import TracInCP, TracInCPFast

    model, paths, x, y, test = problem
    loss = nn.CrossEntropyLoss(reduction="sum")
    a = TracInCPFast(model, "2", TensorDataset(x, y), paths, loss_fn=loss, batch_size=6)
    b = TracInCPFast(model, "2", PlainDataset(x, y), paths, loss_fn=loss, batch_size=6)
    c = TracInCPFast(model, "2", DataLoader(PlainDataset(x, y), batch_size=5, num_workers=1), paths, loss_fn=loss)
    ref, atol = a.influence(test), atol_reorder(a.influence(test))
    assert torch.allclose(ref, b.influence(test), rtol=RTOL_REORDER, atol=atol)
    assert torch.allclose(ref, c.influence(test), rtol=RTOL_REORDER, atol=atol)
    loss_none = nn.CrossEntropyLoss(reduction="none")
    d = TracInCP(model, TensorDataset(x, y), paths, loss_fn=loss_none, batch_size=6)
    e = TracInCP(model, PlainDataset(x, y), paths, loss_fn=loss_none, batch_size=6)
    assert torch.allclose(
        d.self_influence(), e.self_influence(), rtol=RTOL_REORDER, atol=atol_reorder(e.self_influence())
    )


@pytest.mark.parametrize("per_item", [True, False])
def test_merged_training_batches_keep_rows_and_order(problem, per_item):
    """GPU runs merge loader batches into larger ones: same rows, same order, right offsets."""
    from tracin_widgets.influence import TracInCPFast

    model, paths, x, y, _ = problem
    ds = PlainDataset(x, y) if per_item else TensorDataset(x, y)
    ours = TracInCPFast(model, "2", ds, paths, loss_fn=nn.CrossEntropyLoss(reduction="sum"), batch_size=3)
    got = list(ours._train_batches(min_rows=10))
    sizes = [len(b[1]) for _, b in got]
    assert [off for off, _ in got] == [sum(sizes[:i]) for i in range(len(sizes))]
    assert sizes == ([12, 11] if per_item else [10, 10, 3])
    assert torch.equal(torch.cat([b[0] for _, b in got]), x)
    assert torch.equal(torch.cat([b[1] for _, b in got]), y)
    assert all(len(b[1]) >= 10 for _, b in got[:-1])


def test_worker_pass_reads_small_batches_and_matches_oracle(problem):
    """With workers, the engine reads a Dataset in small batches (every worker busy) and merges them again."""
    from tracin_widgets.influence import TracInCP, TracInCPFast
    from tracin_widgets.influence._data import pass_loader

    model, paths, x, y, test = problem
    loss = nn.CrossEntropyLoss(reduction="sum")
    ours = TracInCPFast(model, "2", PlainDataset(x, y), paths, loss_fn=loss, batch_size=20, num_workers=2)
    loader = pass_loader(ours.train_dataloader, ours.num_workers, ours.device)
    assert loader is not ours.train_dataloader and loader.num_workers == 2
    assert loader.batch_size == 20  # 23 rows / (2 workers * 4) -> at least 32 rows, at most batch_size
    oracle = TracInOracle(model, paths, final_fc_layer="2", loss_fn=loss)
    assert_scores_close(ours.influence(test), oracle.influence(test, (x, y)).float())
    big = PlainDataset(torch.randn(1000, 5), torch.randint(0, 3, (1000,)))
    wide = TracInCPFast(model, "2", big, paths, loss_fn=loss, batch_size=512, num_workers=2)
    assert pass_loader(wide.train_dataloader, 2, wide.device).batch_size == 125  # ceil(1000 / 8)
    assert pass_loader(wide.train_dataloader, 0, wide.device) is wide.train_dataloader
    cp = TracInCP(model, big, paths, loss_fn=nn.CrossEntropyLoss(reduction="none"), batch_size=512, num_workers=2)
    ref = TracInCP(model, TensorDataset(big.x, big.y), paths, loss_fn=nn.CrossEntropyLoss(reduction="none"))
    assert torch.allclose(
        cp.self_influence(), ref.self_influence(), rtol=RTOL_REORDER, atol=atol_reorder(ref.self_influence())
    )


def test_auto_workers_only_for_per_item_datasets_on_a_gpu(problem, monkeypatch):
    from tracin_widgets.influence import _data

    _, _, x, y, _ = problem
    monkeypatch.setattr(_data, "usable_cores", lambda: 40)
    gpu, cpu = torch.device("cuda"), torch.device("cpu")
    assert _data.auto_workers(PlainDataset(x, y), gpu) == 16
    assert _data.auto_workers(TensorDataset(x, y), gpu) == 0
    assert _data.auto_workers(PlainDataset(x, y), cpu) == 0
    monkeypatch.setattr(_data, "usable_cores", lambda: 1)
    assert _data.auto_workers(PlainDataset(x, y), gpu) == 0


# ---------------------------------------------------------------------------------------------------------------------
# rows per forward follow the model's activation memory
# ---------------------------------------------------------------------------------------------------------------------
def test_rows_per_forward_arithmetic():
    from tracin_widgets.influence._memory import rows_per_forward

    cpu = torch.device("cpu")
    # 512 rows x 1 kB x safety 2 = 1 MB <= half of 1 GB: the merge target
    assert rows_per_forward(1000, 512, 64, cpu, free_bytes=10**9) == 512
    # 1 MB x 2 per row: 25 rows fit in half of 100 MB (below batch_size 64)
    assert rows_per_forward(10**6, 512, 64, cpu, free_bytes=10**8) == 25
    # 250 rows fit, but a model too large to merge runs at most batch_size rows
    assert rows_per_forward(10**5, 512, 64, cpu, free_bytes=10**8) == 64
    assert rows_per_forward(10**5, 512, None, cpu, free_bytes=10**8) == 250
    # a vmapped forward runs 5 checkpoints at once: 5x the memory per row
    assert rows_per_forward(10**5, 100, None, cpu, copies=5, free_bytes=10**8) == 50
    assert rows_per_forward(10**5, 100, None, cpu, safety=4.0, free_bytes=10**8) == 100
    assert rows_per_forward(10**5, 1000, None, cpu, safety=4.0, free_bytes=10**8) == 125
    assert rows_per_forward(10**9, 512, 64, cpu, free_bytes=10**6) == 1  # never below one row


def test_summed_module_outputs_and_free_memory():
    from tracin_widgets.influence._memory import forward_memory, free_memory

    lin = nn.Linear(4, 3)
    x = torch.randn(2, 4)
    assert forward_memory(lin, lambda: lin(x), (x,))[0] == 2 * 4 * 4 + 2 * 3 * 4  # input + output, float32
    assert free_memory(torch.device("cpu")) > 0


def test_small_models_stay_merged(cnn):
    """The tutorial's Net: 16,384 rows per forward fit in a modest GPU's free memory, so batches stay merged."""
    from tracin_widgets.influence import TracInCPFast
    from tracin_widgets.influence._memory import rows_per_forward

    ours = TracInCPFast(
        cnn.model(), "fc3", cnn.train_dataset(), cnn.ckpts, cnn.load_func, loss_fn=cnn.loss("sum"), batch_size=16
    )
    ours.fit()
    assert 20_000 < ours._row_bytes < 100_000  # ~58 kB of module outputs per 3x32x32 image
    gpu_free = 8 << 30
    assert rows_per_forward(ours._row_bytes, 16384, 16, torch.device("cuda"), free_bytes=gpu_free) == 16384
    assert (
        rows_per_forward(ours._row_bytes, 16384 // 3, 16, torch.device("cuda"), copies=3, free_bytes=gpu_free) == 5461
    )


class WideConv(nn.Module):
    """Large activations for its size: 64 channels at 16x16 (~130 kB of module outputs per row)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 64, 3, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, 3)

    def forward(self, x):
        return self.fc(self.pool(self.relu(self.conv(x))).flatten(1))


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    torch.manual_seed(3)
    model = WideConv()
    paths = save_perturbed_checkpoints(model, tmp_path_factory.mktemp("wide"), 3, 0.1)
    x, y = torch.randn(40, 3, 16, 16), torch.randint(0, 3, (40,))
    return model, paths, x, y, (torch.randn(5, 3, 16, 16), torch.randint(0, 3, (5,)))


def _rows_seen(obj):
    seen: list[int] = []
    obj._net.conv.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[0]))
    return seen


@pytest.mark.parametrize("kind", ["loop", "vmap", "cp"])
def test_rows_per_forward_drop_when_memory_is_short_and_scores_do_not_change(wide, monkeypatch, kind):
    from tracin_widgets.influence import TracInCP, TracInCPFast, _memory

    model, paths, x, y, test = wide
    if kind == "vmap":
        monkeypatch.setattr(TracInCPFast, "_use_vmap", lambda self: True)

    def build():
        if kind == "cp":
            return TracInCP(
                model,
                TensorDataset(x, y),
                paths,
                layers=["fc", "conv"],
                loss_fn=nn.CrossEntropyLoss(reduction="none"),
                batch_size=16,
            )
        return TracInCPFast(
            model, "fc", TensorDataset(x, y), paths, loss_fn=nn.CrossEntropyLoss(reduction="sum"), batch_size=16
        )

    def run(obj):
        return obj.influence(test), obj.self_influence()

    default = build()
    seen_default = _rows_seen(default)
    want = run(default)
    assert max(seen_default) == 40  # plenty of memory: the 16-row batches are merged (CPU target: 512 rows)

    monkeypatch.setattr(_memory, "free_memory", lambda device: 4_000_000)  # 4 MB: a few rows of ~130 kB
    short = build()
    seen = _rows_seen(short)
    got = run(short)
    rows = short._rows(short.cpu_chunk, backward=kind == "cp")
    assert 1 <= rows < 16  # below the merge target, and below batch_size
    # first a 2-row forward checks that the model takes the test batch, then a 4-row no-grad probe measures the
    # activation memory
    assert seen[:2] == [2, 4] and max(seen[2:]) == rows
    if kind == "vmap":  # all 3 checkpoints in one forward: a third of the rows
        assert short._vmap_ok is True
        vrows = short._rows(max(short.vmap_min_rows, short.gpu_rows // 3), copies=3)
        assert vrows == rows // 3 and vrows in seen
    for g, w in zip(got, want, strict=False):
        torch.testing.assert_close(g, w, rtol=RTOL_REORDER, atol=atol_reorder(w))


def test_forward_memory_reads_the_allocator_peak_between_module_ends():
    """On CUDA a no-grad forward is sized by what the allocator really held (read at each module's end), not by
    the sum of every output: a stack of layers whose outputs are freed as it goes holds one or two at once."""
    from tracin_widgets.influence._memory import forward_memory

    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    x = torch.randn(3, 4)
    live = iter([1000, 1096, 1192, 1120, 1024])  # before the call, then after each of the 4 modules' ends
    summed, peak = forward_memory(net, lambda: net(x), (x,), allocated=lambda: next(live))
    assert summed == 3 * 4 * 4 + 3 * 8 * 4 * 2 + 3 * 2 * 4 + 3 * 2 * 4  # input, 2 x (3, 8), 2 x (3, 2) outputs
    assert peak == 192 + 3 * 4 * 4  # the highest rise above the start, plus the inputs
    assert forward_memory(net, lambda: net(x), (x,))[1] is None  # no allocator counter: no peak


def test_large_models_loop_over_checkpoints_on_a_gpu(cnn, monkeypatch):
    """vmap only pays for small (launch-bound) models: when memory caps a vmapped forward below its share of the
    merge target, the GPU path loops over the checkpoints with cuDNN's own kernels; a no-grad forward is sized by
    the measured peak, a backward pass by the summed outputs."""
    from tracin_widgets.influence import TracInCPFast, _memory

    ours = TracInCPFast(
        cnn.model(), "fc3", cnn.train_dataset(), cnn.ckpts, cnn.load_func, loss_fn=cnn.loss("sum"), batch_size=64
    )
    monkeypatch.setattr(_memory, "free_memory", lambda device: 8 << 30)
    ours.device = torch.device("cuda")  # only the decision is exercised: nothing runs on the device
    C, want = len(ours.checkpoints), max(TracInCPFast.vmap_min_rows, TracInCPFast.gpu_rows // len(ours.checkpoints))
    ours._row_bytes, ours._row_peak = 100e6, 10e6  # ResNet-50-like: 100 MB of outputs, 10 MB held at once
    assert ours._use_vmap() is False  # (8 GiB / 2) / (2 x 10 MB x C) rows < want
    assert ours._rows(16384) == 64  # capped by memory, then by the loader's batch size
    assert ours._rows(16384, backward=True) == 10  # (8 GiB / 2) / (4 x 100 MB)
    ours._row_bytes, ours._row_peak = 60e3, 20e3  # the tutorial's Net
    assert ours._use_vmap() is True
    assert ours._rows(want, copies=C) == want
    ours.device = torch.device("cpu")
    assert ours._use_vmap() is False


def test_the_vmapped_forward_keeps_the_users_precision_settings(cnn, monkeypatch):
    """The engine runs under PyTorch's own precision flags, as a plain forward and Captum do (cuDNN's TF32 for
    convolutions is PyTorch's default on GPUs; a user who turns it off gets strict fp32 everywhere)."""
    from tracin_widgets.influence import TracInCPFast

    monkeypatch.setattr(TracInCPFast, "_use_vmap", lambda self: True)
    seen: list[bool] = []
    for flag in (True, False):
        monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", flag)
        ours = TracInCPFast(cnn.model(), "fc3", cnn.train_dataset(), cnn.ckpts, cnn.load_func, loss_fn=cnn.loss("sum"))
        ours._net.conv1.register_forward_hook(lambda m, i, o: seen.append(torch.backends.cudnn.allow_tf32))
        ours.fit()
        assert ours._vmap_ok is True
        assert set(seen) == {flag}
        seen.clear()
