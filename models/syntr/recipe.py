"""SynTR: fine-tune a retriever on VLM/LLM pseudo-queries of an unlabeled page corpus (RECIPES.md section 1).

1. sample pages (seeded) and write ``queries_per_page`` pseudo-queries each (specific or general prompt); the
   source page is the query's pseudo-positive;
2. rank every corpus page for each query with the base backbone (plus optional extra rankers, fused with
   reciprocal rank fusion);
3. judge the top-m pages in rank order until ``n_negatives`` hard negatives are found (Not relevant ->
   negative, Highly -> extra positive when enabled, Somewhat -> dropped); the source page is judged too, and a
   query whose own page is judged not relevant is dropped (a conflict: no trustworthy positive);
4. split train/val/test by source page (no page and no query in two splits);
5. LoRA fine-tune on the shared loop (``harness.train.loop``: a budget of optimizer steps, warmup and cosine decay,
   validation nDCG@10 of the held-out pseudo-queries over a held-out page pool for the chosen checkpoint), with the
   seed's pairwise loss or InfoNCE on evaluation-exact MaxSim; a query's negatives are its judged ones plus the
   batch's other pages (no random filler: a random page at temperature 0.02 gives no gradient). Report nDCG@10 of
   the held-out test pseudo-queries before and after.
Every model output goes to a SynthStore (``store``, default ``<out_dir>/synth.jsonl``): a rerun serves them and
resumes training; recipes pointed at one store share the pseudo-queries of the same pages and settings.
Under torchrun, rank 0 alone runs steps 1-4 and writes ``examples.jsonl``; every rank trains on those examples
(the Trainer shards them), and rank 0 writes ``training.json``.

Score judges (``ql-pmi``, the engine's default and the one that beats chance with the packaged 270M model, and
``ql``) give numbers, not labels: a page is "highly" relevant when it scores within ``pos_margin`` of the
source page, "not" when it scores more than ``neg_margin`` below it. ``yesno``: P(yes) >= 0.5 is highly,
else not. ``graded``: the seed's three-level prompt.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from harness.backbones import Backbone, Page, build_backbone
from harness.evaluate.metrics import per_query_scores
from harness.io import atomic_write_text
from harness.train import LoraSpec, Stages, attach_lora, write_training_record
from harness.train.loop import LoopSpec, recipe_loops, run_loop
from harness.train.lora import save_trainable
from harness.train.objectives import ContrastiveCollator, ContrastiveObjective, Example, PageValidator
from harness.train.objectives import rank as rank_pages
from harness.train.record import TRAINING_FILE, export_backbone
from harness.variants import TrainingCorpus

log = logging.getLogger(__name__)
TRAINS = True
JUDGES = ("ql-pmi", "ql", "yesno", "graded")


def make_backend(spec: dict[str, Any]) -> Any:  # a module attribute, so tests can substitute a fake model
    from harness.synth.backends import make_backend as make

    return make(spec)


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # 1. pseudo-queries
    pages: int | None = Field(400, ge=1)  # pages sampled from the corpus (seed 42 in the paper); None: all
    queries_per_page: int = Field(3, ge=1)
    prompt: Literal["general", "specific"] = "general"  # ablation (Table 1)
    max_new_tokens: int = Field(48, ge=4)
    backend: dict[str, Any] = Field(default_factory=dict)  # harness.synth BackendSpec; {}: packaged Gemma 3 270M
    store: str | None = None  # SynthStore JSONL shared with other recipes; default <out_dir>/synth.jsonl
    # 2. ranking: extra rankers [{family, config}] fused with the base backbone by reciprocal rank fusion
    rankers: list[dict[str, Any]] = Field(default_factory=list)
    rrf_k: int = Field(60, ge=1)
    # 3. judging
    judge: Literal["ql-pmi", "ql", "yesno", "graded"] = "ql-pmi"
    top_m: int = Field(20, ge=1)
    # ablation: judged hard negatives, random pages, or none (the source page is still judged, as a filter on the
    # query, and the batch's other pages are the negatives: the cheapest setting, one judge call per query)
    negatives: Literal["judged", "random", "none"] = "judged"
    n_negatives: int = Field(3, ge=1)  # ablation: number of negatives per query
    extra_positives: bool = False  # ablation: pages judged highly relevant become extra positives
    pos_margin: float = Field(0.1, ge=0)  # score judges: within this of the source page's score -> positive
    neg_margin: float = Field(0.5, ge=0)  # score judges: this far below the source page -> negative
    # 4. split (fractions of source pages)
    val_fraction: float = Field(0.1, ge=0, lt=1)
    test_fraction: float = Field(0.1, ge=0, lt=1)
    seed: int = 42
    # 5. fine-tuning (the seed: LoRA r 128, effective batch 8, lr 2e-4, ColbertPairwiseNegativeCELoss)
    lora: LoraSpec = Field(default_factory=LoraSpec)
    loss: Literal["pairwise", "infonce"] = "pairwise"
    temperature: float = Field(0.02, gt=0)
    val_pool: int = Field(100, ge=1)  # pages the validation queries are ranked over (their own + a seeded sample)
    train: LoopSpec = Field(default_factory=lambda: LoopSpec(steps=300, batch_size=8, lr=2e-4))
    _loops = recipe_loops("train")


EXAMPLES_FILE, GENERATED_FILE = "examples.jsonl", "examples.done"


def train(backbone: Backbone, corpus: TrainingCorpus, config: Config, out_dir: Path) -> Path | None:
    """Under torchrun (or any launcher that sets WORLD_SIZE), rank 0 alone calls the LLM, ranks, judges and writes
    ``examples.jsonl``; every rank then reads the same examples back (the Trainer's sampler shards them by index,
    so all ranks need the same list in the same order), trains, and only rank 0 writes the record and exports."""
    out_dir = Path(out_dir)
    if (out_dir / TRAINING_FILE).is_file() and (out_dir / "final" / "trainable.safetensors").is_file():
        log.info("syntr: %s already trained; reusing it", out_dir)
        return out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    stages = Stages()
    pages = {p.id: p for p in corpus.pages}
    ids = sorted(pages)
    rank, world = _start_processes(out_dir)
    gen: dict[str, Any] = {}
    with _failure_marker(out_dir, rank, world):
        if rank == 0:
            gen = _generate(backbone, config, out_dir, stages, pages, ids)
        else:
            # Polling, not a collective: generation can outlast the process group's timeout (30 minutes).
            _wait_for(out_dir / GENERATED_FILE)
        queries, examples, qrels = _read_examples(out_dir / EXAMPLES_FILE, pages)
        all_pages = [pages[i] for i in ids]
        if hasattr(backbone, "page_texts"):
            # OCR-text backbones read a page as its OCR text: resolve it once (cached by the ranking step) instead of
            # re-hashing every page image at every training step and evaluation. The inputs are identical.
            texts = dict(zip(ids, backbone.page_texts(all_pages), strict=True))
            pages = {i: Page(i, text=texts[i]) for i in ids}
            all_pages = [pages[i] for i in ids]
            for split_examples in examples.values():
                for ex in split_examples:
                    ex.positives = [pages[p.id] for p in ex.positives]
                    ex.negatives = [pages[n.id] for n in ex.negatives]
        test_q = {q: queries[q] for q in qrels["test"]}
        val_q = {q: queries[q] for q in qrels["val"]}
        targets = attach_lora(backbone, config.lora)
        validator = None
        if val_q:
            own = {p for q in qrels["val"] for p in qrels["val"][q]}
            others = [i for i in ids if i not in own]
            pool = sorted(own) + sorted(random.Random(config.seed + 2).sample(others, max(0, min(
                len(others), config.val_pool - len(own)))))
            validator = PageValidator(backbone, val_q, [pages[i] for i in pool], qrels["val"], corpus.docs_of(pool))
        with stages("train"):
            objective = ContrastiveObjective(backbone, config.loss, config.temperature)
            result = run_loop(objective, examples["train"], ContrastiveCollator(backbone), config.train, out_dir,
                              validator)
        if rank != 0:
            _wait_for(out_dir / TRAINING_FILE)  # returns with the checkpoint folder complete, as on rank 0
            return out_dir
        ndcg_base = _ndcg_from_lists(gen["base_lists"], qrels["test"]) if test_q else None
        with stages("test_eval"):
            ndcg_trained = _ndcg_from_lists(rank_pages(backbone, all_pages, test_q, 10), qrels["test"]) \
                if test_q else None
        with stages("export"):
            save_trainable(backbone, out_dir / "final", config.lora, targets)
            export_backbone(backbone, out_dir / "backbone")
        write_training_record(
            out_dir, wall_s=stages.total(), llm_calls=gen["llm_calls"], llm_tokens=gen["llm_tokens"],
            examples=len(examples["train"]), loss_log=result.loss_log, stages=stages.seconds,
            llm_calls_new=gen["llm_new"], judge=config.judge, backend=gen["backend"], negatives=config.negatives,
            prompt=config.prompt, loss=config.loss, train=result.record(),
            test_ndcg_at_10={"base": ndcg_base, "syntr": ndcg_trained}, processes=world, notes=gen["notes"])
    return out_dir


def _generate(backbone: Backbone, config: Config, out_dir: Path, stages: Stages, pages: dict[str, Page],
              ids: list[str]) -> dict[str, Any]:
    """Steps 1-4 (rank 0 only): queries, ranking, judging, split; writes ``examples.jsonl`` and the done marker."""
    from harness.synth.operations import QUERY_PARAMS, pseudo_queries
    from harness.synth.store import SynthStore

    rng = random.Random(config.seed)
    sampled = sorted(rng.sample(ids, min(config.pages, len(ids)))) if config.pages else ids
    notes: dict[str, Any] = {}
    with SynthStore(Path(config.store) if config.store else out_dir / "synth.jsonl") as store:
        backend = make_backend(config.backend)
        with stages("queries"):
            params = QUERY_PARAMS.model_copy(update={"max_new_tokens": config.max_new_tokens})
            by_page, qreport = pseudo_queries(backend, store, [pages[i] for i in sampled], n=config.queries_per_page,
                                              kind=config.prompt, params=params, seed=config.seed, progress=False)
        queries = {f"{pid}#q{i}": q for pid, qs in by_page.items() for i, q in enumerate(qs)}
        source = {qid: qid.rsplit("#q", 1)[0] for qid in queries}
        notes["queries"] = {"pages": len(sampled), "queries": len(queries), **qreport.notes}
        with stages("rank"):
            ranked = rank_fused(backbone, config, [pages[i] for i in ids], queries)
        with stages("judge"):
            labels, jreport = judge_queries(backend, store, config, queries, source, ranked, pages, rng)
        # The model calls behind this training: the records this run used, made now or served from the store
        # (a shared store also holds other recipes' and other settings' calls, which do not count).
        calls, tokens = store.cost()
        llm = {"llm_calls": calls, "llm_new": store.written, "llm_tokens": tokens}
        notes["judging"] = jreport
    # 4. split by source page
    with_queries = sorted({source[q] for q in labels})
    random.Random(config.seed + 1).shuffle(with_queries)
    n_val = round(len(with_queries) * config.val_fraction)
    n_test = round(len(with_queries) * config.test_fraction)
    split_of = {pid: "val" if i < n_val else "test" if i < n_val + n_test else "train"
                for i, pid in enumerate(with_queries)}
    rows = {s: [{"split": s, "query_id": qid, "query": queries[qid], "positives": pos, "negatives": neg}
                for qid, (pos, neg) in labels.items() if split_of[source[qid]] == s] for s in ("train", "val", "test")}
    notes["split"] = {s: {"pages": sum(1 for v in split_of.values() if v == s), "queries": len(r),
                          "examples": sum(len(x["positives"]) for x in r)} for s, r in rows.items()}
    # Positives in judged order (the source page first): every rank rebuilds the same examples from this file.
    atomic_write_text(out_dir / EXAMPLES_FILE, "".join(json.dumps(r) + "\n" for s in rows for r in rows[s]))
    if not rows["train"]:
        raise RuntimeError(f"syntr: no training examples survived judging ({notes}); more pages or another judge")
    atomic_write_text(out_dir / GENERATED_FILE, json.dumps({"ok": True}))
    return {**llm, "notes": notes, "backend": backend.describe(), "base_lists": ranked}


def _read_examples(path: Path, pages: dict[str, Page]) -> tuple[dict[str, str], dict[str, list[Example]],
                                                                 dict[str, dict[str, dict[str, int]]]]:
    """``examples.jsonl`` -> queries, examples per split (one per positive) and qrels per split."""
    queries: dict[str, str] = {}
    examples: dict[str, list[Example]] = {"train": [], "val": [], "test": []}
    qrels: dict[str, dict[str, dict[str, int]]] = {"train": {}, "val": {}, "test": {}}
    for line in path.read_text().splitlines():
        r = json.loads(line)
        qid, split = r["query_id"], r["split"]
        queries[qid] = r["query"]
        qrels[split][qid] = {p: 1 for p in r["positives"]}
        examples[split].append(Example(r["query"], [pages[p] for p in r["positives"]],
                                       [pages[n] for n in r["negatives"]]))
    return queries, examples, qrels


def _start_processes(out_dir: Path) -> tuple[int, int]:
    """(rank, world size). Several processes: rank 0 removes a failed or interrupted run's markers, then all meet
    (so no rank reads a stale marker). The process group is the one the Trainer reuses later (accelerate's
    PartialState, as TrainingArguments creates it, with its default 30-minute timeout)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    from datetime import timedelta

    import torch
    from accelerate import PartialState

    cpu = not torch.cuda.is_available() or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true")
    state = PartialState(cpu=cpu, timeout=timedelta(seconds=1800))
    if state.is_main_process:
        for name in (GENERATED_FILE, TRAINING_FILE):
            (out_dir / name).unlink(missing_ok=True)
    state.wait_for_everyone()
    return state.process_index, state.num_processes


@contextmanager
def _failure_marker(out_dir: Path, rank: int, world: int) -> Iterator[None]:
    """A failure on rank 0 tells the waiting ranks (they poll for files, so they would otherwise wait forever
    unless the launcher kills them)."""
    try:
        yield
    except BaseException as exc:
        if rank == 0 and world > 1:
            atomic_write_text(out_dir / GENERATED_FILE, json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
        raise


def _wait_for(path: Path, poll_s: float = 1.0) -> None:
    marker = path.parent / GENERATED_FILE
    while not path.is_file():
        if marker.is_file() and "error" in (payload := json.loads(marker.read_text() or "{}")):
            raise RuntimeError(f"syntr: rank 0 failed: {payload['error']}")
        time.sleep(poll_s)



def rank_fused(backbone: Backbone, config: Config, pages: Sequence[Page],
               queries: dict[str, str]) -> dict[str, list[tuple[str, float]]]:
    """The base backbone's ranking, or the reciprocal rank fusion (1 / (k + rank)) of it and ``rankers``."""
    lists = [rank_pages(backbone, pages, queries)]
    for spec in config.rankers:
        other = build_backbone(spec["family"], spec.get("config") or {}, where="syntr.rankers")
        lists.append(rank_pages(other, pages, queries))
        del other
    return lists[0] if len(lists) == 1 else rrf(lists, config.rrf_k)


def rrf(lists: Sequence[dict[str, list[tuple[str, float]]]], k: int = 60) -> dict[str, list[tuple[str, float]]]:
    """Reciprocal rank fusion: a page scores sum over rankings of 1 / (k + its 1-based rank); best first (ties in
    first-seen order). A page missing from a ranking gets nothing from it."""
    fused: dict[str, list[tuple[str, float]]] = {}
    for qid in lists[0]:
        score: dict[str, float] = {}
        for ranking in lists:
            for r, (pid, _) in enumerate(ranking[qid]):
                score[pid] = score.get(pid, 0.0) + 1.0 / (k + r + 1)
        fused[qid] = sorted(score.items(), key=lambda x: -x[1])
    return fused


def _judge_fn(backend: Any, store: Any, name: str) -> Callable[[list[Any]], tuple[list[Any], Any]]:
    from harness.synth import operations as ops

    if name == "ql-pmi":
        return lambda items: ops.judge_query_likelihood(backend, store, items, pmi=True, progress=False)
    fn = {"ql": ops.judge_query_likelihood, "yesno": ops.judge_yesno, "graded": ops.judge_graded}[name]
    return lambda items: fn(backend, store, items, progress=False)


def _label(config: Config, value: Any, anchor: Any) -> str | None:
    """'highly' / 'somewhat' / 'not', or None when the judge's answer could not be read."""
    if value is None:
        return None
    if config.judge == "graded":
        return value
    if config.judge == "yesno":
        return "highly" if value >= 0.5 else "not"
    if anchor is None:  # score judges are relative to the source page's own score
        return "highly"
    if value >= anchor - config.pos_margin:
        return "highly"
    return "not" if value <= anchor - config.neg_margin else "somewhat"


def judge_queries(backend: Any, store: Any, config: Config, queries: dict[str, str], source: dict[str, str],
                  ranked: dict[str, list[tuple[str, float]]], pages: dict[str, Page],
                  rng: random.Random) -> tuple[dict[str, tuple[list[str], list[str]]], dict[str, Any]]:
    """{query id: (positive page ids, negative page ids)} for the queries that keep a positive: up to
    ``n_negatives`` judged negatives (fewer when judging found fewer: the batch's other pages are negatives too), or
    ``n_negatives`` random pages (the ablation)."""
    from harness.synth.operations import JudgeItem

    judge = _judge_fn(backend, store, config.judge)
    stats = {"judge": config.judge, "calls": 0, "new": 0, "dropped_source_not_relevant": 0,
             "dropped_unreadable": 0, "unreadable": 0, "somewhat": 0, "extra_positives": 0, "short_of_negatives": 0}

    def run(pairs: list[tuple[str, str]]) -> list[Any]:
        if not pairs:
            return []
        values, report = judge([JudgeItem(q, queries[q], pages[p]) for q, p in pairs])
        stats["calls"] += report.calls
        stats["new"] += report.new
        return values

    positives: dict[str, list[str]] = {q: [source[q]] for q in queries}
    negatives: dict[str, list[str]] = {q: [] for q in queries}
    anchor: dict[str, Any] = {}
    if config.negatives in ("judged", "none") or config.extra_positives:
        # The source page first: the anchor of score judges, and the conflict check of all judges.
        for q, v in zip(queries, run([(q, source[q]) for q in queries]), strict=True):
            anchor[q] = v
            lab = _label(config, v, None)
            if config.judge == "ql-pmi" and v is not None and v <= 0:
                lab = "not"  # the page does not make its own query more likely: no usable positive
            if lab is None:
                stats["dropped_unreadable"] += 1
                positives.pop(q)
            elif lab == "not":
                stats["dropped_source_not_relevant"] += 1
                positives.pop(q)
        # Rank order, one depth at a time for every unfinished query (greedy stop per query).
        depth_m = config.top_m if config.negatives == "judged" or config.extra_positives else 0
        candidates = {q: [p for p, _ in ranked[q][:depth_m] if p != source[q]] for q in positives}
        for depth in range(config.top_m):
            todo = [(q, c[depth]) for q, c in candidates.items() if depth < len(c)
                    and len(negatives[q]) < config.n_negatives]
            for (q, p), v in zip(todo, run(todo), strict=True):
                lab = _label(config, v, anchor.get(q))
                if lab is None:
                    stats["unreadable"] += 1  # neither positive nor negative: the next page in rank order is judged
                elif lab == "highly":
                    if config.extra_positives:
                        positives[q].append(p)
                        stats["extra_positives"] += 1
                elif lab == "not" and config.negatives == "judged":
                    negatives[q].append(p)
                elif lab == "somewhat":
                    stats["somewhat"] += 1
    out: dict[str, tuple[list[str], list[str]]] = {}
    all_ids = sorted(pages)
    for q, pos in positives.items():
        if config.negatives == "judged":
            negs = negatives[q]
            stats["short_of_negatives"] += len(negs) < config.n_negatives
        elif config.negatives == "none":
            negs = []
        else:
            pool = [p for p in all_ids if p not in pos]
            negs = rng.sample(pool, min(config.n_negatives, len(pool)))
        out[q] = (pos, negs)
    stats["kept_queries"] = len(out)
    return out, stats


def _ndcg_from_lists(ranked: dict[str, list[tuple[str, float]]], qrels: dict[str, dict[str, int]],
                     k: int = 10) -> float:
    """Mean nDCG@k with pytrec_eval (as evaluation computes it) over ranked lists."""
    run = {q: dict(ranked[q][:k]) for q in qrels}
    values = per_query_scores(qrels, run, (k,))[f"ndcg_at_{k}"]
    return sum(values.values()) / max(len(values), 1)
