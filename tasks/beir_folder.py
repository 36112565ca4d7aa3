"""Any local BEIR-format folder as an mteb retrieval task (text corpora: t2t; page images: t2i).

A folder task's identity is its content, not its path: the dataset revision in its mteb metadata is a hash of the
corpus (page image bytes included), the split's queries and qrels, and the split itself. A split other than
``test`` is in the task name, so its results never overwrite the test split's.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from datasets import Dataset, Image
from mteb.abstasks.retrieval import AbsTaskRetrieval
from mteb.abstasks.task_metadata import TaskMetadata

from harness.data.beir import BeirFolder, DataError, read_beir_folder


def _camel(text: str) -> str:
    return "".join(w[:1].upper() + w[1:] for w in re.split(r"[^0-9A-Za-z]+", text) if w)


def task_name_for(folder: Path, split: str = "test") -> str:
    """A CamelCase mteb-style name from the folder name: mmlongbench_dev -> MmlongbenchDevRetrieval; a split other
    than test is named too (scifact, split train -> ScifactTrainRetrieval)."""
    return _camel(folder.resolve().name) + ("" if split == "test" else _camel(split)) + "Retrieval"


def content_revision(data: BeirFolder, top_ranked: dict[str, list[str]] | None = None) -> str:
    """A hash of everything evaluation reads: split, queries, qrels, candidate lists, and each document's id, title,
    text, metadata and image bytes (the image file, so a page redrawn under the same name is new data)."""
    h = hashlib.sha256(json.dumps({"split": data.split, "queries": data.queries, "qrels": data.qrels,
                                   "top_ranked": top_ranked}, sort_keys=True).encode())
    for doc_id in sorted(data.corpus):
        doc = data.corpus[doc_id]
        h.update(json.dumps([doc_id, doc["title"], doc["text"], doc["metadata"]], sort_keys=True, default=str).encode())
        if doc["image"]:
            with open(doc["image"], "rb") as f:
                h.update(hashlib.file_digest(f, "sha256").digest())
    return "local-" + h.hexdigest()[:16]


def candidate_lists(data: BeirFolder, key: str) -> dict[str, list[str]]:
    """For each query, the pages whose metadata[key] equals the query's metadata[key]."""
    by_value: dict[Any, list[str]] = {}
    for doc_id, doc in data.corpus.items():
        if key not in doc["metadata"]:
            raise DataError(f"{data.root / 'corpus.jsonl'}: document {doc_id!r} has no metadata.{key}")
        by_value.setdefault(doc["metadata"][key], []).append(doc_id)
    out = {}
    for qid, meta in data.query_metadata.items():
        if key not in meta:
            raise DataError(f"{data.root / 'queries.jsonl'}: query {qid!r} has no metadata.{key}")
        out[qid] = by_value.get(meta[key], [])
    return out


class BeirFolderTask(AbsTaskRetrieval):
    """Method (B) of loading local data into mteb: ``load_data`` fills ``self.dataset`` directly."""

    def __init__(self, folder: str | Path, split: str = "test", name: str | None = None,
                 skip_bad_images: bool = False, description: str | None = None,
                 candidates_by: str | None = None, **kwargs: Any) -> None:
        """``candidates_by``: a metadata key shared by queries and pages (e.g. ``doc_id``); each query then
        ranks only the pages with its own value (mteb's top_ranked), as in single-document QA."""
        self.folder = Path(folder)
        self.split = split
        self.skip_bad_images = skip_bad_images
        # Validate eagerly so that bad input fails before any model loads; images are decoded once here.
        self.data: BeirFolder = read_beir_folder(self.folder, split, skip_bad_images=skip_bad_images)
        self.top_ranked = candidate_lists(self.data, candidates_by) if candidates_by else None
        if candidates_by and name is None:
            within = "".join(w.capitalize() for w in re.split(r"[^0-9A-Za-z]+", candidates_by) if w)
            name = task_name_for(self.folder, split).removesuffix("Retrieval") + f"Within{within}Retrieval"
        images = self.data.has_images
        metadata = TaskMetadata(
            name=name or task_name_for(self.folder, split),
            description=description or f"Local BEIR folder {self.folder}",
            dataset={"path": str(self.folder.resolve()), "revision": content_revision(self.data, self.top_ranked)},
            type="DocumentUnderstanding" if images else "Retrieval",
            category="t2i" if images else "t2t",
            modalities=["text", "image"] if images else ["text"],
            eval_splits=[split], eval_langs=["eng-Latn"],
            main_score="ndcg_at_5" if images else "ndcg_at_10",
        )
        # mteb expects metadata on the class (unload_data drops instance attributes named metadata):
        # give each folder task its own subclass.
        self.__class__ = type(f"{metadata.name}Task", (BeirFolderTask,), {"metadata": metadata})
        super().__init__(**kwargs)

    def load_data(self, num_proc: int | None = None, **kwargs: Any) -> None:
        if self.data_loaded:
            return
        d = self.data
        ids = list(d.corpus)
        columns: dict[str, list[Any]] = {"id": ids}
        if d.has_images:
            columns["image"] = [d.corpus[i]["image"] for i in ids]
        else:
            columns["title"] = [d.corpus[i]["title"] for i in ids]
            columns["text"] = [d.corpus[i]["text"] for i in ids]
        corpus = Dataset.from_dict(columns)
        if d.has_images:
            corpus = corpus.cast_column("image", Image())
        queries = Dataset.from_dict({"id": list(d.queries), "text": list(d.queries.values())})
        self.dataset = {"default": {self.split: {"corpus": corpus, "queries": queries,
                                                 "relevant_docs": d.qrels, "top_ranked": self.top_ranked}}}
        self.data_loaded = True
