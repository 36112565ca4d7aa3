"""Answer-level evaluation: a retriever's top-k pages go to an answerer; its answers are scored against the task's
reference answers (EM, token F1, ANLS), with recall@k of those same pages beside them.

Any ranking works: a model's saved run (``runs/.../<Task>.run.json.gz``, written by the retrieval evaluation, see
``ranking_for``) or a dict {query id: {page id: score}}. Two rows need no retriever: ORACLE (the query's relevant
pages, all of them, given to the answerer: its ceiling) and NO-RETRIEVAL (no pages: its floor). One JSON record per
(model, task, k) lies next to the retrieval record, ``<Task>.answers.<answerer tag>.k<k>.json``, with per-query
scores so the leaderboard can run the same paired test on them; the rows without a retriever use the model names
``oracle`` (k "gold") and ``no-retrieval`` (k 0), revision = the answerer tag.
"""

from __future__ import annotations

import gzip
import json
import logging
import resource
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from harness.answers.answerer import Answerer
from harness.answers.metrics import score_answer
from harness.backbones.base import Page
from harness.data.beir import DataError
from harness.evaluate.records import record_path, task_identity, versions
from harness.io import atomic_write_json

log = logging.getLogger(__name__)
ORACLE, NO_RETRIEVAL = "oracle", "no-retrieval"
PageTexts = Callable[[Sequence[Page]], list[str]]


class AnswerTaskError(DataError):
    pass


@dataclass
class AnswerTask:
    """What answer evaluation reads from a task: questions, reference answers, relevant pages, the pages."""

    name: str
    questions: dict[str, str]
    answers: dict[str, list[str]]
    qrels: dict[str, dict[str, int]]
    pages: Mapping[str, Page]
    identity: dict[str, Any]
    subset: str | None = None  # an mteb task's subset (a ViDoRe v3 language) whose queries these are


def _references(ref: Any, where: str) -> list[str] | None:
    """Accepted answers from a string or a list of strings; None when there is none; anything else is an error."""
    if isinstance(ref, str):
        return [ref] if ref.strip() else None
    if isinstance(ref, list) and ref and all(isinstance(r, str) for r in ref):
        return list(ref)
    if ref is None or (isinstance(ref, list) and not ref):
        return None
    raise AnswerTaskError(f"{where} must be a string or a list of strings, got {type(ref).__name__}")


def answer_task(task: Any, subset: str | None = None) -> AnswerTask:
    """A task whose queries carry reference answers (a string, or a list of accepted strings): a BEIR-folder task
    with ``metadata.answer`` (the generated task and mmlongbench_dev), or an mteb task whose queries have an
    ``answer`` column (ViDoRe v3 where the dataset carries one; one subset, by default english). Queries without an
    answer are left out (and counted in the log)."""
    data = getattr(task, "data", None)
    name = task.metadata.name
    if data is None or not hasattr(data, "query_metadata"):
        return _mteb_answer_task(task, subset)
    answers: dict[str, list[str]] = {}
    for qid, meta in data.query_metadata.items():
        refs = _references((meta or {}).get("answer"), f"{data.root / 'queries.jsonl'}: query {qid!r}: metadata.answer")
        if refs:
            answers[qid] = refs
    answers = {q: a for q, a in answers.items() if q in data.queries}
    if not answers:
        raise AnswerTaskError(f"{data.root / 'queries.jsonl'}: no query of split {data.split!r} has metadata.answer")
    if len(answers) < len(data.queries):
        log.warning("%s: %d of %d queries have no reference answer: left out", name,
                    len(data.queries) - len(answers), len(data.queries))
    pages = {pid: Page(id=pid, text="\n".join(t for t in (d.get("title"), d.get("text")) if t) or None,
                       image_path=d.get("image")) for pid, d in data.corpus.items()}
    return AnswerTask(name, {q: data.queries[q] for q in answers}, answers,
                      {q: dict(data.qrels.get(q, {})) for q in answers}, pages, task_identity(task))


class _CorpusPages(Mapping[str, Page]):
    """An mteb corpus as pages, each row read (and its image decoded) only when a page is asked for."""

    def __init__(self, corpus: Any) -> None:
        self.corpus = corpus
        self.row = {pid: i for i, pid in enumerate(corpus["id"])}

    def __getitem__(self, pid: str) -> Page:
        row = self.corpus[self.row[pid]]
        return Page(id=pid, image=row.get("image"), text=row.get("text") or None)

    def __iter__(self) -> Iterator[str]:
        return iter(self.row)

    def __len__(self) -> int:
        return len(self.row)


def _mteb_answer_task(task: Any, subset: str | None) -> AnswerTask:
    name = task.metadata.name
    if getattr(task, "dataset", None) is None:
        task.load_data()
    subsets = list(task.dataset)
    chosen = subset or ("english" if "english" in subsets else "default" if "default" in subsets else subsets[0])
    if chosen not in subsets:
        raise AnswerTaskError(f"{name}: no subset {chosen!r} (subsets: {', '.join(subsets)})")
    split = task.metadata.eval_splits[0]
    part = task.dataset[chosen][split]
    queries = part["queries"]
    if "answer" not in queries.column_names:
        raise AnswerTaskError(f"{name} ({chosen}): its queries carry no reference answers (columns: "
                              f"{', '.join(queries.column_names)}); answer evaluation needs an 'answer' column")
    answers, questions = {}, {}
    for row in queries:
        refs = _references(row["answer"], f"{name} ({chosen}): query {row['id']!r}: answer")
        if refs:
            answers[row["id"]], questions[row["id"]] = refs, row["text"]
    if not answers:
        raise AnswerTaskError(f"{name} ({chosen}): no query has a reference answer")
    if len(answers) < len(queries):
        log.warning("%s (%s): %d of %d queries have no reference answer: left out", name, chosen,
                    len(queries) - len(answers), len(queries))
    qrels = part["relevant_docs"]
    return AnswerTask(name, questions, answers, {q: dict(qrels.get(q, {})) for q in answers},
                      _CorpusPages(part["corpus"]), task_identity(task), subset=chosen)


def ranking_for(results_dir: str | Path, model_name: str, revision: str, task_name: str,
                subset: str | None = None) -> dict[str, dict[str, float]]:
    """A model's saved top-100 ranking per query: one subset's (``subset``), or all subsets/splits merged (a BEIR
    folder has one)."""
    path = record_path(Path(results_dir), model_name, revision, task_name).with_suffix(".run.json.gz")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no saved ranking; evaluate the model on {task_name} first")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        runs = json.load(f)
    if subset is not None:
        runs = {key: run for key, run in runs.items() if key.split("/", 1)[0] == subset}
        if not runs:
            raise FileNotFoundError(f"{path}: no saved ranking of subset {subset!r}")
    return {qid: docs for run in runs.values() for qid, docs in run.items()}


def answers_path(results_dir: str | Path, model_name: str, revision: str, task_name: str, answerer_tag: str,
                 k: int | str) -> Path:
    rec = record_path(Path(results_dir), model_name, revision, task_name)
    return rec.with_name(f"{task_name}.answers.{answerer_tag}.k{k}.json")


def _rss_mb() -> float | None:
    """Resident memory now (Linux), for the peak over one k's queries."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return round(pages * resource.getpagesize() / 2**20, 1)


def _cuda_peak_reset() -> None:
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
    except ImportError:
        pass


def _cuda_peak_mb() -> float | None:
    try:
        import torch
    except ImportError:
        return None
    return round(torch.cuda.max_memory_allocated() / 2**20, 1) if torch.cuda.is_available() else None


class _TextCache:
    """Page texts from ``page_texts`` (the retriever's OCR), each page read once per evaluation."""

    def __init__(self, page_texts: PageTexts | None) -> None:
        self.fn, self.texts = page_texts, {}

    def __call__(self, pages: list[Page]) -> list[str] | None:
        if self.fn is None:
            return None
        todo = [p for p in pages if p.id not in self.texts]
        if todo:
            self.texts.update(zip([p.id for p in todo], self.fn(todo), strict=True))
        return [self.texts[p.id] for p in pages]


def _answer_rows(answerer: Answerer, task: AnswerTask, chosen: Mapping[str, list[str]], texts: _TextCache,
                 ) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Answer each query from its chosen pages; per-query rows and the cost summary."""
    rows: dict[str, dict[str, Any]] = {}
    peak_rss, started, calls_before = _rss_mb(), time.perf_counter(), answerer.calls
    _cuda_peak_reset()
    for qid, question in task.questions.items():
        ids = chosen[qid]
        pages = [task.pages[i] for i in ids]
        answer = answerer.answer(question, pages, texts(pages))
        relevant = {d for d, r in task.qrels[qid].items() if r > 0}
        rows[qid] = {**score_answer(answer.text, task.answers[qid]), "answer": answer.text,
                     "references": task.answers[qid], "pages": ids,
                     "recall": len(relevant & set(ids)) / len(relevant) if relevant else None,
                     "seconds": answer.seconds, "n_prompt_tokens": answer.n_prompt_tokens, "cached": answer.cached}
        rss = _rss_mb()
        peak_rss = max(peak_rss or 0.0, rss or 0.0) or None
    n = max(len(rows), 1)
    cost = {"wall_s": round(time.perf_counter() - started, 3), "calls": answerer.calls - calls_before,
            "seconds_per_query": round(sum(r["seconds"] for r in rows.values()) / n, 4),
            "prompt_tokens_per_query": round(sum(r["n_prompt_tokens"] for r in rows.values()) / n, 1),
            "peak_rss_mb": peak_rss, "peak_cuda_mb": _cuda_peak_mb()}
    return rows, cost


def _summary(rows: Mapping[str, Mapping[str, Any]]) -> dict[str, float | None]:
    n = max(len(rows), 1)
    out: dict[str, float | None] = {m: round(sum(r[m] for r in rows.values()) / n, 4) for m in ("em", "f1", "anls")}
    recalls = [r["recall"] for r in rows.values() if r["recall"] is not None]
    out["recall"] = round(sum(recalls) / len(recalls), 4) if recalls else None
    return out


def evaluate_answers(answerer: Answerer, task: AnswerTask, results_dir: str | Path, *,
                     ranking: Mapping[str, Mapping[str, float]] | None = None, model_name: str | None = None,
                     revision: str | None = None, ks: Sequence[int] = (1, 3), page_texts: PageTexts | None = None,
                     oracle: bool = True, no_retrieval: bool = True, row: Mapping[str, str] | None = None,
                     ) -> list[Path]:
    """Write one answer record per k for the ranked model (when ``ranking`` is given), plus the oracle and
    no-retrieval rows; returns the record paths. ``page_texts``: how pages become text (the retriever backbone's
    ``page_texts``); None gives the answerer the pages themselves (their text, else the backend's OCR/image).
    ``row``: the leaderboard row of the ranked model ({"backbone": tag, "variant": name}); the rows without a
    retriever are variants ``oracle`` and ``no-retrieval`` of backbone "-"."""
    if ranking is not None and not (model_name and revision):
        raise ValueError("a ranking needs the model_name and revision it belongs to")
    if ranking is not None and (missing := [q for q in task.questions if q not in ranking]):
        raise AnswerTaskError(f"{task.name}: the ranking of {model_name} has no entry for {len(missing)} "
                              f"question(s), e.g. {missing[:3]}")
    texts = _TextCache(page_texts)
    rows_to_do: list[tuple[str, str, int | str, dict[str, list[str]]]] = []
    if ranking is not None:
        for k in ks:
            chosen = {q: [d for d, _ in sorted(ranking[q].items(), key=lambda x: -x[1])[:k]] for q in task.questions}
            rows_to_do.append((model_name, revision, k, chosen))  # type: ignore[arg-type]
    tag = answerer.tag()
    if oracle:
        gold = {q: sorted(d for d, r in task.qrels[q].items() if r > 0 and d in task.pages) for q in task.questions}
        rows_to_do.append((ORACLE, tag, "gold", gold))
    if no_retrieval:
        rows_to_do.append((NO_RETRIEVAL, tag, 0, {q: [] for q in task.questions}))
    paths = []
    for model, rev, k, chosen in rows_to_do:
        rows, cost = _answer_rows(answerer, task, chosen, texts)
        ranked = model not in (ORACLE, NO_RETRIEVAL)
        record = {"model": model, "revision": rev, "task": task.name,
                  "backbone": (row or {}).get("backbone", model) if ranked else "-",
                  "variant": (row or {}).get("variant", model) if ranked else model,
                  "task_identity": task.identity, "k": k,
                  "answerer": answerer.identity(), "answerer_tag": tag, "queries": len(rows),
                  "page_text": "retriever page_texts" if page_texts else "page text or backend OCR",
                  "scores": _summary(rows), "cost": cost, "per_query": rows,
                  "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "versions": versions()}
        path = answers_path(results_dir, model, rev, task.name, tag, k)
        atomic_write_json(path, record)
        log.info("%s on %s, k=%s: %s (%d new answer(s))", model, task.name, k, record["scores"], cost["calls"])
        paths.append(path)
    return paths
