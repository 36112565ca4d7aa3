"""Training a backbone with the Hugging Face Trainer: loss-pluggable wrapper, checkpoints, early stopping.

- ``RetrieverModel``: forward = backbone.forward_queries + backbone.forward_pages (positives and negatives in one
  call), then the named loss. Under torchrun / accelerate the Trainer wraps it in DDP like any module.
- ``RetrievalTrainer``: checkpoints hold only the trainable state (LoRA + heads), not the frozen base (gigabytes
  for a VLM); resuming reloads it with the optimizer, scheduler and RNG states. Evaluation adds validation
  nDCG@10 (every validation query ranked over the validation page pool) to the validation loss, so the best
  checkpoint is chosen by nDCG@10 while early stopping watches the loss.
- ``train_retriever``: the whole loop, returning what a recipe writes into ``training.json``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_utils import get_last_checkpoint

from harness.backbones.base import Backbone, Page
from harness.train.data import Collator, Example, ExampleDataset
from harness.train.lora import LoraSpec, attach_lora, load_trainable, save_trainable
from harness.train.losses import make_loss

log = logging.getLogger(__name__)


class TrainSpec(BaseModel):
    """Optimisation settings shared by recipes (SynTR's defaults: batch 8, lr 2e-4, patience 2)."""

    model_config = ConfigDict(extra="forbid")
    loss: str = "colbert_pairwise_negative"
    temperature: float = Field(0.02, gt=0)
    in_batch_term_weight: float = Field(0.5, ge=0, le=1)
    epochs: float = Field(10, gt=0)
    batch_size: int = Field(8, ge=1)  # per process
    grad_accum: int = Field(1, ge=1)
    lr: float = Field(2e-4, gt=0)
    warmup_ratio: float = Field(0.0, ge=0, lt=1)  # a fraction of the steps (transformers 5: warmup_steps < 1)
    weight_decay: float = 0.0
    patience: int | None = Field(2, ge=1)  # evaluations without a lower validation loss before stopping
    logging_steps: int = Field(5, ge=1)
    save_total_limit: int = Field(2, ge=1)  # the best checkpoint is always kept besides these
    seed: int = 42
    bf16: bool = False


def masked(emb: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Zero the padding vectors: colpali-engine's losses count non-zero rows as the query length."""
    return emb * mask.unsqueeze(-1).to(emb.dtype)


class RetrieverModel(torch.nn.Module):
    def __init__(self, backbone: Backbone, loss: Any) -> None:
        super().__init__()
        self.backbone = backbone
        self.loss_fn = loss

    def forward(self, query: dict[str, Any], pages: dict[str, Any], n_neg: int) -> torch.Tensor:
        q = masked(*self.backbone.forward_queries(query))
        p = masked(*self.backbone.forward_pages(pages))
        b = q.shape[0]
        pos, neg = p[:b], p[b:].reshape(b, n_neg, p.shape[1], p.shape[2])
        return self.loss_fn(q.float(), pos.float(), neg.float())


# Not colpali-engine's ContrastiveTrainer (0.3.18), neither as a replacement nor as a base class: every method it adds
# would be overridden, since its assumptions do not hold for harness backbones.
# - compute_loss runs ``model(**inputs)`` on flat ``query_*`` / ``doc_*`` / ``neg_doc_*`` keys and feeds the raw
#   outputs to the loss. Backbones encode through ``forward_queries`` / ``forward_pages`` (different inputs, and
#   (vectors, mask) outputs whose padding must be zeroed first), and a pooled or chunked backbone's page inputs are
#   not one tensor row per page.
# - Hard negatives are detected by a ``neg_doc_input_ids`` key and reshaped by viewing every ``neg_doc_*`` tensor as
#   [B * n_neg, ...]: page inputs without ``input_ids`` would train silently without negatives, and Qwen2-VL's
#   ``pixel_values`` (patches of all images concatenated, with ``image_grid_thw``) cannot be viewed that way.
# - prediction_step (the validation loss) feeds the negatives' [B, n_neg, ...] inputs to the model as they are
#   (compute_loss flattens them to [B * n_neg, ...] and regroups the outputs) and gives queries input_ids and
#   attention_mask only: with hard negatives, validation loss is not computed like the training loss.
# - It keeps Trainer's saving (the whole module's state dict: the frozen base too) and has no ranking evaluation,
#   so _save, _load_from_checkpoint and evaluate (validation nDCG@10 for model selection) stay ours anyway.
# What it offers beyond the Trainer, gathering positives across processes for global in-batch negatives, would
# change the loss under DDP relative to one process; the losses themselves are colpali-engine's (losses.py).
class RetrievalTrainer(Trainer):
    def __init__(self, *args: Any, eval_pages: Sequence[Page] = (), eval_queries: dict[str, str] | None = None,
                 eval_qrels: dict[str, dict[str, int]] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.eval_pages, self.eval_queries, self.eval_qrels = list(eval_pages), eval_queries or {}, eval_qrels or {}

    def compute_loss(self, model: torch.nn.Module, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        loss = model(**inputs)
        return (loss, None) if return_outputs else loss

    def prediction_step(self, model: torch.nn.Module, inputs: dict[str, Any], prediction_loss_only: bool,
                        ignore_keys: list[str] | None = None) -> tuple[torch.Tensor, None, None]:
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            return model(**inputs).detach(), None, None

    def evaluate(self, *args: Any, **kwargs: Any) -> dict[str, float]:
        metrics = super().evaluate(*args, **kwargs)
        if self.eval_queries:
            start = time.perf_counter()
            ndcg = ndcg_at_k(self.model.backbone, self.eval_pages, self.eval_queries, self.eval_qrels, 10)
            extra = {"eval_ndcg_at_10": ndcg, "eval_ndcg_s": round(time.perf_counter() - start, 2)}
            metrics.update(extra)
            self.log(extra)
        return metrics

    # Checkpoints: the trainable state only.
    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        if self.args.should_save:
            save_trainable(self.model.backbone, Path(output_dir or self.args.output_dir))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: torch.nn.Module | None = None) -> None:
        load_trainable(self.model.backbone, Path(resume_from_checkpoint))


class EarlyStopOnLoss(TrainerCallback):
    """Stop after ``patience`` evaluations without a lower validation loss (the best checkpoint is chosen by
    nDCG@10 separately, so the Trainer's own EarlyStoppingCallback, tied to that metric, does not fit)."""

    def __init__(self, patience: int) -> None:
        self.patience, self.best, self.bad = patience, math.inf, 0

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict[str, float] | None = None,
                    **kwargs: Any) -> None:
        loss = (metrics or {}).get("eval_loss")
        if loss is None:
            return
        if loss < self.best:
            self.best, self.bad = loss, 0
        else:
            self.bad += 1
            if self.bad >= self.patience:
                control.should_training_stop = True


class LossFile(TrainerCallback):
    """Appends {"step", "epoch", "loss"} per logged training step (the leaderboard's loss curve) on rank 0."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None,
               **kwargs: Any) -> None:
        if state.is_world_process_zero and logs and "loss" in logs:
            with self.path.open("a") as f:
                f.write(json.dumps({"step": state.global_step, "epoch": state.epoch, "loss": logs["loss"]}) + "\n")


@dataclass
class TrainResult:
    examples: int
    steps: int
    epochs: float
    wall_s: float
    examples_per_s: float
    best_checkpoint: str | None
    best_ndcg_at_10: float | None
    loss_log: str
    resumed_from: str | None
    history: list[dict[str, Any]] = field(default_factory=list)


def train_retriever(backbone: Backbone, train: Sequence[Example], val: Sequence[Example], out_dir: Path,
                    spec: TrainSpec, lora: LoraSpec, *, eval_pages: Sequence[Page] = (),
                    eval_queries: dict[str, str] | None = None, eval_qrels: dict[str, dict[str, int]] | None = None,
                    seen: list[str] | None = None) -> TrainResult:
    """LoRA-train ``backbone`` in place; on return it holds the best checkpoint's weights (by validation nDCG@10
    when validation queries are given, else the last), and ``out_dir/final`` holds them with ``lora.json``.
    A run interrupted after a checkpoint resumes from the latest one in ``out_dir/checkpoints``."""
    out_dir = Path(out_dir)
    ckpt_dir = out_dir / "checkpoints"
    targets = attach_lora(backbone, lora)
    loss = make_loss(spec.loss, temperature=spec.temperature, in_batch_term_weight=spec.in_batch_term_weight)
    model = RetrieverModel(backbone, loss)
    has_val = len(val) > 0
    ranking = bool(eval_queries) and has_val
    args = TrainingArguments(
        output_dir=str(ckpt_dir), num_train_epochs=spec.epochs, per_device_train_batch_size=spec.batch_size,
        per_device_eval_batch_size=spec.batch_size, gradient_accumulation_steps=spec.grad_accum,
        learning_rate=spec.lr, warmup_steps=spec.warmup_ratio, weight_decay=spec.weight_decay,
        logging_steps=spec.logging_steps, eval_strategy="epoch" if has_val else "no",
        save_strategy="epoch", save_total_limit=spec.save_total_limit,
        metric_for_best_model=("ndcg_at_10" if ranking else "loss") if has_val else None,
        greater_is_better=ranking if has_val else None, load_best_model_at_end=False,
        remove_unused_columns=False, report_to=[], seed=spec.seed, data_seed=spec.seed, bf16=spec.bf16,
        dataloader_num_workers=0, ddp_find_unused_parameters=True, disable_tqdm=True,
        use_cpu=not torch.cuda.is_available())
    loss_log = out_dir / "loss.jsonl"
    callbacks: list[TrainerCallback] = [LossFile(loss_log)]
    if has_val and spec.patience:
        callbacks.append(EarlyStopOnLoss(spec.patience))
    trainer = RetrievalTrainer(model=model, args=args, train_dataset=ExampleDataset(train),
                               eval_dataset=ExampleDataset(val) if has_val else None,
                               data_collator=Collator(backbone, seen), callbacks=callbacks,
                               eval_pages=eval_pages, eval_queries=eval_queries if ranking else None,
                               eval_qrels=eval_qrels)
    last = get_last_checkpoint(str(ckpt_dir)) if ckpt_dir.is_dir() else None
    if last is None and loss_log.exists() and args.process_index == 0:
        loss_log.unlink()  # a fresh run: no stale curve from an earlier attempt that saved nothing
    start = time.perf_counter()
    output = trainer.train(resume_from_checkpoint=last)
    wall = time.perf_counter() - start
    best = trainer.state.best_model_checkpoint
    if best:
        load_trainable(backbone, Path(best))
    if args.should_save:
        save_trainable(backbone, out_dir / "final", lora, targets)
    if args.world_size > 1:
        torch.distributed.barrier()
    history = [h for h in trainer.state.log_history if "eval_loss" in h or "eval_ndcg_at_10" in h]
    best_ndcg = trainer.state.best_metric if ranking and best else None
    return TrainResult(examples=len(train), steps=trainer.state.global_step, epochs=trainer.state.epoch or 0.0,
                       wall_s=wall, examples_per_s=output.metrics.get("train_samples_per_second", 0.0),
                       best_checkpoint=best, best_ndcg_at_10=best_ndcg, loss_log=str(loss_log.resolve()),
                       resumed_from=last, history=history)


@torch.no_grad()
def rank(backbone: Backbone, pages: Sequence[Page], queries: dict[str, str], k: int | None = None,
         page_vectors: list[torch.Tensor] | None = None) -> dict[str, list[tuple[str, float]]]:
    """MaxSim ranking of ``pages`` for each query: {query id: [(page id, score), ...]} best first."""
    from harness.retrieval.maxsim import maxsim, pad_vectors

    docs = page_vectors if page_vectors is not None else backbone.encode_pages(list(pages))
    qids = list(queries)
    q = backbone.encode_queries([queries[i] for i in qids])
    scores = maxsim(pad_vectors(q), pad_vectors(docs))
    k = min(k or len(pages), len(pages))
    top = torch.topk(scores, k, dim=1)
    return {qid: [(pages[j].id, float(s)) for s, j in zip(top.values[i].tolist(), top.indices[i].tolist(),
                                                          strict=True)]
            for i, qid in enumerate(qids)}


def ndcg_at_k(backbone: Backbone, pages: Sequence[Page], queries: dict[str, str],
              qrels: dict[str, dict[str, int]], k: int = 10) -> float:
    """Mean nDCG@k (binary or graded gains, log2 discount) of ``queries`` over ``pages``."""
    ranked = rank(backbone, pages, queries, k)
    total = 0.0
    for qid, hits in ranked.items():
        gains = qrels.get(qid, {})
        dcg = sum(gains.get(pid, 0) / math.log2(i + 2) for i, (pid, _) in enumerate(hits))
        ideal = sum(g / math.log2(i + 2) for i, g in enumerate(sorted(gains.values(), reverse=True)[:k]))
        total += dcg / ideal if ideal > 0 else 0.0
    return total / max(len(ranked), 1)
