"""Seeded cross-validation folds of a BEIR split's judged queries, and a fold written as a BEIR folder (train
qrels = the other folds' queries, test qrels = this fold's), so a run can train on one and evaluate the other."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from harness.data.beir import read_qrels


def split_fold(qrels: dict[str, dict[str, int]], doc_ids: list[str], *, folds: int, fold: int,
               train_queries: int | None, eval_queries: int | None, corpus_sample: int | None,
               seed: int) -> tuple[list[str], list[str], set[str] | None]:
    """Fold ``fold`` of ``folds`` over the queries of ``qrels`` (seeded): (training query ids, held-out query ids,
    documents to keep). Training ids are a sample of the other folds' queries, held-out ids a sample of this fold's
    (None: all). Documents: None (the whole corpus), or every gold document of the chosen queries plus
    ``corpus_sample`` others. benchmarks/syntriever_scifact.py and ``build_fold`` cut the same folds."""
    if not 0 <= fold < folds:
        raise ValueError(f"fold {fold} is not in 0..{folds - 1}")
    qids = sorted(qrels)
    random.Random(seed).shuffle(qids)
    held = {q for i, q in enumerate(qids) if i % folds == fold}
    rest = [q for q in qids if q not in held]
    n_train = len(rest) if train_queries is None else min(train_queries, len(rest))
    n_eval = len(held) if eval_queries is None else min(eval_queries, len(held))
    train_ids = sorted(random.Random(seed + 1).sample(rest, n_train))
    eval_ids = sorted(random.Random(seed + 2).sample(sorted(held), n_eval))
    if corpus_sample is None:
        return train_ids, eval_ids, None
    gold = {d for q in train_ids + eval_ids for d in qrels[q]}
    others = sorted(d for d in doc_ids if d not in gold)
    keep = gold | set(random.Random(seed + 3).sample(others, min(corpus_sample, len(others))))
    return train_ids, eval_ids, keep


def write_qrels(path: Path, qrels: dict[str, dict[str, int]], ids: list[str]) -> None:
    rows = [f"{q}\t{d}\t{s}" for q in ids for d, s in sorted(qrels[q].items())]
    path.write_text("\n".join(["query-id\tcorpus-id\tscore", *rows]) + "\n")


def build_fold(source: Path, out: Path, *, folds: int, fold: int, train_queries: int | None,
               eval_queries: int | None, corpus_sample: int | None, seed: int) -> tuple[Path, dict[str, Any]]:
    """Write the fold's BEIR folder; return it and a summary (also written to its fold.json)."""
    qrels = read_qrels(source / "qrels" / "train.tsv")
    doc_ids = [json.loads(line)["_id"] for line in (source / "corpus.jsonl").read_text().splitlines() if line]
    train_ids, eval_ids, keep = split_fold(qrels, doc_ids, folds=folds, fold=fold, train_queries=train_queries,
                                           eval_queries=eval_queries, corpus_sample=corpus_sample, seed=seed)
    folder = out / f"scifact-cv{folds}-fold{fold}"
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    corpus = folder / "corpus.jsonl"
    corpus.unlink(missing_ok=True)
    if keep is None:
        corpus.symlink_to((source / "corpus.jsonl").resolve())
    else:
        lines = (source / "corpus.jsonl").read_text().splitlines()
        corpus.write_text("".join(x + "\n" for x in lines if x and json.loads(x)["_id"] in keep))
    wanted = set(train_ids) | set(eval_ids)
    queries = [x for x in (source / "queries.jsonl").read_text().splitlines() if x and json.loads(x)["_id"] in wanted]
    (folder / "queries.jsonl").write_text("".join(x + "\n" for x in queries))
    write_qrels(folder / "qrels" / "train.tsv", qrels, train_ids)
    write_qrels(folder / "qrels" / "test.tsv", qrels, eval_ids)
    summary = {"source": str(source.resolve()), "folds": folds, "fold": fold, "seed": seed,
               "train_queries": len(train_ids), "eval_queries": len(eval_ids),
               "corpus_docs": len(keep) if keep is not None else len(doc_ids), "corpus_sample": corpus_sample}
    (folder / "fold.json").write_text(json.dumps(summary, indent=2) + "\n")
    return folder, summary
