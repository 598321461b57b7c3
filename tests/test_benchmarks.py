"""The benchmark suite's plumbing (``python -m benchmarks``): its CLI, the report that renders benchmarks/RESULTS.md
from benchmarks/results/*.json, and a smoke run of the cpu scenario. No timings are asserted."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import report, suite

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
RESULTS_MD = ROOT / "benchmarks" / "RESULTS.md"


def _bench(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
    return subprocess.run(
        [sys.executable, "-m", "benchmarks", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_help_lists_the_scenarios():
    out = _bench("--help")
    assert out.returncode == 0, out.stderr
    for name in ("cpu", "gpu", "widget", "recall", "report"):
        assert name in out.stdout


def test_report_reproduces_results_md_from_the_seeded_json(tmp_path):
    md = tmp_path / "RESULTS.md"
    shutil.copy(RESULTS_MD, md)
    assert not report.update_results_md(RESULTS, md), "RESULTS.md is stale: run python -m benchmarks report"
    assert md.read_text() == RESULTS_MD.read_text()
    out = _bench("report", "--check")
    assert out.returncode == 0, out.stdout + out.stderr


def test_report_tables_come_from_the_json(tmp_path):
    """Changing a figure in a results file changes RESULTS.md, inside the markers only, and a second run is a no-op."""
    results = tmp_path / "results"
    shutil.copytree(RESULTS, results)
    doc = json.loads((results / "cpu-2core.json").read_text())
    row = next(r for r in doc["rows"] if r["task"] == "workflow" and r["n_train"] == 50000 and r["source"] == "cifar10")
    row["ours"]["median"] = 7.4443
    (results / "cpu-2core.json").write_text(json.dumps(doc))
    md = tmp_path / "RESULTS.md"
    shutil.copy(RESULTS_MD, md)
    assert report.update_results_md(results, md)
    text = md.read_text()
    assert "| 74.43 s | 7.44 s | 10.0× |" in text and "| 74.43 s | 6.64 s |" not in text
    assert text.split("<!-- table:targets -->")[0] == RESULTS_MD.read_text().split("<!-- table:targets -->")[0]
    assert not report.update_results_md(results, md)


def test_report_rejects_an_unknown_marker(tmp_path):
    md = tmp_path / "RESULTS.md"
    md.write_text("<!-- table:nope -->\n<!-- /table:nope -->\n")
    with pytest.raises(ValueError, match=r"unknown table marker <!-- table:nope -->; known: targets, cpu"):
        report.update_results_md(RESULTS, md)


def test_engine_rows_from_raw_results():
    """engine.py's raw JSON -> rows: Captum's timed-out RandProj set-up becomes a lower bound."""
    s = {"median": 2.0, "min": 1.0, "max": 3.0, "n": 2}
    raw = {
        "args": {"threads": 1, "n_train": 100, "captum_timeout": 100.0},
        "machine": {"torch_threads": 4},
        "results": {
            "randproj[pil]": {
                "n_train": 100,
                "captum": [{"timeout": "did not finish within 100.0 s"}],
                "captum_summary": {"init": {"median": None, "min": None, "max": None, "n": 0}},
                "ours_summary": {"init": s, "query_median": s},
                "checks": [],
            }
        },
    }
    rows = suite.engine_rows(raw, "step")
    init = next(r for r in rows if r["task"] == "randproj_init")
    assert init["captum"] == {"more_than": 100.0} and init["ours"] == s and init["threads"] == 1
    assert report.fmt_ratio(*report.ratio(init)) == "> 50×"


def test_machine_tag():
    assert suite.machine_tag({"gpu": "NVIDIA H200", "cores": 16}) == "h200"
    assert suite.machine_tag({"gpu": "NVIDIA H100 80GB HBM3"}) == "h100"
    assert suite.machine_tag({"cores": 2}) == "2core"


def test_partial_run_replaces_only_its_steps():
    old = {
        "source": "measured by python -m benchmarks gpu",
        "steps": [{"name": "a"}, {"name": "b"}],
        "rows": [{"step": "a", "x": 1}, {"step": "b", "x": 2}],
        "exactness": {"fast_scores_max_rel": 1e-6},
    }
    new = {
        "source": "measured by python -m benchmarks gpu",
        "steps": [{"name": "b"}],
        "rows": [{"step": "b", "x": 3}],
        "exactness": {"fast_scores_max_rel": 1e-7},
    }
    merged = suite.merge(copy.deepcopy(old), copy.deepcopy(new))
    assert merged["rows"] == [{"step": "a", "x": 1}, {"step": "b", "x": 3}]
    assert merged["exactness"]["fast_scores_max_rel"] == 1e-6
    transcribed = dict(old, source="transcribed from RESULTS.md at commit 96c1434")
    assert suite.merge(transcribed, copy.deepcopy(new))["rows"] == [{"step": "b", "x": 3}]


@pytest.mark.slow
def test_cpu_quick_writes_valid_results(tmp_path):
    out = _bench(
        "cpu",
        "--quick",
        "--results-dir",
        str(tmp_path / "results"),
        "--raw-dir",
        str(tmp_path / "raw"),
        "--data-dir",
        str(tmp_path / "data"),
        "--extra",
        "--skip-captum cp,randproj",
        timeout=300,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    files = list((tmp_path / "results").glob("cpu-*-quick.json"))
    assert len(files) == 1
    doc = json.loads(files[0].read_text())
    assert doc["scenario"] == "cpu" and doc["quick"] is True
    assert doc["torch"] and doc["date"] and "git_commit" in doc and doc["machine"]["cores"]
    tasks = {r["task"] for r in doc["rows"]}
    assert {"workflow", "self", "query", "cp_proopp", "randproj_init"} <= tasks
    assert all(r["ours"]["median"] > 0 for r in doc["rows"])
    workflow = next(r for r in doc["rows"] if r["task"] == "workflow")
    assert workflow["captum"]["median"] > 0 and workflow["n_train"] == 128
    assert next(r for r in doc["rows"] if r["task"] == "cp_proopp")["captum"] is None  # skipped
    assert doc["exactness"]["same_top10_order"] is True
    assert doc["exactness"]["fast_scores_max_rel"] < 1e-4
    assert report.load_results(tmp_path / "results") == {}  # quick results are never rendered


def _st(median: float, worst: float) -> dict:
    return {"n": 10, "median_ms": median, "p90_ms": worst, "min_ms": 1.0, "max_ms": worst}


def test_widget_views_render_browser_load_and_size_figures(tmp_path):
    """WIDGET_RESULTS.md's tables come from the widget results: median and worst in the browser (details included),
    quiet vs loaded queries with the 3x target, and the size run with the predictions' share."""
    doc = {
        "scenario": "widget",
        "machine_tag": "2core",
        "machine_label": "CPU, 2 cores",
        "machine": {"cores": 2},
        "source": "measured by python -m benchmarks widget",
        "steps": [],
        "runs": [
            {
                "label": "run",
                "reps": 10,
                "n_train": 50000,
                "figures": {
                    "browser": {
                        "gallery_dom": _st(90, 140),
                        "table_dom": _st(60, 250),
                        "details_dom": _st(30, 45),
                        "details_kernel": _st(5, 9),
                    }
                },
            }
        ],
        "load": {
            "n_train": 10000,
            "busy_processes": 2,
            "query_threads": 1,
            "torch_threads": 2,
            "quiet": {"auto": _st(25, 30), "torch_default": _st(20, 24), "loadavg": [0.5]},
            "loaded": {"auto": _st(50, 70), "torch_default": _st(200, 370), "loadavg": [2.5]},
            "loaded_over_quiet_auto": 2.0,
            "loaded_over_quiet_torch_default": 10.0,
        },
        "size": {
            "n_train": 400000,
            "ready_s": 90.0,
            "steps_s": {"Training factors": 80.0, "Predicting training examples": 6.0},
            "interactions_ms": {"sort label": 20.0},
            "max_interaction_ms": 20.0,
        },
    }
    results = tmp_path / "results"
    results.mkdir()
    (results / "widget-2core.json").write_text(json.dumps(doc))
    md = tmp_path / "WIDGET_RESULTS.md"
    md.write_text("".join(f"<!-- table:{n} -->\n<!-- /table:{n} -->\n" for n in report.WIDGET_VIEWS))
    assert report.update_results_md(results, md)
    text = md.read_text()
    assert "| click a table row → its details panel drawn | 30 | 45 | 5 | 200 | yes |" in text
    assert "| click next → a table page drawn (50 rows with thumbnails) | 60 | 250 | – | 200 | median only |" in text
    assert "| 25 / 30 | 50 / 70 | 2.0× | ≤ 3×: met |" in text and "| 20 / 24 | 200 / 370 | 10.0× |" in text
    assert "| training predictions ÷ factor pass | 8% |" in text and "| sort label (ms) | 20.0 |" in text
    assert not report.update_results_md(results, md)


def test_a_partial_widget_run_keeps_the_other_steps_figures():
    old = {
        "scenario": "widget",
        "source": "measured by python -m benchmarks widget",
        "steps": [{"name": "widget"}, {"name": "widget-load"}],
        "runs": [{"label": "run"}],
        "load": {"n_train": 10000},
    }
    new = {"scenario": "widget", "source": "measured", "steps": [{"name": "widget-size"}], "runs": [], "size": {"x": 1}}
    merged = suite.merge(copy.deepcopy(old), copy.deepcopy(new))
    assert [s["name"] for s in merged["steps"]] == ["widget", "widget-load", "widget-size"]
    assert merged["runs"] == [{"label": "run"}] and merged["load"] == {"n_train": 10000} and merged["size"] == {"x": 1}


def _store(first_ms: float) -> dict:
    return {
        "n_train": 1281167,
        "max_memory": "64MB",
        "checkpoints": 5,
        "first_page_target_ms": 2000.0,
        "store_mb": 1127.4,
        "factor_pass_s": 10.8,
        "first_page_after_factors_ms": first_ms,
        "stats_after_factors_ms": first_ms - 20,
        "ready_after_factors_s": 0.9,
        "rss_before_mb": 1000.0,
        "rss_peak_explorer_mb": 1500.0,
        "rss_end_mb": 1400.0,
        "rss_end_trimmed_mb": 1250.0,
        "explorer_arrays_mb": 94.4,
        "largest_explorer_array": "examples.self_infl",
        "largest_explorer_array_bytes_per_row": 8.0,
        "interactions": {"class filter (new)": _st(9.4, 22.3)},
        "rss_peak_by_phase_mb": {"factor pass": 1084.3},
        "loadavg_start": [1.5],
        "loadavg_end": [1.5],
    }


def test_widget_store_view_renders_the_first_page_against_its_target(tmp_path):
    """The widget-store table: the first page after the factors against 2 s, memory against the store's size."""
    results = tmp_path / "results"
    results.mkdir()
    md = tmp_path / "WIDGET_RESULTS.md"
    md.write_text("<!-- table:widget-store -->\n<!-- /table:widget-store -->\n")
    doc = {"scenario": "widget", "machine_tag": "2core", "machine": {"cores": 2}, "steps": [], "runs": []}
    (results / "widget-2core.json").write_text(json.dumps(doc))
    report.update_results_md(results, md)
    assert "Not measured yet: `python -m benchmarks widget --only widget-store`" in md.read_text()
    for first, verdict in ((356.0, "met"), (2400.0, "MISSED")):
        (results / "widget-2core.json").write_text(json.dumps({**doc, "store": _store(first)}))
        report.update_results_md(results, md)
        text = md.read_text()
        assert (
            f"| **factors ready → first table page's reply sent (ms)** | **{first:.0f}** | ≤ 2000: {verdict} |" in text
        )
    assert "| … end, freed heap given back: growth against the store (MB) | 250 of 1,127 (22%) | ≪ 100 % |" in text
    assert "| class filter (new) (median / p90 ms, 10 runs) | 9.4 / 22.3 | |" in text


def test_a_partial_widget_store_run_keeps_the_notes_and_is_kept_by_later_runs():
    old = {"scenario": "widget", "steps": [{"name": "widget"}], "runs": [{"label": "run"}], "notes": ["by hand"]}
    new = {"scenario": "widget", "steps": [{"name": "widget-store"}], "runs": [], "store": {"n_train": 5}}
    merged = suite.merge(copy.deepcopy(old), copy.deepcopy(new))
    assert merged["notes"] == ["by hand"] and merged["store"] == {"n_train": 5}
    later = suite.merge(merged, {"scenario": "widget", "steps": [{"name": "widget"}], "runs": [{"label": "new"}]})
    assert later["store"] == {"n_train": 5} and later["runs"] == [{"label": "new"}]


def test_a_partial_probe_run_replaces_only_its_steps_runs():
    old = {"scenario": "imagenet", "steps": [{"name": "fp32"}, {"name": "bf16"}], "runs": [{"step": "fp32", "x": 1}]}
    new = {"scenario": "imagenet", "steps": [{"name": "bf16"}], "runs": [{"step": "bf16", "x": 2}]}
    merged = suite.merge(copy.deepcopy(old), copy.deepcopy(new))
    assert [s["name"] for s in merged["steps"]] == ["fp32", "bf16"]
    assert merged["runs"] == [{"step": "fp32", "x": 1}, {"step": "bf16", "x": 2}]


def test_probe_results_are_collected_with_their_device(tmp_path):
    """A GPU probe's own JSON (device, torch, figures) becomes a results document of its scenario."""
    raw = tmp_path / "fp32.json"
    raw.write_text(json.dumps({"device": "NVIDIA H100 80GB HBM3", "torch": "2.11", "rows": 8}))
    sc = suite.SCENARIOS["imagenet"]
    doc = suite.collect(sc, [{"name": "fp32"}], [raw])
    assert doc["machine_tag"] == "h100" and doc["runs"] == [
        {"device": "NVIDIA H100 80GB HBM3", "torch": "2.11", "rows": 8, "step": "fp32"}
    ]
