"""SciFact leaderboard rows by cross-validation on the TRAINING split, through ``harness run`` and the unchanged
configs/syntriever_scifact.yaml (SciFact's test qrels are held back).

Builds fold ``--fold`` of ``--folds`` as a BEIR folder under ``--out`` (the same seeded folds as
benchmarks/syntriever_scifact.py: ``harness.data.folds.build_fold``):

    <out>/scifact-cv<K>-fold<k>/corpus.jsonl     the corpus (a symlink), or a seeded subsample (--corpus-sample)
                               /queries.jsonl    the queries of both splits below
                               /qrels/train.tsv  the other folds' queries: what the recipe trains on
                               /qrels/test.tsv   this fold's queries: what is evaluated

then writes <out>/scifact-cv<K>-fold<k>.yaml: scifact.yaml with its task and every ``train_corpus`` pointed at that
folder (test and train splits: `harness run` refuses to train on an evaluated split), ``--set`` values applied to the
syntriever variants' configs and ``--max-stages`` dropping the variants that train more stages. ``--run`` runs it
(results in ``--results``, checkpoints beside them). A full fold (the config's 100 training queries, both stages):

    python benchmarks/syntriever_scifact_cv.py /work/shared/data/scifact_train --out /tmp/scifact_cv --fold 0 --run

A quick end-to-end check:

    python benchmarks/syntriever_scifact_cv.py /work/shared/data/scifact_train --out /tmp/scifact_cv_tiny \\
        --eval-queries 8 --corpus-sample 40 --set max_queries=4 --set 'train={"steps": 2}' --max-stages 1 --run \\
        --results /tmp/scifact_cv_tiny/results
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from harness.data.folds import build_fold

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "syntriever_scifact.yaml"


def fold_config(base: dict[str, Any], folder: Path, *, task_name: str, overrides: dict[str, Any],
                max_stages: int | None, results: str | None) -> dict[str, Any]:
    """The base config with its tasks and training corpora pointed at the fold; nothing else changes."""
    config = json.loads(json.dumps(base))  # a deep copy
    config["name"] = f"{base['name']}-{task_name}"
    if results:
        config["results"] = results
    config["tasks"] = [{"path": str(folder), "split": "test", "name": task_name}]
    variants = []
    for v in config["variants"]:
        if isinstance(v, dict) and v.get("name") == "syntriever":
            if max_stages is not None and v.get("config", {}).get("stages", 2) > max_stages:
                continue
            v["train_corpus"] = {"path": str(folder), "split": "train"}
            v["config"] = {**v.get("config", {}), **overrides}
        elif isinstance(v, dict) and v.get("train_corpus"):  # the supervised reference trains on the fold's train split
            v["train_corpus"] = {"path": str(folder), "split": "train"}
        variants.append(v)
    config["variants"] = variants
    return config


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source", type=Path, help="SciFact training folder (corpus.jsonl, queries.jsonl, qrels/train.tsv)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--folds", type=int, default=2)
    ap.add_argument("--fold", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train-queries", type=int, default=None,
                    help="training queries in qrels/train.tsv (default: all of the other folds'; the config's "
                         "max_queries subsamples them again)")
    ap.add_argument("--eval-queries", type=int, default=None, help="held-out queries (default: all of the fold's)")
    ap.add_argument("--corpus-sample", type=int, default=None,
                    help="keep every gold document of the chosen queries plus this many others (default: all)")
    ap.add_argument("--config", type=Path, default=CONFIG)
    ap.add_argument("--task-name", default=None, help="the evaluated task's name (default SciFactCV<K>Fold<k>)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                    help="a syntriever config value for every syntriever variant")
    ap.add_argument("--max-stages", type=int, choices=(1, 2), default=None,
                    help="drop syntriever variants that train more stages")
    ap.add_argument("--results", default=None, help="results folder (default: the config's)")
    ap.add_argument("--run", action="store_true", help="run `harness run` on the written config")
    args = ap.parse_args()
    folder, summary = build_fold(args.source, args.out, folds=args.folds, fold=args.fold,
                                 train_queries=args.train_queries, eval_queries=args.eval_queries,
                                 corpus_sample=args.corpus_sample, seed=args.seed)
    print(json.dumps(summary))
    task_name = args.task_name or f"SciFactCV{args.folds}Fold{args.fold}"
    overrides = {k: json.loads(v) for k, v in (s.split("=", 1) for s in args.set)}
    config = fold_config(yaml.safe_load(args.config.read_text()), folder.resolve(), task_name=task_name,
                         overrides=overrides, max_stages=args.max_stages, results=args.results)
    path = args.out / f"{folder.name}.yaml"
    path.write_text(f"# written by benchmarks/syntriever_scifact_cv.py from {args.config}\n"
                    + yaml.safe_dump(config, sort_keys=False))
    cmd = [sys.executable, "-m", "harness.cli", "run", str(path)]
    print("config:", path)
    print("run:", " ".join(cmd))
    if args.run:
        sys.exit(subprocess.run(cmd).returncode)


if __name__ == "__main__":
    main()
