"""The review loop on noisy labels: ``python -m benchmarks.review [--quick] [--device cuda]``.

Digits (the tutorial's data set, its ``Net`` and its "most probable wrong class" flips) with 10% and 20% of the
training labels flipped, several seeds. For each run the explorer's suggestions (the checkpoints' average prediction
against the label) are scored against the flipped set:

- the badge (a suggestion exists): precision and recall against the flipped set, and the base rate;
- the same over the galleries of the first 10 misclassified test examples (k = 10: 20 tiles each), where users look:
  precision of the badged tiles against the galleries' base rate (target: at least twice it, which a base rate above
  one half makes impossible: ``ceiling_over_base_rate``), and the flipped share of the tiles left unbadged;
- ``estimated_mislabelled`` against the number flipped (target: within 25%);
- the suggested label's accuracy on the flipped rows (equal to the label before the flip);
- retraining on the cleaned data: a reviewer inspects the ranking down to ``estimated_mislabelled`` rows, accepts the
  suggestion where there is one and removes the others (``relabels`` + ``flagged``, ``cleaned_dataset()``); the same
  recipe is trained on the noisy and on the cleaned data over several seeds: test accuracy before/after, mean and
  spread.

Writes ``benchmarks/results/review-<machine>.json`` (``--tag`` names the machine) and prints a summary.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from tracin_widgets.tutorial import (
    MislabelledDataset,
    Net,
    checkpoints_load_func,
    evaluate,
    load_datasets,
    make_mislabelled_labels,
    train,
)
from tracin_widgets.widget import InfluenceExplorer

RESULTS = Path(__file__).resolve().parent / "results"
LR = 0.01  # the tutorial's digits settings
CLEAN_EPOCHS, NOISY_EPOCHS, SAVE_EVERY = 26, 51, 5


def quiet_train(net: nn.Module, dataset: Any, test: Any, epochs: int, folder: Path, seed: int, device: Any) -> Any:
    """The tutorial's training (SGD, momentum 0.9, batches of 128, shuffled by ``seed``), its prints swallowed."""
    loader = DataLoader(dataset, batch_size=128, shuffle=True, generator=torch.Generator().manual_seed(seed))
    with contextlib.redirect_stdout(io.StringIO()):
        return train(net, epochs, loader, DataLoader(test, batch_size=512), folder, SAVE_EVERY, lr=LR, device=device)


def gallery_tiles(w: InfluenceExplorer, test_ids: list[int]) -> list[dict]:
    tiles = []
    for i in test_ids:
        w.query = {"source": "test", "index": int(i)}
        w.wait(600)
        tiles += w.gallery["proponents"] + w.gallery["opponents"]
    return tiles


def ratio(a: float, b: float) -> float | None:
    return None if b == 0 else a / b


def retrain(dataset: Any, test: Any, seeds: list[int], epochs: int, device: Any, work: Path) -> list[float]:
    accs = []
    for s in seeds:
        torch.manual_seed(1000 + s)
        net = Net(in_channels=1)
        quiet_train(net, dataset, test, epochs, work / f"retrain-{s}", 1000 + s, device)
        accs.append(float(evaluate(net, DataLoader(test, batch_size=512), device=device)))
    return accs


def spread(values: list[float]) -> dict:
    """Test accuracies (%) over the retraining seeds: mean, standard deviation and each."""
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "values": values,
    }


def one_run(proportion: float, seed: int, clean_net: nn.Module, data: tuple, args: argparse.Namespace) -> dict:
    train_ds, test_ds, names = data
    t0 = time.perf_counter()
    flips = torch.Generator().manual_seed(seed)
    ml = make_mislabelled_labels(train_ds, clean_net, proportion=proportion, generator=flips)
    noisy = MislabelledDataset(train_ds, ml.labels)
    truth, correct, given = ml.is_mislabelled.numpy(), ml.correct_labels.numpy(), ml.labels.numpy()
    work = Path(tempfile.mkdtemp(prefix=f"review-{proportion}-{seed}-"))
    torch.manual_seed(seed)
    net = Net(in_channels=1)
    history = quiet_train(net, noisy, test_ds, args.epochs, work / "ckpts", seed, args.device)
    w = InfluenceExplorer(
        net,
        history.checkpoint_paths,
        noisy,
        test_ds,
        checkpoints_load_func=checkpoints_load_func,
        final_fc_layer=net.fc3,
        loss_fn=nn.CrossEntropyLoss(reduction="sum"),
        class_names=names,
        k=10,
        device=args.device,
        review_path=False,
        is_mislabelled=truth,
        batch_size=512,
    ).wait(1800)
    sugg = w.suggested_labels
    badge = sugg >= 0
    tp = int((badge & truth).sum())
    test_labels = np.array([int(test_ds[i][1]) for i in range(len(test_ds))])
    wrong = np.flatnonzero(w._examples.test_preds != test_labels)[:10].tolist()
    tiles = gallery_tiles(w, wrong)
    tile_flipped = np.array([truth[r["index"]] for r in tiles], bool)
    tile_badged = np.array([r["badge"] is not None for r in tiles], bool)
    unbadged = int((~tile_badged).sum())
    est = int(w.estimated_mislabelled)
    # the simulated reviewer: down the ranking to estimated_mislabelled rows; accept a suggestion, else remove
    top = np.argsort(-w.self_influence, kind="stable")[:est]
    w.relabels = {int(i): int(sugg[i]) for i in top if sugg[i] >= 0}
    w.flagged = [int(i) for i in top if sugg[i] < 0]
    cleaned = w.cleaned_dataset()
    new_labels = np.array([int(cleaned[j][1]) for j in range(len(cleaned))])
    kept = np.asarray(cleaned.indices)
    seeds = list(range(args.retrain_seeds))
    again = args.retrain_flip_seeds is None or str(seed) in args.retrain_flip_seeds.split(",")
    before = retrain(noisy, test_ds, seeds, args.retrain_epochs, args.device, work) if again else []
    after = retrain(cleaned, test_ds, seeds, args.retrain_epochs, args.device, work) if again else []
    w.close()
    return {
        "proportion": proportion,
        "seed": seed,
        "n_train": len(given),
        "flipped": int(truth.sum()),
        "noisy_model_test_accuracy": float(history.test_accuracies[-1]),
        "badge": {
            "badged": int(badge.sum()),
            "precision": ratio(tp, int(badge.sum())),
            "recall": ratio(tp, int(truth.sum())),
            "base_rate": float(truth.mean()),
        },
        "galleries": {
            "test_examples": wrong,
            "tiles": len(tiles),
            "badged": int(tile_badged.sum()),
            "base_rate": float(tile_flipped.mean()) if len(tiles) else None,
            "badged_precision": ratio(int((tile_badged & tile_flipped).sum()), int(tile_badged.sum())),
            "precision_over_base_rate": ratio(
                ratio(int((tile_badged & tile_flipped).sum()), int(tile_badged.sum())) or 0.0,
                float(tile_flipped.mean()) if len(tiles) else 0.0,
            ),
            "ceiling_over_base_rate": ratio(1.0, float(tile_flipped.mean())) if len(tiles) else None,
            "unbadged_flipped_rate": ratio(int((~tile_badged & tile_flipped).sum()), unbadged),
        },
        "estimate": {"estimated_mislabelled": est, "truth": int(truth.sum()), "ratio": ratio(est, int(truth.sum()))},
        "suggested_label": {
            "flipped_with_a_suggestion": ratio(int((badge & truth).sum()), int(truth.sum())),
            "accuracy_on_flipped": ratio(int((sugg[truth] == correct[truth]).sum()), int(truth.sum())),
        },
        "cleaning": {
            "inspected": est,
            "relabelled": len(w.relabels),
            "removed": len(w.flagged),
            "relabels_correct": ratio(sum(int(correct[i] == v) for i, v in w.relabels.items()), len(w.relabels)),
            "removed_flipped": ratio(int(truth[list(w.flagged)].sum()), len(w.flagged)),
            "wrong_labels_left": int((new_labels != correct[kept]).sum()),
        },
        "retrain": {"epochs": args.retrain_epochs, "before": spread(before), "after": spread(after)} if again else None,
        "seconds": time.perf_counter() - t0,
    }


def summary(runs: list[dict]) -> list[str]:
    out = []
    for r in runs:
        b, g, e, s, rt = r["badge"], r["galleries"], r["estimate"], r["suggested_label"], r["retrain"]
        out.append(
            f"{int(100 * r['proportion'])}% seed {r['seed']}: flipped {r['flipped']}, badge precision "
            f"{b['precision']:.2f} recall {b['recall']:.2f} (base {b['base_rate']:.2f}); galleries: "
            f"{g['badged']}/{g['tiles']} badged, precision {g['badged_precision'] or 0:.2f} vs base "
            f"{g['base_rate']:.2f} ({g['precision_over_base_rate'] or 0:.1f}x); estimate {e['estimated_mislabelled']} "
            f"vs {e['truth']} ({e['ratio']:.2f}); suggestion right on {s['accuracy_on_flipped']:.2f} of flipped"
            + (
                f"; retrain {rt['before']['mean']:.1f} ± {rt['before']['std']:.1f}% -> {rt['after']['mean']:.1f} ± "
                f"{rt['after']['std']:.1f}%"
                if rt
                else ""
            )
        )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.review", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a smoke run: one seed at 10%%, few epochs")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tag", default=None, help="the machine's name in the results file (default: the host's)")
    p.add_argument("--proportions", default="0.1,0.2")
    p.add_argument("--seeds", default="0,1,2", help="flip and training seeds of each proportion")
    p.add_argument("--epochs", type=int, default=NOISY_EPOCHS)
    p.add_argument("--retrain-seeds", type=int, default=3)
    p.add_argument("--retrain-epochs", type=int, default=CLEAN_EPOCHS)
    p.add_argument("--retrain-flip-seeds", default=None, help="retrain only the runs of these flip seeds (default all)")
    args = p.parse_args(argv)
    if args.quick:
        args.proportions, args.seeds, args.epochs, args.retrain_seeds, args.retrain_epochs = "0.1", "0", 11, 2, 6
    t0 = time.perf_counter()
    train_ds, test_ds, names = load_datasets("digits")
    torch.manual_seed(0)
    clean_net = Net(in_channels=1)
    with tempfile.TemporaryDirectory() as tmp:
        quiet_train(clean_net, train_ds, test_ds, 6 if args.quick else CLEAN_EPOCHS, Path(tmp), 0, args.device)
    clean_net.cpu()
    runs = [
        one_run(float(prop), int(seed), clean_net, (train_ds, test_ds, names), args)
        for prop in args.proportions.split(",")
        for seed in args.seeds.split(",")
    ]
    for line in summary(runs):
        print(line)
    tag = args.tag or platform.node().split(".")[0] or "machine"
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"review-{tag}{'-quick' if args.quick else ''}.json"
    doc = {
        "scenario": "review",
        "machine_tag": tag,
        "device": str(args.device),
        "torch": torch.__version__,
        "settings": {k: v for k, v in vars(args).items()},
        "runs": runs,
        "seconds": time.perf_counter() - t0,
    }
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {out} ({doc['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
