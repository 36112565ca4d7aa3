"""Syntriever's training data: training queries (a training split, or pseudo-queries from unlabeled pages),
synthetic passages as text or rendered page images, and an LLM backend that counts its calls and tokens."""

from __future__ import annotations

import hashlib
import random
import textwrap
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from harness.backbones.base import Page


class CountingBackend:
    """Delegates to a synth backend and counts the model calls it really makes (store hits are not calls) and
    their tokens (prompt + completion; a next-token choice counts its prompt and one token)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self._lock = threading.Lock()
        self.calls = 0
        self.tokens = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def _count(self, calls: int, tokens: int) -> None:
        with self._lock:
            self.calls += calls
            self.tokens += tokens

    def generate(self, prompts: Sequence[Any], params: Any, seeds: Sequence[int] | None = None) -> list[Any]:
        out = self._inner.generate(prompts, params, seeds=seeds)
        self._count(len(out), sum(g.n_prompt_tokens + g.n_tokens for g in out))
        return out

    def score(self, prompts: Sequence[Any], continuations: Sequence[str]) -> list[Any]:
        out = self._inner.score(prompts, continuations)
        self._count(len(out), sum(int(s.meta.get("n_prompt_tokens", 0)) + s.n_tokens for s in out))
        return out

    def next_token_logprobs(self, prompt: Any, candidates: Sequence[str]) -> Any:
        out = self._inner.next_token_logprobs(prompt, candidates)
        self._count(1, int(out.meta.get("n_prompt_tokens", 0)) + 1)
        return out

    def snapshot(self) -> tuple[int, int]:
        return self.calls, self.tokens


@dataclass
class TrainQuery:
    id: str
    text: str
    gold: list[str]  # ids of relevant corpus pages
    positives: list[Page] = field(default_factory=list)  # synthetic, verified
    negatives: list[Page] = field(default_factory=list)  # synthetic irrelevant + rejected positives
    cot: Page | None = None  # the chain-of-thought augmentation, a positive


def query_id(page_id: str, text: str) -> str:
    """Pseudo-query ids name their text: a store record keyed by the id can only serve that very query."""
    return "pq-" + hashlib.sha256(f"{page_id}\x00{text}".encode()).hexdigest()[:16]


def subsample(ids: Sequence[str], k: int | None, seed: int) -> list[str]:
    ids = sorted(ids)
    if k is None or k >= len(ids):
        return ids
    return sorted(random.Random(seed).sample(ids, k))


def render_passage(text: str, width: int = 640, font_size: int = 16) -> Image.Image:
    """A generated passage drawn as a plain page image, so the document side of a visual backbone stays visual."""
    try:
        font = ImageFont.load_default(size=font_size)
    except TypeError:  # Pillow < 10.1
        font = ImageFont.load_default()
    lines = []
    for para in (text or " ").split("\n"):
        lines += textwrap.wrap(para, width=max(20, width // (font_size // 2 + 1))) or [""]
    lines = lines[:60]
    height = max(160, 24 + (font_size + 6) * len(lines))
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    for i, line in enumerate(lines):
        draw.text((16, 12 + i * (font_size + 6)), line, fill="black", font=font)
    return image


def passage_page(pid: str, text: str, as_image: bool) -> Page:
    return Page(pid, image=render_passage(text)) if as_image else Page(pid, text=text)
