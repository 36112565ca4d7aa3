"""The bm25 reference backbone: exact BM25 scores, the OCR path on rendered pages, candidates, a full run."""

from __future__ import annotations

import gzip
import json
import math
import textwrap
from pathlib import Path

import pytest
from datasets import Dataset
from mteb.abstasks.task_metadata import TaskMetadata
from mteb.models.model_implementations.bm25 import BM25Search
from PIL import Image

from conftest import FACTS, render_page
from harness.backbones import BackboneError, Page, build_backbone, load_backbone
from harness.cli import main
from harness.config import BackboneSpec, ConfigError, RunConfig, VariantSpec, load_run_config
from harness.evaluate.bm25 import Bm25Search, bm25_meta
from harness.pipeline import check_lexical_rows
from harness.report import leaderboard
from tasks.beir_folder import BeirFolderTask

ROOT = Path(__file__).resolve().parent.parent
ENGLISH = TaskMetadata(name="Bm25Probe", description="probe", dataset={"path": "probe", "revision": "local"},
                       type="Retrieval", category="t2t", modalities=["text"], eval_splits=["test"],
                       eval_langs=["eng-Latn"], main_score="ndcg_at_10")


def bm25_model(config: dict | None = None) -> Bm25Search:
    backbone = build_backbone("bm25", config or {})
    return Bm25Search(backbone, bm25_meta("base/bm25", backbone.fingerprint()))


def index(model: BM25Search, corpus: Dataset, metadata: TaskMetadata = ENGLISH) -> None:
    model.index(corpus, task_metadata=metadata, hf_split="test", hf_subset="default", encode_kwargs={})


def search(model: BM25Search, queries: dict[str, str], metadata: TaskMetadata = ENGLISH, top_k: int = 1000,
           top_ranked: dict[str, list[str]] | None = None) -> dict[str, dict[str, float]]:
    data = Dataset.from_dict({"id": list(queries), "text": list(queries.values())})
    return model.search(data, task_metadata=metadata, hf_split="test", hf_subset="default", top_k=top_k,
                        encode_kwargs={}, top_ranked=top_ranked)


# Words that are their own Snowball stems and not English stopwords, so the scores can be written by hand.
DOCS = {"d0": "cat cat dog", "d1": "dog fish", "d2": "bird fish fish fish"}


def lucene_bm25(query: list[str], docs: dict[str, list[str]], k1: float = 1.5, b: float = 0.75) -> dict[str, float]:
    """BM25 as Lucene (and bm25s' default method) scores it: idf = ln(1 + (N - df + 0.5) / (df + 0.5)),
    term weight = tf / (tf + k1 * (1 - b + b * |d| / avg|d|))."""
    n, avg = len(docs), sum(map(len, docs.values())) / len(docs)
    out = {}
    for doc_id, words in docs.items():
        score = 0.0
        for term in query:
            df = sum(term in d for d in docs.values())
            tf = words.count(term)
            score += math.log(1 + (n - df + 0.5) / (df + 0.5)) * tf / (tf + k1 * (1 - b + b * len(words) / avg))
        out[doc_id] = score
    return out


def test_scores_are_lucene_bm25_by_hand() -> None:
    model = bm25_model()
    index(model, Dataset.from_dict({"id": list(DOCS), "text": list(DOCS.values())}))
    got = search(model, {"q": "cat fish"})["q"]
    expected = lucene_bm25(["cat", "fish"], {k: v.split() for k, v in DOCS.items()})
    # written out: d0 = ln(8/3) * 2/3.5 = 0.5605, d2 = ln(1.6) * 3/4.875 = 0.2892, d1 = ln(1.6) / 2.125 = 0.2212
    assert expected["d0"] == pytest.approx(0.5605, abs=1e-4) and expected["d2"] == pytest.approx(0.2892, abs=1e-4)
    assert got == pytest.approx(expected, rel=1e-5)
    assert sorted(got, key=got.get, reverse=True) == ["d0", "d2", "d1"]  # term frequency beats the shorter d1
    # mteb's English pipeline: stopwords dropped, Snowball stems ("cats" is "cat")
    assert search(model, {"q": "the cats and fishes"})["q"] == pytest.approx(got, rel=1e-6)
    # k1 and b reach bm25s
    flat = bm25_model({"k1": 1.2, "b": 0.0})
    index(flat, Dataset.from_dict({"id": list(DOCS), "text": list(DOCS.values())}))
    expected = lucene_bm25(["cat", "fish"], {k: v.split() for k, v in DOCS.items()}, k1=1.2, b=0.0)
    assert search(flat, {"q": "cat fish"})["q"] == pytest.approx(expected, rel=1e-5)


def test_text_corpus_scores_equal_mtebs_own_baseline(text_folder: Path) -> None:
    """On a text corpus (title + text) the backbone is exactly mteb's BM25 baseline (mteb/baseline-bm25s)."""
    task = BeirFolderTask(text_folder)
    task.load_data()
    split = task.dataset["default"]["test"]
    queries = dict(zip(split["queries"]["id"], split["queries"]["text"], strict=True))
    ours, theirs = bm25_model(), BM25Search()
    for model in (ours, theirs):
        index(model, split["corpus"], task.metadata)
    got, expected = search(ours, queries, task.metadata), search(theirs, queries, task.metadata)
    assert got.keys() == expected.keys()
    for qid in queries:
        assert got[qid] == pytest.approx(expected[qid])
        assert max(got[qid], key=got[qid].get) == "d" + qid[1:]  # each fact's question finds its fact
    assert ours.stats.encoded == {"query": len(queries), "document": len(FACTS)}
    assert ours.stats.doc_bytes > 0 and ours.model._ocr is None  # a text corpus never starts Tesseract


def test_every_candidate_is_ranked() -> None:
    """With candidates (candidates_by / top_ranked), each one gets its score even outside the corpus-wide top_k."""
    model = bm25_model()
    index(model, Dataset.from_dict({"id": list(DOCS), "text": list(DOCS.values())}))
    full = search(model, {"q": "cat fish"})["q"]
    within = search(model, {"q": "cat fish"}, top_k=1, top_ranked={"q": ["d1", "d2"]})["q"]
    assert within == pytest.approx({"d1": full["d1"], "d2": full["d2"]})
    # mteb's own class keeps only the candidates inside its top_k (here: d0, no candidate at all)
    assert search(model, {"q": "cat fish"}, top_k=1)["q"].keys() == {"d0"}


def test_page_images_are_ocred_once_then_ranked(image_folder: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))  # a cold OCR cache for this test
    backbone = build_backbone("bm25")
    render_page("Quarterly revenue of Tamsin Corp reached 41 million", tmp_path / "page.png")
    [text] = backbone.page_texts([Page("p", image=Image.open(tmp_path / "page.png"), text="Annual report")])
    assert text.startswith("Annual report\n") and "Tamsin" in text and "41" in text  # corpus text, then OCR
    assert backbone.ocr.pages_ocred == 1

    task = BeirFolderTask(image_folder)
    task.load_data()
    split = task.dataset["default"]["test"]
    queries = dict(zip(split["queries"]["id"], split["queries"]["text"], strict=True))
    model = bm25_model()
    index(model, split["corpus"], task.metadata)
    assert model.model.ocr.pages_ocred == len(FACTS)
    ranked = search(model, queries, task.metadata)
    for qid in queries:
        assert max(ranked[qid], key=ranked[qid].get) == "p" + qid[1:]

    again = bm25_model()
    index(again, split["corpus"], task.metadata)
    assert again.model.ocr.pages_ocred == 0  # served from the on-disk OCR cache
    assert search(again, queries, task.metadata) == ranked


def test_eval_and_run_write_records_and_leaderboard_rows(text_folder: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    results = tmp_path / "results"
    assert main(["eval", "--backbone", "bm25", "--task", str(text_folder), "--results", str(results)]) == 0
    assert "TextsetRetrieval\tndcg_at_10\t1.0000\tevaluated" in capsys.readouterr().out
    [record_file] = (results / "runs" / "base__bm25").glob("*/TextsetRetrieval.json")
    record = json.loads(record_file.read_text())
    assert record["model"] == "base/bm25" and record["variant"] == "base" and record["training"] is None
    assert record["backbone"]["family"] == "bm25" and record["backbone"]["config"]["k1"] == 1.5
    assert set(record["per_query"]["default/test"]["ndcg_at_10"]) == {f"q{i}" for i in range(len(FACTS))}
    assert record["encoded"] == {"query": len(FACTS), "document": len(FACTS)} and record["index"]["bytes"] > 0
    with gzip.open(record_file.with_suffix(".run.json.gz")) as f:
        assert set(json.load(f)["default/test"]["q0"]) == {f"d{i}" for i in range(len(FACTS))}
    meta = json.loads((record_file.parent.parent.parent.parent / "mteb" / "results" / "base__bm25" /
                       record_file.parent.name / "model_meta.json").read_text())
    assert meta["adapted_from"] == "mteb/baseline-bm25s" and meta["n_parameters"] == 0

    # a run beside a vector backbone: same results folder, same leaderboard, tested against bm25 as reference
    config = tmp_path / "run.yaml"
    config.write_text(textwrap.dedent(f"""
        name: with-bm25
        results: {results}
        backbones:
          - family: ocr-text
            config: {{mode: pooled}}
          - family: bm25
        variants: [base]
        tasks: [{text_folder}]
    """))
    assert main(["run", str(config), "--no-leaderboard"]) == 0  # bm25's result above is reused
    board = leaderboard.build_table(leaderboard.collect(results), reference="base/bm25", n_permutations=200)
    row = board.set_index(["backbone", "variant"]).loc["bm25", "base"]
    assert row["TextsetRetrieval"] == pytest.approx(1.0) and row["train_wall_s"] == 0
    assert 0 < row["encode_ms_per_page"] and 0 < row["index_bytes_per_page"] and 0 < row["query_latency_ms"]
    dense = board.set_index(["backbone", "variant"]).loc["ocr-text-pooled-all-MiniLM-L6-v2", "base"]
    assert dense["reference"] == "base/bm25"
    assert dense["delta_ref_TextsetRetrieval"] == pytest.approx(dense["TextsetRetrieval"] - 1.0)


def test_only_the_base_variant_runs_on_bm25(text_folder: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", "--backbone", "bm25", "--variant", "syntr", "--task", str(text_folder),
                 "--results", str(tmp_path / "results")]) == 2
    err = capsys.readouterr().err
    assert "variant 'syntr' cannot run on backbones.0, the bm25 backbone" in err
    assert not (tmp_path / "results").exists()  # refused before any work

    backbones = [BackboneSpec(family="ocr-text"), BackboneSpec(family="bm25")]
    everywhere = RunConfig(backbones=backbones, variants=["base", "syntr"], tasks=["generated"])
    with pytest.raises(ConfigError, match=r"variants.1: variant 'syntr' cannot run on backbones.1, the bm25"):
        check_lexical_rows(everywhere)
    check_lexical_rows(RunConfig(backbones=backbones, tasks=["generated"],
                                 variants=[VariantSpec(name="base"), VariantSpec(name="syntr", backbones=[0])]))
    # a saved bm25 backbone folder is recognised too, and loads back as the same model
    build_backbone("bm25", {"k1": 1.2}).save(tmp_path / "saved")
    saved = RunConfig(backbones=[BackboneSpec(family="ocr-text", path=str(tmp_path / "saved"))],
                      variants=["colintern"], tasks=["generated"])
    with pytest.raises(ConfigError, match="the bm25 backbone"):
        check_lexical_rows(saved)
    assert load_backbone(tmp_path / "saved").fingerprint() == build_backbone("bm25", {"k1": 1.2}).fingerprint()
    # a recipe that reaches the backbone anyway gets an error naming it
    with pytest.raises(BackboneError, match="bm25 backbone is lexical"):
        build_backbone("bm25").trainable()

    # the default job: only base runs on its bm25 backbone
    default = load_run_config(ROOT / "configs" / "default.yaml")
    check_lexical_rows(default)
    lexical = [i for i, b in enumerate(default.backbones) if b.family == "bm25"]
    assert len(lexical) == 1
    assert [v.name for v in default.variants if v.backbones is None or lexical[0] in v.backbones] == ["base"]
