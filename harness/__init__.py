"""Benchmark harness for document retrievers trained on synthetic data."""

import os

# Before torch (imported by compat below): libgomp reads OMP_WAIT_POLICY once, when the first OpenMP library loads.
# Spinning waiters cost torch and llama.cpp ~20x on busy shared cores (harness/synth/llamacpp.py); on a dedicated
# machine set OMP_WAIT_POLICY=ACTIVE yourself.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from harness import compat as _compat  # noqa: E402,F401  (must run before anything imports torchvision)

__version__ = "0.1.0"
