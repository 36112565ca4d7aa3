"""Embedding cache: one file per (backbone fingerprint, role, content hash).

mteb's CachedEmbeddingWrapper stores fixed-size vectors in one array per task; multi-vector outputs have a
different length per item, so this cache keeps each item's [T, D] matrix on its own, keyed by content
(the same page in two tasks is encoded once). Writes are atomic (temp file + rename), so an interrupted
run leaves no half-written entries.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from PIL import Image

from harness.backbones.ocr import image_hash
from harness.io import atomic_path


def content_key(role: str, *, text: str | None = None, image: Image.Image | None = None) -> str:
    h = hashlib.sha256(role.encode())
    if image is not None:
        h.update(b"image:" + image_hash(image).encode())
    if text is not None:
        h.update(b"text:" + text.encode("utf-8"))
    return h.hexdigest()


class EmbeddingCache:
    def __init__(self, root: Path, fingerprint: str) -> None:
        self.dir = Path(root) / fingerprint
        self.hits = 0
        self.misses = 0

    def _path(self, key: str) -> Path:
        return self.dir / key[:2] / f"{key}.pt"

    def get(self, key: str) -> torch.Tensor | None:
        path = self._path(key)
        if not path.is_file():
            self.misses += 1
            return None
        try:
            value = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # a damaged entry is re-encoded, never trusted
            self.misses += 1
            return None
        self.hits += 1
        return value

    def put(self, key: str, value: torch.Tensor) -> None:
        path = self._path(key)
        with atomic_path(path) as tmp:
            torch.save(value.detach().cpu().contiguous(), tmp)
