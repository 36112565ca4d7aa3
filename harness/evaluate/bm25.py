"""The bm25 backbone as an mteb search model: mteb's own BM25 baseline (``BM25Search``: bm25s, with the task
language's stopwords and Snowball stemmer) over each page's text.

What this adds to mteb's class (the gaps it fills):
- mteb's ``BM25Search.index`` reads only ``title`` and ``text``: page images (ViDoRe, page folders) have neither, so
  the backbone's page text (corpus text + OCR) is indexed instead;
- with candidates (mteb's ``top_ranked``, the harness's ``candidates_by``) mteb keeps the candidates found in the
  corpus-wide top_k only; here every candidate is ranked, as the encoder path does;
- the harness's counts and timings (``stats``), which the runner writes into the run record as for ``HarnessEncoder``
  (the runner also reads ``model`` and ``checkpoint``, and the pipeline sets ``cache``, unused here).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import bm25s
from datasets import Dataset
from mteb.models.model_implementations.bm25 import BM25Search, bm25_s
from mteb.models.model_meta import ModelMeta

from harness.backbones import Page
from harness.backbones.bm25 import Bm25Backbone
from harness.evaluate.encoder import EncodeStats

# bm25s sets its logger to DEBUG when imported, so its debug lines reached the harness's log handler: hand the level
# back to the application (the CLI's WARNING, or INFO with -v).
logging.getLogger(bm25s.__name__).setLevel(logging.NOTSET)

OCR_BATCH = 64  # pages decoded and OCRed at a time, so a large image corpus is never all in memory


def bm25_meta(name: str, revision: str) -> ModelMeta:
    """mteb's own ModelMeta of its BM25 baseline, under the harness's name and revision; pages as images too."""
    return bm25_s.model_copy(update={"name": name, "revision": revision, "loader": None,
                                     "modalities": ["image", "text"], "adapted_from": bm25_s.name})


class Bm25Search(BM25Search):
    def __init__(self, backbone: Bm25Backbone, meta: ModelMeta) -> None:
        c = backbone.config
        super().__init__(stopwords=c.stopwords, stemmer_language=c.stemmer, k1=c.k1, b=c.b, method=c.method)
        self.model = backbone
        self.mteb_model_meta = meta
        self.stats = EncodeStats()
        self.checkpoint = None
        self.cache = None

    def index(self, corpus: Dataset, **kwargs: Any) -> None:
        start = time.perf_counter()
        ids: list[str] = []
        texts: list[str] = []
        for batch in corpus.iter(batch_size=OCR_BATCH):
            n = len(batch["id"])
            titles, bodies = batch.get("title") or [None] * n, batch.get("text") or [None] * n
            images = batch.get("image") or [None] * n
            pages = [Page(str(i), image=im, text="\n".join(x for x in (t, b) if x) or None)
                     for i, t, b, im in zip(batch["id"], titles, bodies, images, strict=True)]
            ids += [p.id for p in pages]
            texts += self.model.page_texts(pages)
        super().index(Dataset.from_dict({"id": ids, "text": texts}), **kwargs)
        self.stats.seconds["document"] += time.perf_counter() - start
        self.stats.encoded["document"] += len(ids)
        self.stats.doc_vectors += len(ids)  # one sparse vector per page; its size is the bm25s index's
        self.stats.doc_bytes += sum(self.retriever.scores[k].nbytes for k in ("data", "indices", "indptr"))

    def search(self, queries: Dataset, *, top_k: int, top_ranked: dict[str, list[str]] | None = None,
               **kwargs: Any) -> dict[str, dict[str, float]]:
        start = time.perf_counter()
        if top_ranked:  # rank every candidate, not only those in the corpus-wide top_k
            top_k = len(self.corpus_idx_to_id)
        out = super().search(queries, top_k=top_k, top_ranked=top_ranked, **kwargs)
        # the whole search (tokenise + score) counts as query encoding; mteb times it as "Encoding queries"
        self.stats.seconds["query"] += time.perf_counter() - start
        self.stats.encoded["query"] += len(queries)
        return out
