"""The svrag variant on a tiny random Gemma 3 (no download): the adapter-disabled answerer IS the base model (logits
identical to a fresh load of the base weights, while the adapter changes them), the recipe trains LoRA + projection
with the pairwise loss on pseudo-queries (a fake query writer), and a fresh reload keeps the adapter unmerged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft.tuners.lora import LoraLayer
from pydantic import ValidationError
from transformers import AutoModelForCausalLM

from harness.backbones import build_backbone
from harness.backbones.base import Page
from harness.synth.backends import GenParams, Prompt, make_backend
from harness.synth.prompts import Template
from harness.train.lora import LoraSpec, adapters_disabled, attach_lora, has_lora
from harness.variants import get_variant
from helpers import FakeBackend, syntr_corpus, tiny_gemma
from models.colqwen3vl import recipe as pairs
from models.svrag import model as sv_model
from models.svrag import recipe
from tasks.generated import GeneratedConfig, generate

SMALL = {"pages": 8, "queries_per_page": 2, "val_fraction": 0.25, "val_pool": 10, "lora": {"r": 4, "alpha": 16},
         "train": {"steps": 4, "batch_size": 4, "lr": 1e-2, "logging_steps": 1, "eval_every": 2}}
PROMPT = Template("t", "Answer the question:\n{question}\nAnswer: ")


@pytest.fixture(scope="module")
def lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_gemma(tmp_path_factory.mktemp("tiny-gemma"))


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate(GeneratedConfig(seed=0, n_entities=2), tmp_path_factory.mktemp("gen") / "tiny")


def _logits(model: torch.nn.Module, ids: dict) -> torch.Tensor:
    with torch.no_grad():
        return model(**ids).logits


def _trained_adapter(lm: Path):  # noqa: ANN202
    """An llm-text backbone whose LoRA B matrices are non-zero, as after training (at init B = 0: a no-op)."""
    backbone = build_backbone("llm-text", {"model": str(lm)})
    attach_lora(backbone, LoraSpec(r=4, alpha=16, dropout=0.1))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in backbone.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    return backbone


def test_adapter_off_logits_equal_a_fresh_base_model(lm: Path) -> None:
    backbone = _trained_adapter(lm)
    ids = dict(backbone.tokenizer(["The revenue in 2021 was 12 million."], return_tensors="pt"))
    base = _logits(AutoModelForCausalLM.from_pretrained(lm).eval(), ids)
    backbone.lm.eval()
    adapted = _logits(backbone.lm, ids)
    assert (adapted - base).abs().max() > 1e-2  # the adapter changes the model ...
    backbone.train()  # ... the context switches it to eval (no LoRA dropout) and back
    flags = {n: p.requires_grad for n, p in backbone.named_parameters()}
    with adapters_disabled(backbone.lm):
        assert torch.equal(_logits(backbone.lm, ids), base)  # ... and disabled, it is the base model, bit for bit
    assert backbone.training and flags == {n: p.requires_grad for n, p in backbone.named_parameters()}
    backbone.lm.eval()
    assert torch.equal(_logits(backbone.lm, ids), adapted)  # the adapter is back on afterwards

    # the answer backend over the retriever's own LM = the hf backend over the base weights: identity and outputs
    own = backbone.answer_backend({"max_page_tokens": 64})
    plain = make_backend({"kind": "hf", "model": str(lm), "max_page_tokens": 64, "instruct": False})
    assert own.describe() == plain.describe()
    prompt = Prompt.of(PROMPT, [Page("p", text="Revenue: 12 million")], question="What was the revenue?")
    assert own.score([prompt], [" 12 million"])[0].sum_logprob == plain.score([prompt], [" 12 million"])[0].sum_logprob
    params = GenParams(max_new_tokens=6, temperature=0.0)
    assert own.generate([prompt], params, [0])[0].text == plain.generate([prompt], params, [0])[0].text

    for layer in backbone.modules():  # merged, the adapter's delta is inside the base weights: no base model left
        if isinstance(layer, LoraLayer):
            layer.merge()
    with pytest.raises(RuntimeError, match="merged"), adapters_disabled(backbone.lm):
        pass


def test_trains_lora_and_projection_then_reloads_unmerged(lm: Path, generated: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    assert get_variant("svrag").recipe is recipe
    fake = FakeBackend()
    monkeypatch.setattr(pairs, "make_backend", lambda spec: fake)
    backbone = build_backbone("llm-text", {"model": str(lm), "max_page_tokens": 96})
    base_fp, corpus = backbone.fingerprint(), syntr_corpus(generated)
    projection = backbone.projection.weight.detach().clone()
    out = recipe.train(backbone, corpus, recipe.Config(**SMALL), tmp_path / "ckpt")
    record = json.loads((out / "training.json").read_text())
    assert record["recipe"] == "svrag" and record["loss"] == "pairwise" and record["temperature"] == 0.05
    assert record["finetune"] == "lora" and record["lora"]["r"] == 4 and record["lr"] == 1e-2
    assert record["train"]["steps"] == 4 and record["train"]["relative_weight_change"] > 0
    assert not torch.equal(backbone.projection.weight, projection)  # the projection trains with the adapter
    assert fake.calls == 16

    encoder = sv_model.load_model(backbone, out)
    fresh_backbone = build_backbone("llm-text", {"model": str(lm), "max_page_tokens": 96})
    fresh = sv_model.load_model(fresh_backbone, out)
    assert encoder.mteb_model_meta.revision == fresh.mteb_model_meta.revision != base_fp
    assert encoder.mteb_model_meta.name == f"svrag/llm-text-{lm.name}"
    assert has_lora(fresh_backbone)  # unmerged: the base model stays available to answer
    torch.testing.assert_close(backbone.encode_queries(["a question"])[0],
                               fresh_backbone.encode_queries(["a question"])[0], atol=1e-5, rtol=1e-4)
    ids = dict(fresh_backbone.tokenizer(["a question"], return_tensors="pt"))
    with adapters_disabled(fresh_backbone.lm):
        assert torch.equal(_logits(fresh_backbone.lm, ids),
                           _logits(AutoModelForCausalLM.from_pretrained(lm).eval(), ids))
    with pytest.raises(ValueError, match="needs a checkpoint"):
        sv_model.load_model(build_backbone("llm-text", {"model": str(lm)}))


def test_refuses_what_cannot_answer(generated: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot answer"):
        recipe.train(build_backbone("ocr-text", {"mode": "pooled"}), syntr_corpus(generated), recipe.Config(),
                     tmp_path)
    with pytest.raises(ValidationError, match="finetune"):
        recipe.Config(finetune="full")
