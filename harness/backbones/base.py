"""The backbone interface: what turns queries and pages into vectors, and which parts are trainable.

Every backbone returns, for each query or page, a matrix of L2-normalised vectors [T, D] (T >= 1, no padding):
late-interaction backbones return token vectors, pooled backbones one vector per chunk (a page of several
chunks then scores by its best chunk under MaxSim). One scoring rule, MaxSim, serves both.

Training code uses the differentiable pair ``*_inputs`` / ``forward_*``; evaluation uses ``encode_*``.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from PIL import Image
from pydantic import BaseModel, ConfigDict

from harness.io import atomic_write_json

BACKBONE_FILE = "backbone.json"


class BackboneConfig(BaseModel):
    """Base for each family's typed config. Unknown keys are errors that name the key."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())


@dataclass
class Page:
    """One corpus item: a page image, a text, or both (a text-only BEIR corpus has no image).

    The image is either given decoded, or as ``image_path``: then it is opened and decoded at each use and closed
    at once, so a corpus of thousands of pages holds neither their pixels nor a file descriptor each."""

    id: str
    image: Image.Image | None = field(default=None, repr=False)  # a property below: decoded, or opened at use
    text: str | None = None
    image_path: str | None = None

    @property
    def has_image(self) -> bool:
        return self.__dict__.get("_image") is not None or self.image_path is not None

    def _get_image(self) -> Image.Image | None:
        image = self.__dict__.get("_image")
        if image is not None or self.image_path is None:
            return image
        image = Image.open(self.image_path)
        image.load()  # decodes, and closes the file Image.open opened
        return image

    def _set_image(self, image: Image.Image | None) -> None:
        self.__dict__["_image"] = image


# After @dataclass: the generated __init__ assigns ``image`` through this property (subclasses keep it too).
Page.image = property(Page._get_image, Page._set_image)  # type: ignore[assignment,method-assign]


@dataclass(frozen=True)
class OcrStats:
    """OCR counters of a backbone that reads page images as text (``Backbone.ocr_stats``).

    ``seconds`` is the Tesseract time recorded for each page served (cached pages keep the time their OCR took), so
    OCR costs the same whether it ran now or earlier; ``wall_s`` is the time spent here (OCR or cache reads)."""

    pages: int = 0  # pages served (OCRed now or from the cache)
    pages_ocred: int = 0  # pages that ran Tesseract now
    timed_pages: int = 0  # pages served whose OCR time is known (the cache of older versions kept none)
    seconds: float = 0.0  # Tesseract seconds of the timed pages
    wall_s: float = 0.0

    def __sub__(self, other: OcrStats) -> OcrStats:
        return OcrStats(self.pages - other.pages, self.pages_ocred - other.pages_ocred,
                        self.timed_pages - other.timed_pages, self.seconds - other.seconds, self.wall_s - other.wall_s)


@dataclass
class Trainable:
    """What a recipe may train: LoRA target module names (regex or names for peft) and head modules."""

    lora_targets: list[str] = field(default_factory=list)
    heads: dict[str, torch.nn.Module] = field(default_factory=dict)


class Backbone(torch.nn.Module, ABC):
    family: ClassVar[str]
    config_class: ClassVar[type[BackboneConfig]]

    def __init__(self, config: BackboneConfig) -> None:
        super().__init__()
        self.config = config

    # --- differentiable path (training) -------------------------------------------------------
    @abstractmethod
    def query_inputs(self, texts: Sequence[str]) -> dict[str, Any]:
        """Tokenise queries exactly as the model expects them (prefixes, augmentation tokens)."""

    @abstractmethod
    def page_inputs(self, pages: Sequence[Page]) -> dict[str, Any]:
        """Prepare pages (images, or text for text corpora) as model inputs."""

    @abstractmethod
    def forward_queries(self, inputs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (embeddings [B, T, D] L2-normalised, mask [B, T] bool)."""

    @abstractmethod
    def forward_pages(self, inputs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (embeddings [B, T, D] L2-normalised, mask [B, T] bool)."""

    @abstractmethod
    def trainable(self) -> Trainable:
        """The parts a recipe may train."""

    @abstractmethod
    def save(self, path: Path) -> None:
        """Write everything needed to rebuild this backbone with ``load_backbone(path)``."""

    @classmethod
    @abstractmethod
    def load(cls, path: Path) -> Backbone:
        """Rebuild a backbone written by ``save``."""

    # --- evaluation path ----------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @torch.inference_mode()
    def encode_queries(self, texts: Sequence[str], batch_size: int = 32) -> list[torch.Tensor]:
        return self._encode(texts, self.query_inputs, self.forward_queries, batch_size)

    @torch.inference_mode()
    def encode_pages(self, pages: Sequence[Page], batch_size: int = 8) -> list[torch.Tensor]:
        self.prefetch(pages)
        return self._encode(pages, self.page_inputs, self.forward_pages, batch_size)

    def ocr_stats(self) -> OcrStats | None:
        """OCR counters since the backbone was built; None for a backbone that never OCRs."""
        return None

    # --- states for recipes that bring their own heads (ColIntern) ------------------------------
    pages_through_encoder: ClassVar[bool] = False  # page_states pass through the encoder token_states runs

    @property
    def state_dim(self) -> int:
        """Width H of ``token_states``."""
        raise NotImplementedError(f"the {self.family} backbone exposes no token states")

    def token_states(self, inputs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Hidden states [B, T, H] of prepared query inputs (``query_inputs``, on the device) before any output
        projection, and their mask [B, T]; differentiable when grad is enabled."""
        raise NotImplementedError(f"the {self.family} backbone exposes no token states")

    def page_states(self, pages: Sequence[Page]) -> list[torch.Tensor]:
        """Per-page features [T_i, H'] (real tokens only) that a recipe's own head can project."""
        raise NotImplementedError(f"the {self.family} backbone exposes no page states")

    def prefetch(self, pages: Sequence[Page]) -> None:
        """Prepare all pages at once before batching (the OCR backbone OCRs them in parallel here)."""

    def _encode(self, items, prepare, forward, batch_size: int) -> list[torch.Tensor]:
        was_training = self.training
        self.eval()
        out: list[torch.Tensor] = []
        for start in range(0, len(items), batch_size):
            inputs = to_device(prepare(items[start : start + batch_size]), self.device)
            emb, mask = forward(inputs)
            out.extend(e[m].float().cpu() for e, m in zip(emb, mask, strict=True))
        self.train(was_training)
        return out

    def fingerprint(self) -> str:
        """A stable hash of family, config and every weight: the embedding cache's key."""
        h = hashlib.sha256(self.family.encode())
        h.update(json.dumps(self.config.model_dump(mode="json"), sort_keys=True).encode())
        for name, tensor in sorted(self.state_dict().items()):
            h.update(name.encode())
            h.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy())  # hashed in place, not copied
        return h.hexdigest()[:16]

    def describe(self) -> str:
        """A short human-readable tag, used in model names (e.g. ocr-text-pooled-all-MiniLM-L6-v2)."""
        return self.family


def to_device(inputs: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Every tensor of a model input dict on ``device``; other values as they are."""
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}


def write_backbone_file(path: Path, family: str, config: BackboneConfig) -> None:
    atomic_write_json(path / BACKBONE_FILE, {"family": family, "config": config.model_dump(mode="json")})
