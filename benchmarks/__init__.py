"""The benchmark suite: Captum 0.9 against ``tracin_widgets`` on the tutorial's workload, and the widget's latency.

One entry point with named scenarios, run from the repository root::

    python -m benchmarks cpu [--quick]        # Captum vs ours side by side on the CPU
    python -m benchmarks gpu --setup          # the same on a CUDA machine (installs carried captum / annoy first)
    python -m benchmarks widget               # InfluenceExplorer latency, Python-side and in a real browser
    python -m benchmarks recall               # TracInCPFastRandProj recall@10 against the exact top-10
    python -m benchmarks report               # regenerate benchmarks/RESULTS.md's tables from benchmarks/results/

Each scenario writes ``benchmarks/results/<scenario>-<machine-tag>.json``; ``report`` renders every such file into
the tables of ``benchmarks/RESULTS.md``. The measuring lives in ``bench_engine.py`` and ``bench_widget.py``; one-off
investigations live in ``probes/``.
"""
