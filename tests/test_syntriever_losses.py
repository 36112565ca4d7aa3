"""Syntriever's losses against a direct computation from their formulas (property-based, hypothesis).

Stage 1's multi-positive and single-target forms are the shared contrastive loss (harness.train.objectives) at
temperature 1 on the score matrix; the scores are the shared training MaxSim divided by the query length."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.retrieval.maxsim import score_matrix
from harness.train.objectives import contrastive_loss
from harness.train.syntriever_losses import partial_plackett_luce_loss, reference_kl


def multi_positive_loss(scores: torch.Tensor, positives: torch.Tensor,
                        valid: torch.Tensor | None = None) -> torch.Tensor:
    return contrastive_loss(scores, positives, "infonce", 1.0, valid)


def single_target_loss(scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    one_hot = torch.zeros(scores.shape, dtype=torch.bool)
    one_hot[torch.arange(len(target)), target] = True
    return contrastive_loss(scores, one_hot, "infonce", 1.0)


def maxsim_scores(q: torch.Tensor, qm: torch.Tensor, d: torch.Tensor, dm: torch.Tensor) -> torch.Tensor:
    return score_matrix(q, qm, d, dm) / qm.sum(1, keepdim=True)

FLOATS = st.floats(-30, 30, allow_nan=False, width=32)


@st.composite
def problems(draw: st.DrawFn, min_c: int = 1) -> tuple[list[list[float]], list[list[bool]]]:
    b = draw(st.integers(1, 4))
    c = draw(st.integers(min_c, 7))
    scores = [[draw(FLOATS) for _ in range(c)] for _ in range(b)]
    valid = [[draw(st.booleans()) for _ in range(c)] for _ in range(b)]
    return scores, valid


def lse(xs: list[float]) -> float:
    top = max(xs)
    return top + math.log(sum(math.exp(x - top) for x in xs))


@settings(max_examples=200, deadline=None)
@given(problems(), st.data())
def test_multi_positive_matches_formula(problem, data) -> None:  # noqa: ANN001
    scores, valid = problem
    pos = []
    for row in valid:
        idx = [i for i, v in enumerate(row) if v]
        if not idx:
            row[0] = True
            idx = [0]
        chosen = data.draw(st.lists(st.sampled_from(idx), min_size=1, unique=True))
        pos.append([i in chosen for i in range(len(row))])
    expected = sum(-math.log(sum(math.exp(s[i]) for i in range(len(s)) if p[i]) /
                             sum(math.exp(s[i]) for i in range(len(s)) if v[i]))
                   for s, p, v in zip(scores, pos, valid, strict=True)) / len(scores)
    got = multi_positive_loss(torch.tensor(scores, dtype=torch.float64), torch.tensor(pos), torch.tensor(valid))
    assert got.item() == pytest.approx(expected, rel=1e-9, abs=1e-9)


@settings(max_examples=200, deadline=None)
@given(problems(), st.data())
def test_single_target_is_cross_entropy(problem, data) -> None:  # noqa: ANN001
    scores, _ = problem
    c = len(scores[0])
    target = [data.draw(st.integers(0, c - 1)) for _ in scores]
    expected = sum(lse(s) - s[t] for s, t in zip(scores, target, strict=True)) / len(scores)
    t = torch.tensor(scores, dtype=torch.float64)
    got = single_target_loss(t, torch.tensor(target))
    assert got.item() == pytest.approx(expected, rel=1e-9, abs=1e-9)
    assert got.item() == pytest.approx(torch.nn.functional.cross_entropy(t, torch.tensor(target)).item(), abs=1e-9)


@settings(max_examples=200, deadline=None)
@given(problems(min_c=2), st.data())
def test_one_positive_multi_positive_equals_single_target(problem, data) -> None:  # noqa: ANN001
    scores, _ = problem
    c = len(scores[0])
    target = [data.draw(st.integers(0, c - 1)) for _ in scores]
    pos = torch.zeros(len(scores), c, dtype=torch.bool)
    pos[torch.arange(len(scores)), torch.tensor(target)] = True
    t = torch.tensor(scores, dtype=torch.float64)
    assert multi_positive_loss(t, pos).item() == pytest.approx(single_target_loss(t, torch.tensor(target)).item(),
                                                               abs=1e-9)


@settings(max_examples=200, deadline=None)
@given(problems(min_c=2), st.data())
def test_partial_plackett_luce_matches_formula(problem, data) -> None:  # noqa: ANN001
    scores, _ = problem
    c = len(scores[0])
    firsts, seconds = [], []
    for _ in scores:
        p, n = data.draw(st.lists(st.integers(0, c - 1), min_size=2, max_size=2, unique=True))
        firsts.append(p)
        seconds.append(n)
    expected = 0.0
    for s, p, n in zip(scores, firsts, seconds, strict=True):
        rest = [s[i] for i in range(c) if i != p]
        expected += (lse(s) - s[p]) + (lse(rest) - s[n])  # -log P(p first) - log P(n second | p removed)
    expected /= len(scores)
    got = partial_plackett_luce_loss(torch.tensor(scores, dtype=torch.float64), torch.tensor(firsts),
                                     torch.tensor(seconds))
    assert got.item() == pytest.approx(expected, rel=1e-9, abs=1e-9)
    # It is the log-probability of the top-2 of a Plackett-Luce ranking: a probability, so the loss is >= 0.
    assert got.item() >= -1e-12


@settings(max_examples=100, deadline=None)
@given(problems(min_c=2), st.data())
def test_reference_kl_matches_formula_and_vanishes_at_reference(problem, data) -> None:  # noqa: ANN001
    scores, _ = problem
    ref = [[data.draw(FLOATS) for _ in row] for row in scores]
    expected = 0.0
    for s, r in zip(scores, ref, strict=True):
        lp = [x - lse(r) for x in r]
        lq = [x - lse(s) for x in s]
        expected += sum(math.exp(a) * (a - b) for a, b in zip(lp, lq, strict=True))
    expected /= len(scores)
    t, rt = torch.tensor(scores, dtype=torch.float64), torch.tensor(ref, dtype=torch.float64)
    assert reference_kl(t, rt).item() == pytest.approx(expected, rel=1e-7, abs=1e-9)
    assert reference_kl(rt, rt).item() == pytest.approx(0.0, abs=1e-9)


def test_losses_reject_impossible_targets() -> None:
    s = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="needs a positive"):
        multi_positive_loss(s, torch.tensor([[True, False, False], [False, False, False]]))
    with pytest.raises(ValueError, match="must differ"):
        partial_plackett_luce_loss(s, torch.tensor([0, 1]), torch.tensor([0, 2]))


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 3), st.integers(1, 3), st.integers(1, 4), st.integers(1, 4), st.integers(0, 10 ** 6))
def test_maxsim_scores_match_loops(bq: int, cd: int, tq: int, td: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    q = torch.nn.functional.normalize(torch.randn(bq, tq, 5, generator=g, dtype=torch.float64), dim=-1)
    d = torch.nn.functional.normalize(torch.randn(cd, td, 5, generator=g, dtype=torch.float64), dim=-1)
    qm = torch.rand(bq, tq, generator=g) > 0.3
    dm = torch.rand(cd, td, generator=g) > 0.3
    qm[:, 0] = True
    dm[:, 0] = True
    got = maxsim_scores(q, qm, d, dm)
    for i in range(bq):
        for j in range(cd):
            toks = [max(float(q[i, a] @ d[j, b]) for b in range(td) if dm[j, b]) for a in range(tq) if qm[i, a]]
            assert got[i, j].item() == pytest.approx(sum(toks) / len(toks), abs=1e-9)
