"""The benchmark suite: Captum 0.9 against ``tracin_widgets`` on the tutorial's workload, and the widget's latency.

One entry point with named scenarios, run from the repository root::

    python -m benchmarks cpu [--quick]        # Captum vs ours side by side on the CPU
    python -m benchmarks gpu                  # the same on a CUDA machine
    python -m benchmarks widget               # InfluenceExplorer latency, Python-side and in a real browser
    python -m benchmarks recall               # TracInCPFastRandProj recall@10 against the exact top-10
    python -m benchmarks imagenet             # TracInCPFast at ImageNet's shape on one GPU
    python -m benchmarks resnet50             # ResNet-50's factor pass against its plain forward on one GPU
    python -m benchmarks report               # regenerate RESULTS.md's and WIDGET_RESULTS.md's tables

Each scenario writes ``benchmarks/results/<scenario>-<machine>.json``; ``report`` renders every such file into the
tables. ``workload.py`` is the one workload; the measuring lives in ``engine.py``, ``widget.py`` (with
``widget_browser.py``, ``widget_store.py``), ``recall.py`` and the two GPU probes in ``probes/``; ``browser.py`` is the
JupyterLab + chromium harness that ``tests/e2e`` uses too.
"""
