"""Evaluate one harness model on mteb tasks: results in MTEB's format, plus a run record per task.

A finished task (its MTEB result and record both on disk, for the same model name and revision) is not
run again unless ``overwrite`` is set, so an interrupted evaluation resumes where it stopped. Everything is
written atomically (temp file + rename).
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import mteb
from mteb.abstasks import AbsTask
from mteb.cache import ResultCache

from harness.evaluate.encoder import EncodeStats, HarnessEncoder
from harness.evaluate.metrics import per_query_scores, top_k
from harness.evaluate.records import (
    atomic_write_json,
    mteb_result_path,
    record_path,
    versions,
)

log = logging.getLogger(__name__)
RUN_DEPTH = 100  # documents kept per query in the saved ranking


def training_record(encoder: HarnessEncoder) -> dict[str, Any] | None:
    """The recipe's own record (checkpoint/training.json: wall time, LLM calls, ...), if it trained."""
    checkpoint = getattr(encoder, "checkpoint", None)
    if checkpoint is None or not (Path(checkpoint) / "training.json").is_file():
        return None
    record = json.loads((Path(checkpoint) / "training.json").read_text())
    record["checkpoint"] = str(Path(checkpoint).resolve())  # relative paths inside resolve against it
    return record


@dataclass
class TaskOutcome:
    task: str
    main_score_name: str
    main_score: float
    reused: bool
    record_path: Path


def evaluate_model(encoder: HarnessEncoder, tasks: list[AbsTask], results_dir: str | Path, *,
                   variant: str, backbone: dict[str, Any], run_config: dict[str, Any] | None = None,
                   seed: int = 0, overwrite: bool = False, show_progress: bool = False) -> list[TaskOutcome]:
    results_dir = Path(results_dir)
    meta = encoder.mteb_model_meta
    outcomes = []
    for task in tasks:
        name = task.metadata.name
        result_file = mteb_result_path(results_dir, meta.name, meta.revision, name)
        rec_file = record_path(results_dir, meta.name, meta.revision, name)
        if not overwrite and result_file.is_file() and rec_file.is_file():
            record = json.loads(rec_file.read_text())
            log.info("%s on %s: finished earlier, reusing %s", meta.name, name, result_file)
            outcomes.append(TaskOutcome(name, record["main_score_name"], record["main_score"], True, rec_file))
            continue
        outcomes.append(_run_task(encoder, task, results_dir, variant=variant, backbone=backbone,
                                  run_config=run_config or {}, seed=seed, show_progress=show_progress))
    return outcomes


def _run_task(encoder: HarnessEncoder, task: AbsTask, results_dir: Path, *, variant: str,
              backbone: dict[str, Any], run_config: dict[str, Any], seed: int,
              show_progress: bool) -> TaskOutcome:
    meta, name = encoder.mteb_model_meta, task.metadata.name
    encoder.stats = EncodeStats()
    ocr = getattr(encoder.model, "_ocr", None)
    ocr_before = ocr.pages_ocred if ocr else 0
    started = time.perf_counter()
    task.load_data()  # preloaded data stays loaded after mteb.evaluate: its qrels score the per-query runs
    with tempfile.TemporaryDirectory() as tmp:
        model_result = mteb.evaluate(encoder, task, cache=None, prediction_folder=tmp,
                                     overwrite_strategy="always", show_progress_bar=show_progress)
        if not model_result.task_results:
            raise RuntimeError(f"mteb returned no result for {name}: {model_result.exceptions}")
        task_result = model_result.task_results[0]
        predictions = json.loads(next(Path(tmp).glob("*_predictions.json")).read_text())
        # Save with mteb's own writer into a scratch cache, then move files into place atomically.
        ResultCache(Path(tmp) / "cache").save_to_cache(task_result, meta)
        written = Path(tmp) / "cache" / "results"
        seconds = time.perf_counter() - started

        per_query: dict[str, Any] = {}
        runs: dict[str, Any] = {}
        for subset, splits in predictions.items():
            if subset == "mteb_model_meta":
                continue
            for split, run in splits.items():
                qrels = task.dataset[subset][split]["relevant_docs"]
                per_query[f"{subset}/{split}"] = per_query_scores(qrels, run)
                runs[f"{subset}/{split}"] = top_k(run, RUN_DEPTH)

        main_name = task.metadata.main_score
        ocr = getattr(encoder.model, "_ocr", None)
        record = {
            "model": meta.name, "revision": meta.revision, "variant": variant, "backbone": backbone,
            "task": name, "task_type": task.metadata.type, "category": task.metadata.category,
            "dataset": task.metadata.dataset, "eval_splits": task.metadata.eval_splits,
            "main_score_name": main_name, "main_score": float(task_result.get_score()),
            "seed": seed, "config": run_config, "versions": versions(),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "timings": {"evaluation_s": round(seconds, 3),
                        "encode_s": {k: round(v, 3) for k, v in encoder.stats.seconds.items()}},
            "encoded": encoder.stats.encoded, "cached": encoder.stats.cached,
            # documents served over all subsets and splits (encoded + cached), with their float32 size
            "index": {"documents": encoder.stats.encoded["document"] + encoder.stats.cached["document"],
                      "vectors": encoder.stats.doc_vectors, "bytes": encoder.stats.doc_bytes},
            "training": training_record(encoder),
            "ocr_pages": (ocr.pages_ocred if ocr else 0) - ocr_before,
            "per_query": per_query,
        }
        rec_file = record_path(results_dir, meta.name, meta.revision, name)
        atomic_write_json(rec_file.with_suffix(".run.json.gz"), runs, gz=True)
        atomic_write_json(rec_file, record)
        final = mteb_result_path(results_dir, meta.name, meta.revision, name)
        final.parent.mkdir(parents=True, exist_ok=True)
        # model_meta.json first, the result file last: its presence marks the task finished.
        # (mteb's run_settings.jsonl is not copied: the run record holds versions and settings.)
        files = [f for f in written.rglob("*") if f.is_file() and f.name != "run_settings.jsonl"]
        for src in sorted(files, key=lambda f: f.name == final.name):
            dest = final.parent / src.name
            tmp_dest = dest.with_name(f".{dest.name}.tmp")
            tmp_dest.write_bytes(src.read_bytes())
            tmp_dest.replace(dest)
    log.info("%s on %s: %s = %.4f (%.1fs)", meta.name, name, main_name, record["main_score"], seconds)
    return TaskOutcome(name, main_name, record["main_score"], False, rec_file)
