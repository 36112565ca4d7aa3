"""The leaderboard's answer tables in every output (terminal, Markdown, LaTeX, HTML) from hand-built answer records
whose numbers are known; a results folder without answer records renders exactly as before (no empty section)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rich.console import Console

from harness.report import answers as answer_rows
from harness.report import board as board_mod
from harness.report import html, leaderboard, render
from harness.report.results import collect

TASK, TAG = "LocalSetRetrieval", "scripted-1234abcd"


def write_retrieval(results: Path, variant: str, backbone: str, scores: list[float]) -> None:
    """An MTEB result file and its run record (per-query nDCG@5) for one row on TASK."""
    mteb_file = results / "mteb" / "results" / f"{variant}__{backbone}" / "r1" / f"{TASK}.json"
    mteb_file.parent.mkdir(parents=True, exist_ok=True)
    mean = float(np.mean(scores))
    mteb_file.write_text(json.dumps({
        "dataset_revision": "local", "task_name": TASK, "mteb_version": "2.26.24", "evaluation_time": 5.0,
        "scores": {"test": [{"main_score": mean, "ndcg_at_5": mean, "hf_subset": "default", "languages": ["eng"]}]},
        "kg_co2_emissions": None, "date": 1.7e9, "evaluation_phases": []}))
    record = {"model": f"{variant}/{backbone}", "revision": "r1", "variant": variant,
              "backbone": {"family": "tiny", "tag": backbone, "config": {}}, "task": TASK,
              "main_score_name": "ndcg_at_5", "date": "2026-01-01T00:00:00+00:00", "training": None,
              "timings": {"evaluation_s": 5.0, "encode_s": {"query": 0.4, "document": 2.0}},
              "encoded": {"query": 40, "document": 20}, "cached": {"query": 0, "document": 0},
              "index": {"documents": 20, "vectors": 20, "bytes": 20480},
              "per_query": {"default/test": {"ndcg_at_5": {f"q{i}": s for i, s in enumerate(scores)}}}}
    (results / "runs" / f"{variant}__{backbone}" / "r1").mkdir(parents=True, exist_ok=True)
    (results / "runs" / f"{variant}__{backbone}" / "r1" / f"{TASK}.json").write_text(json.dumps(record))


def write_answers(results: Path, backbone: str, variant: str, k: int | str, anls: list[float], *,
                  task: str = TASK, seconds: float = 1.5, rss_mb: float = 1234.0) -> None:
    """An answer record as harness.answers.evaluate writes it; EM = ANLS == 1, F1 = ANLS here."""
    per_query = {f"q{i}": {"em": float(a == 1.0), "f1": a, "anls": a, "recall": 1.0, "answer": "x",
                           "references": ["x"], "pages": [], "seconds": seconds, "n_prompt_tokens": 240,
                           "cached": False} for i, a in enumerate(anls)}
    n = len(anls)
    scores = {m: round(sum(q[m] for q in per_query.values()) / n, 4) for m in ("em", "f1", "anls")}
    model = variant if backbone == "-" else f"{variant}/{backbone}"
    record = {"model": model, "revision": TAG, "task": task, "backbone": backbone, "variant": variant, "k": k,
              "answerer": {"kind": "scripted", "model": "gemma-test"}, "answerer_tag": TAG, "queries": n,
              "scores": {**scores, "recall": 1.0}, "per_query": per_query,
              "cost": {"wall_s": seconds * n, "calls": n, "seconds_per_query": seconds,
                       "prompt_tokens_per_query": 240.0, "peak_rss_mb": rss_mb, "peak_cuda_mb": None},
              "date": "2026-01-02T00:00:00+00:00"}
    folder = results / "runs" / model.replace("/", "__") / "r1"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{task}.answers.{TAG}.k{k}.json").write_text(json.dumps(record))


@pytest.fixture
def results(tmp_path: Path) -> Path:
    results = tmp_path / "results"
    rng = np.random.default_rng(0)
    write_retrieval(results, "base", "colx", list(rng.uniform(0.2, 0.6, 40)))
    write_retrieval(results, "better", "colx", list(rng.uniform(0.2, 0.6, 40)))
    return results


def _outputs(results: Path, out: Path) -> dict[str, str]:
    assert leaderboard.main(["--results", str(results), "--out", str(out), "--no-plots"]) == 0
    return {name: (out / name).read_text() for name in ("leaderboard.md", "leaderboard.tex", "leaderboard.html")}


def _terminal(results: Path) -> str:
    board = board_mod.build(collect(results))
    console = Console(record=True, width=300)
    render.print_tables(board, console, answer_rows.load(results, tasks={e.task for e in board.entries}))
    return console.export_text()


def test_answer_tables_in_every_output(results: Path, tmp_path: Path) -> None:
    base = [0.1 + 0.01 * i for i in range(40)]  # ANLS 0.1 .. 0.49, mean 0.295
    write_answers(results, "colx", "base", 1, base)
    write_answers(results, "colx", "better", 1, [a + 0.3 for a in base], seconds=2.25)  # +0.3 on every query
    write_answers(results, "colx", "base", 3, [1.0] * 10 + [0.0] * 30, rss_mb=2048.0)
    write_answers(results, "-", "oracle", "gold", [1.0] * 40)
    write_answers(results, "-", "no-retrieval", 0, [0.0] * 40, seconds=0.5)
    write_answers(results, "colx", "base", 1, [1.0] * 40, task="OtherRetrieval")  # no retrieval board: left out

    files = _outputs(results, tmp_path / "out")
    terminal = _terminal(results)
    # (variant, k, EM, ANLS, delta ANLS with its marker, s/query, peak RSS), numbers x 100 as the board shows them
    expected = [("no-retrieval", "0", "0.00", "0.00", "", "0.50", "1234.0 MiB"),
                ("base", "1", "0.00", "29.50", "", "1.50", "1234.0 MiB"),
                ("better", "1", "0.00", "59.50", "+30.00**", "2.25", "1234.0 MiB"),
                ("base", "3", "25.00", "25.00", "", "1.50", "2048.0 MiB"),
                ("oracle", "gold", "100.00", "100.00", "", "1.50", "1234.0 MiB")]
    # HTML: one "Answers" section after the retrieval tables, rows in k order, the numbers above
    page = files["leaderboard.html"]
    assert page.count("<h2>Answers:") == 1 and "<h2>Answers: LocalSet, scripted gemma-test (scripted-1234abcd)</h2>" \
        in page
    assert page.index("<h2>Costs</h2>") < page.index("<h2>Answers:")
    table = page[page.index('id="table-answers-0"'):].split("</table>")[0]
    rows = [re.findall(r"<td[^>]*>([^<]*)</td>", tr) for tr in table.split("<tr data-row=")[1:]]
    assert [(r[1], r[2], r[4], r[6], r[8], r[10], r[12]) for r in rows] == expected
    assert rows[2][9] != "" and float(rows[2][9]) < 0.01  # p (Holm) shown, significant
    assert "OtherRetrieval" not in page and "Answers: EM, token F1 and ANLS x 100" in page
    # LaTeX: a booktabs table with the same rows (nothing compiled)
    tex = files["leaderboard.tex"]
    assert r"\caption{Answers: LocalSet, scripted gemma-test (scripted-1234abcd)}" in tex
    for variant, k, em, anls, delta, s, rss in expected:
        line = next(t for t in tex.splitlines() if f" & {variant} & {k} & " in t)
        cells = [c.strip() for c in line.removesuffix(r" \\").split(" & ")]
        assert (cells[4], cells[6], cells[8], cells[10], cells[12]) == (em, anls, delta, s, rss)
    assert r"$\Delta$ ANLS vs base" in tex
    # terminal (rich) and Markdown: the same rows
    for text in (terminal, files["leaderboard.md"]):
        assert "Answers: LocalSet, scripted gemma-test" in text
        for variant, k, em, anls, delta, s, rss in expected:
            line = next(t for t in text.splitlines() if re.search(rf"\b{variant}\b\s*[│|]\s*{k}\s*[│|]", t))
            assert all(v in line for v in (em, anls, delta, s, rss)), line
    # the answers' own files as before
    assert (tmp_path / "out" / "leaderboard_answers.csv").is_file()


def test_no_answer_records_render_as_before(results: Path, tmp_path: Path) -> None:
    files = _outputs(results, tmp_path / "out")
    board = board_mod.build(collect(results))
    assert files["leaderboard.tex"] == render.to_latex(board) and files["leaderboard.md"] == render.to_markdown(board)
    strip = re.compile(r"generated \d{4}-\d\d-\d\d \d\d:\d\d UTC")
    page = html.render(board, {}, source=str(results))
    assert strip.sub("", files["leaderboard.html"]) == strip.sub("", page)
    terminal = _terminal(results)
    for text in (*files.values(), terminal):
        assert "Answers" not in text and "ANLS" not in text
    assert not list((tmp_path / "out").glob("leaderboard_answers*"))
    assert answer_rows.load(results) is None


def test_answer_rows_follow_the_filters(results: Path) -> None:
    write_answers(results, "colx", "base", 1, [0.5] * 40)
    write_answers(results, "-", "oracle", "gold", [1.0] * 40)
    frame: Any = answer_rows.load(results, backbones=["other*"])
    assert list(frame.variant) == ["oracle"]  # the oracle line has no backbone: it stays
    assert answer_rows.load(results, tasks={"SomeOtherTask"}) is None
