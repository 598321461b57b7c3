"""The seeded problem factory of the engine tests: a small MLP, perturbed checkpoints, random rows.

``Problem(folder)`` is the store tests' workload (an MLP 8 -> 16 -> 5, 3 checkpoints with learning rates 0.5, 1, 2,
3,000 random rows, a test batch of 6); its arguments make the other small problems (layer sizes, activation,
number of checkpoints and their spread, rows). Everything is drawn from ``seed``: the model and the checkpoints from
torch's global generator seeded with it, the rows from ``torch.Generator().manual_seed(seed + 1)`` (or, with
``rows_from_global=True``, from the global generator right after the checkpoints).
"""

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


class Problem:
    """A last-layer problem whose engines share one ``cache_dir`` store (``folder / "cache"``).

    ``model`` is ``nn.Sequential(Linear(layers[0], layers[1]), act(), Linear(layers[1], layers[2]))`` (final layer
    ``"2"``) at the last checkpoint's weights; ``paths`` the checkpoints; ``x, y`` the training rows (``layers[2]``
    classes); ``test`` a batch of ``n_test``. :meth:`load` gives the checkpoints learning rates ``LRS``."""

    LRS = (0.5, 1.0, 2.0)

    def __init__(
        self,
        folder: Path,
        n: int = 3000,
        seed: int = 0,
        *,
        layers: tuple[int, int, int] = (8, 16, 5),
        act: type[nn.Module] = nn.ReLU,
        checkpoints: int = 3,
        scale: float = 0.3,
        n_test: int = 6,
        rows_from_global: bool = False,
    ):
        d_in, hidden, classes = layers
        torch.manual_seed(seed)
        self.model = nn.Sequential(nn.Linear(d_in, hidden), act(), nn.Linear(hidden, classes))
        self.paths = save_perturbed_checkpoints(self.model, folder, checkpoints, scale)
        g = None if rows_from_global else torch.Generator().manual_seed(seed + 1)
        self.x, self.y = torch.randn(n, d_in, generator=g), torch.randint(0, classes, (n,), generator=g)
        self.test = (torch.randn(n_test, d_in, generator=g), torch.randint(0, classes, (n_test,), generator=g))
        self.cache = Path(folder) / "cache"

    @property
    def train(self) -> TensorDataset:
        return TensorDataset(self.x, self.y)

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
