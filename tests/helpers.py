"""Helpers several test modules share (test modules never import each other): a fake LLM backend for SynTR, its
training corpus and config, and the source of a variant from outside models/."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from harness.synth.backends import Choice, Generation, Score
from harness.variants import TrainingCorpus
from tasks.beir_folder import BeirFolderTask

# A variant's model.py from outside models/: queries are prefixed before encoding (shows the extension point).
CUSTOM_MODEL = '''
"""A variant from outside models/: queries are prefixed before encoding (shows the extension point)."""
from harness.evaluate.encoder import HarnessEncoder, make_meta


class PrefixedEncoder(HarnessEncoder):
    def encode(self, inputs, **kwargs):
        if kwargs.get("prompt_type") is not None and kwargs["prompt_type"].value == "query":
            inputs = [{**b, "text": ["query: " + t for t in b["text"]]} for b in inputs]
        return super().encode(inputs, **kwargs)


def load_model(backbone, checkpoint=None, cache=None):
    meta = make_meta(f"prefixed/{backbone.describe()}", backbone.fingerprint() + "-p", backbone)
    return PrefixedEncoder(backbone, meta, cache)
'''


class FakeBackend:
    """Queries name their page; query likelihood is high on the query's own page, low elsewhere."""

    kind, model, instruct, sees_images, parallelism = "fake", "fake", True, False, 1

    def __init__(self) -> None:
        self.calls = 0

    def prepare(self, pages: Any) -> None:
        pass

    def describe(self) -> dict[str, Any]:
        return {"kind": "fake", "model": "fake"}

    def generate(self, prompts: Any, params: Any, seeds: Any = None) -> list[Generation]:
        self.calls += len(prompts)
        return [Generation(f"what is on page {p.pages[0].id} seed {s}?", 10, 8)
                for p, s in zip(prompts, seeds, strict=True)]

    def score(self, prompts: Any, continuations: Any) -> list[Score]:
        self.calls += len(prompts)
        out = []
        for p, c in zip(prompts, continuations, strict=True):
            own = bool(p.pages) and f"page {p.pages[0].id} " in c
            out.append(Score((-1.0 if own else -3.0) * 8 if p.pages else -2.5 * 8, 8))
        return out

    def next_token_logprobs(self, prompt: Any, candidates: Any) -> Choice:
        return Choice({c: math.log(0.5) for c in candidates})


def syntr_corpus(folder: Path) -> TrainingCorpus:
    task = BeirFolderTask(folder)
    from harness.pipeline import training_corpus

    return training_corpus(task)


SYNTR_CONFIG = {"pages": 6, "queries_per_page": 2, "top_m": 4, "n_negatives": 2, "val_fraction": 0.2,
                "test_fraction": 0.2, "lora": {"r": 4, "alpha": 8},
                "train": {"steps": 4, "batch_size": 2, "logging_steps": 1}}


def tiny_gemma(folder: Path, seed: int = 0) -> Path:
    """A randomly initialised 2-layer Gemma 3 text model (the packaged LLM's architecture: sliding and full
    attention layers) with a byte-level tokenizer that adds a BOS token, saved as a transformers folder."""
    import torch
    from tokenizers import AddedToken
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, Qwen2Tokenizer

    specials = ["<pad>", "<eos>", "<bos>"]
    vocab = {ch: i for i, ch in enumerate(sorted(ByteLevel.alphabet()))}
    vocab.update({t: len(vocab) + i for i, t in enumerate(specials)})
    tok = Qwen2Tokenizer(vocab=vocab, merges=[], bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                         unk_token=None, add_bos_token=True)
    tok.add_tokens([AddedToken(t, special=True, normalized=False) for t in specials], special_tokens=True)
    torch.manual_seed(seed)
    config = Gemma3TextConfig(vocab_size=len(vocab), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=1, head_dim=16, sliding_window=8,
                              layer_types=["sliding_attention", "full_attention"], pad_token_id=vocab["<pad>"],
                              eos_token_id=vocab["<eos>"], bos_token_id=vocab["<bos>"])
    Gemma3ForCausalLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
            "<|video_pad|>"]
TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['content'] is string %}{{ m['content'] }}"
            "{% else %}{% for c in m['content'] %}{% if c['type'] == 'image' %}<|vision_start|><|image_pad|>"
            "<|vision_end|>{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def qwen_byte_tokenizer():  # noqa: ANN202
    """A Qwen2 tokenizer over the 256 byte symbols plus the Qwen-VL special tokens, with a chat template."""
    from tokenizers import AddedToken
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import Qwen2Tokenizer

    vocab = {ch: i for i, ch in enumerate(sorted(ByteLevel.alphabet()))}
    vocab.update({tok: len(vocab) + i for i, tok in enumerate(SPECIALS)})
    tok = Qwen2Tokenizer(vocab=vocab, merges=[])
    tok.add_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIALS], special_tokens=True)
    tok.chat_template = TEMPLATE
    return tok, {t: vocab[t] for t in SPECIALS}, len(vocab)


def tiny_qwen_vl(folder: Path) -> Path:
    """A randomly initialised tiny Qwen2.5-VL (2 text layers of width 64, a 2-block vision tower) with a byte-level
    tokenizer and a chat template, saved as a transformers folder."""
    import torch
    from transformers import (
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )
    from transformers.models.qwen2_5_vl import Qwen2_5_VLConfig

    torch.manual_seed(0)
    tok, ids, n = qwen_byte_tokenizer()
    processor = Qwen2_5_VLProcessor(image_processor=Qwen2VLImageProcessor(min_pixels=28 * 28 * 4,
                                                                          max_pixels=28 * 28 * 16),
                                    tokenizer=tok, video_processor=Qwen2VLVideoProcessor(), chat_template=TEMPLATE)
    config = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=n, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2,
                         rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 1e4},
                         bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                         pad_token_id=ids["<|endoftext|>"]),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                           fullatt_block_indexes=[1], window_size=56),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    Qwen2_5_VLForConditionalGeneration(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
