"""The colpali and tiny backbone families on tiny random real-architecture models (offline, CPU)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw
from safetensors.torch import load_file, save_file

import harness  # noqa: F401  (torchvision fix before colpali_engine)
from harness.backbones import BackboneError, Page, build_backbone, load_backbone
from harness.backbones.base import Backbone
from harness.backbones.colpali import CheckpointError, ColpaliBackbone, ColpaliConfig
from harness.backbones.colpali import hub as colpali_hub
from harness.backbones.tiny import TINY_ARCHS, TinyBackbone, TinyConfig, build_tiny_checkpoint

QUERIES = ["what is the revenue in 2021?", "a"]


def _page(pid: str, size: tuple[int, int], color: str) -> Page:
    image = Image.new("RGB", size, "white")
    ImageDraw.Draw(image).rectangle([5, 5, size[0] // 2, size[1] // 3], fill=color)
    return Page(pid, image=image)


PAGES = [_page("p1", (120, 90), "red"), _page("p2", (60, 200), "blue")]  # different sizes: padding


@pytest.fixture(scope="module", autouse=True)
def _cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:  # tiny builds go to a temporary cache, not ./cache
        mp.setenv("HARNESS_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {arch: build_tiny_checkpoint(arch, root / arch, seed=0) for arch in TINY_ARCHS}


def _encode(backbone) -> list[torch.Tensor]:
    return backbone.encode_queries(QUERIES) + backbone.encode_pages(PAGES)


def _train_lora(backbone, steps: int = 1, on_backbone: bool = False) -> torch.Tensor:
    """Attach LoRA to trainable().lora_targets, train the head too, take optimisation steps; return the loss.
    ``on_backbone``: inject into the backbone module itself instead of wrapping its model (both must work)."""
    from colpali_engine.loss import ColbertPairwiseCELoss
    from peft import LoraConfig, get_peft_model, inject_adapter_in_model

    trainable = backbone.trainable()
    config = LoraConfig(r=4, lora_alpha=8, target_modules=trainable.lora_targets, init_lora_weights="gaussian")
    if on_backbone:
        inject_adapter_in_model(config, backbone)
    else:
        get_peft_model(backbone.model, config)
    for head in trainable.heads.values():
        head.requires_grad_(True)
    optimizer = torch.optim.AdamW([p for p in backbone.parameters() if p.requires_grad], lr=1e-2)
    backbone.train()
    for _ in range(steps):
        queries, _ = backbone.forward_queries(backbone.query_inputs(QUERIES))
        pages, _ = backbone.forward_pages(backbone.page_inputs(PAGES))
        loss = ColbertPairwiseCELoss()(queries, pages)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return loss.detach()


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_encodes_normalised_vectors_with_masks(arch):
    backbone = build_backbone("tiny", {"arch": arch})
    assert isinstance(backbone, TinyBackbone) and backbone.describe() == f"tiny-{arch}-seed0"
    outputs = _encode(backbone)
    pooled = arch.startswith("bi")
    for out in outputs:
        assert out.ndim == 2 and out.shape[0] >= 1
        # colpali-engine's ColQwen3 projects to 320 dimensions, the other Col* models to 128
        assert out.shape == (1, 64) if pooled else out.shape[1] == (320 if arch == "colqwen3" else 128)
        assert not out.isnan().any()
        torch.testing.assert_close(out.norm(dim=-1), torch.ones(out.shape[0]))
    inputs = backbone.query_inputs(QUERIES)  # queries of different lengths: the short one is padded
    with torch.no_grad():
        emb, mask = backbone.forward_queries(inputs)
    assert mask.dtype == torch.bool and emb.shape[:2] == mask.shape
    if pooled:
        assert mask.all() and emb.shape[1] == 1
    else:
        assert torch.equal(mask, inputs["attention_mask"].bool()) and not mask.all()
        assert (emb[~mask] == 0).all() and not emb.isnan().any()


def test_same_seed_same_model(tmp_path):
    a = load_file(build_tiny_checkpoint("colqwen2_5", tmp_path / "a", seed=3) / "model.safetensors")
    b = load_file(build_tiny_checkpoint("colqwen2_5", tmp_path / "b", seed=3) / "model.safetensors")
    c = load_file(build_tiny_checkpoint("colqwen2_5", tmp_path / "c", seed=4) / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    x = build_backbone("tiny", {"seed": 3})
    y = build_backbone("tiny", {"seed": 3})
    assert all(torch.equal(u, v) for u, v in zip(_encode(x), _encode(y), strict=True))
    assert x.fingerprint() == y.fingerprint() != build_backbone("tiny", {"seed": 4}).fingerprint()


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_save_load_round_trip(arch, checkpoints, tmp_path):
    backbone = ColpaliBackbone(ColpaliConfig(model=str(checkpoints[arch])))
    backbone.save(tmp_path / "saved")
    loaded = load_backbone(tmp_path / "saved")
    assert isinstance(loaded, ColpaliBackbone) and loaded.model_class == backbone.model_class
    assert all(torch.equal(u, v) for u, v in zip(_encode(backbone), _encode(loaded), strict=True))


def test_head_only_training_saves_full_weights(checkpoints, tmp_path):
    backbone = ColpaliBackbone(ColpaliConfig(model=str(checkpoints["colqwen2_5"])))
    head = backbone.trainable().heads["custom_text_proj"].requires_grad_(True)
    with torch.no_grad():
        head.bias.add_(0.5)  # stands in for a trained head
    backbone.save(tmp_path / "saved")
    assert (tmp_path / "saved" / "model.safetensors").is_file()
    loaded = load_backbone(tmp_path / "saved")
    assert torch.equal(loaded.model.custom_text_proj.bias, head.bias)
    assert all(torch.equal(u, v) for u, v in zip(_encode(backbone), _encode(loaded), strict=True))


def test_query_formatting_matches_processor(checkpoints):
    backbone = ColpaliBackbone(ColpaliConfig(model=str(checkpoints["colqwen2_5"])))
    processor = backbone.processor
    # mteb's ColQwen2_5Wrapper: "Query: " + text + 10 augmentation tokens, through process_texts.
    expected = processor.process_texts([f"Query: {q}" + "<|endoftext|>" * 10 for q in QUERIES])
    got = backbone.query_inputs(QUERIES)
    assert torch.equal(got["input_ids"], expected["input_ids"])
    assert torch.equal(got["input_ids"], processor.process_queries(QUERIES)["input_ids"])
    plain = ColpaliBackbone(ColpaliConfig(model=str(checkpoints["colqwen2_5"]), query_prefix="",
                                          query_augmentation_tokens=0))
    assert torch.equal(plain.query_inputs(QUERIES)["input_ids"], processor.process_texts(QUERIES)["input_ids"])
    bi = ColpaliBackbone(ColpaliConfig(model=str(checkpoints["biqwen2_5"])))  # mteb: the processor's own
    assert torch.equal(bi.query_inputs(QUERIES)["input_ids"], bi.processor.process_queries(QUERIES)["input_ids"])


def test_lora_targets_language_model_only_and_trains(checkpoints, tmp_path):
    for arch in ("colqwen2_5", "colpali"):
        backbone = ColpaliBackbone(ColpaliConfig(model=str(checkpoints[arch])))
        assert not any(p.requires_grad for p in backbone.parameters())  # frozen until a recipe says otherwise
        trainable = backbone.trainable()
        assert set(trainable.heads) == {"custom_text_proj"}
        assert trainable.lora_targets and all("language_model" in t for t in trainable.lora_targets)
        before = _encode(backbone)
        loss = _train_lora(backbone, on_backbone=arch == "colpali")
        assert torch.isfinite(loss)
        lora = {n: p for n, p in backbone.named_parameters() if "lora_" in n}
        assert lora and all("language_model" in n and "vis" not in n for n in lora)
        # LoRA B starts at zero (A's first gradient is B-scaled, so zero): the step must have moved every B.
        assert all(p.grad.abs().sum() > 0 and p.abs().sum() > 0 for n, p in lora.items() if "lora_B" in n)
        after = _encode(backbone)
        assert not all(torch.equal(u, v) for u, v in zip(before, after, strict=True))
        # save writes an adapter (not full weights) that reloads to the same embeddings
        backbone.save(tmp_path / arch)
        assert (tmp_path / arch / "adapter_model.safetensors").is_file()
        assert not (tmp_path / arch / "model.safetensors").exists()
        loaded = load_backbone(tmp_path / arch)
        for u, v in zip(after, _encode(loaded), strict=True):
            torch.testing.assert_close(u, v, atol=1e-5, rtol=1e-4)


@pytest.fixture(scope="module")
def trained_adapter(checkpoints, tmp_path_factory) -> tuple[Path, list[torch.Tensor]]:
    backbone = ColpaliBackbone(ColpaliConfig(model=str(checkpoints["colqwen2_5"])))
    _train_lora(backbone)
    folder = tmp_path_factory.mktemp("adapter")
    backbone.save(folder)
    return folder, _encode(backbone)


def _edit_adapter(src: Path, dst: Path, edit) -> Path:
    shutil.copytree(src, dst)
    weights = dst / "adapter_model.safetensors"
    save_file(edit(load_file(weights)), weights, metadata={"format": "pt"})
    return dst


def test_adapter_missing_lora_key_is_an_error(trained_adapter, tmp_path):
    def drop(state):
        del state[next(k for k in state if "layers.0.self_attn.q_proj.lora_A" in k)]
        return state

    folder = _edit_adapter(trained_adapter[0], tmp_path / "a", drop)
    with pytest.raises(CheckpointError, match=r"layers\.0\.self_attn\.q_proj\.lora_A"):
        load_backbone(folder)


def test_adapter_missing_head_is_an_error(trained_adapter, tmp_path):
    def drop(state):
        del state["base_model.model.custom_text_proj.weight"]
        return state

    folder = _edit_adapter(trained_adapter[0], tmp_path / "a", drop)
    with pytest.raises(CheckpointError, match=r"custom_text_proj\.weight"):
        load_backbone(folder)


def test_adapter_key_matching_nothing_is_an_error(trained_adapter, tmp_path):
    def add(state):
        state["base_model.model.language_model.layers.9.self_attn.q_proj.lora_A.weight"] = torch.zeros(4, 64)
        return state

    folder = _edit_adapter(trained_adapter[0], tmp_path / "a", add)
    with pytest.raises(CheckpointError, match=r"layers\.9\.self_attn\.q_proj\.lora_A"):
        load_backbone(folder)


def test_adapter_weight_of_wrong_shape_is_an_error(trained_adapter, tmp_path):
    def reshape(state):
        key = next(k for k in state if "layers.1.mlp.up_proj.lora_A" in k)
        state[key] = torch.zeros(8, state[key].shape[1])
        return state

    folder = _edit_adapter(trained_adapter[0], tmp_path / "a", reshape)
    with pytest.raises(CheckpointError, match=r"layers\.1\.mlp\.up_proj\.lora_A"):
        load_backbone(folder)


def test_missing_projection_in_full_checkpoint_is_an_error(checkpoints, tmp_path):
    folder = shutil.copytree(checkpoints["colqwen2_5"], tmp_path / "m")
    state = load_file(folder / "model.safetensors")
    del state["custom_text_proj.weight"]
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"custom_text_proj\.weight"):
        ColpaliBackbone(ColpaliConfig(model=str(folder)))


def test_pre_transformers5_adapter_repo_as_model(trained_adapter, checkpoints, tmp_path):
    """A vidore-style adapter repo: old key names (model.layers), regex targets, base named in its config."""
    src, expected = trained_adapter
    repo = _edit_adapter(src, tmp_path / "repo", lambda state: {
        k.replace("language_model.layers", "model.layers"): v for k, v in state.items()})
    config = json.loads((repo / "adapter_config.json").read_text())
    config.update(base_model_name_or_path=str(checkpoints["colqwen2_5"]), rank_pattern={}, alpha_pattern={},
                  target_modules="(.*(model).*(down_proj|gate_proj|up_proj|k_proj|q_proj|v_proj|o_proj).*$)")
    (repo / "adapter_config.json").write_text(json.dumps(config))
    (repo / "backbone.json").unlink()
    backbone = ColpaliBackbone(ColpaliConfig(model=str(repo)))
    assert backbone.model_class == "ColQwen2_5"
    for u, v in zip(expected, _encode(backbone), strict=True):
        torch.testing.assert_close(u, v, atol=1e-5, rtol=1e-4)


def test_config_errors_name_the_key(checkpoints):
    with pytest.raises(BackboneError, match="bogus"):
        build_backbone("colpali", {"model": str(checkpoints["colqwen2_5"]), "bogus": 1})
    with pytest.raises(BackboneError, match="archh"):
        build_backbone("tiny", {"archh": "colpali"})
    with pytest.raises(BackboneError, match="arch"):
        build_backbone("tiny", {"arch": "llama"})
    with pytest.raises(BackboneError, match="model_class 'ColNope'"):
        build_backbone("colpali", {"model": str(checkpoints["colqwen2_5"]), "model_class": "ColNope"})
    with pytest.raises(BackboneError, match="no such folder"):
        build_backbone("colpali", {"model": "./does/not/exist"})


def test_text_only_pages_are_a_clear_error():
    backbone = build_backbone("tiny", {})
    with pytest.raises(BackboneError, match="needs page images"):
        backbone.encode_pages([Page("t1", text="only text")])


def test_max_pixels_caps_page_tokens(checkpoints):
    small = ColpaliBackbone(ColpaliConfig(model=str(checkpoints["colqwen2_5"]), max_pixels=28 * 28 * 4))
    default = ColpaliBackbone(ColpaliConfig(model=str(checkpoints["colqwen2_5"])))
    big = Page("big", Image.new("RGB", (400, 400), "white"))
    assert small.encode_pages([big])[0].shape[0] < default.encode_pages([big])[0].shape[0]
    with pytest.raises(BackboneError, match="max_pixels"):
        ColpaliBackbone(ColpaliConfig(model=str(checkpoints["colpali"]), max_pixels=1000))


def test_fingerprint_of_pinned_hub_checkpoint_skips_weights_until_they_change(checkpoints, monkeypatch):
    backbone = ColpaliBackbone(ColpaliConfig(model=str(checkpoints["colqwen2_5"])))
    local = backbone.fingerprint()
    with torch.no_grad():
        backbone.model.custom_text_proj.bias += 1
    assert backbone.fingerprint() != local  # a local folder: every weight counts
    # Pretend a fresh one came from the Hub at a pinned commit: identity only, no weight read.
    backbone = ColpaliBackbone(ColpaliConfig(model=str(checkpoints["colqwen2_5"])))
    monkeypatch.setattr(colpali_hub, "is_local", lambda source: False)
    backbone.spec = backbone.config = ColpaliConfig(model="org/model", revision="a" * 40)
    backbone.base = "org/model"
    with monkeypatch.context() as m:
        m.setattr(Backbone, "fingerprint", lambda self: pytest.fail("hashed the weights of a pinned checkpoint"))
        pinned = backbone.fingerprint()
        assert backbone.fingerprint() == pinned and not backbone.modified
        backbone.config = ColpaliConfig(model="org/model", revision="b" * 40)
        assert backbone.fingerprint() != pinned
        backbone.config = backbone.spec
    # Once a weight changes (an edit, a training step, a merged LoRA) the weights are hashed, for good.
    with torch.no_grad():
        backbone.model.custom_text_proj.bias += 1
    changed = backbone.fingerprint()
    assert backbone.modified and changed != pinned
    with torch.no_grad():
        backbone.model.custom_text_proj.bias -= 1  # the same values again: the weights' hash, not the identity
    assert backbone.fingerprint() not in (pinned, changed)


def test_tiny_config_defaults():
    assert TinyConfig().arch == "colqwen2_5" and TinyConfig().seed == 0


def test_matches_mteb_wrappers(checkpoints):
    """mteb's own ColQwen2.5 and ColPali wrappers give the same vectors on the same checkpoint."""
    from mteb.models.model_implementations.colpali_models import ColPaliWrapper
    from mteb.models.model_implementations.colqwen_models import ColQwen2_5Wrapper

    for wrapper_class, arch in ((ColQwen2_5Wrapper, "colqwen2_5"), (ColPaliWrapper, "colpali")):
        wrapper = wrapper_class(model_name=str(checkpoints[arch]), device="cpu")
        ours = ColpaliBackbone(ColpaliConfig(model=str(checkpoints[arch])))
        theirs = [*wrapper.get_text_embeddings([{"text": QUERIES}]),  # mteb only iterates the "DataLoader"
                  *wrapper.get_image_embeddings([{"image": [p.image for p in PAGES]}])]
        for mine, padded in zip(_encode(ours), theirs, strict=True):
            torch.testing.assert_close(mine, padded[padded.norm(dim=-1) > 0])  # mteb pads with zero rows


def test_hub_id_offline_is_a_clear_error(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # never touch the network
    with pytest.raises(BackboneError, match=r"cannot fetch adapter_config\.json of vidore/colqwen2\.5-v0\.2"):
        build_backbone("colpali", {"model": "vidore/colqwen2.5-v0.2", "revision": "a" * 40})


@pytest.mark.parametrize("arch", ["colqwen2_5", "colpali"])
def test_token_states_are_what_the_checkpoints_head_projects(checkpoints, arch):
    """The public states a recipe's own heads read: the checkpoint's custom_text_proj of token_states (normalised) is
    exactly the model's query output; page_states are one vision feature matrix per page, of the projector's width."""
    backbone = ColpaliBackbone(ColpaliConfig(model=str(checkpoints[arch])))
    inputs = backbone.query_inputs(QUERIES)
    with torch.no_grad():
        states, mask = backbone.token_states(inputs)
        expected, expected_mask = backbone.forward_queries(inputs)
        projected = torch.nn.functional.normalize(backbone.model.custom_text_proj(states), dim=-1)
    assert states.shape[-1] == backbone.state_dim and torch.equal(mask, expected_mask)
    torch.testing.assert_close(projected[mask], expected[mask])
    pages = backbone.page_states(PAGES)
    assert len(pages) == len(PAGES) and all(p.dim() == 2 and len(p) > 0 for p in pages)
    with pytest.raises(ValueError, match="custom_text_proj"):
        _ = ColpaliBackbone(ColpaliConfig(model=str(checkpoints["biqwen2_5"]))).state_dim
