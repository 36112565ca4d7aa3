"""MTEB wrapper of a supervised checkpoint (the reference ceiling row): adapter merged, or full weights."""

from __future__ import annotations

from pathlib import Path

from harness.backbones import Backbone
from harness.evaluate.encoder import HarnessEncoder, make_meta
from harness.retrieval.cache import EmbeddingCache
from harness.train.record import load_final

VARIANT = "supervised"


def load_model(backbone: Backbone, checkpoint: Path | None = None,
               cache: EmbeddingCache | None = None) -> HarnessEncoder:
    if checkpoint is None:
        raise ValueError("the supervised variant needs a checkpoint: give it `train_corpus: {path, split: train}`")
    load_final(backbone, Path(checkpoint))
    meta = make_meta(f"{VARIANT}/{backbone.describe()}", backbone.fingerprint(), backbone,
                     adapted_from=getattr(backbone.config, "encoder", None) or getattr(backbone.config, "model", None))
    return HarnessEncoder(backbone, meta, cache)
