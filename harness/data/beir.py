"""Read and validate a BEIR-format folder.

Layout: corpus.jsonl (``_id``, ``text`` and/or ``image`` path relative to the folder, optional ``title``),
queries.jsonl (``_id``, ``text``), qrels/<split>.tsv (query-id, corpus-id, score; header optional).
Every problem names the file and line. A corrupt page image is an error unless ``skip_bad_images`` is set,
in which case it is skipped, counted and logged (with the qrels that pointed at it).
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

log = logging.getLogger(__name__)


class DataError(ValueError):
    """Bad input data; the message names the file and line."""


@dataclass
class BeirFolder:
    root: Path
    split: str
    corpus: dict[str, dict[str, Any]]  # id -> {"title", "text", "image" (absolute path or None)}
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    skipped_images: list[str] = field(default_factory=list)
    query_metadata: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def has_images(self) -> bool:
        return any(d["image"] for d in self.corpus.values())


def read_jsonl(path: Path) -> list[tuple[int, dict[str, Any]]]:
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    rows = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{lineno}: malformed JSON ({exc.msg})") from None
            if not isinstance(row, dict) or "_id" not in row:
                raise DataError(f"{path}:{lineno}: expected an object with an '_id' key")
            rows.append((lineno, row))
    return rows


def check_image(path: Path) -> str | None:
    """Return a problem description, or None if the image opens and decodes."""
    if not path.is_file():
        return "image file not found"
    try:
        with Image.open(path) as im:
            im.load()  # full decode: a truncated file passes verify() but fails here
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        return f"image does not decode ({exc})"
    return None


def read_beir_folder(root: str | Path, split: str = "test", *, skip_bad_images: bool = False,
                     check_images: bool = True) -> BeirFolder:
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder")
    corpus_path = root / "corpus.jsonl"
    corpus: dict[str, dict[str, Any]] = {}
    skipped: list[str] = []
    for lineno, row in read_jsonl(corpus_path):
        doc_id = str(row["_id"])
        if doc_id in corpus:
            raise DataError(f"{corpus_path}:{lineno}: duplicate _id {doc_id!r}")
        text, image = row.get("text") or "", row.get("image")
        if not text.strip() and not image and not (row.get("title") or "").strip():
            raise DataError(f"{corpus_path}:{lineno}: document {doc_id!r} has neither text nor image")
        image_path = None
        if image:
            image_path = (root / image).resolve()
            problem = check_image(image_path) if check_images else None
            if problem:
                msg = f"{corpus_path}:{lineno}: {image_path}: {problem}"
                if not skip_bad_images:
                    raise DataError(msg + " (set skip_bad_images to skip such pages)")
                log.warning("skipping page: %s", msg)
                skipped.append(doc_id)
                continue
        corpus[doc_id] = {"title": row.get("title") or "", "text": text,
                          "image": str(image_path) if image_path else None, "metadata": row.get("metadata") or {}}
    if not corpus:
        raise DataError(f"{corpus_path}: empty corpus")

    queries_path = root / "queries.jsonl"
    queries: dict[str, str] = {}
    query_metadata: dict[str, dict[str, Any]] = {}
    for lineno, row in read_jsonl(queries_path):
        text = row.get("text")
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{queries_path}:{lineno}: query {row['_id']!r} has no text")
        queries[str(row["_id"])] = text
        query_metadata[str(row["_id"])] = row.get("metadata") or {}

    if not queries:
        raise DataError(f"{queries_path}: no queries")
    qrels_path = root / "qrels" / f"{split}.tsv"
    qrels = read_qrels(qrels_path, queries, corpus, skipped=set(skipped))
    if skipped:
        log.warning("%s: skipped %d corrupt page(s): %s", root, len(skipped), ", ".join(skipped[:10]))
    queries = {q: t for q, t in queries.items() if q in qrels}
    if not queries:
        raise DataError(f"{qrels_path}: no query of {queries_path} has a relevant document")
    return BeirFolder(root, split, corpus, queries, qrels, skipped,
                      {q: m for q, m in query_metadata.items() if q in queries})


def read_qrels(path: Path, queries: dict[str, str] | None = None, corpus: dict[str, Any] | None = None, *,
               skipped: set[str] = frozenset()) -> dict[str, dict[str, int]]:  # type: ignore[assignment]
    """qrels/<split>.tsv as {query: {doc: score}}; ids are checked against ``queries`` / ``corpus`` when given."""
    if not path.is_file():
        available = sorted(p.stem for p in path.parent.glob("*.tsv")) if path.parent.is_dir() else []
        raise DataError(f"{path}: qrels file not found (available splits: {available or 'none'})")
    qrels: dict[str, dict[str, int]] = {}
    with path.open(encoding="utf-8", newline="") as f:
        for lineno, fields in enumerate(csv.reader(f, delimiter="\t"), 1):
            if not fields or not "".join(fields).strip():
                continue
            if lineno == 1 and fields[0].strip().lower() in {"query-id", "query_id", "qid"}:
                continue
            if len(fields) < 3:
                raise DataError(f"{path}:{lineno}: expected 3 tab-separated fields, got {len(fields)}")
            qid, did, score = fields[0].strip(), fields[1].strip(), fields[2].strip()
            try:
                value = int(float(score))
            except ValueError:
                raise DataError(f"{path}:{lineno}: score {score!r} is not a number") from None
            if queries is not None and qid not in queries:
                raise DataError(f"{path}:{lineno}: unknown query id {qid!r}")
            if did in skipped:
                continue
            if corpus is not None and did not in corpus:
                raise DataError(f"{path}:{lineno}: unknown corpus id {did!r}")
            qrels.setdefault(qid, {})[did] = value
    if not qrels:
        raise DataError(f"{path}: no relevance judgements")
    return qrels
