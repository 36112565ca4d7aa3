"""Resolve task specs (names, folders, option dicts) to mteb task objects.

Spec forms (a string, or a dict with ``name`` plus options):
- ``generated``: the offline generated page task (options: seed, n_entities, ... of GeneratedConfig)
- ``ViDoRe(v1)``, ``ViDoRe(v2)``, ``ViDoRe(v3)``, ``ViDoRe(v3.1)``: mteb's benchmarks (option ``local_dir``: a local
  mirror of the data, see ``harness vidore download``)
- any mteb task name, e.g. ``VidoreDocVQARetrieval`` (option ``local_dir``)
- a folder in BEIR format (options: split, name, skip_bad_images, candidates_by), as ``{"path": ...}`` or a path
- ``beir/<dataset>`` (``beir/scifact``): a BEIR dataset by name, downloaded once into the cache by beir's own
  downloader (harness/data/beir_download.py); the same options as a folder
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import mteb
from mteb.abstasks import AbsTask

from harness.paths import cache_root
from tasks.beir_folder import BeirFolderTask
from tasks.vidore import BENCHMARKS, loads_dataset, point_at_local_copy, vidore_tasks

GENERATED = "generated"
BEIR_PREFIX = "beir/"
FOLDER_OPTIONS = {"split", "name", "skip_bad_images", "candidates_by"}


class TaskSpecError(ValueError):
    pass


def generated_task(options: dict[str, Any] | None = None) -> BeirFolderTask:
    from tasks.generated import GeneratedConfig, generate

    options = dict(options or {})
    try:
        config = GeneratedConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in options.items()})
    except (TypeError, ValueError) as exc:
        raise TaskSpecError(f"task 'generated': {exc}") from None
    digest = hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()[:8]
    name = "GeneratedPages" if not options else f"GeneratedPages_{digest}"
    folder = generate(config, cache_root() / "tasks" / name)
    return BeirFolderTask(folder, name=name, description="Offline generated document pages (see tasks/generated.py)")


def beir_task(spec: str, options: dict[str, Any]) -> BeirFolderTask:
    from harness.data.beir_download import beir_dataset

    if unknown := set(options) - FOLDER_OPTIONS:
        raise TaskSpecError(f"task {spec}: unknown option(s) {sorted(unknown)}; allowed: {sorted(FOLDER_OPTIONS)}")
    return BeirFolderTask(beir_dataset(spec.removeprefix(BEIR_PREFIX)), **options)


def resolve_task(spec: str | dict[str, Any]) -> list[AbsTask]:
    options: dict[str, Any] = {}
    if isinstance(spec, dict):
        options = dict(spec)
        if "path" in options:
            path = options.pop("path")
            if unknown := set(options) - FOLDER_OPTIONS:
                raise TaskSpecError(f"task {path}: unknown option(s) {sorted(unknown)}; "
                                    f"allowed: {sorted(FOLDER_OPTIONS)}")
            return [BeirFolderTask(path, **options)]
        if "name" not in options:
            raise TaskSpecError(f"task spec {spec!r} needs a 'name' or a 'path'")
        spec = options.pop("name")
    if spec == GENERATED:
        return [generated_task(options)]
    if isinstance(spec, str) and spec.startswith(BEIR_PREFIX):
        return [beir_task(spec, options)]
    local_dir = options.pop("local_dir", None)
    if options:
        raise TaskSpecError(f"task {spec}: unknown option(s) {sorted(options)}; allowed: ['local_dir']")
    if spec in BENCHMARKS:
        return vidore_tasks(spec, local_dir)
    if Path(spec).is_dir():
        return [BeirFolderTask(spec)]
    try:
        task = loads_dataset(mteb.get_task(spec))
    except (KeyError, ValueError):
        raise TaskSpecError(
            f"unknown task {spec!r}: not 'generated', a benchmark ({', '.join(BENCHMARKS)}), an mteb task "
            "name, or a BEIR folder (run `harness tasks` to list them)") from None
    return [point_at_local_copy(task, local_dir) if local_dir else task]


def resolve_tasks(specs: list[str | dict[str, Any]]) -> list[AbsTask]:
    tasks: list[AbsTask] = []
    for spec in specs:
        tasks.extend(resolve_task(spec))
    return tasks


def known_tasks() -> dict[str, list[str]]:
    out = {"offline": [GENERATED]}
    for bench in BENCHMARKS:
        out[bench] = [t.metadata.name for t in mteb.get_benchmark(bench).tasks]
    return out
