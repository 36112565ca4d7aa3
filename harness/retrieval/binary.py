"""Binary two-stage search for any multi-vector model (ColQwen3VL's search, RECIPES.md section 3).

Index: each token vector becomes its sign bits (x >= 0), packed 8 per byte (16 bytes for 128 dimensions); each
page also gets one pooled vector, the majority vote of its tokens' bits. Hamming similarity is dim - popcount(a xor
b):
- ``pooled`` first stage: sum over query tokens of the Hamming similarity to the page's vote vector, computed as a
  product of +-1 matrices (a . b = dim - 2 hamming; one matrix-vector product with the query's summed +-1 tokens);
- ``multi`` first stage: binary MaxSim, sum over query tokens of the best Hamming similarity over the page's tokens,
  by XOR and popcount on 64-bit words (``harness.retrieval.hamming``: nothing but the per-page best is written);
- ``cascade``: binary MaxSim on the first 64 bits of each code (one word: 1.8x faster per token pair than the 128
  bits of the Col* models' vectors) over every page keeps CASCADE x as many pages (3/4 by that score, 1/4 by that
  score relative to pages of similar length: ``cascade_pool``), binary MaxSim on the whole codes ranks only those.
  A 64-bit prefix is a coarser code of the same vectors (sign bits of 64 of the coordinates).
The first stage keeps top_k x rescore_ratio candidates per query; the second reranks them by float MaxSim on the
stored float vectors (the exact score of ``harness.retrieval.maxsim``) and returns the top_k.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from harness.retrieval.hamming import as_words, binary_maxsim, grouped_binary_maxsim, query_rows
from harness.retrieval.maxsim import DocIndex, maxsim, real_tokens

FirstStage = Literal["pooled", "multi", "cascade"]
CASCADE = 10  # the cascade's 64-bit stage keeps CASCADE times the candidates the whole-code stage keeps


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
        by_length = np.argsort(lengths, kind="stable")[(lengths == 0).sum():]  # pages with tokens, shortest first
        self._length_eighths = [torch.from_numpy(m) for m in np.array_split(by_length, 8) if len(m)]

    @property
    def binary_nbytes(self) -> int:
        """Bytes of the first stage's index (token bits and vote vectors)."""
        return self.words.nbytes + self.pooled_bits.nbytes

    @property
    def float_nbytes(self) -> int:
        return sum(x.numel() * 4 for x in self.floats)

    def first_stage(self, queries: torch.Tensor, how: Literal["pooled", "multi", "prefix"]) -> torch.Tensor:
        """Hamming scores [Q, N] of zero-padded queries [Q, Tq, D] (padded query rows count for nothing): ``pooled``
        and ``multi`` as above, ``prefix`` binary MaxSim on the codes' first word (64 bits)."""
        real = queries.abs().sum(-1) != 0  # [Q, Tq]
        signs = query_signs(queries)
        if how == "pooled":
            pages = unpack_signs(self.pooled_bits, self.dim, torch.float32)
            dots = signs.sum(1) @ pages.T  # sum_t q_t . p
            hamming = (real.sum(1, keepdim=True) * self.dim + dots) / 2  # sum_t (dim - hamming_t)
        elif how == "prefix":
            words, starts = self._query_rows(queries)
            hamming = torch.from_numpy(binary_maxsim(words[:, :1], starts, self.words[:, :1], self.offsets,
                                                     min(64, self.dim)))
        else:
            hamming = torch.from_numpy(binary_maxsim(*self._query_rows(queries), self.words, self.offsets, self.dim))
        return hamming.masked_fill(~self.has_tokens[None], float("-inf"))

    def _query_rows(self, queries: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        return query_rows(pack_bits(queries), (queries.abs().sum(-1) != 0).numpy())  # real rows only

    def pair_scores(self, queries: torch.Tensor, table: np.ndarray, *, binary: bool = False) -> torch.Tensor:
        """Float MaxSim (or, ``binary``, binary MaxSim) of each zero-padded query [Q, Tq, D] against its own
        candidates: ``table`` [Q, C] page indices, -1 for none -> [Q, C] scores, -inf where -1.

        The pairs are grouped by page: each page is read once, against the real rows of all the queries that kept
        it (one product per page in float, one pass of the popcount kernel in binary), so the work stays
        proportional to the (query, page) pairs and is done in a few large pieces when queries share candidates.
        A query without real rows scores 0; a page without tokens scores -1 per real query token in float (as
        ``maxsim``) and 0 in binary (as the ``multi`` first stage)."""
        words, starts = self._query_rows(queries)
        pairs = _group_pairs(table)
        if binary:
            sums = grouped_binary_maxsim(words, starts, pairs.query, pairs.bounds, pairs.pages, self.words,
                                         self.offsets, self.dim)
        else:
            sums = self._float_sums(queries[queries.abs().sum(-1) != 0], starts, pairs)
        out = torch.full(table.shape, float("-inf"))
        out.view(-1)[torch.from_numpy(pairs.slots)] = torch.from_numpy(sums).float()
        return out

    def _float_sums(self, rows: torch.Tensor, starts: np.ndarray, pairs: _Pairs) -> np.ndarray:
        """Float MaxSim of each pair: the queries' real rows [R, D] (query i's rows starts[i]:starts[i + 1]).

        One product per page against its pairs' query rows side by side; the products are too small for torch's
        intra-op threads to pay (2x slower), so the pages are shared out among as many Python threads as torch has
        intra-op threads, each product running on one."""
        counts = starts[pairs.query + 1] - starts[pairs.query]
        first = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)  # pair k's laid-out rows first[k]:[k + 1]
        pair_of_row = np.repeat(np.arange(len(counts)), counts)
        laid = torch.from_numpy(starts[pairs.query][pair_of_row] + np.arange(first[-1]) - first[:-1][pair_of_row])
        best = torch.full((len(laid),), -1.0)  # -1 per row: a page without tokens, as maxsim scores it
        tasks = [(a, b, p) for a, b, p in zip(first[pairs.bounds[:-1]].tolist(), first[pairs.bounds[1:]].tolist(),
                                               pairs.pages.tolist(), strict=True) if len(self.floats[p])]

        def work(chunk: list[tuple[int, int, int]]) -> None:
            for a, b, p in chunk:
                torch.amax(rows[laid[a:b]] @ self.floats[p].T, 1, out=best[a:b])

        workers = max(1, min(torch.get_num_threads(), len(tasks)))
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(work, [tasks[w::workers] for w in range(workers)]))
        finally:
            torch.set_num_threads(threads)
        return np.bincount(pair_of_row, weights=best.double().numpy(), minlength=len(counts))

    def rerank(self, queries: torch.Tensor, candidates: list[list[int]], *, binary: bool = False) -> list[torch.Tensor]:
        """``pair_scores`` for candidate lists: one score per candidate, in the given order."""
        queries = torch.as_tensor(queries).float()
        table = np.full((len(candidates), max((len(c) for c in candidates), default=0)), -1, np.int64)
        for i, ids in enumerate(candidates):
            table[i, : len(ids)] = ids
        scores = self.pair_scores(queries, table, binary=binary)
        return [scores[i, : len(ids)].clone() for i, ids in enumerate(candidates)]

    def search(self, queries: torch.Tensor, top_k: int, *, first: FirstStage = "pooled", rescore_ratio: int = 10,
               stats: SearchStats | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Top ``top_k`` pages per query: (scores [Q, k], page indices [Q, k]), best first. Scores of reranked pages
        are float MaxSim; with ``rescore_ratio`` * top_k >= N this is exhaustive float MaxSim. A query with fewer
        than k real candidates is padded with index -1 and score -inf."""
        queries = torch.as_tensor(queries).float()
        k = min(top_k, self.size)
        keep = min(self.size, top_k * rescore_ratio)
        if first == "cascade" and self.words.shape[1] > 1:
            coarse = self.cascade_pool(queries, min(self.size, keep * CASCADE))
            fine = self.pair_scores(queries, self._real_pages(coarse), binary=True)
            order = torch.sort(fine, dim=1, descending=True, stable=True).indices[:, :keep].numpy()
            table = np.take_along_axis(coarse, order, axis=1)
        else:  # (a cascade over codes of one word: the prefix is the whole code, binary MaxSim ranks every page)
            how = "multi" if first == "cascade" else first
            table = self.first_stage(queries, how).topk(keep, dim=1).indices.numpy()
        table = self._real_pages(table)
        scores = self.pair_scores(queries, table)
        order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]  # ties: first-stage order
        out_scores = scores.gather(1, order)
        out_ids = torch.from_numpy(table).gather(1, order).masked_fill(out_scores == float("-inf"), -1)
        if stats:
            stats.candidates += int((table >= 0).sum())
            stats.pages = self.size
        return out_scores, out_ids

    def cascade_pool(self, queries: torch.Tensor, width: int) -> np.ndarray:
        """The cascade's 64-bit stage: ``width`` pages per query [Q, width], three quarters the best by binary MaxSim
        on the codes' first 64 bits, a quarter the best by that score relative to pages of similar length (its
        median and median absolute deviation in the page's eighth of the corpus by length). 64 bits are a noisy code,
        and a long page's many tokens give chance near-matches more tries, so the plain score favours long pages: on
        synthetic pages (benchmarks/binary_search.py) it dropped a short relevant page for 10% of the queries at 10k
        pages and 41% at 50k. The quarter was chosen on the synthetic pages and half the real questions at 10k
        (README, search strategies)."""
        if width >= self.size:
            return np.tile(np.arange(self.size), (len(queries), 1))
        scores = self.first_stage(queries, "prefix")
        best = scores.topk(width * 3 // 4, dim=1).indices
        relative = torch.full_like(scores, float("-inf"))
        for members in self._length_eighths:
            x = scores[:, members]
            median = x.median(1, keepdim=True).values
            spread = (x - median).abs().median(1, keepdim=True).values.clamp(min=1.0)
            relative[:, members] = torch.nan_to_num((x - median) / spread, nan=float("-inf"))
        relative.scatter_(1, best, float("-inf"))  # each page once
        return torch.cat([best, relative.topk(width - best.shape[1], dim=1).indices], 1).numpy()

    def _real_pages(self, table: np.ndarray) -> np.ndarray:
        """-1 in place of pages without tokens (never candidates)."""
        return np.where(self.has_tokens.numpy()[table], table, -1)


@dataclass
class _Pairs:
    """The (query, page) pairs of a [Q, C] candidate table grouped by page, for work that reads each page once."""

    slots: np.ndarray  # [P] each pair's flat position in the table, grouped by page
    query: np.ndarray  # [P] each pair's query
    pages: np.ndarray  # [G] the page of each group
    bounds: np.ndarray  # [G + 1] group g's pairs bounds[g]:bounds[g + 1]


def _group_pairs(table: np.ndarray) -> _Pairs:
    """Group the pairs of a [Q, C] table of page indices (-1: none) by page."""
    flat = table.reshape(-1)
    slots = np.flatnonzero(flat >= 0)
    slots = slots[np.argsort(flat[slots], kind="stable")]
    pages, first = np.unique(flat[slots], return_index=True)
    return _Pairs(slots, slots // max(1, table.shape[1]), pages, np.append(first, len(slots)))


def exhaustive_search(queries: torch.Tensor, docs: DocIndex, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Float MaxSim over every page: the reference the two-stage search is measured against."""
    scores = maxsim(queries, docs)
    return scores.topk(min(top_k, scores.shape[1]), dim=1)
