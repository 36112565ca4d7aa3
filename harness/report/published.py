"""Published rows: the scores mteb's results repository holds for chosen models, beside a run's own rows.

The repository (https://github.com/embeddings-benchmark/results) keeps ``results/<org>__<model>/<revision>/
<Task>.json`` with a ``model_meta.json``, the layout mteb itself writes. It is read with mteb's own
``ResultCache`` from a local clone (``--published-results DIR``), or cloned/updated first where the network allows
(``--fetch-published``: ``ResultCache.download_from_remote``, into DIR/remote).

A published row has the variant ``published`` and the model's name as backbone. It shows the tasks the board's
other rows ran (scored over the same splits and language subsets, as mteb's ``validate_and_filter_scores``
keeps them), and has no per-query scores, so it is never in a significance test.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from harness.report.results import Entry, _benchmark

log = logging.getLogger("leaderboard")
PUBLISHED = "published"
DEFAULT_REPO = Path.home() / ".cache" / "mteb"  # mteb's own default: its clone lives in <this>/remote


class PublishedError(ValueError):
    """No usable results repository; the message says where it looked."""


def results_root(path: str | Path | None, fetch: bool = False) -> Path:
    """The folder holding ``results/``: a clone of the results repository, or a ResultCache folder (its
    ``remote`` clone). ``fetch`` clones or updates the clone with mteb first (needs the network and git)."""
    from mteb.cache import ResultCache

    root = Path(path) if path else DEFAULT_REPO
    if fetch:
        try:
            ResultCache(root).download_from_remote()
        except Exception as exc:  # no network, no git: say so, and what to do instead
            raise PublishedError(f"cannot fetch mteb's results repository into {root / 'remote'}: "
                                 f"{str(exc).rstrip('.')}; clone "
                                 "https://github.com/embeddings-benchmark/results elsewhere and pass "
                                 "--published-results CLONE") from None
    for candidate in (root, root / "remote"):
        if (candidate / "results").is_dir():
            return candidate
    raise PublishedError(f"no results/ folder in {root} or {root / 'remote'}: pass --published-results with a clone "
                         "of https://github.com/embeddings-benchmark/results, or add --fetch-published")


def published_entries(models: Sequence[str], tasks: Sequence[str], root: str | Path) -> list[Entry]:
    """One Entry per (model, task) found: the newest revision of each model that has the most of the tasks."""
    import mteb
    from mteb.cache import ResultCache

    known = []
    for name in dict.fromkeys(tasks):
        try:
            known.append(mteb.get_task(name))
        except (KeyError, ValueError):  # a local folder or the generated task: nothing is published for it
            continue
    if not known or not models:
        return []
    results = ResultCache(root).load_results(models=list(models), tasks=known, include_remote=False,
                                             require_model_meta=False, validate_and_filter=True)
    by_model: dict[str, list] = {}
    for model_result in results.model_results:
        by_model.setdefault(model_result.model_name, []).append(model_result)
    entries = []
    for model in models:
        if model not in by_model:
            log.warning("published: no results for %s on these tasks in %s", model, root)
            continue
        best = max(by_model[model], key=lambda m: (len(m.task_results), _newest(m.task_results)))
        for result in best.task_results:
            entries.append(_entry(model, best.model_revision or "", result))
    return entries


def _newest(task_results: list) -> str:
    dates = [r.date.isoformat() for r in task_results if r.date is not None]
    return max(dates, default="")


def _entry(model: str, revision: str, result: object) -> Entry:
    import mteb

    task = mteb.get_task(result.task_name)
    subsets = {f"{s['hf_subset']}/{split}": float(s["main_score"])
               for split, items in result.scores.items() for s in items}
    date = result.date.isoformat(timespec="seconds") if result.date else ""
    return Entry(backbone=model, variant=PUBLISHED, model=f"{PUBLISHED}/{model}", revision=revision,
                 task=result.task_name, main_score_name=task.metadata.main_score, score=float(result.get_score()),
                 date=date, benchmark=_benchmark(result.task_name, result.dataset_revision), subsets=subsets,
                 record={"published": True})


def add_published(entries: list[Entry], models: Sequence[str], path: str | Path | None,
                  fetch: bool = False) -> list[Entry]:
    """``entries`` plus the chosen models' published rows on the tasks those entries ran."""
    if not models:
        return entries
    root = results_root(path, fetch)
    return entries + published_entries(models, sorted({e.task for e in entries}), root)
