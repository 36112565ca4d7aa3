"""Where the harness keeps caches (OCR text, embeddings, generated tasks). Override with HARNESS_CACHE."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    return Path(os.environ.get("HARNESS_CACHE", Path.cwd() / "cache")).resolve()
