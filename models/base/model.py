"""MTEB wrapper of an untrained backbone."""

from __future__ import annotations

from pathlib import Path

from harness.backbones import Backbone
from harness.evaluate.encoder import HarnessEncoder, make_meta
from harness.retrieval.cache import EmbeddingCache

VARIANT = "base"


def load_model(backbone: Backbone, checkpoint: Path | None = None,
               cache: EmbeddingCache | None = None) -> HarnessEncoder:
    if checkpoint is not None:
        raise ValueError("the base variant has no checkpoint")
    # The revision is the backbone's fingerprint: any change of config or weights is a new model.
    meta = make_meta(f"{VARIANT}/{backbone.describe()}", backbone.fingerprint(), backbone,
                     adapted_from=getattr(backbone.config, "encoder", None) or getattr(backbone.config, "model", None))
    return HarnessEncoder(backbone, meta, cache)
