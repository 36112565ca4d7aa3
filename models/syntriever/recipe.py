"""Syntriever (RECIPES.md section 2): two-stage training of a retriever from an LLM's outputs.

Training queries: a training split's queries when the corpus carries them (``train_corpus: {path: ..., split:
train}``, the BEIR text setting; gold = that split's qrels), otherwise pseudo-queries the LLM writes for sampled
pages of the unlabeled corpus (the page setting; gold = the source page).

Stage 1 (distillation): per query the LLM writes a relevant passage, a plausibly irrelevant passage and a
chain-of-thought augmentation (temperature 0.7, ``passage_tokens`` at most); self-verification of the GENERATED
passage keeps it as a positive or moves it to the negatives. Loss over each batch's passages (gold pages,
synthetic passages, CoT, negatives): ``multi_positive`` (the paper: softmax mass on all of a query's relevant
passages, default) or ``single_target`` (the seed code: cross-entropy with the gold passage as the only target).
Stage 2 (alignment, ``stages: 2``): rank the corpus with the stage-1 model, let the LLM order each query's top
``top_k`` (``judge: pairwise``: all pairs, both orders averaged, passages scored by their summed preference;
``ql-pmi``: query likelihood given the passage minus without it), train with the partial Plackett-Luce loss on the
top-2 over the batch's candidates, plus ``reg_weight`` x KL(stage-1 || current) over each query's own top-k
(0 = off, the default, as in the seed code).

Synthetic passages are text for the ocr-text family (its page path reads a text as it would read the page's OCR,
without OCR noise) and rendered page images for visual families (``synthetic_as``). Scores are MaxSim averaged
over query tokens, divided by ``temperature`` (0.05, as the paper's cosine x 20). The ocr-text encoder is fully
fine-tuned by default, visual backbones get LoRA (``finetune``). Stage 1's result is cached beside the checkpoint
(keyed by everything it depends on), so a ``stages: 2`` run after a ``stages: 1`` run trains only stage 2.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from harness.backbones import Backbone, Page
from harness.io import atomic_write_json, atomic_write_lines
from harness.train.loop import LoopResult, LoopSpec, recipe_loops, run_loop
from harness.train.lora import LoraSpec, load_trainable
from harness.train.objectives import ContrastiveCollator, ContrastiveObjective, Example, PageValidator
from harness.train.record import FULL_FILE, finetune_mode, prepare_finetune, save_final
from harness.variants import TrainingCorpus
from models.syntriever.data import CountingBackend, TrainQuery, passage_page, query_id, subsample
from models.syntriever.stage2 import AlignmentObjective, judge_topk, retrieve, stage2_groups

if TYPE_CHECKING:  # imported where used: the store opens lazily in train()
    from harness.synth.store import SynthStore

log = logging.getLogger(__name__)
TRAINS = True
STAGE2_KEYS = {"stages", "top_k", "judge", "stage2", "reg_weight"}


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")
    stages: Literal[1, 2] = 2
    loss: Literal["multi_positive", "single_target"] = "multi_positive"
    temperature: float = Field(0.05, gt=0)
    backend: dict[str, Any] = Field(default_factory=dict)  # harness.synth BackendSpec; {}: packaged Gemma 270M
    store: str | None = None  # synth store (JSONL); default: <checkpoints>/syntriever/synth/<corpus>.jsonl
    passage_tokens: int = Field(96, ge=8)  # cap on each generated passage / CoT
    verify: bool = True
    use_cot: bool = True
    use_passages: bool = True  # ablation (false): train without the generated passages (gold pages and CoT only)
    synthetic_as: Literal["auto", "text", "image"] = "auto"
    # page setting (no training split): pseudo-queries
    max_pages: int | None = Field(30, ge=1)
    queries_per_page: int = Field(1, ge=1)
    query_kind: Literal["specific", "general"] = "specific"
    # ql-pmi: keep a pseudo-query only when its own page makes it more likely than no page (SynTR's judge of the
    # source page; without it SynTR's row equals base on mmlongbench_dev). Judged before any passage is written.
    query_filter: Literal["none", "ql-pmi"] = "none"
    # text setting (a training split): subsample of its queries
    max_queries: int | None = Field(None, ge=1)
    # self-verification of the generated passage: yes/no for instruction-tuned LLMs; for base models (whose yes/no is
    # at chance) query likelihood: kept when the passage makes the query more likely than no passage (PMI > 0)
    verify_by: Literal["auto", "yesno", "ql-pmi"] = "auto"
    # validation (the loop's checkpoint choice): a held-out share of the training queries, ranked over their gold pages
    # plus a seeded sample of the corpus
    val_fraction: float = Field(0.1, ge=0, lt=1)
    val_pool: int = Field(100, ge=1)
    # stage 1 (the paper: batch 60, warmup 1000 steps, 10 epochs on GPUs; here a step budget)
    train: LoopSpec = Field(default_factory=lambda: LoopSpec(steps=200, batch_size=16, lr=2e-5))
    # stage 2 (the paper: batch 100, one epoch)
    top_k: int = Field(5, ge=2)
    judge: Literal["pairwise", "ql-pmi"] = "pairwise"
    # Each query brings its top_k pages with gradient: 8 queries x top 3 of dense multi-chunk pages took 9.6 GB on CPU
    # (killed for memory on a 24 GB machine); 4 x 3 fits in about 4 GB.
    stage2: LoopSpec = Field(default_factory=lambda: LoopSpec(steps=50, batch_size=4, lr=1e-5))
    _loops = recipe_loops("train", "stage2")
    reg_weight: float = Field(0.0, ge=0)
    # optimisation
    finetune: Literal["auto", "full", "lora"] = "auto"
    lora: LoraSpec = Field(default_factory=lambda: LoraSpec(r=16, alpha=32.0, dropout=0.0))
    seed: int = 0


def make_backend(spec: dict[str, Any]) -> Any:  # a module-level name, so tests can substitute a fake model
    from harness.synth.backends import make_backend as make

    return make(spec)


def _as_image(backbone: Backbone, config: Config) -> bool:
    return config.synthetic_as == "image" or (config.synthetic_as == "auto" and backbone.family != "ocr-text")


def _stage1_key(backbone_fp: str, config: Config, corpus: TrainingCorpus) -> str:
    fields = {k: v for k, v in config.model_dump(mode="json").items() if k not in STAGE2_KEYS}
    blob = json.dumps([backbone_fp, fields, corpus.name, len(corpus.pages), sorted(corpus.train_queries)],
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


# --- persistence ------------------------------------------------------------------------------------------------
def load_state(backbone: Backbone, folder: Path) -> None:
    """Full weights saved by ``save_final`` into a backbone that keeps training (no merge, gradients on)."""
    from safetensors.torch import load_file

    backbone.load_state_dict(load_file(str(folder / FULL_FILE)), strict=True)


# --- stage 1 ----------------------------------------------------------------------------------------------------
def split_validation(queries: list[TrainQuery], config: Config) -> tuple[list[TrainQuery], list[TrainQuery]]:
    """(train, validation): a seeded share of the queries, grouped by gold pages (no page's queries in both)."""
    groups = sorted({tuple(q.gold) for q in queries})
    random.Random(config.seed + 3).shuffle(groups)
    held = set(groups[: round(len(groups) * config.val_fraction)])
    return [q for q in queries if tuple(q.gold) not in held], [q for q in queries if tuple(q.gold) in held]


def validator(backbone: Backbone, val: list[TrainQuery], pages: dict[str, Page], config: Config,
              corpus: TrainingCorpus | None = None) -> Any:
    if not val:
        return None
    own = sorted({g for q in val for g in q.gold})
    others = sorted(set(pages) - set(own))
    pool = own + sorted(random.Random(config.seed + 4).sample(others, max(0, min(len(others),
                                                                                config.val_pool - len(own)))))
    return PageValidator(backbone, {q.id: q.text for q in val}, [pages[i] for i in pool],
                         {q.id: {g: 1 for g in q.gold} for q in val}, corpus.docs_of(pool) if corpus else None)


def stage1_examples(queries: list[TrainQuery], pages: dict[str, Page], config: Config) -> list[Example]:
    """multi_positive: gold, verified synthetic passage and CoT are all positives (the paper's form). single_target:
    the gold alone is the target, the other synthetic texts stand among the negatives (the seed code's form)."""
    out = []
    for tq in queries:
        gold = [pages[g] for g in tq.gold]
        passages, negatives = (tq.positives, list(tq.negatives)) if config.use_passages else ([], [])
        extra = passages + ([tq.cot] if tq.cot else [])
        if config.loss == "multi_positive":
            out.append(Example(tq.text, gold + extra, negatives))
        else:
            out.append(Example(tq.text, gold[:1], extra + negatives))
    return out


def train_stage1(backbone: Backbone, queries: list[TrainQuery], val: list[TrainQuery], pages: dict[str, Page],
                 config: Config, out_dir: Path, corpus: TrainingCorpus | None = None) -> LoopResult:
    objective = ContrastiveObjective(backbone, "infonce", config.temperature)
    return run_loop(objective, stage1_examples(queries, pages, config), ContrastiveCollator(backbone), config.train,
                    out_dir, validator(backbone, val, pages, config, corpus))


# --- the recipe -------------------------------------------------------------------------------------------------
def training_queries(backend: Any, store: Any, corpus: TrainingCorpus, config: Config,
                     report: dict[str, Any]) -> list[TrainQuery]:
    if corpus.train_queries:  # the text setting: a training split (never the evaluated one)
        ids = subsample([q for q in corpus.train_queries if corpus.train_qrels.get(q)], config.max_queries,
                        config.seed)
        report["query_source"] = "train_split"
        return [TrainQuery(q, corpus.train_queries[q], sorted(d for d, r in corpus.train_qrels[q].items() if r > 0))
                for q in ids]
    from harness.synth import operations as ops

    by_id = {p.id: p for p in corpus.pages}
    chosen = subsample(list(by_id), config.max_pages, config.seed)
    generated, rep = ops.pseudo_queries(backend, store, [by_id[i] for i in chosen], n=config.queries_per_page,
                                        kind=config.query_kind, seed=config.seed, progress=False)
    report["query_source"] = "pseudo_queries"
    report["pseudo_queries"] = rep.line()
    queries = [TrainQuery(query_id(pid, text), text, [pid]) for pid in chosen for text in generated[pid]]
    if config.query_filter == "ql-pmi":
        items = [ops.JudgeItem(q.id, q.text, by_id[q.gold[0]]) for q in queries]
        values, jrep = ops.judge_query_likelihood(backend, store, items, pmi=True, progress=False)
        kept = [q for q, v in zip(queries, values, strict=True) if v is not None and v > 0]
        report["query_filter"] = {"judge": "ql-pmi", "queries": len(queries), "kept": len(kept),
                                  "unreadable": sum(v is None for v in values), "report": jrep.line()}
        log.info("syntriever: QL-PMI filter kept %d of %d pseudo-queries", len(kept), len(queries))
        queries = kept
    return queries


def synthesize(backend: Any, store: Any, queries: list[TrainQuery], config: Config, as_image: bool,
               report: dict[str, Any]) -> None:
    if not (config.use_passages or config.use_cot):  # stage 1 trains on the gold pages alone: nothing to write
        report["verify_by"] = None
        report["synthetic"] = {"queries": len(queries), "generated": False}
        return
    from harness.synth import operations as ops
    from harness.synth.backends import GenParams

    params = GenParams(max_new_tokens=config.passage_tokens, temperature=0.7, top_p=1.0)
    verify_by = config.verify_by if config.verify_by != "auto" else ("yesno" if backend.instruct else "ql-pmi")
    samples, reps = ops.syntriever_synthesis(backend, store, {q.id: q.text for q in queries}, params=params,
                                             seed=config.seed, verify=config.verify, verify_by=verify_by,
                                             progress=False)
    report["verify_by"] = verify_by if config.verify else None
    counts = {"queries": len(queries), "positives_kept": 0, "negatives": 0, "cot": 0}
    for tq, s in zip(queries, samples, strict=True):
        assert tq.id == s.query_id
        tq.positives = [passage_page(f"{tq.id}:pos{i}", t, as_image) for i, t in enumerate(s.positives)]
        tq.negatives = [passage_page(f"{tq.id}:neg{i}", t, as_image) for i, t in enumerate(s.negatives)]
        if config.use_cot and s.cot:
            tq.cot = passage_page(f"{tq.id}:cot", s.cot, as_image)
        counts["positives_kept"] += len(s.positives)
        counts["negatives"] += len(s.negatives)
        counts["cot"] += tq.cot is not None
    report["synthesis_reports"] = [r.line() for r in reps]
    report["synthetic"] = counts


def _stage_lines(path: Path, stage: int) -> list[str]:
    """A stage's loss lines, tagged with the stage, for the run's combined loss.jsonl."""
    if not path.is_file():
        return []
    return [json.dumps({**json.loads(line), "stage": stage}) for line in path.read_text().splitlines() if line]


def _llm(backend: CountingBackend, before: tuple[int, int], store: SynthStore, used_from: int,
         seconds: float) -> dict[str, Any]:
    """The model calls behind a stage's data (made now or served from the store) and the new ones this run made."""
    calls, tokens = store.cost(used_from)
    new_calls, new_tokens = backend.snapshot()
    return {"llm_calls": calls, "llm_tokens": tokens, "llm_new": new_calls - before[0],
            "llm_new_tokens": new_tokens - before[1], "wall_s": round(seconds, 3)}


def train(backbone: Backbone, corpus: TrainingCorpus, config: Config, out_dir: Path) -> Path:
    from harness.synth.store import SynthStore

    start = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    mode, as_image = finetune_mode(backbone, config.finetune), _as_image(backbone, config)
    fp0 = backbone.fingerprint()
    stage1_dir = out_dir.parent / f"stage1-{_stage1_key(fp0, config, corpus)}"
    store_path = Path(config.store) if config.store else out_dir.parent.parent / "synth" / f"{corpus.name}.jsonl"
    store_path.parent.mkdir(parents=True, exist_ok=True)
    backend = CountingBackend(make_backend(config.backend))
    pages = {p.id: p for p in corpus.pages}
    record: dict[str, Any] = {"recipe": "syntriever", "stages_trained": config.stages, "stage1_loss": config.loss,
                              "finetune": mode, "synthetic_as": "image" if as_image else "text",
                              "temperature": config.temperature, "judge": config.judge if config.stages == 2 else None,
                              "reg_weight": config.reg_weight, "backend": backend.describe(),
                              "store": str(store_path.resolve())}
    loss_lines: list[str] = []
    targets = prepare_finetune(backbone, mode, config.lora)
    if hasattr(backbone, "page_texts") and any(p.image is not None for p in pages.values()):
        # the OCR-text backbone reads a page as its OCR text: resolve it once (cached) instead of at every step
        ids = list(pages)
        pages = {i: Page(i, text=t) for i, t in zip(ids, backbone.page_texts([pages[i] for i in ids]), strict=True)}
    with SynthStore(store_path) as store:
        # --- stage 1 (cached: a stages-2 run after a stages-1 run reuses it) ---
        done1 = stage1_dir / "stage1.json"
        if done1.is_file() and (stage1_dir / "final").is_dir():
            s1 = json.loads(done1.read_text())
            if mode == "lora":
                load_trainable(backbone, stage1_dir / "final")
            else:
                load_state(backbone, stage1_dir / "final")
            queries = [TrainQuery(q["id"], q["text"], q["gold"]) for q in s1["queries"]]
            loss_lines += _stage_lines(stage1_dir / "loss.jsonl", 1)
            s1["reused"] = True
        else:
            t = time.perf_counter()
            before, used_from = backend.snapshot(), len(store.used)
            info: dict[str, Any] = {}
            queries = training_queries(backend, store, corpus, config, info)
            queries = [q for q in queries if all(g in pages for g in q.gold) and q.gold]
            if not queries:
                raise ValueError(f"syntriever: no training query with a gold page in corpus {corpus.name!r}")
            synthesize(backend, store, queries, config, as_image, info)
            synth = _llm(backend, before, store, used_from, time.perf_counter() - t)
            t = time.perf_counter()
            train_q, val_q = split_validation(queries, config)
            result = train_stage1(backbone, train_q, val_q, pages, config, stage1_dir, corpus)
            loss_lines += _stage_lines(stage1_dir / "loss.jsonl", 1)
            s1 = {"synthesis": synth, "train_s": round(time.perf_counter() - t, 3), "steps": result.steps,
                  "train": result.record(), "examples": len(train_q), "validation_queries": len(val_q), **info,
                  "queries": [{"id": q.id, "text": q.text, "gold": q.gold} for q in queries]}
            save_final(backbone, stage1_dir / "final", config.lora if mode == "lora" else None, targets)
            atomic_write_json(done1, s1)
            s1["reused"] = False
        record["stage1"] = {k: v for k, v in s1.items() if k != "queries"}
        record["stage1"]["queries_file"] = str(done1.resolve())
        examples = s1["examples"]
        # --- stage 2 ---
        if config.stages == 2:
            corpus_pages = [pages[p.id] for p in corpus.pages]
            t = time.perf_counter()
            tops, ref = retrieve(backbone, queries, corpus_pages, config.top_k, config.temperature)
            retrieve_s = time.perf_counter() - t
            t = time.perf_counter()
            before, used_from = backend.snapshot(), len(store.used)
            prefs, reps = judge_topk(backend, store, queries, tops, corpus_pages, config.judge)
            judge = _llm(backend, before, store, used_from, time.perf_counter() - t)
            t = time.perf_counter()
            groups = stage2_groups(queries, tops, prefs, ref)
            if not groups:
                raise ValueError("syntriever: stage 2 has no query with two retrieved candidates")
            objective = AlignmentObjective(backbone, corpus_pages, config.temperature, config.reg_weight)
            train_q, val_q = split_validation(queries, config)
            held = {q.text for q in val_q}
            result2 = run_loop(objective, [g for g in groups if g.query not in held], objective.collate,
                               config.stage2, out_dir / "stage2",
                               validator(backbone, val_q, pages, config, corpus))
            loss_lines += _stage_lines(out_dir / "stage2" / "loss.jsonl", 2)
            record["stage2"] = {"retrieve_s": round(retrieve_s, 3), "judge": judge,
                                "judge_reports": [r.line() for r in reps],
                                "train_s": round(time.perf_counter() - t, 3),
                                "steps": result2.steps, "train": result2.record(), "examples": len(groups),
                                "gold_in_top_k": sum(any(corpus_pages[i].id in q.gold for i in top)
                                                     for q, top in zip(queries, tops, strict=True))}
    final = out_dir / "final"
    shutil.rmtree(final, ignore_errors=True)
    if config.stages == 1:
        shutil.copytree(stage1_dir / "final", final)
    else:
        save_final(backbone, final, config.lora if mode == "lora" else None, targets)
    s1_llm = record["stage1"]["synthesis"]
    s2_llm = record.get("stage2", {}).get("judge", {"llm_calls": 0, "llm_tokens": 0, "wall_s": 0.0})
    record["per_stage"] = {
        "stage1": {"llm_calls": s1_llm["llm_calls"], "llm_tokens": s1_llm["llm_tokens"],
                   "llm_new": s1_llm.get("llm_new", s1_llm["llm_calls"]),
                   "llm_wall_s": s1_llm["wall_s"], "train_s": record["stage1"]["train_s"]},
        **({"stage2": {"llm_calls": s2_llm["llm_calls"], "llm_tokens": s2_llm["llm_tokens"],
                       "llm_new": s2_llm.get("llm_new", s2_llm["llm_calls"]),
                       "llm_wall_s": s2_llm["wall_s"], "retrieve_s": record["stage2"]["retrieve_s"],
                       "train_s": record["stage2"]["train_s"]}} if config.stages == 2 else {}),
    }
    # Costs count everything behind the model, stage 1 included even when it was reused from the cache.
    stage1_wall = s1_llm["wall_s"] + record["stage1"]["train_s"]
    wall = (time.perf_counter() - start) + (stage1_wall if s1.get("reused") else 0.0)
    from harness.train.record import write_training_record

    loss_log = out_dir / "loss.jsonl"
    atomic_write_lines(loss_log, loss_lines)
    write_training_record(out_dir, wall_s=wall, llm_calls=s1_llm["llm_calls"] + s2_llm["llm_calls"],
                          llm_tokens=s1_llm["llm_tokens"] + s2_llm["llm_tokens"], examples=examples,
                          loss_log=str(loss_log.resolve()),
                          stages={k: v.get("train_s", 0.0) for k, v in record["per_stage"].items()}, **record)
    log.info("syntriever: trained %d stage(s) in %.0f s -> %s", config.stages, wall, out_dir)
    return out_dir
