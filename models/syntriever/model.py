"""MTEB wrapper of a Syntriever checkpoint: the stage-1 and the stage-2 model are distinct leaderboard rows
(variant ``syntriever-s1`` / ``syntriever-s2``)."""

from __future__ import annotations

import json
from pathlib import Path

from harness.backbones import Backbone
from harness.evaluate.encoder import HarnessEncoder, make_meta
from harness.retrieval.cache import EmbeddingCache
from harness.train.record import TRAINING_FILE, load_final

VARIANT = "syntriever"


def load_model(backbone: Backbone, checkpoint: Path | None = None,
               cache: EmbeddingCache | None = None) -> HarnessEncoder:
    if checkpoint is None:
        raise ValueError("the syntriever variant needs a checkpoint (it trains)")
    checkpoint = Path(checkpoint)
    record = json.loads((checkpoint / TRAINING_FILE).read_text())
    load_final(backbone, checkpoint)  # the adapter (re-attached or reused, merged) or the fully fine-tuned weights
    label = f"{VARIANT}-s{int(record.get('stages_trained', 2))}"
    meta = make_meta(f"{label}/{backbone.describe()}", backbone.fingerprint(), backbone,
                     adapted_from=getattr(backbone.config, "encoder", None) or getattr(backbone.config, "model", None))
    encoder = HarnessEncoder(backbone, meta, cache)
    encoder.variant_label = label  # type: ignore[attr-defined]  # the pipeline records this as the variant
    return encoder
