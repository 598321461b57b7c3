import os
import pickle
import re

import pytest
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

from tracin_widgets.tutorial import Net, checkpoint_path, checkpoints_load_func, evaluate, train


def _data(n=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 1, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g))


def _loaders(batch_size=16):
    return DataLoader(_data(48, 0), batch_size=batch_size, shuffle=False), DataLoader(_data(20, 1), batch_size=8)


def test_checkpoint_files_and_contents(tmp_path, capsys):
    net = Net(in_channels=1)
    train_dl, test_dl = _loaders()
    history = train(net, 5, train_dl, test_dl, tmp_path / "ckpts", save_every=2, lr=0.01)
    names = sorted(os.listdir(tmp_path / "ckpts"))
    assert names == ["checkpoint-0.pt", "checkpoint-2.pt", "checkpoint-4.pt"]
    assert history.checkpoint_paths == [checkpoint_path(tmp_path / "ckpts", e) for e in (0, 2, 4)]
    assert history.epochs == [0, 1, 2, 3, 4]
    for epoch in (0, 2, 4):
        ckpt = torch.load(tmp_path / "ckpts" / f"checkpoint-{epoch}.pt", weights_only=True)
        assert set(ckpt) == {"epoch", "model_state_dict", "optimizer_state_dict", "loss"}
        assert ckpt["epoch"] == epoch
        assert ckpt["loss"] == pytest.approx(history.losses[epoch])
        assert ckpt["loss"] > 0
        assert set(ckpt["model_state_dict"]) == set(net.state_dict())
        assert ckpt["optimizer_state_dict"]["param_groups"][0]["lr"] == 0.01
        assert ckpt["optimizer_state_dict"]["param_groups"][0]["momentum"] == 0.9
    last = torch.load(tmp_path / "ckpts" / "checkpoint-4.pt", weights_only=True)["model_state_dict"]
    for k, v in net.state_dict().items():  # the last epoch's checkpoint holds the final weights
        torch.testing.assert_close(last[k], v, rtol=0, atol=0)
    first = torch.load(tmp_path / "ckpts" / "checkpoint-0.pt", weights_only=True)["model_state_dict"]
    assert not torch.equal(first["fc3.weight"], last["fc3.weight"])
    out = capsys.readouterr().out
    accs = [int(a) for a in re.findall(r"Accuracy of the network on test set at epoch \d+: (\d+) %", out)]
    assert len(accs) == 5 and accs == [int(a) for a in history.test_accuracies]
    assert re.search(r"Finished training in \d+\.\d\d minutes", out)
    assert len(history.epoch_seconds) == 5 and history.total_minutes >= 0


def test_training_is_the_tutorials_sgd_loop(tmp_path):
    """Oracle: the same steps written out by hand (SGD lr/momentum, CrossEntropyLoss, zero_grad/backward/step)."""
    torch.manual_seed(3)
    ours = Net(in_channels=1)
    oracle = Net(in_channels=1)
    oracle.load_state_dict(ours.state_dict())
    train_dl, test_dl = _loaders()
    train(ours, 2, train_dl, test_dl, tmp_path, save_every=1, lr=0.02, momentum=0.5)
    opt = torch.optim.SGD(oracle.parameters(), lr=0.02, momentum=0.5)
    for _ in range(2):
        for x, y in train_dl:
            opt.zero_grad()
            nn.functional.cross_entropy(oracle(x), y).backward()
            opt.step()
    for k, v in oracle.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[k], v)


def test_evaluate_matches_a_manual_count():
    net = Net(in_channels=1)
    _, test_dl = _loaders()
    x, y = next(iter(DataLoader(_data(20, 1), batch_size=20)))
    with torch.no_grad():
        expected = 100.0 * (net(x).argmax(1) == y).float().mean().item()
    assert evaluate(net, test_dl) == pytest.approx(expected)


def test_overwrite_removes_stale_checkpoints_only(tmp_path, capsys):
    (tmp_path / "checkpoint-99.pt").write_bytes(b"stale")
    (tmp_path / "notes.txt").write_text("keep me")
    train_dl, test_dl = _loaders()
    train(Net(in_channels=1), 1, train_dl, test_dl, tmp_path, save_every=1)
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-0.pt", "notes.txt"]
    (tmp_path / "checkpoint-99.pt").write_bytes(b"stale")
    train(Net(in_channels=1), 1, train_dl, test_dl, tmp_path, save_every=1, overwrite=False)
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-0.pt", "checkpoint-99.pt", "notes.txt"]


def test_bad_arguments():
    train_dl, test_dl = _loaders()
    with pytest.raises(ValueError, match="num_epochs and save_every must be >= 1, got 0 and 1"):
        train(Net(in_channels=1), 0, train_dl, test_dl, "unused", save_every=1)


def test_checkpoints_load_func_loads_weights_and_returns_one(tmp_path):
    trained = Net(in_channels=1)
    train_dl, test_dl = _loaders()
    history = train(trained, 1, train_dl, test_dl, tmp_path, save_every=1)
    fresh = Net(in_channels=1)
    assert not torch.equal(fresh.fc3.weight, trained.fc3.weight)
    lr = checkpoints_load_func(fresh, history.checkpoint_paths[0])
    assert lr == 1.0 and isinstance(lr, float)
    for k, v in trained.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[k], v, rtol=0, atol=0)


class _Evil:
    pass


def test_checkpoints_load_func_uses_weights_only(tmp_path):
    path = tmp_path / "checkpoint-0.pt"
    torch.save({"model_state_dict": Net(in_channels=1).state_dict(), "extra": _Evil()}, path)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        checkpoints_load_func(Net(in_channels=1), path)
