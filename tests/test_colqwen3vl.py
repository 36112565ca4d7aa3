"""The colqwen3vl variant: pseudo-query pairs from the synth engine (a fake LLM with the engine's Backend interface),
in-batch InfoNCE on the shared loop, LoRA on the tiny ColQwen3 and full fine-tuning on the OCR-text encoder, mined
hard negatives, reload through model.py, config errors, and a cut run that resumes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from harness.backbones import build_backbone
from harness.retrieval.cache import EmbeddingCache
from harness.variants import get_variant
from helpers import FakeBackend, syntr_corpus
from models.colqwen3vl import model as cq_model
from models.colqwen3vl import recipe
from tasks.generated import GeneratedConfig, generate

SMALL = {"pages": 8, "queries_per_page": 2, "val_fraction": 0.25, "val_pool": 10,
         "train": {"steps": 4, "batch_size": 4, "grad_accum": 1, "logging_steps": 1, "eval_every": 2}}


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    """A tiny generated task: 2 entities x 5 layouts = 10 rendered pages (only its pages are used)."""
    return generate(GeneratedConfig(seed=0, n_entities=2), tmp_path_factory.mktemp("gen") / "tiny")


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeBackend:
    backend = FakeBackend()
    monkeypatch.setattr(recipe, "make_backend", lambda spec: backend)
    return backend


def _weights(backbone) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in backbone.state_dict().items()}


def test_trains_lora_on_tiny_colqwen3_and_reloads(generated, fake, tmp_path):
    assert get_variant("colqwen3vl").recipe is recipe
    backbone = build_backbone("tiny", {"arch": "colqwen3"})
    base_fp, corpus = backbone.fingerprint(), syntr_corpus(generated)
    out = recipe.train(backbone, corpus, recipe.Config(**SMALL), tmp_path / "ckpt")
    record = json.loads((out / "training.json").read_text())
    assert record["finetune"] == "lora" and record["lora"] == {"r": 32, "alpha": 32.0, "dropout": 0.1,
                                                               "targets": None, "train_heads": True}
    assert record["loss"] == "infonce" and record["temperature"] == 0.02 and record["lr"] == 2e-4
    assert record["llm_calls"] == fake.calls == 16 and record["examples"] == 12  # 8 pages x 2, 2 pages held out
    train = record["train"]  # what run_loop records
    assert train["steps"] == 4 and train["examples_seen"] == 16 and train["relative_weight_change"] > 0
    assert [h["step"] for h in train["val_history"]] == [0, 2, 4] and record["validation_queries"] == 4
    losses = [json.loads(x)["loss"] for x in Path(record["loss_log"]).read_text().splitlines()]
    assert len(losses) == 4 and all(x > 0 for x in losses)
    lr = [h["learning_rate"] for h in json.loads((out / "checkpoints" / "checkpoint-4" / "trainer_state.json")
                                                 .read_text())["log_history"] if "learning_rate" in h]
    assert lr[0] < max(lr) and lr[-1] < max(lr)  # warmup, then cosine decay
    assert (out / "final" / "lora.json").is_file()

    # the in-process model and a fresh reload from the checkpoint: same merged weights, same vectors
    encoder = cq_model.load_model(backbone, out, EmbeddingCache(tmp_path / "e1", "x"))
    fresh = cq_model.load_model(build_backbone("tiny", {"arch": "colqwen3"}), out, EmbeddingCache(tmp_path / "e2", "y"))
    assert encoder.mteb_model_meta.revision == fresh.mteb_model_meta.revision != base_fp
    assert encoder.mteb_model_meta.name == "colqwen3vl/tiny-colqwen3-seed0"
    torch.testing.assert_close(backbone.encode_queries(["a question"])[0],
                               fresh.model.encode_queries(["a question"])[0], atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="needs a checkpoint"):
        cq_model.load_model(build_backbone("tiny", {"arch": "colqwen3"}))

    # a rerun is served from the checkpoint and the store: no model calls, no training
    calls = fake.calls
    assert recipe.train(build_backbone("tiny", {"arch": "colqwen3"}), corpus, recipe.Config(**SMALL), out) == out
    assert fake.calls == calls


def test_ocr_text_is_fully_fine_tuned_with_mined_negatives(generated, fake, tmp_path):
    backbone = build_backbone("ocr-text", {"mode": "pooled"})
    before = _weights(backbone)
    config = recipe.Config(**{**SMALL, "hard_negatives": 2, "train": {**SMALL["train"], "steps": 3}})
    out = recipe.train(backbone, syntr_corpus(generated), config, tmp_path / "ckpt")
    record = json.loads((out / "training.json").read_text())
    assert record["finetune"] == "full" and record["lora"] is None and record["lr"] == 2e-5
    assert record["hard_negatives"] == 2 and record["mining"] == {"dropped": 0, "short": 0}
    assert "mine" in record["stages"] and record["train"]["steps"] == 3
    moved = [n for n, w in _weights(backbone).items() if not torch.equal(w, before[n])]
    assert moved and any("encoder.layer" in n for n in moved)  # the encoder itself, not only a head
    fresh = cq_model.load_model(build_backbone("ocr-text", {"mode": "pooled"}), out)
    assert fresh.mteb_model_meta.revision == backbone.fingerprint()


def test_mined_negatives_are_other_pages(generated, tmp_path):
    backbone = build_backbone("tiny", {"arch": "colqwen3"})
    pages = syntr_corpus(generated).pages
    queries = {f"{p.id}#q0": f"what does page {p.id} show?" for p in pages[:3]}
    source = {q: q.split("#")[0] for q in queries}
    stats: dict[str, int] = {}
    hard = recipe.mine(backbone, pages, queries, source, 3, None, stats)
    assert all(len(h) == 3 and source[q] not in h and len(set(h)) == 3 for q, h in hard.items())
    assert stats["short"] == 0


def test_refuses_bad_config(fake, tmp_path, generated):
    with pytest.raises(ValidationError, match="batch_size 1 with hard_negatives 0"):
        recipe.Config(train={"steps": 2, "batch_size": 1})
    recipe.Config(train={"steps": 2, "batch_size": 1}, hard_negatives=2)  # mined negatives give candidates
    with pytest.raises(ValidationError, match="lora settings given with finetune: full"):
        recipe.Config(finetune="full", lora={"r": 8})
    with pytest.raises(ValidationError, match="mining_margin applies to mined negatives"):
        recipe.Config(mining_margin=0.1)
    with pytest.raises(ValidationError, match="temperature"):
        recipe.Config(temperature=0)
    with pytest.raises(ValidationError, match="Extra inputs"):
        recipe.Config(tau=0.02)
    with pytest.raises(ValueError, match="no weights to train"):
        recipe.train(build_backbone("bm25", {}), syntr_corpus(generated), recipe.Config(**SMALL), tmp_path / "b")


def test_a_cut_run_resumes_from_its_checkpoint(generated, fake, tmp_path):
    config = recipe.Config(**{**SMALL, "train": {**SMALL["train"], "steps": 4, "eval_every": 2}})
    corpus = syntr_corpus(generated)
    out = tmp_path / "cut"
    whole = build_backbone("tiny", {"arch": "colqwen3"})
    recipe.train(whole, corpus, config, out)
    expected = {n: p.detach().clone() for n, p in whole.named_parameters() if p.requires_grad}
    # interrupted after the step-2 checkpoint: what it wrote later is gone
    shutil.rmtree(out / "checkpoints" / "checkpoint-4")
    shutil.rmtree(out / "final")
    (out / "training.json").unlink()
    calls = fake.calls
    resumed = build_backbone("tiny", {"arch": "colqwen3"})
    recipe.train(resumed, corpus, config, out)
    assert fake.calls == calls  # pseudo-queries served by the store
    record = json.loads((out / "training.json").read_text())
    assert record["train"]["resumed_from"].endswith("checkpoint-2") and record["train"]["steps"] == 4
    # the resumed run ends where the uncut one did (optimizer, scheduler and dropout RNG restored)
    got = dict(resumed.named_parameters())
    assert expected and all(torch.allclose(got[n], w, atol=1e-5) for n, w in expected.items())
