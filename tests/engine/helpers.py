"""Small builders shared by the engine tests."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


def save_perturbed_checkpoints(model: nn.Module, folder, n: int, scale: float, prefix: str = "ckpt-") -> list[str]:
    """``n`` plain state-dict checkpoints: each adds ``scale * randn`` (global RNG) to every parameter of ``model``
    (which is modified in place) and saves it as ``folder/{prefix}{i}.pt``. Returns the paths."""
    paths = []
    for i in range(n):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(scale * torch.randn_like(p))
        paths.append(str(Path(folder) / f"{prefix}{i}.pt"))
        torch.save(model.state_dict(), paths[-1])
    return paths
