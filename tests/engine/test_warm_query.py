"""A warm query runs no probe forward and works out no rows per forward again: both are kept per feature shapes
and dtypes, and done again only for shapes the engine has not seen."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tracin_widgets.influence import _memory

from .conftest import MLP


class FlatMLP(MLP):
    """The mlp on any input of 8 values per row: ``(n, 8)`` and ``(n, 2, 4)`` are both taken."""

    def forward(self, x):
        return super().forward(x.flatten(1))


def _engine(eng, mlp, kind):
    torch.manual_seed(0)
    model = FlatMLP()
    if kind == "cp":
        loss = nn.CrossEntropyLoss(reduction="none")
        obj = eng.TracInCP(model, mlp.train_dataset(), mlp.ckpts, mlp.load_func, loss_fn=loss, batch_size=10)
    else:
        loss = nn.CrossEntropyLoss(reduction="sum")
        obj = eng.TracInCPFast(model, "fc2", mlp.train_dataset(), mlp.ckpts, mlp.load_func, loss_fn=loss, batch_size=10)
    return model, obj


@pytest.mark.parametrize("kind", ["cp", "fast"])
def test_a_warm_query_runs_no_probe_forward_until_the_shapes_change(eng, mlp, kind, monkeypatch):
    model, obj = _engine(eng, mlp, kind)
    x, y = mlp.test  # 5 rows; the probe forward takes 2, the activation measurement 4, the training batches 10
    obj.influence((x, y), k=3)
    rows: list[int] = []
    model.register_forward_hook(lambda mod, inp, out: rows.append(inp[0].shape[0]))
    reads: list[torch.device] = []
    free = _memory.free_memory
    monkeypatch.setattr(_memory, "free_memory", lambda device: (reads.append(device), free(device))[1])

    def probes() -> int:
        return sum(1 for n in rows if n in (2, 4))

    for inputs in ((x, y), (x * 0.5, y)):  # the same query, then other rows of the same shapes
        rows.clear()
        obj.influence(inputs, k=3, proponents=False)
        assert probes() == 0, rows
    if kind == "fast":  # (TracInCP's new rows need a training pass, which reads the free memory per batch)
        assert reads == []
    reads.clear()
    rows.clear()
    other = obj.influence((x.reshape(-1, 2, 4), y), k=3)  # new feature shapes: probed, rows worked out again
    assert probes() == 1, rows
    if kind == "fast":
        assert reads
    assert torch.equal(other.indices, obj.influence((x, y), k=3).indices)
