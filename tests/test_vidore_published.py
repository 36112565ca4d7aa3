"""Published rows: mteb's results repository (a small tree in mteb's own layout, written by mteb's ResultCache)
read beside a run's own rows, marked as published and left out of the significance tests; and the ViDoRe v3
columns and language view."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import mteb
import pytest
from mteb.cache import ResultCache
from mteb.results import TaskResult

from harness.report import board as board_mod
from harness.report.leaderboard import main as leaderboard_main
from harness.report.published import PublishedError, published_entries, results_root
from harness.report.results import collect

V1, V3 = "VidoreDocVQARetrieval", "Vidore3HrRetrieval"
V3_LANGS = ("english", "french", "german", "italian", "portuguese", "spanish")
COLQWEN = "vidore/colqwen2.5-v0.2"


def write_run(results: Path, variant: str, task: str, per_query: dict[str, dict[str, float]], metric: str) -> None:
    """A harness result (MTEB file + run record with per-query scores), as harness eval writes them."""
    scores = [{"main_score": sum(v.values()) / len(v), metric: sum(v.values()) / len(v), "hf_subset": key.split("/")[0],
               "languages": ["eng-Latn"]} for key, v in per_query.items()]
    folder = f"{variant}__colx"
    mteb_file = results / "mteb" / "results" / folder / "r1" / f"{task}.json"
    mteb_file.parent.mkdir(parents=True, exist_ok=True)
    mteb_file.write_text(json.dumps({"dataset_revision": "abc", "task_name": task, "mteb_version": "2.26.24",
                                     "scores": {"test": scores}, "evaluation_time": 1.0, "date": 1.7e9}))
    record = results / "runs" / folder / "r1" / f"{task}.json"
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"model": f"{variant}/colx", "revision": "r1", "variant": variant,
                                  "backbone": {"tag": "colx"}, "task": task, "main_score_name": metric,
                                  "date": "2026-01-01T00:00:00+00:00",
                                  "per_query": {k: {metric: v} for k, v in per_query.items()}}))


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    results = tmp_path / "results"
    for variant, shift in (("base", 0.0), ("better", 0.3)):
        write_run(results, variant, V1, {"default/test": {f"q{i}": 0.1 + shift + i / 100 for i in range(30)}},
                  "ndcg_at_5")
        write_run(results, variant, V3, {f"{lang}/test": {f"q{i}": 0.2 + shift + j / 50 for i in range(20)}
                                         for j, lang in enumerate(V3_LANGS)}, "ndcg_at_10")
    return results


def publish(repo: Path, model: str, revision: str | None, scores: dict[str, dict[str, float]]) -> None:
    """mteb's own TaskResult and writer: results/<org__model>/<revision>/<Task>.json + model_meta.json."""
    meta = mteb.get_model_meta(model)
    if revision:
        meta = meta.model_copy(update={"revision": revision})
    for task_name, by_subset in scores.items():
        task = mteb.get_task(task_name)
        main = task.metadata.main_score
        result = TaskResult.from_task_results(task, {"test": {s: {"main_score": v, main: v, "ndcg_at_1": v / 2}
                                                             for s, v in by_subset.items()}}, evaluation_time=9.0)
        ResultCache(repo).save_to_cache(result, meta)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "mteb-results"
    v3 = {lang: 0.5 + i / 100 for i, lang in enumerate(V3_LANGS)}
    publish(root, COLQWEN, None, {V1: {"default": 0.917}, V3: v3, "VidoreTatdqaRetrieval": {"default": 0.8}})
    publish(root, COLQWEN, "0" * 40, {V1: {"default": 0.111}})  # another revision, fewer tasks: not chosen
    return root


def test_published_rows_from_mteb_layout(runs: Path, repo: Path) -> None:
    assert results_root(repo) == repo and (repo / "results" / "vidore__colqwen2.5-v0.2").is_dir()
    entries = collect(runs)
    published = published_entries([COLQWEN, "vidore/colpali-v1.3"], sorted({e.task for e in entries}), repo)
    by_task = {e.task: e for e in published}
    assert set(by_task) == {V1, V3}  # only the tasks the run has; colpali has nothing in this tree
    assert by_task[V1].score == pytest.approx(0.917) and by_task[V1].variant == "published"
    assert by_task[V1].revision == mteb.get_model_meta(COLQWEN).revision
    assert by_task[V3].score == pytest.approx(sum(0.5 + i / 100 for i in range(6)) / 6)
    assert by_task[V3].subsets["french/test"] == pytest.approx(0.51) and by_task[V3].benchmark == "v3"

    board = board_mod.build(entries + published, reference=f"published/{COLQWEN}", n_permutations=500, n_boot=100)
    row = board.table[board.table.variant == "published"].iloc[0]
    assert row.backbone == COLQWEN and row[V1] == pytest.approx(0.917)
    assert board.names == [V1, V3]  # ViDoRe v1, then v3
    tests = board.tests
    assert "published" not in set(tests.variant) and set(tests.against) == {"base"}  # never tested, either side
    assert len(tests) == 2 and (tests.marker == "**").all()  # the run's own rows still are

    langs = board_mod.build(entries + published, view="languages", n_permutations=200, n_boot=100)
    assert langs.names == sorted(V3_LANGS)  # the v3 language view; the English-only v1 task has no column
    pub = langs.table[langs.table.variant == "published"].iloc[0]
    assert pub["french"] == pytest.approx(0.51) and pub["spanish"] == pytest.approx(0.55)


def test_leaderboard_command_adds_published_rows(runs: Path, repo: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert leaderboard_main(["--results", str(runs), "--out", str(out), "--no-plots", "--published", COLQWEN,
                             "--published-results", str(repo), "--benchmark", "v3"]) == 0
    rows = list(csv.DictReader(open(out / "leaderboard.csv")))
    assert [(r["backbone"], r["variant"]) for r in rows if r["variant"] == "published"] == [(COLQWEN, "published")]
    assert all(r["variant"] != "published" for r in csv.DictReader(open(out / "leaderboard_tests.csv")))
    capsys.readouterr()
    missing = tmp_path / "nowhere"
    assert leaderboard_main(["--results", str(runs), "--out", str(out), "--no-plots", "--published", COLQWEN,
                             "--published-results", str(missing)]) == 2
    assert f"no results/ folder in {missing}" in capsys.readouterr().err


def test_no_results_repository_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(PublishedError, match="clone of https://github.com/embeddings-benchmark/results"):
        results_root(tmp_path)
