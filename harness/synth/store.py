"""Append-only JSONL store of model outputs, one record per model call, with its provenance.

A record's key hashes everything that determines the output (operation, backend and model, prompt id, inputs,
parameters, seed, sample index), so a resumed run serves finished records from the file and calls the model only
for the rest. Each record is flushed and fsync'ed as it is written: a kill loses at most the line being written,
which the next open detects (a last line without its newline), counts, logs and cuts off before appending.
An exclusive lock (fcntl) stops two processes from appending to the same store at once.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import threading
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

STATUSES = ("ok", "empty", "unparseable", "duplicate")


class StoreError(RuntimeError):
    pass


def record_key(**parts: Any) -> str:
    """A stable hash of the parts that determine a model output (sorted JSON, so dict order does not matter)."""
    blob = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class SynthStore:
    """Open (or create) a store; ``get`` serves finished records, ``append`` writes new ones durably."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()  # operations append from worker threads (HTTP concurrency)
        self._file = self.path.open("a+b")
        try:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.close()
            raise StoreError(f"{self.path}: another process is writing this store") from None
        self.records: dict[str, dict[str, Any]] = {}
        self.bad_lines = 0  # malformed lines skipped (a truncated last line after a kill, or damage)
        self.reused = 0  # records served from the file instead of calling the model
        self.written = 0
        self.used: list[str] = []  # keys served or written by this process, in order (what a result was built from)
        self._load()

    def _load(self) -> None:
        self._file.seek(0)
        data = self._file.read()
        good_end = 0
        for lineno, line in enumerate(data.splitlines(keepends=True), 1):
            complete = line.endswith(b"\n")
            try:
                record = json.loads(line) if complete else None
            except json.JSONDecodeError:
                record = None
            if not isinstance(record, dict) or "key" not in record:
                if line.strip():
                    self.bad_lines += 1
                    what = "truncated last line (interrupted write)" if not complete else "malformed line"
                    log.warning("%s:%d: skipping %s", self.path, lineno, what)
                if complete:
                    good_end += len(line)
                continue
            # A duplicate key (two runs racing before locking existed, or a hand edit) keeps the first record.
            self.records.setdefault(record["key"], record)
            good_end += len(line)
        if good_end < len(data):  # cut the partial line so the next record starts on a line of its own
            self._file.truncate(good_end)
            os.fsync(self._file.fileno())

    def get(self, key: str) -> dict[str, Any] | None:
        record = self.records.get(key)
        if record is not None:
            self.reused += 1
            self.used.append(key)
        return record

    def cost(self, start: int = 0) -> tuple[int, int]:
        """(model calls, prompt + generated tokens) behind the records used since ``used[start]``, whether this run
        made them or served them from the store: the cost of the data, not of this run."""
        keys = set(self.used[start:])
        tokens = sum(int(self.records[k].get("n_prompt_tokens") or 0) + int(self.records[k].get("n_tokens") or 0)
                     for k in keys)
        return len(keys), tokens

    def append(self, record: dict[str, Any]) -> dict[str, Any]:
        if "key" not in record:
            raise StoreError("a record needs a 'key'")
        record.setdefault("time", now_iso())
        line = (json.dumps(record, ensure_ascii=False, default=str) + "\n").encode("utf-8")
        with self._lock:
            self.used.append(record["key"])
            if record["key"] in self.records:  # written by another thread of this run meanwhile: keep one
                return self.records[record["key"]]
            self._file.seek(0, os.SEEK_END)
            self._file.write(line)
            self._file.flush()
            os.fsync(self._file.fileno())
            self.records[record["key"]] = record
            self.written += 1
        return record

    def counts(self, operation: str | None = None) -> Counter[str]:
        """Records per status ("ok", "empty", "unparseable", "duplicate"), for one operation or all."""
        return Counter(r.get("status", "ok") for r in self.records.values()
                       if operation is None or r.get("op") == operation)

    def summary(self) -> str:
        ops = sorted({r.get("op", "?") for r in self.records.values()})
        lines = [f"{self.path}: {len(self.records)} records ({self.written} new, {self.reused} reused"
                 f"{f', {self.bad_lines} bad line(s) skipped' if self.bad_lines else ''})"]
        for op in ops:
            c = self.counts(op)
            lines.append(f"  {op}: " + ", ".join(f"{s} {c[s]}" for s in STATUSES if c[s]))
        return "\n".join(lines)

    def close(self) -> None:
        if not self._file.closed:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()

    def __enter__(self) -> SynthStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
