"""influence_by_checkpoint(): each checkpoint's term of the influence, on all three classes, against the oracle."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from .conftest import LRS, Cfg
from .oracle import assert_scores_close

CASES = [
    ("mlp", Cfg("fast", "sum")),
    ("mlp", Cfg("rp", "sum")),
    ("cnn", Cfg("fast", "mean")),
    ("mlp", Cfg("cp", "none")),
    ("cnn", Cfg("cp", "none", layers=("conv1", "fc3"))),
    ("reg", Cfg("cp", "mean", sample_wise=True)),
    ("reg", Cfg("fast", "mean")),
]
IDS = [f"{n}-{c.id()}" for n, c in CASES]


def oracle_terms(tb, setup, cfg, idx) -> torch.Tensor:
    """``(n_test, len(idx), n_checkpoints)``: lr_c <grad_c(test), grad_c(train_i)> from the naive oracle."""
    oracle = tb.oracle(setup, cfg)
    g_test = oracle.gradients(setup.test, test=True)
    g_train = oracle.gradients(setup.train, test=False)
    return torch.stack([lr * gt @ gr[idx].T for (lr, gt), (_, gr) in zip(g_test, g_train, strict=True)], -1)


@pytest.mark.parametrize("name,cfg", CASES, ids=IDS)
def test_each_checkpoint_term_matches_the_oracle_and_they_sum_to_influence(eng, tb, get_setup, name, cfg):
    setup = get_setup(name)
    obj = tb.engine(eng, setup, cfg)
    idx = [3, 0, setup.n_train - 1, 3]
    terms = obj.influence_by_checkpoint(setup.test, idx)
    n_test = setup.test[0].shape[0]
    assert tuple(terms.shape) == (n_test, len(idx), len(setup.ckpts)) and terms.device.type == "cpu"
    expected = oracle_terms(tb, setup, cfg, idx)
    for c in range(len(setup.ckpts)):
        assert_scores_close(terms[..., c], expected[..., c], what=f"checkpoint {c}")
    assert_scores_close(terms.sum(-1), obj.influence(setup.test, k=None)[:, idx], what="sum over checkpoints")
    assert obj.learning_rates() == list(LRS)  # the dict checkpoints' "lr" entries, in checkpoints order


def test_train_indices_may_be_a_tensor_or_array_and_inputs_a_loader(eng, tb, mlp):
    obj = tb.engine(eng, mlp, Cfg("fast", "sum"))
    a = obj.influence_by_checkpoint(mlp.test, [1, 4])
    torch.testing.assert_close(obj.influence_by_checkpoint(mlp.test_loader(2), torch.tensor([1, 4])), a)
    torch.testing.assert_close(obj.influence_by_checkpoint(mlp.test, np.array([1, 4])), a)


@pytest.mark.parametrize("kind", ["fast", "cp"])
@pytest.mark.parametrize(
    "bad,exc,match",
    [
        ([50], ValueError, r"train_indices holds 50, outside the training set \[0, 50\)"),
        ([-1], ValueError, r"train_indices holds -1, outside the training set"),
        ([], ValueError, r"train_indices is empty"),
        ([1.0], TypeError, r"train_indices must be ints, got float 1.0"),
        ([True], TypeError, r"train_indices must be ints, got bool"),
        ("12", TypeError, r"train_indices must be a sequence of ints, got str"),
    ],
)
def test_bad_train_indices_are_refused_before_any_pass(eng, tb, mlp, kind, bad, exc, match):
    obj = tb.engine(eng, mlp, Cfg(kind, "none" if kind == "cp" else "sum"))
    with pytest.raises(exc, match=match):
        obj.influence_by_checkpoint(mlp.test, bad)
    assert getattr(obj, "factors_", None) is None and obj._self_influence is None  # nothing was computed
