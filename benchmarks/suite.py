"""The named scenarios of ``python -m benchmarks``, and how their figures become ``benchmarks/results/*.json``.

A scenario is a fixed list of steps; each step runs ``engine`` (or ``widget``, ``recall``, a GPU probe) in its
own process with fixed options, and writes its raw JSON under
``benchmarks/out/`` (git-ignored). The suite then collects the figures of every step into one results file,
``<results-dir>/<scenario>-<machine-tag>.json`` (machine, torch version, date, git commit, the figures), which
``python -m benchmarks report`` renders into ``benchmarks/RESULTS.md``.

``--quick`` runs one tiny step instead (128 generated images, one rep) to check that the scenario works; its
file is ``<scenario>-<machine-tag>-quick.json`` so that it never replaces recorded figures, and ``report`` skips it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS_DIR = BENCH / "results"
RESULTS_MD = BENCH / "RESULTS.md"
WIDGET_RESULTS_MD = BENCH / "WIDGET_RESULTS.md"


@dataclass(frozen=True)
class Step:
    """One process of a scenario: ``python -m <module> <argv> --out <raw json>``, stopped after ``timeout_s``."""

    name: str
    argv: tuple[str, ...]
    what: str
    timeout_s: float | None = None
    module: str = "benchmarks.engine"


@dataclass(frozen=True)
class Scenario:
    name: str
    help: str
    steps: tuple[Step, ...]
    quick: Step
    kind: str = "engine"  # how the raw JSON is read: engine, widget, recall or probe
    common: tuple[str, ...] = field(default_factory=tuple)  # options of every step (full and quick)


def _a(text: str) -> tuple[str, ...]:
    return tuple(text.split())


# The workload and options of every step are engine.py's (see its docstring); ``--tasks`` names what is measured.
_ENGINE_QUICK = (
    "--data-size 128 --n-train 128 --cp-n-train 32 --sources cifar10 --tasks workflow,self,query,cp,randproj "
)
_ENGINE_QUICK += "--reps 1 --query-reps 3 --warm-reps 1 --randproj-query-reps 1 --batch-size 128"

SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            "cpu",
            "Captum vs ours side by side on the CPU (2-core figures: about 45 minutes, plus 13 for the data once)",
            (
                Step(
                    "10k-cifar10",
                    _a(
                        "--threads 1 --n-train 10000 --sources cifar10 --tasks workflow,self,cp,randproj "
                        "--cp-n-train 1000 --reps 3 --randproj-reps 2"
                    ),
                    "10k, 1 thread, torchvision's CIFAR10 class: workflow, self, TracInCP on 1,000, RandProj",
                ),
                Step(
                    "10k-pil",
                    _a("--threads 1 --n-train 10000 --sources pil --tasks workflow,randproj --reps 2"),
                    "10k, 1 thread, a generic per-item Dataset: workflow and RandProj",
                ),
                Step(
                    "50k",
                    _a("--threads 2 --n-train 50000 --sources cifar10,pil --tasks workflow,query --reps 1"),
                    "the tutorial's 50k, 2 threads: workflow and warm query",
                ),
                Step(
                    "50k-randproj",
                    _a("--threads 2 --n-train 50000 --sources cifar10,pil --tasks randproj --reps 1"),
                    "the tutorial's 50k, 2 threads: RandProj set-up and query",
                ),
            ),
            Step("quick", _a("--threads 1 " + _ENGINE_QUICK), "smoke run: 128 images, every task once"),
        ),
        Scenario(
            "gpu",
            "Captum vs ours on one CUDA GPU, N = 50,000 (an H200: about 14 minutes; split it with --only)",
            (
                Step(
                    "cifar10",
                    _a("--sources cifar10 --tasks workflow,self,cp --reps 3"),
                    "torchvision's CIFAR10 class: workflow, self, TracInCP on 5,000",
                    200,
                ),
                Step(
                    "cifar10-randproj10k",
                    _a("--sources cifar10 --n-train 10000 --tasks randproj --reps 1 --captum-timeout 100"),
                    "RandProj set-up and query at 10k, Captum side by side (stopped after 100 s)",
                    130,
                ),
                Step(
                    "cifar10-randproj",
                    _a("--sources cifar10 --tasks randproj --skip-captum randproj --reps 2"),
                    "RandProj at 50k, ours only (Captum takes > 400 s)",
                    60,
                ),
                Step(
                    "tensor",
                    _a("--sources tensor --tasks workflow,self,query --reps 5"),
                    "a TensorDataset: workflow, self, warm query",
                    100,
                ),
                Step("pil", _a("--sources pil --tasks workflow --reps 3"), "a generic per-item Dataset: workflow", 150),
                Step(
                    "cp",
                    _a("--sources tensor,pil --tasks cp --reps 3"),
                    "TracInCP on 5,000 from a TensorDataset and a generic per-item Dataset",
                    200,
                ),
                Step(
                    "pil-randproj",
                    _a("--sources pil --tasks randproj --skip-captum randproj --reps 2"),
                    "RandProj at 50k from a generic per-item Dataset, ours only",
                    60,
                ),
            ),
            Step("quick", _a(_ENGINE_QUICK), "smoke run: 128 images, every task once", 300),
            common=_a("--device cuda --cp-n-train 5000"),
        ),
        Scenario(
            "widget",
            "InfluenceExplorer latency: Python-side and in a real browser (JupyterLab + chromium), under load, at "
            "400k and over a 1.28M-row streamed store; about 35 minutes",
            (
                Step(
                    "widget",
                    _a("--reps 10"),
                    "50k training examples, Python-side and browser parts (galleries, table pages, details panel)",
                    module="benchmarks.widget",
                ),
                Step(
                    "widget-load",
                    _a("--n-train 10000 --parts load --reps 15 --busy 2"),
                    "10k: warm queries on a quiet machine and with two busy-loop processes (about 3 minutes)",
                    module="benchmarks.widget",
                ),
                Step(
                    "widget-size",
                    _a("--n-train 400000 --parts size --reps 10"),
                    "400k: time to ready per step, memory, every interaction once (about 10 minutes on 2 cores)",
                    module="benchmarks.widget",
                ),
                Step(
                    "widget-store",
                    _a("--n-train 1281167 --parts store --reps 10"),
                    "1,281,167 8x8 images over a streamed factor store: factors ready -> first table page, each "
                    "interaction, memory against the store (about 2 minutes on 2 cores)",
                    module="benchmarks.widget",
                ),
            ),
            Step(
                "quick",
                _a("--n-train 1000 --n-test 100 --reps 10 --parts python"),
                "smoke run: 1,000 examples, Python-side part only",
                module="benchmarks.widget",
            ),
            kind="widget",
        ),
        Scenario(
            "recall",
            "TracInCPFastRandProj recall@10 against the exact top-10, by rerank (CPU, about 25 minutes)",
            (
                Step(
                    "recall",
                    _a("--threads 2 --n-train 10000,50000 --captum-n 10000"),
                    "10k and 50k, Captum's recall at 10k",
                    module="benchmarks.recall",
                ),
            ),
            Step(
                "quick",
                _a("--threads 1 --data-size 256 --n-train 256 --captum-n 256 --batches 2 --reranks none,5,50"),
                "smoke run: 256 images",
                module="benchmarks.recall",
            ),
            kind="recall",
        ),
        Scenario(
            "imagenet",
            "TracInCPFast at ImageNet's shape on one CUDA GPU: 1,281,167 rows, 2048 -> 1000, 5 checkpoints",
            (
                Step(
                    "fp32",
                    _a("--dtypes fp32"),
                    "float32 factors (78 GB: on an H200's GPU, in host memory on an H100)",
                    module="benchmarks.probes.imagenet_shape",
                ),
                Step(
                    "bf16",
                    _a("--dtypes bf16 --store"),
                    "bfloat16 factors (39 GB) on the GPU, and into a store",
                    module="benchmarks.probes.imagenet_shape",
                ),
            ),
            Step(
                "quick",
                _a("--rows 4096 --dtypes fp32,bf16"),
                "smoke run: 4,096 rows",
                module="benchmarks.probes.imagenet_shape",
            ),
            kind="probe",
        ),
        Scenario(
            "resnet50",
            "torchvision's ResNet-50: TracInCPFast's factor pass against the plain forward, on one CUDA GPU",
            (
                Step(
                    "resnet50",
                    (),
                    "10k images under TF32 and strict float32, 100k under TF32",
                    module="benchmarks.probes.resnet50_throughput",
                ),
            ),
            Step(
                "quick",
                _a("--n 64 --n-small 64 --batch-size 32"),
                "smoke run: 64 images",
                module="benchmarks.probes.resnet50_throughput",
            ),
            kind="probe",
        ),
    )
}

PROBES = ("imagenet", "resnet50")

# engine.py result (task) -> rows: (row task, Captum's segment, ours' segment)
ENGINE_ROWS: dict[str, tuple[tuple[str, str | None, str], ...]] = {
    "self": (("self", "total", "total"),),
    "workflow": (
        ("workflow", "total", "total"),
        ("workflow_proopp", "pro+opp", "pro+opp"),
        ("workflow_warm", "total", "warm_total_median"),
    ),
    "query": (("query", None, "pro+opp"),),
    "randproj": (("randproj_init", "init", "init"), ("randproj_query", "query_median", "query_median")),
    "cp": (("cp_proopp", "pro+opp", "pro+opp"), ("cp_self", "self", "self"), ("cp_total", "total", "total")),
}


# ----------------------------------------------------------------------------------------------------------- machine
def git_commit() -> str | None:
    """The short commit of the working tree, with ``-dirty`` when tracked files differ from it (None without git)."""
    try:
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout.strip()
        if not head:
            return None
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout.strip()
        return head + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def machine_tag(machine: dict) -> str:
    """``h200`` for an NVIDIA H200 (the GPU's model), else ``<cores>core`` for the CPU."""
    gpu = machine.get("gpu")
    if gpu:
        m = re.search(r"\b([A-Z]+\d{2,4}[A-Za-z]?)\b", gpu)
        return (m.group(1) if m else re.sub(r"[^A-Za-z0-9]+", "-", gpu).strip("-")).lower()
    return f"{machine.get('cores') or os.cpu_count()}core"


def machine_label(machine: dict) -> str:
    gpu = machine.get("gpu")
    if gpu:
        return gpu.replace("NVIDIA ", "")
    return f"CPU, {machine.get('cores')} cores"


# ----------------------------------------------------------------------------------------------------------- running
def run_step(step: Step, argv: list[str], raw: Path) -> dict[str, Any]:
    """Run one step in its own process group; stop the group after its timeout (what it saved so far is kept)."""
    cmd = [sys.executable, "-m", step.module, *argv, "--out", str(raw)]
    print(f"\n== step {step.name}: {step.what}\n   {shlex.join(cmd)}", flush=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True)
    timed_out = False
    try:
        rc = proc.wait(timeout=step.timeout_s)
    except subprocess.TimeoutExpired:
        timed_out = True
        os.killpg(proc.pid, signal.SIGKILL)
        rc = proc.wait()
        print(f"   step {step.name} stopped after {step.timeout_s:g} s", flush=True)
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    return {
        "name": step.name,
        "what": step.what,
        "argv": argv,
        "started": started,
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
        "returncode": rc,
        "timed_out": timed_out,
        "raw": str(raw.relative_to(ROOT)) if raw.is_relative_to(ROOT) else str(raw),
    }


def _summary(s: dict | None) -> dict | None:
    if not s or s.get("median") is None:
        return None
    return {k: s[k] for k in ("median", "min", "max", "n") if s.get(k) is not None}


def engine_rows(doc: dict, step: str) -> list[dict]:
    """engine.py's raw results -> the suite's rows (one per task, source, N; Captum's and our summaries)."""
    args = doc["args"]
    threads = args.get("threads") or doc["machine"].get("torch_threads")
    rows = []
    for name, rec in doc["results"].items():
        task, source = name.rstrip("]").split("[")
        n_train = rec.get("n_train", args["n_train"])
        timeouts = [r for r in rec.get("captum", []) if "timeout" in r]
        for row_task, cseg, oseg in ENGINE_ROWS.get(task, ()):
            ours = _summary(rec.get("ours_summary", {}).get(oseg))
            if ours is None:
                continue
            captum = _summary(rec.get("captum_summary", {}).get(cseg)) if cseg else None
            row = {
                "task": row_task,
                "source": source,
                "n_train": n_train,
                "threads": threads,
                "reps": ours.get("n"),
                "captum": captum,
                "ours": ours,
                "step": step,
            }
            if captum is None and cseg and timeouts:
                row["captum"] = {"more_than": args.get("captum_timeout")}
            if row_task == "randproj_query" and rec.get("checks"):
                rc = [c["recall_at_10_vs_exact"] for c in rec["checks"]]
                row["recall"] = {
                    lib: [statistics.mean(c[f"{lib}_{d}"] for c in rc) for d in ("pro", "opp")]
                    for lib in ("captum", "ours")
                }
            rows.append(row)
    return rows


def engine_exactness(docs: list[dict]) -> dict:
    """The largest relative differences to Captum over every check of every step, and whether the top-10 indices
    came in the same order every time."""
    out: dict[str, Any] = {}
    same = []

    def worst(key: str, value: float) -> None:
        out[key] = max(out.get(key, 0.0), value)

    for doc in docs:
        for name, rec in doc["results"].items():
            task = name.split("[")[0]
            lib = "cp" if task == "cp" else "fast"
            for c in rec.get("checks", []):
                for d in ("pro", "opp"):
                    if d in c:
                        worst(f"{lib}_scores_max_rel", c[d]["max_rel_diff"])
                        same.append(c[d]["same_order"])
                if "self" in c:
                    worst(f"{lib}_self_max_rel", c["self"]["max_rel_diff"])
    if same:
        out["same_top10_order"] = all(same)
    return out


def collect(scenario: Scenario, steps: list[dict], raws: list[Path]) -> dict:
    """The results document of one scenario run from its steps' raw JSON files."""
    docs = [json.loads(p.read_text()) if p.is_file() else None for p in raws]
    found = [d for d in docs if d]
    if not found:
        raise SystemExit(f"no step of scenario {scenario.name!r} wrote results (see the output above)")
    if scenario.kind == "probe":  # the GPU probes name their device and torch only
        machine = {"gpu": found[0].get("device"), "torch": found[0].get("torch")}
    else:
        machine = dict(found[0]["machine"])
    res: dict[str, Any] = {
        "scenario": scenario.name,
        "machine_tag": machine_tag(machine),
        "machine_label": machine_label(machine),
        "source": f"measured by python -m benchmarks {scenario.name}",
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "git_commit": git_commit(),
        "torch": machine.get("torch"),
        "machine": machine,
        "steps": steps,
    }
    if scenario.kind == "engine":
        res["rows"] = [r for step, d in zip(steps, docs, strict=False) if d for r in engine_rows(d, step["name"])]
        res["exactness"] = engine_exactness(found)
    elif scenario.kind == "widget":
        runs = [d for d in found if "python" in d or "browser" in d]
        res["runs"] = [
            {
                "label": "run",
                "reps": d["args"]["reps"],
                "n_train": d["args"]["n_train"],
                "figures": {k: d[k] for k in ("python", "browser") if k in d},
                "loadavg": [d.get("loadavg_start"), d.get("loadavg_end")],
            }
            for d in runs[:1]
        ]
        for key in ("load", "size", "store"):  # the widget-load, widget-size and widget-store steps
            for d in found:
                if key in d:
                    res[key] = d[key]
    elif scenario.kind == "probe":
        res["runs"] = [dict(d, step=step["name"]) for step, d in zip(steps, docs, strict=False) if d]
    else:
        res["results"] = found[0]["results"]
    return res


def merge(previous: dict | None, new: dict) -> dict:
    """A partial run (``--only``) replaces the rows of its steps in an earlier measured file of the same machine."""
    if previous and new.get("scenario") in PROBES:  # a probe: keep the steps this run did not measure
        rerun = {s["name"] for s in new["steps"]}
        new["steps"] = [s for s in previous.get("steps", []) if s["name"] not in rerun] + new["steps"]
        new["runs"] = [r for r in previous.get("runs", []) if r.get("step") not in rerun] + new["runs"]
        return new
    if previous and new.get("scenario") == "widget":  # widget: keep the parts this run did not measure
        rerun = {s["name"] for s in new["steps"]}
        new["steps"] = [s for s in previous.get("steps", []) if s["name"] not in rerun] + new["steps"]
        for key in ("runs", "load", "size", "store", "notes"):
            if not new.get(key) and previous.get(key):
                new[key] = previous[key]
        return new
    if not previous or not str(previous.get("source", "")).startswith("measured") or "rows" not in previous:
        return new
    rerun = {s["name"] for s in new["steps"]}
    new["steps"] = [s for s in previous["steps"] if s["name"] not in rerun] + new["steps"]
    new["rows"] = [r for r in previous["rows"] if r.get("step") not in rerun] + new["rows"]
    for key, value in previous.get("exactness", {}).items():
        new["exactness"][key] = (
            (value and new["exactness"].get(key, True))
            if key == "same_top10_order"
            else max(value, new["exactness"].get(key, 0.0))
        )
    return new


def run_scenario(scenario: Scenario, args: argparse.Namespace) -> list[str]:
    """Run the scenario's steps, write its results file; return the names of the steps that failed or timed out."""
    if args.quick:
        steps = [scenario.quick]
    else:
        steps = list(scenario.steps)
        if args.only:
            names = [n.strip() for n in args.only.split(",") if n.strip()]
            unknown = sorted(set(names) - {s.name for s in steps})
            if unknown:
                raise SystemExit(
                    f"--only: unknown step(s) {unknown} of scenario {scenario.name!r}; "
                    f"choose from {[s.name for s in steps]}"
                )
            steps = [s for s in steps if s.name in names]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    raw_dir = Path(args.raw_dir) / f"{scenario.name}{'-quick' if args.quick else ''}-{stamp}"
    raw_dir.mkdir(parents=True, exist_ok=True)
    extra = shlex.split(args.extra)
    if args.data_dir and scenario.kind in ("engine", "recall", "widget"):
        extra += ["--data-dir", str(args.data_dir)]
    done, raws = [], []
    for step in steps:
        raw = raw_dir / f"{step.name}.json"
        done.append(run_step(step, [*scenario.common, *step.argv, *extra], raw))
        raws.append(raw)
    res = collect(scenario, done, raws)
    if args.tag:
        res["machine_tag"] = args.tag
    res["quick"] = bool(args.quick)
    results_dir = Path(args.results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    out = results_dir / f"{scenario.name}-{res['machine_tag']}{'-quick' if args.quick else ''}.json"
    if args.only and out.is_file():
        res = merge(json.loads(out.read_text()), res)
    out.write_text(json.dumps(res, indent=1, default=str) + "\n")
    failed = [s["name"] for s in done if s["returncode"] or s["timed_out"]]
    print(f"\nwrote {out}" + (f" (steps that failed or timed out: {failed})" if failed else ""), flush=True)
    if not args.quick and Path(args.results_dir).resolve() == RESULTS_DIR:
        print("render it into benchmarks/RESULTS.md with: python -m benchmarks report", flush=True)
    return failed


# ----------------------------------------------------------------------------------------------------------- CLI
def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="{" + ",".join([*SCENARIOS, "report"]) + "}")
    for sc in SCENARIOS.values():
        steps = "\n".join(f"  {s.name:20s} {s.what}" for s in sc.steps)
        sp = sub.add_parser(
            sc.name,
            help=sc.help,
            description=f"{sc.help}.\n\nsteps:\n{steps}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sp.add_argument("--quick", action="store_true", help="one tiny smoke step instead of the full-size steps")
        sp.add_argument("--only", default="", help="comma separated step names to run (merged into the results file)")
        sp.add_argument("--results-dir", type=Path, default=RESULTS_DIR, help="where the results JSON goes")
        sp.add_argument("--raw-dir", type=Path, default=BENCH / "out", help="where the steps' raw JSON goes")
        sp.add_argument(
            "--data-dir", type=Path, default=None, help="the generated workload's cache (default benchmarks/data/)"
        )
        sp.add_argument("--tag", default="", help="machine tag of the results file (default: GPU model or CPU cores)")
        sp.add_argument("--extra", default="", help='more options for every step, e.g. "--skip-captum cp"')
    rp = sub.add_parser(
        "report",
        help="regenerate the tables of benchmarks/RESULTS.md and WIDGET_RESULTS.md from the results JSON files",
    )
    rp.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    rp.add_argument("--results-md", type=Path, default=RESULTS_MD)
    rp.add_argument("--widget-results-md", type=Path, default=WIDGET_RESULTS_MD, help="the explorer's tables")
    rp.add_argument("--check", action="store_true", help="only check that the file is up to date (exit 1 if not)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "report":
        from benchmarks.report import update_results_md

        stale = False
        for md in (args.results_md, args.widget_results_md):
            if not Path(md).is_file():
                continue
            changed = update_results_md(args.results_dir, md, check=args.check)
            stale |= changed
            if args.check:
                print(f"{md}: {'out of date' if changed else 'up to date'}")
            else:
                print(f"{md}: {'updated' if changed else 'unchanged'}")
        return 1 if args.check and stale else 0
    return 1 if run_scenario(SCENARIOS[args.command], args) else 0
