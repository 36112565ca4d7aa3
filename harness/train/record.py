"""What a training leaves behind: ``training.json`` (read by the leaderboard), stage timings, and reloading.

Checkpoint folder layout (``out_dir`` of a recipe):
  training.json   wall_s, llm_calls, llm_tokens, examples, loss_log, stages {name: seconds}, plus recipe keys
  loss.jsonl      {"step", "epoch", "loss"} per logged step
  final/          lora.json + trainable.safetensors: the chosen (best) trainable state
  backbone/       the trained backbone as a backbone.json folder (``harness eval --backbone-path``-style reload)
  checkpoints/    the Trainer's checkpoints (resume)
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from harness.backbones.base import Backbone
from harness.train.lora import merge_lora, merge_saved_lora

TRAINING_FILE = "training.json"


class Stages:
    """Wall time per named stage: ``with stages("rank"): ...``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.start = time.perf_counter()

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - t, 3)

    def total(self) -> float:
        return time.perf_counter() - self.start


def write_training_record(out_dir: Path, *, wall_s: float, llm_calls: int, llm_tokens: int, examples: int,
                          loss_log: str | None, stages: dict[str, float], **extra: Any) -> Path:
    path = Path(out_dir) / TRAINING_FILE
    payload = {"wall_s": round(wall_s, 3), "llm_calls": llm_calls, "llm_tokens": llm_tokens, "examples": examples,
               "loss_log": loss_log, "stages": stages, **extra}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str))
    tmp.replace(path)
    return path


def export_backbone(backbone: Backbone, folder: Path) -> None:
    """Save the trained backbone so ``load_backbone(folder)`` rebuilds it. Families whose save() writes a LoRA
    adapter (colpali: megabytes instead of the base's gigabytes) save as they are; others save a merged copy."""
    if hasattr(backbone, "_save_adapter"):
        backbone.save(folder)
        return
    merged = copy.deepcopy(backbone)
    merge_lora(merged)
    merged.save(folder)


def load_checkpoint(backbone: Backbone, checkpoint: Path) -> Backbone:
    """Put a checkpoint's trained state (``final/``) into ``backbone`` and merge it: evaluation runs at base speed
    (``merge_saved_lora``)."""
    merge_saved_lora(backbone, Path(checkpoint) / "final")
    return backbone
