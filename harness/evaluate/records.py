"""Result layout and atomic writes.

results/
  mteb/results/<variant>__<backbone>/<revision>/<Task>.json   MTEB TaskResult files (+ model_meta.json)
  runs/<variant>__<backbone>/<revision>/<Task>.json           run record: config, versions, seed, timings,
                                                              encode counts, per-query metrics
  runs/<variant>__<backbone>/<revision>/<Task>.run.json.gz    top-100 ranking per query (for re-scoring)
"""

from __future__ import annotations

import gzip
import json
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from harness.io import atomic_path, atomic_write_text

PACKAGES = ("harness", "synth-retrieval-harness", "torch", "transformers", "mteb", "colpali-engine", "peft",
            "sentence-transformers", "pytrec-eval-terrier", "datasets", "pillow")


def model_dir_name(model_name: str) -> str:
    return model_name.replace("/", "__").replace(" ", "_")


def mteb_result_path(results_dir: Path, model_name: str, revision: str, task_name: str) -> Path:
    return Path(results_dir) / "mteb" / "results" / model_dir_name(model_name) / revision / f"{task_name}.json"


def record_path(results_dir: Path, model_name: str, revision: str, task_name: str) -> Path:
    return Path(results_dir) / "runs" / model_dir_name(model_name) / revision / f"{task_name}.json"


def atomic_write_json(path: Path, obj: Any, gz: bool = False) -> None:
    """A run record (indented JSON) or a saved ranking (gzipped JSON), written atomically (harness.io)."""
    if not gz:
        atomic_write_text(path, json.dumps(obj, indent=2, default=str))
        return
    with atomic_path(path) as tmp, gzip.open(tmp, "wt", encoding="utf-8") as f:
        json.dump(obj, f)


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    out.update(git_state())
    return out


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        done = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10, cwd=cwd, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_state() -> dict[str, Any]:
    """The commit of the repository the run was launched from (the working directory's; else the one holding this
    package) and whether its tracked files differed from that commit (``git_dirty``; None when unknown)."""
    for where in (Path.cwd(), Path(__file__).resolve().parent):
        commit = _git(["rev-parse", "HEAD"], where)
        if commit:
            status = _git(["status", "--porcelain", "--untracked-files=no"], where)
            return {"git_commit": commit, "git_dirty": None if status is None else bool(status),
                    "git_repo": _git(["rev-parse", "--show-toplevel"], where)}
    return {"git_commit": None, "git_dirty": None, "git_repo": None}


def task_identity(task: Any) -> dict[str, Any]:
    """What a result is a result of, besides the model: the task's name, its data's revision (a Hub commit, or a
    local folder's content hash), the splits and subsets evaluated. Results are reused only on an exact match."""
    meta = task.metadata
    subsets = getattr(task, "hf_subsets", None)
    return {"name": meta.name, "dataset_revision": (meta.dataset or {}).get("revision"),
            "eval_splits": sorted(meta.eval_splits), "subsets": sorted(subsets) if subsets else None}
