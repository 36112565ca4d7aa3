"""MTEB wrapper of a SynTR-trained backbone: the checkpoint's LoRA and heads, merged into the backbone."""

from __future__ import annotations

from pathlib import Path

from harness.backbones import Backbone
from harness.evaluate.encoder import HarnessEncoder, make_meta
from harness.retrieval.cache import EmbeddingCache
from harness.train import load_checkpoint

VARIANT = "syntr"


def load_model(backbone: Backbone, checkpoint: Path | None = None,
               cache: EmbeddingCache | None = None) -> HarnessEncoder:
    if checkpoint is None:
        raise ValueError("the syntr variant needs a checkpoint (it trains on a corpus first)")
    load_checkpoint(backbone, Path(checkpoint))
    # The same name as the base row (the leaderboard pairs them); the revision is the trained weights' hash.
    meta = make_meta(f"{VARIANT}/{backbone.describe()}", backbone.fingerprint(), backbone,
                     adapted_from=getattr(backbone.config, "encoder", None) or getattr(backbone.config, "model", None))
    return HarnessEncoder(backbone, meta, cache)
