"""A run: backbones x variants x tasks. Train where the variant trains, evaluate, record."""

from __future__ import annotations

import hashlib
import json
import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from mteb.abstasks import AbsTask
from pydantic import BaseModel, ValidationError

from harness.answers.run import RunAnswers, backbone_label
from harness.backbones import Backbone, Page, build_backbone, load_backbone, saved_family
from harness.backbones.bm25 import Bm25Backbone
from harness.config import BackboneSpec, ConfigError, RunConfig, VariantSpec, format_errors
from harness.evaluate.bm25 import Bm25Search
from harness.evaluate.encoder import HarnessEncoder
from harness.evaluate.records import atomic_write_json, task_identity
from harness.evaluate.runner import TaskOutcome, evaluate_model, searched_meta
from harness.evaluate.search import SearchSpec
from harness.paths import cache_root
from harness.retrieval.cache import EmbeddingCache
from harness.variants import TrainingCorpus, Variant, get_variant
from tasks.beir_folder import BeirFolderTask
from tasks.registry import resolve_task, resolve_tasks

log = logging.getLogger(__name__)
KEY_FILE = "checkpoint_key.json"  # in each checkpoint folder: what its key was made of (to say why one is retrained)
TRAIN_PACKAGE = Path(__file__).resolve().parent / "train"  # the training loop every recipe may use


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_backbone(spec: BackboneSpec, where: str = "backbone") -> Backbone:
    if spec.path:
        return load_backbone(spec.path)
    return build_backbone(spec.family, spec.config, where=f"{where}.config")


def recipe_config(variant: Variant, config: dict[str, Any], where: str) -> BaseModel:
    try:
        return variant.recipe.Config(**config)
    except ValidationError as exc:
        raise ConfigError(format_errors(exc, where)) from None


def training_corpus(task: AbsTask, with_queries: bool = False) -> TrainingCorpus:
    """The pages of a task's corpus, and nothing else: no queries, no qrels. ``with_queries`` (a BEIR folder named
    with an explicit training ``split``, see ``train_split_queries``) adds that split's queries and qrels."""
    if isinstance(task, BeirFolderTask):
        docs = task.data.corpus
        # image paths, not open images: a page opens when a recipe uses it (thousands would exhaust file handles)
        pages = [Page(doc_id, image_path=d["image"], text=" ".join(x for x in (d["title"], d["text"]) if x) or None)
                 for doc_id, d in docs.items()]
        page_docs = {doc_id: str(d["metadata"]["doc_id"]) for doc_id, d in docs.items()
                     if "doc_id" in (d.get("metadata") or {})}
        if len(page_docs) < len(docs):
            page_docs = {}  # a page without a document: no within-document validation
        if with_queries:
            return TrainingCorpus(f"{task.metadata.name}-{task.split}", pages, dict(task.data.queries),
                                  {q: dict(r) for q, r in task.data.qrels.items()}, page_docs)
        return TrainingCorpus(task.metadata.name, pages, page_docs=page_docs)
    task.load_data()
    pages = []
    for subset in task.dataset.values():
        for split in subset.values():
            for row in split["corpus"]:
                pages.append(Page(str(row["id"]), image=row.get("image"), text=row.get("text")))
    return TrainingCorpus(task.metadata.name, pages)


def train_split_queries(vspec: VariantSpec, train_task: AbsTask | None, eval_tasks: list[AbsTask],
                        where: str) -> bool:
    """Whether the recipe gets the training corpus's queries and qrels: only for ``train_corpus: {path: FOLDER,
    split: SPLIT}`` (the split named explicitly), and never when an evaluated task reads the same folder and split."""
    spec = vspec.train_corpus
    if not (isinstance(spec, dict) and "split" in spec and isinstance(train_task, BeirFolderTask)):
        return False
    for task in eval_tasks:
        if isinstance(task, BeirFolderTask) and task.split == train_task.split \
                and task.folder.resolve() == train_task.folder.resolve():
            raise ConfigError(f"{where}.train_corpus: split {train_task.split!r} of {train_task.folder} is also "
                              "evaluated: train on another split")
    return True


def check_task_names(tasks: list[AbsTask]) -> None:
    """Results are filed by task name: two different tasks of one name (folders with the same basename and other
    data) would overwrite each other's results. Checked before any work."""
    seen: dict[str, tuple[int, dict[str, Any]]] = {}
    for i, task in enumerate(tasks):
        identity = task_identity(task)
        first = seen.setdefault(task.metadata.name, (i, identity))
        if first[1] != identity:
            raise ConfigError(f"tasks.{first[0]} and tasks.{i} are both named {task.metadata.name!r} but are different "
                              f"data (dataset revision {first[1]['dataset_revision']} vs {identity['dataset_revision']}"
                              "): give one of them a `name:`")


def check_lexical_rows(config: RunConfig) -> None:
    """bm25 is a reference row with no vectors and nothing to train: only the base variant evaluates it. Checked
    before any work, so that a run does not stop half-way."""
    for bi, bspec in enumerate(config.backbones):
        if (saved_family(bspec.path) if bspec.path else bspec.family) != Bm25Backbone.family:
            continue
        for vi, vspec in enumerate(config.variants):
            if vspec.name != "base" and (vspec.backbones is None or bi in vspec.backbones):
                raise ConfigError(f"variants.{vi}: variant {vspec.name!r} cannot run on backbones.{bi}, the bm25 "
                                  "backbone (lexical: no vectors, nothing to train); only the base variant evaluates "
                                  f"bm25 (in a run config, give variants.{vi} a `backbones:` list without {bi})")


def code_version(variant: Variant) -> str:
    """A hash of the code a recipe trains with: every .py file of the variant's folder and of harness/train."""
    h = hashlib.sha256()
    for root in (variant.folder, TRAIN_PACKAGE):
        for path in sorted(root.rglob("*.py")):
            h.update(path.relative_to(root).as_posix().encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:12]


def checkpoint_key(backbone: Backbone, config: BaseModel, task: AbsTask, variant: Variant,
                   with_queries: bool) -> dict[str, Any]:
    """Everything a trained checkpoint depends on: the backbone's weights and config, the recipe's config, the
    training task's full identity (name, data revision, split) and the recipe's code."""
    return {"backbone": backbone.fingerprint(), "recipe_config": config.model_dump(mode="json"),
            "corpus": {**task_identity(task), "with_queries": with_queries}, "code": code_version(variant)}


def _explain_checkpoint(out_dir: Path, parts: dict[str, Any]) -> None:
    """Log whether this exact checkpoint exists, or what differs from the nearest earlier one on the same corpus."""
    if (out_dir / KEY_FILE).is_file():
        log.info("checkpoint %s: same backbone, recipe config, corpus and code: the recipe reuses it", out_dir)
        return
    earlier = []
    for key_file in out_dir.parent.glob(f"*/{KEY_FILE}"):
        try:
            old = json.loads(key_file.read_text())
        except (OSError, ValueError):
            continue
        if old.get("corpus", {}).get("name") == parts["corpus"]["name"]:
            changed = [k for k in parts if json.dumps(old.get(k), sort_keys=True, default=str)
                       != json.dumps(parts[k], sort_keys=True, default=str)]
            earlier.append((len(changed), key_file.parent, changed))
    if earlier:
        _, folder, changed = min(earlier)
        names = {"backbone": "backbone weights or config", "recipe_config": "recipe config",
                 "corpus": "training data (revision or split)", "code": "recipe code (variant folder or harness/train)"}
        log.info("training into %s: the earlier checkpoint %s differs in %s", out_dir, folder,
                 ", ".join(names[k] for k in changed))
    else:
        log.info("training into %s: no earlier checkpoint of this variant and backbone on this corpus", out_dir)


def build_model(variant: Variant, backbone_spec: BackboneSpec, vspec: VariantSpec, train_task: AbsTask | None,
                *, where: str, backbone_where: str, checkpoints: Path,
                with_queries: bool = False) -> HarnessEncoder | Bm25Search:
    """Train (if the variant trains) on the training corpus, then wrap the result for mteb."""
    backbone = make_backbone(backbone_spec, backbone_where)
    cache = EmbeddingCache(cache_root() / "embeddings", "")
    config = recipe_config(variant, vspec.config, f"{where}.config")
    checkpoint = None
    if getattr(variant.recipe, "TRAINS", True) and train_task is not None:
        corpus = training_corpus(train_task, with_queries)
        parts = checkpoint_key(backbone, config, train_task, variant, with_queries)
        key = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]
        out_dir = checkpoints / variant.name / backbone.describe() / f"{corpus.name}-{key}"
        _explain_checkpoint(out_dir, parts)
        checkpoint = variant.recipe.train(backbone, corpus, config, out_dir)
        if out_dir.is_dir():
            atomic_write_json(out_dir / KEY_FILE, parts)
    encoder = variant.model.load_model(backbone, checkpoint, None)
    encoder.checkpoint = checkpoint  # the run record copies checkpoint/training.json (costs) from here
    # The cache is keyed by the final model's revision (fingerprint of what was actually trained).
    cache.dir = cache_root() / "embeddings" / str(encoder.mteb_model_meta.revision)
    encoder.cache = cache
    return encoder


def release_memory() -> None:
    """Between rows: drop the finished row's model and give freed heap back to the OS (glibc keeps freed arenas
    otherwise, and a run of several models then holds each one's peak)."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


def searches_for(model: HarnessEncoder | Bm25Search, searches: list[str]) -> list[SearchSpec]:
    """The run's search strategies that apply to ``model``: all of them for vector models, exhaustive for bm25."""
    specs = [SearchSpec.parse(s) for s in dict.fromkeys(searches)]
    if isinstance(model, Bm25Search):
        return [SearchSpec()]
    return specs


def run(config: RunConfig, *, results: str | None = None, overwrite: bool | None = None,
        show_progress: bool = False) -> list[TaskOutcome]:
    set_seed(config.seed)
    check_lexical_rows(config)
    results_dir = Path(results or config.results)
    overwrite = config.overwrite if overwrite is None else overwrite
    tasks = resolve_tasks(config.tasks)
    check_task_names(tasks)
    outcomes: list[TaskOutcome] = []
    answers = RunAnswers(config.answers, results_dir, tasks=None if config.answers.tasks is None else [
        tasks[i].metadata.name for i in config.answers.tasks]) if config.answers else None
    try:
        _run_matrix(config, tasks, results_dir, overwrite, show_progress, outcomes, answers)
    finally:
        if answers is not None:
            answers.close()
    return outcomes


def _run_matrix(config: RunConfig, tasks: list[AbsTask], results_dir: Path, overwrite: bool, show_progress: bool,
                outcomes: list[TaskOutcome], answers: RunAnswers | None) -> None:
    for bi, bspec in enumerate(config.backbones):
        for vi, vspec in enumerate(config.variants):
            if vspec.backbones is not None and bi not in vspec.backbones:
                continue
            variant = get_variant(vspec.name)
            trains = getattr(variant.recipe, "TRAINS", True)
            # One model per run for variants that train on a fixed corpus (or do not train at all);
            # otherwise one model per task, trained on that task's pages only.
            if not trains or vspec.train_corpus is not None:
                train_task = resolve_task(vspec.train_corpus)[0] if vspec.train_corpus is not None else None
                groups = [(train_task, tasks)]
            else:
                groups = [(task, [task]) for task in tasks]
            for train_task, eval_tasks in groups:
                set_seed(config.seed)
                with_queries = train_split_queries(vspec, train_task, eval_tasks, f"variants.{vi}")
                encoder = build_model(variant, bspec, vspec, train_task, where=f"variants.{vi}",
                                      backbone_where=f"backbones.{bi}",
                                      checkpoints=results_dir.parent / "checkpoints", with_queries=with_queries)
                # a variant may name its rows itself (syntriever: one row per number of stages trained)
                label = getattr(encoder, "variant_label", None) or variant.name
                for si, search in enumerate(searches_for(encoder, config.searches)):
                    outcomes += evaluate_model(
                        encoder, eval_tasks, results_dir, variant=label,
                        backbone={"family": encoder.model.family, "tag": encoder.model.describe(),
                                  "config": encoder.model.config.model_dump(mode="json"), "index": bi},
                        run_config={"run": config.name, "variant_config": vspec.config,
                                    "train_corpus": task_identity(train_task) if train_task and trains else None},
                        seed=config.seed, overwrite=overwrite, show_progress=show_progress, search=search)
                    if answers is not None and si == 0 and answers.wants([variant.name, label], bi):
                        answers(encoder, eval_tasks, meta=searched_meta(encoder.mteb_model_meta, search),
                                row={"backbone": backbone_label(encoder.model), "variant": label})
                del encoder
                release_memory()
