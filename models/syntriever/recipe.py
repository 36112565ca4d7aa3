"""Syntriever (RECIPES.md section 2): two-stage training of a retriever from an LLM's outputs.

Training queries: a training split's queries when the corpus carries them (``train_corpus: {path: ..., split:
train}``, the BEIR text setting; gold = that split's qrels), otherwise pseudo-queries the LLM writes for sampled
pages of the unlabeled corpus (the page setting; gold = the source page).

Stage 1 (distillation): per query the LLM writes a relevant passage, a plausibly irrelevant passage and a
chain-of-thought augmentation (temperature 0.7, ``passage_tokens`` at most); self-verification of the GENERATED
passage keeps it as a positive or moves it to the negatives. Loss over each batch's passages (gold pages,
synthetic passages, CoT, negatives): ``multi_positive`` (the paper: softmax mass on all of a query's relevant
passages, default) or ``single_target`` (the seed code: cross-entropy with the gold passage as the only target).
Stage 2 (alignment, ``stages: 2``): rank the corpus with the stage-1 model, let the LLM order each query's top
``top_k`` (``judge: pairwise``: all pairs, both orders averaged, passages scored by their summed preference;
``ql-pmi``: query likelihood given the passage minus without it), train with the partial Plackett-Luce loss on the
top-2 over the batch's candidates, plus ``reg_weight`` x KL(stage-1 || current) over each query's own top-k
(0 = off, the default, as in the seed code).

Synthetic passages are text for the ocr-text family (its page path reads a text as it would read the page's OCR,
without OCR noise) and rendered page images for visual families (``synthetic_as``). Scores are MaxSim averaged
over query tokens, divided by ``temperature`` (0.05, as the paper's cosine x 20). The ocr-text encoder is fully
fine-tuned by default, visual backbones get LoRA (``finetune``). Stage 1's result is cached beside the checkpoint
(keyed by everything it depends on), so a ``stages: 2`` run after a ``stages: 1`` run trains only stage 2.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import shutil
import time
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from harness.backbones import Backbone, Page
from harness.train.lora import LoraSpec, attach_lora, load_trainable, save_trainable
from harness.train.syntriever_losses import (
    maxsim_scores,
    multi_positive_loss,
    partial_plackett_luce_loss,
    reference_kl,
    single_target_loss,
)
from harness.variants import TrainingCorpus
from models.syntriever.data import CountingBackend, TrainQuery, passage_page, query_id, subsample

log = logging.getLogger(__name__)
TRAINS = True
STAGE2_KEYS = {"stages", "top_k", "judge", "stage2_epochs", "stage2_batch_size", "stage2_lr", "reg_weight"}


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")
    stages: Literal[1, 2] = 2
    loss: Literal["multi_positive", "single_target"] = "multi_positive"
    temperature: float = Field(0.05, gt=0)
    backend: dict[str, Any] = Field(default_factory=dict)  # harness.synth BackendSpec; {}: packaged Gemma 270M
    store: str | None = None  # synth store (JSONL); default: <checkpoints>/syntriever/synth/<corpus>.jsonl
    passage_tokens: int = Field(96, ge=8)  # cap on each generated passage / CoT
    verify: bool = True
    use_cot: bool = True
    synthetic_as: Literal["auto", "text", "image"] = "auto"
    # page setting (no training split): pseudo-queries
    max_pages: int | None = Field(30, ge=1)
    queries_per_page: int = Field(1, ge=1)
    query_kind: Literal["specific", "general"] = "specific"
    # text setting (a training split): subsample of its queries
    max_queries: int | None = Field(None, ge=1)
    # stage 1
    epochs: int = Field(1, ge=1)
    batch_size: int = Field(16, ge=1)
    lr: float = Field(2e-5, gt=0)
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    # stage 2
    top_k: int = Field(5, ge=2)
    judge: Literal["pairwise", "ql-pmi"] = "pairwise"
    stage2_epochs: int = Field(1, ge=1)
    stage2_batch_size: int = Field(16, ge=1)
    stage2_lr: float = Field(1e-5, gt=0)
    reg_weight: float = Field(0.0, ge=0)
    # optimisation
    finetune: Literal["auto", "full", "lora"] = "auto"
    lora: LoraSpec = Field(default_factory=lambda: LoraSpec(r=16, alpha=32.0, dropout=0.0))
    max_steps: int | None = Field(None, ge=1)  # per stage (tests)
    seed: int = 0


def make_backend(spec: dict[str, Any]) -> Any:  # a module-level name, so tests can substitute a fake model
    from harness.synth.backends import make_backend as make

    return make(spec)


def _mode(backbone: Backbone, config: Config) -> str:
    if config.finetune != "auto":
        return config.finetune
    return "full" if backbone.family == "ocr-text" else "lora"


def _as_image(backbone: Backbone, config: Config) -> bool:
    return config.synthetic_as == "image" or (config.synthetic_as == "auto" and backbone.family != "ocr-text")


def _stage1_key(backbone_fp: str, config: Config, corpus: TrainingCorpus) -> str:
    fields = {k: v for k, v in config.model_dump(mode="json").items() if k not in STAGE2_KEYS}
    blob = json.dumps([backbone_fp, fields, corpus.name, len(corpus.pages), sorted(corpus.train_queries)],
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


# --- persistence ------------------------------------------------------------------------------------------------
def save_state(backbone: Backbone, folder: Path, mode: str, spec: LoraSpec, targets: list[str] | None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    if mode == "lora":
        save_trainable(backbone, folder, spec, targets)
    else:
        from safetensors.torch import save_file

        state = {k: v.detach().cpu().contiguous() for k, v in backbone.state_dict().items()}
        save_file(state, str(folder / "full.safetensors"), metadata={"format": "pt"})


def load_full(backbone: Backbone, folder: Path) -> None:
    from safetensors.torch import load_file

    backbone.load_state_dict(load_file(str(folder / "full.safetensors")), strict=True)


def _prepare(backbone: Backbone, mode: str, spec: LoraSpec) -> list[str] | None:
    if mode == "lora":
        return attach_lora(backbone, spec)
    for p in backbone.parameters():
        p.requires_grad_(True)
    return None


# --- the loop ---------------------------------------------------------------------------------------------------
class LossLog:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.step = 0
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")

    def add(self, epoch: float, loss: float, stage: int) -> None:
        self.step += 1
        with self.path.open("a") as f:
            f.write(json.dumps({"step": self.step, "epoch": round(epoch, 4), "loss": loss, "stage": stage}) + "\n")


def _optimise(backbone: Backbone, batches_per_epoch: int, epochs: int, lr: float, warmup_ratio: float,
              max_steps: int | None) -> tuple[torch.optim.Optimizer, Any, int]:
    total = batches_per_epoch * epochs if max_steps is None else min(max_steps, batches_per_epoch * epochs)
    params = [p for p in backbone.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    warm = int(total * warmup_ratio)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / (warm + 1)
        return max(0.0, (total - step) / max(1, total - warm))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor), total


def _to(inputs: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}


def _scores(backbone: Backbone, queries: list[str], pages: list[Page], temperature: float) -> torch.Tensor:
    q, qm = backbone.forward_queries(_to(backbone.query_inputs(queries), backbone.device))
    d, dm = backbone.forward_pages(_to(backbone.page_inputs(pages), backbone.device))
    return maxsim_scores(q.float(), qm.bool(), d.float(), dm.bool()) / temperature


def train_stage1(backbone: Backbone, queries: list[TrainQuery], pages: dict[str, Page], config: Config,
                 losses: LossLog) -> int:
    rng = random.Random(config.seed)
    order = list(range(len(queries)))
    n_batches = math.ceil(len(order) / config.batch_size)
    opt, sched, total = _optimise(backbone, n_batches, config.epochs, config.lr, config.warmup_ratio,
                                  config.max_steps)
    backbone.train()
    step = 0
    for epoch in range(config.epochs):
        rng.shuffle(order)
        for b in range(n_batches):
            if step >= total:
                return step
            batch = [queries[i] for i in order[b * config.batch_size : (b + 1) * config.batch_size]]
            cands: list[Page] = []
            index: dict[str, int] = {}
            for tq in batch:
                for page in [pages[g] for g in tq.gold] + tq.positives + ([tq.cot] if tq.cot else []) + tq.negatives:
                    if page.id not in index:
                        index[page.id] = len(cands)
                        cands.append(page)
            positive = torch.zeros(len(batch), len(cands), dtype=torch.bool)
            for i, tq in enumerate(batch):
                for page in [pages[g] for g in tq.gold if g in pages] + tq.positives + ([tq.cot] if tq.cot else []):
                    positive[i, index[page.id]] = True
            scores = _scores(backbone, [tq.text for tq in batch], cands, config.temperature)
            if config.loss == "multi_positive":
                loss = multi_positive_loss(scores, positive.to(scores.device))
            else:
                target = torch.tensor([index[tq.gold[0]] for tq in batch], device=scores.device)
                loss = single_target_loss(scores, target)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            losses.add(epoch + (b + 1) / n_batches, float(loss.detach()), 1)
    return step


@torch.inference_mode()
def retrieve(backbone: Backbone, queries: list[TrainQuery], corpus: list[Page], k: int,
             temperature: float) -> tuple[list[list[int]], list[torch.Tensor]]:
    """Top-k corpus indices per query (MaxSim; query-token mean, the same order), and their scaled scores."""
    from harness.retrieval.maxsim import maxsim, pad_vectors

    docs = pad_vectors(backbone.encode_pages(corpus))
    qv = backbone.encode_queries([q.text for q in queries])
    tops, scores = [], []
    for start in range(0, len(qv), 32):
        chunk = qv[start : start + 32]
        lengths = torch.tensor([len(v) for v in chunk], dtype=torch.float32)
        # the harness's memory-bounded MaxSim (sum over query tokens) -> the per-token mean used in training
        s = maxsim(pad_vectors(chunk), docs) / lengths[:, None] / temperature
        val, idx = s.topk(min(k, s.shape[1]), dim=1)
        tops += idx.tolist()
        scores += list(val)
    return tops, scores


def judge_topk(backend: Any, store: Any, queries: list[TrainQuery], tops: list[list[int]], corpus: list[Page],
               judge: str) -> tuple[list[list[float]], list[Any]]:
    """The LLM's score for each query's top-k passages (higher = preferred)."""
    from harness.synth import operations as ops

    if judge == "pairwise":
        items, where = [], []
        for qi, (tq, top) in enumerate(zip(queries, tops, strict=True)):
            for a in range(len(top)):
                for b in range(a + 1, len(top)):
                    items.append(ops.PairItem(tq.id, tq.text, corpus[top[a]], corpus[top[b]]))
                    where.append((qi, a, b))
        prefs, report = ops.judge_pairwise(backend, store, items, progress=False)
        out = [[0.0] * len(top) for top in tops]
        for (qi, a, b), p in zip(where, prefs, strict=True):
            p = 0.5 if p is None else p
            out[qi][a] += p
            out[qi][b] += 1 - p
        return out, [report]
    items = [ops.JudgeItem(tq.id, tq.text, corpus[i]) for tq, top in zip(queries, tops, strict=True) for i in top]
    values, report = ops.judge_query_likelihood(backend, store, items, pmi=True, progress=False)
    out, at = [], 0
    for top in tops:
        out.append(list(values[at : at + len(top)]))
        at += len(top)
    return out, [report]


def train_stage2(backbone: Backbone, queries: list[TrainQuery], tops: list[list[int]], prefs: list[list[float]],
                 ref: list[torch.Tensor], corpus: list[Page], config: Config, losses: LossLog) -> tuple[int, int]:
    groups = []
    for tq, top, pref, r in zip(queries, tops, prefs, ref, strict=True):
        if len(top) < 2:
            continue
        # LLM order; ties keep the retriever's order (a stable sort of the retrieval ranking)
        order = sorted(range(len(top)), key=lambda j: -pref[j] if pref[j] is not None else math.inf)
        groups.append((tq, top, order[0], order[1], r))
    if not groups:
        return 0, 0
    rng = random.Random(config.seed + 1)
    bs = config.stage2_batch_size
    n_batches = math.ceil(len(groups) / bs)
    opt, sched, total = _optimise(backbone, n_batches, config.stage2_epochs, config.stage2_lr, 0.0, config.max_steps)
    backbone.train()
    step = 0
    for epoch in range(config.stage2_epochs):
        rng.shuffle(groups)
        for b in range(n_batches):
            if step >= total:
                return step, len(groups)
            batch = groups[b * bs : (b + 1) * bs]
            index: dict[int, int] = {}
            for _, top, *_ in batch:
                for i in top:
                    index.setdefault(i, len(index))
            cands = [corpus[i] for i in index]
            scores = _scores(backbone, [g[0].text for g in batch], cands, config.temperature)
            first = torch.tensor([index[g[1][g[2]]] for g in batch], device=scores.device)
            second = torch.tensor([index[g[1][g[3]]] for g in batch], device=scores.device)
            loss = partial_plackett_luce_loss(scores, first, second)
            if config.reg_weight > 0:
                cols = [[index[i] for i in g[1]] for g in batch]
                width = max(len(c) for c in cols)
                own = torch.full((len(batch), width), float("-inf"), device=scores.device)
                refs = torch.full((len(batch), width), float("-inf"), device=scores.device)
                valid = torch.zeros(len(batch), width, dtype=torch.bool, device=scores.device)
                for i, (c, g) in enumerate(zip(cols, batch, strict=True)):
                    own[i, : len(c)] = scores[i, c]
                    refs[i, : len(c)] = g[4].to(scores.device)
                    valid[i, : len(c)] = True
                loss = loss + config.reg_weight * reference_kl(own, refs, valid)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            losses.add(epoch + (b + 1) / n_batches, float(loss.detach()), 2)
    return step, len(groups)


# --- the recipe -------------------------------------------------------------------------------------------------
def training_queries(backend: Any, store: Any, corpus: TrainingCorpus, config: Config,
                     report: dict[str, Any]) -> list[TrainQuery]:
    if corpus.train_queries:  # the text setting: a training split (never the evaluated one)
        ids = subsample([q for q in corpus.train_queries if corpus.train_qrels.get(q)], config.max_queries,
                        config.seed)
        report["query_source"] = "train_split"
        return [TrainQuery(q, corpus.train_queries[q], sorted(d for d, r in corpus.train_qrels[q].items() if r > 0))
                for q in ids]
    from harness.synth import operations as ops

    by_id = {p.id: p for p in corpus.pages}
    chosen = subsample(list(by_id), config.max_pages, config.seed)
    generated, rep = ops.pseudo_queries(backend, store, [by_id[i] for i in chosen], n=config.queries_per_page,
                                        kind=config.query_kind, seed=config.seed, progress=False)
    report["query_source"] = "pseudo_queries"
    report["pseudo_queries"] = rep.line()
    return [TrainQuery(query_id(pid, text), text, [pid]) for pid in chosen for text in generated[pid]]


def synthesize(backend: Any, store: Any, queries: list[TrainQuery], config: Config, as_image: bool,
               report: dict[str, Any]) -> None:
    from harness.synth import operations as ops
    from harness.synth.backends import GenParams

    params = GenParams(max_new_tokens=config.passage_tokens, temperature=0.7, top_p=1.0)
    samples, reps = ops.syntriever_synthesis(backend, store, {q.id: q.text for q in queries}, params=params,
                                             seed=config.seed, verify=config.verify, progress=False)
    counts = {"queries": len(queries), "positives_kept": 0, "negatives": 0, "cot": 0}
    for tq, s in zip(queries, samples, strict=True):
        assert tq.id == s.query_id
        tq.positives = [passage_page(f"{tq.id}:pos{i}", t, as_image) for i, t in enumerate(s.positives)]
        tq.negatives = [passage_page(f"{tq.id}:neg{i}", t, as_image) for i, t in enumerate(s.negatives)]
        if config.use_cot and s.cot:
            tq.cot = passage_page(f"{tq.id}:cot", s.cot, as_image)
        counts["positives_kept"] += len(s.positives)
        counts["negatives"] += len(s.negatives)
        counts["cot"] += tq.cot is not None
    report["synthesis_reports"] = [r.line() for r in reps]
    report["synthetic"] = counts


def _llm(backend: CountingBackend, before: tuple[int, int], seconds: float) -> dict[str, Any]:
    calls, tokens = backend.snapshot()
    return {"llm_calls": calls - before[0], "llm_tokens": tokens - before[1], "wall_s": round(seconds, 3)}


def train(backbone: Backbone, corpus: TrainingCorpus, config: Config, out_dir: Path) -> Path:
    from harness.synth.store import SynthStore

    start = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    mode, as_image = _mode(backbone, config), _as_image(backbone, config)
    fp0 = backbone.fingerprint()
    stage1_dir = out_dir.parent / f"stage1-{_stage1_key(fp0, config, corpus)}"
    store_path = Path(config.store) if config.store else out_dir.parent.parent / "synth" / f"{corpus.name}.jsonl"
    store_path.parent.mkdir(parents=True, exist_ok=True)
    backend = CountingBackend(make_backend(config.backend))
    pages = {p.id: p for p in corpus.pages}
    record: dict[str, Any] = {"recipe": "syntriever", "stages_trained": config.stages, "stage1_loss": config.loss,
                              "finetune": mode, "synthetic_as": "image" if as_image else "text",
                              "temperature": config.temperature, "judge": config.judge if config.stages == 2 else None,
                              "reg_weight": config.reg_weight, "backend": backend.describe(),
                              "store": str(store_path.resolve())}
    losses = LossLog(out_dir / "loss.jsonl")
    targets = _prepare(backbone, mode, config.lora)
    with SynthStore(store_path) as store:
        # --- stage 1 (cached: a stages-2 run after a stages-1 run reuses it) ---
        done1 = stage1_dir / "stage1.json"
        if done1.is_file() and (stage1_dir / "final").is_dir():
            s1 = json.loads(done1.read_text())
            if mode == "lora":
                load_trainable(backbone, stage1_dir / "final")
            else:
                load_full(backbone, stage1_dir / "final")
            queries = [TrainQuery(q["id"], q["text"], q["gold"]) for q in s1["queries"]]
            for line in (stage1_dir / "loss.jsonl").read_text().splitlines():
                row = json.loads(line)
                losses.add(row["epoch"], row["loss"], 1)
            s1["reused"] = True
        else:
            t = time.perf_counter()
            before = backend.snapshot()
            info: dict[str, Any] = {}
            queries = training_queries(backend, store, corpus, config, info)
            queries = [q for q in queries if all(g in pages for g in q.gold) and q.gold]
            if not queries:
                raise ValueError(f"syntriever: no training query with a gold page in corpus {corpus.name!r}")
            synthesize(backend, store, queries, config, as_image, info)
            synth = _llm(backend, before, time.perf_counter() - t)
            t = time.perf_counter()
            s1_losses = LossLog(stage1_dir / "loss.jsonl")
            steps = train_stage1(backbone, queries, pages, config, s1_losses)
            for line in s1_losses.path.read_text().splitlines():
                row = json.loads(line)
                losses.add(row["epoch"], row["loss"], 1)
            s1 = {"synthesis": synth, "train_s": round(time.perf_counter() - t, 3), "steps": steps,
                  "examples": len(queries), **info,
                  "queries": [{"id": q.id, "text": q.text, "gold": q.gold} for q in queries]}
            save_state(backbone, stage1_dir / "final", mode, config.lora, targets)
            tmp = done1.with_suffix(".tmp")
            tmp.write_text(json.dumps(s1, indent=2))
            tmp.replace(done1)
            s1["reused"] = False
        record["stage1"] = {k: v for k, v in s1.items() if k != "queries"}
        record["stage1"]["queries_file"] = str(done1.resolve())
        examples = len(queries)
        # --- stage 2 ---
        if config.stages == 2:
            corpus_pages = list(corpus.pages)
            t = time.perf_counter()
            tops, ref = retrieve(backbone, queries, corpus_pages, config.top_k, config.temperature)
            retrieve_s = time.perf_counter() - t
            t = time.perf_counter()
            before = backend.snapshot()
            prefs, reps = judge_topk(backend, store, queries, tops, corpus_pages, config.judge)
            judge = _llm(backend, before, time.perf_counter() - t)
            t = time.perf_counter()
            steps, groups = train_stage2(backbone, queries, tops, prefs, ref, corpus_pages, config, losses)
            record["stage2"] = {"retrieve_s": round(retrieve_s, 3), "judge": judge,
                                "judge_reports": [r.line() for r in reps],
                                "train_s": round(time.perf_counter() - t, 3),
                                "steps": steps, "examples": groups,
                                "gold_in_top_k": sum(any(corpus_pages[i].id in q.gold for i in top)
                                                     for q, top in zip(queries, tops, strict=True))}
    final = out_dir / "final"
    shutil.rmtree(final, ignore_errors=True)
    if config.stages == 1:
        shutil.copytree(stage1_dir / "final", final)
    else:
        save_state(backbone, final, mode, config.lora, targets)
    s1_llm = record["stage1"]["synthesis"]
    s2_llm = record.get("stage2", {}).get("judge", {"llm_calls": 0, "llm_tokens": 0, "wall_s": 0.0})
    record["per_stage"] = {
        "stage1": {"llm_calls": s1_llm["llm_calls"], "llm_tokens": s1_llm["llm_tokens"],
                   "llm_wall_s": s1_llm["wall_s"], "train_s": record["stage1"]["train_s"]},
        **({"stage2": {"llm_calls": s2_llm["llm_calls"], "llm_tokens": s2_llm["llm_tokens"],
                       "llm_wall_s": s2_llm["wall_s"], "retrieve_s": record["stage2"]["retrieve_s"],
                       "train_s": record["stage2"]["train_s"]}} if config.stages == 2 else {}),
    }
    # Costs count everything behind the model, stage 1 included even when it was reused from the cache.
    stage1_wall = s1_llm["wall_s"] + record["stage1"]["train_s"]
    wall = (time.perf_counter() - start) + (stage1_wall if s1.get("reused") else 0.0)
    from harness.train.record import write_training_record

    write_training_record(out_dir, wall_s=wall, llm_calls=s1_llm["llm_calls"] + s2_llm["llm_calls"],
                          llm_tokens=s1_llm["llm_tokens"] + s2_llm["llm_tokens"], examples=examples,
                          loss_log=str(losses.path.resolve()),
                          stages={k: v.get("train_s", 0.0) for k, v in record["per_stage"].items()}, **record)
    log.info("syntriever: trained %d stage(s) in %.0f s -> %s", config.stages, wall, out_dir)
    return out_dir
