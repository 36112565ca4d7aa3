"""Syntriever stage 2 (RECIPES.md section 2): the stage-1 retriever's top-k per query, the LLM's preferences over
them, and the partial Plackett-Luce alignment objective (plus the optional KL to stage 1) trained on the shared loop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from harness.backbones import Backbone, Page
from harness.retrieval.maxsim import score_matrix
from harness.train.objectives import to_device
from harness.train.syntriever_losses import partial_plackett_luce_loss, reference_kl
from models.syntriever.data import TrainQuery


@torch.inference_mode()
def retrieve(backbone: Backbone, queries: list[TrainQuery], corpus: list[Page], k: int,
             temperature: float) -> tuple[list[list[int]], list[torch.Tensor]]:
    """Top-k corpus indices per query (MaxSim; query-token mean, the same order), and their scaled scores."""
    from harness.retrieval.maxsim import maxsim, pad_vectors

    docs = pad_vectors(backbone.encode_pages(corpus))
    qv = backbone.encode_queries([q.text for q in queries])
    tops, scores = [], []
    for start in range(0, len(qv), 32):
        chunk = qv[start : start + 32]
        lengths = torch.tensor([len(v) for v in chunk], dtype=torch.float32)
        # the harness's memory-bounded MaxSim (sum over query tokens) -> the per-token mean used in training
        s = maxsim(pad_vectors(chunk), docs) / lengths[:, None] / temperature
        val, idx = s.topk(min(k, s.shape[1]), dim=1)
        tops += idx.tolist()
        scores += list(val)
    return tops, scores


def judge_topk(backend: Any, store: Any, queries: list[TrainQuery], tops: list[list[int]], corpus: list[Page],
               judge: str) -> tuple[list[list[float]], list[Any]]:
    """The LLM's score for each query's top-k passages (higher = preferred)."""
    from harness.synth import operations as ops

    if judge == "pairwise":
        items, where = [], []
        for qi, (tq, top) in enumerate(zip(queries, tops, strict=True)):
            for a in range(len(top)):
                for b in range(a + 1, len(top)):
                    items.append(ops.PairItem(tq.id, tq.text, corpus[top[a]], corpus[top[b]]))
                    where.append((qi, a, b))
        prefs, report = ops.judge_pairwise(backend, store, items, progress=False)
        out = [[0.0] * len(top) for top in tops]
        for (qi, a, b), p in zip(where, prefs, strict=True):
            p = 0.5 if p is None else p
            out[qi][a] += p
            out[qi][b] += 1 - p
        return out, [report]
    items = [ops.JudgeItem(tq.id, tq.text, corpus[i]) for tq, top in zip(queries, tops, strict=True) for i in top]
    values, report = ops.judge_query_likelihood(backend, store, items, pmi=True, progress=False)
    out, at = [], 0
    for top in tops:
        out.append(list(values[at : at + len(top)]))
        at += len(top)
    return out, [report]


@dataclass
class Group:
    """A stage-2 item: a query, its stage-1 top-k (corpus indices), the LLM's first and second choice, and the
    stage-1 scores of the top-k (the optional regulariser's reference)."""

    query: str
    top: list[int]
    first: int
    second: int
    reference: torch.Tensor


class AlignmentObjective(torch.nn.Module):
    """Partial Plackett-Luce over the batch's distinct candidates, plus ``reg_weight`` x KL to stage 1."""

    def __init__(self, backbone: Backbone, corpus: list[Page], temperature: float, reg_weight: float) -> None:
        super().__init__()
        self.backbone, self.corpus, self.temperature, self.reg_weight = backbone, corpus, temperature, reg_weight

    def collate(self, batch: list[Group]) -> dict[str, Any]:
        index: dict[int, int] = {}
        for g in batch:
            for i in g.top:
                index.setdefault(i, len(index))
        return {"query": self.backbone.query_inputs([g.query for g in batch]),
                "pages": self.backbone.page_inputs([self.corpus[i] for i in index]),
                "first": torch.tensor([index[g.top[g.first]] for g in batch]),
                "second": torch.tensor([index[g.top[g.second]] for g in batch]),
                "own": [[index[i] for i in g.top] for g in batch], "reference": [g.reference for g in batch]}

    def forward(self, query: dict[str, Any], pages: dict[str, Any], first: torch.Tensor, second: torch.Tensor,
                own: list[list[int]], reference: list[torch.Tensor]) -> torch.Tensor:
        q, qm = self.backbone.forward_queries(to_device(query, self.backbone.device))
        d, dm = self.backbone.forward_pages(to_device(pages, self.backbone.device))
        scores = score_matrix(q.float(), qm, d.float(), dm) / qm.sum(1, keepdim=True).clamp(min=1) / self.temperature
        loss = partial_plackett_luce_loss(scores, first.to(scores.device), second.to(scores.device))
        if self.reg_weight > 0:
            width = max(len(c) for c in own)
            mine = torch.full((len(own), width), float("-inf"), device=scores.device)
            refs = torch.full((len(own), width), float("-inf"), device=scores.device)
            valid = torch.zeros(len(own), width, dtype=torch.bool, device=scores.device)
            for i, (cols, r) in enumerate(zip(own, reference, strict=True)):
                mine[i, : len(cols)] = scores[i, cols]
                refs[i, : len(cols)] = r.to(scores.device)
                valid[i, : len(cols)] = True
            loss = loss + self.reg_weight * reference_kl(mine, refs, valid)
        return loss


def stage2_groups(queries: list[TrainQuery], tops: list[list[int]], prefs: list[list[float]],
                  ref: list[torch.Tensor]) -> list[Group]:
    groups = []
    for tq, top, pref, r in zip(queries, tops, prefs, ref, strict=True):
        if len(top) < 2:
            continue
        # LLM order; ties and unreadable verdicts keep the retriever's order (a stable sort of the retrieval ranking)
        order = sorted(range(len(top)), key=lambda j: -pref[j] if pref[j] is not None else math.inf)
        groups.append(Group(tq.text, top, order[0], order[1], r))
    return groups
