"""ColQwen3VL: in-batch InfoNCE on pseudo-query pairs of an unlabeled page corpus (RECIPES.md section 3).

1. sample pages (seeded) and write ``queries_per_page`` pseudo-queries each with the synthetic-data engine
   (``harness.synth``: the same operation, prompts and store records as SynTR, so recipes pointed at one ``store``
   share the queries of the same pages and settings); the source page is the query's positive, nothing is judged;
2. hold out a share of the source pages (and so of their queries) for the loop's validation;
3. optionally mine ``hard_negatives`` per query with the untrained backbone (``harness.retrieval.mining``: mean-pooled
   vectors, exact inner-product search, the source page dropped; ``mining_margin`` is the false-negative guard);
4. train on the shared loop: InfoNCE at temperature 0.02 over the batch's pages (each query against its own page,
   the other queries' pages and any mined negatives), cosine schedule with 10% warmup, a step budget. LoRA r 32,
   alpha 32, dropout 0.1 on visual backbones (the colpali family, e.g. ColQwen3, and the tiny one); the small
   OCR-text encoder is fully fine-tuned (``finetune: auto``, as ``harness.train.record`` decides).
The seed trains 3 epochs at batch 2 x accumulation 8, lr 2e-4 (LoRA); here the budget is in optimizer steps and a
full fine-tune gets lr 2e-5 (LoRA 2e-4) unless ``train.lr`` is set.
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from harness.backbones import Backbone, Page
from harness.io import atomic_write_text
from harness.train.loop import LoopSpec, recipe_loops, run_loop
from harness.train.lora import LoraSpec
from harness.train.objectives import ContrastiveCollator, ContrastiveObjective, Example, PageValidator
from harness.train.record import (
    TRAINING_FILE,
    Stages,
    finetune_mode,
    prepare_finetune,
    save_final,
    write_training_record,
)
from harness.variants import TrainingCorpus

log = logging.getLogger(__name__)
TRAINS = True
# learning rates unless train.lr is set: the seed's 2e-4 for LoRA; every weight training (the OCR-text encoder) at
# that rate would wreck a pretrained encoder
LORA_LR, FULL_LR = 2e-4, 2e-5
PAIRS_FILE = "pairs.jsonl"


def make_backend(spec: dict[str, Any]) -> Any:  # a module attribute, so tests can substitute a fake model
    from harness.synth.backends import make_backend as make

    return make(spec)


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # 1. pseudo-queries (defaults as SynTR's, so a shared store serves both)
    pages: int | None = Field(400, ge=1)  # pages sampled from the corpus; None: all
    queries_per_page: int = Field(3, ge=1)
    prompt: Literal["general", "specific"] = "general"
    max_new_tokens: int = Field(48, ge=4)
    backend: dict[str, Any] = Field(default_factory=dict)  # harness.synth BackendSpec; {}: packaged Gemma 3 270M
    store: str | None = None  # SynthStore JSONL shared with other recipes; default <out_dir>/synth.jsonl
    seed: int = 42
    # 2. validation: a share of the source pages, ranked among up to val_pool pages
    val_fraction: float = Field(0.1, ge=0, lt=1)
    val_pool: int = Field(100, ge=2)
    # 3. mined hard negatives (0: in-batch negatives only)
    hard_negatives: int = Field(0, ge=0)
    mining_margin: float | None = Field(None, ge=0)
    # 4. training
    finetune: Literal["auto", "full", "lora"] = "auto"  # auto: full for the OCR-text encoder, LoRA otherwise
    lora: LoraSpec = Field(default_factory=lambda: LoraSpec(r=32, alpha=32.0, dropout=0.1))
    temperature: float = Field(0.02, gt=0)
    # lr: LORA_LR or FULL_LR by the fine-tuning mode, unless given
    train: LoopSpec = Field(default_factory=lambda: LoopSpec(steps=100, batch_size=2, grad_accum=8, schedule="cosine",
                                                             warmup=0.1))
    _loops = recipe_loops("train")

    @model_validator(mode="after")
    def _consistent(self) -> Config:
        if self.train.batch_size < 2 and self.hard_negatives == 0:
            raise ValueError("train.batch_size 1 with hard_negatives 0 leaves every query one candidate, its own "
                             "page: the InfoNCE loss is 0 and nothing trains (raise batch_size or hard_negatives)")
        if self.finetune == "full" and "lora" in self.model_fields_set:
            raise ValueError("lora settings given with finetune: full (every weight trains, no adapter): drop "
                             "`lora` or use finetune: lora / auto")
        if self.mining_margin is not None and self.hard_negatives == 0:
            raise ValueError("mining_margin applies to mined negatives: set hard_negatives > 0 or drop it")
        return self


def train(backbone: Backbone, corpus: TrainingCorpus, config: Config, out_dir: Path) -> Path:
    return train_pairs(backbone, corpus, config, out_dir, recipe="colqwen3vl", loss="infonce",
                       lora_lr=LORA_LR, full_lr=FULL_LR)


def train_pairs(backbone: Backbone, corpus: TrainingCorpus, config: Config, out_dir: Path, *, recipe: str,
                loss: Literal["infonce", "pairwise"], lora_lr: float, full_lr: float) -> Path:
    """Steps 1-4 above with the given loss and default learning rates; ``recipe`` names the training in messages
    and in training.json (svrag trains this way too, with the pairwise loss)."""
    out_dir = Path(out_dir)
    if (out_dir / TRAINING_FILE).is_file() and (out_dir / "final").is_dir():
        log.info("%s: %s already trained; reusing it", recipe, out_dir)
        return out_dir
    if not any(True for _ in backbone.parameters()):
        raise ValueError(f"{recipe}: backbone {backbone.describe()} has no weights to train (e.g. bm25); use "
                         "ocr-text, tiny or colpali")
    if len(corpus.pages) < 2:
        raise ValueError(f"{recipe}: corpus {corpus.name!r} has {len(corpus.pages)} page(s); in-batch "
                         "contrastive training needs at least 2")
    out_dir.mkdir(parents=True, exist_ok=True)
    stages = Stages()
    pages = {p.id: p for p in corpus.pages}
    ids = sorted(pages)
    with stages("queries"):
        queries, llm = pseudo_query_pairs(config, [pages[i] for i in ids], out_dir)
    if not queries:
        raise RuntimeError(f"{recipe}: the LLM wrote no usable pseudo-query for {corpus.name!r} ({llm['notes']})")
    if hasattr(backbone, "page_texts"):  # OCR-text: read each page's text once, not at every step and evaluation
        pages = {i: Page(i, text=t) for i, t in zip(ids, backbone.page_texts([pages[i] for i in ids]), strict=True)}
    source = {q: q.rsplit("#q", 1)[0] for q in queries}
    sources = sorted(set(source.values()))
    random.Random(config.seed + 1).shuffle(sources)
    held = set(sources[: round(len(sources) * config.val_fraction)])
    train_q = sorted(q for q in queries if source[q] not in held)
    val_q = sorted(q for q in queries if source[q] in held)
    if not train_q:
        raise ValueError(f"{recipe}: no training queries left after holding out val_fraction "
                         f"{config.val_fraction} of {len(sources)} source pages")
    mining: dict[str, int] = {}
    hard: dict[str, list[str]] = {q: [] for q in train_q}
    if config.hard_negatives:
        with stages("mine"):
            hard = mine(backbone, [pages[i] for i in ids], {q: queries[q] for q in train_q}, source,
                        config.hard_negatives, config.mining_margin, mining)
    examples = [Example(queries[q], [pages[source[q]]], [pages[p] for p in hard[q]]) for q in train_q]
    validator = None
    if val_q:
        own = sorted({source[q] for q in val_q})
        others = [i for i in ids if i not in held]
        pool = own + sorted(random.Random(config.seed + 2).sample(
            others, max(0, min(len(others), config.val_pool - len(own)))))
        validator = PageValidator(backbone, {q: queries[q] for q in val_q}, [pages[i] for i in pool],
                                  {q: {source[q]: 1} for q in val_q}, corpus.docs_of(pool))
    mode = finetune_mode(backbone, config.finetune)
    spec = config.train
    if "lr" not in spec.model_fields_set:
        spec = spec.model_copy(update={"lr": full_lr if mode == "full" else lora_lr})
    targets = prepare_finetune(backbone, mode, config.lora)
    with stages("train"):
        objective = ContrastiveObjective(backbone, loss, config.temperature)
        result = run_loop(objective, examples, ContrastiveCollator(backbone), spec, out_dir, validator)
    with stages("export"):
        save_final(backbone, out_dir / "final", config.lora if mode == "lora" else None, targets)
    write_training_record(
        out_dir, wall_s=stages.total(), llm_calls=llm["llm_calls"], llm_tokens=llm["llm_tokens"],
        examples=len(examples), loss_log=result.loss_log, stages=stages.seconds, recipe=recipe,
        llm_calls_new=llm["llm_new"], backend=llm["backend"], finetune=mode, lr=spec.lr, loss=loss,
        temperature=config.temperature, lora=config.lora.model_dump() if mode == "lora" else None,
        hard_negatives=config.hard_negatives, mining=mining or None, validation_queries=len(val_q),
        train=result.record(), notes=llm["notes"])
    log.info("%s: %d steps on %d pseudo-queries -> %s", recipe, result.steps, len(examples), out_dir)
    return out_dir


def pseudo_query_pairs(config: Config, pages: list[Page], out_dir: Path) -> tuple[dict[str, str], dict[str, Any]]:
    """{"<page id>#q<i>": query} for the sampled pages, through the synth engine's store (a rerun calls nothing)."""
    from harness.synth.operations import QUERY_PARAMS, pseudo_queries
    from harness.synth.store import SynthStore

    rng = random.Random(config.seed)
    sampled = sorted(rng.sample(pages, min(config.pages, len(pages))), key=lambda p: p.id) if config.pages else pages
    with SynthStore(Path(config.store) if config.store else out_dir / "synth.jsonl") as store:
        backend = make_backend(config.backend)
        params = QUERY_PARAMS.model_copy(update={"max_new_tokens": config.max_new_tokens})
        by_page, report = pseudo_queries(backend, store, sampled, n=config.queries_per_page, kind=config.prompt,
                                         params=params, seed=config.seed, progress=False)
        chosen = {p.id for p in sampled}
        # this training's calls: a shared store also holds other recipes' records
        own = [r for r in store.records.values()
               if r.get("op") == "queries" and r.get("inputs", {}).get("page") in chosen]
        llm = {"llm_calls": len(own), "llm_new": store.written, "backend": backend.describe(),
               "llm_tokens": sum(int(r.get("n_prompt_tokens") or 0) + int(r.get("n_tokens") or 0) for r in own)}
    queries = {f"{pid}#q{i}": q for pid, qs in by_page.items() for i, q in enumerate(qs)}
    llm["notes"] = {"pages": len(sampled), "queries": len(queries), **report.notes}
    atomic_write_text(out_dir / PAIRS_FILE, "".join(json.dumps({"query_id": q, "query": t}) + "\n"
                                                    for q, t in queries.items()))
    return queries, llm


@torch.no_grad()
def mine(backbone: Backbone, pages: list[Page], queries: dict[str, str], source: dict[str, str], k: int,
         margin: float | None, stats: dict[str, int]) -> dict[str, list[str]]:
    """{query id: up to k page ids} the untrained backbone ranks highest, the query's own page excluded."""
    from harness.retrieval.mining import mean_pool, mine_negatives

    qids = list(queries)
    index = {p.id: i for i, p in enumerate(pages)}
    docs = mean_pool(backbone.encode_pages(pages))
    vecs = mean_pool(backbone.encode_queries([queries[q] for q in qids]))
    found = mine_negatives(vecs, docs, [index[source[q]] for q in qids], k, margin=margin, stats=stats)
    return {q: [pages[j].id for j in js] for q, js in zip(qids, found, strict=True)}
