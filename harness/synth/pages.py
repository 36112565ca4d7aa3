"""Pages for generators and judges: loaded from a BEIR folder, and turned into text for text-only models.

Text-only models read a page as its own text or as Tesseract OCR of its image (``TesseractOcr`` caches by image
content hash, so each page is OCR'd once per machine). ``load_pages`` OCRs in chunks and keeps only the text
when the model cannot see images, so a corpus of large page images never sits in memory at once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image

from harness.backbones.base import Page
from harness.data.beir import BeirFolder

log = logging.getLogger(__name__)


class PageError(ValueError):
    pass


@dataclass
class OcrPage(Page):
    """A page whose ``text`` came from OCR of its image (recorded as page mode "ocr", not "text")."""

    text_source: str = "ocr"


class PageText:
    """Page -> (text, mode) for text-only models; the caller truncates with its own tokenizer."""

    def __init__(self, max_page_tokens: int = 512) -> None:
        self.max_page_tokens = max_page_tokens
        self._ocr: Any = None
        self._texts: dict[tuple[str, Any], str] = {}

    @staticmethod
    def _key(page: Page) -> tuple[str, Any]:
        return (page.id, page.image.size if page.image is not None else None)

    def ocr(self, images: Sequence[Image.Image]) -> list[str]:
        if self._ocr is None:
            from harness.backbones.ocr import TesseractOcr

            self._ocr = TesseractOcr()
        return self._ocr(images)

    def prepare(self, pages: Sequence[Page]) -> None:
        """OCR every page that needs it at once (Tesseract runs one process per page, in parallel)."""
        todo = [p for p in pages
                if not (p.text or "").strip() and p.image is not None and self._key(p) not in self._texts]
        if todo:
            for page, text in zip(todo, self.ocr([p.image for p in todo]), strict=True):
                self._texts[self._key(page)] = text

    def text(self, page: Page) -> tuple[str, str]:
        """(text, mode): mode "text" for a page's own text, "ocr" for text read from its image."""
        if (page.text or "").strip():
            return page.text.strip(), getattr(page, "text_source", "text")
        if page.image is None:
            raise PageError(f"page {page.id!r} has neither text nor image")
        self.prepare([page])
        return self._texts[self._key(page)], "ocr"


def load_pages(folder: BeirFolder, ids: Iterable[str] | None = None, *, images: bool,
               chunk: int = 32) -> list[Page]:
    """Pages of a BEIR folder. ``images=False`` (text-only models): pages with images become OCR text pages."""
    ids = list(folder.corpus) if ids is None else list(ids)
    unknown = [i for i in ids if i not in folder.corpus]
    if unknown:
        raise PageError(f"{folder.root}: unknown corpus id(s) {unknown[:5]}")
    pages: list[Page] = []
    texts = PageText()
    for start in range(0, len(ids), chunk):
        batch = []
        for doc_id in ids[start:start + chunk]:
            doc = folder.corpus[doc_id]
            text = "\n".join(t for t in (doc.get("title"), doc.get("text")) if t) or None
            image = None
            if doc.get("image"):
                with Image.open(doc["image"]) as im:
                    image = im.convert("RGB")
            batch.append(Page(id=doc_id, image=image, text=text))
        if not images:
            need = [p for p in batch if not p.text and p.image is not None]
            for page, ocr in zip(need, texts.ocr([p.image for p in need]), strict=True):
                page.text = ocr
            ocred = {id(p) for p in need}  # by identity: Page equality would compare the images' pixels
            batch = [OcrPage(id=p.id, text=p.text) if id(p) in ocred else Page(id=p.id, text=p.text) for p in batch]
        pages.extend(batch)
    return pages


class Checked(list):
    """Items whose pages were checked readable (the judges then skip the check)."""

    _readable = True


def readable(backend: Any, pages: Sequence[Page]) -> tuple[list[Page], list[str]]:
    """(pages the backend can read, ids of the others). A text-only model cannot read a page whose own text and OCR
    text are both empty (a picture-only slide): such pages are skipped and counted, not an error."""
    backend.prepare(pages)
    texts = getattr(backend, "pages", None)
    keep, skipped = [], []
    for page in pages:
        if backend.sees_images and page.image is not None:
            keep.append(page)
            continue
        text = (page.text or "").strip()
        if not text and page.image is not None:
            # a backend without the shared page-text helper reads images its own way: trust it
            text = texts.text(page)[0].strip() if texts is not None else "image"
        if text:
            keep.append(page)
        else:
            skipped.append(page.id)
    if skipped:
        log.warning("%d page(s) without readable text skipped (e.g. %s)", len(skipped), ", ".join(skipped[:3]))
    return keep, skipped


def judge_readable(backend: Any, items: Sequence[Any], fn: Callable[[list[Any]], tuple[list[Any], Any]],
                    pages_of: Callable[[Any], list[Page]]) -> tuple[list[Any], Any]:
    """Run ``fn`` on the items whose pages the backend can read; the others get None, counted as skipped_no_text."""
    _, skipped = readable(backend, [p for it in items for p in pages_of(it)])
    bad = set(skipped)
    ok = [i for i, it in enumerate(items) if not any(p.id in bad for p in pages_of(it))]
    values, report = fn(Checked(items[i] for i in ok))
    out: list[Any] = [None] * len(items)
    for i, v in zip(ok, values, strict=True):
        out[i] = v
    if len(ok) < len(items):
        report.notes["skipped_no_text"] = len(items) - len(ok)
    return out, report
