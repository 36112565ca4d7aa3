"""Supervised: the reference ceiling for synthetic data. Any backbone, the shared training loop, a training split's
REAL queries and qrels (``train_corpus: {path: FOLDER, split: train}``; the run refuses a split it also evaluates).

Each training query is one example with all its relevant pages as positives; negatives are the batch's other pages
plus, optionally, ``hard_negatives`` pages the untrained backbone ranks highest among the non-relevant ones. A share
of the queries (grouped by their relevant pages) is held out for the loop's checkpoint choice. A synthetic row reads
against this one: the leaderboard reports the share of the supervised gain over base it recovers.
"""

from __future__ import annotations

import json
import logging
import random
import time
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from harness.backbones import Backbone, Page
from harness.train.loop import LoopSpec, recipe_loops, run_loop
from harness.train.lora import LoraSpec
from harness.train.objectives import ContrastiveCollator, ContrastiveObjective, Example, PageValidator, rank
from harness.train.record import finetune_mode, prepare_finetune, save_final, write_training_record
from harness.variants import TrainingCorpus

log = logging.getLogger(__name__)
TRAINS = True


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")
    finetune: Literal["auto", "full", "lora"] = "auto"  # auto: full for the OCR-text encoder, LoRA otherwise
    lora: LoraSpec = Field(default_factory=lambda: LoraSpec(r=16, alpha=32.0, dropout=0.0))
    loss: Literal["infonce", "pairwise"] = "infonce"
    temperature: float = Field(0.05, gt=0)
    hard_negatives: int = Field(0, ge=0)
    max_queries: int | None = Field(None, ge=1)
    val_fraction: float = Field(0.1, ge=0, lt=1)
    val_pool: int = Field(100, ge=1)
    train: LoopSpec = Field(default_factory=lambda: LoopSpec(steps=200, batch_size=16, lr=2e-5))
    _loops = recipe_loops("train")
    seed: int = 0


def train(backbone: Backbone, corpus: TrainingCorpus, config: Config, out_dir: Path) -> Path:
    if not corpus.train_queries:
        raise ValueError("supervised: needs a training split's queries and qrels: give the variant "
                         "`train_corpus: {path: FOLDER, split: train}` (never an evaluated split)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    pages = {p.id: p for p in corpus.pages}
    if hasattr(backbone, "page_texts") and any(p.image is not None for p in pages.values()):
        ids = list(pages)  # the OCR-text backbone reads pages as OCR text: resolve it once, not at every step
        pages = {i: Page(i, text=t) for i, t in zip(ids, backbone.page_texts([pages[i] for i in ids]), strict=True)}
    qrels = {q: sorted(d for d, r in corpus.train_qrels.get(q, {}).items() if r > 0 and d in pages)
             for q in corpus.train_queries}
    qids = sorted(q for q, gold in qrels.items() if gold)
    if config.max_queries and len(qids) > config.max_queries:
        qids = sorted(random.Random(config.seed).sample(qids, config.max_queries))
    if not qids:
        raise ValueError(f"supervised: no training query of {corpus.name!r} has a relevant page in the corpus")
    groups = sorted({tuple(qrels[q]) for q in qids})
    random.Random(config.seed + 1).shuffle(groups)
    held = set(groups[: round(len(groups) * config.val_fraction)])
    train_ids = [q for q in qids if tuple(qrels[q]) not in held]
    val_ids = [q for q in qids if tuple(qrels[q]) in held]
    hard: dict[str, list[str]] = {q: [] for q in train_ids}
    if config.hard_negatives:
        ranked = rank(backbone, list(pages.values()), {q: corpus.train_queries[q] for q in train_ids})
        for q in train_ids:
            hard[q] = [p for p, _ in ranked[q] if p not in qrels[q]][: config.hard_negatives]
    examples = [Example(corpus.train_queries[q], [pages[p] for p in qrels[q]], [pages[p] for p in hard[q]])
                for q in train_ids]
    validator = None
    if val_ids:
        own = sorted({p for q in val_ids for p in qrels[q]})
        others = sorted(set(pages) - set(own))
        pool = own + sorted(random.Random(config.seed + 2).sample(
            others, max(0, min(len(others), config.val_pool - len(own)))))
        validator = PageValidator(backbone, {q: corpus.train_queries[q] for q in val_ids}, [pages[p] for p in pool],
                                  {q: {p: 1 for p in qrels[q]} for q in val_ids}, corpus.docs_of(pool))
    mode = finetune_mode(backbone, config.finetune)
    targets = prepare_finetune(backbone, mode, config.lora)
    objective = ContrastiveObjective(backbone, config.loss, config.temperature)
    result = run_loop(objective, examples, ContrastiveCollator(backbone), config.train, out_dir, validator)
    save_final(backbone, out_dir / "final", config.lora if mode == "lora" else None, targets)
    write_training_record(out_dir, wall_s=time.perf_counter() - start, llm_calls=0, llm_tokens=0,
                          examples=len(examples), loss_log=result.loss_log, stages={"train": round(result.train_s, 3)},
                          recipe="supervised", finetune=mode, train_split=corpus.name, validation_queries=len(val_ids),
                          hard_negatives=config.hard_negatives, train=result.record())
    log.info("supervised: %d steps on %d queries -> %s (%s)", result.steps, len(examples), out_dir,
             json.dumps({"val": result.val_history[-1] if result.val_history else None}))
    return out_dir
