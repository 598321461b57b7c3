import urllib.error
import urllib.request

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from tracin_widgets.tutorial import (
    CIFAR10_CLASSES,
    DIGITS_CLASSES,
    DatasetUnavailableError,
    get_transforms,
    load_datasets,
)


def _digits_oracle(image_8x8: np.ndarray) -> np.ndarray:
    """Independent oracle: scale to [0, 1], every pixel a 4x4 block, then (x - 0.5) / 0.5."""
    return (np.kron(image_8x8 / 16.0, np.ones((4, 4))) - 0.5) / 0.5


def test_digits_split_sizes_types_and_classes(digits):
    train, test, class_names = digits
    assert (len(train), len(test)) == (1437, 360)
    assert class_names == DIGITS_CLASSES == tuple("0123456789")
    x, y = train[0]
    assert x.shape == (1, 32, 32) and x.dtype == torch.float32
    assert isinstance(y, int) and 0 <= y <= 9
    assert float(x.min()) >= -1.0 and float(x.max()) <= 1.0


def test_digits_split_is_a_seeded_partition_of_load_digits(digits):
    train, test, _ = digits
    assert set(train.indices).isdisjoint(test.indices)
    assert sorted([*train.indices, *test.indices]) == list(range(1797))
    again_train, again_test, _ = load_datasets("digits")
    assert np.array_equal(again_train.indices, train.indices) and np.array_equal(again_test.indices, test.indices)
    # stratified: every class in both splits, in about the same proportion
    counts = np.bincount(test.targets, minlength=10)
    assert counts.min() >= 30 and counts.max() <= 40


def test_digits_items_match_the_raw_images(digits):
    train, test, _ = digits
    raw = load_digits()
    for ds in (train, test):
        for i in (0, 7, len(ds) - 1):
            x, y = ds[i]
            src = int(ds.indices[i])
            assert y == int(raw.target[src])
            np.testing.assert_allclose(x[0].numpy(), _digits_oracle(raw.images[src]), atol=1e-6)


def test_digits_inverse_normalize_undoes_normalize():
    normalize, inverse_normalize, in_channels, image_size = get_transforms("digits")
    assert (in_channels, image_size) == (1, 32)
    image = load_digits().images[5]
    back = inverse_normalize(normalize(image))
    np.testing.assert_allclose(back[0].numpy(), np.kron(image / 16.0, np.ones((4, 4))), atol=1e-6)


def test_cifar_transforms_are_the_tutorials():
    from PIL import Image

    normalize, inverse_normalize, in_channels, image_size = get_transforms("cifar10")
    assert (in_channels, image_size) == (3, 32)
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    x = normalize(Image.fromarray(pixels))
    expected = (pixels.transpose(2, 0, 1) / 255.0 - 0.5) / 0.5
    np.testing.assert_allclose(x.numpy(), expected, atol=1e-6)
    np.testing.assert_allclose(inverse_normalize(x).numpy(), pixels.transpose(2, 0, 1) / 255.0, atol=1e-6)


def test_unknown_dataset_name():
    with pytest.raises(ValueError, match=r"unknown dataset name 'mnist'.*'digits', 'cifar10'"):
        load_datasets("mnist")
    with pytest.raises(ValueError, match="unknown dataset name"):
        get_transforms("mnist")


def test_cifar_offline_raises_one_clear_error(tmp_path, monkeypatch):
    calls = []

    def no_network(*args, **kwargs):
        calls.append(args)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)  # the real torchvision download path, no network
    with pytest.raises(DatasetUnavailableError, match=r'no network access\. Set DATASET = "digits"') as info:
        load_datasets("cifar10", root=tmp_path)
    assert calls, "torchvision's CIFAR10(download=True) code path was not exercised"
    err = info.value
    assert isinstance(err, RuntimeError)
    assert "CIFAR-10 is not available" in str(err) and "Temporary failure in name resolution" in str(err)
    assert str(tmp_path / "cifar_10") in str(err)
    assert err.__cause__ is None and err.__suppress_context__  # one error, not a traceback chain
    assert CIFAR10_CLASSES[3] == "cat" and len(CIFAR10_CLASSES) == 10
