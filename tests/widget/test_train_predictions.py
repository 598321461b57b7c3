"""The explorer's training predictions read off the engine's factors (exact shortcut) or from a forward pass."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from tracin_widgets.influence import TracInCPFast
from tracin_widgets.widget import InfluenceExplorer
from tracin_widgets.widget._engine import predict

from .conftest import train_digits


class PerItem(Dataset):
    """A dataset read item by item (no labels without reading every example)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.x[i], int(self.y[i])


@pytest.fixture
def problem(tmp_path):
    return train_digits(tmp_path, lr=0.5, epochs=3)


def explore(model, ckpts, train, test, loss_fn=None):
    if loss_fn is None:
        w = InfluenceExplorer(model, ckpts, train, test, k=3, batch_size=64)
    else:
        engine = TracInCPFast(model, "3", train, ckpts, loss_fn=loss_fn, batch_size=64)
        w = InfluenceExplorer(model, None, train, test, engine=engine, k=3, batch_size=64)
    w.wait(120)
    assert w.status == "ready", w.error
    return w


def check_against_predict(w, model, train, path: str) -> None:
    assert w._pipeline.train_path.startswith(path + ":"), w._pipeline.train_path
    labels, preds, probs = predict(model, train, None, batch_size=64)
    ex = w._examples
    np.testing.assert_array_equal(ex.train_labels, labels)
    np.testing.assert_array_equal(ex.train_preds, preds)
    np.testing.assert_allclose(ex.train_probs, probs, rtol=0, atol=1e-6)
    assert ex.n_outputs == 10
    w.close()


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_model_at_the_last_checkpoint_reads_predictions_off_the_factors(problem, reduction):
    model, ckpts, train, test = problem
    loss = nn.CrossEntropyLoss(reduction=reduction)
    w = explore(model, ckpts, train, test, None if reduction == "sum" else loss)
    check_against_predict(w, model, train, "factors")


def test_a_per_item_dataset_reads_labels_off_the_gradients(problem, tmp_path):
    model, ckpts, train, test = problem
    with torch.no_grad():  # a confident last checkpoint: rows with p == 1.0 in float have no negative gradient entry
        model[3].weight.mul_(60)
        model[3].bias.mul_(60)
    torch.save(model.state_dict(), tmp_path / "confident.pt")
    x, y = train.tensors
    with torch.no_grad():
        p = torch.softmax(model(x), 1)
    assert (p.max(1).values == 1.0).sum() > 10 and (p.max(1).values < 1.0).sum() > 10
    items = PerItem(x, y)
    w = explore(model, [*ckpts, str(tmp_path / "confident.pt")], items, test)
    check_against_predict(w, model, items, "factors")


def test_model_differing_by_one_weight_runs_the_model(problem):
    model, ckpts, train, test = problem
    with torch.no_grad():
        model[3].bias[0] += 1e-3
    w = explore(model, ckpts, train, test)
    assert "differ from the last checkpoint" in w._pipeline.train_path
    check_against_predict(w, model, train, "predict")


@pytest.mark.parametrize(
    "loss, why",
    [
        (nn.CrossEntropyLoss(reduction="sum", label_smoothing=0.1), "label smoothing"),
        (nn.CrossEntropyLoss(reduction="sum", weight=torch.linspace(0.5, 1.5, 10)), "class weight"),
        (nn.CrossEntropyLoss(reduction="mean", ignore_index=3), "ignore_index"),
        (nn.NLLLoss(reduction="sum"), "not nn.CrossEntropyLoss"),
    ],
)
def test_other_losses_run_the_model(problem, loss, why):
    model, ckpts, train, test = problem
    w = explore(model, ckpts, train, test, loss)
    assert why in w._pipeline.train_path
    check_against_predict(w, model, train, "predict")


def test_an_ignored_label_in_a_per_item_dataset_runs_the_model(problem):
    model, ckpts, train, test = problem
    x, y = train.tensors
    items = PerItem(x, y)
    engine = TracInCPFast(model, "3", items, ckpts, loss_fn=nn.CrossEntropyLoss(reduction="sum", ignore_index=3))
    w = InfluenceExplorer(model, None, items, test, engine=engine, k=3, batch_size=64).wait(120)
    assert w.status == "ready", w.error
    assert "ignore_index" in w._pipeline.train_path
    check_against_predict(w, model, items, "predict")


def test_the_engine_refuses_labels_that_do_not_match_its_gradients(problem):
    model, ckpts, train, test = problem
    engine = TracInCPFast(model, "3", train, ckpts, loss_fn=nn.CrossEntropyLoss(reduction="sum")).fit()
    probs, labels, why = engine.train_probabilities(model)
    assert probs is not None and labels is not None, why
    wrong = (labels + 1) % 10
    assert engine.train_probabilities(model, wrong.numpy())[0] is None
    assert engine.train_probabilities(nn.Linear(2, 2))[2] == "the model is not the engine's model"


def test_engine_warnings_from_the_background_run_are_shown_as_notes(problem, tmp_path):
    """A TracInWarning raised while the explorer computes on its thread reaches no notebook cell: the explorer
    lists it in ``info["notes"]`` (shown above the views), here scores that are not exact last-layer gradients."""
    model, ckpts, train, test = problem
    w = InfluenceExplorer(model, ckpts, train, test, final_fc_layer="1", k=3, batch_size=64)
    assert w.info["notes"] == []  # nothing said before the pass
    w.wait(120)
    assert w.status == "ready", w.error
    (note,) = w.info["notes"]
    assert note.startswith("final_fc_layer '1' (Linear) is not the model's final linear layer; the output comes from")
    assert note == w.source._notes[0]
    html = w.save_html(tmp_path / "review.html").read_text(encoding="utf-8")  # the shared snapshot says it too
    assert 'data-testid="tracin-notes"' in html and "final_fc_layer &#x27;1&#x27; (Linear) is not the model" in html
    w.close()
    clean = InfluenceExplorer(model, ckpts, train, test, k=3, batch_size=64).wait(120)
    assert clean.status == "ready" and clean.info["notes"] == []
    assert 'data-testid="tracin-notes"' not in clean.save_html(tmp_path / "clean.html").read_text(encoding="utf-8")
    clean.close()
