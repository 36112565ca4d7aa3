"""What the shared loop trains on: contrastive examples over a backbone, their collation, losses and validation.

An ``Example`` is a query with one or more positive pages (or passages) and any number of negatives. A batch's
candidates are all of its pages, each page once (by id): every query is scored against every candidate with the
evaluation's MaxSim (``harness.retrieval.maxsim.score_matrix``), so a query's negatives are its own plus every other
example's pages. A candidate is a positive of a query when it is one of that query's positives or a positive of
another query of the batch with the same text: a duplicate of a positive is never pushed away as a negative.

Losses on that [B, C] matrix (scores divided by the query's length and the temperature; pooled backbones: cosine):
- ``infonce``: minus the log of the softmax mass on the query's positives (one positive: InfoNCE / colpali-engine's
  ColbertLoss with explicit negatives; several: Syntriever's multi-positive form);
- ``pairwise``: softplus((hardest negative - best positive) / temperature), colpali-engine's ColbertPairwiseCELoss
  form, with the explicit negatives among the candidates.
colpali-engine's loss classes take zero-padded embeddings and score padding as 0 (a floor under negative cosines)
and cannot mask duplicates, hence these few lines.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from harness.backbones.base import Backbone, Page
from harness.retrieval.maxsim import maxsim, pad_vectors, score_matrix

NEG_INF = float("-inf")


@dataclass
class Example:
    query: str
    positives: list[Page]
    negatives: list[Page] = field(default_factory=list)


def _norm(text: str) -> str:
    return re.sub(r"\W+", " ", text.lower()).strip()


def to_device(inputs: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}


class ContrastiveCollator:
    """Examples -> backbone inputs for the queries and the batch's distinct candidates, and the positive mask."""

    def __init__(self, backbone: Backbone) -> None:
        self.backbone = backbone

    def __call__(self, batch: Sequence[Example]) -> dict[str, Any]:
        index: dict[str, int] = {}
        candidates: list[Page] = []
        for ex in batch:
            for page in [*ex.positives, *ex.negatives]:
                if page.id not in index:
                    index[page.id] = len(candidates)
                    candidates.append(page)
        by_text: dict[str, set[int]] = {}
        for ex in batch:
            by_text.setdefault(_norm(ex.query), set()).update(index[p.id] for p in ex.positives)
        positive = torch.zeros(len(batch), len(candidates), dtype=torch.bool)
        for i, ex in enumerate(batch):
            positive[i, sorted(by_text[_norm(ex.query)])] = True
        return {"query": self.backbone.query_inputs([ex.query for ex in batch]),
                "pages": self.backbone.page_inputs(candidates), "positive": positive}


def contrastive_loss(scores: torch.Tensor, positive: torch.Tensor, kind: str = "infonce",
                     temperature: float = 0.02, valid: torch.Tensor | None = None) -> torch.Tensor:
    """``scores`` [B, C] already per query token; ``positive`` [B, C] bool (each row at least one)."""
    if not bool(positive.any(dim=1).all()):
        raise ValueError("contrastive_loss: every query needs a positive candidate")
    s = scores / temperature
    if valid is not None:
        s = s.masked_fill(~valid, NEG_INF)
    if kind == "infonce":
        return (torch.logsumexp(s, dim=1) - torch.logsumexp(s.masked_fill(~positive, NEG_INF), dim=1)).mean()
    if kind == "pairwise":
        negatives = s.masked_fill(positive, NEG_INF)
        hardest = negatives.amax(dim=1)
        best = s.masked_fill(~positive, NEG_INF).amax(dim=1)
        has_neg = torch.isfinite(hardest)
        if not bool(has_neg.any()):
            return (s * 0).sum()  # a batch of one query without negatives: nothing to contrast
        return torch.nn.functional.softplus(hardest[has_neg] - best[has_neg]).mean()
    raise ValueError(f"unknown loss {kind!r}; known: infonce, pairwise")


class ContrastiveObjective(torch.nn.Module):
    """forward(query, pages, positive) -> the loss; the backbone is what trains (LoRA, heads or every weight)."""

    def __init__(self, backbone: Backbone, loss: Literal["infonce", "pairwise"] = "infonce",
                 temperature: float = 0.02) -> None:
        super().__init__()
        self.backbone, self.loss, self.temperature = backbone, loss, temperature

    def scores(self, query: dict[str, Any], pages: dict[str, Any]) -> torch.Tensor:
        """[B, C] MaxSim per query token (training's view of the evaluation score)."""
        q, qm = self.backbone.forward_queries(to_device(query, self.backbone.device))
        d, dm = self.backbone.forward_pages(to_device(pages, self.backbone.device))
        return score_matrix(q.float(), qm, d.float(), dm) / qm.sum(1, keepdim=True).clamp(min=1)

    def forward(self, query: dict[str, Any], pages: dict[str, Any], positive: torch.Tensor) -> torch.Tensor:
        s = self.scores(query, pages)
        return contrastive_loss(s, positive.to(s.device), self.loss, self.temperature)


class PageValidator:
    """Held-out queries ranked over a held-out page pool with the backbone's evaluation path (encode + MaxSim)."""

    def __init__(self, backbone: Backbone, queries: dict[str, str], pages: Sequence[Page],
                 qrels: dict[str, dict[str, int]], page_groups: list[str] | None = None) -> None:
        self.backbone = backbone
        self.page_groups = page_groups  # each page's document: a within-document validation figure too
        self.query_ids = list(queries)
        self.texts = [queries[q] for q in self.query_ids]
        self.pages = list(pages)
        self.page_ids = [p.id for p in self.pages]
        self.qrels = {q: qrels[q] for q in self.query_ids}

    @torch.no_grad()
    def scores(self) -> torch.Tensor:
        docs = pad_vectors(self.backbone.encode_pages(self.pages))
        return maxsim(pad_vectors(self.backbone.encode_queries(self.texts)), docs)


@torch.no_grad()
def rank(backbone: Backbone, pages: Sequence[Page], queries: dict[str, str], k: int | None = None,
         page_vectors: list[torch.Tensor] | None = None) -> dict[str, list[tuple[str, float]]]:
    """MaxSim ranking of ``pages`` for each query: {query id: [(page id, score), ...]} best first."""
    docs = page_vectors if page_vectors is not None else backbone.encode_pages(list(pages))
    qids = list(queries)
    scores = maxsim(pad_vectors(backbone.encode_queries([queries[i] for i in qids])), pad_vectors(docs))
    k = min(k or len(pages), len(pages))
    top = torch.topk(scores, k, dim=1)
    return {qid: [(pages[j].id, float(s)) for s, j in zip(top.values[i].tolist(), top.indices[i].tolist(),
                                                          strict=True)]
            for i, qid in enumerate(qids)}
