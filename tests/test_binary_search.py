"""Binary two-stage search against direct computations (property-based: hypothesis)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.retrieval.binary import (
    BinaryIndex,
    SearchStats,
    exhaustive_search,
    hamming_similarity,
    majority_vote,
    pack_bits,
    unpack_signs,
)
from harness.retrieval.hamming import as_words, binary_maxsim, query_rows
from harness.retrieval.maxsim import DocIndex, maxsim, pad_vectors

DIMS = st.sampled_from([8, 16, 24, 128, 200])  # 200: four 64-bit words, the last one part padding


def vectors(lengths: list[int], dim: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [F.normalize(torch.randn(n, dim, generator=g), dim=-1) for n in lengths]


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 6), DIMS, st.integers(0, 10_000))
def test_sign_bits_round_trip(n: int, dim: int, seed: int) -> None:
    x = vectors([n], dim, seed)[0]
    x[0, 0] = 0.0  # a zero coordinate counts as non-negative
    bits = pack_bits(x)
    assert bits.shape == (n, dim // 8) and bits.dtype == np.uint8
    assert torch.equal(unpack_signs(bits, dim, torch.float32), torch.where(x >= 0, 1.0, -1.0))


def test_128_dimensions_pack_into_16_bytes() -> None:
    assert pack_bits(torch.randn(3, 128)).shape == (3, 16)


@settings(max_examples=30, deadline=None)
@given(DIMS, st.integers(0, 10_000))
def test_hamming_similarity_is_dim_minus_differing_signs(dim: int, seed: int) -> None:
    a, b = vectors([1, 1], dim, seed)
    differ = int(((a >= 0) != (b >= 0)).sum())
    assert hamming_similarity(pack_bits(a), pack_bits(b), dim).item() == dim - differ
    sa, sb = (unpack_signs(pack_bits(x), dim, torch.float32) for x in (a, b))
    assert float(sa @ sb.T) == dim - 2 * differ  # the identity the fast first stages rely on


def test_majority_vote_sets_a_bit_where_at_least_half_the_tokens_do() -> None:
    tokens = np.packbits(np.array([[1, 1, 0, 0, 1, 0, 0, 0], [1, 0, 0, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 0, 0, 0],
                                   [1, 0, 1, 0, 0, 0, 0, 0]], dtype=bool), axis=-1)
    assert np.unpackbits(majority_vote(tokens, 8)).tolist() == [1, 0, 0, 1, 1, 0, 0, 0]


def direct_first_stage(q: list[torch.Tensor], docs: list[torch.Tensor], dim: int, how: str) -> np.ndarray:
    out = np.zeros((len(q), len(docs)))
    for i, qq in enumerate(q):
        qb = pack_bits(qq)
        for j, d in enumerate(docs):
            db = pack_bits(d)
            if how == "pooled":
                out[i, j] = sum(hamming_similarity(t, majority_vote(db, dim), dim) for t in qb)
            else:
                out[i, j] = sum(max(hamming_similarity(t, u, dim) for u in db) for t in qb)
    return out


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(1, 4), min_size=1, max_size=3), st.lists(st.integers(1, 6), min_size=1, max_size=6),
       DIMS, st.sampled_from(["pooled", "multi"]), st.integers(0, 10_000))
def test_first_stage_equals_hamming_computed_directly(q_lens, d_lens, dim, how, seed) -> None:
    q, docs = vectors(q_lens, dim, seed), vectors(d_lens, dim, seed + 1)
    got = BinaryIndex(docs).first_stage(pad_vectors(q), how).numpy()
    assert np.array_equal(got, direct_first_stage(q, docs, dim, how))


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(1, 5), min_size=1, max_size=4), st.lists(st.integers(1, 8), min_size=2, max_size=12),
       st.sampled_from([8, 32, 128]), st.sampled_from(["pooled", "multi", "cascade"]), st.integers(0, 10_000),
       st.integers(1, 3))
def test_two_stage_with_every_page_a_candidate_is_exhaustive_maxsim(q_lens, d_lens, dim, how, seed, k) -> None:
    q, docs = pad_vectors(vectors(q_lens, dim, seed)), vectors(d_lens, dim, seed + 1)
    index = BinaryIndex(docs)
    scores, ids = index.search(q, k, first=how, rescore_ratio=len(docs))
    ref_scores, _ = exhaustive_search(q, DocIndex(docs), k)
    assert torch.allclose(scores, ref_scores, atol=1e-5)
    full = maxsim(q, docs)
    assert torch.allclose(full.gather(1, ids), scores, atol=1e-5)  # each returned score is its page's MaxSim


def test_second_stage_reranks_only_the_first_stage_candidates() -> None:
    q, docs = pad_vectors(vectors([3, 2], 32, 0)), vectors([4] * 50, 32, 1)
    stats = SearchStats()
    scores, ids = BinaryIndex(docs).search(q, 5, rescore_ratio=2, stats=stats)
    assert stats.candidates == 2 * 10 and stats.pages == 50
    assert ids.shape == (2, 5) and bool((scores[:, :-1] >= scores[:, 1:]).all())


def test_padded_query_rows_and_empty_pages() -> None:
    q = vectors([2], 16, 0)
    padded = pad_vectors([q[0], torch.zeros(5, 16)])[:1]  # query 0 padded to 5 rows
    docs = [*vectors([3, 2], 16, 1), torch.zeros(0, 16)]
    index = BinaryIndex(docs)
    for how in ("pooled", "multi"):
        first = index.first_stage(padded, how)
        assert np.array_equal(first[0, :2].numpy(), direct_first_stage(q, docs[:2], 16, how)[0])
        assert first[0, 2] == float("-inf")  # an empty page is never a candidate
    _, ids = index.search(padded, 3, rescore_ratio=1)
    assert sorted(ids[0, :2].tolist()) == [0, 1] and ids[0, 2] == -1
    binary = index.rerank(padded, [[2, 0]], binary=True)[0]  # as the multi kernel: 0 for a page without tokens
    assert binary[0] == 0 and binary[1] == index.first_stage(padded, "multi")[0, 0]


@settings(max_examples=20, deadline=None)
@given(st.lists(st.integers(1, 4), min_size=1, max_size=3), st.lists(st.integers(1, 6), min_size=2, max_size=8),
       DIMS, st.integers(0, 10_000))
def test_binary_rerank_of_candidates_equals_binary_maxsim(q_lens, d_lens, dim, seed) -> None:
    """The cascade's middle stage (binary MaxSim on the 64-bit stage's pages) scores as the multi first stage."""
    q, docs = pad_vectors(vectors(q_lens, dim, seed)), vectors(d_lens, dim, seed + 1)
    index = BinaryIndex(docs)
    full = index.first_stage(q, "multi")
    picks = [[j for j in range(len(docs)) if (i + j) % 2 == 0] for i in range(len(q))]
    for i, got in enumerate(index.rerank(q, picks, binary=True)):
        assert torch.equal(got, full[i, picks[i]])


def test_cascade_ranks_the_64_bit_stage_best_by_whole_codes() -> None:
    qs, docs = vectors([3, 2], 128, 0), vectors([5, 40] * 150, 128, 1)
    q, index, stats = pad_vectors(qs), BinaryIndex(docs), SearchStats()
    _, ids = index.search(q, 2, first="cascade", rescore_ratio=3, stats=stats)
    assert stats.candidates == 2 * 6  # k x ratio reranked in float, out of the 60 the 64-bit stage kept
    prefix = index.first_stage(q, "prefix")  # binary MaxSim of the first 64 coordinates' signs
    assert np.array_equal(prefix.numpy(), direct_first_stage([x[:, :64] for x in qs], [d[:, :64] for d in docs], 64,
                                                             "multi"))
    pool, whole = torch.from_numpy(index.cascade_pool(q, 60)), index.first_stage(q, "multi")
    for i in range(2):
        assert len(set(pool[i].tolist())) == 60  # 60 distinct pages, the 45 best by the 64-bit score among them
        assert set(prefix[i].topk(45).indices.tolist()) <= set(pool[i].tolist())
        lengths = torch.tensor([len(d) for d in docs])[pool[i]]
        assert (lengths == 5).any() and (lengths == 40).any()
        kept = pool[i][torch.sort(whole[i, pool[i]], descending=True, stable=True).indices[:6]]
        assert set(ids[i].tolist()) <= set(kept.tolist())


@settings(max_examples=10, deadline=None)
@given(st.integers(0, 30), st.integers(0, 10_000))
def test_cascade_pool_follows_its_rule(empty: int, seed: int) -> None:
    """The pool = the 64-bit score's best 3/4, then the best by score relative to the page's eighth by length (median
    and median absolute deviation, pages with tokens only: pages without tokens are never candidates)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 60, (56,), generator=g).tolist()
    docs = [torch.zeros(0, 128)] * empty + vectors(lengths, 128, seed)
    q = pad_vectors(vectors([4, 2], 128, seed + 1))
    index = BinaryIndex(docs)
    pool = index.cascade_pool(q, 24)
    scores = index.first_stage(q, "prefix").numpy()
    eighths = np.array_split(np.argsort([0] * empty + lengths, kind="stable")[empty:], 8)
    for i in range(len(q)):
        best = set(torch.from_numpy(scores[i]).topk(18).indices.tolist())
        relative = {}
        for members in eighths:
            x = scores[i, members]
            median = np.median(x)  # 7 members each: the middle one, as torch's median
            spread = max(1.0, float(np.median(np.abs(x - median))))
            relative.update({int(m): (v - median) / spread for m, v in zip(members, x, strict=True)})
        rest = sorted((p for p in relative if p not in best), key=lambda p: -relative[p])
        assert set(pool[i, :18].tolist()) == best
        cut = relative[rest[5]]  # the 6th best by relative score: ties at the cut may go either way
        assert all(relative[p] >= cut for p in pool[i, 18:].tolist())


def test_binary_maxsim_kernel_batches_and_empty_pages() -> None:
    """Query batches give the same scores as one batch; a page without tokens scores 0 (the index masks it)."""
    q = pad_vectors(vectors([3, 5, 2, 4], 128, 0))
    docs = vectors([4, 1, 6], 128, 1)
    words = as_words(pack_bits(torch.cat(docs)))
    offsets = np.array([0, 4, 4, 5, 11])  # page 1 is empty
    real = (q.abs().sum(-1) != 0).numpy()
    rows, starts = query_rows(pack_bits(q), real)
    one = binary_maxsim(rows, starts, words, offsets, 128)
    assert np.array_equal(one, binary_maxsim(rows, starts, words, offsets, 128, query_batch=1))
    assert (one[:, 1] == 0).all()
    direct = direct_first_stage([x[m] for x, m in zip(q, torch.from_numpy(real), strict=True)],
                                [docs[0], docs[1], docs[2]], 128, "multi")
    assert np.array_equal(one[:, [0, 2, 3]], direct)


@settings(max_examples=20, deadline=None)
@given(st.lists(st.integers(0, 5), min_size=1, max_size=5), st.lists(st.integers(0, 9), min_size=1, max_size=10),
       st.integers(0, 10_000))
def test_float_rerank_equals_maxsim_on_any_candidates(q_lens, d_lens, seed) -> None:
    """The float rerank = the engine's MaxSim for every (query, candidate) pair: queries of any length (empty ones
    too), pages of any length (a page without tokens scores -1 per real query token), candidates shared or not."""
    q = pad_vectors(vectors([max(n, 1) for n in q_lens], 16, seed))
    q[[i for i, n in enumerate(q_lens) if n == 0]] = 0.0
    docs = [torch.zeros(0, 16) if n == 0 else x for n, x in zip(d_lens, vectors([max(n, 1) for n in d_lens], 16,
                                                                                  seed + 1), strict=True)]
    g = torch.Generator().manual_seed(seed)
    picks = [torch.randperm(len(docs), generator=g)[: int(torch.randint(0, len(docs) + 1, (1,), generator=g))].tolist()
             for _ in q_lens]
    want = maxsim(q, docs)
    for i, got in enumerate(BinaryIndex(docs).rerank(q, picks)):
        assert torch.allclose(got, want[i, picks[i]], atol=1e-5)
