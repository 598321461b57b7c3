import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from sklearn.datasets import load_digits

from tracin_widgets.tutorial import (
    display_proponents_and_opponents,
    display_test_example,
    display_training_examples,
    get_transforms,
    imshow_transform,
)

DIGITS = get_transforms("digits")
CIFAR = get_transforms("cifar10")
NAMES = tuple("0123456789")


def test_imshow_transform_digits_is_the_gray_image():
    image = load_digits().images[3]
    out = imshow_transform(DIGITS.normalize(image), DIGITS.inverse_normalize)
    assert out.shape == (32, 32)
    np.testing.assert_allclose(out, np.kron(image / 16.0, np.ones((4, 4))), atol=1e-6)


def test_imshow_transform_cifar_is_hwc_and_clipped():
    x = torch.linspace(-1.5, 1.5, 3 * 32 * 32).reshape(3, 32, 32)
    out = imshow_transform(x, CIFAR.inverse_normalize)
    assert out.shape == (32, 32, 3)
    expected = np.clip(x.permute(1, 2, 0).numpy() * 0.5 + 0.5, 0, 1)
    np.testing.assert_allclose(out, expected, atol=1e-6)
    assert out.min() == 0.0 and out.max() == 1.0
    assert imshow_transform(x.unsqueeze(0), CIFAR.inverse_normalize).shape == (32, 32, 3)  # batch of one


def test_display_test_example(capsys, digits):
    _, test, _ = digits
    fig = display_test_example(
        test[0][0], test[0][1], torch.tensor(4), torch.tensor(0.4126), NAMES, DIGITS.inverse_normalize
    )
    assert isinstance(fig, Figure) and len(fig.axes) == 1
    out = capsys.readouterr().out
    assert f"true_class: {test[0][1]}" in out and "predicted_class: 4" in out and "predicted_prob 0.4126" in out
    assert "pred: 4 (0.41)" in fig.axes[0].get_title()


def test_display_training_examples(digits):
    train, _, _ = digits
    examples, labels = zip(*[train[i] for i in range(5)], strict=False)
    fig = display_training_examples(
        examples, labels, NAMES, DIGITS.inverse_normalize, scores=[3.0, 2, 1, 0, -1], indices=range(5)
    )
    assert isinstance(fig, Figure) and len(fig.axes) == 5
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[0].splitlines() == [NAMES[labels[0]], "#0", "3"]
    assert all(NAMES[y] == t.splitlines()[0] for y, t in zip(labels, titles, strict=False))


def test_display_training_examples_rgb():
    fig = display_training_examples(torch.zeros(3, 3, 32, 32), [0, 1, 2], ("a", "b", "c"), CIFAR.inverse_normalize)
    assert len(fig.axes) == 3 and [ax.get_title() for ax in fig.axes] == ["a", "b", "c"]
    assert fig.axes[0].get_images()[0].get_array().shape == (32, 32, 3)


@pytest.mark.parametrize("k", [1, 3])
def test_display_proponents_and_opponents(digits, k):
    train, test, _ = digits
    features = torch.stack([test[i][0] for i in range(2)])
    true = torch.tensor([test[i][1] for i in range(2)])
    props = torch.arange(2 * k).reshape(2, k)
    opps = props + 100
    scores = torch.randn(2, k)
    figs = display_proponents_and_opponents(
        features,
        props,
        opps,
        true,
        true,
        torch.tensor([0.9, 0.8]),
        train_dataset=train,
        label_to_class=NAMES,
        inverse_normalize=DIGITS.inverse_normalize,
        proponents_scores=scores,
        opponents_scores=-scores,
    )
    assert len(figs) == 2 and all(isinstance(f, Figure) for f in figs)
    for n, fig in enumerate(figs):
        assert len(fig.axes) == 1 + 2 * k
        top, middle, bottom = fig.subfigs
        assert f"true {NAMES[int(true[n])]}" in top._suptitle.get_text()
        assert middle._suptitle.get_text() == "proponents" and bottom._suptitle.get_text() == "opponents"
        prop_titles = [ax.get_title().splitlines() for ax in middle.axes]
        expected = [
            [NAMES[train[int(i)][1]], f"#{int(i)}", f"{float(s):.3g}"]
            for i, s in zip(props[n], scores[n], strict=False)
        ]
        assert prop_titles == expected
        assert [t.splitlines()[1] for t in (ax.get_title() for ax in bottom.axes)] == [f"#{int(i)}" for i in opps[n]]
