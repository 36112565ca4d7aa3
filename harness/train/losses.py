"""Loss functions by name: colpali-engine's own classes, applied to backbone outputs.

Every loss gets query vectors [B, Tq, D], positive page vectors [B, Tp, D] and negative page vectors
[B, N, Tn, D], padding zeroed (colpali-engine counts query length as the non-zero rows). A pooled backbone gives
one query vector, and the late-interaction losses then reduce to the bi-encoder ones over max-passage scores (a
page of several chunks scores by its best chunk, as in evaluation); ``bi_*`` names use colpali-engine's
bi-encoder classes and need exactly one vector per page.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
LOSSES = ("colbert_pairwise_negative", "colbert_negative", "bi_pairwise_negative", "bi_negative")


def make_loss(name: str, **kwargs: Any) -> LossFn:
    """``name`` in LOSSES; kwargs go to the colpali-engine class (temperature, in_batch_term_weight, ...)."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; known: {', '.join(LOSSES)}")
    from colpali_engine.loss import bi_encoder_losses as bi
    from colpali_engine.loss import late_interaction_losses as li

    if name.startswith("colbert"):
        # Cosine MaxSim per query token lies in [-1, 1]; colpali-engine prints a warning for every normalised score
        # below -1e-3 (common for text encoders, whose cosines can be negative) unless told the real bounds.
        kwargs.setdefault("norm_tol", 1.0)
        cls = li.ColbertPairwiseNegativeCELoss if name == "colbert_pairwise_negative" else li.ColbertNegativeCELoss
        loss, alone = cls(**kwargs), cls(**{**kwargs, "in_batch_term_weight": 0.0})
        # A batch of one example (the last one, or a tiny validation split) has no in-batch negatives: the
        # in-batch term would ask colpali-engine for the top 2 of 1 score; use the explicit negatives only.
        return lambda q, pos, neg: (loss if q.shape[0] > 1 else alone)(q, pos, neg)
    cls = bi.BiPairwiseNegativeCELoss if name == "bi_pairwise_negative" else bi.BiNegativeCELoss
    loss, alone = cls(**kwargs), cls(**{**kwargs, "in_batch_term_weight": 0.0})

    def single(q: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        if q.shape[1] != 1 or pos.shape[1] != 1 or neg.shape[2] != 1:
            raise ValueError(f"{name} needs one vector per query and page (a pooled, unchunked backbone); got "
                             f"{q.shape[1]} / {pos.shape[1]} / {neg.shape[2]}: use a colbert_* loss")
        return (loss if q.shape[0] > 1 else alone)(q[:, 0], pos[:, 0], neg[:, :, 0])

    return single
