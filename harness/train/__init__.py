"""Shared training code for recipes: examples and collator, losses, LoRA, the Trainer loop, training records.

A recipe builds ``Example``s (query, positive page, negative pages), calls ``train_retriever`` and writes
``training.json`` with ``write_training_record``; its model.py reloads the result with ``load_checkpoint``.
"""

from harness.train.data import Collator, Example, ExampleDataset
from harness.train.lora import LoraSpec, attach_lora, load_trainable, merge_lora, reattach, save_trainable
from harness.train.losses import LOSSES, make_loss
from harness.train.record import Stages, load_checkpoint, write_training_record
from harness.train.trainer import (
           RetrievalTrainer,
           RetrieverModel,
           TrainResult,
           TrainSpec,
           ndcg_at_k,
           rank,
           train_retriever,
)

__all__ = ["LOSSES", "Collator", "Example", "ExampleDataset", "LoraSpec", "RetrievalTrainer", "RetrieverModel",
           "Stages", "TrainResult", "TrainSpec", "attach_lora", "load_checkpoint", "load_trainable", "make_loss",
           "merge_lora", "ndcg_at_k", "rank", "reattach", "save_trainable", "train_retriever",
           "write_training_record"]
