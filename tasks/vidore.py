"""ViDoRe v1, v2, v3 and v3.1 as mteb defines them, optionally pointed at a local mirror of their datasets.

A mirror keeps each dataset under ``<local_dir>/<hub path>``, as ``harness vidore download --benchmark v1 --to
<local_dir>`` writes it (for example ``<local_dir>/mteb/docvqa_test_subsampled_beir``); harness/data/vidore.py
describes the layout.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mteb
from mteb.abstasks import AbsTask

from harness.paths import cache_root

log = logging.getLogger(__name__)

BENCHMARKS = {"ViDoRe(v1)": "v1", "ViDoRe(v2)": "v2", "ViDoRe(v3)": "v3", "ViDoRe(v3.1)": "v3.1"}
# ViDoRe v1 tasks whose training data overlaps colpali's training set (flag results as in-domain).
IN_DOMAIN_V1 = {"VidoreDocVQARetrieval", "VidoreInfoVQARetrieval", "VidoreTatdqaRetrieval",
                "VidoreArxivQARetrieval"}


def benchmark_name(benchmark: str) -> str:
    """mteb's name of a ViDoRe benchmark from its short name (v1, v2, v3, v3.1) or its own name."""
    by_short = {short: name for name, short in BENCHMARKS.items()}
    if benchmark in BENCHMARKS:
        return benchmark
    if benchmark in by_short:
        return by_short[benchmark]
    raise ValueError(f"unknown ViDoRe benchmark {benchmark!r}: one of {', '.join([*by_short, *BENCHMARKS])}")


def benchmark_tasks(benchmark: str) -> list[AbsTask]:
    """Fresh task objects: mteb's benchmark holds one shared instance per task, which must not carry a mirror's
    path (or loaded data) into later uses in the same process."""
    return [loads_dataset(mteb.get_task(t.metadata.name))
            for t in mteb.get_benchmark(benchmark_name(benchmark)).tasks]


def loads_dataset(task: AbsTask) -> AbsTask:
    """Make ``task.load_data()`` fill ``task.dataset`` as every other retrieval task does. ViDoRe v1 and v2 load
    into mteb's older ``corpus``/``queries``/``relevant_docs`` attributes, which mteb converts only inside its
    evaluation; the harness reads ``task.dataset`` before that (a recipe's training pages)."""
    load = task.load_data

    def load_data(*args: Any, **kwargs: Any) -> None:
        load(*args, **kwargs)
        if getattr(task, "dataset", None) is None and hasattr(task, "corpus"):
            task.convert_v1_dataset_format_to_v2(kwargs.get("num_proc"))

    task.load_data = load_data  # type: ignore[method-assign]
    return task


def vidore_tasks(benchmark: str, local_dir: str | Path | None = None) -> list[AbsTask]:
    tasks = benchmark_tasks(benchmark)
    if local_dir is None:
        return tasks
    out = []
    for task in tasks:
        if not task.metadata.is_public and not (Path(local_dir) / task.metadata.dataset["path"]).is_dir():
            # private tasks (ViDoRe v3 Telecom, Nuclear) are on the Hub for mteb's maintainers only
            log.warning("%s: private dataset %s not in %s, skipped", task.metadata.name,
                        task.metadata.dataset["path"], local_dir)
            continue
        out.append(point_at_local_copy(task, local_dir))
    return out


def point_at_local_copy(task: AbsTask, local_dir: str | Path) -> AbsTask:
    """Read ``task``'s dataset from ``<local_dir>/<hub path>``. The task's metadata is mteb's class attribute,
    shared by every instance of the class: the task gets a copy of its own before its path changes."""
    folder = Path(local_dir) / task.metadata.dataset["path"]
    if not folder.is_dir():
        raise FileNotFoundError(f"{task.metadata.name}: local copy {folder} not found "
                                f"(mirror {task.metadata.dataset['path']} there: harness vidore download)")
    task.metadata = task.metadata.model_copy(deep=True)
    task.metadata.dataset["path"] = str(folder)
    pinned, found = task.metadata.dataset["revision"], mirror_revision(folder)
    if found and found != pinned:  # results record the data actually read
        log.warning("%s: the mirror %s holds revision %s, mteb pins %s (harness vidore download fetches the pin)",
                    task.metadata.name, folder, found, pinned)
        task.metadata.dataset["revision"] = found
    load = task.load_data

    def load_data(*args: Any, **kwargs: Any) -> None:
        with datasets_cache_of(folder):
            load(*args, **kwargs)

    task.load_data = load_data  # type: ignore[method-assign]
    return task


def mirror_revision(folder: Path) -> str | None:
    """The commit ``snapshot_download`` recorded for the mirror's README.md; None for a mirror made otherwise."""
    try:
        from huggingface_hub._local_folder import read_download_metadata
    except ImportError:  # a private module of huggingface_hub: without it, the revision is simply unknown
        return None
    meta = read_download_metadata(folder, "README.md")
    return meta.commit_hash if meta else None


@contextmanager
def datasets_cache_of(folder: Path) -> Iterator[None]:
    """Load a local dataset through a ``datasets`` cache of its own. ``datasets`` keys the cache of a local folder
    by its basename and config only: a re-downloaded mirror, or another mirror of the same dataset, would be served
    the first one's rows. Here the cache folder is keyed by the mirror's path and its files' sizes and times."""
    import datasets.config

    digest = hashlib.sha256(str(folder.resolve()).encode())
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and ".cache" not in p.relative_to(folder).parts):
        stat = path.stat()
        digest.update(f"{path.relative_to(folder)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    before = datasets.config.HF_DATASETS_CACHE
    datasets.config.HF_DATASETS_CACHE = cache_root() / "hf-datasets" / digest.hexdigest()[:16]
    try:
        yield
    finally:
        datasets.config.HF_DATASETS_CACHE = before
