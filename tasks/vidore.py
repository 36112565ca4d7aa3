"""ViDoRe v1 and v2 as mteb defines them, optionally pointed at a local mirror of their datasets.

A mirror keeps each dataset under ``<local_dir>/<hub path>`` (for example
``huggingface-cli download --repo-type dataset mteb/docvqa_test_subsampled_beir
--local-dir <local_dir>/mteb/docvqa_test_subsampled_beir``).
"""

from __future__ import annotations

from pathlib import Path

import mteb
from mteb.abstasks import AbsTask

BENCHMARKS = {"ViDoRe(v1)": "v1", "ViDoRe(v2)": "v2"}
# ViDoRe v1 tasks whose training data overlaps colpali's training set (flag results as in-domain).
IN_DOMAIN_V1 = {"VidoreDocVQARetrieval", "VidoreInfoVQARetrieval", "VidoreTatdqaRetrieval",
                "VidoreArxivQARetrieval"}


def vidore_tasks(benchmark: str, local_dir: str | Path | None = None) -> list[AbsTask]:
    tasks = list(mteb.get_benchmark(benchmark).tasks)
    if local_dir is not None:
        for task in tasks:
            point_at_local_copy(task, local_dir)
    return tasks


def point_at_local_copy(task: AbsTask, local_dir: str | Path) -> AbsTask:
    folder = Path(local_dir) / task.metadata.dataset["path"]
    if not folder.is_dir():
        raise FileNotFoundError(f"{task.metadata.name}: local copy {folder} not found "
                                f"(mirror {task.metadata.dataset['path']} there)")
    task.metadata.dataset["path"] = str(folder)
    return task
