"""Syntriever's two losses (RECIPES.md section 2), on a score matrix.

Every function takes ``scores`` [B, C]: query b against candidate passage c, already divided by the temperature
(the paper: cosine / 0.05), and ``valid`` [B, C] (False for a candidate the query must not see, e.g. padding).

Stage 1's losses (the paper's multi-positive form and the seed code's single-target form) are the shared
``harness.train.objectives.contrastive_loss``; these are stage 2's.
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
