"""``python -m benchmarks report``: render ``benchmarks/results/*.json`` into the tables of ``benchmarks/RESULTS.md``.

Each table sits between ``<!-- table:NAME -->`` and ``<!-- /table:NAME -->``; everything outside the markers is
hand-written and left alone. NAME is ``targets`` (every figure with a target, from the ``cpu`` and ``gpu`` files), or
a scenario (``cpu``, ``gpu``, ``widget``, ``recall``: one table per results file of that scenario, one file per
machine). Quick (smoke) results are skipped. The output depends only on the JSON files, so running it twice changes
nothing. No torch import: this runs anywhere.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

# row task -> label; the numbers name the targets: (1) proponents/opponents, (2) self-influence, (3) a warm query,
# (4) RandProj, (5) TracInCP
TASKS: dict[str, str] = {
    "workflow": "(1+2) whole workflow: pro + opp + self, cold",
    "workflow_proopp": "(1) pro + opp, cold (inside (1+2))",
    "self": "(2) self_influence, cold, fresh instances",
    "workflow_warm": "(1+2) warm repeat of pro + opp + self (× against Captum's cold run)",
    "query": "(3) warm query: a new batch of 4, top-10 pro + opp",
    "randproj_init": "(4) RandProj `__init__`",
    "randproj_query": "(4) RandProj query, top-10 pro + opp",
    "cp_proopp": "(5) TracInCP, all layers: top-10 pro + opp",
    "cp_self": "(5) TracInCP, all layers: self_influence, fresh instance",
    "cp_total": "(5) TracInCP, all layers: pro + opp + self, one instance",
}
SOURCES = ("cifar10", "pil", "tensor")
# (row task, scenario) -> ("ratio", minimum Captum/ours) or ("max_s", largest median of ours); scenario None: both
TARGETS: dict[tuple[str, str | None], tuple[str, float]] = {
    ("workflow", "cpu"): ("ratio", 4.0),
    ("workflow", "gpu"): ("ratio", 30.0),
    ("query", "cpu"): ("max_s", 0.1),
    ("randproj_init", None): ("ratio", 10.0),
    ("cp_proopp", None): ("ratio", 5.0),
    ("cp_self", None): ("ratio", 5.0),
    ("cp_total", None): ("ratio", 5.0),
}
WIDGET_TARGETS_MS = {"gallery": 300.0, "table_page": 200.0, "details": 200.0, "first_progress": 1000.0}
MARKER = re.compile(r"(<!-- table:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /table:(?P=name) -->)", re.DOTALL)


# ----------------------------------------------------------------------------------------------------------- loading
def load_results(results_dir: Path) -> dict[str, list[tuple[str, dict]]]:
    """scenario -> [(file name, document)], sorted by file name; quick (smoke) results left out."""
    out: dict[str, list[tuple[str, dict]]] = {}
    for path in sorted(Path(results_dir).glob("*.json")):
        doc = json.loads(path.read_text())
        if doc.get("quick"):
            continue
        if "scenario" not in doc:
            raise ValueError(f"{path}: no 'scenario' key; results files are written by python -m benchmarks")
        out.setdefault(doc["scenario"], []).append((path.name, doc))
    return out


# ----------------------------------------------------------------------------------------------------------- formats
def fmt_s(x: float) -> str:
    """Seconds as the tables show them: 98.6 ms, 2.64 s, 100 s."""
    if x < 1:
        return f"{x * 1000:.1f} ms"
    return f"{x:.2f} s" if x < 100 else f"{x:.0f} s"


def fmt_summary(s: dict | None) -> str:
    """``median (min–max)``, the range in the median's unit; ``> X`` for a lower bound; ``–`` when not measured."""
    if not s:
        return "–"
    if "more_than" in s:
        return f"> {fmt_s(s['more_than'])}"
    text = fmt_s(s["median"])
    if s.get("n", 1) > 1 and "min" in s and "max" in s:
        unit = text.split()[-1]
        scale = 1000.0 if unit == "ms" else 1.0
        lo, hi = (text.split()[0] if v == s["median"] else _num(v * scale, unit) for v in (s["min"], s["max"]))
        text += f" ({lo}–{hi})"
    return text


def _num(v: float, unit: str) -> str:
    if unit == "ms":
        return f"{v:.1f}"
    return f"{v:.2f}" if v < 100 else f"{v:.0f}"


def ratio(row: dict) -> tuple[float | None, bool]:
    """Captum's median over ours, and whether it is a lower bound (Captum stopped or known only as ``> X``).

    A row may carry its own ``ratio``: transcribed rows keep the ratio of the unrounded medians they were recorded
    with, where the rounded medians shown would give a different last digit."""
    c, o = row.get("captum"), row.get("ours")
    if row.get("ratio") is not None:
        return row["ratio"], False
    if not c or not o or not o.get("median"):
        return None, False
    if "more_than" in c:
        return (c["more_than"] / o["median"] if c["more_than"] else None), True
    return c["median"] / o["median"], False


def fmt_ratio(r: float | None, lower_bound: bool = False) -> str:
    if r is None:
        return "–"
    if lower_bound:
        return f"> {math.floor(r):,}×"
    return f"{r:,.0f}×" if r >= 100 else f"{r:.1f}×"


def fmt_n(n: int) -> str:
    return f"{n // 1000}k" if n >= 10_000 and n % 1000 == 0 else f"{n:,}"


def fmt_rel(v: float) -> str:
    return "bit-identical (0.0)" if v == 0 else f"≤ {v:.1e}"


# ----------------------------------------------------------------------------------------------------------- engine
def _sorted_rows(rows: list[dict]) -> list[dict]:
    order = list(TASKS)
    return sorted(
        rows,
        key=lambda r: (
            order.index(r["task"]) if r["task"] in order else len(order),
            r["n_train"],
            SOURCES.index(r["source"]) if r["source"] in SOURCES else 9,
        ),
    )


def _cells(row: dict) -> tuple[str, str, str]:
    """Captum, ours and × cells of one row."""
    cap, ours = fmt_summary(row.get("captum")), fmt_summary(row.get("ours"))
    r, lower = ratio(row)
    if row["task"] == "workflow_warm" and row.get("captum"):
        cap = f"({cap.split(' (')[0]} cold)"
    if row.get("recall"):
        rc = row["recall"]
        if row.get("captum") and rc.get("captum"):
            cap += ", recall {:.2f} / {:.2f}".format(*rc["captum"])
        if rc.get("ours"):
            ours += ", recall {:.2f} / {:.2f}".format(*rc["ours"])
    return cap, ours, fmt_ratio(r, lower)


def machine_header(name: str, doc: dict) -> list[str]:
    m = doc.get("machine", {})
    desc = m.get("description") or ", ".join(
        str(x) for x in (m.get("gpu"), m.get("cpu"), m.get("cores") and f"{m['cores']} cores") if x
    )
    soft = ", ".join(
        f"{label} {m[k]}"
        for k, label in (("python", "Python"), ("torch", "torch"), ("captum", "captum"), ("annoy", "annoy"))
        if m.get(k)
    )
    title = doc.get("machine_label", doc.get("machine_tag"))
    lines = [
        (
            f"**{title}** (`results/{name}`): {desc}; {soft}. "
            f"{doc.get('date', '–')}, commit {doc.get('git_commit') or '–'}; {doc.get('source', '')}."
        )
    ]
    lines += [f"* {n}" for n in doc.get("notes", [])]
    return lines


def engine_table(name: str, doc: dict) -> str:
    threads = doc["scenario"] == "cpu"
    head = ["task", "source", "N"] + (["threads"] if threads else []) + ["reps", "Captum", "ours", "×", "note"]
    lines = machine_header(name, doc) + ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in _sorted_rows(doc["rows"]):
        cap, ours, x = _cells(row)
        cells = [TASKS.get(row["task"], row["task"]), f"`{row['source']}`", fmt_n(row["n_train"])]
        cells += [str(row.get("threads") or "")] if threads else []
        cells += [str(row.get("reps") or ""), cap, ours, x, row.get("note", "")]
        lines.append("| " + " | ".join(cells) + " |")
    ex = doc.get("exactness")
    if ex:
        parts = []
        for lib, label in (("fast", "TracInCPFast"), ("cp", "TracInCP")):
            got = [
                f"{what} {fmt_rel(ex[key])}"
                for what, key in (("scores", f"{lib}_scores_max_rel"), ("self-influence", f"{lib}_self_max_rel"))
                if key in ex
            ]
            if got:
                parts.append(f"{label} {', '.join(got)}")
        order = {True: "top-10 indices in the same order in every check", False: "**top-10 order differed**"}
        lines += [
            "",
            (
                f"Exactness against Captum: {order[ex.get('same_top10_order', True)]}; largest relative "
                f"difference: {'; '.join(parts)}."
            ),
        ]
    return "\n".join(lines)


def target_of(task: str, scenario: str) -> tuple[str, float] | None:
    return TARGETS.get((task, scenario)) or TARGETS.get((task, None))


def targets_table(results: dict[str, list[tuple[str, dict]]]) -> str:
    head = "| target | machine | setting | Captum | ours | × | target | met |\n|---|---|---|---|---|---|---|---|"
    lines, met, total = [head], 0, 0
    for task, task_label in TASKS.items():
        first = True
        for scenario in ("cpu", "gpu"):
            for _, doc in results.get(scenario, []):
                tgt = target_of(task, scenario)
                if tgt is None:
                    continue
                for row in _sorted_rows([r for r in doc["rows"] if r["task"] == task]):
                    r, _ = ratio(row)
                    kind, value = tgt
                    if kind == "ratio":
                        if r is None:
                            continue  # ours only: nothing to compare
                        ok, text = r >= value, f"≥ {value:g}×"
                    else:
                        ok, text = row["ours"]["median"] <= value, f"≤ {value * 1000:g} ms"
                    met, total = met + ok, total + 1
                    cap, ours, x = _cells(row)
                    setting = f"`{row['source']}`, {fmt_n(row['n_train'])}"
                    if scenario == "cpu" and row.get("threads"):
                        setting += f", {row['threads']} thread{'s' if row['threads'] != 1 else ''}"
                    label = task_label if first else ""
                    first = False
                    lines.append(
                        f"| {label} | {doc.get('machine_label', doc.get('machine_tag'))} | {setting} | {cap} | "
                        f"{ours} | {x} | {text} | {'yes' if ok else '**NO**'} |"
                    )
    lines.append(f"\n**{met} of {total} met.**")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------- widget
def _get(d: dict, path: tuple[str, ...]) -> Any:
    for k in path:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def _ms_stats(v: Any) -> str:
    return "–" if not v else f"{v['median_ms']:.0f} / {v['p90_ms']:.0f}"


def _ms(v: Any) -> str:
    return "–" if v is None else f"{v:.0f} ms"


def _s(v: Any) -> str:
    return "–" if v is None else f"{v:.1f} s"


def _updates_gap(p: Any) -> str:
    return "–" if not p else f"{p['factor_updates']} / {p['factor_max_gap_ms']:.0f} ms"


WIDGET_ROWS: list[tuple[str, tuple[str, ...], Callable[[Any], str], str]] = [
    (
        "(i) gallery, Python: `update` message → gallery state sent (median / p90 ms)",
        ("python", "gallery"),
        _ms_stats,
        "300",
    ),
    ("… of which the engine's `influence()`", ("python", "gallery_engine"), _ms_stats, ""),
    ("(i) gallery, browser: click → all 2k tiles in the DOM", ("browser", "gallery_dom"), _ms_stats, "300"),
    ("(i) gallery, browser: click → the next animation frame", ("browser", "gallery_frame"), _ms_stats, "300"),
    ("(i) gallery, browser runs: kernel share", ("browser", "gallery_kernel"), _ms_stats, ""),
    ("(ii) table page, Python: `rows` message → 50 rows + thumbnails sent", ("python", "table_page"), _ms_stats, "200"),
    ("(ii) first table page, Python (sorts the scores once)", ("python", "table_first_page_ms"), _ms, ""),
    (
        "(ii) table page, browser: click next → 50 rows with thumbnails in the DOM",
        ("browser", "table_dom"),
        _ms_stats,
        "200",
    ),
    ("(ii) table page, browser: click next → the next animation frame", ("browser", "table_frame"), _ms_stats, "200"),
    ("(ii) table page, browser runs: kernel share", ("browser", "table_kernel"), _ms_stats, ""),
    (
        "(iv) details, browser: click a table row → its details in the panel",
        ("browser", "details_dom"),
        _ms_stats,
        "200",
    ),
    ("(iv) details, browser runs: kernel share", ("browser", "details_kernel"), _ms_stats, ""),
    ("(iii) Python: constructor returns", ("python", "progress", "constructor_ms"), _ms, ""),
    ("(iii) Python: first progress with done > 0", ("python", "progress", "first_done_any_ms"), _ms, "1000"),
    ("(iii) Python: first done > 0 of the factor pass", ("python", "progress", "first_done_factor_ms"), _ms, ""),
    ("(iii) Python: factor-pass updates / largest gap", ("python", "progress"), _updates_gap, ""),
    ("(iii) browser: run-cell → progress bar visible", ("browser", "progress", "visible"), _ms, "1000"),
    ('(iii) browser: run-cell → first "n / total" with n > 0', ("browser", "progress", "first_any"), _ms, "1000"),
    ("(iii) browser: run-cell → first factor-pass n > 0", ("browser", "progress", "first_factor"), _ms, ""),
    ("cold explorer ready (no factor cache)", ("python", "progress", "ready_s"), _s, ""),
    ("explorer ready from the factor cache (`cache_dir=`)", ("python", "warm_ready_s"), _s, ""),
]


def widget_targets(runs: list[dict]) -> str:
    """Each target is met when the p90 of every run is under it (the browser's figure where there is one)."""

    def p90(fig: dict, browser: str, python: str) -> float | None:
        v = _get(fig, ("browser", browser)) or _get(fig, ("python", python))
        return v["p90_ms"] if v else None

    def first(fig: dict) -> float | None:
        v = _get(fig, ("browser", "progress", "first_any"))
        return v if v is not None else _get(fig, ("python", "progress", "first_done_any_ms"))

    checks = [
        ("(i) gallery ≤ 300 ms", [p90(r["figures"], "gallery_dom", "gallery") for r in runs], 300.0),
        ("(ii) table page ≤ 200 ms", [p90(r["figures"], "table_dom", "table_page") for r in runs], 200.0),
        ("(iv) details ≤ 200 ms", [p90(r["figures"], "details_dom", "details") for r in runs], 200.0),
        ("(iii) progress within the first second", [first(r["figures"]) for r in runs], 1000.0),
    ]
    out = []
    for label, values, limit in checks:
        got = [v for v in values if v is not None]
        out.append(f"{label}: " + ("not measured" if not got else "met" if max(got) <= limit else "**MISSED**"))
    return "Targets (p90 of every run): " + "; ".join(out) + "."


def widget_table(name: str, doc: dict) -> str:
    runs = doc["runs"]
    lines = machine_header(name, doc) + [
        "",
        "| measure | target ms | " + " | ".join(r["label"] for r in runs) + " |",
        "|---|---:|" + "---:|" * len(runs),
    ]
    lines.append("| training examples | | " + " | ".join(f"{r['n_train']:,}" for r in runs) + " |")
    lines.append("| reps (new selections / new pages) | | " + " | ".join(str(r["reps"]) for r in runs) + " |")
    for label, path, fmt, target in WIDGET_ROWS:
        values = [_get(r["figures"], path) for r in runs]
        if all(v is None for v in values):
            continue
        lines.append(f"| {label} | {target} | " + " | ".join(fmt(v) for v in values) + " |")
    loads = [r.get("loadavg") or [None, None] for r in runs]
    if any(any(x is not None for x in ld) for ld in loads):
        cells = [
            " → ".join("–" if x is None else f"{x[0] if isinstance(x, list) else x:g}" for x in ld) for ld in loads
        ]
        lines.append("| 1-minute load average, start → end | | " + " | ".join(cells) + " |")
    lines += ["", widget_targets(runs)]
    return "\n".join(lines)


BROWSER_ROWS = (
    ("click a test example → its galleries drawn (all 2k tiles)", "gallery", 300.0),
    ("click next → a table page drawn (50 rows with thumbnails)", "table", 200.0),
    ("click a table row → its details panel drawn", "details", 200.0),
)


def widget_browser_table(name: str, doc: dict) -> str:
    """The browser's median and worst, from the click to the complete answer in the DOM."""
    lines = machine_header(name, doc)
    for run in doc.get("runs", []):
        br = run["figures"].get("browser")
        if not br:
            continue
        lines += [
            "",
            f"{run['label']}: {run['n_train']:,} training examples, {run['reps']} reps per measure.",
            "",
            "| measure | median ms | worst ms | kernel share, median ms | target ms | met |",
            "|---|---:|---:|---:|---:|---|",
        ]
        for label, key, target in BROWSER_ROWS:
            dom, ker = br.get(f"{key}_dom"), br.get(f"{key}_kernel")
            if not dom:
                lines.append(f"| {label} | – | – | – | {target:.0f} | not measured |")
                continue
            worst = dom.get("max_ms", dom["p90_ms"])
            ok = "yes" if worst <= target else ("median only" if dom["median_ms"] <= target else "**NO**")
            kern = f"{ker['median_ms']:.0f}" if ker else "–"
            lines.append(f"| {label} | {dom['median_ms']:.0f} | {worst:.0f} | {kern} | {target:.0f} | {ok} |")
    if len(lines) == len(machine_header(name, doc)):
        lines += ["", "_No browser run recorded yet: run `python -m benchmarks widget --only widget`._"]
    return "\n".join(lines)


def widget_load_table(name: str, doc: dict) -> str:
    """Warm queries on a quiet machine and with busy-loop processes, by thread policy."""
    ld = doc.get("load")
    lines = machine_header(name, doc)
    if not ld:
        return "\n".join(lines + ["", "_Not measured yet: `python -m benchmarks widget --only widget-load`._"])
    policies = (
        ("auto", "`auto` (the explorer's default): as many threads as idle cores, at least 1"),
        ("one_thread", "always 1 thread"),
        ("torch_default", f"torch's default ({ld.get('torch_threads')} threads)"),
    )
    lines += [
        "",
        f"{ld['n_train']:,} training examples; a warm query = a new test example's top-10 proponents and opponents "
        f"(`update` message → gallery state sent); loaded = {ld['busy_processes']} busy-loop processes. "
        "Median / worst ms.",
        "",
        "| threads | quiet | loaded | loaded ÷ quiet (medians) | target |",
        "|---|---:|---:|---:|---|",
    ]
    for key, label in policies:
        q, lo = ld["quiet"].get(key), ld["loaded"].get(key)
        if not q and not lo:
            continue
        r = ld.get(f"loaded_over_quiet_{key}")
        target = "≤ 3×: " + ("met" if r is not None and r <= 3 else "**missed**") if key == "auto" else ""
        cells = [f"{v['median_ms']:.0f} / {v['max_ms']:.0f}" if v else "–" for v in (q, lo)]
        lines.append(f"| {label} | {cells[0]} | {cells[1]} | {'–' if r is None else f'{r:.1f}×'} | {target} |")
    la = [ld[c].get("loadavg") for c in ("quiet", "loaded")]
    lines += ["", f"1-minute load average at the end of each condition: quiet {la[0]}, loaded {la[1]}."]
    return "\n".join(lines)


def _percent(v: float) -> str:
    """Whole percent, or two significant digits below 1 % (never "0%" for a small but measured share)."""
    return f"{v:.0f}%" if v >= 1 or v == 0 else f"{v:.2g}%"


def widget_size_table(name: str, doc: dict) -> str:
    """A cold explorer at size: time to ready, each background step, memory, every interaction once."""
    cols = [("run", doc["size"])] if doc.get("size") else []
    lines = machine_header(name, doc)
    if not cols:
        return "\n".join(lines + ["", "_Not measured yet: `python -m benchmarks widget --only widget-size`._"])
    lines += [
        "",
        "| measure | " + " | ".join(f"{c['n_train']:,} training examples" for _, c in cols) + " |",
        "|---|" + "---:|" * len(cols),
    ]

    def row(label: str, get: Callable[[dict], Any]) -> None:
        vals = [get(c) for _, c in cols]
        if all(v is None for v in vals):
            return
        lines.append(f"| {label} | " + " | ".join("–" if v is None else str(v) for v in vals) + " |")

    row("cold explorer ready (s)", lambda c: c.get("ready_s"))
    steps = []
    for _, c in cols:
        steps += [k for k in c.get("steps_s", {}) if k not in steps]
    for st in steps:
        row(f"… {st} (s)", lambda c, st=st: c.get("steps_s", {}).get(st))
    tf = "Training factors"
    pr = "Predicting training examples"
    row(
        "training predictions ÷ factor pass",
        lambda c: (
            _percent(100 * c["steps_s"][pr] / c["steps_s"][tf])
            if c.get("steps_s", {}).get(tf) and c["steps_s"].get(pr) is not None
            else None
        ),
    )
    row("kernel RSS before → ready (MB)", lambda c: f"{c.get('rss_before_mb')} → {c.get('rss_ready_mb')}")
    row("… ready, freed heap given back (MB)", lambda c: c.get("rss_ready_trimmed_mb"))
    row("… of which the engine's factors (MB)", lambda c: c.get("factors_mb"))
    inter: list[str] = []
    for _, c in cols:
        inter += [k for k in c.get("interactions_ms", {}) if k not in inter]
    for k in inter:
        row(f"{k} (ms)", lambda c, k=k: c.get("interactions_ms", {}).get(k))
    row("slowest interaction (ms; target 300)", lambda c: c.get("max_interaction_ms"))
    row("1-minute load average, start → end", lambda c: f"{c.get('loadavg_start')} → {c.get('loadavg_end')}")
    return "\n".join(lines)


def _held(c: dict) -> str:
    """RSS growth still held at the end (freed heap given back), against the store's size."""
    if c.get("rss_end_trimmed_mb") is None:
        return "–"
    grow = c["rss_end_trimmed_mb"] - c["rss_before_mb"]
    return f"{grow:.0f} of {c['store_mb']:,.0f} ({_percent(100 * grow / c['store_mb'])})"


def widget_store_table(name: str, doc: dict) -> str:
    """The explorer over a 1.28M-row factor store that stays on disk (queries stream it)."""
    c = doc.get("store")
    lines = machine_header(name, doc)
    if not c:
        return "\n".join(lines + ["", "_Not measured yet: `python -m benchmarks widget --only widget-store`._"])
    first, target = c["first_page_after_factors_ms"], c.get("first_page_target_ms", 2000.0)
    grow = c["rss_peak_explorer_mb"] - c["rss_before_mb"] if c.get("rss_peak_explorer_mb") else None
    lines += [
        "",
        f"{c['n_train']:,} training examples (8x8 images), {c.get('checkpoints', 5)} checkpoints, "
        f"`max_memory={c['max_memory']!r}` against a {c['store_mb']:,.0f} MB store: the factors stay on disk.",
        "",
        "| measure | figure | target |",
        "|---|---:|---|",
        f"| factor pass (the engine's `fit`, s) | {c['factor_pass_s']} | |",
        f"| **factors ready → first table page's reply sent (ms)** | **{first:.0f}** | ≤ {target:.0f}: "
        f"{'met' if first <= target else 'MISSED'} |",
        f"| … factors ready → self-influence, ranks and charts sent (`stats`, ms) | {c['stats_after_factors_ms']:.0f} "
        "| |",
        f"| factors ready → explorer ready (training predictions too, s) | {c['ready_after_factors_s']} | |",
        f"| kernel RSS before the explorer → peak → end (MB) | {c['rss_before_mb']:.0f} → "
        f"{c.get('rss_peak_explorer_mb') or 0:.0f} → {c['rss_end_mb']:.0f} | no copy of the store |",
        f"| … end, freed heap given back: growth against the store (MB) | {_held(c)} | ≪ 100 % |",
        f"| … peak growth against the store (MB) | {'–' if grow is None else f'{grow:.0f}'} of "
        f"{c['store_mb']:,.0f} ({'–' if grow is None else _percent(100 * grow / c['store_mb'])}) | transient: freed "
        "arrays kept by the allocator (see above) |",
        f"| … the explorer's numpy arrays (MB; largest, bytes per row) | {c['explorer_arrays_mb']} "
        f"(`{c['largest_explorer_array']}`, {c['largest_explorer_array_bytes_per_row']}) | per-row scalars |",
    ]
    for k, v in c.get("interactions", {}).items():
        lines.append(f"| {k} (median / p90 ms, {v['n']} runs) | {v['median_ms']} / {v['p90_ms']} | |")
    peaks = c.get("rss_peak_by_phase_mb") or {}
    if peaks:
        lines += ["", "Peak RSS by phase (MB): " + ", ".join(f"{k} {v}" for k, v in peaks.items()) + "."]
    lines.append(f"1-minute load average, start → end: {c.get('loadavg_start')} → {c.get('loadavg_end')}.")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------- recall
def recall_table(name: str, doc: dict) -> str:
    res = doc["results"]
    ns = sorted(res, key=int)
    head = ["setting"] + [c for n in ns for c in (f"{fmt_n(int(n))} recall", f"{fmt_n(int(n))} query")]
    lines = machine_header(name, doc) + ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def cells(m: dict | None, query: bool = True) -> list[str]:
        if not m:
            return ["–", "–" if query else ""]
        q = f"{m['query_median_s'] * 1000:.0f} ms" if query and "query_median_s" in m else ""
        return [f"{m['pro_mean']:.2f} / {m['opp_mean']:.2f}", q]

    if any("captum" in res[n] for n in ns):
        lines.append("| Captum 0.9 | " + " | ".join(c for n in ns for c in cells(res[n].get("captum"))) + " |")
    keys = sorted(
        {k for n in ns for k in res[n].get("ours", {})},
        key=lambda k: (k.startswith("brute"), -1 if k == "None" else int(k.removeprefix("brute"))),
    )
    for k in keys:
        if k.startswith("brute"):
            label = f"upper bound: the same projection, brute-force candidates, `rerank={k[5:]}`"
        elif k == "None":
            label = "ours, `rerank=None` (the index's approximate top-k, as Captum)"
        else:
            label = f"ours, `rerank={k}`" + (" (default)" if k == "50" else "")
        lines.append(
            f"| {label} | "
            + " | ".join(c for n in ns for c in cells(res[n].get("ours", {}).get(k), not k.startswith("brute")))
            + " |"
        )
    lines += ["", "Recall@10 is the mean over the test batches of 4, proponents / opponents."]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------- probes
def imagenet_table(name: str, doc: dict) -> str:
    """TracInCPFast at ImageNet's shape: one row per factor dtype and placement of every run."""
    lines = machine_header(name, doc) + [
        "",
        "| factors | where | factor pass | plain forward | peak GPU memory | top-10 pro / opp (median, max) "
        "| self-influence |",
        "|---|---|---|---|---|---|---|",
    ]
    for run in doc["runs"]:
        fwd = run["plain_forward"]["rows_x_ckpts_per_s"] / 1e6
        for key, label in (("fp32", "float32"), ("bf16", "bfloat16")):
            r = run.get(key)
            if not r:
                continue
            q = f"{fmt_s(r['query_ms_pro'] / 1000)} / {fmt_s(r['query_ms_opp'] / 1000)} "
            q += f"({fmt_s(max(r['query_ms_pro_max'], r['query_ms_opp_max']) / 1000)})"
            lines.append(
                f"| {label}, {r['factor_gb']:.2f} GB | {r['placement']} | {fmt_s(r['fit_s'])} "
                f"({r['fit_rows_x_ckpts_per_s'] / 1e6:.2f} M rows·checkpoints/s) | {fwd:.2f} M rows·checkpoints/s | "
                f"{r['peak_gpu_gb']:.1f} GB | {q} | {fmt_s(r['self_influence_s'])} |"
            )
        st = run.get("bf16_store")
        if st:
            same = "same top-10" if st.get("same_top10") else "**top-10 differs**"
            lines.append(
                f"| bfloat16 into a store ({st['store_gb']:.1f} GB on disk) | {st['placement']} | "
                f"{fmt_s(st['fit_s'])} ({st['write_gb_per_s']:.2f} GB/s to disk) | | | {same} | |"
            )
    lines += [
        "",
        f"{doc['runs'][0]['rows']:,} rows, layer {doc['runs'][0]['layer']}, "
        f"{doc['runs'][0]['checkpoints']} checkpoints; a query is `influence(test, k=10)` of one test row.",
    ]
    return "\n".join(lines)


def resnet50_table(name: str, doc: dict) -> str:
    """ResNet-50: the factor pass's throughput against the plain no-grad forward of the same checkpoints."""
    lines = machine_header(name, doc) + [
        "",
        "| images | precision | plain forward (images·checkpoints/s) | `TracInCPFast.fit()` | ratio | peak GPU |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for run in doc["runs"]:
        for r in sorted(run["runs"], key=lambda r: (-r["images"], r["precision"])):
            lines.append(
                f"| {r['images']:,} | {r['precision']} | {r['plain_images_x_ckpts_per_s']:,.0f} | "
                f"{r['engine_images_x_ckpts_per_s']:,.0f} | {r['ratio']:.2f}× | {r['peak_gib']:.1f} GiB |"
            )
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------- RESULTS.md
RENDER: dict[str, Callable[[str, dict], str]] = {
    "cpu": engine_table,
    "gpu": engine_table,
    "widget": widget_table,
    "recall": recall_table,
    "imagenet": imagenet_table,
    "resnet50": resnet50_table,
}


WIDGET_VIEWS: dict[str, Callable[[str, dict], str]] = {
    "widget-browser": widget_browser_table,
    "widget-load": widget_load_table,
    "widget-size": widget_size_table,
    "widget-store": widget_store_table,
}


def render(name: str, results: dict[str, list[tuple[str, dict]]]) -> str:
    if name == "targets":
        return targets_table(results)
    if name in WIDGET_VIEWS:
        docs = results.get("widget", [])
        if not docs:
            return "_No `widget` results in benchmarks/results/ yet: run `python -m benchmarks widget`._"
        return "\n\n".join(WIDGET_VIEWS[name](file, doc) for file, doc in docs)
    if name not in RENDER:
        raise ValueError(
            f"unknown table marker <!-- table:{name} -->; known: targets, {', '.join([*RENDER, *WIDGET_VIEWS])}"
        )
    docs = results.get(name, [])
    if not docs:
        return f"_No `{name}` results in benchmarks/results/ yet: run `python -m benchmarks {name}`._"
    return "\n\n".join(RENDER[name](file, doc) for file, doc in docs)


def render_markdown(text: str, results: dict[str, list[tuple[str, dict]]]) -> str:
    return MARKER.sub(lambda m: m.group(1) + render(m.group("name"), results) + "\n" + m.group(4), text)


def update_results_md(results_dir: Path, results_md: Path, check: bool = False) -> bool:
    """Regenerate the marked tables of ``results_md``; return whether its text changed (``check``: do not write)."""
    text = Path(results_md).read_text()
    new = render_markdown(text, load_results(results_dir))
    if new != text and not check:
        Path(results_md).write_text(new)
    return new != text
