"""TracInCP's per-layer gradient paths (factorised Linear, hooked Conv2d / norm / Linear over tokens, vmap for the
rest) vs the float64 oracle."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from .oracle import TracInOracle, assert_scores_close
from .problems import save_perturbed_checkpoints


class OddNet(nn.Module):
    """Conv2d with padding/stride/dilation, a grouped conv (vmap path), BatchNorm (eval mode: closed form from
    hooks), a Linear applied to a 3-D input (over tokens, from hooks) and a final Linear (factorised)."""

    def __init__(self):
        super().__init__()
        self.conv_a = nn.Conv2d(2, 4, 3, stride=2, padding=1, dilation=2)
        self.conv_b = nn.Conv2d(4, 4, 3, padding=1, groups=2, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.tok = nn.Linear(4, 3)
        self.head = nn.Linear(3 * 16, 5)

    def forward(self, x):
        h = torch.relu(self.bn(self.conv_b(torch.relu(self.conv_a(x)))))  # (n, 4, 4, 4)
        h = self.tok(h.flatten(2).transpose(1, 2))  # (n, 16, 3): Linear on a 3-D input
        return self.head(h.flatten(1))


@pytest.fixture(scope="module")
def odd(tmp_path_factory):
    torch.manual_seed(3)
    model = OddNet()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.2, 0.2)
        model.bn.running_var.uniform_(0.5, 1.5)
    paths = save_perturbed_checkpoints(model, tmp_path_factory.mktemp("odd"), 2, 0.1)
    x = torch.randn(14, 2, 9, 9)
    y = torch.randint(0, 5, (14,))
    return model, paths, TensorDataset(x, y), (x[:3] * 0.5, y[:3])


@pytest.mark.parametrize("layers", [None, ["conv_a", "head"], ["conv_b", "bn", "tok"]])
def test_tracincp_layer_kinds_match_oracle(odd, layers):
    from tracin_widgets.influence import TracInCP

    model, paths, ds, test = odd
    loss = nn.CrossEntropyLoss(reduction="none")
    ours = TracInCP(model, ds, paths, layers=layers, loss_fn=loss, batch_size=5)
    oracle = TracInOracle(model, paths, layers=layers, loss_fn=loss)
    train = ds.tensors
    assert_scores_close(ours.influence(test), oracle.influence(test, train).float())
    assert_scores_close(ours.self_influence(), oracle.self_influence(train).float(), what="self-influence")


def test_tracincp_row_chunks_and_merged_batches_match_oracle(odd, monkeypatch):
    """CPU row chunks (and the per-example-gradient memory cap) and merged small batches change nothing."""
    from tracin_widgets.influence import TracInCP

    model, paths, ds, test = odd
    monkeypatch.setattr(TracInCP, "cpu_chunk", 4)
    monkeypatch.setattr(TracInCP, "max_grad_floats", 600)  # the default budget: fewer rows than cpu_chunk
    loss = nn.CrossEntropyLoss(reduction="none")
    ours = TracInCP(model, ds, paths, loss_fn=loss, batch_size=3)
    oracle = TracInOracle(model, paths, loss_fn=loss)
    assert_scores_close(ours.influence(test), oracle.influence(test, ds.tensors).float())
    assert_scores_close(ours.self_influence(), oracle.self_influence(ds.tensors).float(), what="self-influence")


class Branchy(nn.Module):
    """Data-dependent control flow around a parameter that is neither Linear nor Conv2d: vmap cannot run it."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(8, 6), nn.Linear(6, 4)
        self.scale = nn.Parameter(torch.ones(6))

    def forward(self, x):
        h = self.fc1(x) * self.scale
        if h.sum() > 1e9:
            h = h * 2
        return self.fc2(torch.relu(h))


def test_tracincp_models_vmap_cannot_run_fall_back_to_the_loop(mlp, tmp_path):
    from tracin_widgets.influence import TracInCP, TracInWarning

    torch.manual_seed(0)
    model = Branchy()
    paths = save_perturbed_checkpoints(model, tmp_path, 2, 0.2)
    loss = nn.CrossEntropyLoss(reduction="none")
    ours = TracInCP(model, mlp.train_dataset(), paths, loss_fn=loss, batch_size=16)
    oracle = TracInOracle(model, paths, loss_fn=loss)
    with pytest.warns(TracInWarning, match="vmap could not run this model"):
        got = ours.influence(mlp.test)
    assert_scores_close(got, oracle.influence(mlp.test, mlp.train).float())
    assert_scores_close(ours.self_influence(), oracle.self_influence(mlp.train).float(), what="self-influence")
