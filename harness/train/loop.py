"""The one training loop every recipe uses: the Hugging Face Trainer driven by an optimizer-step budget.

A recipe supplies an *objective* (a ``torch.nn.Module`` whose ``forward(**batch)`` returns the loss and whose
parameters with ``requires_grad`` are what trains), the training items, a collate function, and optionally a
*validator* (held-out queries ranked over held-out pages). ``run_loop`` then gives every recipe the same:

- a budget in optimizer steps (``steps``; small data is passed over as often as it takes), warmup, cosine or linear
  decay, gradient accumulation, gradient clipping; the Trainer's sampler shards data under torchrun;
- checkpoints of the trainable state only (LoRA, heads, or every weight for full fine-tuning), and resume from the
  latest one with the optimizer, scheduler and RNG states;
- validation at step 0 (the untrained model) and every ``eval_every`` steps. The chosen checkpoint is the LATEST
  whose validation nDCG@10 is within ``min_delta`` of the best (HF's rule keeps the earliest on ties, which on a few
  validation queries is often a 1-2 step model); with fewer than ``min_val_queries`` validation queries the metric is
  recorded but selects nothing: the budget decides and the last state is kept. Early stopping (``patience``) counts
  evaluations without a gain above ``min_delta``. A validator that knows each pool page's document
  (``page_groups``) also records nDCG@10 among the pool's pages of each query's own document (the within-document
  task's view); ``select_by`` picks the figure selection reads: ``corpus`` (default), ``within_doc`` or their ``mean``.
- a record of what happened: optimizer steps, examples seen, training seconds apart from validation seconds
  (examples/s = examples / training seconds, the same for every recipe), how far the weights moved (relative change
  of every weight that scores, LoRA folded in) and how far the ranking moved (Spearman correlation of the chosen
  model's validation scores with the untrained model's, per query, averaged).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from torch.utils.data import Dataset
from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_utils import get_last_checkpoint

from harness.io import atomic_write_json, atomic_write_lines
from harness.progress import ProgressBar
from harness.train.lora import load_trainable, save_trainable

log = logging.getLogger(__name__)
# INITIAL: the untrained trainable state, so that "no step helped" can be chosen honestly
INITIAL, HISTORY_FILE = "initial", "val_history.json"


class LoopSpec(BaseModel):
    """Optimisation settings; every recipe's config has one (``train:``)."""

    model_config = ConfigDict(extra="forbid")
    steps: int = Field(200, ge=1)  # optimizer steps (each of batch_size x grad_accum examples)
    batch_size: int = Field(16, ge=1)  # per process
    grad_accum: int = Field(1, ge=1)
    lr: float = Field(2e-5, gt=0)
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    warmup: float = Field(0.1, ge=0, lt=1)  # a fraction of the steps
    weight_decay: float = Field(0.01, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    eval_every: int | None = Field(None, ge=1)  # steps; None: 5 evaluations over the budget
    patience: int | None = Field(None, ge=1)  # evaluations without a gain above min_delta before stopping
    min_delta: float = Field(0.0, ge=0)
    select_by: Literal["corpus", "within_doc", "mean"] = "corpus"  # within_doc, mean: the validator needs page_groups
    min_val_queries: int = Field(30, ge=1)  # fewer validation queries: no checkpoint selection (keep the last)
    save_total_limit: int = Field(2, ge=1)  # besides the chosen checkpoint
    logging_steps: int = Field(1, ge=1)  # loss.jsonl: one line per logged step (the mean since the last)
    seed: int = 0
    bf16: bool = False


def over_recipe_defaults(cls: type[BaseModel], value: Any, info: ValidationInfo) -> Any:
    """A config's loop settings (``train: {steps: 300}``) override the recipe's defaults key by key: the keys it does
    not name keep the recipe's values (the field's default), not LoopSpec's generic ones (which silently dropped,
    say, ColQwen3VL's grad_accum 8 or ColIntern's weight_decay 0). Only the keys the recipe's default sets are
    merged, so "unless given" checks on ``model_fields_set`` (ColQwen3VL's lr) still see what the config named."""
    if isinstance(value, dict):
        default = cls.model_fields[str(info.field_name)].get_default(call_default_factory=True)
        if isinstance(default, LoopSpec):
            return {**default.model_dump(exclude_unset=True), **value}
    return value


def recipe_loops(*fields: str) -> Any:
    """``_loops = recipe_loops("train")`` in a recipe's Config: those LoopSpec fields merge over its defaults."""
    return field_validator(*fields, mode="before")(classmethod(over_recipe_defaults))


class Validator(Protocol):
    """Held-out queries x held-out pages with the current weights."""

    query_ids: list[str]
    page_ids: list[str]
    qrels: dict[str, dict[str, int]]
    page_groups: list[str] | None  # each pool page's document, or None (no within-document figure)

    def scores(self) -> torch.Tensor:
        """[queries, pages] scores, no gradient."""


@dataclass
class LoopResult:
    steps: int
    examples_seen: int
    train_s: float
    val_s: float
    examples_per_s: float
    chosen_step: int | None
    selection: str
    relative_weight_change: float
    rank_correlation: float | None
    val_history: list[dict[str, Any]] = field(default_factory=list)
    loss_log: str = ""
    resumed_from: str | None = None

    def record(self) -> dict[str, Any]:
        """The ``train`` block of training.json."""
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


class ListDataset(Dataset):
    def __init__(self, items: Sequence[Any]) -> None:
        self.items = list(items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Any:
        return self.items[i]


def val_ndcg(validator: Validator, scores: torch.Tensor, k: int = 10, within_doc: bool = False) -> float:
    """Mean nDCG@k over the validation queries (pytrec_eval, as evaluation computes it). ``within_doc``: each query
    ranks only the pool's pages of its relevant pages' documents (as ``candidates_by: doc_id`` evaluation does)."""
    from harness.evaluate.metrics import per_query_scores

    if within_doc:
        groups = validator.page_groups
        if groups is None:
            raise ValueError("within-document validation needs the validator's page_groups")
        index = dict(zip(validator.page_ids, groups, strict=True))
        own = [{index[p] for p in validator.qrels[q] if p in index} for q in validator.query_ids]
        allowed = torch.tensor([[g in docs for g in groups] for docs in own], dtype=torch.bool)
        scores = scores.masked_fill(~allowed, float("-inf"))
    top = torch.topk(scores, min(k, scores.shape[1]), dim=1)
    run = {q: {validator.page_ids[j]: float(s) for s, j in zip(top.values[i].tolist(), top.indices[i].tolist(),
                                                                   strict=True) if s != float("-inf")}
           for i, q in enumerate(validator.query_ids)}
    per_query = per_query_scores(validator.qrels, run, (k,))[f"ndcg_at_{k}"]
    return sum(per_query.values()) / max(len(per_query), 1)


def spearman_rows(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman correlation of two [Q, N] score matrices, per row (query), averaged over rows."""

    def ranks(x: torch.Tensor) -> torch.Tensor:
        return x.argsort(dim=1).argsort(dim=1).double()

    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(1, keepdim=True), rb - rb.mean(1, keepdim=True)
    den = (ra.norm(dim=1) * rb.norm(dim=1)).clamp(min=1e-12)
    return float(((ra * rb).sum(1) / den).mean())


def _lora_parts(module: torch.nn.Module) -> list[Any]:
    from peft.tuners.lora import LoraLayer

    return [m for m in module.modules() if isinstance(m, LoraLayer)]


def relative_weight_change(module: torch.nn.Module, before: dict[str, torch.Tensor]) -> float:
    """||W - W0|| / ||W0|| over every weight that scores and changed: LoRA layers count as their folded base weight
    (B A scale added to W0), other trainable tensors against their ``before`` copy."""
    num = den = 0.0
    for layer in _lora_parts(module):
        for name in layer.active_adapters:
            if name in layer.lora_A:
                delta = layer.get_delta_weight(name).detach().float()
                num += float(delta.pow(2).sum())
                den += float(layer.get_base_layer().weight.detach().float().pow(2).sum())
    params = dict(module.named_parameters())
    for name, w0 in before.items():
        num += float((params[name].detach().float().cpu() - w0.float()).pow(2).sum())
        den += float(w0.float().pow(2).sum())
    return math.sqrt(num / den) if den > 0 else 0.0


class _Trainer(Trainer):
    """Checkpoints hold the trainable state only (a VLM's frozen base is gigabytes); the loss is the objective's."""

    def compute_loss(self, model: torch.nn.Module, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        loss = model(**inputs)
        return (loss, None) if return_outputs else loss

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        if self.args.should_save:
            save_trainable(self.model, Path(output_dir or self.args.output_dir))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: torch.nn.Module | None = None) -> None:
        load_trainable(self.model, Path(resume_from_checkpoint))


class _Monitor(TrainerCallback):
    """Step timing, validation every ``eval_every`` steps, checkpoint choice and early stopping."""

    def __init__(self, loop: _Loop) -> None:
        self.loop = loop
        self.t_step: float | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        # a rich bar on stderr (HF's tqdm bar would print its log lines on stdout); `--quiet` turns it off
        self.bar = ProgressBar(state.is_world_process_zero, "training steps", state.max_steps - state.global_step)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.bar.close()

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.t_step = time.perf_counter()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.t_step is not None:
            self.loop.train_s += time.perf_counter() - self.t_step
        self.loop.examples_seen += args.per_device_train_batch_size * args.gradient_accumulation_steps \
            * max(args.world_size, 1)
        self.bar.advance()
        step = state.global_step
        if self.loop.validator is not None and (step % self.loop.eval_every == 0 or step >= state.max_steps):
            if self.loop.evaluate(step, state):
                control.should_training_stop = True
            control.should_save = True

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None,
               **kwargs: Any) -> None:
        if state.is_world_process_zero and logs and "loss" in logs:
            with self.loop.loss_log.open("a") as f:
                f.write(json.dumps({"step": state.global_step, "epoch": state.epoch, "loss": logs["loss"]}) + "\n")


class _Loop:
    def __init__(self, spec: LoopSpec, out_dir: Path, validator: Validator | None) -> None:
        self.spec, self.out_dir, self.validator = spec, out_dir, validator
        self.eval_every = spec.eval_every or max(1, math.ceil(spec.steps / 5))
        self.train_s = self.val_s = 0.0
        self.examples_seen = 0
        self.history: list[dict[str, Any]] = []
        self.base_scores: torch.Tensor | None = None
        self.loss_log = out_dir / "loss.jsonl"
        self.selecting = validator is not None and len(validator.query_ids) >= spec.min_val_queries
        self.within = validator is not None and getattr(validator, "page_groups", None) is not None
        if spec.select_by != "corpus" and validator is not None and not self.within:
            raise ValueError(f"train.select_by: {spec.select_by} needs a within-document validation figure, and this "
                             "corpus's pages have no document (corpus.jsonl metadata.doc_id)")

    def validate(self) -> tuple[dict[str, float], torch.Tensor, float]:
        assert self.validator is not None
        t = time.perf_counter()
        scores = self.validator.scores().float().cpu()
        figures = {"val_ndcg_at_10": val_ndcg(self.validator, scores)}
        if self.within:
            figures["val_within_doc_ndcg_at_10"] = val_ndcg(self.validator, scores, within_doc=True)
        seconds = time.perf_counter() - t
        self.val_s += seconds
        return figures, scores, seconds

    def metric(self, point: dict[str, Any]) -> float:
        """The figure selection and early stopping read."""
        if self.spec.select_by == "corpus":
            return point["val_ndcg_at_10"]
        if self.spec.select_by == "within_doc":
            return point["val_within_doc_ndcg_at_10"]
        return (point["val_ndcg_at_10"] + point["val_within_doc_ndcg_at_10"]) / 2

    def evaluate(self, step: int, state: Any) -> bool:
        """Record a validation point; mark the chosen checkpoint (kept by the Trainer's rotation). True: stop."""
        figures, _, seconds = self.validate()
        self.add(step, figures, seconds)
        log.info("step %d: validation nDCG@10 %.4f%s (%.1f s)", step, figures["val_ndcg_at_10"],
                 f", within document {figures['val_within_doc_ndcg_at_10']:.4f}" if self.within else "", seconds)
        chosen = self.chosen()
        if chosen is not None and chosen > 0:
            state.best_model_checkpoint = str(self.out_dir / "checkpoints" / f"checkpoint-{chosen}")
        elif chosen == 0:
            state.best_model_checkpoint = None
        if self.spec.patience and self.selecting:
            # evaluations since the last one that raised the best by more than min_delta
            gains = [i for i in range(1, len(self.history)) if self.metric(self.history[i])
                     > max(self.metric(h) for h in self.history[:i]) + self.spec.min_delta]
            last_gain = gains[-1] if gains else 0
            return len(self.history) - 1 - last_gain >= self.spec.patience
        return False

    def add(self, step: int, figures: dict[str, float], seconds: float) -> None:
        self.history.append({"step": step, **{k: round(v, 5) for k, v in figures.items()}, "val_s": round(seconds, 3)})
        atomic_write_json(self.out_dir / HISTORY_FILE, {"history": self.history, "train_s": self.train_s,
                                                  "val_s": self.val_s, "examples_seen": self.examples_seen})

    def chosen(self) -> int | None:
        """The step whose state is kept: the latest within min_delta of the best, or None (the last state)."""
        if not self.selecting or not self.history:
            return None
        best = max(self.metric(h) for h in self.history)
        return max(h["step"] for h in self.history if self.metric(h) >= best - self.spec.min_delta)


def run_loop(objective: torch.nn.Module, items: Sequence[Any], collate: Callable[[list[Any]], dict[str, Any]],
             spec: LoopSpec, out_dir: Path, validator: Validator | None = None) -> LoopResult:
    """Train ``objective``'s trainable parameters in place for ``spec.steps`` optimizer steps (fewer on early stop).
    On return the objective holds the chosen state. Resumes from ``out_dir/checkpoints`` when a run was cut."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_dir = out_dir / "checkpoints"
    if not any(p.requires_grad for p in objective.parameters()):
        raise ValueError("run_loop: the objective has no trainable parameter")
    loop = _Loop(spec, out_dir, validator)
    lora_names = {n for n, _ in objective.named_parameters() if "lora_" in n}
    before = {n: p.detach().cpu().clone() for n, p in objective.named_parameters()
              if p.requires_grad and n not in lora_names}
    initial = ckpt_dir / INITIAL
    last = get_last_checkpoint(str(ckpt_dir)) if ckpt_dir.is_dir() else None
    if last is None:
        loop.loss_log.unlink(missing_ok=True)  # a fresh run: no stale curve
        save_trainable(objective, initial)
    base_file = out_dir / "val_base_scores.pt"
    if validator is not None:
        if base_file.is_file() and last is not None:
            loop.base_scores = torch.load(base_file)
        else:
            figures, loop.base_scores, seconds = loop.validate()
            torch.save(loop.base_scores, base_file)
            loop.add(0, figures, seconds)
    args = TrainingArguments(
        output_dir=str(ckpt_dir), max_steps=spec.steps, per_device_train_batch_size=spec.batch_size,
        gradient_accumulation_steps=spec.grad_accum, learning_rate=spec.lr, lr_scheduler_type=spec.schedule,
        warmup_steps=spec.warmup, weight_decay=spec.weight_decay, max_grad_norm=spec.max_grad_norm,
        logging_steps=spec.logging_steps, eval_strategy="no", save_strategy="steps",
        save_steps=loop.eval_every, save_total_limit=spec.save_total_limit, remove_unused_columns=False,
        report_to=[], seed=spec.seed, data_seed=spec.seed, bf16=spec.bf16, dataloader_num_workers=0,
        ddp_find_unused_parameters=True, disable_tqdm=True, use_cpu=not torch.cuda.is_available())
    trainer = _Trainer(model=objective, args=args, train_dataset=ListDataset(items), data_collator=collate,
                       callbacks=[_Monitor(loop)])
    trainer.remove_callback(PrinterCallback)  # the loss goes to loss.jsonl and the log, not to stdout
    if last is not None and (out_dir / HISTORY_FILE).is_file():
        # validation points and timings up to the checkpoint resumed from (later ones are computed again)
        saved = json.loads((out_dir / HISTORY_FILE).read_text())
        at = int(Path(last).name.rsplit("-", 1)[1])
        loop.history = [h for h in saved["history"] if h["step"] <= at]
        if loop.loss_log.is_file():  # the steps after the checkpoint are trained again: drop their old lines
            kept = [x for x in loop.loss_log.read_text().splitlines() if x and json.loads(x)["step"] <= at]
            atomic_write_lines(loop.loss_log, kept)
        loop.train_s, loop.val_s, loop.examples_seen = saved["train_s"], saved["val_s"], saved["examples_seen"]
        log.info("resuming from %s", last)
    trainer.train(resume_from_checkpoint=last)
    chosen = loop.chosen()
    if chosen is not None and chosen != trainer.state.global_step:
        load_trainable(objective, initial if chosen == 0 else ckpt_dir / f"checkpoint-{chosen}")
    selection = ("last (no validation)" if validator is None else
                 f"last ({len(validator.query_ids)} validation queries < min_val_queries {spec.min_val_queries})"
                 if not loop.selecting else f"latest within {spec.min_delta} of the best validation nDCG@10"
                 + {"corpus": "", "within_doc": " within document", "mean": " (mean of corpus and within document)"}[
                     spec.select_by])
    correlation = None
    if validator is not None and loop.base_scores is not None:
        final = validator.scores().float().cpu()
        correlation = spearman_rows(final, loop.base_scores)
    if args.world_size > 1:
        torch.distributed.barrier()
    return LoopResult(
        steps=trainer.state.global_step, examples_seen=loop.examples_seen, train_s=loop.train_s, val_s=loop.val_s,
        examples_per_s=loop.examples_seen / loop.train_s if loop.train_s else 0.0, chosen_step=chosen,
        selection=selection, relative_weight_change=relative_weight_change(objective, before),
        rank_correlation=correlation, val_history=loop.history, loss_log=str(loop.loss_log.resolve()),
        resumed_from=last)
