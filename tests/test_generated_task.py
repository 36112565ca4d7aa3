"""The generated offline task: determinism, folder format, exact qrels, distractors, caching, OCR."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image

from tasks.generated import GeneratedConfig, generate, verify

# Small enough to generate in a few seconds: 4 entities (two companies) x 5 layouts = 20 pages.
CFG = GeneratedConfig(seed=3, n_entities=4, years=(2019, 2020, 2021, 2022))


def _hashes(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _qrels(folder: Path) -> dict[str, set[str]]:
    lines = (folder / "qrels" / "test.tsv").read_text().splitlines()
    assert lines[0] == "query-id\tcorpus-id\tscore"
    rel: dict[str, set[str]] = {}
    for line in lines[1:]:
        q, d, score = line.split("\t")
        assert score == "1"
        rel.setdefault(q, set()).add(d)
    return rel


@pytest.fixture(scope="session")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate(CFG, tmp_path_factory.mktemp("generated") / "small")


def test_default_size() -> None:
    assert GeneratedConfig().n_pages == 60


def test_invalid_config_names_the_field() -> None:
    with pytest.raises(ValueError, match="noise"):
        GeneratedConfig(noise=2.0)
    with pytest.raises(ValueError, match="years"):
        GeneratedConfig(years=(2020,))


def test_same_seed_gives_identical_bytes(small: Path, tmp_path: Path) -> None:
    again = generate(CFG, tmp_path / "again")
    assert _hashes(again) == _hashes(small)
    assert verify(small)


def test_other_seed_differs_and_replaces_a_stale_folder(small: Path, tmp_path: Path) -> None:
    stale = tmp_path / "out"
    shutil.copytree(small, stale)
    generate(replace(CFG, seed=4), stale)
    assert json.loads((stale / "generator.json").read_text())["params"]["seed"] == 4
    assert (stale / "queries.jsonl").read_bytes() != (small / "queries.jsonl").read_bytes()
    assert (stale / "pages" / "p0001.png").read_bytes() != (small / "pages" / "p0001.png").read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary folders left behind


def test_refuses_to_replace_a_foreign_folder(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("not a generated task")
    with pytest.raises(FileExistsError):
        generate(CFG, tmp_path / "mine")


def test_second_call_reuses_the_folder(small: Path) -> None:
    before = {p: p.stat().st_mtime_ns for p in small.rglob("*")}
    assert generate(CFG, small) == small
    assert {p: p.stat().st_mtime_ns for p in small.rglob("*")} == before


def test_beir_folder_format(small: Path) -> None:
    corpus, queries, rel = _jsonl(small / "corpus.jsonl"), _jsonl(small / "queries.jsonl"), _qrels(small)
    manifest = json.loads((small / "generator.json").read_text())
    assert manifest["counts"] == {"pages": CFG.n_pages, "queries": len(queries),
                                  "qrels": sum(map(len, rel.values()))}
    assert len(queries) == CFG.n_pages * CFG.queries_per_page
    doc_ids, query_ids = {d["_id"] for d in corpus}, {q["_id"] for q in queries}
    assert set(rel) == query_ids  # every query has at least one relevant page
    assert set().union(*rel.values()) <= doc_ids
    assert {d["metadata"]["layout"] for d in corpus} == {"prose", "table", "bar", "line", "form"}
    assert len({q["text"] for q in queries}) == len(queries)
    for d in corpus:
        assert d["image"] == f"pages/{d['_id']}.png"
        with Image.open(small / d["image"]) as im:
            assert im.size == CFG.page_size
            im.load()


def test_qrels_follow_the_displayed_facts(small: Path) -> None:
    """A fact query is relevant to every page showing its entity, metric and year (prose: also last year)."""
    corpus = {d["_id"]: d["metadata"] for d in _jsonl(small / "corpus.jsonl")}
    rel = _qrels(small)
    for q in _jsonl(small / "queries.jsonl"):
        m = q["metadata"]
        if m["kind"] != "fact":
            continue
        shows = {i for i, d in corpus.items()
                 if d["entity"] == m["entity"] and m["metric"] in d["metrics"] and m["year"] in d["years"]}
        assert shows <= rel[q["_id"]]
        assert all(corpus[i]["layout"] == "prose" for i in rel[q["_id"]] - shows)


def test_hard_distractors(small: Path) -> None:
    corpus = {d["_id"]: d["metadata"] for d in _jsonl(small / "corpus.jsonl")}
    rel = _qrels(small)
    facts = [q for q in _jsonl(small / "queries.jsonl") if q["metadata"]["kind"] == "fact"]
    assert facts
    nearest = 0
    for q in facts:
        m, others = q["metadata"], [corpus[i] for i in corpus if i not in rel[q["_id"]]]
        assert any(d["entity"] == m["entity"] for d in others)  # same entity, other year or metric
        assert any(d["entity"] != m["entity"] and m["year"] in d["years"] for d in others)  # same year
        # same year and metric, another entity of the same kind: the nearest miss
        nearest += any(d["entity"] != m["entity"] and m["year"] in d["years"] and m["metric"] in d["metrics"]
                       for d in others)
    assert nearest > 0


def _norm(s: str) -> str:
    return re.sub(r"[^0-9a-z]", "", s.lower())


def test_pages_are_legible_to_ocr(small: Path) -> None:
    tesseract = shutil.which("tesseract")
    if tesseract is None:
        pytest.skip("tesseract is not installed")
    corpus = _jsonl(small / "corpus.jsonl")
    queries, rel = _jsonl(small / "queries.jsonl"), _qrels(small)
    env = {**os.environ, "OMP_THREAD_LIMIT": "1"}
    for layout in ("prose", "table", "form"):
        doc = next(d for d in corpus if d["metadata"]["layout"] == layout)
        # numbers this page shows, from the generator's own facts (query answers), never from OCR
        numbers = [q["metadata"]["answer"].split()[0] for q in queries
                   if doc["_id"] in rel[q["_id"]] and q["metadata"]["kind"] in ("fact", "registry")]
        assert numbers, layout
        out = subprocess.run([tesseract, str(small / doc["image"]), "stdout"], env=env, capture_output=True,
                             text=True, timeout=120, check=True).stdout
        assert _norm(doc["metadata"]["entity"]) in _norm(out), (layout, out)
        assert any(_norm(n) in _norm(out) for n in numbers), (layout, numbers, out)
