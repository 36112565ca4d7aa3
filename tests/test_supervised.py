"""The supervised reference row: the shared loop on a training split's real queries, never an evaluated split."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import write_beir
from harness.backbones import build_backbone
from harness.config import ConfigError, RunConfig
from harness.pipeline import run, training_corpus
from models.supervised import model as sup_model
from models.supervised import recipe
from tasks.beir_folder import BeirFolderTask

TOPICS = ["photosynthesis in green leaves", "the boiling point of water at altitude", "how vaccines train immunity",
          "plate tectonics and earthquakes", "the orbit of the moon", "compound interest on savings",
          "the life cycle of a frog", "why the sky is blue", "how bridges carry loads", "the history of paper money"]


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    docs = [{"_id": f"d{i}", "title": "", "text": f"An explanation of {t}, with examples and figures.",
             "metadata": {"doc_id": f"book{i % 3}"}} for i, t in enumerate(TOPICS)]
    queries = {f"q{i}": f"explain {t}" for i, t in enumerate(TOPICS)}
    root = write_beir(tmp_path / "f", docs, queries, [(f"q{i}", f"d{i}", 1) for i in range(7)], split="train")
    write_beir(root, docs, queries, [(f"q{i}", f"d{i}", 1) for i in range(7, 10)], split="test")
    return root


def test_supervised_trains_on_the_split_and_records_the_loop(folder: Path, tmp_path: Path) -> None:
    backbone = build_backbone("ocr-text", {"mode": "pooled"})
    before = backbone.fingerprint()
    corpus = training_corpus(BeirFolderTask(folder, split="train"), with_queries=True)
    config = recipe.Config(train={"steps": 4, "batch_size": 3, "lr": 1e-4}, val_fraction=0.3, hard_negatives=1,
                           temperature=0.5)
    out = recipe.train(backbone, corpus, config, tmp_path / "ck")
    record = json.loads((out / "training.json").read_text())
    assert record["finetune"] == "full" and record["llm_calls"] == 0
    assert record["examples"] + record["validation_queries"] == 7 and record["validation_queries"] == 2
    assert record["train"]["steps"] == 4 and record["train"]["relative_weight_change"] > 0
    assert record["train"]["rank_correlation"] is not None
    assert [h["step"] for h in record["train"]["val_history"]][0] == 0
    # the pages name their documents: validation also ranks each query among its own document's pages
    assert all(0 < h["val_within_doc_ndcg_at_10"] <= 1 for h in record["train"]["val_history"])
    fresh = sup_model.load_model(build_backbone("ocr-text", {"mode": "pooled"}), out)
    assert fresh.mteb_model_meta.name.startswith("supervised/ocr-text-pooled")
    assert fresh.mteb_model_meta.revision == backbone.fingerprint() != before


def test_supervised_needs_a_training_split(folder: Path, tmp_path: Path) -> None:
    backbone = build_backbone("ocr-text", {"mode": "pooled"})
    corpus = training_corpus(BeirFolderTask(folder, split="test"))  # pages only
    with pytest.raises(ValueError, match="train_corpus"):
        recipe.train(backbone, corpus, recipe.Config(), tmp_path / "ck")


def test_supervised_never_trains_on_the_evaluated_split(folder: Path, tmp_path: Path) -> None:
    config = RunConfig(name="s", results=str(tmp_path / "r"), seed=0,
                       backbones=[{"family": "ocr-text", "config": {"mode": "pooled"}}],
                       variants=[{"name": "supervised", "train_corpus": {"path": str(folder), "split": "test"}}],
                       tasks=[{"path": str(folder), "split": "test"}])
    with pytest.raises(ConfigError, match="also evaluated"):
        run(config)


def test_leaderboard_shows_the_share_of_the_supervised_gain() -> None:
    import pandas as pd

    from harness.report.board import _add_recovered

    table = pd.DataFrame({"backbone": ["a", "a", "a", "a", "b"],
                          "variant": ["base", "supervised", "syntr", "x", "syntr"],
                          "delta_s": [0.0, 0.04, 0.01, -0.02, 0.03]})
    _add_recovered(table, ["s"])
    got = table.recovered_s.tolist()
    assert got[2] == pytest.approx(0.25) and got[3] == pytest.approx(-0.5)
    assert all(pd.isna(got[i]) for i in (0, 1, 4))  # base and supervised themselves; backbone b has no supervised
