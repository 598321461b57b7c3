"""The tutorial's training loop (checkpoints every ``save_every`` epochs) and checkpoint loader."""

from __future__ import annotations

import datetime
import glob
import os
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.optim as optim

__all__ = ["TrainingHistory", "checkpoint_path", "checkpoints_load_func", "evaluate", "train"]


@dataclass
class TrainingHistory:
    """What :func:`train` did: one entry per epoch, plus the checkpoints it wrote."""

    epochs: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)  # summed mini-batch losses of the epoch (the tutorial's loss)
    test_accuracies: list[float] = field(default_factory=list)  # in percent
    epoch_seconds: list[float] = field(default_factory=list)
    checkpoint_paths: list[str] = field(default_factory=list)
    total_minutes: float = 0.0

    @property
    def final_test_accuracy(self) -> float:
        return self.test_accuracies[-1] if self.test_accuracies else float("nan")


def checkpoint_path(checkpoints_dir: str | os.PathLike, epoch: int) -> str:
    """``<checkpoints_dir>/checkpoint-<epoch>.pt``, the tutorial's file name."""
    return os.path.join(os.fspath(checkpoints_dir), "-".join(["checkpoint", str(epoch) + ".pt"]))


@torch.no_grad()
def evaluate(net: nn.Module, dataloader, device=None) -> float:
    """Accuracy in percent of ``net`` on ``dataloader`` (the tutorial's validation loop)."""
    correct = 0
    total = 0
    for images, labels in dataloader:
        if device is not None:
            images, labels = images.to(device), labels.to(device)
        outputs = net(images)
        _, predicted = torch.max(outputs.data, 1)
        total += labels.size(0)
        correct += (predicted == labels).sum().item()
    return 100.0 * correct / max(total, 1)


def train(
    net: nn.Module,
    num_epochs: int,
    train_dataloader,
    test_dataloader,
    checkpoints_dir,
    save_every: int,
    lr: float = 0.001,
    momentum: float = 0.9,
    *,
    device=None,
    print_every: int = 1,
    overwrite: bool = True,
) -> TrainingHistory:
    """Train ``net`` as the tutorial does: SGD(lr, momentum), ``CrossEntropyLoss``, one pass per epoch.

    Every epoch with ``epoch % save_every == 0`` saves ``checkpoint-{epoch}.pt`` in ``checkpoints_dir``: a dict with
    ``epoch``, ``model_state_dict``, ``optimizer_state_dict`` and ``loss`` (the epoch's summed running losses).
    It prints the running loss every 100 mini-batches, the test accuracy (every ``print_every`` epochs and at the
    last one; it is computed every epoch) and the total time.

    Extras over the tutorial (keyword-only): ``device`` trains there (the model is moved back to its original
    device afterwards, checkpoints are saved on CPU); ``overwrite=True`` first deletes ``checkpoint-*.pt`` files
    left in ``checkpoints_dir`` by an earlier run, so a ``glob`` afterwards sees exactly this run's checkpoints.
    Returns a :class:`TrainingHistory`.
    """
    if num_epochs < 1 or save_every < 1:
        raise ValueError(f"num_epochs and save_every must be >= 1, got {num_epochs} and {save_every}")
    start_time = datetime.datetime.now()
    checkpoints_dir = os.fspath(checkpoints_dir)
    if not os.path.exists(checkpoints_dir):
        os.makedirs(checkpoints_dir)
    elif overwrite:
        for stale in glob.glob(os.path.join(checkpoints_dir, "checkpoint-*.pt")):
            os.remove(stale)
    original_device = next(net.parameters()).device
    if device is not None:
        net.to(device)
    history = TrainingHistory()
    criterion = nn.CrossEntropyLoss()
    optimizer = optim.SGD(net.parameters(), lr=lr, momentum=momentum)
    try:
        for epoch in range(num_epochs):  # loop over the dataset multiple times
            epoch_start = datetime.datetime.now()
            net.train()
            epoch_loss = 0.0
            running_loss = 0.0
            for i, data in enumerate(train_dataloader):
                # get the inputs
                inputs, labels = data
                if device is not None:
                    inputs, labels = inputs.to(device), labels.to(device)
                # zero the parameter gradients
                optimizer.zero_grad()
                # forward + backward + optimize
                outputs = net(inputs)
                loss = criterion(outputs, labels)
                loss.backward()
                optimizer.step()
                # print statistics
                running_loss += loss.item()
                if (i + 1) % 100 == 0:  # print every 100 mini-batches
                    print(f"[{epoch + 1}, {i + 1:5d}] loss: {running_loss / 100:.3f}")
                    epoch_loss += running_loss
                    running_loss = 0.0
            epoch_loss += running_loss  # the tutorial drops the batches after the last multiple of 100; we keep them
            if epoch % save_every == 0:
                path = checkpoint_path(checkpoints_dir, epoch)
                torch.save(
                    {
                        "epoch": epoch,
                        "model_state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
                        "optimizer_state_dict": optimizer.state_dict(),
                        "loss": epoch_loss,
                    },
                    path,
                )
                history.checkpoint_paths.append(path)
            # Calculate validation accuracy
            net.eval()
            accuracy = evaluate(net, test_dataloader, device)
            history.epochs.append(epoch)
            history.losses.append(epoch_loss)
            history.test_accuracies.append(accuracy)
            history.epoch_seconds.append((datetime.datetime.now() - epoch_start).total_seconds())
            if epoch % print_every == 0 or epoch == num_epochs - 1:
                print(f"Accuracy of the network on test set at epoch {epoch}: {int(accuracy)} %")
    finally:
        net.eval()
        net.to(original_device)
    history.total_minutes = (datetime.datetime.now() - start_time).total_seconds() / 60.0
    print(f"Finished training in {history.total_minutes:.2f} minutes")
    return history


def checkpoints_load_func(net: nn.Module, path) -> float:
    """Load ``path``'s ``model_state_dict`` into ``net`` (``weights_only=True``) and return the learning rate 1.0.

    As the tutorial explains, returning 1 is safe when the learning rate is not known: TracIn rankings are not
    sensitive to it.
    """
    weights = torch.load(path, map_location="cpu", weights_only=True)
    net.load_state_dict(weights["model_state_dict"])
    return 1.0
