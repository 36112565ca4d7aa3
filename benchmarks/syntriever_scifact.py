"""Syntriever on SciFact's TRAINING split by cross-validation (the test split stays held back).

The training queries are split into ``--folds`` folds (seeded); for fold f the recipe trains on (a subsample of)
the other folds' queries and qrels and the base, stage-1 and stage-2 models are scored by nDCG@10 on fold f's
queries over the whole corpus. Writes a JSON and a markdown table.

    python benchmarks/syntriever_scifact.py ../shared/data/scifact_train --train-queries 60 --eval-queries 200 \\
        --out results/syntriever_scifact_cv
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path

import pytrec_eval
import torch

import harness  # noqa: F401  (torchvision fix)
from harness.backbones import build_backbone
from harness.data.folds import split_fold
from harness.retrieval.maxsim import maxsim, pad_vectors
from harness.variants import TrainingCorpus
from models.syntriever import model as syn_model
from models.syntriever import recipe
from tasks.beir_folder import BeirFolderTask


def ndcg10(backbone, pages, queries: dict[str, str], qrels: dict[str, dict[str, int]]) -> tuple[float, float]:
    t = time.perf_counter()
    docs = pad_vectors(backbone.encode_pages(pages, batch_size=32))
    ids = list(queries)
    q = pad_vectors(backbone.encode_queries([queries[i] for i in ids]))
    scores = maxsim(q, docs)
    run = {}
    for row, qid in zip(scores, ids, strict=True):
        val, idx = row.topk(100)
        run[qid] = {pages[i].id: float(v) for v, i in zip(val.tolist(), idx.tolist(), strict=True)}
    ev = pytrec_eval.RelevanceEvaluator({q: qrels[q] for q in ids}, {"ndcg_cut.10"})
    res = ev.evaluate(run)
    return statistics.mean(r["ndcg_cut_10"] for r in res.values()), time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder")
    ap.add_argument("--split", default="train")
    ap.add_argument("--folds", type=int, default=2)
    ap.add_argument("--fold", type=int, default=0)
    ap.add_argument("--train-queries", type=int, default=60)
    ap.add_argument("--eval-queries", type=int, default=200)
    ap.add_argument("--max-chunks", type=int, default=1)
    ap.add_argument("--corpus-sample", type=int, default=None,
                    help="keep every gold document of the sampled queries plus this many others (speed; default all)")
    ap.add_argument("--set", action="append", default=[], help="recipe config key=JSON value")
    ap.add_argument("--out", default="results/syntriever_scifact_cv")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(2)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    task = BeirFolderTask(args.folder, split=args.split)
    data = task.data
    pages = [recipe.Page(i, text=" ".join(x for x in (d["title"], d["text"]) if x) or None)
             for i, d in data.corpus.items()]
    train_ids, eval_ids, keep = split_fold(data.qrels, [p.id for p in pages], folds=args.folds, fold=args.fold,
                                           train_queries=args.train_queries, eval_queries=args.eval_queries,
                                           corpus_sample=args.corpus_sample, seed=args.seed)
    if keep is not None:
        pages = [p for p in pages if p.id in keep]
    corpus = TrainingCorpus(f"{task.metadata.name}-{args.split}-cv{args.folds}.{args.fold}", pages,
                            {q: data.queries[q] for q in train_ids}, {q: dict(data.qrels[q]) for q in train_ids})
    eval_q = {q: data.queries[q] for q in eval_ids}
    eval_qrels = {q: dict(data.qrels[q]) for q in eval_ids}
    overrides = {k: json.loads(v) for k, v in (s.split("=", 1) for s in args.set)}
    bconf = {"mode": "pooled", "max_chunks": args.max_chunks}
    rows = []
    base = build_backbone("ocr-text", bconf)
    score, secs = ndcg10(base, pages, eval_q, eval_qrels)
    rows.append({"model": "base", "ndcg@10": score, "eval_s": secs})
    logging.info("base nDCG@10 %.4f (%.0f s)", score, secs)
    ckroot = out / "checkpoints" / "syntriever" / base.describe()
    for stages in (1, 2):
        config = recipe.Config(**{"stages": stages, **overrides})
        backbone = build_backbone("ocr-text", bconf)
        ck = recipe.train(backbone, corpus, config, ckroot / f"{corpus.name}-s{stages}")
        encoder = syn_model.load_model(backbone, ck)
        score, secs = ndcg10(encoder.model, pages, eval_q, eval_qrels)
        record = json.loads((ck / "training.json").read_text())
        rows.append({"model": f"syntriever-s{stages}", "ndcg@10": score, "eval_s": secs,
                     "training": {k: record[k] for k in ("wall_s", "llm_calls", "llm_tokens", "examples",
                                                          "per_stage", "stage1_loss", "finetune")},
                     "stage2": record.get("stage2")})
        logging.info("syntriever-s%d nDCG@10 %.4f", stages, score)
    payload = {"folder": args.folder, "split": args.split, "folds": args.folds, "fold": args.fold,
               "corpus_docs": len(pages), "corpus_sample": args.corpus_sample,
               "train_queries": len(train_ids), "eval_queries": len(eval_ids), "backbone": bconf,
               "config": recipe.Config(**overrides).model_dump(mode="json"), "rows": rows}
    (out / f"fold{args.fold}.json").write_text(json.dumps(payload, indent=2, default=str))
    lines = ["| model | nDCG@10 (held-out fold) | LLM calls | LLM tokens | training wall s |", "|---|---|---|---|---|"]
    for r in rows:
        t = r.get("training", {})
        lines.append(f"| {r['model']} | {100 * r['ndcg@10']:.2f} | {t.get('llm_calls', 0)} | {t.get('llm_tokens', 0)} "
                     f"| {t.get('wall_s', 0):.0f} |")
    (out / f"fold{args.fold}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
