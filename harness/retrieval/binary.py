"""Binary two-stage search for any multi-vector model (ColQwen3VL's search, RECIPES.md section 3).

Index: each token vector becomes its sign bits (x >= 0), packed 8 per byte (16 bytes for 128 dimensions); each
page also gets one pooled vector, the majority vote of its tokens' bits. Hamming similarity is dim - popcount(a xor
b):
- ``pooled`` first stage: sum over query tokens of the Hamming similarity to the page's vote vector, computed as a
  product of +-1 matrices (a . b = dim - 2 hamming; one matrix-vector product with the query's summed +-1 tokens);
- ``multi`` first stage: binary MaxSim, sum over query tokens of the best Hamming similarity over the page's tokens,
  by XOR and popcount on 64-bit words (``harness.retrieval.hamming``: nothing but the per-page best is written);
- ``cascade``: the pooled stage keeps CASCADE x as many pages, binary MaxSim ranks only those (the pooled vote is
  cheap but coarse, binary MaxSim is close to float MaxSim but touches every token).
The first stage keeps top_k x rescore_ratio candidates per query; the second reranks them by float MaxSim on the
stored float vectors (the exact score of ``harness.retrieval.maxsim``), and the candidates below them keep their
first-stage order, under the reranked ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from harness.retrieval.hamming import as_words, binary_maxsim, query_rows
from harness.retrieval.maxsim import DocIndex, maxsim, real_tokens

FirstStage = Literal["pooled", "multi", "cascade"]
CASCADE = 10  # the cascade's pooled stage keeps CASCADE times the candidates the binary MaxSim stage keeps


def pack_bits(x: torch.Tensor) -> np.ndarray:
    """Sign bits (x >= 0) of [..., D] vectors packed along the last axis: [..., ceil(D / 8)] uint8."""
    return np.packbits(x.detach().cpu().numpy() >= 0, axis=-1)


def unpack_signs(bits: np.ndarray, dim: int, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """The +-1 vectors of packed sign bits: [..., dim]."""
    return torch.from_numpy(np.unpackbits(bits, axis=-1, count=dim).astype(np.int8) * 2 - 1).to(dtype)


def hamming_similarity(a: np.ndarray, b: np.ndarray, dim: int) -> np.ndarray:
    """dim - popcount(a xor b) for packed bit vectors (broadcasting over leading axes)."""
    return dim - np.bitwise_count(np.bitwise_xor(a, b)).sum(-1, dtype=np.int64)


def majority_vote(token_bits: np.ndarray, dim: int) -> np.ndarray:
    """One packed vector per page: each bit set where at least half of the page's tokens set it (ties set)."""
    votes = np.unpackbits(token_bits, axis=-1, count=dim).astype(np.int32).sum(0)
    return np.packbits(2 * votes >= len(token_bits))



def query_signs(queries: torch.Tensor) -> torch.Tensor:
    """The +-1 sign vectors of zero-padded queries [Q, Tq, D]; padded rows stay 0 (they add nothing to a score)."""
    return torch.where(queries >= 0, 1.0, -1.0) * (queries.abs().sum(-1, keepdim=True) != 0)


@dataclass
class SearchStats:
    candidates: int = 0  # (query, page) pairs reranked in float
    pages: int = 0


class BinaryIndex:
    """Packed bits of every page's tokens (and its vote vector) for the first stage, the float vectors for the second.

    ``docs``: a zero-padded [N, T, D] tensor or a list of [T_i, D] matrices (real rows only). A page without any real
    token is never a candidate.
    """

    def __init__(self, docs: torch.Tensor | Sequence[torch.Tensor]) -> None:
        items = real_tokens(docs) if isinstance(docs, torch.Tensor) else [torch.as_tensor(x) for x in docs]
        self.dim = items[0].shape[-1]
        self.size = len(items)
        self.floats = [x.float().contiguous() for x in items]
        lengths = np.array([len(x) for x in items])
        self.offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)  # page p: rows offsets[p]:[p + 1]
        bits = np.concatenate([pack_bits(x) for x in self.floats])  # page by page: no float copy of the corpus
        self.words = as_words(bits)  # [tokens, W] uint64: what the binary MaxSim kernel reads
        self.pooled_bits = np.stack([majority_vote(bits[a:b], self.dim) if b > a else np.zeros(bits.shape[1], np.uint8)
                                     for a, b in zip(self.offsets[:-1], self.offsets[1:], strict=True)])
        self.has_tokens = torch.from_numpy(lengths > 0)

    @property
    def binary_nbytes(self) -> int:
        """Bytes of the first stage's index (token bits and vote vectors)."""
        return self.words.nbytes + self.pooled_bits.nbytes

    @property
    def float_nbytes(self) -> int:
        return sum(x.numel() * 4 for x in self.floats)

    def first_stage(self, queries: torch.Tensor, how: FirstStage) -> torch.Tensor:
        """Hamming scores [Q, N] of zero-padded queries [Q, Tq, D] (padded query rows count for nothing)."""
        real = queries.abs().sum(-1) != 0  # [Q, Tq]
        signs = query_signs(queries)
        if how == "pooled":
            pages = unpack_signs(self.pooled_bits, self.dim, torch.float32)
            dots = signs.sum(1) @ pages.T  # sum_t q_t . p
            hamming = (real.sum(1, keepdim=True) * self.dim + dots) / 2  # sum_t (dim - hamming_t)
        else:
            hamming = torch.from_numpy(binary_maxsim(*self._query_rows(queries), self.words, self.offsets, self.dim))
        return hamming.masked_fill(~self.has_tokens[None], float("-inf"))

    def _query_rows(self, queries: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        return query_rows(pack_bits(queries), (queries.abs().sum(-1) != 0).numpy())  # real rows only

    def rerank(self, queries: torch.Tensor, candidates: list[list[int]], *, binary: bool = False) -> list[torch.Tensor]:
        """Float MaxSim of each zero-padded query [Q, Tq, D] against its own candidate pages -> one score per
        candidate, in the given order.

        Page by page, not query by query: each candidate page is scored once against all the queries that kept it
        (one product on the stored vectors, nothing copied), so the work is a few large products when queries share
        candidates and stays proportional to the (query, page) pairs when they do not. Padded query rows are zero
        and add 0 to every score; a page without tokens scores -1 per real query token, as ``maxsim``.
        ``binary``: binary MaxSim instead (Hamming on the sign bits, the ``multi`` first stage's score), query by
        query over its own candidates."""
        queries = torch.as_tensor(queries).float()
        if binary:
            width = max((len(ids) for ids in candidates), default=0)
            table = np.full((len(candidates), width), -1, np.int64)
            for i, ids in enumerate(candidates):
                table[i, : len(ids)] = ids
            scores = binary_maxsim(*self._query_rows(queries), self.words, self.offsets, self.dim, table)
            return [torch.from_numpy(scores[i, : len(ids)].copy()) for i, ids in enumerate(candidates)]
        by_page: dict[int, list[tuple[int, int]]] = {}
        for i, ids in enumerate(candidates):
            for n, j in enumerate(ids):
                by_page.setdefault(j, []).append((i, n))
        out = [torch.empty(len(ids)) for ids in candidates]
        # each query's rows up to its last real one: a page's product skips the padding its queries all share
        real = queries.abs().sum(-1) != 0
        counts = real.sum(1).tolist()
        width = (real * torch.arange(1, real.shape[1] + 1)).amax(1).tolist() if real.shape[1] else [0] * len(real)
        for j, pairs in by_page.items():
            if len(self.floats[j]) == 0:  # no tokens: -1 per real query token, as maxsim scores it
                scores = torch.tensor([-float(counts[i]) for i, _ in pairs])
            else:
                w = max(1, max(width[i] for i, _ in pairs))
                q = queries[torch.tensor([i for i, _ in pairs]), :w].reshape(-1, self.dim)
                scores = (q @ self.floats[j].T).amax(1).view(len(pairs), w).sum(1)
            for (i, n), score in zip(pairs, scores.tolist(), strict=True):
                out[i][n] = score
        return out

    def search(self, queries: torch.Tensor, top_k: int, *, first: FirstStage = "pooled", rescore_ratio: int = 10,
               stats: SearchStats | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Top ``top_k`` pages per query: (scores [Q, k], page indices [Q, k]), best first. Scores of reranked pages
        are float MaxSim; with ``rescore_ratio`` * top_k >= N this is exhaustive float MaxSim. A query with fewer
        than k real candidates is padded with index -1 and score -inf."""
        queries = torch.as_tensor(queries).float()
        k = min(top_k, self.size)
        keep = min(self.size, top_k * rescore_ratio)
        if first == "cascade":
            pool = self.first_stage(queries, "pooled").topk(min(self.size, keep * CASCADE), dim=1).indices
            pooled = [[int(j) for j in row if self.has_tokens[j]] for row in pool]
            ranked = self.rerank(queries, pooled, binary=True)
            candidates = [[ids[int(n)] for n in torch.argsort(r, descending=True, stable=True)[:keep]]
                          for ids, r in zip(pooled, ranked, strict=True)]
        else:
            cand = self.first_stage(queries, first).topk(keep, dim=1).indices  # [Q, keep]
            candidates = [[int(j) for j in row if self.has_tokens[j]] for row in cand]
        out_scores = torch.full((len(queries), k), float("-inf"))
        out_ids = torch.full((len(queries), k), -1, dtype=torch.long)
        for i, (ids, scores) in enumerate(zip(candidates, self.rerank(queries, candidates), strict=True)):
            order = torch.argsort(scores, descending=True, stable=True)[:k]
            out_scores[i, : len(order)] = scores[order]
            out_ids[i, : len(order)] = torch.tensor(ids, dtype=torch.long)[order]
        if stats:
            stats.candidates += sum(len(c) for c in candidates)
            stats.pages = self.size
        return out_scores, out_ids


def exhaustive_search(queries: torch.Tensor, docs: DocIndex, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Float MaxSim over every page: the reference the two-stage search is measured against."""
    scores = maxsim(queries, docs)
    return scores.topk(min(top_k, scores.shape[1]), dim=1)
