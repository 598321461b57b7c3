"""The engine on CUDA gives the CPU's scores (marker ``gpu``; skipped without CUDA, so CI without a GPU skips it).

The tutorial's ``Net`` on CIFAR-shaped random data, 3 checkpoints with different learning rates: TracInCPFast,
TracInCPFastRandProj (exact rerank) and TracInCP (all layers) on ``device="cuda"`` against ``device="cpu"``
(top-10 indices and scores, self-influence), the same through ``nn.DataParallel`` on one GPU, and Captum 0.9's
TracInCPFast on the GPU against ours. In strict float32 (``torch.backends.cudnn.allow_tf32 = False``) the scores
agree to ``RTOL_DEVICE`` of the largest. PyTorch's default lets cuDNN's convolutions use TF32 (a 10-bit mantissa)
and the engine follows PyTorch's settings, so under TF32 only the top-10 must agree.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from tracin_widgets.influence import ExactNearestNeighbors, TracInCP, TracInCPFast, TracInCPFastRandProj
from tracin_widgets.tutorial import Net

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

# A score is a sum over ~3,000 training rows x 3 checkpoints of products of float32 factors; the CPU and the GPU
# sum in different orders and cuBLAS/cuDNN pick other kernels, so each side carries ~sqrt(terms) * eps32 relative
# rounding of the largest score (sqrt(9000) * 1.2e-7 = 1.1e-5); 1e-4 leaves a margin of ~10x for the convs' and
# reductions' own orders. A real device bug (a wrong layer, a missing checkpoint) moves scores by O(1).
RTOL_DEVICE = 1e-4
N, N_TEST = 3000, 6
LOSS = nn.CrossEntropyLoss(reduction="sum")


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double().cpu() - b.double().cpu()).abs().max() / b.double().abs().max().clamp_min(1e-30))


@pytest.fixture(scope="module")
def problem(tmp_path_factory):
    torch.manual_seed(0)
    x, y = torch.randn(N, 3, 32, 32), torch.randint(0, 10, (N,))
    test = (torch.randn(N_TEST, 3, 32, 32), torch.randint(0, 10, (N_TEST,)))
    net, paths = Net(), []
    folder = tmp_path_factory.mktemp("gpu-smoke")
    for c, lr in enumerate((0.5, 0.2, 0.05)):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(0.05 * torch.randn_like(p))
        paths.append(str(folder / f"ckpt-{c}.pt"))
        torch.save({"model_state_dict": net.state_dict(), "learning_rate": lr}, paths[-1])
    return {"x": x, "y": y, "test": test, "paths": paths}


def _engine(kind: str, device: str, model: nn.Module, p: dict):
    ds = TensorDataset(p["x"], p["y"])
    if kind == "fast":
        return TracInCPFast(model, "fc3", ds, p["paths"], loss_fn=LOSS, batch_size=256, device=device)
    if kind == "randproj":
        return TracInCPFastRandProj(
            model,
            "fc3",
            ds,
            p["paths"],
            loss_fn=LOSS,
            batch_size=256,
            device=device,
            projection_dim=64,
            nearest_neighbors=ExactNearestNeighbors(),
        )
    cp_ds = TensorDataset(p["x"][:600], p["y"][:600])
    return TracInCP(
        model, cp_ds, p["paths"], loss_fn=nn.CrossEntropyLoss(reduction="none"), batch_size=128, device=device
    )


@pytest.fixture
def cudnn_tf32():
    """Restores ``torch.backends.cudnn.allow_tf32`` after the test; the test sets it."""
    before = torch.backends.cudnn.allow_tf32
    yield
    torch.backends.cudnn.allow_tf32 = before


@pytest.mark.parametrize("kind", ["fast", "randproj", "cp"])
@pytest.mark.parametrize("mode", ["strict", "dataparallel", "tf32"])
def test_cuda_scores_equal_the_cpu_scores(problem, kind, mode, cudnn_tf32):
    torch.backends.cudnn.allow_tf32 = mode == "tf32"
    ref = _engine(kind, "cpu", Net(), problem)
    eng = _engine(kind, "cuda", nn.DataParallel(Net()) if mode == "dataparallel" else Net(), problem)
    for proponents in (True, False):
        a = ref.influence(problem["test"], k=10, proponents=proponents)
        b = eng.influence(problem["test"], k=10, proponents=proponents)
        assert torch.equal(a.indices, b.indices.cpu())
        if mode != "tf32":
            assert _rel(b.influence_scores, a.influence_scores) < RTOL_DEVICE
    if mode != "tf32":
        assert _rel(eng.self_influence(), ref.self_influence()) < RTOL_DEVICE


def _captum_load(model: nn.Module, path: str) -> float:
    obj = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(obj["model_state_dict"])
    return float(obj["learning_rate"])


def test_cuda_scores_equal_captums_on_the_gpu(problem, cudnn_tf32):
    captum = pytest.importorskip("captum.influence")
    torch.backends.cudnn.allow_tf32 = False
    x, y, test = problem["x"], problem["y"], problem["test"]
    cnet = Net()
    on_dev = TensorDataset(x.cuda(), y.cuda())  # Captum never moves the data itself
    cap = captum.TracInCPFast(
        cnet, cnet.fc3, on_dev, problem["paths"], checkpoints_load_func=_captum_load, loss_fn=LOSS, batch_size=256
    )
    cap.model.cuda()
    ours = TracInCPFast(
        Net(),
        "fc3",
        TensorDataset(x, y),
        problem["paths"],
        checkpoints_load_func=_captum_load,
        loss_fn=LOSS,
        batch_size=256,
        device="cuda",
    )
    a = cap.influence(tuple(t.cuda() for t in test), k=10, proponents=True)
    b = ours.influence(test, k=10, proponents=True)
    assert torch.equal(a[0].cpu(), b.indices.cpu())
    assert _rel(b.influence_scores, a[1]) < RTOL_DEVICE
