"""Pages for generators and judges: loaded from a BEIR folder, and turned into text for text-only models.

Text-only models read a page as its own text or as Tesseract OCR of its image (``TesseractOcr`` caches by image
content hash, so each page is OCR'd once per machine). ``load_pages`` OCRs in chunks and keeps only the text
when the model cannot see images, so a corpus of large page images never sits in memory at once.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image

from harness.backbones.base import Page
from harness.data.beir import BeirFolder


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
