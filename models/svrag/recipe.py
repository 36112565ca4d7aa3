"""SV-RAG (RECIPES.md section 4): one language model retrieves (LoRA adapter on) and answers (adapter off).

Retriever: the backbone's language model reads queries and pages; a LoRA adapter and ``Linear(hidden, 128)`` over
its last hidden states (L2-normalised, MaxSim) are what train. Offline that is the ``llm-text`` backbone (the packaged
Gemma 3 270M over OCR text); for real users, an ``llm-text`` backbone over any causal LM folder or Hub id. Training
is ColQwen3VL's flow (``models/colqwen3vl/recipe.py``: pseudo-queries of sampled corpus pages through the
synthetic-data engine, the source page as positive, held-out pages for validation, the shared loop) with the seed's
loss and settings:
- ColbertPairwiseCELoss: softplus((hardest in-batch negative - positive) / temperature). The seed's colpali-engine
  summed MaxSim over query tokens with no temperature; here scores are divided by the query length, so the
  same scale is a temperature of about 1 / (query tokens): 0.05 for ~20-token queries;
- LoRA r 8, alpha 32 (the seed's InternVL2 setting; Phi-3-V used r 32), lr 5e-5, the projection trained with it.
The seed trains one epoch over its corpus; here the budget is optimizer steps (``train.steps``).

Answering (``model.py``): the adapter stays unmerged, so the same network with the adapter disabled is the base
model, which answers from its own top-k pages (``harness answers --variant svrag --answerer self``, or a run's
``answers:`` section).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from harness.backbones import Backbone
from harness.train.loop import LoopSpec
from harness.train.lora import LoraSpec
from harness.variants import TrainingCorpus
from models.colqwen3vl.recipe import Config as PairsConfig
from models.colqwen3vl.recipe import train_pairs

TRAINS = True
LR = 5e-5


class Config(PairsConfig):
    finetune: Literal["lora"] = "lora"  # the base model must survive intact: it is the answerer
    lora: LoraSpec = Field(default_factory=lambda: LoraSpec(r=8, alpha=32.0, dropout=0.1))
    temperature: float = Field(0.05, gt=0)
    train: LoopSpec = Field(default_factory=lambda: LoopSpec(steps=100, batch_size=8, lr=LR, schedule="cosine",
                                                             warmup=0.1))


def train(backbone: Backbone, corpus: TrainingCorpus, config: Config, out_dir: Path) -> Path:
    if not hasattr(backbone, "answer_backend"):
        raise ValueError(f"svrag: backbone {backbone.describe()} cannot answer; SV-RAG's retriever is a language "
                         "model that also answers: use the llm-text backbone")
    return train_pairs(backbone, corpus, config, out_dir, recipe="svrag", loss="pairwise", lora_lr=LR, full_lr=LR)
