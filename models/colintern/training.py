"""ColIntern's training parts: cached token states, the heads' contrastive objective and validator, one stage on the
shared loop, and whole-corpus mining of hard negatives with the stage-1 model."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from harness.backbones import Backbone
from harness.io import atomic_write_json, atomic_write_text
from harness.retrieval.maxsim import maxsim, pad_vectors, score_matrix
from harness.retrieval.mining import mean_pool, mine_negatives, negatives_from_scores
from harness.train.loop import LoopSpec, run_loop
from harness.train.lora import load_trainable, save_trainable
from harness.train.objectives import contrastive_loss
from models.colintern.config import STAGE_FILE, Config
from models.colintern.heads import Featurizer, Heads
from models.colintern.pairs import Pairs

log = logging.getLogger(__name__)


class States:
    """Token states of the queries and of every page. Without LoRA all are computed once (frozen); with LoRA those
    that pass through the adapted encoder are computed per call (with gradient while training)."""

    def __init__(self, featurizer: Featurizer, pairs: Pairs, frozen_pages: list[torch.Tensor],
                 lora: bool) -> None:
        self.featurizer, self.pairs = featurizer, pairs
        self.query_cache = None if lora else featurizer.queries(pairs.queries)
        self.page_cache = None if lora and featurizer.pages_through_encoder else frozen_pages

    def get(self, side: str, idx: Sequence[int], grad: bool = False) -> list[torch.Tensor]:
        cache = self.query_cache if side == "query" else self.page_cache
        if cache is not None:
            return [cache[i] for i in idx]
        if side == "query":
            return self.featurizer.queries([self.pairs.queries[i] for i in idx], grad=grad)
        return self.featurizer.pages([self.pairs.pages[i] for i in idx], grad=grad)


def set_lora_dropout(backbone: torch.nn.Module, training: bool) -> None:
    """LoRA's dropout follows training; the frozen base model stays in eval mode (no dropout of its own), so
    before the first update (lora_B = 0) the states are exactly the frozen ones the cached path uses."""
    from peft.tuners.lora import LoraLayer

    for m in backbone.modules():
        if isinstance(m, LoraLayer):
            m.lora_dropout.train(training)


class HeadObjective(torch.nn.Module):
    """forward(idx) -> the loss of a batch of training queries. Without ``negatives``: in-batch (candidates = the
    batch's distinct positive pages). With ``negatives``: each query against its positive and its own negatives
    (per-query cross-entropy; other queries' pages are masked out). What trains: the heads, and the LoRA adapter of
    ``lora_backbone`` when given (registered, so checkpoints hold it)."""

    def __init__(self, heads: Heads, states: States, positives: list[int], pos_sets: list[set[int]],
                 temperature: float, negatives: list[list[int]] | None = None,
                 lora_backbone: torch.nn.Module | None = None) -> None:
        super().__init__()
        self.heads, self.lora_backbone = heads, lora_backbone
        self.states, self.positives, self.pos_sets = states, positives, pos_sets
        self.temperature, self.negatives = temperature, negatives

    def train(self, mode: bool = True) -> HeadObjective:
        super().train(mode)
        if self.lora_backbone is not None:
            self.lora_backbone.eval()
            set_lora_dropout(self.lora_backbone, mode)
        return self

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        rows = idx.tolist()
        own = [[self.positives[i], *(self.negatives[i] if self.negatives is not None else [])] for i in rows]
        cand: list[int] = list(dict.fromkeys(j for row in own for j in row))  # each page once
        col = {j: c for c, j in enumerate(cand)}
        positive = torch.zeros(len(rows), len(cand), dtype=torch.bool)
        valid = None if self.negatives is None else torch.zeros(len(rows), len(cand), dtype=torch.bool)
        for b, i in enumerate(rows):
            for j in self.pos_sets[i]:
                if j in col:
                    positive[b, col[j]] = True
            if valid is not None:
                valid[b, [col[j] for j in own[b]]] = True
                positive[b] &= valid[b]
        grad = torch.is_grad_enabled()
        q, qm = self.heads.project(self.states.get("query", rows, grad), "query")
        page_states = self.states.get("page", cand, grad)
        if valid is None:
            d, dm = self.heads.project(page_states, "page")
            scores = score_matrix(q, qm, d, dm)
        else:
            # Each query against its own candidates only (the others are masked out of the loss anyway): every
            # distinct page is projected once, unpadded, and each query's candidates are padded to their own
            # longest page (a batch of 16 x 21 pages padded to the batch's longest would be mostly padding).
            flat = self.heads.project_tokens(page_states, "page")
            flat = torch.cat([flat, flat.new_zeros(1, flat.shape[1])])  # the last row: padding
            lengths = torch.tensor([len(x) for x in page_states])
            offsets = torch.cumsum(lengths, 0) - lengths
            pad, own_scores, at_row, at_col = len(flat) - 1, [], [], []
            for b, row in enumerate(own):
                c = torch.tensor([col[j] for j in row])
                steps = torch.arange(int(lengths[c].max()))
                idx = torch.where(steps[None] < lengths[c][:, None], offsets[c][:, None] + steps[None], pad)
                idx = idx.to(flat.device)
                own_scores.append(score_matrix(q[b : b + 1], qm[b : b + 1], flat[idx], idx < pad)[0])
                at_row += [b] * len(row)
                at_col += c.tolist()
            at = (torch.tensor(at_row, device=q.device), torch.tensor(at_col, device=q.device))
            scores = q.new_zeros(len(rows), len(cand)).index_put(at, torch.cat(own_scores))
        scores = scores / qm.sum(1, keepdim=True).clamp(min=1)
        return contrastive_loss(scores, positive.to(scores.device), "infonce", self.temperature,
                                None if valid is None else valid.to(scores.device))


def _collate(batch: list[int]) -> dict[str, torch.Tensor]:
    return {"idx": torch.tensor(batch, dtype=torch.long)}


class HeadValidator:
    """Held-out pseudo-queries ranked over a page pool with the current heads (evaluation's MaxSim)."""

    def __init__(self, heads: Heads, states: States, pairs: Pairs, queries: list[int], pool: list[int],
                 pos_sets: list[set[int]], lora_backbone: torch.nn.Module | None = None,
                 page_docs: dict[str, str] | None = None) -> None:
        self.heads, self.states, self.rows, self.pool, self.lora_backbone = heads, states, queries, pool, lora_backbone
        self.query_ids = [f"q{i}" for i in queries]
        self.page_ids = [pairs.pages[j].id for j in pool]
        # each pool page's document (pairs from a triples file name pages by path: none)
        docs = page_docs or {}
        self.page_groups = [docs[p] for p in self.page_ids] if all(p in docs for p in self.page_ids) else None
        in_pool = set(pool)
        self.qrels = {f"q{i}": {pairs.pages[j].id: 1 for j in pos_sets[i] if j in in_pool} for i in queries}

    @torch.no_grad()
    def scores(self) -> torch.Tensor:
        self.heads.eval()
        if self.lora_backbone is not None:
            set_lora_dropout(self.lora_backbone, False)
        q, _ = self.heads.project(self.states.get("query", self.rows), "query")
        d, _ = self.heads.project(self.states.get("page", self.pool), "page")
        return maxsim(q.float().cpu(), d.float().cpu())


def run_stage(objective: HeadObjective, items: list[int], spec: LoopSpec, folder: Path,
           validator: HeadValidator | None, run_started: float) -> tuple[dict[str, Any], bool]:
    """Run one stage on the shared loop (resuming its checkpoints) or reuse a finished one: (its record, reused).
    On return ``objective`` holds the stage's chosen state. The record's ``wall_s``: the producing run's wall time
    from its start (``run_started``: pseudo-queries, states) to the stage's end."""
    done, chosen = folder / STAGE_FILE, folder / "chosen"
    if done.is_file() and chosen.is_dir():
        load_trainable(objective, chosen)
        return json.loads(done.read_text()), True
    started = time.perf_counter()
    result = run_loop(objective, items, _collate, spec, folder, validator)
    save_trainable(objective, chosen)
    record = {"train": result.record(), "seconds": round(time.perf_counter() - started, 3),
              "wall_s": round(time.perf_counter() - run_started, 3)}
    atomic_write_json(done, record)
    return record, False


def loss_lines(path: Path) -> list[dict[str, Any]]:
    """A loop's loss file, one record per step (a resumed run logs the steps after its checkpoint again: the later
    line wins), in step order."""
    if not path.is_file():
        return []
    by_step: dict[int, dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            rec = json.loads(line)
            by_step[int(rec["step"])] = rec
    return [by_step[s] for s in sorted(by_step)]



def base_scores(backbone: Backbone, featurizer: Featurizer, states: States, pairs: Pairs, rows: list[int],
                 pool: list[int]) -> torch.Tensor:
    """The base backbone's scores of the validation queries over the pool (what evaluation's base row computes).
    OCR-text without a projection: its vectors are the normalised token states (no second encoder pass)."""
    if featurizer.kind == "ocr-text" and getattr(backbone, "projection", None) is None \
            and states.query_cache is not None and states.page_cache is not None:
        q = pad_vectors([torch.nn.functional.normalize(s, dim=-1) for s in states.get("query", rows)])
        d = pad_vectors([torch.nn.functional.normalize(s, dim=-1) for s in states.get("page", pool)])
        return maxsim(q, d)
    q = pad_vectors([x.float().cpu() for x in backbone.encode_queries([pairs.queries[i] for i in rows])])
    d = pad_vectors([x.float().cpu() for x in backbone.encode_pages([pairs.pages[j] for j in pool])])
    return maxsim(q, d)


def relative_change(heads: Heads, start: dict[str, torch.Tensor]) -> float:
    num = den = 0.0
    for name, p in heads.named_parameters():  # each distinct head once (a shared head is one parameter)
        num += float((p.detach().cpu() - start[name]).pow(2).sum())
        den += float(start[name].pow(2).sum())
    return (num / den) ** 0.5 if den > 0 else 0.0


@torch.no_grad()
def mine(heads: Heads, states: States, pairs: Pairs, rows: list[int], pos_sets: list[set[int]], config: Config,
          path: Path) -> tuple[list[list[int]], dict[str, Any]]:
    """k negatives for each training query over every page (the whole corpus), false-negative guard applied."""
    heads.eval()
    everything = list(range(len(pairs.pages)))
    k = min(config.negatives, len(pairs.pages) - 1)
    stats: dict[str, int] = {}
    positives = [sorted(pos_sets[i]) for i in rows]
    if config.mine_by == "maxsim":
        docs, _ = heads.project(states.get("page", everything), "page")
        docs = docs.float().cpu()
        blocks = []
        for start in range(0, len(rows), 256):
            q_states = states.get("query", rows[start : start + 256])
            q = heads.project(q_states, "query")[0].float().cpu()
            # per query token, as the loss scores (the guard's margin is on that scale)
            blocks.append(maxsim(q, docs) / torch.tensor([float(len(x)) for x in q_states]).unsqueeze(1))
        scores = torch.cat(blocks)
        found = negatives_from_scores(scores, positives, k, margin=config.fn_margin, stats=stats)
    else:
        qv, pv = [], []
        for start in range(0, len(rows), 64):  # projected in blocks: [B, T, dim] padding stays small
            q, qm = heads.project(states.get("query", rows[start : start + 64]), "query")
            qv.append(mean_pool([x[m].cpu() for x, m in zip(q, qm, strict=True)]))
        for start in range(0, len(everything), 64):
            p, pm = heads.project(states.get("page", everything[start : start + 64]), "page")
            pv.append(mean_pool([x[m].cpu() for x, m in zip(p, pm, strict=True)]))
        found = mine_negatives(torch.cat(qv), torch.cat(pv), positives, k, config.use_faiss, margin=config.fn_margin,
                               stats=stats)
    negatives: list[list[int]] = [[] for _ in pairs.queries]
    for i, negs in zip(rows, found, strict=True):
        negatives[i] = negs
    sampled = set(pairs.positives)
    outside = sum(1 for negs in found for j in negs if j not in sampled)
    atomic_write_text(path, "".join(json.dumps({"query": pairs.queries[i], "pos": pairs.pages[pairs.positives[i]].id,
                                            "negs": [pairs.pages[j].id for j in negatives[i]]}) + "\n"
                                for i in rows))
    report = {"by": config.mine_by, "k": k, "fn_margin": config.fn_margin, "corpus_pages": len(pairs.pages),
              "queries": len(rows), "negatives": sum(len(x) for x in found), "outside_query_pages": outside, **stats}
    log.info("colintern: mined %s", report)
    return negatives, report


def read_mined(path: Path, pairs: Pairs) -> list[list[int]]:
    index = {p.id: i for i, p in enumerate(pairs.pages)}
    out: list[list[int]] = [[] for _ in pairs.queries]
    by_query: dict[tuple[str, str], list[int]] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            rec = json.loads(line)
            by_query[(rec["query"], rec["pos"])] = [index[x] for x in rec["negs"]]
    for i, (q, p) in enumerate(zip(pairs.queries, pairs.positives, strict=True)):
        out[i] = by_query.get((q, pairs.pages[p].id), [])
    return out
