"""The tutorial's convolutional network, parameterised only in its input size."""

from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["Net"]

_KERNEL = 5


def _feature_side(image_size: int) -> int:
    """Side length of the feature map after conv1 -> pool1 -> conv2 -> pool2 (both convs 5x5, no padding)."""
    side = (image_size - (_KERNEL - 1)) // 2
    side = (side - (_KERNEL - 1)) // 2
    return side


class Net(nn.Module):
    """The network of Captum's TracInCP tutorial (itself PyTorch's CIFAR-10 tutorial network).

    ``Net()`` is exactly the original: 3x32x32 inputs, conv1 3->6 k5, conv2 6->16 k5, fc1 400->120, fc2 120->84,
    fc3 84->10. ``in_channels`` / ``image_size`` / ``num_classes`` only change the input-dependent sizes
    (``Net(in_channels=1)`` for the 1x32x32 upsampled digits). The children are registered in the original order
    ``conv1, pool1, pool2, conv2, fc1, fc2, fc3, relu1..relu4`` (verbatim from the tutorial), so
    ``list(net.children())[-1]`` is ``relu4``
    (not ``fc3``), as in the original tutorial.
    """

    def __init__(self, in_channels: int = 3, image_size: int = 32, num_classes: int = 10):
        super().__init__()
        side = _feature_side(image_size)
        if side < 1:
            raise ValueError(
                f"image_size={image_size} is too small for Net (two 5x5 convs and two 2x2 pools need at least "
                "13x13 inputs); upsample the images (the digits are upsampled from 8x8 to 32x32)"
            )
        self.in_channels, self.image_size, self.num_classes = in_channels, image_size, num_classes
        self.flat_features = 16 * side * side
        self.conv1 = nn.Conv2d(in_channels, 6, _KERNEL)
        self.pool1 = nn.MaxPool2d(2, 2)
        self.pool2 = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, _KERNEL)
        self.fc1 = nn.Linear(self.flat_features, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)
        self.relu1 = nn.ReLU()
        self.relu2 = nn.ReLU()
        self.relu3 = nn.ReLU()
        self.relu4 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        x = x.view(-1, self.flat_features)
        x = self.relu3(self.fc1(x))
        x = self.relu4(self.fc2(x))
        x = self.fc3(x)
        return x
