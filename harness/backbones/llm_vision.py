"""LLM-vision backbone: a vision-language chat model read as a late-interaction retriever, as SV-RAG's seed does it
with Phi-3-V and InternVL2 (a GPU path: any transformers image-text-to-text model whose processor has a chat
template, e.g. Qwen2-VL, Qwen2.5-VL, Idefics3, by Hub id or folder).

A page image goes through the whole chat model (the image in a user turn, by the model's chat template); a query
through the language model only (its bare text). Each token's last hidden state goes through ``Linear(hidden, dim)``
and an L2 norm (MaxSim), padding left out. LoRA targets the language model's projections only; the vision tower stays
as it is, as in the seed. With the adapter disabled the same network answers and sees its top-k page images
(``harness.synth``'s hf backend in vision mode). Projection, vectors and saving are the llm-text backbone's
(``LmRetriever``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from pydantic import Field
from transformers import AutoModelForImageTextToText, AutoProcessor

from harness.backbones.base import BackboneConfig, Page, Trainable
from harness.backbones.llm_text import LORA_TARGETS, LmRetriever, enable_checkpointing, init_projection


class LlmVisionConfig(BackboneConfig):
    model: str  # a transformers image-text-to-text folder or Hub id
    revision: str | None = None
    dim: int = Field(128, ge=1)
    projection_seed: int = 0
    query_max_tokens: int = Field(64, ge=4)
    page_prompt: str = "What is shown on this page?"  # the text beside the image in the user turn
    dtype: Literal["float32", "bfloat16", "float16"] | None = None  # None: bfloat16 on a GPU, float32 on CPU
    device: str | None = None  # None: cuda when there is one
    gradient_checkpointing: bool = True  # as llm-text: less memory when training, same scores


class LlmVisionBackbone(LmRetriever):
    family = "llm-vision"
    config_class = LlmVisionConfig
    config: LlmVisionConfig

    def __init__(self, config: LlmVisionConfig, lm_dir: str | None = None) -> None:  # noqa: D107
        super().__init__(config)
        source, revision = lm_dir or config.model, None if lm_dir else config.revision
        device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = getattr(torch, config.dtype) if config.dtype else (
            torch.bfloat16 if device != "cpu" else torch.float32)
        self.processor = AutoProcessor.from_pretrained(source, revision=revision)
        self.tokenizer = self.processor.tokenizer
        self.tokenizer.padding_side = "right"
        self.lm = AutoModelForImageTextToText.from_pretrained(source, revision=revision, dtype=dtype).to(device)
        self.lm.eval()
        if config.gradient_checkpointing:
            enable_checkpointing(self.lm)
        self.lm_name = config.model
        self.projection = init_projection(self.lm.config.get_text_config().hidden_size, config.dim,
                                          config.projection_seed).to(device)

    def describe(self) -> str:
        return f"llm-vision-{self.config.model.rstrip('/').split('/')[-1]}"

    def page_inputs(self, pages: Sequence[Page]) -> dict[str, Any]:
        turn = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": self.config.page_prompt}]}]
        texts = [self.processor.apply_chat_template(turn, add_generation_prompt=False, tokenize=False)] * len(pages)
        images = [p.image.convert("RGB") if p.image is not None else None for p in pages]
        if any(i is None for i in images):
            missing = [p.id for p, i in zip(pages, images, strict=True) if i is None]
            raise ValueError(f"llm-vision reads page images; page(s) {missing[:5]} have none (text corpora: use "
                             "llm-text)")
        return dict(self.processor(text=texts, images=images, padding=True, return_tensors="pt"))

    def token_states(self, inputs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Last hidden states of the chat model (image tokens included for pages) and the non-padding mask."""
        states = self.lm.base_model(**inputs, use_cache=False).last_hidden_state  # no KV cache to build
        return states.float(), inputs["attention_mask"].bool()

    def answer_backend(self, spec: dict[str, Any] | None = None) -> Any:
        """The hf backend in vision mode over this chat model, adapter disabled: it sees its top-k page images."""
        from harness.synth.hf import AdapterOffBackend

        return AdapterOffBackend(self.lm, self.tokenizer, self.lm_name, instruct=True,
                                 max_page_tokens=int((spec or {}).get("max_page_tokens") or 512),
                                 processor=self.processor)

    def trainable(self) -> Trainable:
        """LoRA on the language model's projections (full module names: the vision tower has q/k/v names too)."""
        vision = ("visual", "vision", "vit", "image")
        names = [n for n, m in self.lm.named_modules() if isinstance(m, torch.nn.Linear)
                 and n.rsplit(".", 1)[-1] in LORA_TARGETS and not any(v in n for v in vision)]
        return Trainable(lora_targets=names, heads={"projection": self.projection})

