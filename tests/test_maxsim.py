"""Masked MaxSim against a direct loop over real tokens."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.retrieval.maxsim import DocIndex, maxsim, pad_vectors


def reference(q: list[torch.Tensor], d: list[torch.Tensor]) -> torch.Tensor:
    return torch.tensor([[sum(max(float(qi @ dj) for dj in dd) for qi in qq) for dd in d] for qq in q])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 5), min_size=1, max_size=4), st.lists(st.integers(1, 7), min_size=1, max_size=6),
       st.integers(2, 8), st.integers(0, 10_000), st.integers(1, 4096), st.integers(1, 40))
def test_maxsim_matches_reference(q_lens, d_lens, dim, seed, budget, block_tokens) -> None:
    g = torch.Generator().manual_seed(seed)
    q = [F.normalize(torch.randn(n, dim, generator=g), dim=-1) for n in q_lens]
    d = [F.normalize(torch.randn(n, dim, generator=g), dim=-1) for n in d_lens]
    want = reference(q, d)
    assert torch.allclose(maxsim(pad_vectors(q), pad_vectors(d), budget=budget), want, atol=1e-5)
    # a prebuilt index (small blocks: many blocks, shorter pages filled with copies of a token), reused
    index = DocIndex(d, block_tokens=block_tokens)
    for _ in range(2):
        assert torch.allclose(maxsim(pad_vectors(q), index, budget=budget), want, atol=1e-5)
    consumed = list(d)
    assert torch.equal(maxsim(pad_vectors(q), DocIndex(consumed, block_tokens=block_tokens, consume=True)),
                       maxsim(pad_vectors(q), index))
    assert consumed == [None] * len(d)
    # its documents, in the given order, are views of its blocks (another index can share the memory)
    views = index.documents()
    assert all(torch.equal(a, b) for a, b in zip(views, d, strict=True))
    assert all(any(v.untyped_storage().data_ptr() == t.untyped_storage().data_ptr() for _, t in index.blocks)
               for v in views)


def test_bf16_products_stay_close_to_fp32() -> None:
    g = torch.Generator().manual_seed(0)
    q = pad_vectors([F.normalize(torch.randn(n, 64, generator=g), dim=-1) for n in (3, 7)])
    d = [F.normalize(torch.randn(n, 64, generator=g), dim=-1) for n in (5, 40, 9)]
    fp32, bf16 = maxsim(q, d), maxsim(q, DocIndex(d, dtype=torch.bfloat16))
    assert bf16.dtype == torch.float32 and not torch.equal(fp32, bf16)
    assert torch.allclose(fp32, bf16, atol=0.05)


def test_a_page_without_tokens_scores_minus_one_per_real_query_token() -> None:
    q = pad_vectors([torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[1.0, 0.0]])])
    d = [torch.tensor([[1.0, 0.0]]), torch.zeros(0, 2)]
    assert maxsim(q, d).tolist() == [[1.0, -2.0], [1.0, -1.0]]


def test_padding_never_beats_negative_real_tokens() -> None:
    q = torch.tensor([[[1.0, 0.0]]])
    d = pad_vectors([torch.tensor([[-1.0, 0.0]]), torch.tensor([[-1.0, 0.0], [-0.6, 0.8], [0.0, 1.0]])])
    assert maxsim(q, d).tolist() == [[-1.0, 0.0]]


def test_gradients_flow_through_maxsim() -> None:
    """Losses (ColIntern's) differentiate through the evaluation engine: the same gradients as a direct computation."""
    g = torch.Generator().manual_seed(0)
    q = [F.normalize(torch.randn(n, 8, generator=g), dim=-1).requires_grad_() for n in (2, 3)]
    d = [F.normalize(torch.randn(n, 8, generator=g), dim=-1).requires_grad_() for n in (4, 1, 6)]
    maxsim(pad_vectors(q), d).sum().backward()
    got = [x.grad.clone() for x in (*q, *d)]
    for x in (*q, *d):
        x.grad = None
    torch.stack([(qq @ dd.T).amax(1).sum() for qq in q for dd in d]).sum().backward()
    for a, x in zip(got, (*q, *d), strict=True):
        assert torch.allclose(a, x.grad, atol=1e-6)
