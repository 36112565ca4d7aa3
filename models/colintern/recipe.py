"""ColIntern: head-only training over a frozen backbone (RECIPES.md section 5, seeds/colintern.md).

Training pairs: pseudo-queries over the corpus pages (the synthetic-data engine, cached in a SynthStore beside
the checkpoint folder) or a JSONL triples file ``{"query", "pos", "negs"}`` (page paths relative to ``root``).
Frozen token states of every training page and query are computed once; the heads then train on them. With
``lora`` the encoder gets LoRA adapters trained jointly with the heads: the states it produces (queries; OCR
pages too) are then computed with gradient for each batch, and only the vision features stay cached.

- Epoch 1: cross-entropy over the B x B in-batch MaxSim matrix (scores / query length / temperature).
- Then (``mine_negatives``) mine hard negatives with the epoch-1 heads (``harness.retrieval.mining``) and write
  ``mined_triples.jsonl``; epochs 2+: per-query cross-entropy over [positive + k mined negatives].
- Checkpoints (heads, LoRA, optimiser, RNG, position) every ``save_every`` steps and at each epoch end; a
  re-run resumes from the latest one and ends with the same weights as an uninterrupted run.
- Epoch 1 does not depend on ``epochs``, ``mine_negatives`` or the mining settings, so its checkpoints (and its
  loss lines) live in a folder beside ``out_dir`` keyed by everything else (``epoch1_dir``): the colintern-e1 row
  and the colintern-mined row of one run share it, and the mined run resumes from the e1 run's end-of-epoch-1
  state instead of training epoch 1 again (same pairs, seed and settings: the same state, bit for bit).
  Epochs 2+ checkpoint under ``out_dir/checkpoints``.
- Loss per step in ``loss.jsonl`` (epoch 1's lines included); ``training.json`` holds wall_s, llm_calls,
  llm_tokens, examples, loss_log.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, model_validator

from harness.backbones import Backbone, Page
from harness.retrieval.mining import mean_pool, mine_negatives
from harness.train.lora import LoraSpec, attach_lora, save_trainable, trainable_state
from harness.variants import TrainingCorpus
from models.colintern.heads import Featurizer, Heads, maxsim_matrix, own_maxsim

log = logging.getLogger(__name__)
TRAINING_FILE, LOSS_FILE, MINED_FILE = "training.json", "loss.jsonl", "mined_triples.jsonl"
# Settings that do not change epoch 1's trajectory (they act after it, or only decide where a run stops or how
# often it checkpoints): left out of the epoch-1 folder's key so that runs differing in them share epoch 1.
AFTER_EPOCH1 = ("epochs", "mine_negatives", "negatives", "use_faiss", "max_steps", "save_every")


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dim: int = Field(128, ge=1)
    epochs: int = Field(2, ge=1)  # epoch 1 in-batch; 2+ with mined (or the file's) negatives
    mine_negatives: bool = True
    negatives: int = Field(20, ge=1)  # k mined per query
    batch_size: int = Field(16, ge=2)
    # Shuffled passes over the pairs per epoch: a small synthetic set (30 pseudo-queries) is 2 steps a pass; the
    # heads train on cached states, so many passes cost little.
    passes_per_epoch: int = Field(1, ge=1)
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = 0.0
    temperature: float = Field(0.02, gt=0)
    save_every: int = Field(50, ge=1)  # steps between checkpoints (and one at every epoch end)
    seed: int = 0
    use_faiss: bool | None = None  # None: FAISS when installed, exact torch top-k otherwise
    # training pairs: a triples file, or pseudo-queries over the corpus
    triples: str | None = None
    root: str | None = None  # folder the triples' page paths are relative to (default: the file's folder)
    max_pages: int | None = Field(30, ge=1)  # pages that get pseudo-queries (a seeded sample)
    queries_per_page: int = Field(1, ge=1)
    query_kind: str = "general"
    backend: dict[str, Any] = Field(default_factory=dict)  # harness.synth BackendSpec (default: packaged Gemma)
    max_steps: int | None = Field(None, ge=1)  # stop after this many steps in all (to test resuming)
    # One head for both sides. None: shared when both sides are text tokens of one encoder (ocr-text), separate
    # when pages are vision features (colpali, tiny). See models/colintern/heads.py.
    shared_head: bool | None = None
    # LoRA on the encoder the text states come from (ocr-text: the text encoder; colpali/tiny: the language
    # model, as the seed), trained with the heads. Its ``train_heads`` is ignored: the backbone's own projection
    # (custom_text_proj) lies after the states ColIntern reads, so training it would change nothing.
    lora: LoraSpec | None = None
    lora_lr: float | None = Field(None, gt=0)  # the adapter's learning rate (default: lr)

    @model_validator(mode="after")
    def _lora_lr_needs_lora(self) -> Config:
        if self.lora_lr is not None and self.lora is None:
            raise ValueError("lora_lr is set but lora is not (no adapter to train)")
        return self

    def label(self) -> str:
        """The variant label of the trained model, in its name and run record."""
        if self.epochs == 1:
            return "colintern-e1"
        return "colintern-mined" if self.mine_negatives else f"colintern-e{self.epochs}"


@dataclass
class Pairs:
    pages: list[Page]
    queries: list[str]
    positives: list[int]  # page index per query
    file_negatives: list[list[int]]
    llm_calls: int = 0
    llm_tokens: int | None = None


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


def pseudo_query_pairs(corpus: TrainingCorpus, config: Config, store_path: Path) -> Pairs:
    from harness.synth.backends import make_backend
    from harness.synth.operations import pseudo_queries
    from harness.synth.store import SynthStore

    pages = sorted(corpus.pages, key=lambda p: p.id)
    if config.max_pages and len(pages) > config.max_pages:
        pages = sorted(random.Random(config.seed).sample(pages, config.max_pages), key=lambda p: p.id)
    backend = make_backend(config.backend)
    with SynthStore(store_path) as store:
        found, report = pseudo_queries(backend, store, pages, n=config.queries_per_page, kind=config.query_kind,
                                       seed=config.seed, progress=False)
        tokens = _store_tokens(store, {p.id for p in pages})
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
    return Pairs(pages, queries, positives, [[] for _ in queries], llm_calls=report.calls, llm_tokens=tokens)


def _store_tokens(store: Any, page_ids: set[str]) -> int | None:
    """Prompt + completion tokens of the store's query records for these pages (None when not recorded)."""
    total, found = 0, False
    for rec in getattr(store, "records", {}).values():
        if rec.get("op") != "queries" or (rec.get("inputs") or {}).get("page") not in page_ids:
            continue
        for key in ("n_prompt_tokens", "n_tokens"):
            if isinstance(rec.get(key), int):
                total += rec[key]
                found = True
    return total if found else None


# --- training ------------------------------------------------------------------------------------------
def _batches(n: int, batch_size: int, seed: int, epoch: int, passes: int = 1) -> list[list[int]]:
    out: list[list[int]] = []
    for rep in range(passes):
        gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch * 1000 + rep)
        order = torch.randperm(n, generator=gen).tolist()
        batches = [order[i : i + batch_size] for i in range(0, n, batch_size)]
        if len(batches) > 1 and len(batches[-1]) < 2:  # a batch of one has no in-batch negative
            batches[-2] += batches.pop()
        out += batches
    return out


def _latest_checkpoint(*folders: Path) -> Path | None:
    """The checkpoint with the most steps across ``folders`` (epoch 1's folder and the run's own)."""
    found = [p for folder in folders for p in folder.glob("step-*.pt")]
    return max(found, key=lambda p: int(p.stem.split("-")[1])) if found else None


def _save_checkpoint(folder: Path, state: dict[str, Any], finished_epoch: int | None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step-{state['step']:07d}.pt"
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)
    if finished_epoch is not None:  # names the step checkpoint that ends the epoch
        (folder / f"epoch-{finished_epoch}.txt").write_text(path.name)


def epoch1_dir(out_dir: Path, backbone_fingerprint: str, corpus_name: str, config: Config, pairs: Pairs) -> Path:
    """The folder of epoch 1's checkpoints and loss lines, beside ``out_dir``: keyed by the backbone, the corpus,
    the training pairs and every setting except ``AFTER_EPOCH1``, so every run that would compute the same
    epoch-1 state finds it there (the e1 and mined rows of a run)."""
    settings = config.model_dump(mode="json", exclude=set(AFTER_EPOCH1))
    data = [[q, pairs.pages[p].id] for q, p in zip(pairs.queries, pairs.positives, strict=True)]
    key = hashlib.sha256(json.dumps([backbone_fingerprint, corpus_name, settings, data], sort_keys=True)
                         .encode()).hexdigest()[:12]
    return Path(out_dir).parent / f"{corpus_name}-e1-{key}"


def _read_loss_lines(path: Path, first: int, last: int) -> list[str]:
    """Lines of a loss file whose step is in [first, last]."""
    if not path.exists():
        return []
    return [ln for ln in path.read_text().splitlines() if ln.strip() and first <= json.loads(ln)["step"] <= last]


def _set_lora_dropout(backbone: torch.nn.Module, training: bool) -> None:
    """LoRA's dropout follows training; the frozen base model stays in eval mode (no dropout of its own), so
    before the first update (lora_B = 0) the states are exactly the frozen ones the cached path uses."""
    from peft.tuners.lora import LoraLayer

    for m in backbone.modules():
        if isinstance(m, LoraLayer):
            m.lora_dropout.train(training)


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
        pairs = pseudo_query_pairs(corpus, config, out_dir.parent / f"{corpus.name}-pseudo_queries.jsonl")
    e1_dir = epoch1_dir(out_dir, backbone.fingerprint(), corpus.name, config, pairs)  # before LoRA changes it

    torch.manual_seed(config.seed)
    lora_spec, lora_targets, lora_params = None, None, []
    if config.lora is not None:
        lora_spec = config.lora.model_copy(update={"train_heads": False})
        lora_targets = attach_lora(backbone, lora_spec)  # seeded: the adapter's init is part of the state
        lora_params = [p for p in backbone.parameters() if p.requires_grad]
    featurizer = Featurizer(backbone)
    shared = config.shared_head if config.shared_head is not None else featurizer.kind == "ocr-text"
    # Cached states: everything without LoRA; with LoRA only the vision features (they never enter the language
    # model the adapter sits on). The others are computed with gradient per batch (``states`` below).
    t0 = time.perf_counter()
    query_states = featurizer.queries(pairs.queries) if lora_spec is None else None
    page_states = None if lora_spec is not None and featurizer.pages_through_encoder \
        else featurizer.pages(pairs.pages)
    feature_s = time.perf_counter() - t0
    page_dim = page_states[0].shape[-1] if page_states is not None else featurizer.query_dim

    def states(side: str, idx: list[int]) -> list[torch.Tensor]:
        cached = query_states if side == "query" else page_states
        if cached is not None:
            return [cached[i] for i in idx]
        if side == "query":
            return featurizer.queries([pairs.queries[i] for i in idx], grad=True)
        return featurizer.pages([pairs.pages[i] for i in idx], grad=True)

    def states_all(side: str) -> list[torch.Tensor]:  # every query or page, without gradient (mining)
        cached = query_states if side == "query" else page_states
        if cached is not None:
            return cached
        return featurizer.queries(pairs.queries) if side == "query" else featurizer.pages(pairs.pages)

    heads = Heads(featurizer.query_dim, page_dim, config.dim, shared=shared)
    groups: list[dict[str, Any]] = [{"params": list(heads.parameters())}]
    if lora_params:
        groups.append({"params": lora_params, "lr": config.lora_lr or config.lr})
    optimizer = torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
    ckpt_dir, loss_path, mined_path = out_dir / "checkpoints", out_dir / LOSS_FILE, out_dir / MINED_FILE
    e1_ckpt_dir, e1_loss_path = e1_dir / "checkpoints", e1_dir / LOSS_FILE
    e1_steps = len(_batches(len(pairs.queries), config.batch_size, config.seed, 1, config.passes_per_epoch))
    step, epoch, done_in_epoch, train_s, resumed_epoch = 0, 1, 0, 0.0, 0
    prior_wall = 0.0  # wall time of the runs that produced the checkpoint resumed from (e.g. the e1 row's epoch 1)
    latest = _latest_checkpoint(ckpt_dir, e1_ckpt_dir)
    if latest is not None:
        state = torch.load(latest, map_location="cpu", weights_only=False)
        heads.load_state_dict(state["heads"])
        if lora_params:
            _load_lora(backbone, state["lora"], latest)
        optimizer.load_state_dict(state["optimizer"])
        if "rng" in state:  # LoRA dropout draws from it: a resumed run draws the same masks
            torch.set_rng_state(state["rng"])
        if "cuda_rng" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        step, epoch, done_in_epoch, train_s = state["step"], state["epoch"], state["done_in_epoch"], state["train_s"]
        prior_wall = state.get("wall_s", 0.0)
        resumed_epoch = epoch
        log.info("colintern: resuming from %s (step %d, epoch %d)", latest, step, epoch)
    # The loss files hold exactly the steps behind the current state (a killed run may have logged more):
    # epoch 1's lines come from the shared epoch-1 folder (another run may have trained them), the rest are ours.
    e1_kept = _read_loss_lines(e1_loss_path, 1, min(step, e1_steps))
    if len(e1_kept) != min(step, e1_steps):
        log.warning("colintern: %s has %d of epoch 1's first %d loss lines: the curve has a gap", e1_loss_path,
                    len(e1_kept), min(step, e1_steps))
    e1_dir.mkdir(parents=True, exist_ok=True)
    e1_loss_path.write_text("".join(ln + "\n" for ln in e1_kept))
    kept = e1_kept + _read_loss_lines(loss_path, e1_steps + 1, step)
    loss_path.write_text("".join(ln + "\n" for ln in kept))

    mined: list[list[int]] | None = None
    examples = 0
    with loss_path.open("a") as loss_log, e1_loss_path.open("a") as e1_loss_log:
        while epoch <= config.epochs:
            negatives = None
            if epoch >= 2:
                if config.mine_negatives:
                    if mined is None and resumed_epoch >= 2 and mined_path.is_file():
                        mined = _read_mined(mined_path, pairs)  # mined by the epoch-1 heads before the stop
                    if mined is None:
                        if lora_params:
                            _set_lora_dropout(backbone, False)
                        mined = _mine(heads, states_all("query"), states_all("page"), pairs, config, mined_path)
                    negatives = mined
                elif any(pairs.file_negatives):
                    negatives = pairs.file_negatives
            if negatives is not None:
                width = min(len(n) for n in negatives)
                if width == 0:
                    raise RuntimeError("colintern: a query has no negatives (corpus too small to mine from?)")
                negatives = [n[:width] for n in negatives]
            batches = _batches(len(pairs.queries), config.batch_size, config.seed, epoch, config.passes_per_epoch)
            examples = max(examples, len(pairs.queries))
            for b, batch in enumerate(batches):
                if b < done_in_epoch:
                    continue
                if config.max_steps is not None and step >= config.max_steps:
                    return out_dir  # stopped on purpose, as if killed: no final model
                t = time.perf_counter()
                heads.train()
                if lora_params:
                    _set_lora_dropout(backbone, True)
                q, qm = heads.project(states("query", batch), "query")
                if negatives is None:
                    p, pm = heads.project(states("page", [pairs.positives[i] for i in batch]), "page")
                    scores = maxsim_matrix(q, qm, p, pm) / config.temperature
                    target = torch.arange(len(batch))
                else:
                    docs = [[pairs.positives[i], *negatives[i]] for i in batch]
                    unique = sorted({j for row in docs for j in row})  # each distinct page projected once
                    p, pm = heads.project(states("page", unique), "page")
                    at = torch.tensor([unique.index(j) for row in docs for j in row])
                    p, pm = p[at], pm[at]
                    n = len(docs[0])
                    scores = own_maxsim(q, qm, p.view(len(batch), n, *p.shape[1:]),
                                        pm.view(len(batch), n, -1)) / config.temperature
                    target = torch.zeros(len(batch), dtype=torch.long)
                loss = F.cross_entropy(scores, target)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                step += 1
                done_in_epoch = b + 1
                train_s += time.perf_counter() - t
                line = json.dumps({"step": step, "epoch": round(epoch - 1 + done_in_epoch / len(batches), 4),
                                   "loss": round(loss.item(), 6)}) + "\n"
                for log_file in (loss_log, e1_loss_log) if epoch == 1 else (loss_log,):
                    log_file.write(line)
                    log_file.flush()
                epoch_end = done_in_epoch == len(batches)
                if step % config.save_every == 0 or epoch_end:
                    state = {"heads": heads.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                             "epoch": epoch + 1 if epoch_end else epoch,
                             "done_in_epoch": 0 if epoch_end else done_in_epoch, "train_s": train_s,
                             "wall_s": prior_wall + time.perf_counter() - started, "rng": torch.get_rng_state()}
                    if lora_params:
                        state["lora"] = trainable_state(backbone)
                    if torch.cuda.is_available():
                        state["cuda_rng"] = torch.cuda.get_rng_state_all()
                    _save_checkpoint(e1_ckpt_dir if epoch == 1 else ckpt_dir, state, epoch if epoch_end else None)
            epoch, done_in_epoch = epoch + 1, 0

    if lora_params:
        _set_lora_dropout(backbone, False)
    n_trained = sum(p.numel() for p in heads.parameters()) + sum(p.numel() for p in lora_params)
    n_total = sum(p.numel() for p in heads.parameters()) + sum(p.numel() for p in backbone.parameters())
    if lora_spec is not None:  # the adapter first: training.json, written last, marks a complete model folder
        save_trainable(backbone, final, lora_spec, lora_targets)
    heads.save(final, {"label": config.label(), "config": config.model_dump(mode="json")})
    wall = time.perf_counter() - started
    # wall_s is what the model cost, the resumed checkpoint's share included (the mined row: the e1 row's pseudo-
    # queries and epoch 1 too); run_wall_s is this process alone.
    record = {"wall_s": round(prior_wall + wall, 3), "run_wall_s": round(wall, 3), "llm_calls": pairs.llm_calls,
              "llm_tokens": pairs.llm_tokens,
              "examples": examples, "loss_log": str(loss_path.resolve()), "steps": step,
              "trainable_parameters": n_trained, "total_parameters": n_total,
              "feature_s": round(feature_s, 3), "head_train_s": round(train_s, 3),
              "examples_per_s": round(examples * config.epochs * config.passes_per_epoch / train_s, 1)
              if train_s else None,
              "pages": len(pairs.pages), "queries": len(pairs.queries), "label": config.label(),
              "shared_head": shared, "lora_targets": lora_targets,
              "epoch1_dir": str(e1_dir.resolve()), "resumed_from": str(latest.resolve()) if latest else None,
              "mined_triples": str(mined_path.resolve()) if mined is not None else None}
    tmp = final / (TRAINING_FILE + ".tmp")
    tmp.write_text(json.dumps(record, indent=2))
    tmp.replace(final / TRAINING_FILE)
    return final


def _load_lora(backbone: torch.nn.Module, saved: dict[str, torch.Tensor], where: Path) -> None:
    """A checkpoint's adapter weights into the attached adapter; a missing or unknown one is an error."""
    params = {n: p for n, p in backbone.named_parameters() if p.requires_grad}
    if set(saved) != set(params):
        raise ValueError(f"{where}: LoRA weights do not fit the attached adapter (missing "
                         f"{sorted(set(params) - set(saved))[:5]}, unknown {sorted(set(saved) - set(params))[:5]})")
    with torch.no_grad():
        for name, value in saved.items():
            params[name].copy_(value)


@torch.no_grad()
def _mine(heads: Heads, query_states: list[torch.Tensor], page_states: list[torch.Tensor], pairs: Pairs,
          config: Config, path: Path) -> list[list[int]]:
    heads.eval()
    q, qm = heads.project(query_states, "query")
    p, pm = heads.project(page_states, "page")
    qv = mean_pool([x[m] for x, m in zip(q, qm, strict=True)])
    pv = mean_pool([x[m] for x, m in zip(p, pm, strict=True)])
    k = min(config.negatives, len(pairs.pages) - 1)
    mined = mine_negatives(qv, pv, pairs.positives, k, config.use_faiss)
    tmp = path.with_suffix(".tmp")
    with tmp.open("w") as f:
        for query, pos, negs in zip(pairs.queries, pairs.positives, mined, strict=True):
            f.write(json.dumps({"query": query, "pos": pairs.pages[pos].id,
                                "negs": [pairs.pages[j].id for j in negs]}) + "\n")
    tmp.replace(path)
    return mined


def _read_mined(path: Path, pairs: Pairs) -> list[list[int]]:
    index = {p.id: i for i, p in enumerate(pairs.pages)}
    return [[index[x] for x in json.loads(line)["negs"]] for line in path.read_text().splitlines() if line.strip()]
