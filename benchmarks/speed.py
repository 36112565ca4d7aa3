"""Throughput of the default path: OCR pages/s, encode pages/s, first vs cached evaluation time.

Uses the offline generated task, a fresh cache folder, and prints figures; the ratio of first to cached
evaluation time (same process, same machine) is the stable figure on shared machines.

  python benchmarks/speed.py [--pages 40]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pages", type=int, default=40, help="pages for the OCR and encode figures")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="harness-bench-"))
    os.environ["HARNESS_CACHE"] = str(tmp / "cache")  # fresh caches: nothing is served from earlier runs

    import harness  # noqa: F401  (the torchvision fix runs before anything imports torchvision)

    # isort: split
    from PIL import Image

    from harness.backbones import Page, build_backbone
    from harness.backbones.ocr import TesseractOcr
    from harness.evaluate.runner import evaluate_model
    from harness.paths import cache_root
    from harness.retrieval.cache import EmbeddingCache
    from models.base.model import load_model
    from tasks.registry import generated_task

    task = generated_task()
    docs = list(task.data.corpus.values())[: args.pages]
    images = [Image.open(d["image"]).convert("RGB") for d in docs]
    ocr = TesseractOcr()
    t0 = time.perf_counter()
    texts = ocr(images)
    ocr_s = time.perf_counter() - t0
    print(f"OCR: {len(images)} pages in {ocr_s:.1f}s = {len(images) / ocr_s:.2f} pages/s "
          f"({ocr.workers} parallel Tesseract processes, {os.cpu_count()} cores)")

    pages = [Page(str(i), text=t) for i, t in enumerate(texts)]
    for mode in ("pooled", "multi"):
        backbone = build_backbone("ocr-text", {"mode": mode})
        backbone.encode_pages(pages[:2])  # warm-up
        t0 = time.perf_counter()
        backbone.encode_pages(pages)
        enc_s = time.perf_counter() - t0
        print(f"encode ({mode}, OCR text given): {len(pages) / enc_s:.2f} pages/s")

    backbone = build_backbone("ocr-text", {"mode": "pooled"})
    times = []
    for attempt in ("first", "cached"):
        encoder = load_model(backbone, cache=EmbeddingCache(cache_root() / "embeddings", backbone.fingerprint()))
        t0 = time.perf_counter()
        evaluate_model(encoder, [task], tmp / "results", variant="base", backbone={"tag": backbone.describe()},
                       overwrite=True)
        times.append(time.perf_counter() - t0)
        print(f"evaluation ({attempt}): {times[-1]:.1f}s, encoded {encoder.stats.encoded}, "
              f"from cache {encoder.stats.cached}")
    print(f"first / cached evaluation time: {times[0] / times[1]:.1f}x "
          f"({len(task.data.corpus)} pages, {len(task.data.queries)} queries; first run includes OCR)")


if __name__ == "__main__":
    main()
