"""SynTR on the tiny colpali backbone (code paths; scores mean nothing): pseudo-queries, ranking, judging, LoRA
training, save, reload through models/syntr/model.py, mteb evaluation, and a resumed rerun. The LLM is a fake
with the engine's Backend interface, so the test is offline and fast."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.backbones import build_backbone, load_backbone
from harness.evaluate.runner import evaluate_model
from harness.retrieval.cache import EmbeddingCache
from helpers import SYNTR_CONFIG as CONFIG
from helpers import FakeBackend
from helpers import syntr_corpus as _corpus
from models.syntr import model as syntr_model
from models.syntr import recipe
from tasks.beir_folder import BeirFolderTask


def test_syntr_tiny_colpali_train_save_reload_mteb(image_folder: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeBackend()
    monkeypatch.setattr(recipe, "make_backend", lambda spec: fake)
    backbone = build_backbone("tiny", {"arch": "colqwen2_5", "seed": 0})
    base_fp = backbone.fingerprint()
    corpus = _corpus(image_folder)
    out = recipe.train(backbone, corpus, recipe.Config(**CONFIG), tmp_path / "ckpt")
    record = json.loads((out / "training.json").read_text())
    assert {"wall_s", "llm_calls", "llm_tokens", "examples", "loss_log", "stages"} <= set(record)
    assert record["judge"] == "ql-pmi" and record["examples"] > 0 and record["llm_calls"] == fake.calls
    assert set(record["stages"]) >= {"queries", "rank", "judge", "train"}
    lines = Path(record["loss_log"]).read_text().splitlines()
    assert lines and {"step", "epoch", "loss"} <= set(json.loads(lines[0]))
    # no source page (and so no query) in two splits
    rows = [json.loads(x) for x in (out / "examples.jsonl").read_text().splitlines()]
    split_of: dict[str, set[str]] = {}
    for r in rows:
        split_of.setdefault(r["query_id"].split("#")[0], set()).add(r["split"])
        assert r["positives"][0] == r["query_id"].split("#")[0] and len(r["negatives"]) <= 2
        assert r["query_id"].split("#")[0] not in r["negatives"]
    assert all(len(s) == 1 for s in split_of.values())

    # in-process model (the trained backbone) and a fresh reload from the checkpoint give the same revision
    encoder = syntr_model.load_model(backbone, out, EmbeddingCache(tmp_path / "emb", "x"))
    fresh = syntr_model.load_model(build_backbone("tiny", {"arch": "colqwen2_5", "seed": 0}), out,
                                   EmbeddingCache(tmp_path / "emb2", "y"))
    rev = encoder.mteb_model_meta.revision
    assert rev == fresh.mteb_model_meta.revision != base_fp
    assert encoder.mteb_model_meta.name == "syntr/tiny-colqwen2_5-seed0"
    task = BeirFolderTask(image_folder)
    [a] = evaluate_model(encoder, [task], tmp_path / "res", variant="syntr", backbone={})
    [b] = evaluate_model(fresh, [task], tmp_path / "res2", variant="syntr", backbone={})
    assert 0.0 <= a.main_score <= 1.0 and a.main_score == pytest.approx(b.main_score, abs=1e-6)
    # the exported backbone folder reloads as a plain backbone with the same vectors
    exported = load_backbone(out / "backbone")
    v1 = exported.encode_queries(["a question"])[0]
    v2 = fresh.model.encode_queries(["a question"])[0]
    assert (v1 - v2).abs().max() < 1e-4

    # a rerun is served from the checkpoint: no model calls
    calls = fake.calls
    assert recipe.train(build_backbone("tiny", {"arch": "colqwen2_5", "seed": 0}), corpus,
                        recipe.Config(**CONFIG), out) == out
    assert fake.calls == calls


def test_syntr_random_negatives_and_specific_prompt(image_folder: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeBackend()
    monkeypatch.setattr(recipe, "make_backend", lambda spec: fake)
    backbone = build_backbone("tiny", {"arch": "colqwen2_5", "seed": 0})
    config = recipe.Config(**{**CONFIG, "negatives": "random", "prompt": "specific",
                              "train": {"steps": 2, "batch_size": 2}})
    out = recipe.train(backbone, _corpus(image_folder), config, tmp_path / "ckpt")
    record = json.loads((out / "training.json").read_text())
    assert record["negatives"] == "random" and record["notes"]["judging"]["calls"] == 0
    store = [json.loads(x) for x in (out / "synth.jsonl").read_text().splitlines()]
    assert all(r["op"] == "queries" and "specific" in r["prompt_id"] for r in store)


def test_bad_config_key() -> None:
    with pytest.raises(ValueError, match="judges"):
        recipe.Config(judges="ql")
