"""TracInCP at large N: ``influence(k=...)`` keeps a running top-k of the proponents and the
opponents instead of the ``(n_test, n_train)`` matrix, the kept results are bounded in bytes, ``k=None`` that cannot
fit is refused before the pass, and ``self_influence(loader)`` streams; every result against Captum 0.9."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

from tracin_widgets.influence import _memory, _topk
from tracin_widgets.influence.cp import _score_cache

from .conftest import Cfg
from .oracle import assert_scores_close, assert_topk_consistent

CP = Cfg("cp", "none")


def _passes(phases: list[tuple[str, int, int]]) -> int:
    """How many passes over the training data a query made (each starts with an ``influence`` phase at 0)."""
    return sum(1 for p, d, _ in phases if p == "influence" and d == 0)


def _engine(eng, setup, phases=None, train=None, **kw):
    return eng.TracInCP(
        setup.model(),
        setup.train_dataset() if train is None else train,
        setup.ckpts,
        checkpoints_load_func=setup.load_func,
        loss_fn=nn.CrossEntropyLoss(reduction="none"),
        batch_size=16,
        **({} if phases is None else {"progress_callback": lambda p, d, t: phases.append((p, d, t))}),
        **kw,
    )


# ---------------------------------------------------------------------------------------------------------------------
# the running top-k
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_running_topk_of_proponents_and_opponents_matches_captum_in_one_pass(eng, tb, get_setup, name):
    setup = get_setup(name)
    phases: list = []
    obj = tb.engine(eng, setup, CP, progress_callback=lambda p, d, t: phases.append((p, d, t)))
    ref = tb.captum_scores(setup, CP)
    pro = obj.influence(setup.test, k=4, proponents=True)
    opp = obj.influence(setup.test, k=4, proponents=False)
    assert _passes(phases) == 1, "the opponents come from the pass that found the proponents"
    assert_topk_consistent(pro, ref, k=4, proponents=True)
    assert_topk_consistent(opp, ref, k=4, proponents=False)
    for proponents, full in ((True, pro), (False, opp)):  # a smaller k: the prefix, still no pass
        small = obj.influence(setup.test, k=2, proponents=proponents)
        assert torch.equal(small.indices, full.indices[:, :2])
        assert torch.equal(small.influence_scores, full.influence_scores[:, :2])
    assert _passes(phases) == 1
    larger = obj.influence(setup.test, k=6, proponents=False)  # more than was kept: a pass
    assert _passes(phases) == 2
    assert_topk_consistent(larger, ref, k=6, proponents=False)


def _tied(mlp) -> tuple[torch.Tensor, torch.Tensor]:
    """The mlp training rows with rows 10..39 zeroed: rows of the same label then have the same gradients, so
    many scores are exactly equal (ties across the batches of 16 rows)."""
    x, y = mlp.train[0].clone(), mlp.train[1]
    x[10:40] = 0
    return x, y


@pytest.mark.parametrize("k", [1, 4, 9, 57])
def test_topk_is_a_stable_sort_of_the_full_matrix_ties_to_the_lower_index(eng, mlp, k):
    """The running top-k (fresh engine) and the top-k of a kept matrix both give exactly the first k columns of a
    stable sort of the whole score matrix: same scores and, among equal scores, the lower training index first."""
    train = TensorDataset(*_tied(mlp))
    full = _engine(eng, mlp, train=train).influence(mlp.test, k=None)
    assert any(len(set(row.tolist())) < row.numel() - 5 for row in full), "the set-up must have ties"
    from_matrix = _engine(eng, mlp, train=train)
    from_matrix.influence(mlp.test, k=None)
    for proponents in (True, False):
        vals, idx = torch.sort(full, dim=1, descending=proponents, stable=True)
        running = _engine(eng, mlp, train=train).influence(mlp.test, k=k, proponents=proponents)
        for res in (running, from_matrix.influence(mlp.test, k=k, proponents=proponents)):
            assert torch.equal(res.influence_scores, vals[:, :k])
            assert torch.equal(res.indices, idx[:, :k])
            assert res.indices.dtype == torch.int64


def test_topk_does_not_depend_on_the_batching(eng, mlp):
    """Rows per batch change where the chunks start: the same indices, ties included (the scores may differ in
    the last bits: a matrix product's rounding depends on its size)."""
    train = TensorDataset(*_tied(mlp))
    results = []
    for rows in (3, 16, 512):
        obj = _engine(eng, mlp, train=train)
        obj.cpu_chunk = rows
        results.append([obj.influence(mlp.test, k=7, proponents=p) for p in (True, False)])
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            assert torch.equal(a.indices, b.indices)
            assert_scores_close(b.influence_scores, a.influence_scores, rtol=1e-5)


def test_aggregate_topk_streams_and_a_kept_matrix_answers_the_aggregate(eng, tb, mlp):
    phases: list = []
    obj = _engine(eng, mlp, phases)
    ref = tb.oracle_scores(mlp, CP, aggregate=True)
    assert_topk_consistent(obj.influence(mlp.test, k=3, aggregate=True), ref, k=3, proponents=True)
    assert all(isinstance(e, _topk.TopKPair) for e in obj._score_cache.values())
    full = obj.influence(mlp.test, k=None)
    assert _passes(phases) == 2
    assert torch.equal(obj.influence(mlp.test, k=None, aggregate=True), full.sum(0, keepdim=True))
    opp = obj.influence(mlp.test, k=3, proponents=False, aggregate=True)
    assert _passes(phases) == 2, "the kept matrix answers the aggregate too"
    assert_topk_consistent(opp, ref, k=3, proponents=False)


class Stream(IterableDataset):
    """Training rows without a length: the score matrix cannot be allocated up front."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __iter__(self):
        return iter(zip(self.x, self.y, strict=True))


def test_a_training_set_without_length_gives_the_same_matrix_and_topk(eng, tb, mlp):
    ref = tb.captum_scores(mlp, CP)
    obj = _engine(eng, mlp, train=Stream(*mlp.train))
    full = obj.influence(mlp.test, k=None)
    assert_scores_close(full, ref)
    assert torch.equal(full, _engine(eng, mlp).influence(mlp.test, k=None))
    res = _engine(eng, mlp, train=Stream(*mlp.train)).influence(mlp.test, k=5, proponents=False)
    assert_topk_consistent(res, ref, k=5, proponents=False)


# ---------------------------------------------------------------------------------------------------------------------
# what is kept
# ---------------------------------------------------------------------------------------------------------------------
def test_the_score_cache_holds_no_matrix_when_k_is_given(eng, mlp):
    obj = _engine(eng, mlp)
    n_test = mlp.test[0].shape[0]
    obj.influence(mlp.test, k=4, proponents=True)
    obj.influence(mlp.test, k=4, proponents=False)
    entries = list(obj._score_cache.values())
    assert len(entries) == 1 and isinstance(entries[0], _topk.TopKPair)
    assert all(t.shape == (n_test, 4) for t in (*entries[0].pro, *entries[0].opp))
    assert entries[0].nbytes == 2 * n_test * 4 * (4 + 8)  # float32 scores and int64 indices, both directions


def test_the_score_cache_is_bounded_in_bytes(eng, mlp):
    phases: list = []
    obj = _engine(eng, mlp, phases)
    n_test, n_train = mlp.test[0].shape[0], mlp.n_train
    matrix = n_test * n_train * 4
    obj.score_cache_bytes = matrix + 100  # one matrix, or a matrix and a few top-k's
    a = obj.influence(mlp.test, k=None)
    other = (mlp.test[0] + 1, mlp.test[1])
    b = obj.influence(other, k=None)  # the older matrix is dropped
    assert sum(_score_cache.entry_bytes(e) for e in obj._score_cache.values()) <= obj.score_cache_bytes
    assert len(obj._score_cache) == 1 and torch.equal(next(iter(obj._score_cache.values())), b)
    assert _passes(phases) == 2
    obj.influence(mlp.test, k=None)  # a pass again
    assert _passes(phases) == 3
    obj.score_cache_bytes = matrix - 1  # a matrix larger than the budget is returned, not kept
    obj._score_cache.clear()
    c = obj.influence(mlp.test, k=None)
    assert torch.equal(c, a) and len(obj._score_cache) == 0
    c += 1  # the caller owns it
    assert torch.equal(obj.influence(mlp.test, k=None), a)
    assert _passes(phases) == 5


def test_a_kept_matrix_is_copied_before_it_is_returned(eng, mlp):
    obj = _engine(eng, mlp)
    a = obj.influence(mlp.test, k=None)
    a.zero_()
    assert bool(obj.influence(mlp.test, k=None).abs().sum() > 0)


def test_full_matrix_larger_than_memory_is_refused_before_the_pass(eng, tb, mlp, monkeypatch):
    monkeypatch.setattr(_memory, "host_memory", lambda: 999)
    phases: list = []
    obj = _engine(eng, mlp, phases)
    n_test = mlp.test[0].shape[0]
    with pytest.raises(
        ValueError,
        match=re.escape(f"influence(k=None) returns the full score matrix of {n_test} test row(s) x {mlp.n_train} ")
        + r"training rows \(1 KB\), more than this machine's memory \(999 B\)\. Pass k=\.\.\. \(e\.g\. k=100\)",
    ):
        obj.influence(mlp.test, k=None)
    assert _passes(phases) == 0
    with pytest.raises(ValueError, match=r"of 1 test row\(s\) x 50 training rows \(200 B\)"):
        monkeypatch.setattr(_memory, "host_memory", lambda: 100)
        obj.influence(mlp.test, k=None, aggregate=True)
    res = obj.influence(mlp.test, k=3, proponents=False)  # the top-k needs no matrix
    assert_topk_consistent(res, tb.captum_scores(mlp, CP), k=3, proponents=False)


# ---------------------------------------------------------------------------------------------------------------------
# memory at a few hundred thousand rows
# ---------------------------------------------------------------------------------------------------------------------
class LargestTensor(TorchDispatchMode):
    """Records the element count of the largest tensor any torch operation makes while it is active."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.slow
def test_topk_memory_does_not_grow_with_n_test_times_n_train(tmp_path):
    from tracin_widgets.influence import TracInCP

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    paths = []
    for c in range(2):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(0.1 * torch.randn_like(p))
        paths.append(str(tmp_path / f"ckpt-{c}.pt"))
        torch.save(net.state_dict(), paths[-1])
    n_train, n_test = 200_000, 64
    train = TensorDataset(torch.randn(n_train, 4), torch.randint(0, 2, (n_train,)))
    test = (torch.randn(n_test, 4), torch.randint(0, 2, (n_test,)))
    obj = TracInCP(net, train, paths, loss_fn=nn.CrossEntropyLoss(reduction="none"), batch_size=4096)
    with LargestTensor() as spy:
        pro = obj.influence(test, k=10, proponents=True)
        opp = obj.influence(test, k=10, proponents=False)
    # one batch's scores (64 x 4096) and the self-influence (n_train) are the largest: not 64 x n_train
    assert spy.largest <= max(n_test * 4096, n_train) < n_test * n_train // 10
    assert all(_score_cache.entry_bytes(e) < 20_000 for e in obj._score_cache.values())
    with LargestTensor() as control:  # the spy sees a matrix when one is made
        full = obj.influence(test, k=None)
    assert control.largest >= n_test * n_train
    for res, proponents in ((pro, True), (opp, False)):
        vals, idx = torch.sort(full, dim=1, descending=proponents, stable=True)
        assert torch.equal(res.influence_scores, vals[:, :10]) and torch.equal(res.indices, idx[:, :10])


# ---------------------------------------------------------------------------------------------------------------------
# self-influence of a DataLoader
# ---------------------------------------------------------------------------------------------------------------------
class Counting(Dataset):
    """A dataset that counts the items read."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y, self.reads = x, y, 0

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        self.reads += 1
        return self.x[i], self.y[i]


def test_self_influence_of_a_loader_streams_and_equals_captum(eng, tb, mlp):
    data = Counting(*mlp.train)
    loader = DataLoader(data, batch_size=4, shuffle=False)
    seen: list[tuple[int, int]] = []

    def progress(phase: str, done: int, total: int) -> None:
        if phase == "self influence":
            seen.append((done, total))
            reads.append(data.reads)

    reads: list[int] = []
    obj = _engine(eng, mlp, progress_callback=progress)
    got = obj.self_influence(loader)
    expected = tb.captum(mlp, CP).self_influence(DataLoader(TensorDataset(*mlp.train), batch_size=4))
    assert_scores_close(got, expected, what="self_influence(DataLoader)")
    assert seen[0] == (0, mlp.n_train) and seen[-1] == (mlp.n_train, mlp.n_train)
    assert reads[1] <= 8 < mlp.n_train, "the first batch is scored before the loader is read further"
