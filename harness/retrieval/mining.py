"""Hard-negative mining: one mean-pooled, L2-normalised vector per query and per page, inner-product search.

For each query take the top ``k + 5`` pages, drop its positive(s), keep the first ``k``. The search runs on FAISS
(``IndexFlatIP``, exact) when ``import faiss`` works (``pip install '.[faiss]'``) and on an exact torch top-k
otherwise; both give the same pages in the same order (ties aside: equal scores may come back in either order).
"""

from __future__ import annotations

from collections.abc import Sequence

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
                   use_faiss: bool | None = None) -> list[list[int]]:
    """For query i (row of ``queries``), the ``k`` best-scoring docs other than ``positives[i]`` (one index or
    several), best first. Vectors are [N, D] and L2-normalised (see ``mean_pool``)."""
    if len(positives) != queries.shape[0]:
        raise ValueError(f"{queries.shape[0]} queries but {len(positives)} positives")
    _, idx = search(queries, docs, k + EXTRA, use_faiss)
    out = []
    for row, pos in zip(idx.tolist(), positives, strict=True):
        drop = {pos} if isinstance(pos, int) else set(pos)
        out.append([j for j in row if j not in drop and j >= 0][:k])
    return out
