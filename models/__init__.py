"""Variants: one folder each (recipe.py + model.py)."""

import harness  # noqa: F401  (the torchvision fix runs before anything imports torchvision)
