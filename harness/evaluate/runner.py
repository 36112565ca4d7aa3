"""Evaluate one harness model on mteb tasks: results in MTEB's format, plus a run record per task.

A finished task is not run again unless ``overwrite`` is set, so an interrupted evaluation resumes where it
stopped: reuse needs its MTEB result and record both on disk for the same model name and revision (the path) and a
record of the same task identity (name, dataset revision, splits, subsets); the log says why a task was reused or
run. Everything is written atomically (temp file + rename).
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

from harness.backbones.base import OcrStats
from harness.evaluate.encoder import EncodeStats, HarnessEncoder
from harness.evaluate.metrics import per_query_scores, top_k
from harness.evaluate.records import (
    atomic_write_json,
    mteb_result_path,
    record_path,
    task_identity,
    versions,
)
from harness.evaluate.search import EXHAUSTIVE, SearchSpec, search_model
from harness.io import atomic_write_bytes

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
                   seed: int = 0, overwrite: bool = False, show_progress: bool = False,
                   search: SearchSpec | None = None) -> list[TaskOutcome]:
    """Evaluate ``encoder`` on each task (reusing finished results of the same model, search and task identity).
    ``search``: how the corpus is searched (default exhaustive); a non-default strategy is part of the result's
    revision (``<model revision>-<strategy>``), so its results never mix with exhaustive ones."""
    results_dir = Path(results_dir)
    search = search or SearchSpec()
    meta = searched_meta(encoder.mteb_model_meta, search)
    outcomes = []
    for task in tasks:
        name = task.metadata.name
        record = _reusable(results_dir, meta.name, meta.revision, task, overwrite)
        if record is not None:
            rec_file = record_path(results_dir, meta.name, meta.revision, name)
            outcomes.append(TaskOutcome(name, record["main_score_name"], record["main_score"], True, rec_file))
            continue
        outcomes.append(_run_task(encoder, task, results_dir, variant=variant, backbone=backbone,
                                  run_config=run_config or {}, seed=seed, show_progress=show_progress,
                                  search=search))
    return outcomes


def searched_meta(meta: Any, search: SearchSpec) -> Any:
    """The model's metadata under a non-default search: its revision names the strategy."""
    return meta.model_copy(update={"revision": f"{meta.revision}-{search.tag}"}) if search.tag else meta


def _reusable(results_dir: Path, model: str, revision: str, task: AbsTask, overwrite: bool) -> dict[str, Any] | None:
    """The finished record to reuse, or None; logs why a task runs or is reused."""
    name, where = task.metadata.name, f"{model}@{revision} on {task.metadata.name}"
    result_file = mteb_result_path(results_dir, model, revision, name)
    rec_file = record_path(results_dir, model, revision, name)
    if overwrite:
        log.info("%s: running (overwrite asked)", where)
        return None
    if not (result_file.is_file() and rec_file.is_file()):
        log.info("%s: running (no finished result for this model revision)", where)
        return None
    try:
        record = json.loads(rec_file.read_text())
    except (OSError, ValueError) as exc:
        log.info("%s: running again (unreadable run record %s: %s)", where, rec_file, exc)
        return None
    now, then = task_identity(task), record.get("task_identity")
    if then is None:  # a record from before task identities: what it has (its subsets were not recorded)
        then = {"name": record.get("task"), "dataset_revision": (record.get("dataset") or {}).get("revision"),
                "eval_splits": sorted(record.get("eval_splits") or []), "subsets": now["subsets"]}
    changed = [k for k in now if now[k] != then.get(k)]
    if changed:
        log.info("%s: running again, the task is not the one evaluated before (%s)", where,
                 "; ".join(f"{k.replace('_', ' ')} {then.get(k)!r} -> {now[k]!r}" for k in changed))
        return None
    log.info("%s: reusing %s (same model revision and task identity, dataset revision %s)", where, result_file,
             now["dataset_revision"])
    return record


def _ocr_record(encoder: Any, before: OcrStats | None) -> dict[str, Any] | None:
    """The OCR this task paid (see OcrStats); None for a backbone that never OCRs."""
    after = encoder.model.ocr_stats()
    if after is None:
        return None
    d = after - (before or OcrStats())
    return {"pages": d.pages, "pages_ocred": d.pages_ocred, "timed_pages": d.timed_pages,
            "seconds": round(d.seconds, 4), "wall_s": round(d.wall_s, 4)}


def _run_task(encoder: HarnessEncoder, task: AbsTask, results_dir: Path, *, variant: str,
              backbone: dict[str, Any], run_config: dict[str, Any], seed: int,
              show_progress: bool, search: SearchSpec) -> TaskOutcome:
    meta, name = searched_meta(encoder.mteb_model_meta, search), task.metadata.name
    model = search_model(encoder, search)
    if model is not encoder:
        model.mteb_model_meta = meta
    encoder.stats = EncodeStats()
    ocr_before = encoder.model.ocr_stats()
    started = time.perf_counter()
    task.load_data()  # preloaded data stays loaded after mteb.evaluate: its qrels score the per-query runs
    with tempfile.TemporaryDirectory() as tmp:
        model_result = mteb.evaluate(model, task, cache=None, prediction_folder=tmp,
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
        ocr = _ocr_record(encoder, ocr_before)
        # OCR runs inside page encoding (prefetch): its own cost, so it is taken off the encoder's time.
        encode_s = dict(encoder.stats.seconds)
        encode_s["document"] = max(0.0, encode_s["document"] - (ocr["wall_s"] if ocr else 0.0))
        record = {
            "model": meta.name, "revision": meta.revision, "variant": variant, "backbone": backbone,
            "task": name, "task_type": task.metadata.type, "category": task.metadata.category,
            "dataset": task.metadata.dataset, "eval_splits": task.metadata.eval_splits,
            "task_identity": task_identity(task), "search": search.tag or EXHAUSTIVE,
            "main_score_name": main_name, "main_score": float(task_result.get_score()),
            "seed": seed, "config": run_config, "versions": versions(),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "timings": {"evaluation_s": round(seconds, 3),
                        "encode_s": {k: round(v, 3) for k, v in encode_s.items()}},
            "encoded": encoder.stats.encoded, "cached": encoder.stats.cached,
            # documents served over all subsets and splits (encoded + cached), with their float32 size
            "index": {"documents": encoder.stats.encoded["document"] + encoder.stats.cached["document"],
                      "vectors": encoder.stats.doc_vectors, "bytes": encoder.stats.doc_bytes},
            "training": training_record(encoder),
            "ocr": ocr,
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
            atomic_write_bytes(dest, src.read_bytes())
    log.info("%s on %s: %s = %.4f (%.1fs)", meta.name, name, main_name, record["main_score"], seconds)
    return TaskOutcome(name, main_name, record["main_score"], False, rec_file)
