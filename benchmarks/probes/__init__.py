"""One-off investigations behind the engine's choices; see README.md.

Run each as ``python -m benchmarks.probes.<name>``.
"""
