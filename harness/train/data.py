"""Training examples and the collator that turns them into backbone inputs.

An ``Example`` is one query with its positive page and its negative pages. The collator keeps the backbone's own
tokenisation (``query_inputs`` / ``page_inputs``), so every recipe trains on exactly what evaluation encodes.
Pages of one batch go through ``page_inputs`` once (positives first, then each example's negatives in order).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from torch.utils.data import Dataset

from harness.backbones.base import Backbone, Page


@dataclass
class Example:
    query: str
    positive: Page
    negatives: list[Page] = field(default_factory=list)
    id: str = ""  # recorded by the collator (tests check which process saw which example)


class ExampleDataset(Dataset):
    """A list of examples as a map-style dataset (the Trainer's samplers shard it across processes)."""

    def __init__(self, examples: Sequence[Example]) -> None:
        self.examples = list(examples)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> Example:
        return self.examples[i]


class Collator:
    """Examples -> {"query": query inputs, "pages": page inputs, "n_neg": negatives per example}.

    Every example of a batch must carry the same number of negatives: the loss takes them as one
    [B, n_neg, T, D] tensor. ``seen`` (optional) collects example ids, to check data sharding.
    """

    def __init__(self, backbone: Backbone, seen: list[str] | None = None) -> None:
        self.backbone = backbone
        self.seen = seen

    def __call__(self, batch: Sequence[Example]) -> dict[str, Any]:
        n_neg = {len(ex.negatives) for ex in batch}
        if len(n_neg) != 1:
            raise ValueError(f"examples of one batch have different numbers of negatives: {sorted(n_neg)}")
        if self.seen is not None:
            self.seen.extend(ex.id for ex in batch)
        pages = [ex.positive for ex in batch] + [p for ex in batch for p in ex.negatives]
        return {"query": self.backbone.query_inputs([ex.query for ex in batch]),
                "pages": self.backbone.page_inputs(pages), "n_neg": n_neg.pop()}
