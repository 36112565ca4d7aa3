"""ColIntern's training pairs: a JSONL triples file, or pseudo-queries over sampled corpus pages (harness.synth),
and their page-grouped validation split."""

from __future__ import annotations

import json
import logging
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from harness.backbones import Page
from harness.variants import TrainingCorpus
from models.colintern.config import Config

log = logging.getLogger(__name__)


@dataclass
class Pairs:
    pages: list[Page]  # the training pairs' pages first, then every other corpus page (mining, validation)
    queries: list[str]
    positives: list[int]  # page index per query
    file_negatives: list[list[int]]
    llm_calls: int = 0
    llm_tokens: int | None = None
    notes: dict[str, Any] = field(default_factory=dict)


def read_triples(path: Path, root: Path | None = None) -> Pairs:
    """A JSONL triples file: one {"query": str, "pos": path, "negs": [paths]} per line. Bad lines are errors."""
    path = Path(path)
    root = Path(root) if root is not None else path.parent
    index: dict[str, int] = {}
    pages: list[Page] = []
    queries, positives, negatives = [], [], []

    def page(rel: Any, where: str) -> int:
        if not isinstance(rel, str) or not rel:
            raise ValueError(f"{where}: a page path must be a non-empty string, not {rel!r}")
        if rel not in index:
            file = root / rel
            if not file.is_file():
                raise ValueError(f"{where}: page {rel!r} not found under {root}")
            text = file.read_text() if file.suffix in (".txt", ".md") else None
            index[rel] = len(pages)
            pages.append(Page(rel, image=None if text is not None else Image.open(file), text=text))
        return index[rel]

    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where}: not JSON ({exc.msg})") from None
        if not isinstance(rec, dict) or not isinstance(rec.get("query"), str) or not rec["query"].strip():
            raise ValueError(f"{where}: needs a non-empty string \"query\"")
        negs = rec.get("negs", [])
        if not isinstance(negs, list):
            raise ValueError(f"{where}: \"negs\" must be a list of page paths")
        queries.append(rec["query"])
        positives.append(page(rec.get("pos"), where))
        negatives.append([page(x, where) for x in negs])
    if len(queries) < 2:
        raise ValueError(f"{path}: needs at least 2 triples (in-batch negatives), found {len(queries)}")
    return Pairs(pages, queries, positives, negatives)


def make_backend(spec: dict[str, Any]) -> Any:  # a module attribute, so tests can substitute a fake model
    from harness.synth.backends import make_backend as make

    return make(spec)


def pseudo_query_pairs(corpus: TrainingCorpus, config: Config, store_path: Path) -> Pairs:
    from harness.synth.operations import QUERY_PARAMS, pseudo_queries
    from harness.synth.store import SynthStore

    pages = sorted(corpus.pages, key=lambda p: p.id)
    if config.max_pages and len(pages) > config.max_pages:
        pages = sorted(random.Random(config.seed).sample(pages, config.max_pages), key=lambda p: p.id)
    backend = make_backend(config.backend)
    params = QUERY_PARAMS.model_copy(update={"max_new_tokens": config.max_new_tokens})
    with SynthStore(store_path) as store:
        found, report = pseudo_queries(backend, store, pages, n=config.queries_per_page, kind=config.query_kind,
                                       params=params, seed=config.query_seed)  # a bar unless --quiet
        tokens = _store_tokens(store, {p.id for p in pages}, config)
    log.info("colintern: %s", report.line())
    index = {p.id: i for i, p in enumerate(pages)}
    queries, positives = [], []
    for pid, qs in found.items():
        for q in qs:
            queries.append(q)
            positives.append(index[pid])
    if len(queries) < 2:
        raise RuntimeError(f"colintern: the generator gave {len(queries)} usable queries for {len(pages)} pages "
                           f"({report.line()})")
    return Pairs(pages, queries, positives, [[] for _ in queries], llm_calls=report.calls, llm_tokens=tokens,
                 notes={"sampled_pages": len(pages), "llm_calls_new": report.new, "store": str(store_path),
                        **report.notes})


def _store_tokens(store: Any, page_ids: set[str], config: Config) -> int | None:
    """Prompt + completion tokens of the query records this training used (a shared store holds others too: other
    pages, kinds, seeds or lengths). None when the records do not count tokens."""
    from harness.synth.operations import derive_seed

    total, found = 0, False
    for rec in getattr(store, "records", {}).values():
        page = (rec.get("inputs") or {}).get("page")
        if rec.get("op") != "queries" or page not in page_ids \
                or f".{config.query_kind}." not in str(rec.get("prompt_id", "")) \
                or (rec.get("params") or {}).get("max_new_tokens") != config.max_new_tokens \
                or rec.get("seed") != derive_seed(config.query_seed, page, rec.get("sample")):
            continue
        for key in ("n_prompt_tokens", "n_tokens"):
            if isinstance(rec.get(key), int):
                total += rec[key]
                found = True
    return total if found else None


def with_corpus(pairs: Pairs, corpus: TrainingCorpus) -> Pairs:
    """The pairs' pages, then every corpus page they lack: mining and validation see the whole corpus."""
    have = {p.id for p in pairs.pages}
    extra = sorted((p for p in corpus.pages if p.id not in have), key=lambda p: p.id)
    pairs.pages = list(pairs.pages) + extra
    return pairs


def _norm(text: str) -> str:
    return re.sub(r"\W+", " ", text.lower()).strip()


def positive_sets(pairs: Pairs) -> list[set[int]]:
    """Per query: its page and the pages of every query with the same text (never negatives of each other)."""
    by_text: dict[str, set[int]] = {}
    for q, p in zip(pairs.queries, pairs.positives, strict=True):
        by_text.setdefault(_norm(q), set()).add(p)
    return [by_text[_norm(q)] for q in pairs.queries]


def split_by_page(pairs: Pairs, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(training query indices, validation query indices): ``fraction`` of the source pages, with all their
    queries, held out (seeded). Training keeps at least 2 queries (in-batch negatives)."""
    sources = sorted({pairs.pages[p].id for p in pairs.positives})
    random.Random(seed + 1).shuffle(sources)
    n_val = round(len(sources) * fraction)
    while n_val > 0:
        held = set(sources[:n_val])
        val = [i for i, p in enumerate(pairs.positives) if pairs.pages[p].id in held]
        train = [i for i, p in enumerate(pairs.positives) if pairs.pages[p].id not in held]
        if len(train) >= 2:
            return train, val
        n_val -= 1
    return list(range(len(pairs.queries))), []
