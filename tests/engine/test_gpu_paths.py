"""The GPU-only code paths, exercised on the CPU: all checkpoints in one vmapped forward (TracInCPFast) and the
engine's choice of loader workers. (The pinned TensorDataset copy needs CUDA: ``tests/gpu`` checks it against the
CPU and Captum.)"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from tracin_widgets.influence import TracInCPFast, TracInCPFastRandProj
from tracin_widgets.influence._data import estimate_workers, pass_loader

from .oracle import TracInOracle, assert_scores_close
from .problems import save_perturbed_checkpoints


@pytest.fixture
def vmapped(monkeypatch):
    monkeypatch.setattr(TracInCPFast, "_use_vmap", lambda self: True)


@pytest.mark.parametrize("setup_name", ["mlp", "cnn"])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_vmapped_checkpoints_match_the_oracle(vmapped, request, setup_name, reduction):
    s = request.getfixturevalue(setup_name)
    loss = s.loss(reduction)
    ours = TracInCPFast(
        s.model(), s.final, s.train_dataset(), s.ckpts, s.load_func, loss_fn=loss, batch_size=s.batch_size
    )
    oracle = TracInOracle(s.model(), s.ckpts, s.load_func, final_fc_layer=s.final, loss_fn=loss)
    assert_scores_close(ours.influence(s.test), oracle.influence(s.test, s.train).float())
    assert_scores_close(ours.self_influence(), oracle.self_influence(s.train).float(), what="self-influence")
    assert ours._vmap_ok is True  # the vmapped path really ran
    assert torch.backends.cudnn.allow_tf32 is True  # left as the user set it


def test_vmapped_rows_are_split_and_match_the_loop(vmapped, cnn, monkeypatch):
    monkeypatch.setattr(TracInCPFast, "gpu_rows", 6)
    monkeypatch.setattr(TracInCPFast, "vmap_min_rows", 3)  # 16-row batches in 3-row vmapped parts
    loss = cnn.loss("sum")
    ours = TracInCPFast(cnn.model(), "fc3", cnn.train_dataset(), cnn.ckpts, cnn.load_func, loss_fn=loss)
    ref = TracInCPFast(cnn.model(), "fc3", cnn.train_dataset(), cnn.ckpts, cnn.load_func, loss_fn=loss)
    ref._use_vmap = lambda: False
    got, want = ours.influence(cnn.test), ref.influence(cnn.test)
    assert ours._vmap_ok is True and ref._vmap_ok is None
    assert_scores_close(got, want)  # fp32 rounding differs between a grouped and a plain conv
    assert_scores_close(ours.self_influence(), ref.self_influence(), what="self-influence")


class Branchy(nn.Module):
    """Data-dependent control flow: torch.func.vmap cannot run it."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(8, 6), nn.Linear(6, 4)

    def forward(self, x):
        h = self.fc1(x)
        if h.sum() > 1e9:
            h = h * 2
        return self.fc2(torch.relu(h))


def test_models_vmap_cannot_run_fall_back_to_the_loop(vmapped, mlp, tmp_path):
    torch.manual_seed(0)
    model = Branchy()
    paths = save_perturbed_checkpoints(model, tmp_path, 3, 0.2, prefix="c")
    loss = nn.CrossEntropyLoss(reduction="sum")
    ours = TracInCPFast(model, "fc2", mlp.train_dataset(), paths, loss_fn=loss)
    oracle = TracInOracle(model, paths, final_fc_layer="fc2", loss_fn=loss)
    assert_scores_close(ours.influence(mlp.test), oracle.influence(mlp.test, mlp.train).float())
    assert ours._vmap_ok is False


def test_a_bad_test_batch_still_gets_the_clear_error(vmapped, mlp):
    ours = TracInCPFast(mlp.model(), "fc2", mlp.train_dataset(), mlp.ckpts, mlp.load_func, loss_fn=mlp.loss("sum"))
    ours.fit()
    with pytest.raises(ValueError, match="the model could not take the test batch"):
        ours.influence((torch.randn(3, 5), torch.zeros(3, dtype=torch.long)))
    assert ours._vmap_ok is True


def test_randproj_on_the_vmapped_path_is_exact_without_projection(vmapped, mlp):
    from tracin_widgets.influence import ExactNearestNeighbors

    loss = mlp.loss("sum")
    rp = TracInCPFastRandProj(
        mlp.model(),
        "fc2",
        mlp.train_dataset(),
        mlp.ckpts,
        mlp.load_func,
        loss_fn=loss,
        nearest_neighbors=ExactNearestNeighbors(),
        projection_dim=None,
    )
    oracle = TracInOracle(mlp.model(), mlp.ckpts, mlp.load_func, final_fc_layer="fc2", loss_fn=loss)
    want = oracle.influence(mlp.test, mlp.train).float()
    got = rp.influence(mlp.test, k=5)
    assert torch.equal(got.indices, torch.topk(want, 5, dim=1).indices)


class FakeClock:
    """``time`` for ``_data``: ``perf_counter`` advanced only by the fake dataset's reads (no timing in tests)."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self):
        return self.now


class Timed(Dataset):
    def __init__(self, n, delay, clock):
        self.n, self.delay, self.clock = n, delay, clock

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        self.clock.now += self.delay
        return torch.zeros(2), 0


def test_worker_count_follows_the_reading_time(monkeypatch):
    from tracin_widgets.influence import _data

    clock = FakeClock()
    monkeypatch.setattr(_data, "time", clock)
    assert estimate_workers(Timed(1000, 1e-6, clock), 1000, 15) == 0  # 1 ms of reading: workers cost more
    # 2,000 items x 2 ms = 4 s of reading -> sqrt(4 / WORKER_START_S) workers, capped here at 6
    assert estimate_workers(Timed(2000, 0.002, clock), 2000, 6) == 6
    # 100 items x 2 ms = 0.2 s of reading -> round(sqrt(0.2 / WORKER_START_S))
    want = round((0.2 / _data.WORKER_START_S) ** 0.5)
    assert 1 <= want < 15 and estimate_workers(Timed(100, 0.002, clock), 100, 15) == want


def test_auto_workers_are_trimmed_for_a_fast_dataset_but_not_an_explicit_choice(monkeypatch):
    from torch.utils.data import DataLoader

    from tracin_widgets.influence import _data

    clock = FakeClock()
    monkeypatch.setattr(_data, "time", clock)
    loader = DataLoader(Timed(3000, 1e-6, clock), batch_size=512)
    assert pass_loader(loader, 8, torch.device("cpu"), auto=True) is loader  # fast: no workers at all
    explicit = pass_loader(loader, 2, torch.device("cpu"), auto=False)
    assert explicit.num_workers == 2 and explicit.batch_size == 375  # ceil(3000 / 8)
    slow = DataLoader(Timed(50, 0.002, clock), batch_size=512)  # 0.1 s of reading -> round(sqrt(5)) = 2 workers
    assert pass_loader(slow, 15, torch.device("cpu"), auto=True).num_workers == 2


def test_tensor_datasets_never_get_workers():
    from torch.utils.data import DataLoader

    loader = DataLoader(TensorDataset(torch.zeros(10, 2), torch.zeros(10)), batch_size=4)
    assert pass_loader(loader, 8, torch.device("cpu")) is loader


def test_same_device_treats_an_unindexed_cuda_as_the_current_gpu():
    """``device="cuda"`` engines hold factors that report ``cuda:0``: comparing the two with ``!=`` made every
    query over on-GPU factors split into 256 MB copy blocks (291 chunks at ImageNet's shape, 22 -> 58 ms)."""
    from tracin_widgets.influence._base import same_device

    cuda, cuda0, cuda1 = torch.device("cuda"), torch.device("cuda:0"), torch.device("cuda:1")
    assert torch.device("cuda") != cuda0  # why the helper exists
    assert same_device(cuda0, cuda) and same_device(cuda, cuda1) and same_device(cuda0, cuda0)
    assert not same_device(cuda0, cuda1)
    assert not same_device(torch.device("cpu"), cuda) and same_device(torch.device("cpu"), torch.device("cpu"))
