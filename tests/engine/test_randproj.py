"""TracInCPFastRandProj: exact without projection, Annoy recall, seeded projections without global RNG side effects."""

import pytest
import torch

from .conftest import Cfg
from .oracle import assert_scores_close, assert_topk_consistent
from .problems import save_perturbed_checkpoints


@pytest.mark.parametrize("proponents", [True, False])
def test_exact_neighbors_exact_topk(eng, tb, cnn, proponents):
    cfg = Cfg("rp", "sum")
    obj = tb.engine(eng, cnn, cfg, nearest_neighbors=eng.ExactNearestNeighbors(), projection_dim=None)
    res = obj.influence(cnn.test, k=5, proponents=proponents)
    assert_topk_consistent(res, tb.oracle_scores(cnn, cfg), k=5, proponents=proponents)


@pytest.mark.parametrize("proponents", [True, False])
def test_annoy_recall(eng, tb, cnn, proponents):
    pytest.importorskip("annoy")
    cfg = Cfg("rp", "sum")
    k = 5
    obj = tb.engine(
        eng, cnn, cfg, nearest_neighbors=eng.AnnoyNearestNeighbors(num_trees=50), projection_dim=None, rerank=None
    )
    res = obj.influence(cnn.test, k=k, proponents=proponents)
    ref = tb.oracle_scores(cnn, cfg)
    exact = torch.topk(ref if proponents else -ref, k, dim=1).indices
    hits = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(res.indices, exact, strict=False))
    recall = hits / exact.numel()
    assert recall >= 0.9, f"annoy recall@{k} = {recall:.2f}"
    assert res.indices.dtype == torch.int64
    # the returned scores are the true scores of the returned examples
    assert_scores_close(res.influence_scores, torch.gather(ref, 1, res.indices), rtol=1e-3)


def test_default_nearest_neighbors_works(eng, tb, mlp):
    pytest.importorskip("annoy")
    cfg = Cfg("rp", "sum")
    obj = eng.TracInCPFastRandProj(
        mlp.model(), "fc2", mlp.train_dataset(), mlp.ckpts, mlp.load_func, loss_fn=mlp.loss("sum"), batch_size=16
    )
    res = obj.influence(mlp.test, k=3)
    ref = tb.oracle_scores(mlp, cfg)
    assert_scores_close(res.influence_scores, torch.gather(ref, 1, res.indices), rtol=1e-3)


def _projected(eng, tb, setup, seed, projection_dim=16, model=None):
    return tb.engine(
        eng,
        setup,
        Cfg("rp", "sum"),
        model=model,
        projection_dim=projection_dim,
        seed=seed,
        nearest_neighbors=eng.ExactNearestNeighbors(),
    )


def test_projection_seeded_and_deterministic(eng, tb, cnn):
    """Same seed -> identical results twice; a different seed -> different projections."""
    a = _projected(eng, tb, cnn, seed=7)
    b = _projected(eng, tb, cnn, seed=7)
    sa, sb = a.influence(cnn.test, k=None), b.influence(cnn.test, k=None)
    assert torch.equal(sa, sb)
    ra, rb = a.influence(cnn.test, k=4), b.influence(cnn.test, k=4)
    assert torch.equal(ra.indices, rb.indices) and torch.equal(ra.influence_scores, rb.influence_scores)
    assert torch.isfinite(sa).all() and tuple(sa.shape) == (5, cnn.n_train)
    sc = _projected(eng, tb, cnn, seed=8).influence(cnn.test, k=None)
    assert not torch.equal(sa, sc)
    # the projection is an approximation of the exact scores, not something unrelated
    exact = tb.oracle_scores(cnn, Cfg("rp", "sum")).flatten()
    corr = torch.corrcoef(torch.stack([sa.double().flatten(), exact]))[0, 1]
    assert corr > 0.25, f"projected scores uncorrelated with exact ones (r={corr:.2f})"


def test_no_global_rng_side_effect(eng, tb, cnn):
    model = cnn.model()  # (seeds the global RNG itself: before the snapshot)
    torch.manual_seed(99)
    state = torch.get_rng_state()
    obj = _projected(eng, tb, cnn, seed=3, model=model)
    assert torch.equal(torch.get_rng_state(), state), "constructing TracInCPFastRandProj changed the global RNG"
    obj.influence(cnn.test, k=3)
    obj.influence(cnn.test, k=None)
    assert torch.equal(torch.get_rng_state(), state), "influence() changed the global RNG"


def test_projection_dim_not_smaller_than_layer_size_is_exact(eng, tb, mlp):
    """Captum projects only if J*A > projection_dim: here J*A = 4*16 = 64."""
    obj = _projected(eng, tb, mlp, seed=0, projection_dim=64)
    assert_scores_close(obj.influence(mlp.test, k=None), tb.oracle_scores(mlp, Cfg("rp", "sum")))


@pytest.mark.parametrize("proponents", [True, False])
def test_projection_with_exact_rerank_recall(eng, tmp_path, proponents):
    """Projection (84-dim layer inputs onto 10 dims, as the tutorial's projection_dim=100 does) loses the top-k;
    the exact rerank of rerank*k candidates recovers it and returns exact scores."""
    from torch import nn
    from torch.utils.data import TensorDataset

    torch.manual_seed(11)
    model = nn.Sequential(nn.Linear(20, 84), nn.ReLU(), nn.Linear(84, 6))
    paths = save_perturbed_checkpoints(model, tmp_path, 2, 0.2, prefix="c")
    x, y = torch.randn(1500, 20), torch.randint(0, 6, (1500,))
    test = (torch.randn(8, 20), torch.randint(0, 6, (8,)))
    loss = nn.CrossEntropyLoss(reduction="sum")
    exact = eng.TracInCPFast(model, "2", TensorDataset(x, y), paths, loss_fn=loss).influence(test)
    k = 10
    truth = torch.topk(exact if proponents else -exact, k, dim=1).indices

    def recall(res):
        return (
            sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(res.indices, truth, strict=False))
            / truth.numel()
        )

    common = dict(loss_fn=loss, nearest_neighbors=eng.ExactNearestNeighbors(), projection_dim=100, seed=0)
    plain = eng.TracInCPFastRandProj(model, "2", TensorDataset(x, y), paths, rerank=None, **common)
    reranked = eng.TracInCPFastRandProj(model, "2", TensorDataset(x, y), paths, rerank=50, **common)
    res = reranked.influence(test, k=k, proponents=proponents)
    assert recall(res) >= 0.9
    assert recall(res) > recall(plain.influence(test, k=k, proponents=proponents))
    assert_scores_close(res.influence_scores, torch.gather(exact, 1, res.indices), rtol=1e-4)
