"""Read ``results/``: one Entry per MTEB result file, joined with its harness run record.

MTEB files are read directly (mteb's own leaderboard helpers return nothing for unregistered models and
tasks); the run record gives backbone, variant, per-query scores and costs. A partial, corrupt or foreign
file is reported and skipped.
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("leaderboard")


@dataclass
class Entry:
    backbone: str
    variant: str
    model: str
    revision: str
    task: str
    main_score_name: str
    score: float  # the task's main score, averaged over its subsets and splits as mteb does
    date: str
    benchmark: str = "local"  # v1, v2 (ViDoRe), local (a folder or the generated task) or mteb (any other)
    subsets: dict[str, float] = field(default_factory=dict)  # "<subset>/<split>" -> that part's main score
    phases: list[dict[str, Any]] = field(default_factory=list)  # mteb's evaluation_phases (timings)
    record: dict[str, Any] = field(default_factory=dict)  # the run record; {} when there is none

    @property
    def row(self) -> tuple[str, str]:
        return self.backbone, self.variant

    def per_query(self, subset: str | None = None) -> dict[str, dict[str, float]]:
        """{"<task>|<subset>/<split>": {query id: main metric}} from the run record, optionally one subset."""
        out = {}
        for key, metrics in (self.record.get("per_query") or {}).items():
            if (subset is None or key.split("/", 1)[0] == subset) and self.main_score_name in metrics:
                out[f"{self.task}|{key}"] = metrics[self.main_score_name]
        return out


@functools.cache
def benchmark_tasks() -> dict[str, str]:
    """Task name -> "v1" / "v2", from mteb's own benchmark definitions."""
    import mteb

    from tasks.vidore import BENCHMARKS

    return {t.metadata.name: short for name, short in BENCHMARKS.items() for t in mteb.get_benchmark(name).tasks}


def _benchmark(task: str, dataset_revision: str | None) -> str:
    # local folders: "local" (records before issue 12), then "local-<content hash>"
    return benchmark_tasks().get(task) or ("local" if (dataset_revision or "").startswith("local") else "mteb")


def _read_record(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        log.warning("skipping run record %s: %s", path, exc)
        return {}
    if not isinstance(record, dict):
        log.warning("skipping run record %s: not a JSON object", path)
        return {}
    # A part of the wrong shape is dropped (reported), so that it reads as unknown rather than crashing later.
    for key in ("encoded", "cached", "timings", "index", "training", "backbone", "per_query"):
        value = record.get(key)
        if value is not None and not isinstance(value, dict):
            log.warning("run record %s: ignoring %r (not an object)", path, key)
            record.pop(key)
    per_query = record.get("per_query") or {}
    if not all(isinstance(m, dict) and all(isinstance(v, dict) and all(isinstance(x, int | float) for x in v.values())
                                           for v in m.values()) for m in per_query.values()):
        log.warning("run record %s: ignoring malformed per_query scores", path)
        record.pop("per_query")
    return record


def _row_backbone(backbone: dict[str, Any], model: str) -> str:
    """A row's backbone name: its tag plus the non-default settings it does not show ("tag [max_chunks=1]"), so that
    two configurations of one backbone are two rows."""
    from harness.backbones import settings_label

    tag = backbone.get("tag") or model.split("/", 1)[-1]
    config = backbone.get("config")
    label = settings_label(backbone["family"], config) if backbone.get("family") and isinstance(config, dict) else ""
    return f"{tag} {label}" if label else tag


def read_entry(result_file: Path, results_dir: Path) -> Entry | None:
    from mteb.results import TaskResult

    try:
        result = TaskResult.from_disk(result_file)
        score = float(result.get_score())
        subsets = {f"{s['hf_subset']}/{split}": float(s["main_score"])
                   for split, items in result.scores.items() for s in items}
    except Exception as exc:  # partial, corrupt or foreign JSON: report, skip, carry on
        lines = [line.strip() for line in str(exc).splitlines()[:3]] or [type(exc).__name__]
        log.warning("skipping %s: %s", result_file, "; ".join(lines)[:300])
        return None
    revision_dir = result_file.parent
    model_dir = revision_dir.parent.name
    record = _read_record(results_dir / "runs" / model_dir / revision_dir.name / result_file.name)
    model = record.get("model") or model_dir.replace("__", "/")
    variant = record.get("variant") or (model.split("/", 1)[0] if "/" in model else "-")
    backbone = _row_backbone(record.get("backbone") or {}, model)
    if record.get("search") not in (None, "exhaustive"):  # a two-stage search is a row of its own
        backbone = f"{backbone} [search={record['search']}]"
    phases = [dict(p) for p in result.evaluation_phases or []]
    date = record.get("date") or (result.date.isoformat(timespec="seconds") if result.date else "")
    return Entry(backbone, variant, model, revision_dir.name, result.task_name,
                 record.get("main_score_name") or "main_score", score, date,
                 _benchmark(result.task_name, result.dataset_revision), subsets, phases, record)


def collect(results_dir: str | Path) -> list[Entry]:
    """Every readable result under ``<results_dir>/mteb/results``, all revisions and dates."""
    results_dir = Path(results_dir)
    entries = []
    for result_file in sorted((results_dir / "mteb" / "results").glob("*/*/*.json")):
        if result_file.name == "model_meta.json":
            continue
        entry = read_entry(result_file, results_dir)
        if entry is not None:
            entries.append(entry)
    return entries
