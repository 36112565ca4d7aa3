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
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from harness.backbones.base import Backbone
from harness.io import atomic_path, atomic_write_json
from harness.train.lora import MERGED_FROM, LoraSpec, attach_lora, merge_lora, merge_saved_lora, save_trainable

FULL_FILE = "full.safetensors"

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
    return atomic_write_json(path, payload, default=str)


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


def prepare_finetune(backbone: Backbone, mode: str, lora: LoraSpec) -> list[str] | None:
    """``mode`` "lora": attach the adapter (returns its targets); "full": every weight trains (returns None)."""
    if mode == "lora":
        return attach_lora(backbone, lora)
    for p in backbone.parameters():
        p.requires_grad_(True)
    return None


def finetune_mode(backbone: Backbone, mode: str) -> str:
    """"auto": the small OCR-text encoder is fully fine-tuned, larger (visual) backbones get LoRA."""
    if mode != "auto":
        return mode
    return "full" if backbone.family == "ocr-text" else "lora"


def save_final(backbone: Backbone, folder: Path, lora: LoraSpec | None, targets: list[str] | None) -> None:
    """The trained state: the adapter (``lora`` given) or every weight (full fine-tuning)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if lora is not None:
        save_trainable(backbone, folder, lora, targets)
        return
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in backbone.state_dict().items()}
    with atomic_path(folder / FULL_FILE) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt"})


def load_final(backbone: Backbone, checkpoint: Path) -> Backbone:
    """Put ``checkpoint/final`` (an adapter, merged; or full weights) into ``backbone``, once per folder."""
    final = Path(checkpoint) / "final"
    if (final / FULL_FILE).is_file():
        if getattr(backbone, MERGED_FROM, None) != str(final):
            from safetensors.torch import load_file

            backbone.load_state_dict(load_file(str(final / FULL_FILE)), strict=True)
            setattr(backbone, MERGED_FROM, str(final))
        for p in backbone.parameters():
            p.requires_grad_(False)
        return backbone
    return load_checkpoint(backbone, checkpoint)
