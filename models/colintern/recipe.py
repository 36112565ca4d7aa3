"""ColIntern: head-only training over a frozen backbone (RECIPES.md section 5, seeds/colintern.md), on the shared
training loop (``harness.train.loop.run_loop``).

Training pairs: pseudo-queries over sampled corpus pages (the synthetic-data engine; ``store`` names a SynthStore
that other recipes may share) or a JSONL triples file ``{"query", "pos", "negs"}`` (page paths relative to ``root``).
Frozen token states of every training query and of EVERY corpus page are computed once; the heads then train on
them. With ``lora`` the encoder gets LoRA adapters trained jointly with the heads: the states it produces (queries;
OCR pages too) are then computed with gradient for each batch, and only the vision features stay cached.

- Heads start from the backbone's geometry (``init: pca``, the default for a shared head): the projection onto the
  top principal directions of the corpus pages' frozen token states, so the untrained model ranks like the base
  backbone, and training learns a residual from there (``models/colintern/heads.py``).
- The pairs are split by source page: ``val_fraction`` of the pages (with all their queries) are held out as
  validation queries, ranked over the corpus (``val_pool``) every ``eval_every`` steps; the loop keeps the latest
  state within ``min_delta`` of the best validation nDCG@10 (held-out early stopping; with fewer than
  ``min_val_queries`` validation queries it keeps the last state).
- Stage 1 (``epoch 1``): in-batch cross-entropy over the batch's distinct positive pages (a page that is the positive
  of two queries of the batch, or of the same query text, is never a negative), ``train`` budget.
- Stage 2 (``epochs: 2``; ``mine_negatives``): the stage-1 model mines k hard negatives per training query over the
  WHOLE corpus (``harness.retrieval.mining``: mean-pooled vectors, inner-product search), with a false-negative
  guard (``fn_margin``: a page scoring within the margin of the positive is dropped, as positive-aware mining does),
  written to ``mined_triples.jsonl``; then per-query cross-entropy over [positive + its negatives] from the stage-1
  state, ``mined_train`` budget. Without ``mine_negatives`` the triples file's negatives.
- Losses score with the evaluation's MaxSim (``harness.retrieval.maxsim.score_matrix``, padding masked) divided by
  the query length and ``temperature`` (``harness.train.objectives.contrastive_loss``).
- Stage 1 does not depend on the stage-2 settings, so it runs in a folder beside ``out_dir`` keyed by everything
  else (``epoch1_dir``): the colintern-e1 and colintern-mined rows of one run share it, and the mined row starts from
  the e1 row's chosen stage-1 state instead of training it again. Each stage resumes from its latest checkpoint
  (the loop's); a finished stage leaves ``stage.json`` + ``chosen/`` and is not run again.
- ``loss.jsonl`` in ``out_dir`` holds both stages' steps (stage 2 numbered after stage 1); ``model/training.json``
  holds wall_s, llm_calls, llm_tokens, examples, loss_log, the loop's record of the last stage under ``train``
  (stage 1's under ``train_e1``) and how far the model moved from the untrained heads and from the base backbone.

Parts: config.py (``Config``, file names), pairs.py (training pairs, validation split), training.py (states,
objective, validator, one stage, mining); this module is the entry (``train``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from pathlib import Path
from typing import Any

import torch

from harness.backbones import Backbone
from harness.io import atomic_write_json, atomic_write_text
from harness.train.loop import spearman_rows
from harness.train.lora import attach_lora, save_trainable
from harness.train.record import write_training_record
from harness.variants import TrainingCorpus
from models.colintern.config import (
    AFTER_EPOCH1,
    LOSS_FILE,
    MINED_FILE,
    MINING_FILE,
    REMOVED,
    STAGE_FILE,
    TRAINING_FILE,
    Config,
)
from models.colintern.heads import Featurizer, Heads, pca_projection
from models.colintern.pairs import (
    Pairs,
    positive_sets,
    pseudo_query_pairs,
    read_triples,
    split_by_page,
    with_corpus,
)
from models.colintern.training import (
    HeadObjective,
    HeadValidator,
    States,
    base_scores,
    loss_lines,
    mine,
    read_mined,
    relative_change,
    run_stage,
    set_lora_dropout,
)

__all__ = ["AFTER_EPOCH1", "MINED_FILE", "REMOVED", "STAGE_FILE", "Config", "HeadObjective", "HeadValidator",
           "Pairs", "States", "epoch1_dir", "pseudo_query_pairs", "read_triples", "train"]

log = logging.getLogger(__name__)


def epoch1_dir(out_dir: Path, backbone_fingerprint: str, corpus_name: str, config: Config, pairs: Pairs) -> Path:
    """The folder of stage 1 (its checkpoints, loss lines, chosen state), beside ``out_dir``: keyed by the backbone,
    the corpus, the training pairs, the pages and every setting except ``AFTER_EPOCH1``, so every run that would
    compute the same stage-1 state finds it there (the e1 and mined rows of a run)."""
    settings = config.model_dump(mode="json", exclude=set(AFTER_EPOCH1))
    data = [[q, pairs.pages[p].id] for q, p in zip(pairs.queries, pairs.positives, strict=True)]
    key = hashlib.sha256(json.dumps([backbone_fingerprint, corpus_name, settings, data, [p.id for p in pairs.pages]],
                                    sort_keys=True).encode()).hexdigest()[:12]
    return Path(out_dir).parent / f"{corpus_name}-e1-{key}"


def train(backbone: Backbone, corpus: TrainingCorpus, config: Config, out_dir: Path) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / "model"
    if (final / TRAINING_FILE).is_file():
        return final
    started = time.perf_counter()
    for p in backbone.parameters():
        p.requires_grad_(False)
    backbone.eval()
    if config.triples:
        pairs = read_triples(Path(config.triples), Path(config.root) if config.root else None)
    else:
        store = Path(config.store) if config.store else out_dir.parent / f"{corpus.name}-pseudo_queries.jsonl"
        pairs = pseudo_query_pairs(corpus, config, store)
    pairs = with_corpus(pairs, corpus)
    pos_sets = positive_sets(pairs)
    train_rows, val_rows = split_by_page(pairs, config.val_fraction, config.seed)
    e1_dir = epoch1_dir(out_dir, backbone.fingerprint(), corpus.name, config, pairs)  # before LoRA changes it

    featurizer = Featurizer(backbone)
    shared = config.shared_head if config.shared_head is not None else featurizer.kind == "ocr-text"
    init = config.init or ("pca" if shared else "random")
    t0 = time.perf_counter()
    frozen_pages = featurizer.pages(pairs.pages)  # every page once, frozen: PCA, base scores, cached training states
    states = States(featurizer, pairs, frozen_pages, lora=config.lora is not None)
    if states.query_cache is None:  # LoRA: the frozen query states once, for the base scores
        states.query_cache = featurizer.queries(pairs.queries)
    feature_s = time.perf_counter() - t0
    page_dim, query_dim = frozen_pages[0].shape[-1], featurizer.query_dim
    weight = None
    if init == "pca":
        if page_dim != query_dim:
            raise ValueError(f"colintern: init pca needs one width on both sides, not query {query_dim} / page "
                             f"{page_dim} (use init: random)")
        weight = pca_projection(frozen_pages, config.dim, seed=config.seed)
    torch.manual_seed(config.seed)
    heads = Heads(query_dim, page_dim, config.dim, shared=shared, init=weight)
    start = {n: p.detach().clone() for n, p in heads.named_parameters()}

    validator, base, pool = None, None, []
    if val_rows:
        own = sorted({j for i in val_rows for j in pos_sets[i]})
        others = [j for j in range(len(pairs.pages)) if j not in set(own)]
        n_other = len(others) if config.val_pool is None else max(0, min(len(others), config.val_pool - len(own)))
        pool = sorted(own + random.Random(config.seed + 2).sample(others, n_other))
        base = base_scores(backbone, featurizer, states, pairs, val_rows, pool)

    lora_spec, lora_targets, lora_backbone = None, None, None
    if config.lora is not None:
        torch.manual_seed(config.seed)
        lora_spec = config.lora.model_copy(update={"train_heads": False})
        lora_targets = attach_lora(backbone, lora_spec)  # seeded: the adapter's init is part of the state
        lora_backbone = backbone
        states = States(featurizer, pairs, frozen_pages, lora=True)
    del frozen_pages
    if val_rows:
        validator = HeadValidator(heads, states, pairs, val_rows, pool, pos_sets, lora_backbone, corpus.page_docs)
    untrained = validator.scores() if validator is not None else None

    def objective(negatives: list[list[int]] | None) -> HeadObjective:
        return HeadObjective(heads, states, pairs.positives, pos_sets, config.temperature, negatives, lora_backbone)

    # stage 1: in-batch, in the folder the e1 and mined rows share
    e1_record, e1_reused = run_stage(objective(None), train_rows, config.train, e1_dir, validator, started)
    stage1_end = time.perf_counter()
    records = [e1_record]
    loss = [{**r, "stage": 1} for r in loss_lines(e1_dir / LOSS_FILE)]

    mined_path, mining = out_dir / MINED_FILE, None
    if config.epochs >= 2:
        negatives = None
        if config.mine_negatives:
            if mined_path.is_file() and (out_dir / MINING_FILE).is_file() \
                    and (out_dir / "stage2" / "checkpoints").is_dir():
                negatives = read_mined(mined_path, pairs)  # mined by the stage-1 heads before an interruption
                mining = json.loads((out_dir / MINING_FILE).read_text())
            else:
                negatives, mining = mine(heads, states, pairs, train_rows, pos_sets, config, mined_path)
                atomic_write_json(out_dir / MINING_FILE, mining)
        elif any(pairs.file_negatives):
            negatives = pairs.file_negatives
        if negatives is None or not any(negatives[i] for i in train_rows):
            raise RuntimeError("colintern: no query has negatives (a corpus too small to mine from, every candidate "
                               "within fn_margin of the positive, or a triples file without negs and mine_negatives "
                               "false)")
        rows = [i for i in train_rows if negatives[i]]  # a query whose every candidate was guarded away: skipped
        e2_record, _ = run_stage(objective(negatives), rows, config.mined_train, out_dir / "stage2",
                              validator, started)
        records.append(e2_record)
        last_epoch = max((r.get("epoch") or 0.0 for r in loss), default=0.0)
        offset = e1_record["train"]["steps"]
        loss += [{**r, "step": r["step"] + offset, "epoch": round(last_epoch + float(r.get("epoch") or 0.0), 4),
                  "stage": 2} for r in loss_lines(out_dir / "stage2" / LOSS_FILE)]
    loss_path = out_dir / LOSS_FILE
    atomic_write_text(loss_path, "".join(json.dumps(r) + "\n" for r in loss))

    if lora_backbone is not None:
        set_lora_dropout(lora_backbone, False)
    trained = validator.scores() if validator is not None else None
    n_trained = sum(p.numel() for p in heads.parameters()) + \
        (sum(p.numel() for p in backbone.parameters() if p.requires_grad) if lora_backbone is not None else 0)
    n_total = sum(p.numel() for p in heads.parameters()) + sum(p.numel() for p in backbone.parameters())
    if lora_spec is not None:  # the adapter first: training.json, written last, marks a complete model folder
        save_trainable(backbone, final, lora_spec, lora_targets)
    heads.save(final, {"label": config.label(), "config": config.model_dump(mode="json")})
    run_wall = time.perf_counter() - started
    # wall_s is what the model cost: a reused stage 1 adds the wall time of the run that trained it, up to the end of
    # stage 1 (its pseudo-queries included), to this run's own (run_wall_s)
    wall = run_wall + (e1_record.get("wall_s", e1_record["seconds"]) if e1_reused else 0.0)
    seen = sum(r["train"]["examples_seen"] for r in records)
    train_s = sum(r["train"]["train_s"] for r in records)
    extra: dict[str, Any] = {}
    if config.epochs >= 2:
        extra["train_e1"] = e1_record["train"]
    write_training_record(
        final, wall_s=wall, llm_calls=pairs.llm_calls, llm_tokens=pairs.llm_tokens, examples=len(train_rows),
        loss_log=str(loss_path.resolve()), stages={"features": round(feature_s, 3),
                                                   "stage1": round(stage1_end - t0 - feature_s, 3)},
        run_wall_s=round(run_wall, 3), label=config.label(), train=records[-1]["train"], **extra,
        steps=sum(r["train"]["steps"] for r in records), examples_seen=seen, train_s=round(train_s, 3),
        val_s=round(sum(r["train"]["val_s"] for r in records), 3),
        examples_per_s=round(seen / train_s, 2) if train_s else None,
        relative_weight_change=round(relative_change(heads, start), 5),
        rank_correlation_with_base={
            "untrained": round(spearman_rows(untrained, base), 4) if base is not None else None,
            "trained": round(spearman_rows(trained, base), 4) if base is not None else None,
            "trained_vs_untrained": round(spearman_rows(trained, untrained), 4) if base is not None else None},
        pages=len(pairs.pages), queries=len(train_rows), val_queries=len(val_rows),
        val_pages=len({pairs.positives[i] for i in val_rows}), val_pool=len(pool), pairs_notes=pairs.notes,
        trainable_parameters=n_trained, total_parameters=n_total, feature_s=round(feature_s, 3),
        shared_head=shared, init=init, lora_targets=lora_targets, epoch1_dir=str(e1_dir.resolve()),
        resumed_from=str((e1_dir / "chosen").resolve()) if e1_reused else None,
        mined_triples=str(mined_path.resolve()) if mining is not None else None, mining=mining)
    return final
