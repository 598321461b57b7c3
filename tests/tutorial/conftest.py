import matplotlib

matplotlib.use("Agg")  # before any pyplot import: the display helpers must work headless

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _seed_and_close_figures():
    torch.manual_seed(0)
    yield
    plt.close("all")


@pytest.fixture(scope="session")
def digits():
    from tracin_widgets.tutorial import load_datasets

    return load_datasets("digits")
