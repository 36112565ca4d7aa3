"""The synthetic-data operations recipes ask for: pseudo-queries, judges, Syntriever synthesis and self-verification.

Each operation turns its inputs into model calls ("jobs"), serves the calls already in the store, runs the rest
(``backend.parallelism`` at a time) and appends each record as it completes (harness/synth/jobs.py). A failure
stops new calls, keeps every finished record and raises ``OperationError`` (re-running resumes). Unparseable and
empty answers are recorded with their status and counted, never guessed.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from harness.backbones.base import Page
from harness.synth import parsing, prompts
from harness.synth.backends import Backend, GenParams, Prompt
from harness.synth.jobs import Job, OperationError, Report, derive_seed, gen_result, run_jobs
from harness.synth.pages import Checked as _Checked
from harness.synth.pages import judge_readable as _judge_readable
from harness.synth.pages import readable
from harness.synth.store import SynthStore

log = logging.getLogger(__name__)
__all__ = ["JudgeItem", "OperationError", "PairItem", "Report", "SyntrieverSample", "derive_seed", "judge_graded",
           "judge_pairwise", "judge_query_likelihood", "judge_yesno", "pseudo_queries", "run_jobs", "self_verify",
           "syntriever_synthesis"]



@dataclass
class JudgeItem:
    query_id: str  # the caller's name for the query; results come back in item order, and the store keys the text
    query: str
    page: Page  # a page image, a page's text, or a passage (a text Page)


@dataclass
class PairItem:
    query_id: str
    query: str
    a: Page
    b: Page



def _judged(query: str, **pages: Page | None) -> dict[str, Any]:
    """A judgement's inputs in its store key: the query's TEXT, not the caller's id for it (SynTR's ids are positions,
    ``<page>#q0``, which name another query once the prompt or seed changes; the same text judged by two recipes is
    one record), and each page's id plus a digest of its text when it has one (a generated passage's id names its
    query, not its words; BEIR document ids repeat across corpora). Image pages are named by their id alone."""
    inputs: dict[str, Any] = {"query": query}
    for role, page in pages.items():
        if page is not None:
            inputs[role] = page.id
            if page.text is not None:
                inputs[f"{role}_text"] = hashlib.sha256(page.text.encode()).hexdigest()[:16]
    return inputs


def _variant(backend: Backend, page: Page | None, image_variant: str | None = "vlm", text_variant: str = "text") -> str:
    if not backend.instruct:
        return "fewshot"
    if image_variant and backend.sees_images and page is not None and page.image is not None:
        return image_variant
    return text_variant




# --- SynTR pseudo-queries ---------------------------------------------------------------------------------------
QUERY_PARAMS = GenParams(max_new_tokens=48, temperature=1.0, top_p=0.9)  # SynTR: top_p 0.9, temperature 1.0


def pseudo_queries(backend: Backend, store: SynthStore, pages: Sequence[Page], *, n: int = 3, kind: str = "general",
                   params: GenParams = QUERY_PARAMS, seed: int = 42, max_samples: int | None = None,
                   progress: bool = True) -> tuple[dict[str, list[str]], Report]:
    """Up to ``n`` distinct queries per page. Empty, unparseable and duplicate samples are dropped and counted; more
    samples are drawn (up to ``max_samples``, default 2n) until a page has n distinct queries."""
    if kind not in ("specific", "general"):
        raise ValueError(f"kind must be 'specific' or 'general', not {kind!r}")
    max_samples = max_samples or 2 * n
    all_ids = [p.id for p in pages]
    pages, skipped = readable(backend, pages)
    queries: dict[str, list[str]] = {p.id: [] for p in pages}
    seen: dict[str, set[str]] = {p.id: set() for p in pages}
    total = Report("queries")
    next_sample = {p.id: 0 for p in pages}
    want = {p.id: n for p in pages}
    while want:
        jobs = []
        for page in pages:
            for sample in range(next_sample[page.id], next_sample[page.id] + want.get(page.id, 0)):
                template = prompts.QUERY_TEMPLATES[(kind, _variant(backend, page))]
                p = params if backend.instruct else params.model_copy(update={"stop": ("\n",)})
                s = derive_seed(seed, page.id, sample)
                prompt = Prompt.of(template, [page])
                jobs.append(Job({"prompt_id": template.id, "inputs": {"page": page.id}, "params": p.model_dump(),
                                 "seed": s, "sample": sample},
                                lambda prompt=prompt, p=p, s=s: gen_result(backend, prompt, p, s,
                                                                            parsing.clean_query)))
        records, report = run_jobs("queries", backend, store, jobs, progress=progress)
        _merge(total, report)
        for page_id in want:
            next_sample[page_id] += want[page_id]
        for record in records:
            page_id, query = record["inputs"]["page"], record.get("parsed")
            if record["status"] != "ok" or not query:
                continue
            key = parsing.query_key(query)
            if key in seen[page_id]:
                total.notes["duplicates"] = total.notes.get("duplicates", 0) + 1
                continue
            if len(queries[page_id]) >= n:
                continue
            seen[page_id].add(key)
            queries[page_id].append(query)
        want = {pid: n - len(qs) for pid, qs in queries.items()
                if len(qs) < n and next_sample[pid] < max_samples}
        want = {pid: min(k, max_samples - next_sample[pid]) for pid, k in want.items()}
    total.notes["pages_short_of_n"] = sum(1 for qs in queries.values() if len(qs) < n)
    if skipped:
        total.notes["skipped_no_text"] = len(skipped)
    return {pid: queries.get(pid, []) for pid in all_ids}, total


def _merge(total: Report, report: Report) -> None:
    total.calls += report.calls
    total.new += report.new
    total.reused += report.reused
    total.statuses.update(report.statuses)


# --- judges -----------------------------------------------------------------------------------------------------
JUDGE_PARAMS = GenParams(max_new_tokens=12, temperature=0.0, top_p=1.0)  # SynTR judges greedily


def judge_graded(backend: Backend, store: SynthStore, items: Sequence[JudgeItem], *, params: GenParams = JUDGE_PARAMS,
                 progress: bool = True) -> tuple[list[str | None], Report]:
    """SynTR's three-level label per item: "highly", "somewhat", "not", or None (unparseable, counted)."""
    if not isinstance(items, _Checked):
        return _judge_readable(backend, items, lambda ok: judge_graded(backend, store, ok, params=params,
                                                                       progress=progress), lambda it: [it.page])
    backend.prepare([it.page for it in items])
    p = params if backend.instruct else params.model_copy(update={"stop": ("\n",)})
    jobs = []
    for it in items:
        template = prompts.GRADED_TEMPLATES[_variant(backend, it.page)]
        prompt = Prompt.of(template, [it.page], query=it.query)
        jobs.append(Job({"prompt_id": template.id, "inputs": _judged(it.query, page=it.page),
                         "params": p.model_dump(), "seed": 0, "sample": 0},
                        lambda prompt=prompt: gen_result(backend, prompt, p, 0, parsing.parse_grade)))
    records, report = run_jobs("judge_graded", backend, store, jobs, progress=progress)
    return [r.get("parsed") for r in records], report


def _yes_probability(backend: Backend, prompt: Prompt) -> dict[str, Any]:
    choice = backend.next_token_logprobs(prompt, ["yes", "no"])
    lp_yes, lp_no = choice.logprobs["yes"], choice.logprobs["no"]
    if lp_yes == -math.inf and lp_no == -math.inf:  # neither answer among the tokens the backend could see
        return {"raw": choice.meta.get("top", ""), "parsed": None, "status": "unparseable", **choice.meta}
    top = max(lp_yes, lp_no)
    p_yes = math.exp(lp_yes - top) / (math.exp(lp_yes - top) + math.exp(lp_no - top))
    return {"raw": {"yes": lp_yes, "no": lp_no}, "parsed": p_yes, "status": "ok", **choice.meta}


def _yesno_jobs(backend: Backend, items: Sequence[JudgeItem]) -> list[Job]:
    jobs = []
    for it in items:
        template = prompts.YESNO_TEMPLATES["chat" if backend.instruct else "fewshot"]
        prompt = Prompt.of(template, [it.page], query=it.query)
        jobs.append(Job({"prompt_id": template.id, "inputs": _judged(it.query, page=it.page),
                         "params": {"next_token": ["yes", "no"]}, "seed": 0, "sample": 0},
                        lambda prompt=prompt: _yes_probability(backend, prompt)))
    return jobs


def judge_yesno(backend: Backend, store: SynthStore, items: Sequence[JudgeItem], *,
                progress: bool = True) -> tuple[list[float | None], Report]:
    """P(yes) / (P(yes) + P(no)) for the next token after the relevance question; None when unreadable."""
    if not isinstance(items, _Checked):
        return _judge_readable(backend, items, lambda ok: judge_yesno(backend, store, ok, progress=progress),
                               lambda it: [it.page])
    backend.prepare([it.page for it in items])
    records, report = run_jobs("judge_yesno", backend, store, _yesno_jobs(backend, items), progress=progress)
    return [r.get("parsed") for r in records], report


def _ql_job(backend: Backend, template: prompts.Template, query: str, page: Page | None) -> Job:
    prompt = Prompt.of(template, [page] if page is not None else [])

    def call() -> dict[str, Any]:
        s = backend.score([prompt], [" " + query.strip()])[0]
        return {"raw": {"sum_logprob": s.sum_logprob, "n_tokens": s.n_tokens}, "parsed": s.mean_logprob,
                "status": "ok", **s.meta}

    return Job({"prompt_id": template.id, "inputs": _judged(query, page=page), "params": {"score": "mean_logprob"},
                "seed": 0, "sample": 0}, call)


def judge_query_likelihood(backend: Backend, store: SynthStore, items: Sequence[JudgeItem], *, pmi: bool = False,
                           progress: bool = True) -> tuple[list[float | None], Report]:
    """Mean log-probability of the query's tokens given the page (no instruction: a plain language-model score).

    ``pmi``: minus the same without the page (one extra call per distinct query). Ranking pages for one query is
    unchanged; scores of different queries become comparable (an easy-to-predict query no longer scores high on
    every page), which a pointwise relevance threshold needs. A page without readable text gets None
    (skipped_no_text).
    """
    if not isinstance(items, _Checked):
        return _judge_readable(backend, items, lambda ok: judge_query_likelihood(backend, store, ok, pmi=pmi,
                                                                                 progress=progress),
                               lambda it: [it.page])
    backend.prepare([it.page for it in items])
    jobs = [_ql_job(backend, prompts.QUERY_LIKELIHOOD, it.query, it.page) for it in items]
    records, report = run_jobs("judge_ql", backend, store, jobs, progress=progress)
    values = [r["parsed"] for r in records]
    if pmi:
        texts = list(dict.fromkeys(it.query for it in items))
        prior_jobs = [_ql_job(backend, prompts.QUERY_PRIOR, q, None) for q in texts]
        priors, prior_report = run_jobs("judge_ql_prior", backend, store, prior_jobs, progress=progress)
        _merge(report, prior_report)
        prior = dict(zip(texts, (r["parsed"] for r in priors), strict=True))
        values = [v - prior[it.query] for v, it in zip(values, items, strict=True)]
    return values, report


def judge_pairwise(backend: Backend, store: SynthStore, items: Sequence[PairItem], *,
                   progress: bool = True) -> tuple[list[float | None], Report]:
    """P(a is the better page/passage), asked in both orders and averaged: small models favour the first position,
    and averaging cancels that bias. None when neither order could be read."""
    if not isinstance(items, _Checked):
        return _judge_readable(backend, items, lambda ok: judge_pairwise(backend, store, ok, progress=progress),
                               lambda it: [it.a, it.b])
    backend.prepare([p for it in items for p in (it.a, it.b)])
    template = prompts.PAIRWISE_TEMPLATES["chat" if backend.instruct else "fewshot"]
    jobs = []
    for it in items:
        for first, second in ((it.a, it.b), (it.b, it.a)):
            prompt = Prompt.of(template, [first, second], query=it.query)

            def call(prompt: Prompt = prompt) -> dict[str, Any]:
                choice = backend.next_token_logprobs(prompt, ["1", "2"])
                lp1, lp2 = choice.logprobs["1"], choice.logprobs["2"]
                if lp1 == -math.inf and lp2 == -math.inf:
                    return {"raw": choice.meta.get("top", ""), "parsed": None, "status": "unparseable", **choice.meta}
                top = max(lp1, lp2)
                p_first = math.exp(lp1 - top) / (math.exp(lp1 - top) + math.exp(lp2 - top))
                return {"raw": {"1": lp1, "2": lp2}, "parsed": p_first, "status": "ok", **choice.meta}

            jobs.append(Job({"prompt_id": template.id,
                             "inputs": _judged(it.query, first=first, second=second),
                             "params": {"next_token": ["1", "2"], "temperature": 0}, "seed": 0, "sample": 0}, call))
    records, report = run_jobs("judge_pairwise", backend, store, jobs, progress=progress)
    prefs: list[float | None] = []
    bias = []
    for ab, ba in zip(records[0::2], records[1::2], strict=True):
        p_ab, p_ba = ab.get("parsed"), ba.get("parsed")
        readable = [v for v in (p_ab, 1 - p_ba if p_ba is not None else None) if v is not None]
        prefs.append(sum(readable) / len(readable) if readable else None)
        if p_ab is not None and p_ba is not None:
            bias.append((p_ab + p_ba) / 2)  # 0.5 when the model ignores position; 1.0 when it always says "first"
    if bias:
        report.notes["mean_p_first_x1000"] = round(1000 * sum(bias) / len(bias))
    return prefs, report


# --- Syntriever -------------------------------------------------------------------------------------------------
SYNTRIEVER_PARAMS = GenParams(max_new_tokens=256, temperature=0.7, top_p=1.0)  # Syntriever: temperature 0.7


@dataclass
class SyntrieverSample:
    query_id: str
    query: str
    positives: list[str] = field(default_factory=list)  # generated relevant passages the model verified
    negatives: list[str] = field(default_factory=list)  # plausibly irrelevant passages + positives it rejected
    cot: str | None = None  # the chain-of-thought query augmentation


def syntriever_params(backend: Backend, params: GenParams) -> GenParams:
    """The parameters synthesis records. Base models: a passage is one paragraph, but a stop at "\n\n" also stops at
    a blank line BEFORE it, which the packaged 270M model writes first in about 1 call in 5 (then the passage): 9 of
    the 10 empty outputs in benchmarks/synth_syntriever_empty.py. So stop only at the next "Question:" and cut at the
    first blank line after some text (``parsing.first_paragraph``; the raw output is recorded whole)."""
    return params if backend.instruct else params.model_copy(update={"stop": ("Question:",)})


def syntriever_synthesis(backend: Backend, store: SynthStore, queries: dict[str, str], *,
                         params: GenParams = SYNTRIEVER_PARAMS, seed: int = 0, verify: bool = True,
                         verify_by: str = "yesno",
                         progress: bool = True) -> tuple[list[SyntrieverSample], list[Report]]:
    """Relevant passage, plausibly irrelevant passage and chain-of-thought augmentation per query, then
    self-verification of the GENERATED relevant passage (yes keeps it as a positive, no moves it to the negatives).
    ``verify_by``: "yesno" (the paper's question, for instruction-tuned models) or "ql-pmi" (a base model's yes/no is
    at chance: the passage is kept when it makes the query more likely than no passage does, PMI > 0)."""
    variant = "chat" if backend.instruct else "fewshot"
    p = syntriever_params(backend, params)
    parse = parsing.clean_passage if backend.instruct else parsing.first_paragraph
    jobs = []
    for what in ("relevant", "irrelevant", "cot"):
        template = prompts.SYNTRIEVER_TEMPLATES[(what, variant)]
        for qid, text in queries.items():
            s = derive_seed(seed, qid, what)
            prompt = Prompt.of(template, query=text)
            jobs.append(Job({"prompt_id": template.id, "inputs": {"query": qid, "what": what},
                             "params": p.model_dump(), "seed": s, "sample": 0},
                            lambda prompt=prompt, s=s: gen_result(backend, prompt, p, s, parse)))
    records, report = run_jobs("syntriever", backend, store, jobs, progress=progress)
    by = {(r["inputs"]["query"], r["inputs"]["what"]): r.get("parsed") for r in records}
    samples = [SyntrieverSample(qid, text, cot=by[(qid, "cot")]) for qid, text in queries.items()]
    reports = [report]
    verify_items = [JudgeItem(s.query_id, s.query, Page(id=f"{s.query_id}:relevant", text=by[(s.query_id, "relevant")]))
                    for s in samples if by[(s.query_id, "relevant")]]
    verdicts: dict[str, float | None] = {}
    if verify and verify_items:
        if verify_by == "ql-pmi":
            pmi, vreport = judge_query_likelihood(backend, store, verify_items, pmi=True, progress=progress)
            p_yes = [None if v is None else float(v > 0) for v in pmi]
        elif verify_by == "yesno":
            p_yes, vreport = self_verify(backend, store, verify_items, progress=progress)
        else:
            raise ValueError(f"verify_by must be 'yesno' or 'ql-pmi', not {verify_by!r}")
        verdicts = {it.query_id: v for it, v in zip(verify_items, p_yes, strict=True)}
        reports.append(vreport)
    for s in samples:
        relevant, irrelevant = by[(s.query_id, "relevant")], by[(s.query_id, "irrelevant")]
        if relevant:
            verdict = verdicts.get(s.query_id)
            # Unverified (verify off, or an unreadable verdict) keeps the passage: the model wrote it as relevant.
            (s.negatives if verdict is not None and verdict < 0.5 else s.positives).append(relevant)
        if irrelevant:
            s.negatives.append(irrelevant)
    return samples, reports


def self_verify(backend: Backend, store: SynthStore, items: Sequence[JudgeItem], *,
                progress: bool = True) -> tuple[list[float | None], Report]:
    """Syntriever's self-verification: P(yes) that a generated passage (item.page.text) is relevant to its query."""
    if not isinstance(items, _Checked):
        return _judge_readable(backend, items, lambda ok: self_verify(backend, store, ok, progress=progress),
                               lambda it: [it.page])
    records, report = run_jobs("self_verify", backend, store, _yesno_jobs(backend, items), progress=progress)
    return [r.get("parsed") for r in records], report
