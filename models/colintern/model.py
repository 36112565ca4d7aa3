"""MTEB wrapper of a ColIntern model: the frozen backbone with the trained query and page heads."""

from __future__ import annotations

from pathlib import Path

from harness.backbones import Backbone
from harness.evaluate.encoder import HarnessEncoder, make_meta
from harness.retrieval.cache import EmbeddingCache
from models.colintern.heads import ColInternBackbone, Heads

VARIANT = "colintern"


def load_model(backbone: Backbone, checkpoint: Path | None = None,
               cache: EmbeddingCache | None = None) -> HarnessEncoder:
    if checkpoint is None:
        raise ValueError("the colintern variant needs a checkpoint (its trained heads)")
    heads, meta = Heads.load(Path(checkpoint))  # a missing or mismatched head is an error
    model = ColInternBackbone(backbone, heads)
    label = meta.get("label", VARIANT)  # colintern-e1 / colintern-mined: distinct rows on the leaderboard
    encoder = HarnessEncoder(model, make_meta(
        f"{label}/{model.describe()}", model.fingerprint(), model, embed_dim=heads.spec()["dim"],
        adapted_from=getattr(backbone.config, "encoder", None) or getattr(backbone.config, "model", None)))
    encoder.variant_label = label  # the run record's variant, where the pipeline reads it
    return encoder
