"""colpali-engine's ColQwen3 / BiQwen3 / ColQwen3_5 through the colpali family, on tiny random Qwen3-VL and Qwen3.5
builds (offline, CPU; scores mean nothing): encoding, save/load, LoRA attach + merge, the public state seams."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

import harness  # noqa: F401  (torchvision fix before colpali_engine)
from harness.backbones import Page, build_backbone, load_backbone
from harness.backbones.colpali import ColpaliBackbone, ColpaliConfig
from harness.backbones.tiny import build_tiny_checkpoint
from harness.train.lora import LoraSpec, attach_lora, merge_lora

QUERIES = ["what is the revenue in 2021?", "a"]
# ColQwen3 projects to 320 dimensions (colpali-engine's ColQwen3.dim), ColQwen3_5 to 128
DIMS = {"colqwen3": 320, "colqwen3_5": 128}


def _page(pid: str, size: tuple[int, int], color: str) -> Page:
    image = Image.new("RGB", size, "white")
    ImageDraw.Draw(image).rectangle([5, 5, size[0] // 2, size[1] // 3], fill=color)
    return Page(pid, image=image)


PAGES = [_page("p1", (120, 90), "red"), _page("p2", (60, 200), "blue")]  # different sizes: padded pixel rows


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny3")
    return {a: build_tiny_checkpoint(a, root / a, seed=0) for a in ("colqwen3", "biqwen3", "colqwen3_5")}


def _encode(backbone) -> list[torch.Tensor]:
    return backbone.encode_queries(QUERIES) + backbone.encode_pages(PAGES)


@pytest.mark.parametrize("arch", ["colqwen3", "colqwen3_5"])
def test_colqwen3_encodes_token_vectors_with_colpali_engine_classes(arch, checkpoints):
    backbone = ColpaliBackbone(ColpaliConfig(model=str(checkpoints[arch])))
    expected_class = {"colqwen3": "ColQwen3", "colqwen3_5": "ColQwen3_5"}[arch]
    assert backbone.model_class == expected_class and backbone.processor_class == f"{expected_class}Processor"
    assert type(backbone.core).__module__.startswith("colpali_engine.models")  # the library's class, not ours
    queries, pages = backbone.encode_queries(QUERIES), backbone.encode_pages(PAGES)
    for out in queries + pages:
        assert out.shape[1] == DIMS[arch] and not out.isnan().any()
        torch.testing.assert_close(out.norm(dim=-1), torch.ones(out.shape[0]))
    assert len(queries[0]) > len(queries[1])  # padding dropped per query
    # a page is its image tokens plus the processor's prompt: a taller page has as many or more tokens
    inputs = backbone.page_inputs(PAGES)
    with torch.no_grad():
        emb, mask = backbone.forward_pages(inputs)
    assert torch.equal(mask, inputs["attention_mask"].bool()) and (emb[~mask] == 0).all()
    assert [len(p) for p in pages] == mask.sum(1).tolist()


def test_biqwen3_pools_one_vector(checkpoints):
    backbone = ColpaliBackbone(ColpaliConfig(model=str(checkpoints["biqwen3"])))
    assert backbone.model_class == "BiQwen3"
    for out in _encode(backbone):
        assert out.shape == (1, 64)
        torch.testing.assert_close(out.norm(dim=-1), torch.ones(1))
    with pytest.raises(ValueError, match="custom_text_proj"):
        _ = backbone.state_dim  # pooled away: no token states to hand a recipe's heads


@pytest.mark.parametrize("arch", ["colqwen3", "biqwen3", "colqwen3_5"])
def test_save_load_round_trip(arch, checkpoints, tmp_path):
    backbone = ColpaliBackbone(ColpaliConfig(model=str(checkpoints[arch])))
    backbone.save(tmp_path / "saved")
    loaded = load_backbone(tmp_path / "saved")
    assert isinstance(loaded, ColpaliBackbone) and loaded.model_class == backbone.model_class
    assert all(torch.equal(u, v) for u, v in zip(_encode(backbone), _encode(loaded), strict=True))


def test_raw_qwen3_vl_config_maps_to_colqwen3(checkpoints, tmp_path):
    """A base whose config names a transformers class (Qwen3VLForConditionalGeneration), not a colpali one, is read
    as ColQwen3 from its model_type."""
    folder = tmp_path / "raw"
    shutil.copytree(checkpoints["colqwen3"], folder)
    config = json.loads((folder / "config.json").read_text())
    config["architectures"] = ["Qwen3VLForConditionalGeneration"]
    (folder / "config.json").write_text(json.dumps(config))
    assert ColpaliBackbone(ColpaliConfig(model=str(folder))).model_class == "ColQwen3"


def test_lora_on_the_language_model_trains_merges_and_changes_the_fingerprint(tmp_path):
    backbone = build_backbone("tiny", {"arch": "colqwen3"})
    base_fp, before = backbone.fingerprint(), _encode(backbone)
    targets = attach_lora(backbone, LoraSpec(r=32, alpha=32.0, dropout=0.1))  # the recipe's settings
    assert targets and all(t.startswith("language_model.") for t in targets)
    lora = {n: p for n, p in backbone.named_parameters() if p.requires_grad and "lora_" in n}
    assert lora and not any("visual" in n for n in lora)
    trained = {n for n, p in backbone.named_parameters() if p.requires_grad}
    assert trained - set(lora) == {"model.custom_text_proj.weight", "model.custom_text_proj.bias"}
    optimizer = torch.optim.AdamW([p for p in backbone.parameters() if p.requires_grad], lr=1e-2)
    backbone.train()
    q, qm = backbone.forward_queries(backbone.query_inputs(QUERIES))
    d, dm = backbone.forward_pages(backbone.page_inputs(PAGES))
    scores = torch.einsum("qtd,psd->qpts", q, d).amax(-1).sum(-1) / qm.sum(1, keepdim=True)
    loss = torch.nn.functional.cross_entropy(scores / 0.02, torch.arange(2))
    loss.backward()
    optimizer.step()
    backbone.eval()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in lora.items() if "lora_B" in n)
    assert merge_lora(backbone) == len(targets)
    after = _encode(backbone)
    assert not any(n for n, _ in backbone.named_parameters() if "lora_" in n)
    assert not all(torch.equal(u, v) for u, v in zip(before, after, strict=True))
    assert backbone.fingerprint() != base_fp
    # merged weights save as full weights and reload to the same vectors
    backbone.save(tmp_path / "merged")
    loaded = load_backbone(tmp_path / "merged")
    for u, v in zip(after, _encode(loaded), strict=True):
        torch.testing.assert_close(u, v, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("arch", ["colqwen3", "colqwen3_5"])
def test_token_states_are_what_the_projection_consumes(arch, checkpoints):
    backbone = ColpaliBackbone(ColpaliConfig(model=str(checkpoints[arch])))
    for inputs in (backbone.query_inputs(QUERIES), backbone.page_inputs(PAGES)):
        with torch.no_grad():
            states, mask = backbone.token_states(inputs)
            expected, expected_mask = backbone._forward(inputs)
            projected = torch.nn.functional.normalize(backbone.core.custom_text_proj(states), dim=-1)
        assert states.shape[-1] == backbone.state_dim == 64 and torch.equal(mask, expected_mask)
        torch.testing.assert_close(projected[mask], expected[mask])
    states = backbone.page_states(PAGES)
    grid = backbone.page_inputs(PAGES)["image_grid_thw"]
    # one matrix per page: its merged 2 x 2 patches, at the language model's width
    assert [tuple(s.shape) for s in states] == [(int(g.prod()) // 4, 64) for g in grid]
