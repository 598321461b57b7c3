"""The explorer part of the tutorial (notebooks/tutorial.ipynb, "Beyond the tutorial") as a marimo notebook.

Run it with ``.venv/bin/marimo run notebooks/explorer_marimo.py`` (an app) or ``.venv/bin/marimo edit
notebooks/explorer_marimo.py`` (the editor); ``bash .ci/setup --test`` installs marimo (the ``hosts`` extra).
Offline: scikit-learn's digits, the tutorial's ``Net`` and training settings, checkpoints in a fresh temporary
folder (or ``$TRACIN_TUTORIAL_DIR``). The explorer is shown with ``mo.ui.anywidget(InfluenceExplorer(...))``.
"""

import marimo

__generated_with = "0.25.2"
app = marimo.App(width="full")


@app.cell
def _():
    import marimo as mo

    mo.md(
        r"""
    # The `InfluenceExplorer` in marimo

    The explorer part of the TracInCP tutorial (`notebooks/tutorial.ipynb`) on scikit-learn's digits: which
    training examples support each test prediction, then which training labels are probably wrong. The explorer
    is one anywidget, shown with `mo.ui.anywidget`; it computes predictions, the training factors and the
    self-influence in a background thread, and its flags come back to Python.
    """
    )
    return (mo,)


@app.cell
def _(mo):
    import functools
    import os
    import tempfile

    import torch
    from torch import nn
    from torch.utils.data import DataLoader

    from tracin_widgets import InfluenceExplorer
    from tracin_widgets.influence import TracInCPFast
    from tracin_widgets.tutorial import (
        MislabelledDataset,
        Net,
        checkpoints_load_func,
        get_transforms,
        imshow_transform,
        load_datasets,
        make_mislabelled_labels,
        train,
    )

    torch.manual_seed(0)
    WORK_DIR = os.environ.get("TRACIN_TUTORIAL_DIR") or tempfile.mkdtemp(prefix="tracin-marimo-")
    _, inverse_normalize, _, _ = get_transforms("digits")
    to_image = functools.partial(imshow_transform, inverse_normalize=inverse_normalize)
    correct_dataset, test_dataset, label_to_class = load_datasets("digits", root=os.path.join(WORK_DIR, "data"))
    # The tutorial's digits settings: (epochs, a checkpoint every n) of each model, SGD lr 0.01 with momentum 0.9.
    # `marimo run notebooks/explorer_marimo.py -- --quick` trains shorter (the browser test does).
    QUICK = "quick" in mo.cli_args()
    CORRECT_EPOCHS, MISLABELLED_EPOCHS = ((6, 2), (11, 5)) if QUICK else ((26, 5), (51, 5))
    return (
        CORRECT_EPOCHS,
        MISLABELLED_EPOCHS,
        DataLoader,
        InfluenceExplorer,
        MislabelledDataset,
        Net,
        TracInCPFast,
        WORK_DIR,
        checkpoints_load_func,
        correct_dataset,
        label_to_class,
        make_mislabelled_labels,
        nn,
        os,
        test_dataset,
        to_image,
        torch,
        train,
    )


@app.cell
def _(CORRECT_EPOCHS, DataLoader, Net, WORK_DIR, correct_dataset, os, test_dataset, train):
    correct_net = Net(in_channels=1)
    correct_history = train(
        correct_net,
        CORRECT_EPOCHS[0],
        DataLoader(correct_dataset, batch_size=128, shuffle=True),
        DataLoader(test_dataset, batch_size=128),
        os.path.join(WORK_DIR, "checkpoints", "digits_correct_dataset"),
        save_every=CORRECT_EPOCHS[1],
        lr=0.01,
        print_every=CORRECT_EPOCHS[0],
    )
    correct_checkpoints = correct_history.checkpoint_paths
    return correct_checkpoints, correct_net


@app.cell
def _(mo):
    mo.md(
        r"""
    ## Influential examples for the test examples

    Pick a test example in the strip to see its proponents and opponents; click a training example to see its
    own; flag any of them (`f` on a focused tile, `?` lists the keys).
    """
    )
    return


# --8<-- [start:explorer]
@app.cell
def _(
    InfluenceExplorer,
    checkpoints_load_func,
    correct_checkpoints,
    correct_dataset,
    correct_net,
    label_to_class,
    mo,
    nn,
    test_dataset,
    to_image,
):
    influence_explorer = InfluenceExplorer(
        correct_net,
        correct_checkpoints,
        correct_dataset,
        test_dataset,
        checkpoints_load_func=checkpoints_load_func,
        final_fc_layer=correct_net.fc3,
        loss_fn=nn.CrossEntropyLoss(reduction="sum"),
        class_names=label_to_class,
        k=10,
        to_image=to_image,
    )
    explorer_view = mo.ui.anywidget(influence_explorer)
    mo.output.replace(explorer_view)
    return explorer_view, influence_explorer


@app.cell
def _(explorer_view, influence_explorer, mo):
    # Re-runs whenever the page changes the widget (a selection, a flag): the page's state is Python's.
    _ = explorer_view.value
    mo.md(
        f"Selected test example: **{influence_explorer.selected_test}** · explaining its "
        f"**{influence_explorer.explain}** · flagged: `{list(influence_explorer.flagged)}`"
    )
    return


# --8<-- [end:explorer]


@app.cell
def _(influence_explorer, mo, test_dataset, torch):
    influence_explorer.wait()
    _test = 0
    _x, _y = test_dataset[_test]
    _top = influence_explorer.source.influence((_x.unsqueeze(0), torch.tensor([int(_y)])), k=1)
    _train = int(_top.indices[0, 0])
    _terms = influence_explorer.checkpoint_contributions(_test, _train)
    mo.md(
        f"Test example {_test}'s top proponent is training example {_train}. Each checkpoint's term "
        "lr_c (g_t·g_i)(a_t·a_i) of its score (the details panel draws them as bars):\n\n"
        + "\n".join(f"- `{t['checkpoint']}`: {t['contribution']:+.4f}" for t in _terms)
        + f"\n\nSum **{sum(t['contribution'] for t in _terms):+.4f}** = the proponent's score "
        f"**{float(_top.influence_scores[0, 0]):+.4f}**."
    )
    return


@app.cell
def _(mo):
    mo.md(
        r"""
    ## Reviewing likely mislabelled training examples

    10 % of the training labels are replaced by the trained model's most probable wrong class, a model is trained
    on them (the tutorial's 51 epochs, a checkpoint every 5), and the explorer opens on the self-influence ranking
    with the ground truth (`is_mislabelled`), so the table marks the truly mislabelled rows and draws the ROC and
    found-vs-inspected curves. Flags set in the page and from Python are the same list, `flagged`.
    """
    )
    return


@app.cell
def _(
    DataLoader,
    MISLABELLED_EPOCHS,
    MislabelledDataset,
    Net,
    TracInCPFast,
    WORK_DIR,
    checkpoints_load_func,
    correct_dataset,
    correct_net,
    make_mislabelled_labels,
    nn,
    os,
    test_dataset,
    torch,
    train,
):
    mislabelled = make_mislabelled_labels(
        correct_dataset, correct_net, proportion=0.10, generator=torch.Generator().manual_seed(0)
    )
    mislabelled_dataset = MislabelledDataset(correct_dataset, mislabelled.labels)
    net = Net(in_channels=1)
    mislabelled_history = train(
        net,
        MISLABELLED_EPOCHS[0],
        DataLoader(mislabelled_dataset, batch_size=128, shuffle=True),
        DataLoader(test_dataset, batch_size=128),
        os.path.join(WORK_DIR, "checkpoints", "digits_mislabelled_dataset"),
        save_every=MISLABELLED_EPOCHS[1],
        lr=0.01,
        print_every=MISLABELLED_EPOCHS[0],
    )
    tracin_cp_fast = TracInCPFast(
        model=net,
        final_fc_layer=net.fc3,
        train_dataset=mislabelled_dataset,
        checkpoints=mislabelled_history.checkpoint_paths,
        checkpoints_load_func=checkpoints_load_func,
        loss_fn=nn.CrossEntropyLoss(reduction="sum"),
        batch_size=2048,
    )
    return mislabelled, mislabelled_dataset, net, tracin_cp_fast


@app.cell
def _(
    InfluenceExplorer,
    label_to_class,
    mislabelled,
    mislabelled_dataset,
    mo,
    net,
    test_dataset,
    to_image,
    tracin_cp_fast,
):
    mislabel_review = InfluenceExplorer(
        net,
        train_dataset=mislabelled_dataset,
        test_dataset=test_dataset,
        engine=tracin_cp_fast,
        class_names=label_to_class,
        k=10,
        is_mislabelled=mislabelled.is_mislabelled,
        to_image=to_image,
        view="ranking",  # open on the self-influence ranking
    )
    review_view = mo.ui.anywidget(mislabel_review)
    mo.output.replace(review_view)
    return mislabel_review, review_view


@app.cell
def _(mislabel_review, mislabelled, mo, review_view):
    # Re-runs whenever a flag changes in the page.
    _ = review_view.value
    _flagged = list(mislabel_review.flagged)
    _truly = int(mislabelled.is_mislabelled[_flagged].sum()) if _flagged else 0
    mo.md(
        f"Flagged in the page: `{_flagged}`, of which {_truly} truly mislabelled. "
        "`mislabel_review.export_flagged(path)` writes them, `mislabel_review.cleaned_dataset()` leaves them out."
    )
    return


if __name__ == "__main__":
    app.run()
