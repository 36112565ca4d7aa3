"""Hard-negative mining: one mean-pooled, L2-normalised vector per query and per page, inner-product search.

For each query take the top ``k + 5`` pages, drop its positive(s), keep the first ``k``. The search runs on FAISS
(``IndexFlatIP``, exact) when ``import faiss`` works (``pip install '.[faiss]'``) and on an exact torch top-k
otherwise; both give the same pages in the same order (ties aside: equal scores may come back in either order).

False-negative guard (``margin``, positive-aware mining as in NV-Retriever's TopK-MarginPos): a candidate that scores
within ``margin`` of the query's positive (or above it) is more likely an unlabeled positive than a negative (a
near-duplicate page, the same entity's other page), so it is dropped; the search then goes deeper until ``k``
negatives survive or the corpus is exhausted.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

EXTRA = 5  # retrieved beyond k, so that dropping the positive(s) still leaves k


def have_faiss() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def mean_pool(items: Sequence[torch.Tensor]) -> torch.Tensor:
    """[T_i, D] matrices (real vectors only) -> [N, D]: the mean of each, L2-normalised."""
    return F.normalize(torch.stack([x.float().mean(0) for x in items]), dim=-1)


def search(queries: torch.Tensor, docs: torch.Tensor, k: int, use_faiss: bool | None = None,
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact inner-product top-k: (scores [Q, k], indices [Q, k]), best first. ``use_faiss``: None = if installed."""
    k = min(k, docs.shape[0])
    queries, docs = queries.float().contiguous(), docs.float().contiguous()
    if use_faiss is None:
        use_faiss = have_faiss()
    if use_faiss:
        import faiss

        index = faiss.IndexFlatIP(docs.shape[1])
        index.add(docs.numpy())
        scores, idx = index.search(queries.numpy(), k)
        return torch.from_numpy(scores), torch.from_numpy(idx).long()
    scores, idx = torch.topk(queries @ docs.T, k, dim=1)
    return scores, idx


def mine_negatives(queries: torch.Tensor, docs: torch.Tensor, positives: Sequence[int | Sequence[int]], k: int,
                   use_faiss: bool | None = None, margin: float | None = None,
                   stats: dict[str, int] | None = None) -> list[list[int]]:
    """For query i (row of ``queries``), the ``k`` best-scoring docs other than ``positives[i]`` (one index or
    several), best first. Vectors are [N, D] and L2-normalised (see ``mean_pool``).

    ``margin``: drop candidates scoring at least ``best positive score - margin`` (the false-negative guard), and
    search deeper for replacements. ``stats`` (a dict) receives ``dropped`` (candidates the guard dropped among those
    ranked above the last kept negative) and ``short`` (queries left with fewer than ``k``)."""
    if len(positives) != queries.shape[0]:
        raise ValueError(f"{queries.shape[0]} queries but {len(positives)} positives")
    drops = _drops(positives)
    q, d = queries.float(), docs.float()
    top = [float((q[i] @ d[sorted(drop)].T).max()) if drop else float("inf") for i, drop in enumerate(drops)]
    return _select(lambda rows, depth: search(queries[rows], docs, depth, use_faiss), docs.shape[0], drops, top, k,
                   margin, stats)


def negatives_from_scores(scores: torch.Tensor, positives: Sequence[int | Sequence[int]], k: int,
                          margin: float | None = None, stats: dict[str, int] | None = None) -> list[list[int]]:
    """``mine_negatives``'s rule on a full [Q, N] score matrix (every doc scored by the model itself, e.g. MaxSim,
    instead of a vector search)."""
    if len(positives) != scores.shape[0]:
        raise ValueError(f"{scores.shape[0]} queries but {len(positives)} positives")
    scores = scores.float()
    drops = _drops(positives)
    top = [float(scores[i, sorted(drop)].max()) if drop else float("inf") for i, drop in enumerate(drops)]

    def ranked(rows: list[int], depth: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.topk(scores[rows], min(depth, scores.shape[1]), dim=1)

    return _select(ranked, scores.shape[1], drops, top, k, margin, stats)


def _drops(positives: Sequence[int | Sequence[int]]) -> list[set[int]]:
    return [{pos} if isinstance(pos, int) else set(pos) for pos in positives]


def _select(ranked: Callable[[list[int], int], tuple[torch.Tensor, torch.Tensor]], n_docs: int,
            drops: list[set[int]], top: list[float], k: int, margin: float | None,
            stats: dict[str, int] | None) -> list[list[int]]:
    """Walk each query's ranking (``ranked(rows, depth)``: scores and indices, best first), skipping its positives
    and, with ``margin``, every doc scoring at least its best positive's score (``top``) minus ``margin``."""
    ceiling = [t - margin if margin is not None else float("inf") for t in top]
    out: list[list[int] | None] = [None] * len(drops)
    dropped = [0] * len(drops)
    todo, depth = list(range(len(drops))), k + EXTRA
    while todo:
        scores, idx = ranked(todo, depth)
        later = []
        for row, (s_row, i_row) in zip(todo, zip(scores.tolist(), idx.tolist(), strict=True), strict=True):
            keep, guard = [], 0
            for s, j in zip(s_row, i_row, strict=True):
                if j < 0 or j in drops[row]:
                    continue
                if s >= ceiling[row]:
                    guard += 1
                    continue
                keep.append(j)
                if len(keep) == k:
                    break
            # Without the guard one search suffices (the positive(s) aside, k + 5 deep); with it, go deeper for a
            # query that lost candidates to the guard, until it has k or the corpus is exhausted.
            if len(keep) < k and margin is not None and depth < n_docs:
                later.append(row)
            else:
                out[row], dropped[row] = keep, guard
        todo, depth = later, min(2 * depth, n_docs)
    if stats is not None:
        stats["dropped"] = sum(dropped)
        stats["short"] = sum(1 for x in out if x is not None and len(x) < k)
    return [x if x is not None else [] for x in out]
