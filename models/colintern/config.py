"""ColIntern's settings (``Config``) and file names; what each setting does is in recipe.py's docstring."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from harness.train.loop import LoopSpec, recipe_loops
from harness.train.lora import LoraSpec

TRAINING_FILE, LOSS_FILE, MINED_FILE, STAGE_FILE = "training.json", "loss.jsonl", "mined_triples.jsonl", "stage.json"
MINING_FILE = "mining.json"  # the mining report, beside mined_triples.jsonl
# Settings that do not change stage 1 (they act after it): left out of the stage-1 folder's key, so that runs that
# differ only in them (the e1 and mined rows) share stage 1.
AFTER_EPOCH1 = ("epochs", "mine_negatives", "negatives", "fn_margin", "mine_by", "use_faiss", "mined_train")
# Keys of the hand-written loop this recipe had before the shared one: named in the error, with what replaced them.
REMOVED = {"passes_per_epoch": "train.steps (a budget in optimizer steps)", "lr": "train.lr",
           "batch_size": "train.batch_size", "weight_decay": "train.weight_decay", "save_every": "train.eval_every",
           "max_steps": "train.steps", "lora_lr": "train.lr (the shared loop has one learning rate)"}


def _default_train() -> LoopSpec:
    # Chosen on held-out validation pseudo-queries (models/colintern/README.md, mmlongbench_dev pages): heads that
    # start at the base's geometry need small steps (lr 1e-3 peaked early and fell, 3e-3 fell from step 50; 3e-4 rose
    # to step ~400 of 600); weight decay 0 keeps W = P + R exact (decay would pull W to 0, not to P).
    return LoopSpec(steps=600, batch_size=16, lr=3e-4, warmup=0.1, weight_decay=0.0, eval_every=50,
                    min_delta=0.002)


def _default_mined_train() -> LoopSpec:
    # Stage 2 starts from stage 1's chosen state: a lower rate and a shorter budget (each query scores 1 + k pages)
    return LoopSpec(steps=150, batch_size=16, lr=1e-4, warmup=0.1, weight_decay=0.0, eval_every=25,
                    min_delta=0.002)


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dim: int = Field(128, ge=1)
    # pca: start from the corpus pages' principal directions (ranks like the base); random: N(0, 0.02), the seed's.
    # None: pca for a shared head (ocr-text), random for separate query/vision heads (colpali, tiny).
    init: Literal["pca", "random"] | None = None
    epochs: int = Field(2, ge=1, le=2)  # 1: in-batch stage only; 2: then a stage with mined (or the file's) negatives
    mine_negatives: bool = True
    negatives: int = Field(20, ge=1)  # k mined per query
    fn_margin: float | None = Field(0.05, ge=0)  # drop mined pages scoring within this of the positive; None: off
    # How pages are ranked for mining: maxsim = the model's own score (exact, every query x every page); mean = the
    # seed's mean-pooled vectors and an inner-product index (FAISS when installed: for corpora too large for maxsim)
    mine_by: Literal["maxsim", "mean"] = "maxsim"
    temperature: float = Field(0.02, gt=0)
    train: LoopSpec = Field(default_factory=_default_train)  # stage 1
    mined_train: LoopSpec = Field(default_factory=_default_mined_train)  # stage 2
    _loops = recipe_loops("train", "mined_train")
    val_fraction: float = Field(0.15, ge=0, lt=1)  # source pages held out (with all their queries) for validation
    val_pool: int | None = Field(None, ge=1)  # pages validation ranks over (own + a seeded sample); None: all
    seed: int = 0  # page sample and validation split
    use_faiss: bool | None = None  # None: FAISS when installed, exact torch top-k otherwise
    # training pairs: a triples file, or pseudo-queries over the corpus
    triples: str | None = None
    root: str | None = None  # folder the triples' page paths are relative to (default: the file's folder)
    # Pseudo-queries (harness.synth pseudo_queries). With the defaults below a store written by
    # `harness synth queries FOLDER --store S --kind specific` (seed 42, max_new_tokens 48, default backend) serves
    # every query ColIntern asks for (queries_per_page <= that run's --n; max_pages null for all its pages).
    store: str | None = None  # SynthStore JSONL shared with other recipes; default beside the checkpoint folder
    max_pages: int | None = Field(30, ge=1)  # pages that get pseudo-queries (a seeded sample); None: every page
    queries_per_page: int = Field(1, ge=1)
    query_kind: Literal["specific", "general"] = "specific"  # general queries make same-entity pages false negatives
    query_seed: int = 42
    max_new_tokens: int = Field(48, ge=4)
    backend: dict[str, Any] = Field(default_factory=dict)  # harness.synth BackendSpec (default: packaged Gemma)
    # One head for both sides. None: shared when both sides are text tokens of one encoder (ocr-text), separate
    # when pages are vision features (colpali, tiny). See models/colintern/heads.py.
    shared_head: bool | None = None
    # LoRA on the encoder the text states come from (ocr-text: the text encoder; colpali/tiny: the language
    # model, as the seed), trained with the heads at train.lr. Its ``train_heads`` is ignored: the backbone's own
    # projection (custom_text_proj) lies after the states ColIntern reads, so training it would change nothing.
    lora: LoraSpec | None = None

    @model_validator(mode="before")
    @classmethod
    def _removed_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            old = [k for k in REMOVED if k in data]
            if old:
                raise ValueError("; ".join(f"{k!r} was removed: use {REMOVED[k]}" for k in old))
        return data

    def label(self) -> str:
        """The variant label of the trained model, in its name and run record."""
        if self.epochs == 1:
            return "colintern-e1"
        return "colintern-mined" if self.mine_negatives else f"colintern-e{self.epochs}"
