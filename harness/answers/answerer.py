"""An answerer: one of the synth engine's backends (llama.cpp, transformers, an OpenAI-compatible server) answering a
question from the text of the pages it is given, greedy, with SV-RAG's prompt; answers are kept in a store.

The store is the synth engine's append-only JSONL store (``SynthStore``): a record is keyed by the answerer's
identity, the prompt id, the question, and the pages given (ids and a hash of their text), so a rerun calls the
model only for what is missing. Pages reach the model as text the caller chooses: the retriever backbone's own
``page_texts`` (the OCR it indexed), or the corpus text (``corpus_page_texts``).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.backbones.base import Page
from harness.synth.backends import Backend, GenParams, Prompt
from harness.synth.pages import OcrPage
from harness.synth.prompts import Template
from harness.synth.store import SynthStore, record_key

# SV-RAG's answering prompt (RECIPES.md section 4), verbatim, after the pages; a base model (not instruction-tuned)
# gets the same text set apart by blank lines and an "Answer: " to continue, and its answer is its first non-empty
# line (the packaged Gemma 3 270M answered nothing after "...possible\nAnswer:" with a newline stop: it starts with
# a newline; it answers "26.2 million EUR" in this form).
SVRAG_ANSWER = Template("svrag-answer-v1", "Answer the question:\n{question}\nPlease make the answer as concise as "
                        "possible")
SVRAG_ANSWER_BASE = Template("svrag-answer-base-v2", "\n" + SVRAG_ANSWER.text + ".\n\nAnswer: ")
MAX_NEW_TOKENS = 32


@dataclass
class Answer:
    text: str
    cached: bool
    seconds: float  # model time when the answer was generated (a cached answer keeps its first time)
    n_prompt_tokens: int
    meta: dict[str, Any]


def corpus_page_texts(pages: Sequence[Page]) -> list[str]:
    """Each page's own text (title and text of a text corpus); pages without text go to the backend as they are."""
    return [p.text or "" for p in pages]


class Answerer:
    def __init__(self, backend: Backend, store: SynthStore | str | Path | None = None,
                 max_new_tokens: int = MAX_NEW_TOKENS) -> None:
        self.backend = backend
        self.store = store if isinstance(store, SynthStore) or store is None else SynthStore(store)
        self.params = GenParams(max_new_tokens=max_new_tokens, temperature=0.0, top_p=1.0,
                                stop=() if backend.instruct else ("\n\n",))
        self.template = SVRAG_ANSWER if backend.instruct or backend.sees_images else SVRAG_ANSWER_BASE
        self.calls = 0

    def identity(self) -> dict[str, Any]:
        return {**self.backend.describe(), "template": self.template.id, "params": self.params.model_dump()}

    def tag(self) -> str:
        """A short name for file names: the backend kind and a hash of the whole identity."""
        digest = hashlib.sha256(repr(sorted(self.identity().items())).encode()).hexdigest()[:8]
        return f"{self.backend.kind}-{digest}"

    def answer(self, question: str, pages: Sequence[Page] = (), texts: Sequence[str] | None = None) -> Answer:
        """Answer from ``pages``; ``texts`` (one per page) replaces their text, as OCR read by the retriever."""
        given = list(pages)
        if texts is not None:  # the text the retriever read: recorded as OCR when the page is an image
            given = [OcrPage(id=p.id, text=t) if p.has_image and t else Page(id=p.id, text=t or p.text,
                                                                             image_path=p.image_path)
                     for p, t in zip(pages, texts, strict=True)]
        key = record_key(op="answer", answerer=self.identity(), question=question,
                         pages=[[p.id, hashlib.sha256((p.text or "").encode()).hexdigest()[:16]] for p in given])
        if self.store is not None and (record := self.store.get(key)) is not None:
            return Answer(record["text"], True, record["seconds"], record["n_prompt_tokens"], record["meta"])
        prompt = Prompt.of(self.template, given, question=question)
        started = time.perf_counter()
        generation = self.backend.generate([prompt], self.params, seeds=[0])[0]
        seconds = time.perf_counter() - started
        self.calls += 1
        text = generation.text.strip()
        if not (self.backend.instruct or self.backend.sees_images):  # a base model's answer: its first line
            text = next((line.strip() for line in text.splitlines() if line.strip()), "")
        record = {"key": key, "op": "answer", "status": "ok" if text else "empty", "answerer": self.identity(),
                  "question": question, "pages": [p.id for p in given], "text": text, "seconds": round(seconds, 4),
                  "n_prompt_tokens": generation.n_prompt_tokens, "n_tokens": generation.n_tokens,
                  "meta": generation.meta}
        if self.store is not None:
            self.store.append(record)
        return Answer(text, False, round(seconds, 4), generation.n_prompt_tokens, generation.meta)

    def close(self) -> None:
        if self.store is not None:
            self.store.close()
