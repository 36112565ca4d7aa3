"""The llm-vision backbone (SV-RAG's retriever over a VLM, the GPU path) on a tiny random Qwen2.5-VL (no download):
page images through the chat model, queries through the language model, LoRA on the language model only, the
adapter-disabled answerer equal to the base VLM seeing the page image, and the svrag recipe training on it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from harness.backbones import build_backbone, load_backbone
from harness.backbones.base import Page
from harness.synth.backends import GenParams, Prompt, make_backend
from harness.synth.prompts import Template
from harness.train.lora import LoraSpec, attach_lora
from harness.variants import TrainingCorpus
from helpers import FakeBackend, tiny_qwen_vl
from models.colqwen3vl import recipe as pairs
from models.svrag import model as sv_model
from models.svrag import recipe


@pytest.fixture(scope="module")
def vlm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_qwen_vl(tmp_path_factory.mktemp("tiny-vlm"))


def _page(i: int) -> Page:
    image = Image.new("RGB", (112, 112), "white")
    ImageDraw.Draw(image).rectangle([i * 10, i * 10, i * 10 + 40, i * 10 + 30], fill=(30 * i % 255, 0, 120))
    return Page(f"p{i}", image=image)


def test_pages_as_images_queries_as_text(vlm: Path, tmp_path: Path) -> None:
    backbone = build_backbone("llm-vision", {"model": str(vlm)})
    assert backbone.describe() == f"llm-vision-{vlm.name}"
    pages = [_page(0), _page(1)]
    encoded = backbone.encode_pages(pages)
    image_token = backbone.lm.config.image_token_id
    inputs = backbone.page_inputs(pages[:1])
    assert int((inputs["input_ids"] == image_token).sum()) > 0  # the image's tokens are among the page's vectors
    assert len(encoded[0]) == int(inputs["attention_mask"].sum()) and encoded[0].shape[1] == 128
    v, m = backbone.forward_pages(backbone.page_inputs(pages[:1]))
    torch.testing.assert_close(v[0][m[0]], encoded[0], atol=1e-5, rtol=1e-4)
    assert not torch.allclose(encoded[0], encoded[1])  # different images, different vectors
    query = backbone.encode_queries(["what is in the red box"])[0]
    assert query.shape == (22, 128)  # byte-level: one vector per byte, no template around a query
    with pytest.raises(ValueError, match="page image"):
        backbone.page_inputs([Page("t", text="text only")])
    backbone.save(tmp_path / "saved")
    assert load_backbone(tmp_path / "saved").fingerprint() == backbone.fingerprint()


def test_lora_on_the_language_model_and_the_base_answers(vlm: Path) -> None:
    backbone = build_backbone("llm-vision", {"model": str(vlm)})
    attach_lora(backbone, LoraSpec(r=4, alpha=16))
    lora = [n for n, _ in backbone.named_parameters() if "lora_A" in n]
    assert lora and not any("visual" in n for n in lora)  # the vision tower stays as it is
    with torch.no_grad():
        for name, p in backbone.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    prompt = Prompt.of(Template("t", "What is on the page?"), [_page(2)])
    own = backbone.answer_backend({})
    plain = make_backend({"kind": "hf", "model": str(vlm), "vision": True})
    assert own.sees_images and own.describe() == plain.describe()
    assert own.score([prompt], [" a box"])[0].sum_logprob == plain.score([prompt], [" a box"])[0].sum_logprob
    params = GenParams(max_new_tokens=4, temperature=0.0)
    assert own.generate([prompt], params, [0])[0].text == plain.generate([prompt], params, [0])[0].text
    backbone.lm.eval()
    enc, _ = plain._inputs(prompt)
    with torch.no_grad():  # with the adapter on, the same network is another model
        assert (backbone.lm(**enc).logits - plain.net(**enc).logits).abs().max() > 1e-3


def test_svrag_trains_on_a_vlm(vlm: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeBackend()
    monkeypatch.setattr(pairs, "make_backend", lambda spec: fake)
    backbone = build_backbone("llm-vision", {"model": str(vlm)})
    corpus = TrainingCorpus("tiny-pages", [_page(i) for i in range(6)])
    config = recipe.Config(pages=6, queries_per_page=1, val_fraction=0.0, lora={"r": 4, "alpha": 16},
                           train={"steps": 2, "batch_size": 3, "lr": 1e-2})
    out = recipe.train(backbone, corpus, config, tmp_path / "ckpt")
    record = json.loads((out / "training.json").read_text())
    assert record["train"]["steps"] == 2 and record["train"]["relative_weight_change"] > 0
    fresh = sv_model.load_model(build_backbone("llm-vision", {"model": str(vlm)}), out)
    torch.testing.assert_close(fresh.model.encode_pages([_page(1)])[0], backbone.encode_pages([_page(1)])[0],
                               atol=1e-5, rtol=1e-4)
