"""TracInCP's memory is bounded by one chunk: the per-example gradients materialised at once (one checkpoint's, of
one chunk of training rows) stay within ``max_memory`` whatever the batch size, for a Conv2d, a Linear over tokens,
vmapped and looped parameters; the scores do not change. Measured as what is allocated (a spy on every tensor
torch makes), not as resident memory or time."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from tracin_widgets.influence import TracInCP, _memory
from tracin_widgets.influence.cp import _pass
from tracin_widgets.influence.cp._grad_sample import _plan

from .oracle import assert_scores_close
from .problems import save_perturbed_checkpoints
from .test_tracincp_memory import LargestTensor

N_TRAIN = 600


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 64, 3)  # 1,216 parameters, 16 output positions
        self.head = nn.Linear(64, 3)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)).mean((2, 3)))


class TokenLinear(nn.Module):
    def __init__(self, features: int = 4):
        super().__init__()
        self.lin = nn.Linear(features, 256)  # 1,280 parameters with 4 features
        self.head = nn.Linear(256, 3)

    def forward(self, x):
        return self.head(torch.tanh(self.lin(x)).mean(1))


class Scaled(nn.Module):
    """A parameter no hook computes: vmap, or (``branchy``) the loop, since vmap cannot run the branch."""

    def __init__(self, branchy: bool = False):
        super().__init__()
        self.branchy = branchy
        self.scale = nn.Parameter(torch.ones(1024))
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        h = (x.repeat(1, 128) * self.scale).reshape(-1, 128, 8).mean(1)
        if self.branchy and h.sum() > 1e9:
            h = h * 2
        return self.head(h)


MODELS = {
    "conv2d": (ConvNet, (2, 6, 6), ["conv"]),
    "linear-tokens": (TokenLinear, (3, 4), ["lin"]),
    "linear-gram": (lambda: TokenLinear(64), (2, 64), ["lin"]),
    "vmap": (Scaled, (8,), None),
    "loop": (lambda: Scaled(branchy=True), (8,), None),
}


def _engine(kind, tmp_path, **kw):
    make, shape, layers = MODELS[kind]
    torch.manual_seed(0)
    model = make()
    paths = save_perturbed_checkpoints(model, tmp_path, 2, 0.05)
    x, y = torch.randn(N_TRAIN, *shape), torch.randint(0, 3, (N_TRAIN,))
    test = (torch.randn(4, *shape), torch.randint(0, 3, (4,)))
    loss = nn.CrossEntropyLoss(reduction="none")
    obj = TracInCP(model, TensorDataset(x, y), paths, layers=layers, loss_fn=loss, batch_size=N_TRAIN, **kw)
    return obj, test


@pytest.mark.filterwarnings("ignore:torch.func.vmap could not run")
@pytest.mark.parametrize("kind", ["conv2d", "linear-tokens", "vmap", "loop"])
def test_per_example_gradients_are_bounded_by_one_chunk(kind, tmp_path, monkeypatch):
    """``max_memory`` of 40 rows' gradients: no tensor the pass makes is larger (the batch of 600 rows would be
    15x that), and the scores are those of large chunks."""
    monkeypatch.setattr(_plan, "_gram_wins", lambda *a: False)  # the Linear and Conv2d materialised
    numel = {"conv2d": 1216, "linear-tokens": 1280, "vmap": 1024, "loop": 1024}[kind]
    budget = 40 * numel * 4 * 3  # bytes: 40 rows of gradients with their temporaries (float32)
    small, test = _engine(kind, tmp_path, max_memory=budget)
    sizes: list[int] = []
    blocks = _pass.BlockPass._blocks

    def spy(self, *a, **kw):
        out = blocks(self, *a, **kw)
        sizes.append(sum(t.numel() * t.element_size() for b in out for t in b.tensors()))
        return out

    monkeypatch.setattr(_pass.BlockPass, "_blocks", spy)
    with LargestTensor() as seen:
        got = small.influence(test, k=5)
        self_inf = small.self_influence()
    assert max(sizes) <= budget, "one checkpoint's gradients of one chunk fit max_memory"
    assert seen.largest * 4 <= budget, "no tensor of the pass is larger than the budget (nothing concatenated)"
    big, _ = _engine(kind, tmp_path, max_memory="1GB")
    with LargestTensor() as control:
        want = big.influence(test, k=5)
    assert control.largest * 4 > 3 * budget, "the spy sees the larger chunks' gradients when they fit"
    assert torch.equal(got.indices, want.indices)
    assert_scores_close(got.influence_scores, want.influence_scores, rtol=1e-5)
    assert_scores_close(self_inf, big.self_influence(), rtol=1e-5, what="self-influence")


def test_the_default_budget_is_a_share_of_free_memory_and_max_grad_floats(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(_memory, "free_memory", lambda device: 10_000)
    assert _memory.chunk_budget(cpu, None, 1 << 30) == 10_000 * _memory.MEMORY_FRACTION
    monkeypatch.setattr(_memory, "free_memory", lambda device: 1 << 40)
    assert _memory.chunk_budget(cpu, None, 512 << 20) == 512 << 20
    assert _memory.chunk_budget(cpu, 1234, 512 << 20) == 1234


def test_a_token_gram_layer_materialises_no_out_by_in_gradient(tmp_path):
    """The token-Gram path keeps the tokens' inputs and output gradients only: a Linear(64, 256) over 2 tokens
    (where the Gram trick costs fewer flops) makes nothing larger than a chunk's activations (rows x 2 x 256),
    never the chunk's gradients (rows x 16,640)."""
    obj, test = _engine("linear-gram", tmp_path)
    with LargestTensor() as seen:
        obj.influence(test, k=5)
    assert obj.gradient_paths()["lin"] == "Linear over 2 tokens (token Gram, never materialised)"
    assert seen.largest <= 512 * 2 * 256


@pytest.mark.parametrize(
    ("value", "error", "match"),
    [
        ("2gb", ValueError, "max_memory='2gb' ends in a lowercase 'b' (bits?)"),
        (0, ValueError, "max_memory must be a positive number of bytes, got 0"),
        (1.5, TypeError, "max_memory must be an int (bytes), a str such as '10GiB' or None, got 1.5"),
        ("lots", ValueError, "max_memory='lots' is not a size"),
    ],
)
def test_max_memory_is_checked_at_construction(tmp_path, value, error, match):
    with pytest.raises(error, match=re.escape(match)):
        _engine("vmap", tmp_path, max_memory=value)


def test_max_memory_accepts_accelerate_sizes(tmp_path):
    assert _engine("vmap", tmp_path, max_memory="2GB")[0].max_memory == 2 * 10**9
    assert _engine("vmap", tmp_path, max_memory="512MiB")[0].max_memory == 512 << 20
