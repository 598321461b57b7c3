"""The exact CPU max-pool replacement used in the engine's no-grad forwards (tracin_widgets.influence._ops)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tracin_widgets.influence._ops import FastCpuOps, _fast_max_pool2d, max_pool2x2


@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (1, 1, 2, 2), (3, 4, 9, 7), (5, 28, 28), (2, 6, 3, 2)])
def test_max_pool2x2_equals_torch(shape):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    assert torch.equal(max_pool2x2(x), F.max_pool2d(x, 2, 2))


def test_nan_and_inf_propagate_like_torch():
    x = torch.randn(2, 3, 6, 6)
    x[0, 1, 2, 3] = float("nan")
    x[1, 2, 0, 0] = float("inf")
    x[1, 0, 4, 4] = -float("inf")
    ours, ref = max_pool2x2(x), F.max_pool2d(x, 2, 2)
    assert torch.equal(torch.isnan(ours), torch.isnan(ref)) and torch.isnan(ours).sum() == 1
    assert torch.equal(torch.nan_to_num(ours), torch.nan_to_num(ref))


@pytest.mark.parametrize(
    "args,kwargs",
    [
        ((2,), {}),
        ((2, 2), {}),
        (((2, 2),), {"stride": (2, 2), "padding": 0, "dilation": 1}),
        ((), {"kernel_size": 2}),
    ],
)
def test_routes_the_2x2_window(args, kwargs):
    x = torch.randn(2, 3, 10, 10)
    assert _fast_max_pool2d((x, *args), kwargs) is not None


@pytest.mark.parametrize(
    "args,kwargs",
    [
        ((3,), {}),
        ((2, 1), {}),
        ((2,), {"padding": 1}),
        ((2,), {"dilation": 2}),
        ((2,), {"ceil_mode": True}),
        ((2,), {"return_indices": True}),
    ],
)
def test_other_windows_fall_back(args, kwargs):
    x = torch.randn(2, 3, 10, 10)
    assert _fast_max_pool2d((x, *args), kwargs) is None


def test_non_contiguous_integer_and_grad_inputs_fall_back():
    x = torch.randn(2, 3, 10, 10)
    assert _fast_max_pool2d((x.contiguous(memory_format=torch.channels_last), 2), {}) is None
    assert _fast_max_pool2d((x.to(torch.int32), 2), {}) is None
    assert _fast_max_pool2d((x.requires_grad_(True), 2), {}) is None


class PoolNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.pool = nn.MaxPool2d(2, 2)
        self.pool3 = nn.MaxPool2d(3, 1, padding=1)  # not routed: must still be right
        self.fc = nn.Linear(4 * 4 * 4, 5)

    def forward(self, x):
        x = self.pool3(self.pool(torch.relu(self.conv(x))))
        x = torch.max_pool2d(x, 2)
        return self.fc(x.flatten(1))


def test_mode_gives_identical_model_outputs_and_only_without_autograd():
    torch.manual_seed(0)
    net = PoolNet().eval()
    x = torch.randn(16, 3, 18, 18)
    with torch.no_grad():
        ref = net(x)
        with FastCpuOps():
            out = net(x)
    assert torch.equal(out, ref)
    calls = []

    class Spy(FastCpuOps):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            if func in self._pools and not torch.is_grad_enabled():
                calls.append(_fast_max_pool2d(args, kwargs or {}) is not None)
            return super().__torch_function__(func, types, args, kwargs)

    with torch.no_grad(), Spy():
        net(x)
    assert calls == [True, False, True]  # the 3x3 pool went to torch
    calls.clear()
    with Spy():  # autograd on: nothing is replaced, gradients are torch's own
        out = net(x)
    assert calls == [] and torch.equal(out.detach(), ref)
