"""MTEB wrapper of a ColIntern model: the frozen backbone with the trained query and page heads (and, when the
recipe trained one, its LoRA adapter merged into the backbone)."""

from __future__ import annotations

from pathlib import Path

from harness.backbones import Backbone
from harness.evaluate.encoder import HarnessEncoder, make_meta
from harness.retrieval.cache import EmbeddingCache
from harness.train.lora import LORA_FILE, STATE_FILE, merge_saved_lora
from models.colintern.heads import ColInternBackbone, Heads

VARIANT = "colintern"


def load_lora(backbone: Backbone, checkpoint: Path, meta: dict) -> None:
    """Put the checkpoint's LoRA into ``backbone`` and merge it (``merge_saved_lora``). A checkpoint trained with
    LoRA whose adapter files are missing, or whose weights do not fit, is an error: silently evaluating the
    untrained encoder would give wrong numbers under the trained model's name."""
    trained_with_lora = (meta.get("config") or {}).get("lora") is not None
    if not trained_with_lora:
        return
    for name in (LORA_FILE, STATE_FILE):
        if not (checkpoint / name).is_file():
            raise ValueError(f"{checkpoint}: trained with LoRA but {name} is missing")
    merge_saved_lora(backbone, checkpoint)  # once per backbone: load_model may be called twice


def load_model(backbone: Backbone, checkpoint: Path | None = None,
               cache: EmbeddingCache | None = None) -> HarnessEncoder:
    if checkpoint is None:
        raise ValueError("the colintern variant needs a checkpoint (its trained heads)")
    checkpoint = Path(checkpoint)
    heads, meta = Heads.load(checkpoint)  # a missing or mismatched head is an error
    load_lora(backbone, checkpoint, meta)
    model = ColInternBackbone(backbone, heads)
    label = meta.get("label", VARIANT)  # colintern-e1 / colintern-mined: distinct rows on the leaderboard
    encoder = HarnessEncoder(model, make_meta(
        f"{label}/{model.describe()}", model.fingerprint(), model, embed_dim=heads.spec()["dim"],
        adapted_from=getattr(backbone.config, "encoder", None) or getattr(backbone.config, "model", None)))
    encoder.variant_label = label  # the run record's variant, where the pipeline reads it
    return encoder
