"""Backbone families and how to build or load one by name.

Families are imported lazily: the OCR-text default never imports colpali_engine.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from harness.backbones.base import BACKBONE_FILE, Backbone, BackboneConfig, Page, Trainable

FAMILIES: dict[str, str] = {
    "ocr-text": "harness.backbones.ocr_text:OcrTextBackbone",
    "colpali": "harness.backbones.colpali:ColpaliBackbone",
    "tiny": "harness.backbones.tiny:TinyBackbone",
    "bm25": "harness.backbones.bm25:Bm25Backbone",
    "llm-text": "harness.backbones.llm_text:LlmTextBackbone",
    "llm-vision": "harness.backbones.llm_vision:LlmVisionBackbone",
}

__all__ = ["FAMILIES", "Backbone", "BackboneConfig", "Page", "Trainable", "backbone_class",
           "build_backbone", "load_backbone", "saved_family", "settings_label"]
# Settings a backbone's tag (describe()) already shows, and settings that change speed but not scores: neither
# belongs in the settings a leaderboard row names.
IN_TAG = {"ocr-text": {"encoder", "mode"}, "colpali": {"model", "adapter"}, "tiny": {"arch", "seed"},
          "llm-text": {"model", "gguf_file"}, "llm-vision": {"model"}}
SPEED_ONLY = {"ocr_workers", "chunk_batch", "page_batch", "device", "attn_implementation", "gradient_checkpointing"}


class BackboneError(ValueError):
    pass


def backbone_class(family: str) -> type[Backbone]:
    if family not in FAMILIES:
        raise BackboneError(f"unknown backbone family {family!r}; known: {', '.join(sorted(FAMILIES))}")
    module, name = FAMILIES[family].split(":")
    return getattr(importlib.import_module(module), name)


def parse_config(family: str, config: dict[str, Any], where: str = "backbone") -> BackboneConfig:
    cls = backbone_class(family)
    try:
        return cls.config_class(**config)
    except ValidationError as exc:
        problems = "; ".join(f"{where}.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise BackboneError(f"invalid {family} backbone config: {problems}") from None


def build_backbone(family: str, config: dict[str, Any] | None = None, where: str = "backbone") -> Backbone:
    """Build a backbone from its family name and a config dict (validated; unknown keys are errors)."""
    cls = backbone_class(family)
    return cls(parse_config(family, config or {}, where))


def saved_family(path: str | Path) -> str:
    """The family of a backbone saved with ``Backbone.save`` (the folder holds backbone.json)."""
    spec_file = Path(path) / BACKBONE_FILE
    if not spec_file.is_file():
        raise BackboneError(f"{spec_file}: not found (is {path} a saved backbone folder?)")
    return json.loads(spec_file.read_text())["family"]


def load_backbone(path: str | Path) -> Backbone:
    """Load a backbone saved with ``Backbone.save``."""
    return backbone_class(saved_family(path)).load(Path(path))


def settings_label(family: str, config: dict[str, Any]) -> str:
    """The non-default settings of a backbone config that its tag does not show, e.g. ``[max_chunks=1]``; "" for
    defaults (or an unknown family). Two configurations of one backbone then name two leaderboard rows."""
    try:
        fields = backbone_class(family).config_class.model_fields
    except (BackboneError, ImportError):
        return ""
    shown = []
    for key in sorted(config):
        field = fields.get(key)
        if field is None or field.is_required() or key in SPEED_ONLY or key in IN_TAG.get(family, ()):
            continue
        default = field.get_default(call_default_factory=True)
        if json.dumps(config[key], sort_keys=True, default=str) != json.dumps(default, sort_keys=True, default=str):
            shown.append(f"{key}={config[key]}")
    return f"[{', '.join(shown)}]" if shown else ""
