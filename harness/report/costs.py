"""Cost columns of a leaderboard row, from its run records (and mteb's phase timings).

- ``train_wall_s``, ``llm_calls``: summed over the distinct training records behind the row's results
  (0 for a variant that does not train; unknown when a record predates the ``training`` key).
- ``encode_ms_per_page``: document encode seconds / documents encoded, OCR excluded (the runner takes the OCR time
  off). Cached documents cost no encode time, so they are not counted as free pages: a row that encoded nothing
  takes the rate of the most recent record of the same model that did encode, or stays unknown.
- ``ocr_ms_per_page``: Tesseract seconds per page image, as recorded when each page was OCRed (the OCR cache keeps
  it), so it is the same whether this row OCRed its pages or found them cached; 0 for a backbone without OCR (or
  a text corpus); unknown when no record of the row or of its model has timed OCR.
- ``index_bytes_per_page``: float32 bytes of the document vectors served / documents served.
- ``query_latency_ms``: encode ms per query (same rule as pages) + search ms per query. Search time is mteb's
  "Computing similarity" phase where it recorded one; for a full-corpus search mteb records one "Searching
  corpus" phase that also holds the document encoding, so the record's document encode time is taken off it.
  A search model (mteb's search interface: bm25) has neither phase: mteb times its whole search as "Encoding
  queries", and the record's query encode time is taken off that.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from harness.report.results import Entry

COLUMNS = ("train_wall_s", "llm_calls", "encode_ms_per_page", "ocr_ms_per_page", "index_bytes_per_page",
           "query_latency_ms")
NAN = float("nan")


def _encode_rate(entries: Iterable[Entry], role: str) -> float:
    """Seconds per item over the entries that encoded items of this role; NaN when none did."""
    seconds = items = 0.0
    for e in entries:
        n = (e.record.get("encoded") or {}).get(role, 0)
        if n > 0:
            seconds += ((e.record.get("timings") or {}).get("encode_s") or {}).get(role, 0.0)
            items += n
    return seconds / items if items else NAN


def _latest_rate(model: str, pool: Iterable[Entry], role: str) -> float:
    """The rate of the most recent record of this model that encoded items of this role."""
    done = [e for e in pool if e.model == model and (e.record.get("encoded") or {}).get(role, 0) > 0]
    return _encode_rate([max(done, key=lambda e: e.date)], role) if done else NAN


def _ocr_rate(entries: Iterable[Entry]) -> float:
    """Seconds of Tesseract per page over the entries with timed OCR; NaN when none has."""
    seconds = pages = 0.0
    for e in entries:
        ocr = e.record.get("ocr") or {}
        if ocr.get("timed_pages", 0) > 0:
            seconds += ocr.get("seconds", 0.0)
            pages += ocr["timed_pages"]
    return seconds / pages if pages else NAN


def ocr_ms_per_page(entries: list[Entry], pool: Iterable[Entry]) -> float:
    rate = _ocr_rate(entries)
    if math.isnan(rate):
        model = max(entries, key=lambda e: e.date).model
        timed = [e for e in pool if e.model == model and ((e.record.get("ocr") or {}).get("timed_pages", 0) > 0)]
        rate = _ocr_rate([max(timed, key=lambda e: e.date)]) if timed else NAN
    if math.isnan(rate) and entries and all(
            "ocr" in e.record and (e.record["ocr"] is None or (e.record["ocr"].get("pages", 0) == 0 and (
                e.record.get("encoded") or {}).get("document", 0) > 0)) for e in entries):
        return 0.0  # no OCR: a backbone without it, or a text corpus that it encoded without any
    return 1000 * rate


def _phase_seconds(entry: Entry, name: str) -> float | None:
    spans = [p["end"] - p["start"] for p in entry.phases if p.get("name") == name]
    return sum(spans) if spans else None


def search_seconds(entry: Entry) -> float:
    similarity = _phase_seconds(entry, "Computing similarity")
    if similarity is not None:
        return similarity
    encode_s = (entry.record.get("timings") or {}).get("encode_s") or {}
    searching = _phase_seconds(entry, "Searching corpus")
    if searching is not None:
        return max(0.0, searching - encode_s.get("document", 0.0))
    search_model = _phase_seconds(entry, "Encoding queries")
    return NAN if search_model is None else max(0.0, search_model - encode_s.get("query", 0.0))


def _training(entries: Iterable[Entry], key: str) -> float:
    if any("training" not in e.record for e in entries):
        return NAN  # a record without the key: the cost is unknown, not zero
    distinct = {json.dumps(e.record["training"], sort_keys=True): e.record["training"] for e in entries}
    values = [t.get(key) for t in distinct.values() if t]
    return NAN if any(v is None for v in values) else float(sum(values))


def row_costs(entries: list[Entry], pool: list[Entry]) -> dict[str, float]:
    """Cost columns for one row (its latest entry per task); ``pool`` is every entry, for fallback rates."""
    if not entries:
        return dict.fromkeys(COLUMNS, NAN)
    model = max(entries, key=lambda e: e.date).model
    rates = {}
    for role in ("document", "query"):
        rate = _encode_rate(entries, role)
        rates[role] = _latest_rate(model, pool, role) if math.isnan(rate) else rate
    index: dict[str, Any] = {"bytes": 0, "documents": 0}
    for e in entries:
        for k in index:
            index[k] += (e.record.get("index") or {}).get(k, 0)
    queries = sum(sum((e.record.get(k) or {}).get("query", 0) for k in ("encoded", "cached")) for e in entries)
    search = sum(search_seconds(e) for e in entries)
    return {
        "train_wall_s": _training(entries, "wall_s"),
        "llm_calls": _training(entries, "llm_calls"),
        "encode_ms_per_page": 1000 * rates["document"],
        "ocr_ms_per_page": ocr_ms_per_page(entries, pool),
        "index_bytes_per_page": index["bytes"] / index["documents"] if index["documents"] else NAN,
        "query_latency_ms": 1000 * (rates["query"] + search / queries) if queries else NAN,
    }
