"""Leaderboard identities and costs: rows keyed by what was evaluated, the history plot's lines, OCR as its own cost.

Each test here failed on the code before issue 12's fixes (see notes/issue12_identities.md)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from conftest import FACTS, render_page, write_beir
from harness.backbones import build_backbone
from harness.evaluate.runner import evaluate_model
from harness.report import board as board_module
from harness.report.costs import row_costs
from harness.report.plots import history_series
from harness.report.results import collect
from models.base.model import load_model
from tasks.beir_folder import BeirFolderTask

TAG = "ocr-text-pooled-all-MiniLM-L6-v2"


def _result(results: Path, revision: str, task: str, score: float, config: dict, date: str) -> None:
    """An MTEB result file and the run record the runner writes beside it (the parts the report reads)."""
    model = f"base/{TAG}"
    mteb_file = results / "mteb" / "results" / f"base__{TAG}" / revision / f"{task}.json"
    mteb_file.parent.mkdir(parents=True, exist_ok=True)
    mteb_file.write_text(json.dumps({
        "dataset_revision": "local-0", "task_name": task, "mteb_version": "2.26.24", "evaluation_time": 1.0,
        "kg_co2_emissions": None, "date": 1.7e9,
        "scores": {"test": [{"main_score": score, "ndcg_at_10": score, "hf_subset": "default",
                             "languages": ["eng-Latn"]}]}}))
    record = {"model": model, "revision": revision, "variant": "base", "task": task, "main_score_name": "ndcg_at_10",
              "backbone": {"family": "ocr-text", "tag": TAG, "config": config}, "date": date, "training": None,
              "per_query": {"default/test": {"ndcg_at_10": {"q1": score}}}}
    run_file = results / "runs" / f"base__{TAG}" / revision / f"{task}.json"
    run_file.parent.mkdir(parents=True, exist_ok=True)
    run_file.write_text(json.dumps(record))


def test_two_configurations_of_one_backbone_are_two_rows(tmp_path: Path) -> None:
    # The same backbone and variant, two settings: max_chunks 1 (SciFact-style truncation) and every chunk.
    truncated = {"mode": "pooled", "max_chunks": 1, "chunk_tokens": 256, "ocr_workers": None}
    every = {"mode": "pooled", "max_chunks": None, "chunk_tokens": 256, "ocr_workers": None}
    _result(tmp_path, "rev1", "ScifactRetrieval", 0.64, truncated, "2026-01-01T00:00:00+00:00")
    _result(tmp_path, "rev2", "PagesRetrieval", 0.80, every, "2026-01-02T00:00:00+00:00")
    board = board_module.build(collect(tmp_path), n_permutations=100, n_boot=100)
    rows = sorted(board.table.backbone)
    assert len(rows) == 2
    assert rows == sorted([TAG, f"{TAG} [max_chunks=1]"])  # the non-default setting is in the name
    by_row = board.table.set_index("backbone")
    assert math.isnan(by_row.loc[TAG, "ScifactRetrieval"]) and by_row.loc[TAG, "PagesRetrieval"] == 0.80
    assert by_row.loc[f"{TAG} [max_chunks=1]", "ScifactRetrieval"] == 0.64


def test_history_has_one_line_per_row_and_task(tmp_path: Path) -> None:
    config = {"mode": "pooled"}
    _result(tmp_path, "rev1", "PagesRetrieval", 0.2, config, "2026-01-01T00:00:00+00:00")
    _result(tmp_path, "rev1", "ScifactRetrieval", 0.8, config, "2026-01-01T00:00:00+00:00")
    _result(tmp_path, "rev2", "ScifactRetrieval", 0.8, config, "2026-01-02T00:00:00+00:00")
    board = board_module.build(collect(tmp_path), n_permutations=100, n_boot=100)
    series = history_series(board)
    # a page task's score and a SciFact score are never averaged into one point
    assert {label: [score for _, score in points] for label, points in series.items()} == {
        f"base / {TAG} / PagesRetrieval": [20.0], f"base / {TAG} / ScifactRetrieval": [80.0, 80.0]}


def test_ocr_is_a_cost_of_its_own_the_same_cached_or_not(tmp_path: Path) -> None:
    root = tmp_path / "ocrcost"
    (root / "pages").mkdir(parents=True)
    docs = []
    for i, (fact, _) in enumerate(FACTS[:4]):  # pages no other test renders: this test's first OCR is uncached
        render_page(f"Ledger {i}: {fact}", root / "pages" / f"p{i}.png")
        docs.append({"_id": f"p{i}", "image": f"pages/p{i}.png"})
    queries = {f"q{i}": q for i, (_, q) in enumerate(FACTS[:4])}
    write_beir(root, docs, queries, [(f"q{i}", f"p{i}", 1) for i in range(4)])
    task = BeirFolderTask(root)
    results = tmp_path / "results"
    records = []
    for mode in ("pooled", "multi"):  # the second backbone finds every page's OCR in the cache
        encoder = load_model(build_backbone("ocr-text", {"mode": mode}))
        [outcome] = evaluate_model(encoder, [task], results, variant="base", backbone={"tag": mode})
        records.append(json.loads(outcome.record_path.read_text()))
    first, second = (r["ocr"] for r in records)
    assert (first["pages_ocred"], second["pages_ocred"]) == (4, 0)
    assert first["pages"] == second["pages"] == 4
    assert first["seconds"] == second["seconds"] > 0  # the recorded Tesseract time, cached or not
    # encode time is the encoder's own: the OCR of the first run (about a second a page) is not in it
    assert records[0]["timings"]["encode_s"]["document"] < first["wall_s"]
    entries = collect(results)
    costs = [row_costs([e], entries) for e in sorted(entries, key=lambda e: e.record["backbone"]["tag"])]
    assert costs[0]["ocr_ms_per_page"] == costs[1]["ocr_ms_per_page"] == 1000 * first["seconds"] / 4
    assert all(c["encode_ms_per_page"] < c["ocr_ms_per_page"] for c in costs)
    from harness.report import board as board_mod
    from harness.report.render import cost_grid, fmt_number

    header, rows = cost_grid(board_mod.build(entries))
    column = header.index("OCR ms/page")  # the printed cost table shows it, for both rows alike
    assert [r[column][0] for r in rows] == [fmt_number(costs[0]["ocr_ms_per_page"])] * 2
