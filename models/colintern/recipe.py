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
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, model_validator

from harness.backbones import Backbone, Page
from harness.io import atomic_write_json, atomic_write_text
from harness.retrieval.maxsim import maxsim, pad_vectors, score_matrix
from harness.retrieval.mining import mean_pool, mine_negatives, negatives_from_scores
from harness.train.loop import LoopSpec, run_loop, spearman_rows
from harness.train.lora import LoraSpec, attach_lora, load_trainable, save_trainable
from harness.train.objectives import contrastive_loss
from harness.train.record import write_training_record
from harness.variants import TrainingCorpus
from models.colintern.heads import Featurizer, Heads, pca_projection

log = logging.getLogger(__name__)
TRAINING_FILE, LOSS_FILE, MINED_FILE, STAGE_FILE = "training.json", "loss.jsonl", "mined_triples.jsonl", "stage.json"
MINING_FILE = "mining.json"  # the mining report, beside mined_triples.jsonl
# Settings that do not change stage 1 (they act after it): left out of the stage-1 folder's key, so that runs that
# differ only in them (the e1 and mined rows) share stage 1.
AFTER_EPOCH1 = ("epochs", "mine_negatives", "negatives", "fn_margin", "mine_by", "use_faiss", "mined_train")
# Keys of the hand-written loop this recipe had before the shared one: named in the error, with what replaced them.
REMOVED = {"passes_per_epoch": "train.steps (a budget in optimizer steps)", "lr": "train.lr",
           "batch_size": "train.batch_size", "weight_decay": "train.weight_decay", "save_every": "train.eval_every",
           "max_steps": "train.steps", "lora_lr": "train.lr (the shared loop has one learning rate)"}


def _default_train() -> LoopSpec:
    # Chosen on held-out validation pseudo-queries (models/colintern/README.md, mmlongbench_dev pages): heads that
    # start at the base's geometry need small steps (lr 1e-3 peaked early and fell, 3e-3 fell from step 50; 3e-4 rose
    # to step ~400 of 600); weight decay 0 keeps W = P + R exact (decay would pull W to 0, not to P).
    return LoopSpec(steps=600, batch_size=16, lr=3e-4, warmup=0.1, weight_decay=0.0, eval_every=50,
                    min_delta=0.002)


def _default_mined_train() -> LoopSpec:
    # Stage 2 starts from stage 1's chosen state: a lower rate and a shorter budget (each query scores 1 + k pages)
    return LoopSpec(steps=150, batch_size=16, lr=1e-4, warmup=0.1, weight_decay=0.0, eval_every=25,
                    min_delta=0.002)


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dim: int = Field(128, ge=1)
    # pca: start from the corpus pages' principal directions (ranks like the base); random: N(0, 0.02), the seed's.
    # None: pca for a shared head (ocr-text), random for separate query/vision heads (colpali, tiny).
    init: Literal["pca", "random"] | None = None
    epochs: int = Field(2, ge=1, le=2)  # 1: in-batch stage only; 2: then a stage with mined (or the file's) negatives
    mine_negatives: bool = True
    negatives: int = Field(20, ge=1)  # k mined per query
    fn_margin: float | None = Field(0.05, ge=0)  # drop mined pages scoring within this of the positive; None: off
    # How pages are ranked for mining: maxsim = the model's own score (exact, every query x every page); mean = the
    # seed's mean-pooled vectors and an inner-product index (FAISS when installed: for corpora too large for maxsim)
    mine_by: Literal["maxsim", "mean"] = "maxsim"
    temperature: float = Field(0.02, gt=0)
    train: LoopSpec = Field(default_factory=_default_train)  # stage 1
    mined_train: LoopSpec = Field(default_factory=_default_mined_train)  # stage 2
    val_fraction: float = Field(0.15, ge=0, lt=1)  # source pages held out (with all their queries) for validation
    val_pool: int | None = Field(None, ge=1)  # pages validation ranks over (own + a seeded sample); None: all
    seed: int = 0  # page sample and validation split
    use_faiss: bool | None = None  # None: FAISS when installed, exact torch top-k otherwise
    # training pairs: a triples file, or pseudo-queries over the corpus
    triples: str | None = None
    root: str | None = None  # folder the triples' page paths are relative to (default: the file's folder)
    # Pseudo-queries (harness.synth pseudo_queries). With the defaults below a store written by
    # `harness synth queries FOLDER --store S --kind specific` (seed 42, max_new_tokens 48, default backend) serves
    # every query ColIntern asks for (queries_per_page <= that run's --n; max_pages null for all its pages).
    store: str | None = None  # SynthStore JSONL shared with other recipes; default beside the checkpoint folder
    max_pages: int | None = Field(30, ge=1)  # pages that get pseudo-queries (a seeded sample); None: every page
    queries_per_page: int = Field(1, ge=1)
    query_kind: Literal["specific", "general"] = "specific"  # general queries make same-entity pages false negatives
    query_seed: int = 42
    max_new_tokens: int = Field(48, ge=4)
    backend: dict[str, Any] = Field(default_factory=dict)  # harness.synth BackendSpec (default: packaged Gemma)
    # One head for both sides. None: shared when both sides are text tokens of one encoder (ocr-text), separate
    # when pages are vision features (colpali, tiny). See models/colintern/heads.py.
    shared_head: bool | None = None
    # LoRA on the encoder the text states come from (ocr-text: the text encoder; colpali/tiny: the language
    # model, as the seed), trained with the heads at train.lr. Its ``train_heads`` is ignored: the backbone's own
    # projection (custom_text_proj) lies after the states ColIntern reads, so training it would change nothing.
    lora: LoraSpec | None = None

    @model_validator(mode="before")
    @classmethod
    def _removed_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            old = [k for k in REMOVED if k in data]
            if old:
                raise ValueError("; ".join(f"{k!r} was removed: use {REMOVED[k]}" for k in old))
        return data

    def label(self) -> str:
        """The variant label of the trained model, in its name and run record."""
        if self.epochs == 1:
            return "colintern-e1"
        return "colintern-mined" if self.mine_negatives else f"colintern-e{self.epochs}"


@dataclass
class Pairs:
    pages: list[Page]  # the training pairs' pages first, then every other corpus page (mining, validation)
    queries: list[str]
    positives: list[int]  # page index per query
    file_negatives: list[list[int]]
    llm_calls: int = 0
    llm_tokens: int | None = None
    notes: dict[str, Any] = field(default_factory=dict)


# --- training pairs ------------------------------------------------------------------------------------
def read_triples(path: Path, root: Path | None = None) -> Pairs:
    """A JSONL triples file: one {"query": str, "pos": path, "negs": [paths]} per line. Bad lines are errors."""
    path = Path(path)
    root = Path(root) if root is not None else path.parent
    index: dict[str, int] = {}
    pages: list[Page] = []
    queries, positives, negatives = [], [], []

    def page(rel: Any, where: str) -> int:
        if not isinstance(rel, str) or not rel:
            raise ValueError(f"{where}: a page path must be a non-empty string, not {rel!r}")
        if rel not in index:
            file = root / rel
            if not file.is_file():
                raise ValueError(f"{where}: page {rel!r} not found under {root}")
            text = file.read_text() if file.suffix in (".txt", ".md") else None
            index[rel] = len(pages)
            pages.append(Page(rel, image=None if text is not None else Image.open(file), text=text))
        return index[rel]

    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where}: not JSON ({exc.msg})") from None
        if not isinstance(rec, dict) or not isinstance(rec.get("query"), str) or not rec["query"].strip():
            raise ValueError(f"{where}: needs a non-empty string \"query\"")
        negs = rec.get("negs", [])
        if not isinstance(negs, list):
            raise ValueError(f"{where}: \"negs\" must be a list of page paths")
        queries.append(rec["query"])
        positives.append(page(rec.get("pos"), where))
        negatives.append([page(x, where) for x in negs])
    if len(queries) < 2:
        raise ValueError(f"{path}: needs at least 2 triples (in-batch negatives), found {len(queries)}")
    return Pairs(pages, queries, positives, negatives)


def make_backend(spec: dict[str, Any]) -> Any:  # a module attribute, so tests can substitute a fake model
    from harness.synth.backends import make_backend as make

    return make(spec)


def pseudo_query_pairs(corpus: TrainingCorpus, config: Config, store_path: Path) -> Pairs:
    from harness.synth.operations import QUERY_PARAMS, pseudo_queries
    from harness.synth.store import SynthStore

    pages = sorted(corpus.pages, key=lambda p: p.id)
    if config.max_pages and len(pages) > config.max_pages:
        pages = sorted(random.Random(config.seed).sample(pages, config.max_pages), key=lambda p: p.id)
    backend = make_backend(config.backend)
    params = QUERY_PARAMS.model_copy(update={"max_new_tokens": config.max_new_tokens})
    with SynthStore(store_path) as store:
        found, report = pseudo_queries(backend, store, pages, n=config.queries_per_page, kind=config.query_kind,
                                       params=params, seed=config.query_seed, progress=False)
        tokens = _store_tokens(store, {p.id for p in pages}, config)
    log.info("colintern: %s", report.line())
    index = {p.id: i for i, p in enumerate(pages)}
    queries, positives = [], []
    for pid, qs in found.items():
        for q in qs:
            queries.append(q)
            positives.append(index[pid])
    if len(queries) < 2:
        raise RuntimeError(f"colintern: the generator gave {len(queries)} usable queries for {len(pages)} pages "
                           f"({report.line()})")
    return Pairs(pages, queries, positives, [[] for _ in queries], llm_calls=report.calls, llm_tokens=tokens,
                 notes={"sampled_pages": len(pages), "llm_calls_new": report.new, "store": str(store_path),
                        **report.notes})


def _store_tokens(store: Any, page_ids: set[str], config: Config) -> int | None:
    """Prompt + completion tokens of the query records this training used (a shared store holds others too: other
    pages, kinds, seeds or lengths). None when the records do not count tokens."""
    from harness.synth.operations import derive_seed

    total, found = 0, False
    for rec in getattr(store, "records", {}).values():
        page = (rec.get("inputs") or {}).get("page")
        if rec.get("op") != "queries" or page not in page_ids \
                or f".{config.query_kind}." not in str(rec.get("prompt_id", "")) \
                or (rec.get("params") or {}).get("max_new_tokens") != config.max_new_tokens \
                or rec.get("seed") != derive_seed(config.query_seed, page, rec.get("sample")):
            continue
        for key in ("n_prompt_tokens", "n_tokens"):
            if isinstance(rec.get(key), int):
                total += rec[key]
                found = True
    return total if found else None


def _with_corpus(pairs: Pairs, corpus: TrainingCorpus) -> Pairs:
    """The pairs' pages, then every corpus page they lack: mining and validation see the whole corpus."""
    have = {p.id for p in pairs.pages}
    extra = sorted((p for p in corpus.pages if p.id not in have), key=lambda p: p.id)
    pairs.pages = list(pairs.pages) + extra
    return pairs


def _norm(text: str) -> str:
    return re.sub(r"\W+", " ", text.lower()).strip()


def positive_sets(pairs: Pairs) -> list[set[int]]:
    """Per query: its page and the pages of every query with the same text (never negatives of each other)."""
    by_text: dict[str, set[int]] = {}
    for q, p in zip(pairs.queries, pairs.positives, strict=True):
        by_text.setdefault(_norm(q), set()).add(p)
    return [by_text[_norm(q)] for q in pairs.queries]


def split_by_page(pairs: Pairs, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(training query indices, validation query indices): ``fraction`` of the source pages, with all their
    queries, held out (seeded). Training keeps at least 2 queries (in-batch negatives)."""
    sources = sorted({pairs.pages[p].id for p in pairs.positives})
    random.Random(seed + 1).shuffle(sources)
    n_val = round(len(sources) * fraction)
    while n_val > 0:
        held = set(sources[:n_val])
        val = [i for i, p in enumerate(pairs.positives) if pairs.pages[p].id in held]
        train = [i for i, p in enumerate(pairs.positives) if pairs.pages[p].id not in held]
        if len(train) >= 2:
            return train, val
        n_val -= 1
    return list(range(len(pairs.queries))), []


# --- training ------------------------------------------------------------------------------------------
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


def _set_lora_dropout(backbone: torch.nn.Module, training: bool) -> None:
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
            _set_lora_dropout(self.lora_backbone, mode)
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
                 pos_sets: list[set[int]], lora_backbone: torch.nn.Module | None = None) -> None:
        self.heads, self.states, self.rows, self.pool, self.lora_backbone = heads, states, queries, pool, lora_backbone
        self.query_ids = [f"q{i}" for i in queries]
        self.page_ids = [pairs.pages[j].id for j in pool]
        in_pool = set(pool)
        self.qrels = {f"q{i}": {pairs.pages[j].id: 1 for j in pos_sets[i] if j in in_pool} for i in queries}

    @torch.no_grad()
    def scores(self) -> torch.Tensor:
        self.heads.eval()
        if self.lora_backbone is not None:
            _set_lora_dropout(self.lora_backbone, False)
        q, _ = self.heads.project(self.states.get("query", self.rows), "query")
        d, _ = self.heads.project(self.states.get("page", self.pool), "page")
        return maxsim(q.float().cpu(), d.float().cpu())


def epoch1_dir(out_dir: Path, backbone_fingerprint: str, corpus_name: str, config: Config, pairs: Pairs) -> Path:
    """The folder of stage 1 (its checkpoints, loss lines, chosen state), beside ``out_dir``: keyed by the backbone,
    the corpus, the training pairs, the pages and every setting except ``AFTER_EPOCH1``, so every run that would
    compute the same stage-1 state finds it there (the e1 and mined rows of a run)."""
    settings = config.model_dump(mode="json", exclude=set(AFTER_EPOCH1))
    data = [[q, pairs.pages[p].id] for q, p in zip(pairs.queries, pairs.positives, strict=True)]
    key = hashlib.sha256(json.dumps([backbone_fingerprint, corpus_name, settings, data, [p.id for p in pairs.pages]],
                                    sort_keys=True).encode()).hexdigest()[:12]
    return Path(out_dir).parent / f"{corpus_name}-e1-{key}"


def _stage(objective: HeadObjective, items: list[int], spec: LoopSpec, folder: Path,
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


def _loss_lines(path: Path) -> list[dict[str, Any]]:
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



def _base_scores(backbone: Backbone, featurizer: Featurizer, states: States, pairs: Pairs, rows: list[int],
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


def _relative_change(heads: Heads, start: dict[str, torch.Tensor]) -> float:
    num = den = 0.0
    for name, p in heads.named_parameters():  # each distinct head once (a shared head is one parameter)
        num += float((p.detach().cpu() - start[name]).pow(2).sum())
        den += float(start[name].pow(2).sum())
    return (num / den) ** 0.5 if den > 0 else 0.0


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
    pairs = _with_corpus(pairs, corpus)
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
        base = _base_scores(backbone, featurizer, states, pairs, val_rows, pool)

    lora_spec, lora_targets, lora_backbone = None, None, None
    if config.lora is not None:
        torch.manual_seed(config.seed)
        lora_spec = config.lora.model_copy(update={"train_heads": False})
        lora_targets = attach_lora(backbone, lora_spec)  # seeded: the adapter's init is part of the state
        lora_backbone = backbone
        states = States(featurizer, pairs, frozen_pages, lora=True)
    del frozen_pages
    if val_rows:
        validator = HeadValidator(heads, states, pairs, val_rows, pool, pos_sets, lora_backbone)
    untrained = validator.scores() if validator is not None else None

    def objective(negatives: list[list[int]] | None) -> HeadObjective:
        return HeadObjective(heads, states, pairs.positives, pos_sets, config.temperature, negatives, lora_backbone)

    # stage 1: in-batch, in the folder the e1 and mined rows share
    e1_record, e1_reused = _stage(objective(None), train_rows, config.train, e1_dir, validator, started)
    stage1_end = time.perf_counter()
    records = [e1_record]
    loss = [{**r, "stage": 1} for r in _loss_lines(e1_dir / LOSS_FILE)]

    mined_path, mining = out_dir / MINED_FILE, None
    if config.epochs >= 2:
        negatives = None
        if config.mine_negatives:
            if mined_path.is_file() and (out_dir / MINING_FILE).is_file() \
                    and (out_dir / "stage2" / "checkpoints").is_dir():
                negatives = _read_mined(mined_path, pairs)  # mined by the stage-1 heads before an interruption
                mining = json.loads((out_dir / MINING_FILE).read_text())
            else:
                negatives, mining = _mine(heads, states, pairs, train_rows, pos_sets, config, mined_path)
                atomic_write_json(out_dir / MINING_FILE, mining)
        elif any(pairs.file_negatives):
            negatives = pairs.file_negatives
        if negatives is None or not any(negatives[i] for i in train_rows):
            raise RuntimeError("colintern: no query has negatives (a corpus too small to mine from, every candidate "
                               "within fn_margin of the positive, or a triples file without negs and mine_negatives "
                               "false)")
        rows = [i for i in train_rows if negatives[i]]  # a query whose every candidate was guarded away: skipped
        e2_record, _ = _stage(objective(negatives), rows, config.mined_train, out_dir / "stage2",
                              validator, started)
        records.append(e2_record)
        last_epoch = max((r.get("epoch") or 0.0 for r in loss), default=0.0)
        offset = e1_record["train"]["steps"]
        loss += [{**r, "step": r["step"] + offset, "epoch": round(last_epoch + float(r.get("epoch") or 0.0), 4),
                  "stage": 2} for r in _loss_lines(out_dir / "stage2" / LOSS_FILE)]
    loss_path = out_dir / LOSS_FILE
    atomic_write_text(loss_path, "".join(json.dumps(r) + "\n" for r in loss))

    if lora_backbone is not None:
        _set_lora_dropout(lora_backbone, False)
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
        relative_weight_change=round(_relative_change(heads, start), 5),
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


@torch.no_grad()
def _mine(heads: Heads, states: States, pairs: Pairs, rows: list[int], pos_sets: list[set[int]], config: Config,
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


def _read_mined(path: Path, pairs: Pairs) -> list[list[int]]:
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
