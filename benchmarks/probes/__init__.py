"""The GPU probes that ``python -m benchmarks imagenet`` and ``resnet50`` run; see README.md."""
