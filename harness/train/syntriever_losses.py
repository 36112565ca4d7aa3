"""Syntriever's two losses (RECIPES.md section 2), on a score matrix.

Every function takes ``scores`` [B, C]: query b against candidate passage c, already divided by the temperature
(the paper: cosine / 0.05), and ``valid`` [B, C] (False for a candidate the query must not see, e.g. padding).

- ``multi_positive_loss`` (stage 1, the paper's form, default): for each query, minus the log of the softmax mass
  on ALL its relevant passages (gold, verified synthetic passage, chain-of-thought augmentation):
  L = -log( sum_{x in Pos(q)} e^{s(q,x)} / sum_{x} e^{s(q,x)} ).
- ``single_target_loss`` (stage 1, the seed code's form): cross-entropy over the same candidates with only the
  gold passage as the target.
- ``partial_plackett_luce_loss`` (stage 2): the top-2 of an LLM's ranking, p preferred over n:
  L = -log( e^{s(q,p)} / sum_{d in D} e^{s(q,d)} ) - log( e^{s(q,n)} / sum_{d in D minus p} e^{s(q,d)} ).
- ``reference_kl`` (stage 2, optional regulariser, off by default): KL(stage-1 softmax || current softmax) over each
  query's own candidate list, so the model does not drift far from the stage-1 model.

All return the mean over queries.
"""

from __future__ import annotations

import torch

NEG_INF = float("-inf")


def _masked(scores: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    return scores if valid is None else scores.masked_fill(~valid, NEG_INF)


def multi_positive_loss(scores: torch.Tensor, positives: torch.Tensor,
                        valid: torch.Tensor | None = None) -> torch.Tensor:
    """``positives`` [B, C] bool: candidate c is relevant to query b (at least one per row, all of them valid)."""
    if not bool(positives.any(dim=1).all()):
        raise ValueError("multi_positive_loss: every query needs at least one positive candidate")
    s = _masked(scores, valid)
    pos = s.masked_fill(~positives, NEG_INF)
    return (torch.logsumexp(s, dim=1) - torch.logsumexp(pos, dim=1)).mean()


def single_target_loss(scores: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """``target`` [B] long: the index of each query's gold passage."""
    s = _masked(scores, valid)
    return (torch.logsumexp(s, dim=1) - s.gather(1, target[:, None]).squeeze(1)).mean()


def partial_plackett_luce_loss(scores: torch.Tensor, preferred: torch.Tensor, second: torch.Tensor,
                               valid: torch.Tensor | None = None) -> torch.Tensor:
    """``preferred``, ``second`` [B] long: the LLM's first and second choice among the candidates (distinct)."""
    if bool((preferred == second).any()):
        raise ValueError("partial_plackett_luce_loss: the preferred and the second passage must differ")
    s = _masked(scores, valid)
    rows = torch.arange(len(s), device=s.device)
    first = torch.logsumexp(s, dim=1) - s[rows, preferred]
    without = s.clone()
    without[rows, preferred] = NEG_INF
    second_term = torch.logsumexp(without, dim=1) - s[rows, second]
    return (first + second_term).mean()


def reference_kl(scores: torch.Tensor, reference: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """KL(softmax(reference) || softmax(scores)) per row over the valid candidates; ``reference`` is fixed (stage 1)."""
    s = _masked(scores, valid)
    r = _masked(reference.detach(), valid)
    log_p = torch.log_softmax(r, dim=1)
    log_q = torch.log_softmax(s, dim=1)
    p = log_p.exp()
    terms = torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p))
    return terms.sum(dim=1).mean()


def maxsim_scores(q: torch.Tensor, q_mask: torch.Tensor, d: torch.Tensor, d_mask: torch.Tensor) -> torch.Tensor:
    """[Bq, Cd] MaxSim, averaged over each query's real tokens (a pooled backbone: the cosine; a multi-vector one:
    the per-token mean, so one temperature fits both; the ranking per query is the evaluation's MaxSim ranking)."""
    sim = torch.einsum("bqd,ctd->bcqt", q, d)
    sim = sim.masked_fill(~d_mask[None, :, None, :], NEG_INF).amax(dim=3)  # [Bq, Cd, Tq]
    sim = sim.masked_fill(~q_mask[:, None, :], 0.0)
    return sim.sum(dim=2) / q_mask.sum(dim=1, keepdim=True).clamp(min=1)
