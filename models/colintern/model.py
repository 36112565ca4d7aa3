"""MTEB wrapper of a ColIntern model: the frozen backbone with the trained query and page heads (and, when the
recipe trained one, its LoRA adapter merged into the backbone)."""

from __future__ import annotations

from pathlib import Path

from harness.backbones import Backbone
from harness.evaluate.encoder import HarnessEncoder, make_meta
from harness.retrieval.cache import EmbeddingCache
from harness.train.lora import LORA_FILE, STATE_FILE, has_lora, load_trainable, merge_lora, reattach
from models.colintern.heads import ColInternBackbone, Heads

VARIANT = "colintern"


def load_lora(backbone: Backbone, checkpoint: Path, meta: dict) -> None:
    """Put the checkpoint's LoRA into ``backbone`` and merge it (evaluation at base speed).

    ``backbone`` is either untrained (a fresh process: the adapter is re-attached from ``lora.json``) or the one
    the recipe just trained in this process (adapter still attached: the saved weights are loaded into it). Both
    end in the same merged weights. A checkpoint trained with LoRA whose adapter files are missing, or whose
    weights do not fit, is an error (``load_trainable``): silently evaluating the untrained encoder would give
    wrong numbers under the trained model's name."""
    trained_with_lora = (meta.get("config") or {}).get("lora") is not None
    if not trained_with_lora:
        return
    if getattr(backbone, "_colintern_lora", None) == str(checkpoint):
        return  # already merged into this backbone (load_model called twice)
    for name in (LORA_FILE, STATE_FILE):
        if not (checkpoint / name).is_file():
            raise ValueError(f"{checkpoint}: trained with LoRA but {name} is missing")
    if has_lora(backbone):
        load_trainable(backbone, checkpoint)
    else:
        reattach(backbone, checkpoint)
    merge_lora(backbone)
    backbone._colintern_lora = str(checkpoint)  # type: ignore[attr-defined]


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
