"""The explorer over a store-backed TracInCPFast whose factors stay on disk (``max_memory`` far below them, queries
stream the store): the table's pages, sorts, filters and statistics against numpy orders computed here from the
engine's own self-influence; thumbnails only for the rows sent; the factors never loaded into memory; and nothing
of the store's size held by the explorer (``python -m benchmarks widget --only widget-store`` measures the same
at 1,281,167 rows)."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from torch import nn
from torch.utils.data import TensorDataset

from tracin_widgets.influence import TracInCPFast
from tracin_widgets.influence.fast import FactorBank
from tracin_widgets.widget import InfluenceExplorer, _codec, _stats

N = 20_000  # training rows: 20k x 3 checkpoints x (32 + 10) floats = 10 MB of factors, streamed through 1 MB


@pytest.fixture(scope="module")
def problem(tmp_path_factory):
    """8x8 digits-like images (a fixed pattern per class plus noise), 5 % of the labels flipped, an MLP
    64 -> 32 -> 10 and 3 checkpoints of a few SGD steps each."""
    folder = tmp_path_factory.mktemp("large-store")
    rng = np.random.default_rng(0)
    templates = rng.uniform(0, 1, (10, 8, 8)).astype(np.float32)
    y = rng.integers(0, 10, N + 40)
    x = templates[y] + 0.4 * rng.standard_normal((N + 40, 8, 8), dtype=np.float32)
    flipped = np.zeros(N, bool)
    flipped[rng.choice(N, N // 20, replace=False)] = True
    y_train = y[:N].copy()
    y_train[flipped] = (y_train[flipped] + rng.integers(1, 10, flipped.sum())) % 10
    train = TensorDataset(torch.from_numpy(x[:N, None]), torch.from_numpy(y_train))
    test = TensorDataset(torch.from_numpy(x[N:, None]), torch.from_numpy(y[N:]))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ckpts = []
    for c in range(3):
        for s in range(0, 2000, 200):
            opt.zero_grad()
            nn.functional.cross_entropy(model(train.tensors[0][s : s + 200]), train.tensors[1][s : s + 200]).backward()
            opt.step()
        ckpts.append(str(folder / f"checkpoint-{c}.pt"))
        torch.save(model.state_dict(), ckpts[-1])
    return {"model": model, "ckpts": ckpts, "train": train, "test": test, "flipped": flipped, "folder": folder}


@pytest.fixture(scope="module")
def explorer(problem):
    """A ready explorer over the streamed engine, with spies on the engine's in-memory factor path and on the
    order of its calls (recorded in ``w.spied``)."""
    p = problem
    engine = TracInCPFast(
        p["model"],
        "3",
        p["train"],
        p["ckpts"],
        loss_fn=nn.CrossEntropyLoss(reduction="sum"),
        batch_size=4096,
        cache_dir=p["folder"] / "cache",
        max_memory="1MB",
    )
    spied: dict[str, list] = {"ensure": [], "self_influence_with_galleries_allowed": []}
    real_keep, real_self = FactorBank.keep, engine.self_influence

    def keep(*a, **kw):  # the factors held in memory (any bank, a streamed one never)
        spied["ensure"].append(a)
        return real_keep(*a, **kw)

    def self_influence(*a, **kw):
        spied["self_influence_with_galleries_allowed"].append(w._pipeline.fitted.is_set())
        return real_self(*a, **kw)

    engine.self_influence = self_influence
    mp = pytest.MonkeyPatch()
    mp.setattr(FactorBank, "keep", keep)
    made: list[int] = []
    real_encode = _codec.encode_image

    def encode(*a, **kw):
        made.append(1)
        return real_encode(*a, **kw)

    mp.setattr(_codec, "encode_image", encode)
    w = InfluenceExplorer(
        p["model"], None, p["train"], p["test"], engine=engine, k=5, is_mislabelled=p["flipped"], batch_size=4096
    )
    w.wait(300)
    assert w.status == "ready", w.error
    w.spied, w.thumbnails_made, w.thumbnails_at_ready = spied, made, len(made)
    yield w
    mp.undo()
    w.close()


def ask(w: InfluenceExplorer, **request) -> dict:
    """One ``rows`` request as the page sends it; the reply's content."""
    sent: list = []
    w.send = lambda content, buffers=None: sent.append(content)
    req = {"kind": "rows", "id": 1, "offset": 0, "limit": 50, "sort": "rank", "descending": False, "label": None}
    w._handle_custom_msg({**req, "only": "all", "score_range": None, **request}, [])
    (reply,) = sent
    assert reply["kind"] == "rows" and not reply["pending"], reply
    return reply


def oracle(w: InfluenceExplorer) -> dict:
    """Self-influence asked of the engine again, and the table's orders computed from it with numpy lexsort."""
    s = w.source.self_influence().double().numpy()
    by_rank = np.lexsort((np.arange(N), -s))  # descending, ties by index
    rank = np.empty(N, np.int64)
    rank[by_rank] = np.arange(1, N + 1)
    return {"s": s, "by_rank": by_rank, "rank": rank}


def test_the_engine_streams_and_the_explorer_never_loads_the_factors(explorer):
    engine = explorer.source
    assert engine.factors_.store is not None and engine.factors_.factors is None
    assert engine.factors_.nbytes() > 8 * 2**20  # the factors are 10x max_memory
    assert explorer.spied["ensure"] == []
    assert explorer._pipeline.train_path.startswith("factors:"), explorer._pipeline.train_path
    # the self-influence was asked before the galleries could query the engine, so it never waited behind a query
    assert explorer.spied["self_influence_with_galleries_allowed"][:1] == [False]


def test_first_page_and_sorts_match_a_numpy_order_of_the_engines_self_influence(explorer):
    o = oracle(explorer)
    np.testing.assert_allclose(explorer.self_influence, o["s"], rtol=1e-12)
    first = ask(explorer)
    idx = [r["index"] for r in first["rows"]]
    assert first["total"] == N and idx == o["by_rank"][:50].tolist()
    assert [r["rank"] for r in first["rows"]] == list(range(1, 51))
    np.testing.assert_allclose([r["score"] for r in first["rows"]], o["s"][idx])
    labels = explorer._examples.train_labels
    preds = explorer._examples.train_preds
    with torch.no_grad():  # the model equals the last checkpoint: its own predictions
        want_preds = explorer._examples.model(explorer._examples.train.tensors[0]).argmax(1).numpy()
    np.testing.assert_array_equal(preds, want_preds)
    for sort, desc, key in (("label", True, labels), ("pred", False, preds)):
        want = o["by_rank"][np.argsort(-key[o["by_rank"]] if desc else key[o["by_rank"]], kind="stable")]
        reply = ask(explorer, sort=sort, descending=desc, offset=7000, limit=40)
        assert [r["index"] for r in reply["rows"]] == want[7000:7040].tolist(), sort
    reply = ask(explorer, sort="score", descending=False, offset=N - 10)
    assert [r["index"] for r in reply["rows"]] == o["by_rank"][::-1][N - 10 :].tolist()


def test_class_and_flag_filters_match_numpy_masks(explorer):
    o = oracle(explorer)
    ex = explorer._examples
    labels, preds, truth = ex.train_labels, ex.train_preds, explorer._examples.truth
    in_rank = o["by_rank"]
    for label in (0, 7):
        reply = ask(explorer, label=label, offset=100)
        want = in_rank[labels[in_rank] == label]
        assert reply["total"] == len(want) and [r["index"] for r in reply["rows"]] == want[100:150].tolist()
    flags = sorted(np.random.default_rng(1).choice(N, 300, replace=False).tolist())
    explorer.flagged = flags
    reply = ask(explorer, only="flagged", limit=500)
    assert reply["total"] == 300 and [r["index"] for r in reply["rows"]] == [i for i in in_rank if i in set(flags)]
    for only, mask in (("disagree", labels != preds), ("mislabelled", truth)):
        reply = ask(explorer, only=only, label=3, offset=5, limit=20)
        want = in_rank[mask[in_rank] & (labels[in_rank] == 3)]
        assert reply["total"] == len(want) and [r["index"] for r in reply["rows"]] == want[5:25].tolist(), only


def test_histogram_roc_and_found_curve_match_numpy_on_the_engines_self_influence(explorer):
    o = oracle(explorer)
    s, truth = o["s"], explorer._examples.truth
    st = explorer.stats
    h = st["histogram"]
    v = np.log10(s) if h["log"] else s
    assert h["log"] == bool(s.min() > 0 and s.max() / s.min() > 100)
    counts, _ = np.histogram(v, bins=40, range=(v.min(), v.max()))
    assert h["counts"] == counts.tolist() and sum(h["counts"]) == N
    assert st["score_min"] == pytest.approx(s.min()) and st["score_max"] == pytest.approx(s.max())
    assert st["roc"]["auc"] == pytest.approx(roc_auc_score(truth, s), abs=1e-12)
    found = np.cumsum(truth[o["by_rank"]]) / truth.sum()
    m = np.round(np.linspace(0, 1, 101) * N).astype(int)
    np.testing.assert_allclose(st["found"]["found"][1:], found[m[1:] - 1].round(6))


def test_thumbnails_are_made_for_the_rows_sent_only(explorer):
    ex = explorer._examples
    # once ready: the test strip's page, the query and its galleries (two sizes), never the training set
    assert explorer.thumbnails_at_ready <= explorer.test_page_size + 2 * (1 + 2 * explorer.k)
    before = len(explorer.thumbnails_made)
    with ex._thumb_lock:
        cached = {i for split, i, _ in ex._thumbs if split == "train"}
    reply = ask(explorer, sort="index", offset=12_345, limit=30)
    sent = [r["index"] for r in reply["rows"]]
    assert sent == list(range(12_345, 12_375)) and all(r["image"] for r in reply["rows"])
    assert len(explorer.thumbnails_made) - before == len(set(sent) - cached) > 0
    ask(explorer, sort="index", offset=12_345, limit=30)  # the same page again: from the thumbnail cache
    assert len(explorer.thumbnails_made) - before == len(set(sent) - cached)


def _arrays(obj, seen: set, depth: int = 0):
    """Every numpy array and torch tensor reachable from ``obj``'s attributes, dicts, lists and tuples."""
    if id(obj) in seen or depth > 4:
        return
    seen.add(id(obj))
    if isinstance(obj, np.ndarray | torch.Tensor):
        yield obj
    elif isinstance(obj, dict | OrderedDict):
        for v in obj.values():
            yield from _arrays(v, seen, depth + 1)
    elif isinstance(obj, list | tuple):
        for v in obj:
            yield from _arrays(v, seen, depth + 1)
    elif hasattr(obj, "__dict__") and type(obj).__module__.startswith("tracin_widgets.widget"):
        for v in vars(obj).values():
            yield from _arrays(v, seen, depth + 1)


def test_the_explorer_holds_per_row_scalars_not_the_store(explorer):
    ex = explorer._examples
    ask(explorer, sort="pred", descending=True)  # fill the caches: sorted orders, filtered orders, score rows
    ask(explorer, only="disagree")
    explorer._handle_msg(
        {"content": {"data": {"method": "update", "state": {"selected_test": 3}, "buffer_paths": []}}, "buffers": []}
    )
    explorer.wait(120)
    # the engine, the model and the datasets are the user's; everything else the explorer made
    skip = {id(explorer.source), id(ex.model), id(ex.train), id(ex.test)}
    parts = [explorer._examples, explorer._table, explorer._pipeline, explorer._engine, explorer._galleries]
    arrays = list(_arrays(parts, set(skip)))
    nbytes = [a.nbytes if isinstance(a, np.ndarray) else a.numel() * a.element_size() for a in arrays]
    assert len(arrays) >= 8 and max(nbytes) <= 8 * N  # one 8-byte scalar per row at most
    row_bytes = explorer.source.factors_.store.row_bytes
    assert sum(nbytes) < 0.2 * row_bytes * N  # all of them together: a fraction of the store


def test_the_charts_are_computed_once_per_scores_array_without_sorting_again(explorer, monkeypatch):
    table, ex = explorer._table, explorer._examples
    charts = {k: explorer.stats[k] for k in ("histogram", "roc", "found")}

    def no_sort(*a, **kw):
        raise AssertionError("sorted the training set again")

    calls: list[int] = []
    real_roc = _stats.roc
    monkeypatch.setattr(_stats, "roc", lambda *a, **kw: calls.append(1) or real_roc(*a, **kw))
    explorer._update_stats()  # what new training predictions or flags do: the same scores, the same charts
    assert calls == [] and {k: explorer.stats[k] for k in charts} == charts
    monkeypatch.setattr(np, "argsort", no_sort)
    with ex.lock:
        ex.self_infl = ex.self_infl.copy()  # a new scores array (equal values): computed anew from the ranks
    again = table.stats(list(explorer.flagged), {})
    assert calls == [1] and {k: again[k] for k in charts} == charts
