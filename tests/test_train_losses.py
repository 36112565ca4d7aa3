"""colpali-engine losses through make_loss, including a batch of a single example (no in-batch negatives)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from harness.train.losses import LOSSES, make_loss


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("batch", [1, 3])
def test_losses_are_finite_for_any_batch_size(name: str, batch: int) -> None:
    g = torch.Generator().manual_seed(batch)
    q = F.normalize(torch.randn(batch, 1, 8, generator=g), dim=-1)
    pos = F.normalize(torch.randn(batch, 1, 8, generator=g), dim=-1)
    neg = F.normalize(torch.randn(batch, 2, 1, 8, generator=g), dim=-1)
    loss = make_loss(name)(q, pos, neg)
    assert torch.isfinite(loss) and loss >= 0


def test_single_example_uses_its_explicit_negatives() -> None:
    q = torch.tensor([[[1.0, 0.0]]])
    good, bad = torch.tensor([[[1.0, 0.0]]]), torch.tensor([[[[0.0, 1.0]]]])
    loss = make_loss("colbert_negative")
    assert loss(q, good, bad) < loss(q, bad[:, 0], good[:, None])
