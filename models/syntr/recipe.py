"""SynTR: fine-tune a retriever on VLM/LLM pseudo-queries of an unlabeled page corpus (RECIPES.md section 1).

1. sample pages (seeded) and write ``queries_per_page`` pseudo-queries each (specific or general prompt); the
   source page is the query's pseudo-positive;
2. rank every corpus page for each query with the base backbone (plus optional extra rankers, fused with
   reciprocal rank fusion);
3. judge the top-m pages in rank order until ``n_negatives`` hard negatives are found (Not relevant ->
   negative, Highly -> extra positive when enabled, Somewhat -> dropped); the source page is judged too, and a
   query whose own page is judged not relevant is dropped (a conflict: no trustworthy positive);
4. split train/val/test by source page (no page and no query in two splits);
5. LoRA fine-tune through ``harness.train`` (validation loss for early stopping, validation nDCG@10 for the
   best checkpoint), and report nDCG@10 of the held-out test pseudo-queries before and after.
Every model output goes to ``<out_dir>/synth.jsonl`` (SynthStore): a rerun serves them and resumes training.

Score judges (``ql-pmi``, the engine's default and the one that beats chance with the packaged 270M model, and
``ql``) give numbers, not labels: a page is "highly" relevant when it scores within ``pos_margin`` of the
source page, "not" when it scores more than ``neg_margin`` below it. ``yesno``: P(yes) >= 0.5 is highly,
else not. ``graded``: the seed's three-level prompt.
"""

from __future__ import annotations

import json
import logging
import math
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from harness.backbones import Backbone, Page, build_backbone
from harness.train import Example, LoraSpec, Stages, TrainSpec, rank, train_retriever, write_training_record
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
    # 2. ranking: extra rankers [{family, config}] fused with the base backbone by reciprocal rank fusion
    rankers: list[dict[str, Any]] = Field(default_factory=list)
    rrf_k: int = Field(60, ge=1)
    # 3. judging
    judge: Literal["ql-pmi", "ql", "yesno", "graded"] = "ql-pmi"
    top_m: int = Field(20, ge=1)
    negatives: Literal["judged", "random"] = "judged"  # ablation: VLM-judged hard negatives or random pages
    n_negatives: int = Field(3, ge=1)  # ablation: number of negatives per query
    extra_positives: bool = False  # ablation: pages judged highly relevant become extra positives
    pos_margin: float = Field(0.1, ge=0)  # score judges: within this of the source page's score -> positive
    neg_margin: float = Field(0.5, ge=0)  # score judges: this far below the source page -> negative
    # 4. split (fractions of source pages)
    val_fraction: float = Field(0.1, ge=0, lt=1)
    test_fraction: float = Field(0.1, ge=0, lt=1)
    seed: int = 42
    # 5. fine-tuning
    lora: LoraSpec = Field(default_factory=LoraSpec)
    train: TrainSpec = Field(default_factory=TrainSpec)


def train(backbone: Backbone, corpus: TrainingCorpus, config: Config, out_dir: Path) -> Path | None:
    out_dir = Path(out_dir)
    if (out_dir / TRAINING_FILE).is_file() and (out_dir / "final" / "trainable.safetensors").is_file():
        log.info("syntr: %s already trained; reusing it", out_dir)
        return out_dir
    from harness.synth.operations import QUERY_PARAMS, pseudo_queries
    from harness.synth.store import SynthStore

    out_dir.mkdir(parents=True, exist_ok=True)
    stages = Stages()
    rng = random.Random(config.seed)
    pages = {p.id: p for p in corpus.pages}
    ids = sorted(pages)
    sampled = sorted(rng.sample(ids, min(config.pages, len(ids)))) if config.pages else ids
    notes: dict[str, Any] = {}
    with SynthStore(out_dir / "synth.jsonl") as store:
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
        base_lists = ranked
        with stages("judge"):
            labels, jreport = judge_queries(backend, store, config, queries, source, ranked, pages, rng)
        # Every record of this checkpoint's store is one model call made for this training (in this run or
        # an interrupted earlier one); the reports' counts include records served twice (PMI priors per round).
        llm_calls = len(store.records)
        llm_new = store.written
        llm_tokens = sum(int(r.get("n_prompt_tokens") or 0) + int(r.get("n_tokens") or 0)
                         for r in store.records.values())
        notes["judging"] = jreport
    # 4. split by source page
    with_queries = sorted({source[q] for q in labels})
    random.Random(config.seed + 1).shuffle(with_queries)
    n_val = round(len(with_queries) * config.val_fraction)
    n_test = round(len(with_queries) * config.test_fraction)
    split_of = {pid: "val" if i < n_val else "test" if i < n_val + n_test else "train"
                for i, pid in enumerate(with_queries)}
    examples: dict[str, list[Example]] = {"train": [], "val": [], "test": []}
    qrels: dict[str, dict[str, dict[str, int]]] = {"train": {}, "val": {}, "test": {}}
    for qid, (positives, negatives) in labels.items():
        split = split_of[source[qid]]
        qrels[split][qid] = {p: 1 for p in positives}
        for j, pid in enumerate(positives):
            examples[split].append(Example(queries[qid], pages[pid], [pages[n] for n in negatives], id=f"{qid}/{j}"))
    notes["split"] = {k: {"pages": sum(1 for s in split_of.values() if s == k), "queries": len(qrels[k]),
                          "examples": len(v)} for k, v in examples.items()}
    (out_dir / "examples.jsonl").write_text("".join(
        json.dumps({"split": s, "query_id": qid, "query": queries[qid], "positives": sorted(p),
                    "negatives": labels[qid][1]}) + "\n" for s in qrels for qid, p in qrels[s].items()))
    if not examples["train"]:
        raise RuntimeError(f"syntr: no training examples survived judging ({notes}); more pages or another judge")
    all_pages = [pages[i] for i in ids]
    if hasattr(backbone, "page_texts"):
        # OCR-text backbones read a page as its OCR text: resolve it once (cached by the ranking step) instead of
        # re-hashing every page image at every training step and evaluation. The inputs are identical.
        texts = dict(zip(ids, backbone.page_texts(all_pages), strict=True))
        pages = {i: Page(i, text=texts[i]) for i in ids}
        all_pages = [pages[i] for i in ids]
        for split_examples in examples.values():
            for ex in split_examples:
                ex.positive, ex.negatives = pages[ex.positive.id], [pages[n.id] for n in ex.negatives]
    test_q = {q: queries[q] for q in qrels["test"]}
    ndcg_base = _ndcg_from_lists(base_lists, qrels["test"]) if test_q else None
    val_q = {q: queries[q] for q in qrels["val"]}
    with stages("train"):
        result = train_retriever(backbone, examples["train"], examples["val"], out_dir, config.train, config.lora,
                                 eval_pages=all_pages, eval_queries=val_q, eval_qrels=qrels["val"])
    with stages("test_eval"):
        ndcg_trained = _ndcg_from_lists(rank(backbone, all_pages, test_q, 10), qrels["test"]) if test_q else None
    with stages("export"):
        export_backbone(backbone, out_dir / "backbone")
    write_training_record(
        out_dir, wall_s=stages.total(), llm_calls=llm_calls, llm_tokens=llm_tokens,
        examples=result.examples, loss_log=result.loss_log, stages=stages.seconds, llm_calls_new=llm_new,
        judge=config.judge, backend=backend.describe(), negatives=config.negatives, prompt=config.prompt,
        train_examples_per_s=round(result.examples_per_s, 3), train_steps=result.steps, train_epochs=result.epochs,
        best_checkpoint=result.best_checkpoint, val_ndcg_at_10=result.best_ndcg_at_10,
        test_ndcg_at_10={"base": ndcg_base, "syntr": ndcg_trained}, resumed_from=result.resumed_from,
        eval_history=result.history, notes=notes)
    return out_dir


def rank_fused(backbone: Backbone, config: Config, pages: Sequence[Page],
               queries: dict[str, str]) -> dict[str, list[tuple[str, float]]]:
    """The base backbone's ranking, or the reciprocal rank fusion (1 / (k + rank)) of it and ``rankers``."""
    lists = [rank(backbone, pages, queries)]
    for spec in config.rankers:
        other = build_backbone(spec["family"], spec.get("config") or {}, where="syntr.rankers")
        lists.append(rank(other, pages, queries))
        del other
    if len(lists) == 1:
        return lists[0]
    fused: dict[str, list[tuple[str, float]]] = {}
    for qid in queries:
        score: dict[str, float] = {}
        for ranking in lists:
            for r, (pid, _) in enumerate(ranking[qid]):
                score[pid] = score.get(pid, 0.0) + 1.0 / (config.rrf_k + r + 1)
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
    """{query id: (positive page ids, negative page ids)} for the queries that keep a positive and
    ``n_negatives`` negatives (filled with random pages outside the top-m when judging found fewer)."""
    from harness.synth.operations import JudgeItem

    judge = _judge_fn(backend, store, config.judge)
    stats = {"judge": config.judge, "calls": 0, "new": 0, "dropped_source_not_relevant": 0,
             "dropped_unreadable": 0, "somewhat": 0, "extra_positives": 0, "random_fill": 0}

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
    if config.negatives == "judged" or config.extra_positives:
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
        candidates = {q: [p for p, _ in ranked[q][: config.top_m] if p != source[q]] for q in positives}
        for depth in range(config.top_m):
            todo = [(q, c[depth]) for q, c in candidates.items() if depth < len(c)
                    and len(negatives[q]) < config.n_negatives]
            for (q, p), v in zip(todo, run(todo), strict=True):
                lab = _label(config, v, anchor.get(q))
                if lab == "highly":
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
        negs = negatives[q] if config.negatives == "judged" else []
        if len(negs) < config.n_negatives:
            top = {p for p, _ in ranked[q][: config.top_m]} if config.negatives == "judged" else set()
            pool = [p for p in all_ids if p not in pos and p not in negs and p not in top]
            fill = rng.sample(pool, min(config.n_negatives - len(negs), len(pool)))
            if config.negatives == "judged":
                stats["random_fill"] += len(fill)
            negs = negs + fill
        if len(negs) == config.n_negatives:
            out[q] = (pos, negs)
    stats["kept_queries"] = len(out)
    return out, stats


def _ndcg_from_lists(ranked: dict[str, list[tuple[str, float]]], qrels: dict[str, dict[str, int]],
                     k: int = 10) -> float:
    total = 0.0
    for qid, gains in qrels.items():
        hits = ranked[qid][:k]
        dcg = sum(gains.get(pid, 0) / math.log2(i + 2) for i, (pid, _) in enumerate(hits))
        ideal = sum(g / math.log2(i + 2) for i, g in enumerate(sorted(gains.values(), reverse=True)[:k]))
        total += dcg / ideal if ideal > 0 else 0.0
    return total / max(len(qrels), 1)
