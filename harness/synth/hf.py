"""Local transformers backend: a text LLM (folder, Hub id, or a GGUF file that transformers dequantises) or a VLM
(Qwen2.5-VL and other image-text-to-text models, by Hub id or folder) that sees the page images.

GGUF loading dequantises to full precision (20-45 s for the 270M model); the result is saved once under
``$HARNESS_CACHE/hf-gguf/<file hash>`` so later loads are plain ``from_pretrained`` calls.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness.io import atomic_path
from harness.paths import cache_root
from harness.synth.base import (
    PAGE_SLOT,
    BackendError,
    Choice,
    Generation,
    GenParams,
    Prompt,
    Score,
    chat_messages,
    logsumexp,
    render_pages_as_text,
    spelling_variants,
)
from harness.synth.pages import PageText

log = logging.getLogger(__name__)


def _gguf_folder(folder: str, gguf_file: str) -> Path:
    """Dequantise a GGUF file into a transformers folder once; reuse it afterwards."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(folder) / gguf_file
    if not path.is_file():
        raise BackendError(f"{path}: GGUF file not found")
    stat = path.stat()
    digest = hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    out = cache_root() / "hf-gguf" / f"{path.stem}-{digest}"
    if not (out / "config.json").is_file():
        log.info("dequantising %s with transformers (once)", path)
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file)
        # The weights are already plain dequantised tensors, but transformers keeps a "gguf quantizer" marker that
        # refuses save_pretrained: drop it.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        with atomic_path(out) as tmp:  # a folder: save_pretrained writes several files
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
    return out


class HFBackend:
    kind = "hf"
    parallelism = 1

    def __init__(self, model: str, *, gguf_file: str | None = None, vision: bool = False, instruct: bool | None = None,
                 max_page_tokens: int = 512, device: str | None = None, dtype: str | None = None) -> None:
        import torch
        import transformers as tf

        self.model_name = f"{model}/{gguf_file}" if gguf_file else model
        self.model = Path(self.model_name).name if gguf_file else model
        self.sees_images = vision
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        torch_dtype = getattr(torch, dtype) if dtype else (torch.bfloat16 if self.device != "cpu" else torch.float32)
        source = str(_gguf_folder(model, gguf_file)) if gguf_file else model
        if vision:
            self.processor = tf.AutoProcessor.from_pretrained(source)
            self.tokenizer = self.processor.tokenizer
            self.net = tf.AutoModelForImageTextToText.from_pretrained(source, dtype=torch_dtype)
        else:
            self.processor = None
            self.tokenizer = tf.AutoTokenizer.from_pretrained(source)
            self.net = tf.AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype)
        self.net.to(self.device).eval()
        template = getattr(self.processor or self.tokenizer, "chat_template", None)
        self.instruct = bool(template) if instruct is None else instruct
        if vision and not self.instruct:
            raise BackendError(f"{model}: a VLM needs its chat template (instruct) to place the images")
        self.pages = PageText(max_page_tokens)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "model": self.model, "instruct": self.instruct, "sees_images": self.sees_images,
                "max_page_tokens": self.pages.max_page_tokens}

    def prepare(self, pages: Sequence[Any]) -> None:
        if not self.sees_images:
            self.pages.prepare(pages)

    def _truncate(self, text: str, max_tokens: int) -> tuple[str, bool]:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) <= max_tokens:
            return text, False
        return self.tokenizer.decode(ids[:max_tokens]), True

    def _inputs(self, prompt: Prompt, extra: str = "") -> tuple[dict[str, Any], dict[str, Any]]:
        """Model inputs for the prompt (+ prefill + ``extra`` text) and the record's meta."""
        if self.sees_images and any(p.image is not None for p in prompt.pages):
            content: list[dict[str, Any]] = []
            pieces = PAGE_SLOT.split(prompt.text)
            named = {int(i) for i in pieces[1::2]}
            content += [{"type": "image", "image": p.image} for i, p in enumerate(prompt.pages) if i not in named]
            for j, piece in enumerate(pieces):
                if j % 2:
                    content.append({"type": "image", "image": prompt.pages[int(piece)].image})
                elif piece.strip():
                    content.append({"type": "text", "text": piece})
            text = self.processor.apply_chat_template(chat_messages(prompt, content), add_generation_prompt=True,
                                                      tokenize=False)
            images = [c["image"] for c in content if c["type"] == "image"]
            enc = self.processor(text=[text + prompt.prefill + extra], images=images, return_tensors="pt")
            meta = {"page_modes": ["image"] * len(prompt.pages), "page_truncated": False}
        else:
            body, meta = render_pages_as_text(prompt, self.pages, self._truncate)
            if self.instruct:
                text = self.tokenizer.apply_chat_template(chat_messages(prompt, body), add_generation_prompt=True,
                                                          tokenize=False)
                enc = self.tokenizer(text + prompt.prefill + extra, add_special_tokens=False, return_tensors="pt")
            else:
                system = f"{prompt.system}\n\n" if prompt.system else ""
                enc = self.tokenizer(system + body + prompt.prefill + extra, return_tensors="pt")
        enc = {k: v.to(self.device) for k, v in enc.items()}
        return enc, {**meta, "n_prompt_tokens": int(enc["input_ids"].shape[1])}

    def generate(self, prompts: Sequence[Prompt], params: GenParams,
                 seeds: Sequence[int] | None = None) -> list[Generation]:
        import torch

        out = []
        for i, prompt in enumerate(prompts):
            enc, meta = self._inputs(prompt)
            torch.manual_seed(int(seeds[i]) if seeds is not None else 0)
            sample = params.temperature > 0
            kwargs: dict[str, Any] = {"max_new_tokens": params.max_new_tokens, "do_sample": sample,
                                      "pad_token_id": self.tokenizer.pad_token_id or self.tokenizer.eos_token_id}
            if sample:
                kwargs.update(temperature=params.temperature, top_p=params.top_p, top_k=0)
            if params.stop:
                kwargs.update(stop_strings=list(params.stop), tokenizer=self.tokenizer)
            with torch.no_grad():
                ids = self.net.generate(**enc, **kwargs)[0, enc["input_ids"].shape[1]:]
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            finish = "length" if len(ids) >= params.max_new_tokens else "stop"
            for stop in params.stop:  # generate stops after the stop string; the API contract excludes it
                if stop in text:
                    text = text[:text.index(stop)]
            out.append(Generation(text, meta["n_prompt_tokens"], len(ids), finish, meta))
        return out

    def _logprobs(self, enc: dict[str, Any], keep: int) -> Any:
        """Log-probabilities at the last ``keep`` positions only: Gemma 3's 262k-token output layer over every
        prompt position would cost more than the rest of the model."""
        import torch

        with torch.no_grad():
            logits = self.net(**enc, logits_to_keep=keep).logits[0, -keep:].float()
        return torch.log_softmax(logits, dim=-1)

    def score(self, prompts: Sequence[Prompt], continuations: Sequence[str]) -> list[Score]:
        out = []
        for prompt, cont in zip(prompts, continuations, strict=True):
            base, meta = self._inputs(prompt)
            full, _ = self._inputs(prompt, extra=cont)
            n_prompt, ids = base["input_ids"].shape[1], full["input_ids"][0]
            n = ids.shape[0] - n_prompt
            if n <= 0:
                raise BackendError("cannot score an empty continuation")
            logp = self._logprobs(full, keep=n + 1)  # rows for positions n_prompt - 1 ... end
            picked = logp[:-1].gather(1, ids[n_prompt:, None])[:, 0]
            out.append(Score(float(picked.sum()), n, meta))
        return out

    def next_token_logprobs(self, prompt: Prompt, candidates: Sequence[str]) -> Choice:
        enc, meta = self._inputs(prompt)
        logp = self._logprobs(enc, keep=1)[-1]
        found = {}
        for cand in candidates:
            firsts = {ids[0] for v in spelling_variants(cand)
                      if (ids := self.tokenizer(v, add_special_tokens=False)["input_ids"])}
            found[cand] = logsumexp([float(logp[t]) for t in firsts]) if firsts else -math.inf
        meta["top"] = [self.tokenizer.decode([int(t)]) for t in logp.topk(5).indices]
        return Choice(found, meta)


class AdapterOffBackend(HFBackend):
    """The hf backend over a language model another component holds (the llm-text retriever of ``svrag``), run
    with its LoRA adapter disabled, i.e. as the base model. Its identity is what ``HFBackend`` reports for the same
    weights and settings, so the two share answer caches (tests/test_svrag.py checks the logits are the base's)."""

    def __init__(self, net: Any, tokenizer: Any, model_name: str, *, instruct: bool, max_page_tokens: int = 512,
                 processor: Any = None) -> None:
        self.model_name = self.model = model_name
        # a VLM's processor: the model sees the page images, as HFBackend(vision=True) does
        self.sees_images, self.processor, self.instruct = processor is not None, processor, instruct
        self.net, self.tokenizer = net, tokenizer
        self.device = str(next(net.parameters()).device)
        self.pages = PageText(max_page_tokens)

    def generate(self, prompts: Sequence[Prompt], params: GenParams,
                 seeds: Sequence[int] | None = None) -> list[Generation]:
        from harness.train.lora import adapters_disabled

        with adapters_disabled(self.net):
            return super().generate(prompts, params, seeds)

    def score(self, prompts: Sequence[Prompt], continuations: Sequence[str]) -> list[Score]:
        from harness.train.lora import adapters_disabled

        with adapters_disabled(self.net):
            return super().score(prompts, continuations)

    def next_token_logprobs(self, prompt: Prompt, candidates: Sequence[str]) -> Choice:
        from harness.train.lora import adapters_disabled

        with adapters_disabled(self.net):
            return super().next_token_logprobs(prompt, candidates)
