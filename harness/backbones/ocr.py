"""Tesseract OCR of page images, parallel across processes, cached on disk by image content hash.

Tesseract runs one process per page with OMP_THREAD_LIMIT=1: its own OpenMP threading makes a single page
about 6x slower on small machines, and independent pages parallelise perfectly.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import shutil
import subprocess
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image

from harness.backbones.base import Page
from harness.paths import cache_root

log = logging.getLogger(__name__)


class OcrError(RuntimeError):
    pass


def image_hash(image: Image.Image) -> str:
    """Content hash of the decoded pixels (the same page hashes the same whatever file it came from)."""
    h = hashlib.sha256(f"{image.mode}:{image.size}".encode())
    h.update(image.tobytes())
    return h.hexdigest()


class TesseractOcr:
    def __init__(self, lang: str = "eng", psm: int = 3, workers: int | None = None,
                 cache_dir: Path | None = None, timeout_s: float = 120.0) -> None:
        self.exe = shutil.which("tesseract")
        if self.exe is None:
            raise OcrError("tesseract is not installed: run scripts/setup.sh, or "
                           "`apt-get install tesseract-ocr tesseract-ocr-eng` (Debian/Ubuntu)")
        self.lang, self.psm, self.timeout_s = lang, psm, timeout_s
        self.workers = workers or os.cpu_count() or 1
        self.cache_dir = (cache_dir or cache_root() / "ocr") / f"{lang}-psm{psm}"
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.pages_ocred = 0  # pages that ran Tesseract (not served from the cache)

    def __call__(self, images: Sequence[Image.Image]) -> list[str]:
        keys = [image_hash(im) for im in images]
        texts: list[str | None] = [self._cached(k) for k in keys]
        todo = [i for i, t in enumerate(texts) if t is None]
        if todo:
            # Threads only feed subprocesses: the OCR work itself runs in separate Tesseract processes.
            with ThreadPoolExecutor(self.workers) as pool:
                for i, text in zip(todo, pool.map(lambda i: self._run(images[i]), todo), strict=True):
                    self._store(keys[i], text)
                    texts[i] = text
            self.pages_ocred += len(todo)
        return [t or "" for t in texts]

    def _path(self, key: str) -> Path:
        return self.cache_dir / key[:2] / f"{key}.txt"

    def _cached(self, key: str) -> str | None:
        path = self._path(key)
        return path.read_text(encoding="utf-8") if path.is_file() else None

    def _store(self, key: str, text: str) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)

    def _run(self, image: Image.Image) -> str:
        buf = io.BytesIO()
        image.convert("RGB").save(buf, format="PNG")
        env = {**os.environ, "OMP_THREAD_LIMIT": "1"}
        cmd = [self.exe, "stdin", "stdout", "-l", self.lang, "--psm", str(self.psm)]
        try:
            done = subprocess.run(cmd, input=buf.getvalue(), capture_output=True, env=env,
                                  timeout=self.timeout_s, check=False)
        except subprocess.TimeoutExpired as exc:
            raise OcrError(f"tesseract timed out after {self.timeout_s}s on a {image.size} page") from exc
        if done.returncode != 0:
            raise OcrError(f"tesseract failed ({done.returncode}): {done.stderr.decode(errors='replace')[-500:]}")
        return done.stdout.decode("utf-8", errors="replace").strip()


class OcrPages:
    """Page text for backbones that read pages as text: the page's own text, then its image's Tesseract OCR (cached),
    all images OCRed at once. Needs ``config.ocr_lang``, ``ocr_psm`` and ``ocr_workers``; Tesseract starts on the
    first image, so text corpora never need it."""

    _ocr: TesseractOcr | None = None

    @property
    def ocr(self) -> TesseractOcr:
        if self._ocr is None:
            c = self.config  # type: ignore[attr-defined]
            self._ocr = TesseractOcr(lang=c.ocr_lang, psm=c.ocr_psm, workers=c.ocr_workers)
        return self._ocr

    def page_texts(self, pages: Sequence[Page]) -> list[str]:
        need_ocr = [i for i, p in enumerate(pages) if p.image is not None]
        ocr_texts = dict(zip(need_ocr, self.ocr([pages[i].image for i in need_ocr]), strict=True)) \
            if need_ocr else {}
        return ["\n".join(t for t in (page.text or "", ocr_texts.get(i, "")) if t.strip())
                for i, page in enumerate(pages)]
