"""The base variant trains nothing: it evaluates the backbone as it is."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict

from harness.backbones import Backbone
from harness.variants import TrainingCorpus

TRAINS = False  # evaluated as it is: the pipeline builds no training corpus (every page image decoded) for it


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")


def train(backbone: Backbone, corpus: TrainingCorpus, config: Config, out_dir: Path) -> Path | None:
    return None
