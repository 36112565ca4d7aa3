"""Benchmark harness for document retrievers trained on synthetic data."""

from harness import compat as _compat  # noqa: F401  (must run before anything imports torchvision)

__version__ = "0.1.0"
