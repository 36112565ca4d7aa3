"""Shared training code for recipes: the one training loop, contrastive objectives, LoRA, training records.

A recipe builds an objective (``ContrastiveObjective`` over ``Example``s, or its own module whose forward returns
the loss), calls ``run_loop`` and writes ``training.json`` with ``write_training_record``; its model.py reloads the
result with ``load_checkpoint``.
"""

from harness.train.loop import LoopResult, LoopSpec, run_loop
from harness.train.lora import LoraSpec, attach_lora, load_trainable, merge_lora, reattach, save_trainable
from harness.train.objectives import (
           ContrastiveCollator,
           ContrastiveObjective,
           Example,
           PageValidator,
           contrastive_loss,
           rank,
)
from harness.train.record import Stages, load_checkpoint, write_training_record

__all__ = ["ContrastiveCollator", "ContrastiveObjective", "Example", "LoopResult", "LoopSpec", "LoraSpec",
           "PageValidator", "Stages", "attach_lora", "contrastive_loss", "load_checkpoint", "load_trainable",
           "merge_lora", "rank", "reattach", "run_loop", "save_trainable", "write_training_record"]
