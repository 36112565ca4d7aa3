"""Evaluation-time search strategies through mteb: identity, equality with exhaustive search where every page is a
candidate, candidate lists (within-document views), the CLI flag and the run-config field."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from conftest import write_beir
from harness.backbones import build_backbone
from harness.cli import main as cli_main
from harness.config import RunConfig
from harness.evaluate.runner import evaluate_model
from harness.evaluate.search import SearchSpec, SearchSpecError
from harness.retrieval.cache import EmbeddingCache
from models.base.model import load_model
from tasks.beir_folder import BeirFolderTask


def test_search_grammar() -> None:
    assert SearchSpec.parse("exhaustive").tag == ""
    assert SearchSpec.parse("binary-pooled") == SearchSpec("binary", "pooled", 10, 100)
    assert SearchSpec.parse("binary-multi:4@20").tag == "binary-multi-x4-k20"
    for bad in ("binary", "binary-pooled:0", "binary-mean", "binary-multi@0", "hnsw"):
        with pytest.raises(SearchSpecError, match="expected 'exhaustive'"):
            SearchSpec.parse(bad)
    with pytest.raises(ValidationError, match="searches"):
        RunConfig(backbones=[{"family": "ocr-text"}], tasks=["generated"], searches=["binary-pool"])


@pytest.fixture(scope="module")
def encoder():
    backbone = build_backbone("ocr-text", {"mode": "multi"})
    return load_model(backbone, cache=EmbeddingCache(Path("/nonexistent-never-written"), "x"))


def _runs(record: Path) -> dict:
    with gzip.open(record.with_suffix(".run.json.gz"), "rt") as f:
        return json.load(f)["default/test"]


def test_two_stage_with_every_page_a_candidate_equals_exhaustive(encoder, text_folder: Path, tmp_path: Path) -> None:
    encoder.cache = None
    task = BeirFolderTask(text_folder)
    [ex] = evaluate_model(encoder, [task], tmp_path, variant="base", backbone={"tag": "t"})
    # 3 results x ratio 5 = 15 candidates >= the corpus's 12 pages: the rerank sees every page
    for first in ("pooled", "multi"):
        [two] = evaluate_model(encoder, [task], tmp_path, variant="base", backbone={"tag": "t"},
                               search=SearchSpec.parse(f"binary-{first}:5@3"))
        assert two.record_path != ex.record_path and not two.reused  # its own identity, not the exhaustive result
        record = json.loads(two.record_path.read_text())
        assert record["search"] == f"binary-{first}-x5-k3" and record["revision"].endswith(f"binary-{first}-x5-k3")
        exhaustive, two_stage = _runs(ex.record_path), _runs(two.record_path)
        for qid, ranked in two_stage.items():
            top3 = sorted(exhaustive[qid].items(), key=lambda kv: -kv[1])[:3]
            assert [d for d, _ in sorted(ranked.items(), key=lambda kv: -kv[1])] == [d for d, _ in top3]
            for d, s in ranked.items():
                assert s == pytest.approx(exhaustive[qid][d], abs=1e-5)
    [again] = evaluate_model(encoder, [task], tmp_path, variant="base", backbone={"tag": "t"},
                             search=SearchSpec.parse("binary-multi:5@3"))
    assert again.reused


def test_candidate_lists_are_scored_in_full_by_every_strategy(encoder, tmp_path: Path) -> None:
    encoder.cache = None
    docs = [{"_id": f"d{i}", "text": t, "metadata": {"doc": i % 2}} for i, t in enumerate(
        ["red apples grow in Kent", "blue whales sing", "green tea from Shizuoka", "yellow taxis in New York"])]
    queries = {"q0": "where do apples grow", "q1": "tea region"}
    root = write_beir(tmp_path / "within", docs, queries, [("q0", "d0", 1), ("q1", "d2", 1)])
    lines = [json.loads(x) for x in (root / "queries.jsonl").read_text().splitlines()]
    for x in lines:
        x["metadata"] = {"doc": 0}
    (root / "queries.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    task = BeirFolderTask(root, candidates_by="doc")
    [ex] = evaluate_model(encoder, [task], tmp_path / "r", variant="base", backbone={"tag": "t"})
    [two] = evaluate_model(encoder, [task], tmp_path / "r", variant="base", backbone={"tag": "t"},
                           search=SearchSpec.parse("binary-pooled:1@1"))
    exhaustive, two_stage = _runs(ex.record_path), _runs(two.record_path)
    for qid in queries:
        assert set(two_stage[qid]) == {"d0", "d2"}  # the query's candidates, every one scored
        assert two_stage[qid] == pytest.approx(exhaustive[qid], abs=1e-5)


def test_cli_search_flag_writes_one_result_per_strategy(text_folder: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["eval", "--backbone", "ocr-text", "--task", str(text_folder), "--results", str(tmp_path),
                     "--search", "exhaustive", "--search", "binary-pooled:2@5", "--quiet"]) == 0
    lines = [x.split("\t") for x in capsys.readouterr().out.strip().splitlines()]
    assert len(lines) == 2 and lines[0][4] != lines[1][4] and "binary-pooled-x2-k5" in lines[1][4]


def test_leaderboard_rows_show_the_search(text_folder: Path, tmp_path: Path) -> None:
    from harness.report.results import collect

    assert cli_main(["eval", "--backbone", "ocr-text", "--task", str(text_folder), "--results", str(tmp_path),
                     "--search", "exhaustive", "--search", "binary-multi:2@5", "--quiet"]) == 0
    rows = sorted(e.row for e in collect(tmp_path))
    assert len(set(rows)) == 2 and any("[search=binary-multi-x2-k5]" in b for b, _ in rows)
