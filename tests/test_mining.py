"""Hard-negative mining: FAISS and exact torch top-k agree; the positive is dropped and k kept."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from harness.retrieval.mining import have_faiss, mean_pool, mine_negatives, search


def _vectors(n: int, d: int = 16, seed: int = 0) -> torch.Tensor:
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_torch_mining_drops_positive_keeps_k() -> None:
    docs = _vectors(30)
    queries = docs[:10] + 0.01 * _vectors(10, seed=1)  # each query's best doc is its own positive
    mined = mine_negatives(F.normalize(queries, dim=-1), docs, list(range(10)), k=4, use_faiss=False)
    scores = F.normalize(queries, dim=-1) @ docs.T
    for i, negs in enumerate(mined):
        assert len(negs) == 4 and i not in negs
        expected = [j for j in scores[i].argsort(descending=True).tolist() if j != i][:4]
        assert negs == expected


def test_several_positives_and_small_corpus() -> None:
    docs = _vectors(5)
    mined = mine_negatives(docs[:2], docs, [[0, 1], 1], k=10, use_faiss=False)
    assert sorted(mined[0]) == [2, 3, 4] and sorted(mined[1]) == [0, 2, 3, 4]


def test_mean_pool_normalises() -> None:
    pooled = mean_pool([torch.ones(3, 4), torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0]])])
    assert torch.allclose(pooled.norm(dim=-1), torch.ones(2))
    assert torch.allclose(pooled[1], torch.tensor([2 ** -0.5, 2 ** -0.5, 0, 0]))


@pytest.mark.skipif(not have_faiss(), reason="faiss not installed (the optional extra: pip install '.[faiss]')")
def test_faiss_matches_torch() -> None:
    docs, queries = _vectors(200, 32, seed=2), _vectors(25, 32, seed=3)
    s_t, i_t = search(queries, docs, 12, use_faiss=False)
    s_f, i_f = search(queries, docs, 12, use_faiss=True)
    assert torch.equal(i_t, i_f)
    assert torch.allclose(s_t, s_f, atol=1e-5)
    positives = i_t[:, 0].tolist()
    assert mine_negatives(queries, docs, positives, 7, use_faiss=True) == \
        mine_negatives(queries, docs, positives, 7, use_faiss=False)
