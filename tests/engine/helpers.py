"""Small builders shared by the engine tests."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.utils.data import TensorDataset

from tracin_widgets.influence import ExactNearestNeighbors, TracInCPFast, TracInCPFastRandProj


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


class StoreProblem:
    """A small last-layer problem (an MLP 8 -> 16 -> 5, 3 checkpoints with learning rates 0.5, 1, 2, ``n`` random
    rows) whose engines share one ``cache_dir`` store: the store tests' workload."""

    LRS = (0.5, 1.0, 2.0)

    def __init__(self, tmp_path: Path, n: int = 3000, seed: int = 0):
        torch.manual_seed(seed)
        self.model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 5))
        self.paths = save_perturbed_checkpoints(self.model, tmp_path, 3, 0.3)
        g = torch.Generator().manual_seed(seed + 1)
        self.x, self.y = torch.randn(n, 8, generator=g), torch.randint(0, 5, (n,), generator=g)
        self.test = (torch.randn(6, 8, generator=g), torch.randint(0, 5, (6,), generator=g))
        self.cache = tmp_path / "cache"

    def load(self, net, path):
        net.load_state_dict(torch.load(path, weights_only=True))
        return self.LRS[self.paths.index(path)]

    def engine(self, cls=TracInCPFast, cache=True, phases=None, **kw):
        kw.setdefault("batch_size", 100)
        if phases is not None:
            kw["progress_callback"] = lambda ph, d, t: phases.append((ph, d))
        if cls is TracInCPFastRandProj:
            kw.setdefault("nearest_neighbors", ExactNearestNeighbors())
        return cls(
            self.model,
            "2",
            TensorDataset(self.x, self.y),
            self.paths,
            checkpoints_load_func=self.load,
            loss_fn=nn.CrossEntropyLoss(reduction="sum"),
            cache_dir=self.cache if cache else None,
            **kw,
        )

    def store(self) -> Path:
        (folder,) = self.cache.glob("tracin-fast-store-*")
        return folder
