"""ViDoRe datasets on disk, in the layout of the Hub repositories that mteb's ViDoRe task classes load.

A mirror keeps each dataset at ``<mirror>/<hub path>`` (``<mirror>/vidore/esg_reports_v2``), as
``huggingface_hub.snapshot_download(repo_id, repo_type="dataset", revision=<mteb's pin>, local_dir=...)`` writes
it: a README.md whose YAML ``configs:`` name the parquet files of each config, ``<config>/<split>-*.parquet``.
Two layouts, told apart by the task class itself:
- ``beir`` (ViDoRe v1 and v2, whose classes override ``load_data``): configs ``corpus`` (``corpus-id``, ``image``),
  ``queries`` (``query-id``, ``query``, and ``language`` for a multilingual v2 task: mteb keeps each language's
  queries by it) and ``qrels`` (``query-id``, ``corpus-id``, ``score``);
- ``mteb`` (ViDoRe v3, read by mteb's generic retrieval loader): per language subset ``<lang>-corpus`` (``id``,
  ``image``), ``<lang>-queries`` (``id``, ``text``) and ``<lang>-qrels`` (``query-id``, ``corpus-id``, ``score``);
  ``corpus``/``queries``/``qrels`` for a task with one subset.

``write_task_mirror`` writes one task's dataset in its layout (tests build small mirrors of generated pages with it);
``download_plan`` and ``download`` mirror the real datasets at the revisions mteb pins.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from harness.data.beir import DataError

if TYPE_CHECKING:  # mteb loads in seconds: imported where used, so that `harness --help` stays quick
    from mteb.abstasks import AbsTask

Qrels = Mapping[str, Mapping[str, int]]


def layout(task: AbsTask) -> str:
    """``mteb`` when the task reads its data with mteb's generic retrieval loader, else ``beir``."""
    from mteb.abstasks.retrieval import AbsTaskRetrieval

    return "mteb" if type(task).load_data is AbsTaskRetrieval.load_data else "beir"


def _write_config(root: Path, config: str, split: str, rows: dict[str, list], features: dict[str, object]) -> None:
    from datasets import Dataset, Features

    (root / config).mkdir(parents=True, exist_ok=True)
    Dataset.from_dict(rows, features=Features(features)).to_parquet(root / config / f"{split}-00000-of-00001.parquet")


def _readme(configs: list[str], split: str) -> str:
    cards = [{"config_name": c, "data_files": [{"split": split, "path": f"{c}/{split}-*"}]} for c in configs]
    return "---\n" + yaml.safe_dump({"configs": cards}, sort_keys=False) + "---\n"


def write_task_mirror(task: AbsTask, mirror: str | Path, pages: Mapping[str, str | Path],
                      queries: Mapping[str, Mapping[str, str]], qrels: Qrels, split: str = "test",
                      texts: Mapping[str, str] | None = None,
                      answers: Mapping[str, str | list[str]] | None = None) -> Path:
    """Write ``task``'s dataset under ``<mirror>/<its hub path>`` in the layout its class loads.

    ``pages``: corpus id -> image file; ``queries``: subset (a language of the task, or ``default``) -> query id
    -> text; ``qrels``: query id -> corpus id -> score (over every subset's queries); ``texts``: corpus id -> page
    text, a ``text`` column beside the image (ViDoRe v3.1 ships OCR markdown; empty where not given); ``answers``:
    query id -> reference answer(s), an ``answer`` column of the queries (v2/v3 layout). Written to a
    temporary folder, then renamed into place.
    """
    from datasets import Image, Value

    subsets = list(task.hf_subsets) if task.metadata.is_multilingual else ["default"]
    if missing := set(subsets) - set(queries):
        raise ValueError(f"{task.metadata.name}: no queries for subset(s) {sorted(missing)} (subsets: {subsets})")
    target = Path(mirror) / task.metadata.dataset["path"]
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    # image bytes inside the parquet, as the Hub's files hold them (a path alone would point off the mirror)
    images = [{"bytes": Path(p).read_bytes(), "path": Path(p).name} for p in pages.values()]
    configs: list[str] = []
    qrel_rows = {"query-id": [], "corpus-id": [], "score": []}
    for qid, docs in qrels.items():
        for did, score in docs.items():
            qrel_rows["query-id"].append(qid)
            qrel_rows["corpus-id"].append(did)
            qrel_rows["score"].append(int(score))
    qrel_features = {"query-id": Value("string"), "corpus-id": Value("string"), "score": Value("int64")}
    if layout(task) == "beir":
        _write_config(tmp, "corpus", split, {"corpus-id": list(pages), "image": images},
                      {"corpus-id": Value("string"), "image": Image()})
        rows = {"query-id": [], "query": [], "language": []}
        for subset in subsets:
            for qid, text in queries[subset].items():
                rows["query-id"].append(qid)
                rows["query"].append(text)
                rows["language"].append(subset)
        features = {"query-id": Value("string"), "query": Value("string"), "language": Value("string")}
        if subsets == ["default"]:
            del rows["language"], features["language"]
        _write_config(tmp, "queries", split, rows, features)
        _write_config(tmp, "qrels", split, qrel_rows, qrel_features)
        configs = ["corpus", "queries", "qrels"]
    else:
        for subset in subsets:
            prefix = "" if subset == "default" else f"{subset}-"
            corpus, features = {"id": list(pages), "image": images}, {"id": Value("string"), "image": Image()}
            if texts is not None or task.metadata.category == "t2it":
                corpus["text"] = [(texts or {}).get(d, "") for d in pages]
                features["text"] = Value("string")
            _write_config(tmp, f"{prefix}corpus", split, corpus, features)
            rows, features = ({"id": list(queries[subset]), "text": list(queries[subset].values())},
                              {"id": Value("string"), "text": Value("string")})
            if answers is not None:
                rows["answer"] = [answers.get(q, "") for q in queries[subset]]
                features["answer"] = Value("string")
            _write_config(tmp, f"{prefix}queries", split, rows, features)
            in_subset = {i for i, q in enumerate(qrel_rows["query-id"]) if q in queries[subset]}
            _write_config(tmp, f"{prefix}qrels", split, {k: [v[i] for i in sorted(in_subset)]
                                                         for k, v in qrel_rows.items()}, qrel_features)
            configs += [f"{prefix}corpus", f"{prefix}queries", f"{prefix}qrels"]
    (tmp / "README.md").write_text(_readme(configs, split))
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)
    return target


@dataclass(frozen=True)
class Download:
    task: str
    repo_id: str
    revision: str
    public: bool


def download_plan(benchmark: str) -> list[Download]:
    """The datasets of a ViDoRe benchmark (``v1``, ``v2``, ``v3``, ``v3.1`` or mteb's name) at mteb's pins."""
    from tasks.vidore import benchmark_tasks

    return [Download(t.metadata.name, t.metadata.dataset["path"], t.metadata.dataset["revision"],
                     bool(t.metadata.is_public)) for t in benchmark_tasks(benchmark)]


class DownloadError(DataError):
    """A dataset that could not be mirrored; the message names it."""


def download(benchmark: str, to: str | Path, *, include_private: bool = False,
             log: Callable[[str], None] = print) -> list[Path]:
    """Mirror a benchmark's datasets at mteb's pinned revisions into ``<to>/<hub path>`` (needs the Hub)."""
    from huggingface_hub import snapshot_download

    out = []
    for item in download_plan(benchmark):
        if not item.public and not include_private:
            log(f"skip {item.task}: {item.repo_id} is private (mteb's maintainers evaluate it)")
            continue
        target = Path(to) / item.repo_id
        log(f"{item.task}: {item.repo_id}@{item.revision[:12]} -> {target}")
        try:
            snapshot_download(item.repo_id, repo_type="dataset", revision=item.revision, local_dir=target)
        except Exception as exc:  # offline, no access, unknown revision: say which dataset and why
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DownloadError(f"{item.task}: cannot download dataset {item.repo_id} at revision "
                                f"{item.revision} ({type(exc).__name__}: {reason}); run this on a machine that "
                                "reaches the Hugging Face Hub, then copy the folder") from None
        out.append(target)
    return out


def cmd_download(args: argparse.Namespace) -> int:
    if args.dry_run:
        for item in download_plan(args.benchmark):
            note = "" if item.public or args.include_private else "\t(private: skipped)"
            print(f"{item.task}\t{item.repo_id}\t{item.revision}{note}")
        return 0
    download(args.benchmark, args.to, include_private=args.include_private)
    return 0


def register(subparsers: Any) -> None:
    """``harness vidore download``: mirror a ViDoRe benchmark's datasets for machines without the Hub."""
    vidore = subparsers.add_parser("vidore", help="ViDoRe datasets: mirror them for offline evaluation")
    sub = vidore.add_subparsers(dest="vidore_command", required=True)
    p = sub.add_parser("download", help="mirror a benchmark's datasets at the revisions mteb pins",
                       description="Download every dataset of a ViDoRe benchmark with huggingface_hub at the "
                                   "revision mteb pins, to DIR/<hub path>; then evaluate with "
                                   "--task '{name: \"ViDoRe(v1)\", local_dir: DIR}'.")
    p.add_argument("--benchmark", required=True, choices=("v1", "v2", "v3", "v3.1"))
    p.add_argument("--to", required=True, metavar="DIR", help="mirror folder")
    p.add_argument("--include-private", action="store_true",
                   help="also try the private ViDoRe v3 datasets (needs access granted on the Hub)")
    p.add_argument("--dry-run", action="store_true", help="list the datasets and revisions; download nothing")
    p.set_defaults(func=cmd_download)
