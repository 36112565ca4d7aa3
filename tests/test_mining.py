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


def test_false_negative_guard_drops_a_near_duplicate_and_searches_deeper() -> None:
    from harness.retrieval.mining import negatives_from_scores

    docs = _vectors(40, seed=4)
    docs[1] = F.normalize(docs[0] + 0.05 * docs[2], dim=0)  # page 1: a near-duplicate of page 0
    queries = F.normalize(docs[:1] + 0.3 * _vectors(1, seed=5), dim=-1)  # a query whose positive is page 0
    plain = mine_negatives(queries, docs, [0], k=8, use_faiss=False)
    assert plain[0][0] == 1  # without the guard the duplicate is the hardest "negative"
    stats: dict[str, int] = {}
    guarded = mine_negatives(queries, docs, [0], k=8, use_faiss=False, margin=0.05, stats=stats)
    positive = float(queries[0] @ docs[0])
    assert 1 not in guarded[0] and len(guarded[0]) == 8 and stats["dropped"] >= 1 and stats["short"] == 0
    assert all(float(queries[0] @ docs[j]) < positive - 0.05 for j in guarded[0])
    # a margin so wide that k + 5 candidates are not enough: the search goes deeper, down to the whole corpus
    wide = mine_negatives(queries, docs, [0], k=8, use_faiss=False, margin=0.5)
    below = sorted((j for j in range(1, 40) if float(queries[0] @ docs[j]) < positive - 0.5),
                   key=lambda j: -float(queries[0] @ docs[j]))
    assert wide[0] == below[:8]
    # the same rule on a full score matrix (the model's own scores instead of a vector search)
    assert negatives_from_scores(queries @ docs.T, [0], 8, margin=0.05) == guarded
    assert negatives_from_scores(queries @ docs.T, [0], 8) == plain
