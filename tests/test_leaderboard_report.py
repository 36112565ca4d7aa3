"""The leaderboard: significance markers, costs, filters and views, every output format, bad input, and the
HTML page in a real (headless) browser.

Two kinds of results: a real `harness run` (OCR-text backbone on a small text folder, base and a variant that
"trains" by writing the training record and a loss log), and hand-made MTEB files + run records for ViDoRe
tasks (which cannot be evaluated offline), with per-query scores chosen to make the tests' answers known.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
import textwrap
from pathlib import Path

import numpy as np
import pytest

from conftest import FACTS, write_beir
from harness.cli import main as harness_main
from harness.evaluate.significance import holm
from harness.report import board as board_mod
from harness.report import browser, costs, leaderboard
from harness.report.results import collect
from helpers import CUSTOM_MODEL

# The same prefixed-query wrapper as the custom variant of test_cli_and_leaderboard, trained here.
TRAINED_MODEL = CUSTOM_MODEL

TRAINED_RECIPE = '''
import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict

TRAINS = True


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")


def train(backbone, corpus, config, out_dir):
    """Trains nothing; writes what a recipe records (the leaderboard's training contract)."""
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    losses = [{"step": s, "epoch": s / 10, "loss": 2.0 / (1 + s)} for s in range(20)]
    (out_dir / "loss.jsonl").write_text("".join(json.dumps(x) + "\\n" for x in losses))
    record = {"wall_s": 12.5, "llm_calls": 42, "llm_tokens": 4200, "examples": len(corpus.pages),
              "loss_log": str(out_dir / "loss.jsonl")}
    (out_dir / "training.json").write_text(json.dumps(record))
    return out_dir
'''


@pytest.fixture(scope="module")
def real_results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`harness run`: the OCR-text backbone (pooled), base and a trained-like variant, on a text BEIR folder."""
    root = tmp_path_factory.mktemp("real")
    docs = [{"_id": f"d{i}", "title": "", "text": fact} for i, (fact, _) in enumerate(FACTS)]
    queries = {f"q{i}": q for i, (_, q) in enumerate(FACTS)}
    folder = write_beir(root / "textset", docs, queries, [(f"q{i}", f"d{i}", 1) for i in range(len(FACTS))])
    variant = root / "prefixed"
    variant.mkdir()
    (variant / "model.py").write_text(TRAINED_MODEL)
    (variant / "recipe.py").write_text(TRAINED_RECIPE)
    config = root / "run.yaml"
    config.write_text(textwrap.dedent(f"""
        name: test
        results: {root / "results"}
        backbones:
          - family: ocr-text
            config: {{mode: pooled}}
        variants: [base, {variant}]
        tasks: [{folder}]
    """))
    with pytest.MonkeyPatch.context() as mp:  # a cache of its own: the costs need pages really encoded
        mp.setenv("HARNESS_CACHE", str(root / "cache"))
        assert harness_main(["run", str(config), "--no-leaderboard"]) == 0
    return root / "results"


# ---- hand-made results ------------------------------------------------------------------------------------

def write_result(results: Path, variant: str, backbone: str, task: str, per_query: dict[str, dict[str, float]], *,
                 date: str = "2026-01-01T00:00:00+00:00", revision: str = "r1", training: dict | None = None,
                 encoded: tuple[int, int] = (40, 20), cached: tuple[int, int] = (0, 0),
                 encode_s: tuple[float, float] = (0.4, 2.0), index: tuple[int, int] = (20, 20480),
                 phases: list[dict] | None = None, dataset_revision: str = "abc") -> None:
    """An MTEB result file and its run record; per_query: {"<subset>/<split>": {query id: nDCG@5}}."""
    model = f"{variant}/{backbone}"
    scores: dict[str, list] = {}
    for key, values in per_query.items():
        subset, split = key.split("/")
        score = float(np.mean(list(values.values())))
        scores.setdefault(split, []).append({"main_score": score, "ndcg_at_5": score, "hf_subset": subset,
                                             "languages": ["eng-Latn"]})
    mteb_file = results / "mteb" / "results" / f"{variant}__{backbone}" / revision / f"{task}.json"
    mteb_file.parent.mkdir(parents=True, exist_ok=True)
    mteb_file.write_text(json.dumps({
        "dataset_revision": dataset_revision, "task_name": task, "mteb_version": "2.26.24", "scores": scores,
        "evaluation_time": 5.0, "kg_co2_emissions": None, "date": 1.7e9,
        "evaluation_phases": phases if phases is not None else [
            {"name": "Searching corpus", "start": 0.0, "end": 3.0, "split": "test", "subset": "default"}]}))
    record = {"model": model, "revision": revision, "variant": variant,
              "backbone": {"family": "tiny", "tag": backbone, "config": {}}, "task": task,
              "main_score_name": "ndcg_at_5", "date": date, "training": training,
              "timings": {"evaluation_s": 5.0, "encode_s": {"query": encode_s[0], "document": encode_s[1]}},
              "encoded": {"query": encoded[0], "document": encoded[1]},
              "cached": {"query": cached[0], "document": cached[1]},
              "index": {"documents": index[0], "vectors": index[0], "bytes": index[1]},
              "per_query": {k: {"ndcg_at_5": v} for k, v in per_query.items()}}
    record_file = results / "runs" / f"{variant}__{backbone}" / revision / f"{task}.json"
    record_file.parent.mkdir(parents=True, exist_ok=True)
    record_file.write_text(json.dumps(record))


V1_IN, V1_OUT, V2 = "VidoreDocVQARetrieval", "VidoreShiftProjectRetrieval", "Vidore2ESGReportsRetrieval"
LANGUAGES = ("french", "spanish", "english", "german")


@pytest.fixture
def made_results(tmp_path: Path) -> Path:
    """Backbone colx: base, `better` (+0.3 on every query), `same` (identical to base); backbone other: base."""
    results = tmp_path / "results"
    rng = np.random.default_rng(0)
    loss = tmp_path / "loss.jsonl"
    loss.write_text("".join(json.dumps({"step": s, "epoch": 0, "loss": 1 / (1 + s)}) + "\n" for s in range(5)))
    training = {"wall_s": 3600.0, "llm_calls": 500, "llm_tokens": 90000, "examples": 1000, "loss_log": str(loss)}
    tasks = {V1_IN: ["default/test"], V1_OUT: ["default/test"], V2: [f"{lang}/test" for lang in LANGUAGES],
             "LocalSetRetrieval": ["default/test"]}
    for task, keys in tasks.items():
        base = {k: {f"q{i}": float(v) for i, v in enumerate(rng.uniform(0.1, 0.6, size=40))} for k in keys}
        better = {k: {q: min(1.0, v + 0.3) for q, v in qs.items()} for k, qs in base.items()}
        revision = "local" if task == "LocalSetRetrieval" else "abc"
        write_result(results, "base", "colx", task, base, dataset_revision=revision)
        write_result(results, "better", "colx", task, better, training=training, dataset_revision=revision)
        write_result(results, "same", "colx", task, base, dataset_revision=revision, training=None)
        write_result(results, "base", "other", task, better, dataset_revision=revision)
    return results


# ---- significance and tables -------------------------------------------------------------------------------

def test_markers_holm_and_reference(made_results: Path) -> None:
    board = board_mod.build(collect(made_results), reference="base/other", n_permutations=2000, n_boot=500)
    tests = board.tests
    better = tests[(tests.variant == "better") & (tests.against == "base")]
    assert len(better) == 4 and (better.n >= 40).all()
    assert better.p.tolist() == pytest.approx([1 / 2001] * 4)  # no random flip reaches the observed gain
    assert better.p_holm.tolist() == pytest.approx(holm(better.p.tolist()))  # Holm across the four task columns
    assert better.p_holm.tolist() == pytest.approx([4 / 2001] * 4) and (better.marker == "**").all()
    assert (better.delta > 0.25).all() and (better.ci_low > 0.2).all()
    same = tests[(tests.variant == "same") & (tests.against == "base")]
    assert (same.p == 1.0).all() and (same.marker == "").all()
    # the chosen reference (a model on another backbone, whose scores equal `better`) is tested for every row
    ref = tests[tests.against == "reference"]
    assert set(zip(ref.backbone, ref.variant, strict=True)) == {("colx", "base"), ("colx", "better"), ("colx", "same")}
    assert (ref[ref.variant == "better"].p == 1.0).all()

    from harness.report.render import to_markdown

    md = to_markdown(board)
    assert re.search(r"\| colx \| better \| [\d.]+ \(\+[\d.]+\*\*\)", md)  # the marker is in the table
    assert "## Against base/other" in md and "DocVQA †" in md and "in-domain" in md


def test_filters_and_views(made_results: Path) -> None:
    entries = collect(made_results)
    names = board_mod.build(entries, n_permutations=200, n_boot=100).names
    assert names == [V1_IN, V1_OUT, V2, "LocalSetRetrieval"]  # ViDoRe v1, v2, then local tasks
    in_domain = {c.name for c in board_mod.build(entries, n_permutations=200, n_boot=100).columns if c.in_domain}
    assert in_domain == {V1_IN}

    def columns(**filters: object) -> list[str]:
        return board_mod.build(entries, filters=board_mod.Filters(**filters), n_permutations=200, n_boot=100).names

    assert columns(benchmarks=["v2"]) == [V2]
    assert columns(benchmarks=["v1"]) == sorted([V1_IN, V1_OUT])
    assert columns(benchmarks=["local"]) == ["LocalSetRetrieval"]
    assert V1_IN not in columns(in_domain="exclude") and columns(in_domain="only") == [V1_IN]
    other = board_mod.build(entries, filters=board_mod.Filters(backbones=["oth*"]), n_permutations=200, n_boot=100)
    assert set(other.table.backbone) == {"other"}

    langs = board_mod.build(entries, view="languages", n_permutations=500, n_boot=100)
    assert langs.names == sorted(LANGUAGES)
    row = langs.table[(langs.table.variant == "better")].iloc[0]
    v2 = [e for e in entries if e.task == V2 and e.variant == "better"][0]
    assert row["french"] == pytest.approx(v2.subsets["french/test"])
    lang_tests = langs.tests[(langs.tests.variant == "better") & (langs.tests.against == "base")]
    assert sorted(lang_tests.column) == sorted(LANGUAGES) and (lang_tests.n == 40).all()
    assert (lang_tests.marker != "").all()


def test_costs_from_records(tmp_path: Path) -> None:
    results = tmp_path / "results"
    q = {"default/test": {"q1": 0.5, "q2": 0.7}}
    training = {"wall_s": 100.0, "llm_calls": 10}
    # model m encoded on task A (2.0 s / 20 pages = 100 ms), then ran task B fully cached
    write_result(results, "m", "bb", "TaskA", q, encoded=(40, 20), encode_s=(0.4, 2.0), date="2026-01-01T00:00:00",
                 training=training, index=(20, 20480),
                 phases=[{"name": "Computing similarity", "start": 0.0, "end": 0.2, "split": "test",
                         "subset": "default"}])
    write_result(results, "m", "bb", "TaskB", q, encoded=(0, 0), cached=(40, 20), encode_s=(0.0, 0.0),
                 date="2026-01-02T00:00:00", training=training, index=(20, 40960),
                 phases=[{"name": "Searching corpus", "start": 0.0, "end": 1.0, "split": "test",
                         "subset": "default"}])
    entries = collect(results)
    only_b = [e for e in entries if e.task == "TaskB"]
    row = costs.row_costs(only_b, entries)
    assert row["encode_ms_per_page"] == pytest.approx(100.0)  # from TaskA's record, not 0 for cached pages
    assert row["index_bytes_per_page"] == pytest.approx(2048)
    assert row["query_latency_ms"] == pytest.approx(10.0 + 1000 * 1.0 / 40)  # encode 10 ms + search 25 ms
    assert row["train_wall_s"] == 100.0 and row["llm_calls"] == 10
    both = costs.row_costs(entries, entries)
    assert both["train_wall_s"] == 100.0  # the same training behind two tasks counts once
    assert both["query_latency_ms"] == pytest.approx(10.0 + 1000 * (0.2 + 1.0) / 80)
    assert np.isnan(costs.row_costs(only_b, only_b)["encode_ms_per_page"])  # nothing ever encoded: unknown


def test_bad_files_are_reported_and_skipped(made_results: Path, caplog: pytest.LogCaptureFixture) -> None:
    bad = made_results / "mteb" / "results" / "x__y" / "r1"
    bad.mkdir(parents=True)
    good = next((made_results / "mteb" / "results" / "base__colx" / "r1").glob("*.json")).read_text()
    (bad / "Partial.json").write_text(good[: len(good) // 2])
    (bad / "Corrupt.json").write_bytes(b"\x00\xff\xfe garbage")
    (bad / "Foreign.json").write_text(json.dumps({"hello": "world"}))
    (bad / "List.json").write_text("[1, 2, 3]")
    (bad / "Empty.json").write_text("")
    broken_record = made_results / "runs" / "same__colx" / "r1" / f"{V1_IN}.json"
    broken_record.write_text('{"model": ')
    odd_record = made_results / "runs" / "same__colx" / "r1" / f"{V1_OUT}.json"
    odd_record.write_text(json.dumps({**json.loads(odd_record.read_text()), "encoded": 5,
                                      "per_query": {"default/test": {"ndcg_at_5": {"q1": "high"}}}}))
    with caplog.at_level(logging.WARNING, logger="leaderboard"):
        entries = collect(made_results)
    assert len(entries) == 16
    for name in ("Partial", "Corrupt", "Foreign", "List", "Empty"):
        assert any(f"{name}.json" in r.getMessage() for r in caplog.records), name
    assert any("run record" in r.getMessage() and str(broken_record) in r.getMessage() for r in caplog.records)
    odd = [r.getMessage() for r in caplog.records if str(odd_record) in r.getMessage()]
    assert any("'encoded'" in m for m in odd) and any("per_query" in m for m in odd)
    assert leaderboard.main(["--results", str(made_results), "--no-plots", "--permutations", "200"]) == 0


def test_loss_plot_from_training_record(made_results: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert leaderboard.main(["--results", str(made_results), "--out", str(out), "--permutations", "200"]) == 0
    assert {p.name for p in (out / "plots").glob("*.png")} == {"scores.png", "loss.png", "history.png"}
    assert (out / "leaderboard.html").read_text().count("data:image/png;base64,") == 3


# ---- a real run: every output, and the page in a browser ------------------------------------------------------

@pytest.fixture(scope="module")
def real_outputs(real_results: Path) -> Path:
    assert leaderboard.main(["--results", str(real_results), "--reference", "prefixed"]) == 0
    return real_results


def test_real_run_outputs(real_outputs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    results = real_outputs
    for name in ("leaderboard.md", "leaderboard.csv", "leaderboard.tex", "leaderboard.html", "leaderboard_tests.csv",
                 "plots/scores.png", "plots/loss.png", "plots/history.png"):
        assert (results / name).is_file() and (results / name).stat().st_size > 0, name

    rows = list(csv.DictReader(io.StringIO((results / "leaderboard.csv").read_text())))
    by_variant = {r["variant"]: r for r in rows}
    assert set(by_variant) == {"base", "prefixed"}
    base, trained = by_variant["base"], by_variant["prefixed"]
    assert float(base["TextsetRetrieval"]) > 0.5
    assert float(trained["delta_average"]) == pytest.approx(float(trained["average"]) - float(base["average"]))
    assert float(trained["train_wall_s"]) == 12.5 and float(trained["llm_calls"]) == 42  # from training.json
    assert base["train_wall_s"] == "0.0" and base["llm_calls"] == "0.0"  # base does not train: zero, not unknown
    assert float(base["encode_ms_per_page"]) > 0 and float(base["query_latency_ms"]) > 0
    assert float(base["index_bytes_per_page"]) == 384 * 4  # one pooled MiniLM vector (float32) per short page
    assert 0 <= float(trained["p_holm_TextsetRetrieval"]) <= 1

    tests = list(csv.DictReader(io.StringIO((results / "leaderboard_tests.csv").read_text())))
    n = str(len(FACTS))
    assert [(t["variant"], t["against"], t["n"]) for t in tests] == [("base", "reference", n), ("prefixed", "base", n)]

    md = (results / "leaderboard.md").read_text()
    assert "| base |" in md and "| prefixed |" in md and "## Costs" in md and "## Paired tests" in md
    tex = (results / "leaderboard.tex").read_text()
    assert tex.count(r"\begin{tabular}") == 4 and r"\toprule" in tex and "ocr-text-pooled-all-MiniLM-L6-v2" in tex
    assert r"\_" not in tex.split("\\begin{tabular}")[1].split("\\toprule")[0]  # column spec is plain
    page = (results / "leaderboard.html").read_text()
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)  # self-contained: nothing to fetch
    assert page.count("data:image/png;base64,") == 3 and "<script>" in page and "<style>" in page

    # the CLI passes the leaderboard options through
    assert harness_main(["leaderboard", "--results", str(results), "--benchmark", "v1", "--no-plots"]) == 1
    assert harness_main(["leaderboard", "--results", str(results), "--benchmark", "local", "--no-plots",
                         "--out", str(results / "filtered")]) == 0
    assert "Leaderboard" in capsys.readouterr().out


def _row_order(dom: str, table: str) -> list[str]:
    body = dom.split(f'id="table-{table}"', 1)[1].split("</table>", 1)[0]
    return re.findall(r'<tr data-row="([^"]+)"', body)


@pytest.mark.skipif(browser.find_chromium() is None, reason="chromium is not installed (apt-get install chromium)")
def test_html_page_sorts_in_headless_chromium(real_outputs: Path, tmp_path: Path) -> None:
    page = real_outputs / "leaderboard.html"
    table = leaderboard.build_table(leaderboard.collect(real_outputs))
    latency = dict(zip(table.variant, table.query_latency_ms, strict=True))
    fastest_first = [f"{table.backbone[0]}|{v}" for v in sorted(latency, key=latency.get)]

    dom = browser.dump_dom(browser.page_url(page, "sort=costs.query-latency-ms:asc"))
    assert _row_order(dom, "costs") == fastest_first  # the page clicked the header twice: ascending
    assert re.search(r'<th data-key="query-latency-ms" data-type="num" class="asc">', dom)
    dom = browser.dump_dom(browser.page_url(page, "sort=costs.query-latency-ms"))
    assert _row_order(dom, "costs") == fastest_first[::-1]  # one click: descending

    shot = browser.screenshot(browser.page_url(page, "sort=average"), tmp_path / "leaderboard.png")
    from PIL import Image

    with Image.open(shot) as image:
        assert image.size == (1280, 1250)
        assert len(np.unique(np.asarray(image.convert("L").resize((64, 64))))) > 8  # something was drawn
