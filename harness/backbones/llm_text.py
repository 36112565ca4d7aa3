"""LLM-text backbone: a causal language model read as a late-interaction retriever (SV-RAG's retriever, offline).

A page is its text (its own, else Tesseract OCR of its image, as the ocr-text backbone reads it) cut to
``max_page_tokens``; a query is its text. Both go through the language model; each token's last hidden state goes
through ``Linear(hidden, dim)`` (no bias) and an L2 norm: ColBERT-style MaxSim. The projection starts random
(seeded), so the untrained model ranks pages about as a random 128-d sketch of the LM's states does; the ``svrag``
recipe trains a LoRA adapter and the projection. The BOS token is left out of both sides: it is the same
attention-sink vector for every text, a constant that carries no evidence.

The same network answers: ``answer_backend()`` is a harness.synth backend that runs this language model with its
LoRA adapter disabled, that is the base model (tests/test_svrag.py checks its logits against a fresh base model's).
Its identity is the one ``harness.synth``'s hf backend reports for the same weights, so both share answer caches.

Default model: the packaged Gemma 3 270M GGUF, dequantised once through transformers (``harness.synth.hf``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from transformers import AutoModelForCausalLM, AutoTokenizer

from harness.backbones.base import Backbone, BackboneConfig, Page, Trainable, write_backbone_file
from harness.backbones.ocr import OcrPages

PACKAGED_LLM = "packaged:gemma-3-270m"
# attention and MLP projections of Llama-style decoders (Gemma, Qwen, Llama; Phi-3 fuses qkv and gate/up);
# peft matches these as module-name suffixes and skips the ones a model lacks
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "qkv_proj", "gate_proj", "up_proj", "down_proj",
                "gate_up_proj"]


class LlmTextConfig(BackboneConfig):
    model: str = PACKAGED_LLM  # the packaged GGUF, a transformers folder or Hub id, or a folder holding gguf_file
    gguf_file: str | None = None
    revision: str | None = None
    dim: int = Field(128, ge=1)  # SV-RAG's projection width
    projection_seed: int = 0
    max_page_tokens: int = Field(512, ge=8)
    query_max_tokens: int = Field(64, ge=4)
    ocr_lang: str = "eng"
    ocr_psm: int = 3
    ocr_workers: int | None = None
    page_batch: int = Field(4, ge=1)  # pages per forward pass when encoding for evaluation
    # training keeps each layer's input only and recomputes the rest in the backward pass: svrag's 12 steps of 8 on
    # the 270M model peaked at 5.6 GB without it; no effect on scores or on evaluation
    gradient_checkpointing: bool = True


def resolve_llm(config: LlmTextConfig) -> tuple[str, str]:
    """(folder transformers loads, the model's name as the hf answer backend reports it)."""
    if config.model == PACKAGED_LLM or config.gguf_file:
        from harness.synth.backends import packaged_gguf
        from harness.synth.hf import _gguf_folder

        folder, name = (packaged_gguf().rsplit("/", 1) if config.model == PACKAGED_LLM
                        else (config.model, str(config.gguf_file)))
        return str(_gguf_folder(folder, name)), name
    return config.model, config.model


def enable_checkpointing(lm: Any) -> None:
    """Activation checkpointing while training (transformers 5 names it so; older versions gradient_...)."""
    if hasattr(lm, "activation_checkpointing_enable"):
        lm.activation_checkpointing_enable({"use_reentrant": False})
    else:
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def init_projection(hidden: int, dim: int, seed: int) -> torch.nn.Linear:
    """Linear(hidden, dim), no bias, seeded: two builds of the same config are the same untrained model."""
    projection = torch.nn.Linear(hidden, dim, bias=False)
    with torch.no_grad():
        projection.weight.copy_(torch.randn(dim, hidden, generator=torch.Generator().manual_seed(seed))
                                * hidden ** -0.5)
    return projection


class LmRetriever(Backbone):
    """What the llm-text and llm-vision backbones share: ``self.lm`` (a transformers causal or image-text-to-text
    model), ``self.tokenizer`` and ``self.projection``; token vectors = projected, L2-normalised states of the tokens
    ``token_states`` keeps; the LM is what answers (``answer_backend``) and what LoRA adapts."""

    lm: Any
    tokenizer: Any
    projection: torch.nn.Linear

    def _tokens(self, texts: Sequence[str], max_length: int) -> dict[str, Any]:
        enc = self.tokenizer(list(texts), padding=True, truncation=True, max_length=max_length,
                             return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def query_inputs(self, texts: Sequence[str]) -> dict[str, Any]:
        return self._tokens(texts, self.config.query_max_tokens)  # type: ignore[attr-defined]

    @property
    def state_dim(self) -> int:
        return self.lm.config.get_text_config().hidden_size

    def _forward(self, inputs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        states, keep = self.token_states(inputs)
        vecs = F.normalize(self.projection(states.to(self.projection.weight.dtype)), dim=-1)
        return vecs * keep.unsqueeze(-1), keep

    def forward_queries(self, inputs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        return self._forward(inputs)

    def forward_pages(self, inputs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        return self._forward(inputs)

    def trainable(self) -> Trainable:
        return Trainable(lora_targets=list(LORA_TARGETS), heads={"projection": self.projection})

    def save(self, path: Path) -> None:
        path = Path(path)
        self.lm.save_pretrained(path / "lm")
        (getattr(self, "processor", None) or self.tokenizer).save_pretrained(path / "lm")
        torch.save(self.projection.state_dict(), path / "projection.pt")
        write_backbone_file(path, self.family, self.config)

    @classmethod
    def load(cls, path: Path) -> LmRetriever:
        path = Path(path)
        config = cls.config_class(**json.loads((path / "backbone.json").read_text())["config"])
        backbone = cls(config, lm_dir=str(path / "lm"))  # type: ignore[call-arg]
        state = torch.load(path / "projection.pt", map_location="cpu", weights_only=True)
        backbone.projection.load_state_dict(state, strict=True)
        return backbone


class LlmTextBackbone(OcrPages, LmRetriever):
    family = "llm-text"
    config_class = LlmTextConfig
    config: LlmTextConfig

    def __init__(self, config: LlmTextConfig, lm_dir: str | None = None) -> None:
        super().__init__(config)
        source, self.lm_name = resolve_llm(config)
        revision = None if lm_dir or config.model == PACKAGED_LLM else config.revision
        self.tokenizer = AutoTokenizer.from_pretrained(lm_dir or source, revision=revision)
        self.tokenizer.padding_side = "right"  # causal attention: right padding leaves every real token as is
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.lm = AutoModelForCausalLM.from_pretrained(lm_dir or source, revision=revision, dtype=torch.float32)
        self.lm.eval()
        if config.gradient_checkpointing:
            enable_checkpointing(self.lm)
        self.projection = init_projection(self.lm.config.get_text_config().hidden_size, config.dim,
                                          config.projection_seed)
        self._special = sorted(set(self.tokenizer.all_special_ids))

    def describe(self) -> str:
        name = "gemma-3-270m" if self.config.model == PACKAGED_LLM else self.lm_name.rstrip("/").split("/")[-1]
        return f"llm-text-{name}"

    # --- inputs -------------------------------------------------------------------------------
    def page_inputs(self, pages: Sequence[Page]) -> dict[str, Any]:
        return self._tokens(self.page_texts(pages), self.config.max_page_tokens)

    # --- forward ------------------------------------------------------------------------------
    def _decoder(self) -> torch.nn.Module:
        return self.lm.get_decoder()

    def token_states(self, inputs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """The language model's last hidden states (after its final norm) and the mask of the tokens kept."""
        ids, attention = inputs["input_ids"], inputs["attention_mask"]
        states = self._decoder()(input_ids=ids, attention_mask=attention, use_cache=False).last_hidden_state
        keep = attention.bool() & ~torch.isin(ids, torch.tensor(self._special, device=ids.device))
        empty = ~keep.any(dim=1)  # an empty text (a picture-only page) keeps its special tokens: one vector at least
        keep[empty] = attention[empty].bool()
        return states.float(), keep

    @torch.inference_mode()
    def encode_pages(self, pages: Sequence[Page], batch_size: int = 8) -> list[torch.Tensor]:
        """Pages sorted by text length and batched by ``page_batch``, so short pages are not padded to long ones."""
        texts = self.page_texts(pages)
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        out: list[torch.Tensor | None] = [None] * len(texts)
        was_training = self.training
        self.eval()
        for start in range(0, len(order), self.config.page_batch):
            idx = order[start : start + self.config.page_batch]
            inputs = {k: v.to(self.device) for k, v in
                      self._tokens([texts[i] for i in idx], self.config.max_page_tokens).items()}
            vecs, keep = self._forward(inputs)
            for j, i in enumerate(idx):
                out[i] = vecs[j][keep[j]].float().cpu()
        self.train(was_training)
        return out  # type: ignore[return-value]

    # --- answering ----------------------------------------------------------------------------
    def answer_backend(self, spec: dict[str, Any] | None = None) -> Any:
        """A harness.synth backend that generates with this language model, its LoRA adapter disabled.
        ``spec``: the answerer settings of the run (``max_page_tokens``, ``instruct``); others are ignored."""
        from harness.synth.hf import AdapterOffBackend

        spec = spec or {}
        instruct = spec.get("instruct")
        if instruct is None:  # as harness.synth.backends decides: the packaged model is a base model
            instruct = False if self.config.model == PACKAGED_LLM else bool(self.tokenizer.chat_template)
        return AdapterOffBackend(self.lm, self.tokenizer, self.lm_name, instruct=bool(instruct),
                                 max_page_tokens=int(spec.get("max_page_tokens") or 512))
