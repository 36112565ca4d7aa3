"""harness/data/folds.py and benchmarks/syntriever_scifact_cv.py: a cross-validation fold of a training split as a
BEIR folder with train and test qrels, and configs/syntriever_scifact.yaml pointed at it, which `harness run` accepts
(train on train, evaluate test) and whose guard refuses when the training split is the evaluated one. No model runs
here."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml

from conftest import write_beir
from harness.config import ConfigError, load_run_config
from harness.data.folds import build_fold
from harness.pipeline import train_split_queries
from tasks.registry import resolve_task, resolve_tasks

# The benchmark script (not a package module) for its config rewriting, loaded from its file.
_spec = importlib.util.spec_from_file_location(
    "syntriever_scifact_cv", Path(__file__).resolve().parent.parent / "benchmarks" / "syntriever_scifact_cv.py")
cv = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cv)


@pytest.fixture
def source(tmp_path: Path) -> Path:
    docs = [{"_id": f"d{i}", "title": "", "text": f"document {i} about topic {i % 5}"} for i in range(30)]
    queries = {f"q{i}": f"question {i}" for i in range(12)}
    queries["q_unjudged"] = "a query without qrels"  # never part of a fold
    qrels = [(f"q{i}", f"d{i}", 1) for i in range(12)] + [("q3", "d20", 1)]
    return write_beir(tmp_path / "src", docs, queries, qrels, split="train")


def _qids(path: Path) -> set[str]:
    return {line.split("\t")[0] for line in path.read_text().splitlines()[1:]}


def test_folds_partition_the_judged_queries(source: Path, tmp_path: Path) -> None:
    tests = []
    for fold in range(3):
        folder, summary = build_fold(source, tmp_path / "out", folds=3, fold=fold, train_queries=None,
                                        eval_queries=None, corpus_sample=None, seed=0)
        train, test = _qids(folder / "qrels" / "train.tsv"), _qids(folder / "qrels" / "test.tsv")
        assert not train & test and train | test == {f"q{i}" for i in range(12)}
        assert summary["train_queries"] == len(train) and summary["eval_queries"] == len(test) == 4
        assert (folder / "corpus.jsonl").is_symlink()
        tests.append(test)
    assert set.union(*tests) == {f"q{i}" for i in range(12)} and sum(map(len, tests)) == 12


def test_a_corpus_sample_keeps_every_gold_document(source: Path, tmp_path: Path) -> None:
    folder, summary = build_fold(source, tmp_path / "out", folds=2, fold=1, train_queries=3, eval_queries=2,
                                    corpus_sample=4, seed=1)
    task = resolve_task({"path": str(folder), "split": "test"})[0]
    train = resolve_task({"path": str(folder), "split": "train"})[0]
    assert len(task.data.queries) == 2 and len(train.data.queries) == 3
    gold = {d for data in (task.data, train.data) for rel in data.qrels.values() for d in rel}
    assert gold <= set(task.data.corpus) and len(task.data.corpus) == len(gold) + 4 == summary["corpus_docs"]


def test_the_scifact_config_on_a_fold_passes_the_split_guard(source: Path, tmp_path: Path) -> None:
    folder, _ = build_fold(source, tmp_path / "out", folds=2, fold=0, train_queries=None, eval_queries=None,
                              corpus_sample=None, seed=0)
    base = yaml.safe_load(cv.CONFIG.read_text())
    data = cv.fold_config(base, folder, task_name="SciFactCV2Fold0", overrides={"max_queries": 4}, max_stages=1,
                          results=str(tmp_path / "results"))
    path = tmp_path / "fold.yaml"
    path.write_text(yaml.safe_dump(data))
    config = load_run_config(path)
    assert [v.name for v in config.variants] == ["base", "supervised", "syntriever"]  # the stage-2 variant dropped
    spec = config.variants[2]
    assert spec.config["stages"] == 1 and spec.config["max_queries"] == 4
    assert spec.config["passage_tokens"] == base["variants"][2]["config"]["passage_tokens"]
    # the supervised reference trains on the fold's training split too, without the syntriever overrides
    assert config.variants[1].train_corpus == {"path": str(folder), "split": "train"}
    assert "passage_tokens" not in config.variants[1].config
    eval_tasks = resolve_tasks(config.tasks)
    assert eval_tasks[0].metadata.name == "SciFactCV2Fold0"
    train_task = resolve_task(spec.train_corpus)[0]
    assert train_split_queries(spec, train_task, eval_tasks, "variants.1")
    # The same folder with its evaluated split as the training split: refused.
    same = spec.model_copy(update={"train_corpus": {"path": str(folder), "split": "test"}})
    with pytest.raises(ConfigError, match="is also evaluated"):
        train_split_queries(same, resolve_task(same.train_corpus)[0], eval_tasks, "variants.1")


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parent.parent / "configs").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_every_run_config_validates(path: Path) -> None:
    # the run configs live in configs/ (the Syntriever ones moved there from models/syntriever/)
    assert load_run_config(path).backbones
