"""Masked MaxSim against a direct loop over real tokens."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.retrieval.maxsim import maxsim, pad_vectors


def reference(q: list[torch.Tensor], d: list[torch.Tensor]) -> torch.Tensor:
    return torch.tensor([[sum(max(float(qi @ dj) for dj in dd) for qi in qq) for dd in d] for qq in q])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 5), min_size=1, max_size=4), st.lists(st.integers(1, 7), min_size=1, max_size=6),
       st.integers(2, 8), st.integers(0, 10_000), st.integers(1, 4096))
def test_maxsim_matches_reference(q_lens, d_lens, dim, seed, budget) -> None:
    g = torch.Generator().manual_seed(seed)
    q = [F.normalize(torch.randn(n, dim, generator=g), dim=-1) for n in q_lens]
    d = [F.normalize(torch.randn(n, dim, generator=g), dim=-1) for n in d_lens]
    got = maxsim(pad_vectors(q), pad_vectors(d), budget=budget)
    assert torch.allclose(got, reference(q, d), atol=1e-5)


def test_padding_never_beats_negative_real_tokens() -> None:
    q = torch.tensor([[[1.0, 0.0]]])
    d = pad_vectors([torch.tensor([[-1.0, 0.0]]), torch.tensor([[-1.0, 0.0], [-0.6, 0.8], [0.0, 1.0]])])
    assert maxsim(q, d).tolist() == [[-1.0, 0.0]]
