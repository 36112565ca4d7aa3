"""Evaluation through mteb: results in MTEB's format, per-query runs, the embedding cache, resume."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import pytrec_eval
import torch

from harness.backbones import build_backbone
from harness.evaluate.records import mteb_result_path, record_path
from harness.evaluate.runner import evaluate_model
from harness.paths import cache_root
from harness.retrieval.cache import EmbeddingCache
from models.base.model import load_model
from tasks.beir_folder import BeirFolderTask


@pytest.fixture(scope="module")
def backbone():
    return build_backbone("ocr-text", {"mode": "pooled"})


def _encoder(backbone, root: Path | None = None):
    return load_model(backbone, cache=EmbeddingCache(root or cache_root() / "embeddings", backbone.fingerprint()))


def test_scores_equal_pytrec_eval_on_the_saved_run(backbone, text_folder: Path, tmp_path: Path) -> None:
    task = BeirFolderTask(text_folder)
    encoder = _encoder(backbone)
    [outcome] = evaluate_model(encoder, [task], tmp_path, variant="base", backbone={"tag": "t"})
    meta = encoder.mteb_model_meta
    result = json.loads(mteb_result_path(tmp_path, meta.name, meta.revision, task.metadata.name).read_text())
    scores = result["scores"]["test"][0]
    assert outcome.main_score == scores["main_score"] == scores["ndcg_at_10"]
    assert scores["ndcg_at_1"] > 0.5  # the facts are easy: a real encoder gets most right

    rec = record_path(tmp_path, meta.name, meta.revision, task.metadata.name)
    with gzip.open(rec.with_suffix(".run.json.gz"), "rt") as f:
        run = json.load(f)["default/test"]
    qrels = task.data.qrels
    ev = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.1,5,10", "recall.1,5,10"})
    direct = ev.evaluate(run)
    for k in (1, 5, 10):
        mean_ndcg = sum(v[f"ndcg_cut_{k}"] for v in direct.values()) / len(direct)
        mean_recall = sum(v[f"recall_{k}"] for v in direct.values()) / len(direct)
        assert scores[f"ndcg_at_{k}"] == pytest.approx(mean_ndcg, abs=1e-5)
        assert scores[f"recall_at_{k}"] == pytest.approx(mean_recall, abs=1e-5)
    # per-query scores in the record average to the same numbers
    per_query = json.loads(rec.read_text())["per_query"]["default/test"]
    assert sum(per_query["ndcg_at_10"].values()) / len(qrels) == pytest.approx(scores["ndcg_at_10"], abs=1e-5)
    assert set(per_query["ndcg_at_10"]) == set(qrels)


def test_second_run_encodes_nothing(backbone, text_folder: Path, tmp_path: Path) -> None:
    task = BeirFolderTask(text_folder)
    first = _encoder(backbone, tmp_path / "embeddings")
    [a] = evaluate_model(first, [task], tmp_path, variant="base", backbone={})
    assert first.stats.encoded == {"query": 6, "document": 6}
    second = _encoder(backbone, tmp_path / "embeddings")
    [b] = evaluate_model(second, [task], tmp_path, variant="base", backbone={}, overwrite=True)
    assert second.stats.encoded == {"query": 0, "document": 0}
    assert second.stats.cached == {"query": 6, "document": 6}
    assert a.main_score == b.main_score and not b.reused


def test_interrupted_run_resumes_without_redoing_finished_tasks(backbone, text_folder: Path,
                                                                image_folder: Path, tmp_path: Path) -> None:
    tasks = [BeirFolderTask(text_folder), BeirFolderTask(image_folder)]
    encoder = _encoder(backbone, tmp_path / "embeddings")
    evaluate_model(encoder, tasks[:1], tmp_path, variant="base", backbone={})  # "interrupted" after task 1
    again = _encoder(backbone, tmp_path / "embeddings")
    outcomes = evaluate_model(again, tasks, tmp_path, variant="base", backbone={})
    assert [o.reused for o in outcomes] == [True, False]
    # the image task really ran: OCR text of rendered pages found the facts
    assert outcomes[1].main_score > 0.5
    assert again.stats.encoded["document"] == 6


def test_cache_ignores_damaged_entries(tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path, "fp")
    cache.put("ab12", torch.ones(2, 3))
    assert torch.equal(cache.get("ab12"), torch.ones(2, 3))
    (tmp_path / "fp" / "ab" / "ab12.pt").write_bytes(b"garbage")
    assert cache.get("ab12") is None and cache.misses == 1


def test_encode_drops_each_batch_of_page_images_before_the_next(backbone) -> None:
    """A corpus of thousands of page images must not sit in memory: by the time mteb's loader yields a batch, the
    images of the batches before it are no longer referenced (the encoder keeps vectors only)."""
    import gc
    import weakref

    from mteb.types import PromptType
    from PIL import Image

    encoder = load_model(backbone, cache=None)
    alive: list[weakref.ref] = []

    def batches():
        for b in range(4):
            gc.collect()
            assert sum(r() is not None for r in alive) <= 2, f"batch {b}: earlier page images still held"
            images = [Image.new("RGB", (64, 32), "white") for _ in range(2)]
            alive.extend(weakref.ref(im) for im in images)
            yield {"id": [f"p{b}-{i}" for i in range(2)], "image": images, "text": [f"page {b} {i}" for i in range(2)]}
            del images

    class Meta:
        name = "Task"

    out = encoder.encode(batches(), task_metadata=Meta, hf_split="test", hf_subset="default",
                         prompt_type=PromptType.document)
    assert out.shape[0] == 8 and encoder.stats.encoded["document"] == 8
