"""The llm-text backbone on a tiny random Gemma 3 (no download): token vectors of the LM's last hidden states
through the 128-d projection, the BOS sink left out, train and evaluation paths equal, save/load, LoRA targets."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from harness.backbones import build_backbone, load_backbone
from harness.backbones.base import Page
from harness.train.lora import LoraSpec, attach_lora
from helpers import tiny_gemma


@pytest.fixture(scope="module")
def lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_gemma(tmp_path_factory.mktemp("tiny-gemma"))


def test_vectors_masks_and_parity(lm: Path) -> None:
    backbone = build_backbone("llm-text", {"model": str(lm), "page_batch": 2})
    assert backbone.describe() == f"llm-text-{lm.name}"
    bos = backbone.tokenizer.bos_token_id
    inputs = backbone.query_inputs(["what is the revenue", "a"])
    assert bool((inputs["input_ids"][:, 0] == bos).all())  # the tokenizer adds BOS ...
    vecs, keep = backbone.forward_queries(inputs)
    assert vecs.shape[-1] == 128 and not bool(keep[:, 0].any())  # ... and the retriever leaves it out
    assert keep.sum(1).tolist() == [19, 1]  # every byte of each query, no padding
    torch.testing.assert_close(vecs[keep].norm(dim=-1), torch.ones(20))
    pages = [Page("long", text="revenue grew by 12 percent " * 3), Page("short", text="net income"),
             Page("empty", text=""), Page("mid", text="the revenue of the company")]
    encoded = backbone.encode_pages(pages)  # sorted by length, 2 per batch
    assert [len(e) for e in encoded] == [81, 10, 1, 26]  # an empty page keeps one vector (its BOS)
    for page, enc in zip(pages, encoded, strict=True):  # the training path gives the evaluation's vectors
        v, m = backbone.forward_pages(backbone.page_inputs([page]))
        torch.testing.assert_close(v[0][m[0]], enc, atol=1e-5, rtol=1e-4)


def test_the_projection_is_seeded_and_saved(lm: Path, tmp_path: Path) -> None:
    a = build_backbone("llm-text", {"model": str(lm)})
    b = build_backbone("llm-text", {"model": str(lm)})
    c = build_backbone("llm-text", {"model": str(lm), "projection_seed": 1})
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()
    with torch.no_grad():
        a.projection.weight.mul_(2.0)
    a.save(tmp_path / "saved")
    loaded = load_backbone(tmp_path / "saved")
    assert loaded.family == "llm-text" and loaded.fingerprint() == a.fingerprint()


def test_lora_targets_the_decoder(lm: Path) -> None:
    backbone = build_backbone("llm-text", {"model": str(lm)})
    attach_lora(backbone, LoraSpec(r=4, alpha=8))
    trainable = {n for n, p in backbone.named_parameters() if p.requires_grad}
    assert "projection.weight" in trainable
    for part in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"):
        assert any(f"{part}.lora_A" in n for n in trainable), part
    assert not any("embed_tokens" in n for n in trainable)
    # training keeps layer inputs only (memory); transformers 5 calls it activation checkpointing
    flag = "is_activation_checkpointing" if hasattr(backbone.lm, "is_activation_checkpointing") \
        else "is_gradient_checkpointing"
    assert getattr(backbone.lm, flag)
    assert not getattr(build_backbone("llm-text", {"model": str(lm), "gradient_checkpointing": False}).lm, flag)
