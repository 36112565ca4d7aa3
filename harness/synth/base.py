"""The types every synthetic-data backend shares: prompts, sampling parameters, outputs, the ``Backend`` protocol
and the helpers that render pages as text. The three implementations import this module; backends.py (the
registry) imports them, so nothing here imports a backend.

A ``Prompt`` carries the prompt text and the pages it refers to; ``<page:N>`` in the text marks where page N goes.
Models that see images get the image there; text-only models get the page's text (the corpus text, or Tesseract OCR
of the image, truncated to ``max_page_tokens``) and every output records which it was (``page_modes``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict

from harness.backbones.base import Page
from harness.synth.pages import PageText
from harness.synth.prompts import Template

PAGE_SLOT = re.compile(r"<page:(\d+)>")


class BackendError(RuntimeError):
    """A backend that cannot do what was asked (a missing model file, a server that refuses, no logprobs...)."""


@dataclass
class Prompt:
    text: str
    pages: tuple[Page, ...] = ()
    system: str | None = None
    prefill: str = ""  # the start of the answer, which the model continues (after the chat template's turn start)
    template_id: str = ""

    @classmethod
    def of(cls, template: Template, pages: Sequence[Page] = (), **fields: str) -> Prompt:
        # str.replace, not str.format: queries and passages may contain braces.
        text = template.text
        for name, value in fields.items():
            text = text.replace("{" + name + "}", value)
        return cls(text, tuple(pages), template.system, template.prefill, template.id)


class GenParams(BaseModel):
    """Sampling parameters, recorded with every output. temperature 0 is greedy decoding."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 0.9
    stop: tuple[str, ...] = ()


@dataclass
class Generation:
    text: str
    n_prompt_tokens: int = 0
    n_tokens: int = 0
    finish_reason: str = "stop"  # "stop" or "length"
    meta: dict[str, Any] = field(default_factory=dict)  # page_modes, page_truncated, ...


@dataclass
class Score:
    """Log-probability of a continuation given a prompt."""

    sum_logprob: float
    n_tokens: int
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def mean_logprob(self) -> float:
        return self.sum_logprob / max(self.n_tokens, 1)


@dataclass
class Choice:
    """Log-probabilities of candidate answers as the next token (log-sum over their spelling variants)."""

    logprobs: dict[str, float]
    meta: dict[str, Any] = field(default_factory=dict)


class Backend(Protocol):
    kind: str  # "llama-cpp", "hf", "http"
    model: str  # file, folder, Hub id or served model name
    instruct: bool  # instruction-tuned (chat template) or a base model (few-shot completion prompts)
    sees_images: bool
    parallelism: int  # how many calls the operations may have in flight at once

    def generate(self, prompts: Sequence[Prompt], params: GenParams,
                 seeds: Sequence[int] | None = None) -> list[Generation]: ...

    def score(self, prompts: Sequence[Prompt], continuations: Sequence[str]) -> list[Score]: ...

    def next_token_logprobs(self, prompt: Prompt, candidates: Sequence[str]) -> Choice: ...

    def prepare(self, pages: Sequence[Page]) -> None:
        """Do per-page work for many pages at once (OCR in parallel processes) before the calls that need it."""

    def describe(self) -> dict[str, Any]: ...


def logsumexp(values: Sequence[float]) -> float:
    values = [v for v in values if v != -math.inf]
    if not values:
        return -math.inf
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def spelling_variants(candidate: str) -> list[str]:
    """A next-token answer may come with or without a leading space (tokenisers differ): try both."""
    bare = candidate.strip()
    return [bare, " " + bare]


def render_pages_as_text(prompt: Prompt, pages: PageText, truncate: Any) -> tuple[str, dict[str, Any]]:
    """Replace each <page:N> with the page's text (truncated by ``truncate(text, max_tokens) -> (text, cut)``);
    pages the text does not mention go first. Returns the text and the record's meta."""
    modes, cut = [], []
    body = prompt.text
    mentioned = {int(m) for m in PAGE_SLOT.findall(body)}
    missing = "".join(f"<page:{i}>\n" for i in range(len(prompt.pages)) if i not in mentioned)
    body = missing + body

    def fill(match: re.Match[str]) -> str:
        i = int(match.group(1))
        if i >= len(prompt.pages):
            raise BackendError(f"prompt {prompt.template_id!r} names page {i} but has {len(prompt.pages)} page(s)")
        text, mode = pages.text(prompt.pages[i])
        text, was_cut = truncate(text, pages.max_page_tokens)
        modes.append(mode)
        cut.append(was_cut)
        return text

    body = PAGE_SLOT.sub(fill, body)
    return body, {"page_modes": modes, "page_truncated": any(cut)}


def chat_messages(prompt: Prompt, body: Any) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    if prompt.system:
        messages.append({"role": "system", "content": prompt.system})
    messages.append({"role": "user", "content": body})
    return messages
