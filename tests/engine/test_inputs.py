"""The inputs people really pass: loaders that reorder or drop rows, tuples and dict datasets, labels outside the
model's classes, empty or misshapen test batches, NaN/inf rows. Each case is either correct (same values as the
oracle or as the plain Dataset) or a clear error raised before any long pass; the messages are pinned here.

Where an error may come at construction (``TracInCPFastRandProj`` builds its index there) or at the first call,
both are inside the ``pytest.raises`` block.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    DistributedSampler,
    Sampler,
    SequentialSampler,
    SubsetRandomSampler,
    TensorDataset,
    WeightedRandomSampler,
)

from tracin_widgets.influence import TracInCPFastRandProj

from .conftest import Cfg
from .oracle import assert_scores_close

KINDS = ["cp", "fast", "rp"]
ORDER_FIX = re.escape(
    "Pass the Dataset itself (the engine batches it in order), or DataLoader(dataset, batch_size=..., shuffle=False)"
)


def cfg(kind: str) -> Cfg:
    return Cfg(kind, "none" if kind == "cp" else "sum")


def build(eng, tb, setup, kind, train="dataset", **kw):
    return tb.engine(eng, setup, cfg(kind), train=train, **kw)


class Items(Dataset):
    """A per-item dataset (not a TensorDataset): ``(x_i, int(y_i))``."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i]) if self.y.dtype == torch.int64 else self.y[i]


class Reversed(Sampler):
    def __init__(self, n):
        self.n = n

    def __iter__(self):
        return iter(range(self.n - 1, -1, -1))

    def __len__(self):
        return self.n


class Chunks(Dataset):
    """Items that are whole batches (for ``DataLoader(batch_size=None)``)."""

    def __init__(self, x, y, size):
        self.x, self.y, self.size = x, y, size

    def __len__(self):
        return -(-len(self.x) // self.size)

    def __getitem__(self, i):
        s = slice(i * self.size, (i + 1) * self.size)
        return self.x[s], self.y[s]


def phases(events):
    return [(p, d) for p, d, _ in events]


# ---------------------------------------------------------------------------------------------------------------------
# 1. loaders that reorder, drop or repeat rows
# ---------------------------------------------------------------------------------------------------------------------
def _bad_loaders(ds):
    n = len(ds)
    return {
        "shuffle": (DataLoader(ds, batch_size=16, shuffle=True), r"shuffle=True \(a RandomSampler\)"),
        "subset-random": (
            DataLoader(ds, batch_size=16, sampler=SubsetRandomSampler(range(n // 2))),
            r"sampler=SubsetRandomSampler: the rows come in that sampler's order",
        ),
        "weighted": (
            DataLoader(ds, batch_size=16, sampler=WeightedRandomSampler(torch.ones(n), n)),
            r"sampler=WeightedRandomSampler",
        ),
        "custom-sampler": (DataLoader(ds, batch_size=16, sampler=Reversed(n)), r"sampler=Reversed"),
        "distributed": (
            DataLoader(ds, batch_size=16, sampler=DistributedSampler(ds, num_replicas=2, rank=0, shuffle=False)),
            r"sampler=DistributedSampler",
        ),
        "custom-batch-sampler": (
            DataLoader(ds, batch_sampler=[list(range(s, min(s + 16, n))) for s in range(0, n, 16)][::-1]),
            r"batch_sampler=list",
        ),
        "batch-sampler-over-random": (
            DataLoader(ds, batch_sampler=BatchSampler(SubsetRandomSampler(range(n)), 16, False)),
            r"a batch_sampler over SubsetRandomSampler",
        ),
        "drop-last": (
            DataLoader(ds, batch_size=16, drop_last=True),
            rf"drop_last=True: the last {n % 16} of {n} rows are never read",
        ),
        "batch-sampler-drop-last": (
            DataLoader(ds, batch_sampler=BatchSampler(SequentialSampler(ds), 16, True)),
            rf"drop_last=True: the last {n % 16} of {n} rows are never read",
        ),
    }


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", list(_bad_loaders(range(50))))
def test_train_loader_that_reorders_or_drops_rows_is_refused(eng, tb, mlp, kind, case):
    loader, msg = _bad_loaders(mlp.train_dataset())[case]
    with pytest.raises(
        ValueError,
        match=rf"^train_dataset is a DataLoader with {msg}.*so score column j would not "
        rf"be training example j\. {ORDER_FIX}",
    ):
        build(eng, tb, mlp, kind, train=loader, batch_size=None)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", ["shuffle", "subset-random", "custom-batch-sampler", "drop-last"])
def test_test_loader_that_reorders_or_drops_rows_is_refused(eng, tb, mlp, kind, case):
    obj = build(eng, tb, mlp, kind)
    loader, msg = _bad_loaders(TensorDataset(*mlp.test))[case]
    if case == "drop-last":
        loader, msg = (
            DataLoader(TensorDataset(*mlp.test), batch_size=2, drop_last=True),
            "drop_last=True: the last 1 of 5",
        )
    pattern = rf"^inputs is a DataLoader with {msg}.*so result row i would not be row i of inputs\. {ORDER_FIX}"
    with pytest.raises(ValueError, match=pattern):
        obj.influence(loader, k=None)
    with pytest.raises(ValueError, match=pattern):
        obj.self_influence(loader)
    if kind == "rp":
        with pytest.raises(ValueError, match=pattern):
            obj.compute_intermediate_quantities(loader)


@pytest.mark.parametrize("kind", KINDS)
def test_sequential_loaders_give_the_datasets_scores(eng, tb, mlp, kind):
    """A plain DataLoader (any batch size), an explicit SequentialSampler and an unbatched loader over pre-batched
    items are accepted, for training and test data, and give the oracle's scores."""
    ref = tb.oracle_scores(mlp, cfg(kind))
    ref_self = tb.oracle_self(mlp, cfg(kind))
    ds = mlp.train_dataset()
    trains = [
        DataLoader(ds, batch_size=7),
        DataLoader(ds, batch_size=16, sampler=SequentialSampler(ds)),
        DataLoader(Chunks(*mlp.train, 16), batch_size=None),
    ]
    test_loader = DataLoader(TensorDataset(*mlp.test), batch_size=2)
    for train in trains:
        obj = build(eng, tb, mlp, kind, train=train, batch_size=None)
        assert_scores_close(obj.influence(test_loader, k=None), ref)
        assert_scores_close(obj.self_influence(), ref_self)


@pytest.mark.parametrize("kind", KINDS)
def test_unbatched_loader_of_single_examples_is_refused(eng, tb, mlp, kind):
    with pytest.raises(
        TypeError,
        match=r"^train_dataset is a DataLoader with batch_size=None, which does not batch: "
        r"its items are single examples \(a scalar label\)\. Pass the Dataset itself",
    ):
        build(eng, tb, mlp, kind, train=DataLoader(mlp.train_dataset(), batch_size=None), batch_size=None)


# ---------------------------------------------------------------------------------------------------------------------
# 9. train_dataset forms the engine would misread
# ---------------------------------------------------------------------------------------------------------------------
ACCEPTED = re.escape(
    "Accepted: a torch Dataset whose items are (features..., label) tuples, e.g. TensorDataset(X, Y), or a "
    "DataLoader (shuffle=False) of such batches"
)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("form", ["tuple", "list"])
def test_tensors_instead_of_a_dataset(eng, tb, mlp, kind, form):
    train = tuple(mlp.train) if form == "tuple" else list(mlp.train)
    with pytest.raises(
        TypeError,
        match=rf"^train_dataset is a {form} of 2 tensors \(Tensor of shape \(50, 8\), Tensor "
        rf"of shape \(50,\)\), not a dataset of examples\. {ACCEPTED}.*wrap them: "
        r"torch\.utils\.data\.TensorDataset\(X, Y\)\.$",
    ):
        build(eng, tb, mlp, kind, train=train)


class DictItems(Dataset):
    def __init__(self, x, y, label="label"):
        self.x, self.y, self.label = x, y, label

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], self.label: int(self.y[i])}


def _scores(engine, test):
    if isinstance(engine, TracInCPFastRandProj):  # top-k only
        return engine.influence(test, k=5).influence_scores
    return engine.influence(test)


@pytest.mark.parametrize("kind", ["fast", "rp"])
@pytest.mark.parametrize("how", ["dataset", "list", "loader"])
def test_dict_items_call_the_model_with_keywords(eng, tb, mlp, kind, how):
    """Items that are dicts: the model is called as model(**features), the labels under "label"; the same scores as
    the (features, label) tuples, with a test batch given as a dict too."""
    ds = DictItems(*mlp.train)
    train = {"dataset": ds, "list": [ds[i] for i in range(len(ds))], "loader": DataLoader(ds, batch_size=16)}[how]
    ours = build(eng, tb, mlp, kind, train=train, **({"batch_size": None} if how == "loader" else {}))
    plain = build(eng, tb, mlp, kind, train=Items(*mlp.train))
    x, y = mlp.test
    expect = _scores(plain, (x, y))
    assert_scores_close(_scores(ours, {"x": x, "labels": y}), expect, rtol=1e-6)
    assert_scores_close(_scores(ours, (x, y)), expect, rtol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_dict_items_without_their_labels_key(eng, tb, mlp, kind):
    ds = DictItems(*mlp.train, label="target")
    with pytest.raises(
        ValueError,
        match=r"^train_dataset item is a dict batch \(keys \['x', 'target'\]\) without the key 'labels' or 'label' "
        r"holding the labels: pass label_key='<the key of the labels>' to the engine",
    ):
        build(eng, tb, mlp, kind, train=ds)
    if kind != "cp":
        ours = build(eng, tb, mlp, kind, train=ds, label_key="target")
        plain = build(eng, tb, mlp, kind, train=Items(*mlp.train))
        x, y = mlp.test
        assert_scores_close(_scores(ours, {"x": x, "target": y}), _scores(plain, (x, y)), rtol=1e-6)
        with pytest.raises(ValueError, match=r"^inputs is a dict batch \(keys \['x', 'labels'\]\) without the key "):
            ours.influence({"x": x, "labels": y})


@pytest.mark.parametrize("kind", KINDS)
def test_items_without_labels(eng, tb, mlp, kind):
    with pytest.raises(
        TypeError,
        match=rf"^train_dataset items are single Tensor of shape \(8,\) values without a "
        rf"label\. {ACCEPTED}",
    ):
        build(eng, tb, mlp, kind, train=TensorDataset(mlp.train[0]).tensors[0])
    with pytest.raises(TypeError, match=r"^train_dataset items have 1 element\(s\) but need features and a label"):
        build(eng, tb, mlp, kind, train=TensorDataset(mlp.train[0]))


@pytest.mark.parametrize("kind", KINDS)
def test_a_list_of_pairs_and_a_per_item_dataset_are_accepted(eng, tb, mlp, kind):
    ref = tb.oracle_scores(mlp, cfg(kind))
    pairs = [(mlp.train[0][i], mlp.train[1][i]) for i in range(mlp.n_train)]
    for train in (pairs, Items(*mlp.train)):
        assert_scores_close(build(eng, tb, mlp, kind, train=train).influence(mlp.test, k=None), ref)


# ---------------------------------------------------------------------------------------------------------------------
# 7. labels
# ---------------------------------------------------------------------------------------------------------------------
def _with_label(y, row, value):
    y = y.clone()
    y[row] = value
    return y


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("value, word", [(7, "out-of-range"), (-1, "negative")])
def test_bad_training_label_in_a_tensor_dataset(eng, tb, mlp, kind, value, word):
    """Every label of a TensorDataset is checked at once after the first forward: before any training factor."""
    events = []
    train = TensorDataset(mlp.train[0], _with_label(mlp.train[1], 37, value))
    with pytest.raises(
        ValueError,
        match=rf"^train_dataset row 37 has the {word} label {value}, but the model outputs 4 "
        r"classes \(0\.\.3\) \(-100 = ignore_index is also allowed\); rows with such labels: 1 of the 50 "
        r"checked\. CrossEntropyLoss would fail deep inside torch\. Labels must be int64 class indices "
        r"in 0\.\.3",
    ):
        obj = build(eng, tb, mlp, kind, train=train, progress_callback=lambda p, d, t: events.append((p, d, t)))
        obj.self_influence()
    assert not [e for e in phases(events) if e[0] != "load checkpoints" and e[1] > 0], events


@pytest.mark.parametrize("kind", KINDS)
def test_bad_training_label_in_a_per_item_dataset_names_the_global_row(eng, tb, mlp, kind):
    train = Items(mlp.train[0], _with_label(mlp.train[1], 37, 4))
    with pytest.raises(
        ValueError,
        match=r"^train_dataset row 37 has the out-of-range label 4, but the model outputs 4 "
        r"classes .* rows with such labels: 1 of the 16 checked",
    ):
        build(eng, tb, mlp, kind, train=train, batch_size=16).influence(mlp.test, k=None)


@pytest.mark.parametrize("kind", KINDS)
def test_bad_test_labels(eng, tb, mlp, kind):
    obj = build(eng, tb, mlp, kind)
    x = mlp.test[0][:3]
    with pytest.raises(
        ValueError, match=r"^inputs row 2 has the out-of-range label 4, but the model outputs 4 classes"
    ):
        obj.influence((x, torch.tensor([0, 1, 4])), k=None)
    with pytest.raises(ValueError, match=r"^inputs row 1 has the negative label -3"):
        obj.self_influence((x, torch.tensor([0, -3, 1])))
    with pytest.raises(
        ValueError,
        match=r"^inputs labels are torch\.float32 of shape \(3,\), but CrossEntropyLoss needs "
        r"class indices\. .*or class probabilities of shape \(n, 4\): pass labels\.long\(\)",
    ):
        obj.influence((x, torch.tensor([0.0, 1.0, 2.0])), k=None)
    with pytest.raises(
        ValueError,
        match=r"^inputs labels are torch\.int32, which CrossEntropyLoss does not accept\. "
        r".*pass labels\.long\(\)\.$",
    ):
        obj.influence((x, torch.tensor([0, 1, 2], dtype=torch.int32)), k=None)
    # a test DataLoader: the row is counted across its batches
    loader = DataLoader(TensorDataset(mlp.test[0], _with_label(mlp.test[1], 3, 9)), batch_size=2)
    with pytest.raises(ValueError, match=r"^inputs row 3 has the out-of-range label 9"):
        obj.influence(loader, k=None)
    if kind == "rp":
        with pytest.raises(ValueError, match=r"^inputs row 2 has the out-of-range label 4"):
            obj.compute_intermediate_quantities((x, torch.tensor([0, 1, 4])))


@pytest.mark.parametrize("kind", KINDS)
def test_float_training_labels_are_refused(eng, tb, mlp, kind):
    train = TensorDataset(mlp.train[0], mlp.train[1].float())
    with pytest.raises(
        ValueError,
        match=r"^train_dataset labels are torch\.float32 of shape \(50,\), but "
        r"CrossEntropyLoss needs class indices",
    ):
        build(eng, tb, mlp, kind, train=train).self_influence()


@pytest.mark.parametrize("kind", KINDS)
def test_labels_of_shape_n_by_1_are_refused(eng, tb, mlp, kind):
    """A (n, 1) label column (a common export shape) crashed deep in torch ("0D or 1D target tensor expected")."""
    train = TensorDataset(mlp.train[0], mlp.train[1][:, None])
    with pytest.raises(
        ValueError,
        match=r"^train_dataset labels have shape \(50, 1\), but for a model output of shape "
        r"\(n, 4\) CrossEntropyLoss needs class indices of shape \(n,\): one class index per example "
        r"\(e\.g\. labels\.squeeze\(1\)\)\.$",
    ):
        build(eng, tb, mlp, kind, train=train).self_influence()
    obj = build(eng, tb, mlp, kind)
    with pytest.raises(ValueError, match=r"^inputs labels have shape \(3, 1\)"):
        obj.influence((mlp.test[0][:3], mlp.test[1][:3, None]), k=None)


class NamedLabels(Dataset):
    """Items labelled by class name: ``(x_i, "class-3")``."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], f"class-{int(self.y[i])}"


@pytest.mark.parametrize("kind", KINDS)
def test_string_labels_are_refused(eng, tb, mlp, kind):
    """Class names as labels crashed deep in torch ("argument 'target' must be Tensor, not tuple")."""
    with pytest.raises(
        TypeError,
        match=r"^train_dataset labels are tuples holding str 'class-\d', but "
        r"CrossEntropyLoss needs int class indices: map each label to its class index",
    ):
        build(eng, tb, mlp, kind, train=NamedLabels(*mlp.train), batch_size=16).self_influence()


@pytest.mark.parametrize("kind", KINDS)
def test_test_labels_as_a_python_list(eng, tb, mlp, kind):
    obj = build(eng, tb, mlp, kind)
    ref = obj.influence(mlp.test, k=None)
    assert_scores_close(obj.influence((mlp.test[0], mlp.test[1].tolist()), k=None), ref)
    assert_scores_close(obj.influence((mlp.test[0], mlp.test[1].numpy()), k=None), ref)
    assert_scores_close(obj.self_influence((mlp.test[0], mlp.test[1].tolist())), obj.self_influence(mlp.test))


@pytest.mark.parametrize("kind", KINDS)
def test_ignore_index_is_a_legal_label(eng, tb, mlp, kind):
    """CrossEntropyLoss's ignore_index (-100) is not refused: an ignored row has no gradient (self-influence 0)."""
    y = _with_label(mlp.train[1], 5, -100)
    obj = build(eng, tb, mlp, kind, train=TensorDataset(mlp.train[0], y))
    s = obj.self_influence()
    assert s[5] == 0 and bool((s[torch.arange(50) != 5] > 0).all())


@pytest.mark.filterwarnings("ignore:final_fc_layer")
def test_nll_loss_with_its_own_ignore_index(eng, mlp):
    class LogSoftmaxMLP(nn.Module):
        def __init__(self, base):
            super().__init__()
            self.base = base

        def forward(self, x):
            return torch.log_softmax(self.base(x), 1)

    model = LogSoftmaxMLP(mlp.model())
    ckpts = []
    import os
    import tempfile

    folder = tempfile.mkdtemp()
    for i, p in enumerate(mlp.plain_ckpts):
        ckpts.append(os.path.join(folder, f"c{i}.pt"))
        torch.save({f"base.{k}": v for k, v in torch.load(p).items()}, ckpts[-1])
    y = _with_label(mlp.train[1], 3, 7)
    ok = eng.TracInCPFast(
        model, "base.fc2", TensorDataset(mlp.train[0], y), ckpts, loss_fn=nn.NLLLoss(reduction="sum", ignore_index=7)
    )
    assert ok.self_influence()[3] == 0
    bad = eng.TracInCPFast(
        model,
        "base.fc2",
        TensorDataset(mlp.train[0], _with_label(y, 4, 5)),
        ckpts,
        loss_fn=nn.NLLLoss(reduction="sum", ignore_index=7),
    )
    with pytest.raises(
        ValueError,
        match=r"^train_dataset row 4 has the out-of-range label 5, but the model outputs 4 "
        r"classes \(0\.\.3\); .* NLLLoss would fail",
    ):
        bad.self_influence()


@pytest.mark.parametrize("kind", ["fast", "rp"])
def test_class_probability_targets_are_legal(eng, tb, mlp, kind):
    """CrossEntropyLoss with float (N, C) probability targets: accepted, and one-hot probabilities give the same
    scores as the class indices."""
    obj = build(eng, tb, mlp, kind)
    onehot = torch.nn.functional.one_hot(mlp.test[1], 4).float()
    assert_scores_close(obj.influence((mlp.test[0], onehot), k=None), tb.oracle_scores(mlp, cfg(kind)))


@pytest.mark.parametrize("kind", KINDS)
def test_regression_labels_are_not_checked(eng, tb, reg, kind):
    """MSELoss takes float targets of any value: nothing is refused (the scores are the oracle's)."""
    obj = build(eng, tb, reg, kind)
    assert_scores_close(obj.influence(reg.test, k=None), tb.oracle_scores(reg, cfg(kind)))


# ---------------------------------------------------------------------------------------------------------------------
# 8. test batches and query arguments
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_empty_test_batch(eng, tb, mlp, kind):
    obj = build(eng, tb, mlp, kind)
    empty = (mlp.test[0][:0], mlp.test[1][:0])
    with pytest.raises(
        ValueError, match=r"^inputs has 0 rows: pass at least one example, e\.g\. \(x\[:1\], y\[:1\]\)\.$"
    ):
        obj.influence(empty, k=None)
    with pytest.raises(ValueError, match=r"^inputs has 0 rows"):
        obj.self_influence(empty)
    with pytest.raises(ValueError, match=r"^inputs is a DataLoader without batches \(its dataset is empty\)"):
        obj.influence(DataLoader(TensorDataset(*empty), batch_size=2), k=3)
    if kind == "rp":
        with pytest.raises(ValueError, match=r"^inputs has 0 rows"):
            obj.compute_intermediate_quantities(empty)


@pytest.mark.parametrize("kind", KINDS)
def test_misshapen_test_batch_is_refused_before_the_training_pass(eng, tb, mlp, kind):
    events = []
    obj = build(eng, tb, mlp, kind, progress_callback=lambda p, d, t: events.append((p, d, t)))
    before = len(events)
    bad = (torch.randn(3, 7), torch.tensor([0, 1, 2]))
    pattern = (
        r"^the model could not take the test batch \(inputs\): model\(\*batch\[:-1\]\) raised RuntimeError: .*"
        r"Feature shapes were \[\(2, 7\)\]\. Fix: pass inputs as \(features\.\.\., labels\) with features shaped "
        r"like a training batch \(n rows: features of shape \(n, 8\), as the training examples\)\.$"
    )
    with pytest.raises(ValueError, match=pattern):
        obj.influence(bad, k=None)
    assert not [e for e in phases(events[before:]) if e[0] != "load checkpoints" and e[1] > 0], events
    with pytest.raises(ValueError, match=pattern.replace("test batch", "batch")):
        obj.self_influence(bad)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("proponents", ["yes", 1, None])
def test_proponents_must_be_a_bool(eng, tb, mlp, kind, proponents):
    obj = build(eng, tb, mlp, kind)
    with pytest.raises(
        TypeError,
        match=r"^proponents must be True \(most helpful examples, highest scores first\) or "
        rf"False \(opponents, lowest first\), got {type(proponents).__name__} ",
    ):
        obj.influence(mlp.test, k=2, proponents=proponents)


@pytest.mark.parametrize("kind", KINDS)
def test_numpy_bool_proponents(eng, tb, mlp, kind):
    obj = build(eng, tb, mlp, kind)
    a, b = obj.influence(mlp.test, k=2, proponents=np.bool_(False)), obj.influence(mlp.test, k=2, proponents=False)
    assert torch.equal(a.indices, b.indices)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "k, err, word",
    [
        (0, ValueError, "k=0"),
        (-2, ValueError, "k=-2"),
        (2.5, TypeError, "float"),
        ("3", TypeError, "str"),
        (True, TypeError, "bool"),
    ],
)
def test_k_is_checked_in_every_class(eng, tb, mlp, kind, k, err, word):
    obj = build(eng, tb, mlp, kind)
    with pytest.raises(err, match=rf"^k must be a positive int \(or None for the full score matrix\), got {word}"):
        obj.influence(mlp.test, k=k)


# ---------------------------------------------------------------------------------------------------------------------
# 12. non-finite values: name the rows, or the checkpoint
# ---------------------------------------------------------------------------------------------------------------------
def _with_value(x, rows, value):
    x = x.clone()
    for r in rows:
        x[r, r % x.shape[1]] = value
    return x


@pytest.mark.parametrize("kind", KINDS)
def test_nan_training_rows_are_named(eng, tb, mlp, kind):
    x = _with_value(_with_value(mlp.train[0], [5], float("nan")), [33], float("inf"))
    pattern = (
        r"^train_dataset has non-finite \(NaN or inf\) features in row\(s\) 5, 33 \(2 row\(s\)\): every "
        r"influence score involving them would be NaN\. Fix or drop these rows"
    )
    with pytest.raises(ValueError, match=pattern):
        build(eng, tb, mlp, kind, train=TensorDataset(x, mlp.train[1])).influence(mlp.test, k=None)
    with pytest.raises(ValueError, match=pattern):
        build(eng, tb, mlp, kind, train=Items(x, mlp.train[1])).self_influence()


@pytest.mark.parametrize("kind", KINDS)
def test_nan_training_row_in_a_later_batch(eng, tb, mlp, kind):
    x = _with_value(mlp.train[0], [41], float("nan"))
    with pytest.raises(ValueError, match=r"^train_dataset has non-finite \(NaN or inf\) features in row\(s\) 41 "):
        build(eng, tb, mlp, kind, train=DataLoader(Items(x, mlp.train[1]), batch_size=16), batch_size=None).fit()


@pytest.mark.parametrize("kind", KINDS)
def test_nan_regression_label_is_named(eng, tb, reg, kind):
    y = reg.train[1].clone()
    y[12, 1] = float("nan")
    with pytest.raises(ValueError, match=r"^train_dataset has non-finite \(NaN or inf\) labels in row\(s\) 12 "):
        build(eng, tb, reg, kind, train=TensorDataset(reg.train[0], y)).self_influence()


@pytest.mark.parametrize("kind", KINDS)
def test_overflowing_training_row_is_named(eng, tb, mlp, kind):
    """Finite features and weights, but the forward overflows on row 11: the rows are named and the cause said."""
    x = mlp.train[0].clone()
    x[11] = 3e38
    with pytest.raises(
        ValueError,
        match=r"^train_dataset row\(s\) 11 \(1 row\(s\)\) give non-finite \(NaN or inf\) "
        r".* at checkpoint '.*checkpoint-1\.pt', although their features and labels and the "
        r"checkpoint's weights are finite: the model or the loss overflows on them",
    ):
        build(eng, tb, mlp, kind, train=TensorDataset(x, mlp.train[1])).self_influence()


@pytest.mark.parametrize("kind", KINDS)
def test_nan_test_rows_are_named(eng, tb, mlp, kind):
    obj = build(eng, tb, mlp, kind)
    x = _with_value(mlp.test[0], [3], float("nan"))
    with pytest.raises(
        ValueError, match=r"^inputs has non-finite \(NaN or inf\) features in row\(s\) 3 \(1 row\(s\)\)"
    ):
        obj.influence((x, mlp.test[1]), k=None)
    with pytest.raises(ValueError, match=r"^inputs has non-finite \(NaN or inf\) features in row\(s\) 3 "):
        obj.self_influence(DataLoader(TensorDataset(x, mlp.test[1]), batch_size=2))


@pytest.mark.parametrize("kind", KINDS)
def test_nan_checkpoint_weights_name_the_checkpoint_and_parameter(eng, tb, mlp, kind, tmp_path):
    sd = torch.load(mlp.plain_ckpts[1])
    sd["fc1.weight"][0, 0] = float("nan")
    sd["fc2.bias"][:] = float("inf")
    path = tmp_path / "checkpoint-nan.pt"
    torch.save(sd, path)
    with pytest.raises(
        ValueError,
        match=rf"^checkpoint '{re.escape(str(path))}' has non-finite \(NaN or inf\) weights: "
        r"fc1\.weight \(1 value\), fc2\.bias \(4 values\)\. Every score would be NaN\.",
    ):
        ckpts = [mlp.plain_ckpts[0], str(path)]
        loss = mlp.loss("none" if kind == "cp" else "sum")
        if kind == "cp":
            obj = eng.TracInCP(mlp.model(), mlp.train_dataset(), ckpts, loss_fn=loss)
        elif kind == "fast":
            obj = eng.TracInCPFast(mlp.model(), "fc2", mlp.train_dataset(), ckpts, loss_fn=loss)
        else:
            obj = eng.TracInCPFastRandProj(mlp.model(), "fc2", mlp.train_dataset(), ckpts, loss_fn=loss)
        obj.influence(mlp.test, k=None)


def test_gpu_style_check_after_the_pass_locates_the_rows(eng, tb, mlp):
    """The GPU path checks the factors once after the whole pass; on failure the rows are found from the
    non-finite factor rows and read back from the dataset (here a per-item one) to say why."""
    x = _with_value(mlp.train[0], [17], float("nan"))
    obj = build(eng, tb, mlp, "fast", train=Items(x, mlp.train[1]))
    A = torch.ones(50, 3, 16)
    G = torch.ones(50, 3, 4)
    A[17, 2, 0] = float("nan")
    with pytest.raises(
        ValueError,
        match=r"^train_dataset has non-finite \(NaN or inf\) features in row\(s\) 17 "
        r"\(1 row\(s\)\)",
    ):
        obj._check_factors(A, G, "training batch")
    # finite factors whose sums overflow are not a false alarm
    obj._check_factors(torch.full((50, 3, 16), 3e38), G, "training batch")


@pytest.mark.parametrize("kind", ["cp", "fast"])
def test_bad_cifar_label_is_found_from_the_arrays(eng, tb, cnn, kind):
    """torchvision CIFAR read as whole arrays: every target is checked at once; in a Subset the row is the subset's."""
    import torchvision.transforms as T
    from torch.utils.data import Subset

    from .test_vision import make_cifar

    ds = make_cifar(n=40, transform=T.ToTensor())
    ds.targets[25] = 12
    for train, row in ((ds, 25), (Subset(ds, list(range(39, -1, -1))), 14)):
        with pytest.raises(
            ValueError,
            match=rf"^train_dataset row {row} has the out-of-range label 12, but the model "
            r"outputs 10 classes \(0\.\.9\) .*rows with such labels: 1 of the 40 checked",
        ):
            build(eng, tb, cnn, kind, train=train).self_influence()


@pytest.mark.parametrize("kind", ["cp", "fast"])
def test_nan_rows_found_mid_pass_say_what_was_not_checked(eng, tb, mlp, kind):
    """On the CPU a per-item dataset is checked batch by batch: the message says which rows were not read yet."""
    x = _with_value(_with_value(mlp.train[0], [20, 22], float("nan")), [40], float("nan"))
    obj = build(eng, tb, mlp, kind, train=Items(x, mlp.train[1]), batch_size=16)
    obj.cpu_chunk = 16  # one loader batch per step
    with pytest.raises(
        ValueError,
        match=r"^train_dataset has non-finite \(NaN or inf\) features in row\(s\) 20, 22 "
        r"\(2 row\(s\); rows after 31 were not checked yet\)",
    ):
        obj.self_influence()


def test_nan_rows_through_the_vmapped_gpu_forward(eng, tb, mlp, monkeypatch):
    """The GPU's all-checkpoints vmapped forward (run here on the CPU) names the same rows."""
    monkeypatch.setattr(eng.TracInCPFast, "_use_vmap", lambda self: True)
    x = _with_value(mlp.train[0], [5, 33], float("nan"))
    obj = build(eng, tb, mlp, "fast", train=Items(x, mlp.train[1]))
    with pytest.raises(
        ValueError,
        match=r"^train_dataset has non-finite \(NaN or inf\) features in row\(s\) 5, 33 "
        r"\(2 row\(s\)\)",
    ):
        obj.self_influence()
    assert obj._vmap_ok is True
