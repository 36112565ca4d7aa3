"""MTEB wrapper of an SV-RAG checkpoint: the LoRA adapter attached UNMERGED (disabled, the network is the base
model that answers) and the trained projection; retrieval runs with the adapter on."""

from __future__ import annotations

from pathlib import Path

from harness.backbones import Backbone
from harness.evaluate.encoder import HarnessEncoder, make_meta
from harness.retrieval.cache import EmbeddingCache
from harness.train.lora import has_lora, load_trainable, reattach

VARIANT = "svrag"
LOADED_FROM = "_svrag_loaded_from"


def load_model(backbone: Backbone, checkpoint: Path | None = None,
               cache: EmbeddingCache | None = None) -> HarnessEncoder:
    if checkpoint is None:
        raise ValueError("the svrag variant needs a checkpoint (it trains on pseudo-queries of a corpus first)")
    final = Path(checkpoint) / "final"
    if getattr(backbone, LOADED_FROM, None) != str(final):
        # the backbone the recipe just trained still holds its adapter: load the saved state into it; a fresh one
        # gets the adapter attached from lora.json. Either way not merged (merging would change the answerer).
        if has_lora(backbone):
            load_trainable(backbone, final)
        else:
            reattach(backbone, final)
        setattr(backbone, LOADED_FROM, str(final))
    for p in backbone.parameters():
        p.requires_grad_(False)
    meta = make_meta(f"{VARIANT}/{backbone.describe()}", backbone.fingerprint(), backbone,
                     adapted_from=getattr(backbone.config, "model", None))
    return HarnessEncoder(backbone, meta, cache)
