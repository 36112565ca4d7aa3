"""The transformers backend on tiny random real-architecture models built from config (no download): a text LLM
from a folder and a Qwen2.5-VL from a folder that sees page images. Outputs mean nothing; the code paths are real.
(The packaged GGUF through transformers: test_synth_hf_gguf.py; its speed: benchmarks/synth_throughput.py --hf.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from harness.backbones.base import Page
from harness.synth import operations as ops
from harness.synth.backends import BackendSpec, GenParams, Prompt, make_backend
from harness.synth.store import SynthStore
from helpers import qwen_byte_tokenizer, tiny_qwen_vl


@pytest.fixture(scope="module")
def text_llm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-llm")
    tok, ids, n = qwen_byte_tokenizer()
    config = Qwen2Config(vocab_size=n, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, bos_token_id=ids["<|endoftext|>"],
                         eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])
    Qwen2ForCausalLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def vlm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_qwen_vl(tmp_path_factory.mktemp("tiny-vlm"))


def test_text_llm_from_a_folder(text_llm: Path, tmp_path: Path) -> None:
    backend = make_backend(BackendSpec(kind="hf", model=str(text_llm), max_page_tokens=16))
    assert backend.instruct and not backend.sees_images  # a chat template: instruction prompts
    page = Page(id="d0", text="The Orvell river floods every spring and feeds the rice farms of the valley.")
    gen = backend.generate([Prompt("Say hi", (page,))], GenParams(max_new_tokens=5, temperature=0.0))[0]
    assert gen.n_tokens <= 5 and gen.meta == {"page_modes": ["text"], "page_truncated": True,
                                              "n_prompt_tokens": gen.n_prompt_tokens}
    score = backend.score([Prompt("The capital of France is")], [" Paris"])[0]
    assert score.n_tokens == 6 and score.sum_logprob < 0  # byte-level: one token per byte
    with SynthStore(tmp_path / "s.jsonl") as store:
        ops.pseudo_queries(backend, store, [page], n=1, params=GenParams(max_new_tokens=6), progress=False)
        p_yes, _ = ops.judge_yesno(backend, store, [ops.JudgeItem("q", "When?", page)], progress=False)
    assert 0 < p_yes[0] < 1
    record = json.loads((tmp_path / "s.jsonl").read_text().splitlines()[0])
    assert record["backend"] == "hf" and record["prompt_id"] == "syntr.general.text.v1"


def test_vlm_sees_the_page_image(vlm: Path, tmp_path: Path) -> None:
    backend = make_backend(BackendSpec(kind="hf", model=str(vlm), vision=True))
    page = Page(id="p0", image=Image.new("RGB", (64, 64), "white"))
    with SynthStore(tmp_path / "s.jsonl") as store:
        ops.pseudo_queries(backend, store, [page], n=1, params=GenParams(max_new_tokens=4), progress=False)
        ql, _ = ops.judge_query_likelihood(backend, store, [ops.JudgeItem("q", "What?", page)], progress=False)
        labels, report = ops.judge_graded(backend, store, [ops.JudgeItem("q", "What?", page)], progress=False)
    records = [json.loads(x) for x in (tmp_path / "s.jsonl").read_text().splitlines()]
    assert records[0]["prompt_id"] == "syntr.general.vlm.v1" and records[0]["page_modes"] == ["image"]
    assert ql[0] < 0 and sum(report.statuses.values()) == 1
