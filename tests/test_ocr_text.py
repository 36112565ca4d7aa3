"""The OCR-text backbone: both modes, chunking, the length-sorted evaluation path, OCR and its cache."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import render_page
from harness.backbones import Page, build_backbone, load_backbone
from harness.backbones.base import Backbone
from harness.backbones.ocr import TesseractOcr

LONG = "Acme revenue was 5 million dollars in 2019 and grew in 2020. " * 12
PAGES = [Page("a", text=LONG), Page("b", text="cats"), Page("c", text="dogs and more dogs " * 7)]


@pytest.mark.parametrize("mode", ["pooled", "multi"])
def test_sorted_evaluation_path_equals_the_batch_path(mode: str) -> None:
    b = build_backbone("ocr-text", {"mode": mode, "chunk_tokens": 32, "chunk_overlap": 8, "chunk_batch": 2})
    fast = b.encode_pages(PAGES)
    generic = Backbone.encode_pages(b, PAGES, batch_size=2)  # forward_pages, the training path
    assert all(torch.allclose(f, g, atol=1e-5) for f, g in zip(fast, generic, strict=True))
    for vecs in fast:
        assert torch.allclose(vecs.norm(dim=-1), torch.ones(len(vecs)), atol=1e-5)


def test_long_page_is_split_into_overlapping_chunks() -> None:
    b = build_backbone("ocr-text", {"mode": "pooled", "chunk_tokens": 32, "chunk_overlap": 8})
    inputs = b.page_inputs(PAGES[:1])
    n_tokens = len(b.tokenizer(LONG, add_special_tokens=False)["input_ids"])
    assert len(inputs["input_ids"]) == -(-(n_tokens - 8) // 22)  # body 30 tokens, step 22
    assert b.encode_pages(PAGES[:1])[0].shape[0] == len(inputs["input_ids"])
    truncated = build_backbone("ocr-text", {"mode": "pooled", "chunk_tokens": 32, "chunk_overlap": 8, "max_chunks": 1})
    with pytest.raises(ValueError, match="chunk_overlap"):
        build_backbone("ocr-text", {"chunk_tokens": 32})
    assert truncated.encode_pages(PAGES[:1])[0].shape[0] == 1


def test_projection_head_saves_and_must_load(tmp_path: Path) -> None:
    b = build_backbone("ocr-text", {"mode": "multi", "projection_dim": 16})
    assert b.encode_queries(["hello"])[0].shape[-1] == 16
    assert "projection" in b.trainable().heads
    b.save(tmp_path / "m")
    again = load_backbone(tmp_path / "m")
    assert torch.allclose(again.encode_queries(["hello"])[0], b.encode_queries(["hello"])[0])
    (tmp_path / "m" / "projection.pt").unlink()
    with pytest.raises(FileNotFoundError):
        load_backbone(tmp_path / "m")


def test_ocr_reads_rendered_pages_and_caches_by_content(tmp_path: Path) -> None:
    render_page("Quarterly revenue of Tamsin Corp reached 41 million", tmp_path / "p.png")
    image = Image.open(tmp_path / "p.png")
    ocr = TesseractOcr(cache_dir=tmp_path / "ocr")
    [text] = ocr([image])
    assert "Tamsin" in text and "41" in text and ocr.pages_ocred == 1
    # the same pixels from another file object come from the cache
    assert ocr([Image.open(tmp_path / "p.png").copy()]) == [text] and ocr.pages_ocred == 1


def test_image_pages_go_through_ocr(tmp_path: Path) -> None:
    render_page("The Kelda telescope observes galaxies in infrared light", tmp_path / "p.png")
    b = build_backbone("ocr-text", {"mode": "pooled"})
    [text] = b.page_texts([Page("p", image=Image.open(tmp_path / "p.png"))])
    assert "Kelda" in text
    q = b.encode_queries(["Which light does the Kelda telescope use?"])[0]
    page = b.encode_pages([Page("p", image=Image.open(tmp_path / "p.png")), Page("x", text="bread recipes")])
    assert float((q @ page[0].T).max()) > float((q @ page[1].T).max())
