"""Tiny random real-architecture colpali models through the whole mteb path (code paths; scores mean nothing)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.backbones import BackboneError, build_backbone, load_backbone
from harness.evaluate.records import mteb_result_path
from harness.evaluate.runner import evaluate_model
from harness.retrieval.cache import EmbeddingCache
from models.base.model import load_model
from tasks.beir_folder import BeirFolderTask

# The tiny family's architectures, and the colpali-engine ones it does not build yet: those are expected to fail
# with a clear error (strict: once the family supports one, the xfail turns red and it moves to SUPPORTED).
SUPPORTED = ["colqwen2_5", "colpali", "biqwen2_5", "colqwen3", "biqwen3", "colqwen3_5", "biqwen3_5"]
NOT_YET = ["colidefics3", "colqwen2"]


def test_the_arch_lists_match_the_family() -> None:
    from typing import get_args

    from harness.backbones.tiny import TinyConfig

    assert sorted(get_args(TinyConfig.model_fields["arch"].annotation)) == sorted(SUPPORTED)


@pytest.mark.parametrize("arch", SUPPORTED + [
    pytest.param(a, marks=pytest.mark.xfail(raises=BackboneError, strict=True, reason="no tiny builder yet"))
    for a in NOT_YET])
def test_tiny_backbone_through_mteb(arch: str, image_folder: Path, tmp_path: Path) -> None:
    backbone = build_backbone("tiny", {"arch": arch, "seed": 0})
    encoder = load_model(backbone, cache=EmbeddingCache(tmp_path / "emb", backbone.fingerprint()))
    task = BeirFolderTask(image_folder)
    [outcome] = evaluate_model(encoder, [task], tmp_path / "results", variant="base",
                               backbone={"tag": backbone.describe()})
    meta = encoder.mteb_model_meta
    result = json.loads(mteb_result_path(tmp_path / "results", meta.name, meta.revision, task.metadata.name)
                        .read_text())
    scores = result["scores"]["test"][0]
    assert 0.0 <= scores["ndcg_at_5"] <= 1.0 and scores["main_score"] == outcome.main_score
    assert encoder.stats.encoded == {"query": 6, "document": 6}

    # saved and reloaded (encoding everything again), the same model gives the same scores
    backbone.save(tmp_path / "saved")
    reloaded = load_backbone(tmp_path / "saved")
    again = load_model(reloaded, cache=EmbeddingCache(tmp_path / "emb2", reloaded.fingerprint()))
    [second] = evaluate_model(again, [task], tmp_path / "results2", variant="base", backbone={})
    assert again.stats.encoded == {"query": 6, "document": 6}
    assert second.main_score == pytest.approx(outcome.main_score, abs=1e-6)
