import pytest
import torch
import torch.nn as nn

from tracin_widgets.tutorial import Net


class OriginalNet(nn.Module):
    """Verbatim from Captum's TracInCP tutorial (the oracle)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool1 = nn.MaxPool2d(2, 2)
        self.pool2 = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)
        self.relu1 = nn.ReLU()
        self.relu2 = nn.ReLU()
        self.relu3 = nn.ReLU()
        self.relu4 = nn.ReLU()

    def forward(self, x):
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        x = x.view(-1, 16 * 5 * 5)
        x = self.relu3(self.fc1(x))
        x = self.relu4(self.fc2(x))
        x = self.fc3(x)
        return x


ORIGINAL_ORDER = ["conv1", "pool1", "pool2", "conv2", "fc1", "fc2", "fc3", "relu1", "relu2", "relu3", "relu4"]


def test_children_order_is_the_original_and_last_child_is_relu4():
    net = Net()
    assert [name for name, _ in net.named_children()] == ORIGINAL_ORDER
    assert [name for name, _ in OriginalNet().named_children()] == ORIGINAL_ORDER
    assert list(net.children())[-1] is net.relu4
    assert isinstance(list(net.children())[-1], nn.ReLU)


def test_default_net_is_the_original_architecture():
    ours, original = Net(), OriginalNet()
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in original.state_dict().items()}
    ours.load_state_dict(original.state_dict())  # checkpoints of the original load into ours
    x = torch.randn(5, 3, 32, 32)
    torch.testing.assert_close(ours(x), original(x), rtol=0, atol=0)
    assert sum(p.numel() for p in ours.parameters()) == 62006


@pytest.mark.parametrize(
    "in_channels,image_size,flat",
    [(3, 32, 400), (1, 32, 400), (1, 28, 16 * 4 * 4), (2, 40, 16 * 7 * 7)],
)
def test_input_size_parameters(in_channels, image_size, flat):
    net = Net(in_channels=in_channels, image_size=image_size, num_classes=7)
    assert net.conv1.in_channels == in_channels
    assert net.fc1.in_features == flat
    assert net.fc3.out_features == 7
    out = net(torch.randn(4, in_channels, image_size, image_size))
    assert out.shape == (4, 7)


def test_too_small_images_are_refused_with_a_hint():
    with pytest.raises(ValueError, match=r"image_size=8 is too small.*upsample"):
        Net(in_channels=1, image_size=8)
