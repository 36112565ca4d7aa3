"""Tesseract OCR of page images, parallel across processes, cached on disk by image content hash.

Tesseract runs one process per page with OMP_THREAD_LIMIT=1: its own OpenMP threading makes a single page
about 6x slower on small machines, and independent pages parallelise perfectly. The cache keeps each page's
Tesseract seconds beside its text, so OCR is a cost that reads the same whether a page ran now or earlier.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image

from harness.backbones.base import OcrStats, Page
from harness.io import atomic_write_text
from harness.paths import cache_root
from harness.progress import ProgressBar

log = logging.getLogger(__name__)


class OcrError(RuntimeError):
    pass


PROGRESS_MIN_PAGES = 64  # smaller calls (the evaluation's batches) show under the encoding bar instead


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
        self.stats = OcrStats()  # counters over every call (see OcrStats)

    def __call__(self, images: Sequence[Image.Image | Callable[[], Image.Image]]) -> list[str]:
        """Texts of the page images; an item may be a loader (decoded when needed, one at a time)."""
        started = time.perf_counter()

        def image(i: int) -> Image.Image:
            item = images[i]
            return item if isinstance(item, Image.Image) else item()

        keys = [image_hash(image(i)) for i in range(len(images))]
        entries: list[tuple[str, float | None] | None] = [self._cached(k) for k in keys]
        todo = [i for i, e in enumerate(entries) if e is None]
        if todo:
            # Threads only feed subprocesses: the OCR work itself runs in separate Tesseract processes.
            bar = ProgressBar(len(todo) >= PROGRESS_MIN_PAGES, "OCR (Tesseract)", len(todo))
            with ThreadPoolExecutor(self.workers) as pool:
                for i, entry in zip(todo, pool.map(lambda i: self._run(image(i)), todo), strict=True):
                    self._store(keys[i], *entry)
                    entries[i] = entry
                    bar.advance()
            bar.close()
        known = [e[1] for e in entries if e is not None and e[1] is not None]
        s = self.stats
        self.stats = OcrStats(s.pages + len(images), s.pages_ocred + len(todo), s.timed_pages + len(known),
                              s.seconds + sum(known), s.wall_s + time.perf_counter() - started)
        return [e[0] if e else "" for e in entries]

    @property
    def pages_ocred(self) -> int:  # pages that ran Tesseract (not served from the cache)
        return self.stats.pages_ocred

    def _path(self, key: str, suffix: str = ".json") -> Path:
        return self.cache_dir / key[:2] / f"{key}{suffix}"

    def _cached(self, key: str) -> tuple[str, float | None] | None:
        """(text, Tesseract seconds) from the cache; a text cached before times were kept has no seconds."""
        path = self._path(key)
        if path.is_file():
            try:
                entry = json.loads(path.read_text(encoding="utf-8"))
                return str(entry["text"]), float(entry["seconds"])
            except (ValueError, KeyError, TypeError):
                log.warning("ignoring a damaged OCR cache entry %s", path)
                return None
        legacy = self._path(key, ".txt")
        return (legacy.read_text(encoding="utf-8"), None) if legacy.is_file() else None

    def _store(self, key: str, text: str, seconds: float) -> None:
        atomic_write_text(self._path(key), json.dumps({"text": text, "seconds": seconds}))

    def _run(self, image: Image.Image) -> tuple[str, float]:
        """The page's text and the seconds its Tesseract process took."""
        started = time.perf_counter()
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
        # rounded as the cache keeps it, so a page counts the same time whether it ran now or is read back
        return done.stdout.decode("utf-8", errors="replace").strip(), round(time.perf_counter() - started, 4)


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

    def ocr_stats(self) -> OcrStats | None:
        """OCR counters (``OcrStats``); all zero until the first image, without starting Tesseract."""
        return self._ocr.stats if self._ocr is not None else OcrStats()

    def prefetch(self, pages: Sequence[Page]) -> None:
        """One parallel OCR pass over every page image (cached), instead of small batches that leave cores idle."""
        images = [page_image_loader(p) for p in pages if p.has_image]
        if images:
            self.ocr(images)

    def page_texts(self, pages: Sequence[Page]) -> list[str]:
        need_ocr = [i for i, p in enumerate(pages) if p.has_image]
        # loaders, not images: a page is decoded when its turn comes, not the whole list at once
        ocr_texts = dict(zip(need_ocr, self.ocr([page_image_loader(pages[i]) for i in need_ocr]), strict=True)) \
            if need_ocr else {}
        return ["\n".join(t for t in (page.text or "", ocr_texts.get(i, "")) if t.strip())
                for i, page in enumerate(pages)]


def page_image_loader(page: Page) -> Image.Image | Callable[[], Image.Image]:
    """A page's decoded image as it is, or a loader for an image that opens at use."""
    return page.image if page.image_path is None else (lambda: page.image)  # type: ignore[return-value]
