"""ColIntern rows on one task: base vs colintern-e1 (epoch 1, in-batch) vs colintern-mined (epoch 2 with mined
hard negatives), all over the same frozen backbone, trained on the task's pages only (pseudo-queries from the
synthetic-data engine; evaluation queries are never seen), then the leaderboard of the results folder.

    python benchmarks/colintern_rows.py --task generated --results results/colintern_generated
    python benchmarks/colintern_rows.py --task '{path: ../shared/data/mmlongbench_dev, candidates_by: doc_id}' \
        --results results/colintern_mmlongbench --max-pages 60

Each trained row's record carries its variant label (colintern-e1 / colintern-mined), so the leaderboard shows
three rows per backbone. Prints trainable vs total parameters and head-training examples/s. The two trained rows
differ only in epochs/mine_negatives, so the mined row resumes from the e1 row's end-of-epoch-1 checkpoint (its
``wall_s`` counts the e1 run's share, ``run_wall_s`` its own process; ``head_train_s`` counts epoch 1 too).
The ocr-text backbone gets one shared head by default; ``--set shared_head=false`` gives the earlier two-head
rows, ``--set 'lora={r: 16, alpha: 32}'`` adds LoRA on the encoder.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import yaml

from harness.config import BackboneSpec, VariantSpec
from harness.evaluate.runner import evaluate_model
from harness.pipeline import build_model, set_seed
from harness.variants import get_variant
from tasks.registry import resolve_task


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="generated", help="task name or YAML mapping, as in a run config")
    ap.add_argument("--backbone", default="{family: ocr-text, config: {mode: multi}}", help="YAML BackboneSpec")
    ap.add_argument("--results", default="results/colintern")
    ap.add_argument("--max-pages", type=int, default=30)
    ap.add_argument("--queries-per-page", type=int, default=1)
    ap.add_argument("--epochs-mined", type=int, default=2)
    ap.add_argument("--negatives", type=int, default=20)
    ap.add_argument("--set", action="append", default=[], help="extra colintern config KEY=YAML")
    args = ap.parse_args(argv)
    task_spec = yaml.safe_load(args.task) if args.task.strip().startswith("{") else args.task
    bspec = BackboneSpec(**yaml.safe_load(args.backbone))
    task = resolve_task(task_spec)[0]
    results = Path(args.results)
    extra = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}
    common = {"max_pages": args.max_pages, "queries_per_page": args.queries_per_page, "negatives": args.negatives,
              **extra}
    rows = [("base", {}), ("colintern", {**common, "epochs": 1, "mine_negatives": False}),
            ("colintern", {**common, "epochs": args.epochs_mined, "mine_negatives": True})]
    report = []
    for name, config in rows:
        set_seed(0)
        variant = get_variant(name)
        started = time.perf_counter()
        encoder = build_model(variant, bspec, VariantSpec(name=name, config=config), task if name != "base" else None,
                              where=name, backbone_where="backbone", checkpoints=results.parent / "checkpoints")
        label = getattr(encoder, "variant_label", None) or variant.name
        outcome = evaluate_model(encoder, [task], results, variant=label,
                                 backbone={"family": encoder.model.family, "tag": encoder.model.describe(),
                                           "config": encoder.model.config.model_dump(mode="json"), "index": 0},
                                 run_config={"run": "colintern_rows", "variant_config": config,
                                             "train_corpus": task.metadata.name if name != "base" else None})[0]
        training = json.loads((encoder.checkpoint / "training.json").read_text()) if encoder.checkpoint else {}
        report.append({"row": label, "score": round(100 * outcome.main_score, 2), "metric": outcome.main_score_name,
                       "seconds": round(time.perf_counter() - started, 1),
                       **{k: training.get(k) for k in ("wall_s", "llm_calls", "examples", "steps", "feature_s",
                                                       "head_train_s", "examples_per_s", "trainable_parameters",
                                                       "total_parameters", "shared_head", "resumed_from")
                          if training}})
        print(json.dumps(report[-1]), flush=True)
    print("| row | " + task.metadata.name + " | train wall s | LLM calls | examples | trainable / total params "
          "| head-train examples/s |")
    print("|---|---|---|---|---|---|---|")
    for r in report:
        params = f"{r['trainable_parameters']:,} / {r['total_parameters']:,}" if "trainable_parameters" in r else "-"
        print(f"| {r['row']} | {r['score']} | {r.get('wall_s', 0)} | {r.get('llm_calls', 0)} "
              f"| {r.get('examples', '-')} | {params} | {r.get('examples_per_s', '-')} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
