"""The explorer shows classifiers only: a regression model (float targets, one output, a regression loss) or
multi-label targets get a clear error before any pass, never class labels invented from floats."""

from __future__ import annotations

import pytest
import torch
from sklearn.datasets import load_diabetes
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from tracin_widgets import InfluenceExplorer
from tracin_widgets.influence import TracInCPFast

SUPPORTED = r"the explorer shows classifiers .* use the engine directly"


@pytest.fixture
def diabetes(tmp_path):
    x, y = load_diabetes(return_X_y=True)
    x, y = torch.tensor(x[:80], dtype=torch.float32), torch.tensor(y[:80], dtype=torch.float32)
    model = nn.Sequential(nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 1))
    path = tmp_path / "checkpoint-0.pt"
    torch.save(model.state_dict(), path)
    return model, [str(path)], x, y


def test_float_targets_are_refused(diabetes):
    model, ckpts, x, y = diabetes
    with pytest.raises(ValueError, match=r"train_dataset\[i\]'s label is a float \(tensor\(151\.\)\): " + SUPPORTED):
        InfluenceExplorer(model, ckpts, TensorDataset(x, y))
    from tracin_widgets.widget import _data

    with pytest.raises(ValueError, match=r"train_dataset's labels are torch.float32 \(floats\): " + SUPPORTED):
        _data.fast_labels(TensorDataset(x, y))  # never cast to class indices


def test_a_regression_loss_is_refused(diabetes):
    model, ckpts, x, y = diabetes
    with pytest.raises(ValueError, match=r"loss_fn is MSELoss: " + SUPPORTED):
        InfluenceExplorer(model, ckpts, TensorDataset(x, y.long()), loss_fn=nn.MSELoss(reduction="sum"))
    ints = TensorDataset(x, y.long())
    engine = TracInCPFast(model, model[2], ints, ckpts, loss_fn=nn.MSELoss(reduction="sum"))
    with pytest.raises(ValueError, match=r"the engine's loss_fn is MSELoss: " + SUPPORTED):
        InfluenceExplorer(model, train_dataset=ints, engine=engine)


class FloatLabels(Dataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], float(self.y[i])


def test_float_labels_of_a_generic_dataset_are_refused(diabetes):
    model, ckpts, x, y = diabetes
    with pytest.raises(ValueError, match=r"train_dataset\[i\]'s label is a float \(151.0\): " + SUPPORTED):
        InfluenceExplorer(model, ckpts, FloatLabels(x, y))


def test_multi_label_targets_are_refused(diabetes):
    model, ckpts, x, _ = diabetes
    targets = (torch.rand(len(x), 3) > 0.5).float()
    with pytest.raises(ValueError, match=SUPPORTED):
        InfluenceExplorer(model, ckpts, TensorDataset(x, targets), loss_fn=nn.BCEWithLogitsLoss(reduction="sum"))


def test_a_one_output_model_is_refused_with_int_labels(diabetes):
    from tracin_widgets.widget import _data

    with pytest.raises(ValueError, match=r"one output per example .*: " + SUPPORTED):
        _data.check_logits(torch.zeros(4, 1))
    assert _data.check_logits(torch.zeros(4, 3)).shape == (4, 3)
