"""MTEB wrapper of a ColQwen3VL checkpoint: the LoRA merged into the backbone, or the fully fine-tuned weights."""

from __future__ import annotations

from pathlib import Path

from harness.backbones import Backbone
from harness.evaluate.encoder import HarnessEncoder, make_meta
from harness.retrieval.cache import EmbeddingCache
from harness.train.record import load_final

VARIANT = "colqwen3vl"


def load_model(backbone: Backbone, checkpoint: Path | None = None,
               cache: EmbeddingCache | None = None) -> HarnessEncoder:
    if checkpoint is None:
        raise ValueError("the colqwen3vl variant needs a checkpoint (it trains on pseudo-queries of a corpus first)")
    load_final(backbone, Path(checkpoint))
    # The same name as the base row (the leaderboard pairs them); the revision is the trained weights' hash.
    meta = make_meta(f"{VARIANT}/{backbone.describe()}", backbone.fingerprint(), backbone,
                     adapted_from=getattr(backbone.config, "encoder", None) or getattr(backbone.config, "model", None))
    return HarnessEncoder(backbone, meta, cache)
