"""The explorer and the user's model: every module keeps its own train/eval flag, and the explorer never predicts
while another user of the same model (the user's own engine) has checkpoint weights loaded in it."""

from __future__ import annotations

import copy
import threading
import time

import numpy as np
import torch
from torch import nn

from tracin_widgets.influence import TracInCPFast
from tracin_widgets.widget import InfluenceExplorer

from .conftest import C, D


def frozen_norm_model() -> nn.Module:
    """A model that trains while its BatchNorm was frozen (eval mode) by the user, a common fine-tuning setup."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(D, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.Linear(8, C))
    with torch.no_grad():
        model(torch.randn(64, D) * 3 + 1)  # non-trivial running statistics
    model.train()
    model[1].eval()
    return model


def modes(model: nn.Module) -> list[bool]:
    return [m.training for m in model.modules()]


def eval_probs(model: nn.Module, x) -> tuple[np.ndarray, np.ndarray]:
    """Predicted class and its probability from an independent eval-mode copy (the oracle)."""
    ref = copy.deepcopy(model).eval()
    with torch.no_grad():
        p = torch.softmax(ref(torch.as_tensor(x, dtype=torch.float32)), 1)
    return p.argmax(1).numpy(), p.max(1).values.numpy()


def test_every_module_keeps_its_own_train_flag_and_predictions_are_in_eval_mode(data, fake, sent):
    model = frozen_norm_model()
    before = modes(model)
    assert before == [True, True, False, True, True]
    w = InfluenceExplorer(
        model, None, data["train"], data["test"], engine=fake, class_names=["a", "b", "c"], test_indices=range(6)
    )
    w.wait(30)
    assert modes(model) == before  # construction forward + test and training predictions
    w.send = sent
    w.set_state({"query": {"source": "test", "index": 9}})  # outside test_indices: predicted on demand
    w.wait(10)
    w._handle_custom_msg({"kind": "detail", "id": 1, "index": 3}, [])
    assert modes(model) == before
    pred, prob = eval_probs(model, data["x_train"])
    assert (w._examples.train_preds == pred).all()
    np.testing.assert_allclose(w._examples.train_probs, prob, rtol=1e-5)  # dropout off, BatchNorm on its running stats
    pred9, prob9 = eval_probs(model, data["x_test"][9:10])
    assert w.gallery["item"]["pred"] == pred9[0] and w.gallery["item"]["prob"] == float(prob9[0])


def test_default_engine_and_layer_search_keep_each_modules_flag(data, tmp_path):
    model = frozen_norm_model()
    before = modes(model)
    ckpts = []
    for i in range(2):
        path = tmp_path / f"c{i}.pt"
        torch.save({k: v + 0.01 * i if v.is_floating_point() else v for k, v in model.state_dict().items()}, path)
        ckpts.append(str(path))
    w = InfluenceExplorer(model, ckpts, data["train"], data["test"], k=3, class_names=["a", "b", "c"])
    w.wait(60)
    assert w.status == "ready" and w.error == ""
    assert modes(model) == before  # find_final_linear_layer, the engine's passes and the predictions


def test_explorer_never_predicts_with_the_checkpoint_weights_of_a_users_engine(data, fake, tmp_path):
    """The user's own engine loads a checkpoint and is held there (inside fit(), holding the model's lock) while
    the explorer starts: its predictions must wait and use the user's weights, not the checkpoint's."""
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(D, 8), nn.ReLU(), nn.Linear(8, C))
    original = copy.deepcopy(model.state_dict())
    ckpt = tmp_path / "other.pt"
    torch.save({k: torch.randn_like(v) * 3 for k, v in original.items()}, ckpt)  # very different weights
    loaded, release = threading.Event(), threading.Event()

    def load_and_block(m, path):
        m.load_state_dict(torch.load(path, weights_only=True))
        loaded.set()
        assert release.wait(30), "test never released the checkpoint"
        return 1.0

    users = TracInCPFast(
        model,
        model[2],
        data["train"],
        [str(ckpt)],
        checkpoints_load_func=load_and_block,
        loss_fn=nn.CrossEntropyLoss(reduction="sum"),
    )
    fitting = threading.Thread(target=users.fit, daemon=True)
    fitting.start()
    try:
        assert loaded.wait(30)
        w = InfluenceExplorer(model, None, data["train"], data["test"], engine=fake)
        deadline = time.monotonic() + 1.0  # without the shared lock the explorer predicts right away
        while w._examples.test_preds is None and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        release.set()
        fitting.join(30)
    w.wait(30)
    for k, v in model.state_dict().items():  # the user's engine put the original weights back
        assert torch.equal(v, original[k])
    pred, prob = eval_probs(model, data["x_test"])
    assert (w._examples.test_preds == pred).all()
    np.testing.assert_allclose(w._examples.test_probs, prob, rtol=1e-6)
    pred, prob = eval_probs(model, data["x_train"])
    np.testing.assert_allclose(w._examples.train_probs, prob, rtol=1e-6)
