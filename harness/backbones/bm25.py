"""bm25 backbone: a lexical reference row, mteb's own BM25 baseline (bm25s) over the text of each page.

Not a vector model: it has no embeddings and nothing to train. The base variant evaluates it through
``harness.evaluate.bm25.Bm25Search`` (mteb's search interface) instead of ``HarnessEncoder``; the pipeline refuses
any other variant on it. A page's text is its corpus text (BEIR: title + text) and, for a page image, its Tesseract
OCR: the ocr-text backbone's OCR with the same settings and cache.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, NoReturn

import torch
from pydantic import Field

from harness.backbones import BackboneError
from harness.backbones.base import Backbone, BackboneConfig, Page, Trainable, write_backbone_file
from harness.backbones.ocr import OcrPages


class Bm25Config(BackboneConfig):
    # mteb's BM25Search defaults (mteb/baseline-bm25s)
    k1: float = Field(1.5, gt=0)
    b: float = Field(0.75, ge=0, le=1)
    method: Literal["robertson", "lucene", "atire"] = "lucene"
    stopwords: str | None = None  # a bm25s stopword list (en, de, fr, ...); None: the task's language, as mteb does
    stemmer: str | None = None  # a PyStemmer language (english, french, ...); None: the task's language
    ocr_lang: str = "eng"
    ocr_psm: int = 3
    ocr_workers: int | None = None


class Bm25Backbone(OcrPages, Backbone):
    family = "bm25"
    config_class = Bm25Config
    config: Bm25Config

    def __init__(self, config: Bm25Config) -> None:
        super().__init__(config)

    def describe(self) -> str:
        return "bm25"

    # --- no vectors, nothing to train ---------------------------------------------------------
    def _no_vectors(self) -> NoReturn:
        raise BackboneError("the bm25 backbone is lexical: it has no vectors and nothing to train; only the base "
                            "variant evaluates it (through mteb's search interface)")

    def query_inputs(self, texts: Sequence[str]) -> dict[str, Any]:
        self._no_vectors()

    def page_inputs(self, pages: Sequence[Page]) -> dict[str, Any]:
        self._no_vectors()

    def forward_queries(self, inputs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        self._no_vectors()

    def forward_pages(self, inputs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        self._no_vectors()

    def trainable(self) -> Trainable:
        self._no_vectors()

    # --- persistence --------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        write_backbone_file(Path(path), self.family, self.config)

    @classmethod
    def load(cls, path: Path) -> Bm25Backbone:
        return cls(Bm25Config(**json.loads((Path(path) / "backbone.json").read_text())["config"]))
