"""The generated offline task: a seeded world of fictional entities, rendered as document pages (BEIR folder).

Every entity (company, city, species) has invented facts per year. Pages show a subset of those facts in
one of five layouts (prose, table, bar chart, line chart, form); each page records exactly which facts it
displays, and the qrels come from that record, never from OCR. Queries ask for one fact, so a query that
names entity + metric + year is answered by the page(s) displaying that fact, while the entity's other pages
and other entities' pages for the same year are near misses.

    generate(GeneratedConfig(seed=0), Path("cache/generated"))   # ~60 pages, ~120 queries

Writes `corpus.jsonl` (image-only: empty title/text, `image` is a relative path), `pages/<id>.png`,
`queries.jsonl`, `qrels/test.tsv` and `generator.json` (parameters, version, sha256 of the files).

Parts: config.py (``GeneratedConfig``), world.py (entities and their facts), layouts.py (page plans and drawing),
queries.py (queries and their relevant pages); this module writes and verifies the folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

import matplotlib
import numpy as np
import PIL
from PIL import Image

from tasks import render
from tasks.generated.config import DRAW_WIDTH, GENERATOR_VERSION, LAYOUTS, PAGES_PER_ENTITY, GeneratedConfig
from tasks.generated.layouts import PagePlan, plan_pages
from tasks.generated.queries import Query, make_queries
from tasks.generated.world import KINDS, Entity, Fact, build_world

__all__ = ["DRAW_WIDTH", "GENERATOR_VERSION", "KINDS", "LAYOUTS", "PAGES_PER_ENTITY", "Entity", "Fact",
           "GeneratedConfig", "PagePlan", "Query", "generate", "verify"]


def _params(config: GeneratedConfig) -> dict:
    d = asdict(config)
    return {**d, "years": list(d["years"]), "page_size": list(d["page_size"])}


def _digest(folder: Path) -> str:
    """sha256 over every file but generator.json, by relative path and content."""
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "generator.json"):
        h.update(path.relative_to(folder).as_posix().encode() + b"\0")
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def _read_manifest(folder: Path) -> dict | None:
    try:
        return json.loads((folder / "generator.json").read_text())
    except (OSError, ValueError):
        return None


def _is_current(config: GeneratedConfig, folder: Path) -> bool:
    m = _read_manifest(folder)
    return m is not None and m.get("version") == GENERATOR_VERSION and m.get("params") == _params(config)


def verify(folder: Path) -> bool:
    """True when the folder's files still match the sha256 its generator.json recorded."""
    m = _read_manifest(Path(folder))
    return m is not None and m.get("sha256") == _digest(Path(folder))


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def _build(config: GeneratedConfig, out: Path) -> None:
    rng = random.Random(config.seed)
    world = build_world(config, rng)
    plans = plan_pages(config, world, rng)
    queries = make_queries(config, world, plans, rng)
    (out / "pages").mkdir()
    corpus = []
    w, h = config.page_size
    canvas = (DRAW_WIDTH, round(DRAW_WIDTH * h / w))  # same aspect, fixed width: one layout for every size
    for i, p in enumerate(plans):
        page = render.Page(canvas, p.style)
        p.draw(page)
        if page.y > canvas[1] - 70:  # a layout bug, not bad input: never write a page with clipped facts
            raise RuntimeError(f"page {p.id} ({p.layout}) overflows a {canvas} page")
        page.footer(f"{p.entity.kind.source.removeprefix('the ')} - {p.entity.kind.report.lower()}")
        img = page.img if canvas == (w, h) else page.img.resize((w, h), Image.Resampling.LANCZOS)
        img = render.scan(img, np.random.default_rng([config.seed, i]), config.noise)
        (out / "pages" / f"{p.id}.png").write_bytes(render.png_bytes(img))
        corpus.append({"_id": p.id, "title": "", "text": "", "image": f"pages/{p.id}.png", "metadata": {
            "entity": p.entity.name, "entity_kind": p.entity.kind.name,
            "year": p.years[0] if len(p.years) == 1 else None, "years": list(p.years),
            "metrics": [p.entity.metric(k).label for k in p.metrics], "layout": p.layout}})
    _jsonl(out / "corpus.jsonl", corpus)
    _jsonl(out / "queries.jsonl", [{"_id": q.id, "text": q.text, "metadata": {
        "kind": q.kind, "answer": q.answer, "entity": q.entity.name,
        "metric": q.entity.metric(q.metric).label if q.metric else None, "year": q.year}} for q in queries])
    (out / "qrels").mkdir()
    qrels = [f"{q.id}\t{pid}\t1\n" for q in queries for pid in q.relevant]
    (out / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(qrels))
    manifest = {"generator": "tasks.generated", "version": GENERATOR_VERSION, "params": _params(config),
                "counts": {"pages": len(plans), "queries": len(queries), "qrels": len(qrels)},
                "sha256": _digest(out),
                # Informational: PNG bytes depend on these (FreeType via Pillow, Agg via matplotlib).
                "environment": {"python": sys.version.split()[0], "pillow": PIL.__version__,
                                "matplotlib": matplotlib.__version__, "numpy": np.__version__}}
    (out / "generator.json").write_text(json.dumps(manifest, indent=2) + "\n")  # last: marks the folder done


def generate(config: GeneratedConfig, out_dir: Path | str) -> Path:
    """Write the task to out_dir atomically; an out_dir already generated with the same config is reused."""
    out_dir = Path(out_dir)
    if _is_current(config, out_dir):
        return out_dir
    if out_dir.exists() and any(out_dir.iterdir()) and _read_manifest(out_dir) is None:
        raise FileExistsError(f"{out_dir} is not empty and holds no generator.json: refusing to replace it")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        _build(config, tmp)
        if out_dir.exists():  # an older version or other parameters: move it aside, then swap in
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".old", dir=out_dir.parent))
            os.replace(out_dir, old / "x")
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            try:
                os.replace(tmp, out_dir)
            except OSError:
                if not _is_current(config, out_dir):  # lost a race to another writer with other params
                    raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir
