"""Command-line value parsing shared by ``harness`` and its sub-commands (``harness synth``)."""

from __future__ import annotations

from typing import Any

import yaml


def parse_sets(pairs: list[str], option: str = "--set") -> dict[str, Any]:
    """``KEY=VALUE`` pairs as a dict; each value is read as YAML (``n=3`` gives an int, ``m=[a, b]`` a list)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise SystemExit(f"{option} expects key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        out[key] = yaml.safe_load(value)
    return out


def task_spec(text: str) -> str | dict[str, Any]:
    """A task argument: a name, a folder, or inline YAML such as '{path: d, split: train}'."""
    return yaml.safe_load(text) if text.strip().startswith("{") else text
