"""The path of a warm TracInCPFast query: few changes of module, no memory measurement (the rows per forward are
measured once per feature shape), and the exact CPU kernels only for a model whose forward calls one."""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from tracin_widgets.influence import TracInCPBase, TracInCPFast
from tracin_widgets.influence._ops import FastCpuOps

from .conftest import MLP, Net
from .tolerances import RTOL_REORDER, atol_reorder

PKG = "tracin_widgets."

# A warm ``influence(batch, k=3)`` over 3 checkpoints on the CPU enters this many modules of the package one after
# another (consecutive calls in the same module count once): the lock, the query, the argument checks, the test
# batch read and its labels checked, its factors at each checkpoint (the loss between), and the scores and top-k.
WARM_QUERY_MODULE_CHANGES = 19


def _engine(tmp_path, model: nn.Module, x: torch.Tensor, n_classes: int) -> tuple[TracInCPFast, tuple]:
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, n_classes, (x.shape[0],), generator=g)
    paths = []
    for i in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01 * torch.randn(p.shape, generator=g))
        path = tmp_path / f"checkpoint-{i}.pt"
        torch.save(model.state_dict(), path)
        paths.append(str(path))
    layer = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
    eng = TracInCPFast(model, layer, TensorDataset(x, y), paths, loss_fn=nn.CrossEntropyLoss(reduction="sum"))
    return eng, (x[:5], y[:5])


def _module_changes(call) -> int:
    """Changes of module between consecutive calls of the package's functions while ``call()`` runs."""
    seen: list[str] = []

    def profile(frame, event, arg):
        name = frame.f_globals.get("__name__", "")
        if event == "call" and name.startswith(PKG):
            seen.append(name)

    sys.setprofile(profile)
    try:
        call()
    finally:
        sys.setprofile(None)
    return sum(a != b for a, b in zip(seen, seen[1:], strict=False))


def test_a_warm_query_stays_in_few_modules(tmp_path):
    torch.manual_seed(0)
    eng, batch = _engine(tmp_path, MLP(), torch.randn(200, 8), 4)
    first = eng.influence(batch, k=3)
    eng.influence(batch, k=3)
    changes = _module_changes(lambda: eng.influence(batch, k=3))
    assert changes <= WARM_QUERY_MODULE_CHANGES, changes
    warm = eng.influence(batch, k=3)
    assert torch.equal(warm.indices, first.indices) and torch.equal(warm.influence_scores, first.influence_scores)


def test_a_warm_query_measures_no_memory(tmp_path, monkeypatch):
    """The rows per forward of a query are measured for its first batch of each feature shape, not per checkpoint
    and query (a read of the free memory each time)."""
    torch.manual_seed(0)
    eng, batch = _engine(tmp_path, MLP(), torch.randn(200, 8), 4)
    eng.fit()
    calls: list[int] = []
    real = TracInCPBase._rows

    def rows(self, *a, **k):
        calls.append(1)
        return real(self, *a, **k)

    monkeypatch.setattr(TracInCPBase, "_rows", rows)
    eng.influence(batch, k=3)
    assert len(calls) == 1  # the first query of this shape
    eng.influence(batch, k=3)
    eng.influence((batch[0][:3], batch[1][:3]), k=3)  # fewer rows, the same feature shape
    assert len(calls) == 1
    assert torch.equal(eng.influence(batch), eng.influence(batch))


@pytest.mark.parametrize("model, pools", [("mlp", False), ("cnn", True)])
def test_the_exact_cpu_kernels_only_for_a_model_that_calls_them(tmp_path, monkeypatch, model, pools):
    """``FastCpuOps`` dispatches every torch call of a forward through Python: it is entered only when the first
    forward asked for a kernel it replaces (the tutorial CNN's max-pool), and the scores are the same either way."""
    torch.manual_seed(0)
    net, x, classes = (MLP(), torch.randn(60, 8), 4) if model == "mlp" else (Net(), torch.randn(60, 3, 32, 32), 10)
    eng, batch = _engine(tmp_path, net, x, classes)
    scores = eng.influence(batch)
    assert eng._pool_calls is pools
    entered: list[int] = []
    real = FastCpuOps.__enter__

    def enter(self):
        entered.append(1)
        return real(self)

    monkeypatch.setattr(FastCpuOps, "__enter__", enter)
    eng._last_test = None  # the same rows again would reuse their test factors: no forward to watch
    assert torch.equal(eng.influence(batch), scores)
    assert bool(entered) is pools


def test_the_same_test_rows_again_run_no_forward(tmp_path):
    """Proponents then opponents of one test batch (Captum's tutorial does both): the second query reuses the test
    factors; rows changed in place, or other rows, are computed again."""
    torch.manual_seed(0)
    eng, (x, y) = _engine(tmp_path, MLP(), torch.randn(200, 8), 4)
    batch = (x.clone(), y.clone())  # not a view of the training rows, which stay as they are
    eng.fit()
    forwards: list[int] = []
    eng.model.fc1.register_forward_hook(lambda m, i, o: forwards.append(i[0].shape[0]))
    pro = eng.influence(batch, k=3)
    n = len(forwards)
    opp = eng.influence(batch, k=3, proponents=False)
    assert len(forwards) == n  # no forward for the same rows
    x, y = batch
    want = eng.influence((x.clone(), y.clone()), k=3, proponents=False)  # equal content: reused too
    assert len(forwards) == n and torch.equal(want.indices, opp.indices)
    x[0, 0] += 1.0  # changed in place: computed again, with the new values
    changed = eng.influence(batch)
    assert len(forwards) > n
    fresh = TracInCPFast(eng.model, eng.final_fc_layer, eng.train_dataset, eng.checkpoints, loss_fn=eng.loss_fn)
    torch.testing.assert_close(changed, fresh.influence(batch), rtol=RTOL_REORDER, atol=atol_reorder(changed))
    assert not torch.allclose(changed[0, pro.indices[0]], pro.influence_scores[0])
