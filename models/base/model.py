"""MTEB wrapper of an untrained backbone."""

from __future__ import annotations

from pathlib import Path

from harness.backbones import Backbone
from harness.backbones.bm25 import Bm25Backbone
from harness.evaluate.bm25 import Bm25Search, bm25_meta
from harness.evaluate.encoder import HarnessEncoder, make_meta
from harness.retrieval.cache import EmbeddingCache

VARIANT = "base"


def load_model(backbone: Backbone, checkpoint: Path | None = None,
               cache: EmbeddingCache | None = None) -> HarnessEncoder | Bm25Search:
    if checkpoint is not None:
        raise ValueError("the base variant has no checkpoint")
    # The revision is the backbone's fingerprint: any change of config or weights is a new model.
    name, revision = f"{VARIANT}/{backbone.describe()}", backbone.fingerprint()
    if isinstance(backbone, Bm25Backbone):  # lexical, no vectors: mteb's search interface instead of an encoder
        return Bm25Search(backbone, bm25_meta(name, revision))
    meta = make_meta(name, revision, backbone,
                     adapted_from=getattr(backbone.config, "encoder", None) or getattr(backbone.config, "model", None))
    return HarnessEncoder(backbone, meta, cache)
