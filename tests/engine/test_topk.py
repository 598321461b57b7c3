"""k mode: KMostInfluentialResults(indices int64, influence_scores), proponents descending, opponents ascending."""

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from .conftest import Cfg
from .oracle import assert_topk_consistent

TOPK_CASES = [
    ("mlp", Cfg("cp", "none")),
    ("mlp", Cfg("cp", "mean", sample_wise=True)),
    ("mlp", Cfg("fast", "sum")),
    ("mlp", Cfg("rp", "sum")),  # projection_dim=None + ExactNearestNeighbors -> exact
    ("cnn", Cfg("cp", "none", layers=("fc2", "fc3"))),
    ("cnn", Cfg("fast", "mean")),
    ("cnn", Cfg("rp", "sum")),
    ("reg", Cfg("fast", "mean")),
]


@pytest.mark.parametrize("ref", ["oracle", "captum"])
@pytest.mark.parametrize("proponents", [True, False], ids=["proponents", "opponents"])
@pytest.mark.parametrize("name,cfg", TOPK_CASES, ids=[f"{n}-{c.id()}" for n, c in TOPK_CASES])
def test_topk_matches_reference(eng, tb, get_setup, name, cfg, proponents, ref):
    setup = get_setup(name)
    res = tb.engine(eng, setup, cfg).influence(setup.test, k=4, proponents=proponents)
    assert type(res).__name__ == "KMostInfluentialResults"
    assert isinstance(res, eng.KMostInfluentialResults)
    assert isinstance(res, tuple)  # a NamedTuple: unpacks like Captum's
    indices, scores = res
    assert indices is res.indices and scores is res.influence_scores
    assert_topk_consistent(res, tb.ref_scores(ref, setup, cfg), k=4, proponents=proponents)


@pytest.mark.parametrize("kind", ["cp", "fast", "rp"])
def test_topk_equals_sorted_score_mode(eng, tb, mlp, kind):
    """k mode and score mode of the same object agree (and opponents are the most negative first)."""
    cfg = Cfg(kind, "none" if kind == "cp" else "sum")
    obj = tb.engine(eng, mlp, cfg)
    full = obj.influence(mlp.test, k=None)
    for prop in (True, False):
        res = obj.influence(mlp.test, k=5, proponents=prop)
        assert_topk_consistent(res, full, k=5, proponents=prop)
        if not prop:
            assert (res.influence_scores[:, 0] <= full.min(dim=1).values + 1e-4 * full.abs().max()).all()


@pytest.mark.parametrize("kind", ["cp", "fast", "rp"])
def test_k_larger_than_train_set(eng, tb, mlp, kind):
    cfg = Cfg(kind, "none" if kind == "cp" else "sum")
    res = tb.engine(eng, mlp, cfg).influence(mlp.test, k=mlp.n_train + 7)
    assert tuple(res.indices.shape) == (mlp.test[0].shape[0], mlp.n_train)
    assert_topk_consistent(res, tb.oracle_scores(mlp, cfg), k=mlp.n_train + 7, proponents=True)
    for row in res.indices:
        assert sorted(row.tolist()) == list(range(mlp.n_train))


@pytest.mark.parametrize("proponents", [True, False])
def test_topk_aggregate(eng, tb, cnn, proponents):
    cfg = Cfg("cp", "sum", layers=("fc2", "fc3"), sample_wise=True)
    res = tb.engine(eng, cnn, cfg).influence(cnn.test, k=3, proponents=proponents, aggregate=True)
    assert tuple(res.indices.shape) == (1, 3)
    assert_topk_consistent(res, tb.oracle_scores(cnn, cfg, aggregate=True), k=3, proponents=proponents)


@pytest.mark.parametrize("kind", ["cp", "fast", "rp"])
def test_topk_with_loaders(eng, tb, mlp, kind):
    cfg = Cfg(kind, "none" if kind == "cp" else "sum")
    res = tb.engine(eng, mlp, cfg, train="loader").influence(mlp.test_loader(2), k=3, proponents=False)
    assert_topk_consistent(res, tb.oracle_scores(mlp, cfg), k=3, proponents=False)


def test_results_type_fields(eng):
    assert tuple(eng.KMostInfluentialResults._fields) == ("indices", "influence_scores")
    r = eng.KMostInfluentialResults(torch.zeros(1, 1, dtype=torch.int64), torch.zeros(1, 1))
    assert r.indices.dtype == torch.int64


def test_list_batch_is_one_batch_not_a_list_of_batches(eng, tb, mlp):
    """A batch given as a list [x, y] (not a tuple) means the same as (x, y)."""
    cfg = Cfg("fast", "sum")
    obj = tb.engine(eng, mlp, cfg)
    x, y = mlp.test
    assert torch.equal(obj.influence([x, y]), obj.influence((x, y)))


# ---------------------------------------------------------------------------------------------------------------------
# one tie rule for every engine: among equal scores the lower training index, whatever the chunks
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("largest", [True, False], ids=["proponents", "opponents"])
@pytest.mark.parametrize("step", [1, 3, 7, 20, 64])
def test_merge_topk_is_the_prefix_of_a_stable_sort_whatever_the_chunks(step, largest):
    from tracin_widgets.influence._topk import merge_topk

    g = torch.Generator().manual_seed(0)
    scores = torch.randint(-3, 4, (5, 41), generator=g).float()  # 7 values over 41 columns: ties everywhere
    vals, idx = torch.sort(scores, dim=1, descending=largest, stable=True)
    for k in (1, 4, 9, 41, 50):
        best = None
        for s in range(0, scores.shape[1], step):
            best = merge_topk(best, scores[:, s : s + step], s, k, largest=largest)
        assert best is not None
        assert torch.equal(best[0], vals[:, :k]) and torch.equal(best[1], idx[:, :k])


def _tied_train(mlp) -> TensorDataset:
    """The mlp training rows with rows 10..39 zeroed: rows of the same label then have the same gradients, so many
    scores are exactly equal, across every chunk boundary below."""
    x = mlp.train[0].clone()
    x[10:40] = 0
    return TensorDataset(x, mlp.train[1])


@pytest.mark.parametrize("kind", ["cp", "fast"])
def test_equal_scores_across_chunks_go_to_the_lower_index_in_every_engine(eng, mlp, kind, monkeypatch):
    """TracInCP (chunks: training batches) and TracInCPFast (chunks: score columns) both return the first k columns
    of a stable sort of their own score matrix, for chunks that cut through runs of equal scores."""
    train = _tied_train(mlp)

    def make():
        if kind == "cp":
            obj = eng.TracInCP(
                mlp.model(),
                train,
                mlp.ckpts,
                checkpoints_load_func=mlp.load_func,
                loss_fn=nn.CrossEntropyLoss(reduction="none"),
                batch_size=7,
            )
            obj.cpu_chunk = 7
            return obj
        return eng.TracInCPFast(
            mlp.model(),
            mlp.final,
            train,
            mlp.ckpts,
            checkpoints_load_func=mlp.load_func,
            loss_fn=nn.CrossEntropyLoss(reduction="sum"),
            batch_size=7,
        )

    if kind == "fast":  # 7 training rows per score chunk (the matrix below too: the same sums)
        monkeypatch.setattr(eng.TracInCPFast, "_chunk_rows", staticmethod(lambda n_test, n_ckpt, budget=0: 7))
    full = make().influence(mlp.test, k=None)
    assert any(len(set(row.tolist())) < row.numel() - 5 for row in full), "the set-up must have ties"
    for proponents in (True, False):
        vals, idx = torch.sort(full, dim=1, descending=proponents, stable=True)
        for k in (1, 5, 13, 40):
            res = make().influence(mlp.test, k=k, proponents=proponents)
            assert torch.equal(res.indices, idx[:, :k]), (proponents, k)
            assert torch.equal(res.influence_scores, vals[:, :k])
