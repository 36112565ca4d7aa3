"""The tiny family: a randomly initialised, real-architecture colpali-engine model built from config.

No download: the tokenizer is byte-level (every byte one token, no merges) plus the special tokens the
processor needs, and the model is a few layers of width 64. Its scores mean nothing; it exists so that tests
run the real code paths (processor, model, LoRA, losses, save/load, mteb wrappers) offline on CPU in seconds.

``build_tiny_checkpoint`` writes a folder that ``ColpaliBackbone(ColpaliConfig(model=folder))`` loads like any
Hub checkpoint; ``TinyBackbone`` is exactly that over a cached build. A saved tiny backbone is a colpali
checkpoint and loads back as the colpali family.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Literal

import torch

from harness.backbones.base import BackboneConfig
from harness.backbones.colpali import ColpaliBackbone, ColpaliConfig
from harness.paths import cache_root

TINY_ARCHS = ("colqwen2_5", "colpali", "biqwen2_5", "colqwen3", "biqwen3", "colqwen3_5", "biqwen3_5")
BUILD_VERSION = 1  # bump when the builders change, so cached builds are not reused
HIDDEN, LAYERS, HEADS = 64, 2, 4
QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                 "<|image_pad|>", "<|video_pad|>"]


class TinyConfig(BackboneConfig):
    arch: Literal["colqwen2_5", "colpali", "biqwen2_5", "colqwen3", "biqwen3", "colqwen3_5",
                  "biqwen3_5"] = "colqwen2_5"
    seed: int = 0


def _byte_tokenizer() -> tuple[object, dict[str, int]]:
    """A Qwen2 tokenizer over the 256 byte symbols (no merges) plus the Qwen-VL special tokens."""
    from tokenizers import AddedToken
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import Qwen2Tokenizer

    vocab = {ch: i for i, ch in enumerate(sorted(ByteLevel.alphabet()))}
    vocab.update({tok: len(vocab) + i for i, tok in enumerate(QWEN_SPECIALS)})
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=[])
    # In the vocabulary is not enough: special tokens must be "added tokens" so text never splits them.
    tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in QWEN_SPECIALS], special_tokens=True)
    return tokenizer, vocab


def _qwen2_5(model_class: str) -> tuple[torch.nn.Module, object]:
    import colpali_engine.models as cm
    from transformers import Qwen2VLImageProcessor, Qwen2VLVideoProcessor
    from transformers.models.qwen2_5_vl import Qwen2_5_VLConfig

    tokenizer, vocab = _byte_tokenizer()
    processor = cm.ColQwen2_5_Processor(  # 4 to 16 merged 28-pixel patches per page: a handful of tokens
        image_processor=Qwen2VLImageProcessor(min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 16),
        tokenizer=tokenizer, video_processor=Qwen2VLVideoProcessor())
    ids = {t: vocab[t] for t in QWEN_SPECIALS}
    config = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=HIDDEN, intermediate_size=2 * HIDDEN,
                         num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=2,
                         # mrope splits head_dim / 2 = 8 rotary frequencies over (time, height, width)
                         rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 1e4},
                         bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                         pad_token_id=ids["<|endoftext|>"]),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=HIDDEN,
                           fullatt_block_indexes=[1], window_size=56),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    return getattr(cm, model_class)(config), processor


def _qwen3(model_class: str) -> tuple[torch.nn.Module, object]:
    """ColQwen3 / BiQwen3 (Qwen3-VL: 16-pixel patches merged 2x2, deepstack features, interleaved mrope) and
    ColQwen3_5 / BiQwen3_5 (Qwen3.5: one linear-attention (Gated DeltaNet) and one full-attention layer)."""
    import colpali_engine.models as cm
    from transformers import Qwen2VLImageProcessor
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    tokenizer, vocab = _byte_tokenizer()
    is_3_5 = model_class.endswith("3_5")
    processor = getattr(cm, f"{model_class}Processor")(  # 4 to 16 merged 32-pixel patches per page
        image_processor=Qwen2VLImageProcessor(patch_size=16, merge_size=2, min_pixels=32 * 32 * 4,
                                              max_pixels=32 * 32 * 16),
        tokenizer=tokenizer, video_processor=Qwen3VLVideoProcessor())
    ids = {t: vocab[t] for t in QWEN_SPECIALS}
    text = dict(vocab_size=len(vocab), hidden_size=HIDDEN, intermediate_size=2 * HIDDEN, num_hidden_layers=LAYERS,
                num_attention_heads=HEADS, num_key_value_heads=2, head_dim=HIDDEN // HEADS,
                rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "mrope_interleaved": True,
                                 "rope_theta": 1e4},
                bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])
    # num_position_embeddings: the vision tower's learned position grid (8 x 8, interpolated to each page)
    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=HIDDEN, patch_size=16,
                  spatial_merge_size=2, num_position_embeddings=64)
    tokens = dict(image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                  vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    if is_3_5:
        from transformers.models.qwen3_5 import Qwen3_5Config

        text.update(layer_types=["linear_attention", "full_attention"], linear_key_head_dim=16,
                    linear_value_head_dim=16, linear_num_key_heads=2, linear_num_value_heads=4)
        config = Qwen3_5Config(text_config=text, vision_config=vision, **tokens)
    else:
        from transformers.models.qwen3_vl import Qwen3VLConfig

        config = Qwen3VLConfig(text_config=text, vision_config={**vision, "deepstack_visual_indexes": [0]}, **tokens)
    return getattr(cm, model_class)(config), processor


def _paligemma() -> tuple[torch.nn.Module, object]:
    import colpali_engine.models as cm
    from transformers import GemmaTokenizer, PaliGemmaConfig, SiglipImageProcessor

    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
    vocab = {t: i for i, t in enumerate(specials)}
    vocab.update({f"<0x{b:02X}>": len(specials) + b for b in range(256)})  # Gemma's byte fallback covers all text
    tokenizer = GemmaTokenizer(vocab=vocab, merges=[])
    image_processor = SiglipImageProcessor(size={"height": 28, "width": 28})
    image_processor.image_seq_length = 4  # (28 / 14) ** 2 patches; PaliGemmaProcessor requires the attribute
    processor = cm.ColPaliProcessor(image_processor=image_processor, tokenizer=tokenizer)  # adds <image>, <loc*>
    config = PaliGemmaConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=LAYERS, num_attention_heads=2,
                           patch_size=14, image_size=28, projection_dim=HIDDEN),
        text_config=dict(vocab_size=len(tokenizer), hidden_size=HIDDEN, intermediate_size=2 * HIDDEN,
                         num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=1,
                         head_dim=HIDDEN // HEADS, pad_token_id=0, eos_token_id=1, bos_token_id=2),
        image_token_index=processor.image_token_id, projection_dim=HIDDEN, pad_token_id=0)
    return cm.ColPali(config), processor


def build_tiny_checkpoint(arch: str, out_dir: Path, seed: int = 0) -> Path:
    """Write a tiny random ``arch`` model and its processor to ``out_dir``; the same seed gives the same bytes."""
    builders = {"colqwen2_5": lambda: _qwen2_5("ColQwen2_5"), "biqwen2_5": lambda: _qwen2_5("BiQwen2_5"),
                "colpali": _paligemma, "colqwen3": lambda: _qwen3("ColQwen3"), "biqwen3": lambda: _qwen3("BiQwen3"),
                "colqwen3_5": lambda: _qwen3("ColQwen3_5"), "biqwen3_5": lambda: _qwen3("BiQwen3_5")}
    if arch not in builders:
        raise ValueError(f"unknown tiny arch {arch!r}; known: {', '.join(TINY_ARCHS)}")
    with torch.random.fork_rng(devices=[]):  # seed the init without disturbing the caller's RNG
        torch.manual_seed(seed)
        model, processor = builders[arch]()
        proj = getattr(model, "custom_text_proj", None)
        if proj is not None and proj.bias is not None:
            # A zero bias maps the all-zero hidden states of padded rows (sdpa) to 0, and the model's
            # L2 normalisation to 0/0 = NaN, which poisons gradients even where masked.
            torch.nn.init.normal_(proj.bias, std=0.02)
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


def tiny_checkpoint(arch: str, seed: int) -> Path:
    """A cached build under the harness cache, built once per (arch, seed, builder version)."""
    folder = cache_root() / "tiny" / f"{arch}-seed{seed}-v{BUILD_VERSION}"
    if not (folder / "config.json").is_file():
        shutil.rmtree(folder, ignore_errors=True)  # not ours: builds only ever appear whole, by rename
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
        build_tiny_checkpoint(arch, tmp, seed)
        try:
            os.rename(tmp, folder)  # atomic: a concurrent builder either wins or finds it done
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


class TinyBackbone(ColpaliBackbone):
    family = "tiny"
    config_class = TinyConfig
    embed_base = True  # a saved LoRA carries its tiny base along, so it does not depend on the cache

    def __init__(self, config: TinyConfig) -> None:
        super().__init__(config, spec=ColpaliConfig(model=str(tiny_checkpoint(config.arch, config.seed))))

    def describe(self) -> str:
        return f"tiny-{self.config.arch}-seed{self.config.seed}"  # type: ignore[attr-defined]
