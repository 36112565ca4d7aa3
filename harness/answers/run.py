"""Answers inside ``harness run`` (a run config's ``answers:`` section): after a row's retrieval evaluation, its saved
ranking's top-k pages go to the run's answerer (``evaluate_answers``), and the oracle and no-retrieval rows are
written once per (task, answerer).

One answerer and one answer store per run, built only when a row first needs them and closed at the end. A row
whose backbone can answer with its own language model (a method ``answer_backend(spec: dict) -> Backend`` on the
backbone, e.g. an LLM retriever with its LoRA adapter disabled) answers with that backend instead, into the same
store: answers are keyed by the backend's identity, so they are shared only where the identities match.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any

from harness.answers.answerer import Answerer
from harness.answers.evaluate import AnswerTask, AnswerTaskError, answer_task, evaluate_answers, ranking_for
from harness.config import AnswersSpec
from harness.synth.backends import BackendSpec, make_backend
from harness.synth.store import SynthStore

log = logging.getLogger(__name__)


def own_backend(backbone: Any, spec: BackendSpec) -> Any | None:
    """The backbone's own answering backend (``answer_backend(spec dict)``: its language model, any adapter
    disabled), or None when it has none."""
    method = getattr(backbone, "answer_backend", None)
    return method(spec.model_dump()) if callable(method) else None


def backbone_label(backbone: Any) -> str:
    """The backbone's name on the leaderboard: its tag plus the non-default settings it does not show (as the
    retrieval rows, harness/report/results.py), so that two configurations of one backbone stay two answer rows."""
    from harness.backbones import settings_label

    label = settings_label(backbone.family, backbone.config.model_dump(mode="json"))
    return f"{backbone.describe()} {label}" if label else backbone.describe()


def store_for(results_dir: Path, answerer: Answerer) -> SynthStore:
    return SynthStore(Path(results_dir) / "answers" / f"{answerer.tag()}.jsonl")


class RunAnswers:
    """The answer hook of one run (see the module docstring). ``make``: how the shared answerer's backend is built
    from the spec (tests pass a scripted one); ``tasks``: names of the tasks to answer (default: all)."""

    def __init__(self, spec: AnswersSpec, results_dir: str | Path,
                 make: Callable[[BackendSpec], Any] | None = None, tasks: Collection[str] | None = None) -> None:
        self.spec, self.results, self.make = spec, Path(results_dir), make or make_backend
        self.task_names = None if tasks is None else set(tasks)  # the run's tasks answered (answers.tasks)
        self.store: SynthStore | None = None  # named after the first answerer built (the shared one in most runs)
        self._shared: Answerer | None = None
        self._tasks: dict[str, AnswerTask | None] = {}
        self._floors: set[tuple[str, str]] = set()  # (task, answerer tag) with oracle/no-retrieval written

    def wants(self, variant_names: Sequence[str], backbone_index: int) -> bool:
        return self.spec.answers_row(list(variant_names), backbone_index)

    def _answerer(self, backend: Any) -> Answerer:
        answerer = Answerer(backend, self.store, max_new_tokens=self.spec.max_new_tokens)
        if self.store is None:
            self.store = answerer.store = store_for(self.results, answerer)
            log.info("answers of this run in %s", self.store.path)
        return answerer

    def answerer(self, backbone: Any) -> Answerer:
        """The backbone's own answerer when it has ``answer_backend`` (a new one: the caller drops it with the row,
        so the row's model is not held), else the run's shared one."""
        backend = own_backend(backbone, self.spec.answerer)
        if backend is not None:
            return self._answerer(backend)
        if self._shared is None:
            self._shared = self._answerer(self.make(self.spec.answerer))
        return self._shared

    def task(self, task: Any) -> AnswerTask | None:
        name = task.metadata.name
        if self.task_names is not None and name not in self.task_names:
            return None
        if name not in self._tasks:
            try:
                qa = answer_task(task)
            except AnswerTaskError as exc:
                log.info("answers: %s is not answered (%s)", name, exc)
                qa = None
            if qa is not None and self.spec.limit:
                qa.questions = dict(list(qa.questions.items())[:self.spec.limit])
            self._tasks[name] = qa
        return self._tasks[name]

    def __call__(self, encoder: Any, tasks: Sequence[Any], *, meta: Any, row: dict[str, str]) -> list[Path]:
        """Answer ``encoder``'s row on each task with answers; ``meta``: the model metadata its ranking is saved
        under (the searched one)."""
        paths: list[Path] = []
        answerer = None  # built when a task needs it, once for all tasks of this row
        for task in tasks:
            qa = self.task(task)
            if qa is None:
                continue
            try:
                ranking = ranking_for(self.results, meta.name, meta.revision, qa.name, qa.subset)
            except FileNotFoundError as exc:
                log.warning("answers: %s/%s on %s not answered: %s", row["backbone"], row["variant"], qa.name, exc)
                continue
            answerer = answerer or self.answerer(encoder.model)
            floor = (qa.name, answerer.tag())
            paths += evaluate_answers(answerer, qa, self.results, ranking=ranking, model_name=meta.name,
                                      revision=meta.revision, ks=self.spec.ks,
                                      page_texts=getattr(encoder.model, "page_texts", None),
                                      oracle=self.spec.oracle and floor not in self._floors,
                                      no_retrieval=self.spec.no_retrieval and floor not in self._floors, row=row)
            self._floors.add(floor)
        return paths

    def close(self) -> None:
        self._shared = None
        if self.store is not None:
            self.store.close()  # every answerer of the run wrote to it
