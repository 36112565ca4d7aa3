"""The bridge from a Backbone to mteb: an AbsEncoder with MaxSim scoring and an embedding cache."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from mteb.models.abs_encoder import AbsEncoder
from mteb.models.model_meta import ModelMeta
from mteb.types import PromptType

from harness.backbones import Backbone, Page
from harness.retrieval.cache import EmbeddingCache, content_key
from harness.retrieval.maxsim import maxsim, pad_vectors

log = logging.getLogger(__name__)


@dataclass
class EncodeStats:
    """Counts and seconds per role, reset per task by the runner (they go into the run record)."""

    encoded: dict[str, int] = field(default_factory=lambda: {"query": 0, "document": 0})
    cached: dict[str, int] = field(default_factory=lambda: {"query": 0, "document": 0})
    seconds: dict[str, float] = field(default_factory=lambda: {"query": 0.0, "document": 0.0})
    # Index size: vectors and float32 bytes of every document served (encoded or cached).
    doc_vectors: int = 0
    doc_bytes: int = 0


def make_meta(name: str, revision: str, backbone: Backbone, **extra: Any) -> ModelMeta:
    """ModelMeta for a harness model; ``name`` is "<variant>/<backbone tag>"."""
    n_params = sum(p.numel() for p in backbone.parameters())
    defaults: dict[str, Any] = dict(
        loader=None, name=name, revision=revision, release_date=None, languages=None,
        n_parameters=n_params, memory_usage_mb=None, max_tokens=None, embed_dim=None, license=None,
        open_weights=True, public_training_code=None, public_training_data=None, framework=["PyTorch"],
        similarity_fn_name="MaxSim", use_instructions=False, training_datasets=None,
        modalities=["image", "text"], model_type=["late-interaction"],
    )
    defaults.update(extra)
    return ModelMeta(**defaults)


class HarnessEncoder(AbsEncoder):
    """Encodes mteb batches with a backbone; every output is [N, T, D], zero-padded, scored by MaxSim."""

    def __init__(self, backbone: Backbone, meta: ModelMeta, cache: EmbeddingCache | None = None,
                 query_batch_size: int = 32, page_batch_size: int = 8) -> None:
        self.model = backbone
        self.mteb_model_meta = meta
        self.cache = cache
        self.query_batch_size = query_batch_size
        self.page_batch_size = page_batch_size
        self.stats = EncodeStats()
        self.checkpoint: Path | None = None  # set by the pipeline for trained variants

    def encode(self, inputs: Iterable[dict[str, Any]], *, task_metadata: Any, hf_split: str,
               hf_subset: str, prompt_type: PromptType | None = None, **kwargs: Any) -> torch.Tensor:
        """Batch by batch as mteb's loader yields them: a batch's page images are decoded, looked up in the cache,
        encoded where missing and dropped before the next batch, so only vectors accumulate (a corpus of thousands
        of page images never sits in memory)."""
        role = "query" if prompt_type == PromptType.query else "document"
        vectors: list[torch.Tensor] = []
        for batch in inputs:
            n = len(batch.get("id") or batch.get("text") or batch.get("image"))
            texts = batch.get("text") or [None] * n
            images = batch.get("image") or [None] * n
            ids = batch.get("id") or [str(len(vectors) + i) for i in range(n)]
            items = [Page(id=str(i), image=im, text=t) for i, t, im in zip(ids, texts, images, strict=True)]
            if role == "query" and any(p.text is None for p in items):
                raise ValueError(f"{task_metadata.name}: queries without text are not supported")
            vectors += self._encode_batch(role, items)
        if role == "document":
            self.stats.doc_vectors += sum(v.shape[0] for v in vectors)
            self.stats.doc_bytes += sum(v.shape[0] * v.shape[1] * 4 for v in vectors)
        return pad_vectors(vectors)

    def _encode_batch(self, role: str, items: list[Page]) -> list[torch.Tensor]:
        keys = [content_key(role, text=p.text, image=p.image) for p in items]
        out: list[torch.Tensor | None] = [self.cache.get(k) if self.cache else None for k in keys]
        todo = [i for i, v in enumerate(out) if v is None]
        self.stats.cached[role] += len(items) - len(todo)
        if todo:
            start = time.perf_counter()
            if role == "query":
                new = self.model.encode_queries([items[i].text or "" for i in todo], self.query_batch_size)
            else:
                new = self.model.encode_pages([items[i] for i in todo], self.page_batch_size)
            self.stats.seconds[role] += time.perf_counter() - start
            self.stats.encoded[role] += len(todo)
            for i, vec in zip(todo, new, strict=True):
                out[i] = vec
                if self.cache:
                    self.cache.put(keys[i], vec)
        return [v for v in out if v is not None]

    def similarity(self, embeddings1: Any, embeddings2: Any) -> torch.Tensor:
        return maxsim(embeddings1, embeddings2)

    def similarity_pairwise(self, embeddings1: Any, embeddings2: Any) -> torch.Tensor:
        a, b = torch.as_tensor(embeddings1), torch.as_tensor(embeddings2)
        return torch.stack([maxsim(a[i : i + 1], b[i : i + 1])[0, 0] for i in range(len(a))])
