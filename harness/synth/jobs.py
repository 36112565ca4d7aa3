"""How every synthetic-data operation runs its model calls: jobs keyed by what determines their output, served
from the store when already made, the rest run (``backend.parallelism`` at a time) and appended as each completes.
A failure stops new calls, keeps every finished record and raises ``OperationError`` (re-running resumes)."""

from __future__ import annotations

import logging
import time
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from harness.progress import ProgressBar
from harness.synth.backends import Backend, GenParams, Prompt
from harness.synth.store import SynthStore, record_key

log = logging.getLogger("harness.synth.operations")


class OperationError(RuntimeError):
    pass


@dataclass
class Job:
    key_parts: dict[str, Any]  # what determines the output (hashed into the record key)
    call: Callable[[], dict[str, Any]]  # runs the model; returns raw / parsed / status / meta
    key: str = ""


@dataclass
class Report:
    op: str
    calls: int = 0
    new: int = 0
    reused: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    notes: dict[str, int] = field(default_factory=dict)  # operation-specific counts (duplicates, dropped...)

    def line(self) -> str:
        parts = [f"{self.calls} calls ({self.new} new, {self.reused} from the store)"]
        parts += [f"{s} {n}" for s, n in sorted(self.statuses.items())]
        parts += [f"{k} {v}" for k, v in self.notes.items()]
        return f"{self.op}: " + ", ".join(parts)


def run_jobs(op: str, backend: Backend, store: SynthStore, jobs: Sequence[Job], *,
             progress: bool = True) -> tuple[list[dict[str, Any]], Report]:
    """Serve stored records, run the others, append each as it completes; return the records in job order."""
    ident = backend.describe()
    report = Report(op, calls=len(jobs))
    out: list[dict[str, Any] | None] = [None] * len(jobs)
    todo, first = [], {}  # the same call asked twice in one batch runs once (first: key -> its job's index)
    repeats: list[tuple[int, int]] = []
    for i, job in enumerate(jobs):
        job.key = record_key(op=op, backend=ident, **job.key_parts)
        found = store.get(job.key)
        if found is not None:
            out[i] = found
            report.reused += 1
        elif job.key in first:
            repeats.append((i, first[job.key]))
        else:
            first[job.key] = i
            todo.append(i)

    def execute(i: int) -> dict[str, Any]:
        job = jobs[i]
        start = time.perf_counter()
        result = job.call()
        record = {"key": job.key, "op": op, "backend": ident["kind"], "model": ident["model"], **job.key_parts,
                  **result, "elapsed_s": round(time.perf_counter() - start, 4)}
        return store.append(record)

    bar = ProgressBar(progress, op, len(todo))
    errors: list[BaseException] = []
    try:
        if backend.parallelism <= 1:
            for i in todo:
                try:
                    out[i] = execute(i)
                except Exception as exc:  # noqa: BLE001  (reported below with what was kept)
                    errors.append(exc)
                    break
                bar.advance()
        else:
            with ThreadPoolExecutor(backend.parallelism) as pool:
                futures = {pool.submit(execute, i): i for i in todo}
                pending = set(futures)
                while pending:
                    done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                    for fut in done:
                        if fut.exception() is not None:
                            errors.append(fut.exception())  # type: ignore[arg-type]
                        else:
                            out[futures[fut]] = fut.result()
                            bar.advance()
                    if errors:  # stop new calls; the ones in flight finish and are written
                        for fut in pending:
                            fut.cancel()
                        for fut in pending:
                            if not fut.cancelled() and fut.exception() is None:
                                out[futures[fut]] = fut.result()
                        break
    finally:
        bar.close()
    for i, j in repeats:
        out[i] = out[j]
    if repeats:
        report.notes["repeated_calls"] = len(repeats)
    report.new = sum(1 for i in todo if out[i] is not None)
    if errors:
        raise OperationError(f"{op}: {report.new} new record(s) written to {store.path}, then a call failed "
                             f"({type(errors[0]).__name__}: {errors[0]}); run again to resume") from errors[0]
    records = [r for r in out if r is not None]
    report.statuses = Counter(r.get("status", "ok") for r in records)
    log.info(report.line())
    return records, report


def derive_seed(seed: int, *parts: Any) -> int:
    """A per-call seed from the run's seed and the call's identity: stable across resumes and orderings."""
    return zlib.crc32(repr((seed, *parts)).encode()) & 0x7FFFFFFF


def gen_result(backend: Backend, prompt: Prompt, params: GenParams, seed: int,
                parse: Callable[[str], Any]) -> dict[str, Any]:
    gen = backend.generate([prompt], params, seeds=[seed])[0]
    parsed = parse(gen.text)
    status = "empty" if not gen.text.strip() else ("ok" if parsed is not None else "unparseable")
    return {"raw": gen.text, "parsed": parsed, "status": status, "finish_reason": gen.finish_reason,
            "n_prompt_tokens": gen.n_prompt_tokens, "n_tokens": gen.n_tokens, **gen.meta}
