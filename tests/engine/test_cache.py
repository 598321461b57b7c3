"""The factor cache on disk: reused when nothing changed, never when checkpoints, data or layer change."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import TensorDataset

from .oracle import TracInOracle, assert_scores_close
from .helpers import save_perturbed_checkpoints


def _setup(tmp_path, seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    paths = save_perturbed_checkpoints(model, tmp_path, 2, 0.2)
    x, y = torch.randn(20, 6), torch.randint(0, 3, (20,))
    return model, paths, TensorDataset(x, y), (torch.randn(4, 6), torch.randint(0, 3, (4,)))


def _engine(model, paths, ds, cache, phases, layer="2"):
    from tracin_widgets.influence import TracInCPFast

    return TracInCPFast(
        model, layer, ds, paths, loss_fn=nn.CrossEntropyLoss(reduction="sum"), batch_size=7, cache_dir=cache,
        progress_callback=lambda phase, done, total: phases.append(phase),
    )


def test_cache_reused_then_invalidated(tmp_path):
    model, paths, ds, test = _setup(tmp_path)
    cache = tmp_path / "cache"
    phases: list[str] = []
    first = _engine(model, paths, ds, cache, phases).influence(test)
    assert "training factors" in phases and len(list(cache.glob("*.pt"))) == 1

    phases.clear()
    again = _engine(model, paths, ds, cache, phases)
    assert torch.equal(again.influence(test), first)
    assert "training factors" not in phases  # read from the cache, no pass over the data

    # a changed checkpoint (same path) must not reuse the stale factors
    sd = torch.load(paths[1], weights_only=True)
    sd["2.weight"] = sd["2.weight"] * 2
    torch.save(sd, paths[1])
    phases.clear()
    changed = _engine(model, paths, ds, cache, phases).influence(test)
    assert "training factors" in phases
    oracle = TracInOracle(model, paths, final_fc_layer="2", loss_fn=nn.CrossEntropyLoss(reduction="sum"))
    assert_scores_close(changed, oracle.influence(test, ds.tensors).float())
    assert not torch.allclose(changed, first)

    # changed data -> recompute
    x, y = ds.tensors
    phases.clear()
    _engine(model, paths, TensorDataset(x + 1, y), cache, phases).influence(test)
    assert "training factors" in phases


def test_corrupt_cache_is_recomputed_not_trusted(tmp_path):
    model, paths, ds, test = _setup(tmp_path)
    cache = tmp_path / "cache"
    first = _engine(model, paths, ds, cache, []).influence(test)
    (f,) = cache.glob("*.pt")
    f.write_bytes(b"not a torch file")
    phases: list[str] = []
    assert torch.equal(_engine(model, paths, ds, cache, phases).influence(test), first)
    assert "training factors" in phases
