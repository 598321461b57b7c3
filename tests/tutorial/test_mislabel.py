import numpy as np
import pytest
import torch
import torch.nn as nn
from torch.utils.data import TensorDataset

from tracin_widgets.tutorial import MislabelledDataset, make_mislabelled_labels, most_probable_incorrect_labels


class _Lookup(nn.Module):
    """A 'model' whose logits for example i are row i of a fixed table (features are the example ids)."""

    def __init__(self, table):
        super().__init__()
        self.table = nn.Parameter(torch.as_tensor(table, dtype=torch.float32), requires_grad=False)

    def forward(self, ids):
        return self.table[ids.long()]


@pytest.fixture
def problem():
    g = torch.Generator().manual_seed(0)
    n, c = 3000, 10
    logits = torch.randn(n, c, generator=g) * 3
    labels = torch.randint(0, c, (n,), generator=g)
    return TensorDataset(torch.arange(n), labels), _Lookup(logits), logits.numpy(), labels.numpy()


def _oracle_incorrect(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    out = []
    for row, y in zip(logits, labels, strict=False):
        order = [j for j in np.argsort(-row, kind="stable") if j != y]
        out.append(order[0])
    return np.array(out)


def test_relabels_to_most_probable_wrong_class(problem):
    ds, net, logits, labels = problem
    res = make_mislabelled_labels(ds, net, proportion=0.1, generator=torch.Generator().manual_seed(1))
    assert res.labels.dtype == torch.int64 and res.labels.shape == (len(ds),)
    np.testing.assert_array_equal(res.correct_labels.numpy(), labels)
    np.testing.assert_array_equal(res.incorrect_labels.numpy(), _oracle_incorrect(logits, labels))
    changed = res.labels.numpy() != labels
    np.testing.assert_array_equal(res.is_mislabelled.numpy(), changed)
    assert np.all(res.labels.numpy()[changed] != labels[changed])
    np.testing.assert_array_equal(res.labels.numpy()[changed], _oracle_incorrect(logits, labels)[changed])
    np.testing.assert_array_equal(res.labels.numpy()[~changed], labels[~changed])
    share = changed.mean()
    assert abs(share - 0.1) < 0.02  # n=3000: 3 standard deviations of a Binomial(n, 0.1) share ~ 0.016


def test_is_seeded(problem):
    ds, net, _, _ = problem
    a = make_mislabelled_labels(ds, net, 0.1, generator=torch.Generator().manual_seed(7)).labels
    b = make_mislabelled_labels(ds, net, 0.1, generator=torch.Generator().manual_seed(7)).labels
    c = make_mislabelled_labels(ds, net, 0.1, generator=torch.Generator().manual_seed(8)).labels
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_extreme_proportions(problem):
    ds, net, _, labels = problem
    none = make_mislabelled_labels(ds, net, 0.0, generator=torch.Generator().manual_seed(0))
    assert not none.is_mislabelled.any() and np.array_equal(none.labels.numpy(), labels)
    every = make_mislabelled_labels(ds, net, 1.0, generator=torch.Generator().manual_seed(0))
    assert every.is_mislabelled.all() and torch.equal(every.labels, every.incorrect_labels)
    with pytest.raises(ValueError, match=r"proportion must be in \[0, 1\], got 1.5"):
        make_mislabelled_labels(ds, net, 1.5)


def test_never_picks_the_true_class_when_probabilities_underflow():
    # softmax of the other classes is exactly 0 in float32: zeroing the true class's probability (the tutorial's
    # way) would make argmax return class 0 == the true class; masking the logit picks the best wrong class (2).
    logits = torch.tensor([[1000.0, 1.0, 5.0, 2.0]])
    assert torch.softmax(logits, 1)[0, 1:].eq(0).all()
    incorrect, correct = most_probable_incorrect_labels(
        TensorDataset(torch.arange(1), torch.tensor([0])), _Lookup(logits)
    )
    assert incorrect.tolist() == [2] and correct.tolist() == [0]


def test_mislabelled_dataset_indexing(problem):
    ds, net, _, _ = problem
    res = make_mislabelled_labels(ds, net, 0.3, generator=torch.Generator().manual_seed(0))
    mds = MislabelledDataset(ds, res.labels)
    assert len(mds) == len(ds)
    for i in (0, 1, 17, len(ds) - 1):
        x, y = mds[i]
        assert torch.equal(x, ds[i][0])
        assert isinstance(y, int) and y == int(res.labels[i])
    assert [mds[i][1] for i in range(len(ds))] == res.labels.tolist()
    with pytest.raises(ValueError, match="has 2 labels but correct_dataset has 3000 examples"):
        MislabelledDataset(ds, [0, 1])


def test_on_digits_with_the_tutorial_net(digits):
    from tracin_widgets.tutorial import Net

    train, _, _ = digits
    net = Net(in_channels=1)
    res = make_mislabelled_labels(train, net, 0.1, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = torch.cat([net(train.data[i : i + 500]) for i in range(0, len(train), 500)]).numpy()
    labels = np.array(train.targets)
    np.testing.assert_array_equal(res.incorrect_labels.numpy(), _oracle_incorrect(logits, labels))
    assert abs(res.is_mislabelled.float().mean().item() - 0.1) < 0.03
