"""Answers inside `harness run` (a config's `answers:` section) and backbones that answer with their own model
(`answer_backend`, `harness answers --answerer self`). The language models are scripted backends; retrieval is the
real bm25 row (cheap), and a bm25 subclass with `answer_backend` plays an LLM retriever."""

from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from conftest import write_beir
from harness.answers.run import own_backend
from harness.backbones import FAMILIES
from harness.backbones.bm25 import Bm25Backbone
from harness.config import AnswersSpec, ConfigError, RunConfig, load_run_config
from harness.pipeline import run
from harness.synth.backends import BackendSpec, Generation

FACTS = [("Tamsin Corp revenue in 2019 was 1204 million.", "What was Tamsin Corp revenue in 2019?", "1204 million"),
         ("The Kelda telescope observes in infrared.", "Which light does the Kelda telescope use?", "infrared"),
         ("Brightwater school pupils number 300.", "How many pupils attend Brightwater school?", "300"),
         ("The Zorvan glacier is in the north.", "Where is the Zorvan glacier?", "north")]


class Scripted:
    """A Backend answering with the last word of its first page ("none" without pages); counts its calls."""

    model, instruct, sees_images, parallelism = "scripted", True, False, 1

    def __init__(self, kind: str = "scripted", spec: dict[str, Any] | None = None) -> None:
        self.kind, self.spec, self.calls = kind, spec, 0

    def prepare(self, pages: Any) -> None:
        pass

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "model": "scripted"}

    def generate(self, prompts: Any, params: Any, seeds: Any = None) -> list[Generation]:
        self.calls += len(prompts)
        return [Generation(p.pages[0].text.rstrip(".").split()[-1] if p.pages else "none", 10, 2) for p in prompts]


class SelfAnsweringBm25(Bm25Backbone):
    """bm25 retrieval whose backbone also answers with 'its own model' (a scripted backend, one per backbone)."""

    family = "bm25-self"
    backends: list[Scripted] = []

    def describe(self) -> str:
        return "bm25-self"

    def answer_backend(self, spec: dict[str, Any]) -> Scripted:
        backend = Scripted("own", spec)
        SelfAnsweringBm25.backends.append(backend)
        return backend


@pytest.fixture
def self_family(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(FAMILIES, "bm25-self", f"{__name__}:SelfAnsweringBm25")
    monkeypatch.setattr(SelfAnsweringBm25, "backends", [])


@pytest.fixture
def qa_folder(tmp_path: Path) -> Path:
    docs = [{"_id": f"d{i}", "title": "", "text": fact} for i, (fact, _, _) in enumerate(FACTS)]
    root = write_beir(tmp_path / "qa", docs, {}, [(f"q{i}", f"d{i}", 1) for i in range(len(FACTS))])
    (root / "queries.jsonl").write_text("".join(json.dumps({"_id": f"q{i}", "text": q, "metadata": {"answer": a}})
                                                + "\n" for i, (_, q, a) in enumerate(FACTS)))
    return root


def _files(results: Path) -> dict[str, Any]:
    """Every file under results: relative path -> the saved ranking for rankings, else None."""
    return {p.relative_to(results).as_posix(): json.loads(gzip.decompress(p.read_bytes()))
            if p.name.endswith(".run.json.gz") else None for p in sorted(results.rglob("*")) if p.is_file()}


def _config(qa_folder: Path, text_folder: Path, answers: dict[str, Any] | None) -> RunConfig:
    data: dict[str, Any] = {"backbones": [{"family": "bm25"}, {"family": "bm25-self"}], "variants": ["base"],
                            "tasks": [str(qa_folder), str(text_folder)]}
    if answers is not None:
        data["answers"] = answers
    return RunConfig(**data)


def _records(results: Path) -> dict[tuple[str, str, str], dict[str, Any]]:
    recs = [json.loads(p.read_text()) for p in results.glob("runs/*/*/*.answers.*.json")]
    return {(r["backbone"], r["variant"], str(r["k"])): r for r in recs}


def test_answer_backend_or_none(self_family: None) -> None:
    spec = BackendSpec(kind="hf", max_page_tokens=99)
    backend = own_backend(SelfAnsweringBm25(SelfAnsweringBm25.config_class()), spec)
    assert isinstance(backend, Scripted) and backend.spec == spec.model_dump()  # the answerer spec as a dict
    assert own_backend(Bm25Backbone(Bm25Backbone.config_class()), spec) is None


def test_run_answers_rows(qa_folder: Path, text_folder: Path, tmp_path: Path, self_family: None,
                          monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    shared: list[Scripted] = []

    def make(spec: BackendSpec) -> Scripted:  # the run's shared answerer (the config's answerer spec)
        assert spec.kind == "llama-cpp" and spec.n_ctx == 1024
        shared.append(Scripted())
        return shared[-1]

    monkeypatch.setattr("harness.answers.run.make_backend", make)
    results = tmp_path / "with" / "results"
    answers = {"answerer": {"kind": "llama-cpp", "n_ctx": 1024}, "ks": [1, 2], "limit": 3}
    with caplog.at_level(logging.INFO, logger="harness.answers.run"):
        run(_config(qa_folder, text_folder, answers), results=str(results))
    # the text folder has no answers: one log line, no error
    assert sum("Textset" in r.message and "not answered" in r.message for r in caplog.records) == 1
    recs = _records(results)
    assert set(recs) == {("bm25", "base", "1"), ("bm25", "base", "2"), ("bm25-self", "base", "1"),
                         ("bm25-self", "base", "2"), ("-", "oracle", "gold"), ("-", "no-retrieval", "0")}
    # one shared answerer built once; the own-model row answered with its own backend (a different identity,
    # so it has its own oracle and no-retrieval rows, written under its own answerer tag)
    assert len(shared) == 1 and len(SelfAnsweringBm25.backends) == 1
    tags = {json.loads(p.read_text())["answerer_tag"] for p in results.glob("runs/*/*/*.answers.*.json")}
    assert len(tags) == 2 and {t.split("-")[0] for t in tags} == {"scripted", "own"}
    assert len(list(results.glob("runs/oracle/*/*.answers.*.json"))) == 2
    assert recs[("bm25-self", "base", "1")]["answerer"]["kind"] == "own"
    # limit: the first 3 questions; bm25 finds each fact's page first, the scripted answerer reads its last word
    k1 = recs[("bm25", "base", "1")]
    assert k1["queries"] == 3 and k1["scores"]["recall"] == 1.0
    assert [k1["per_query"][q]["answer"] for q in ("q0", "q1", "q2")] == ["million", "infrared", "300"]
    assert k1["scores"]["em"] == pytest.approx(2 / 3, abs=1e-4)
    # calls of each answerer: k1, k2 and no-retrieval (3 each); the oracle's gold pages are k1's pages, whose
    # answers the store already has
    assert shared[0].calls == 9 and SelfAnsweringBm25.backends[0].calls == 9
    assert [p.name for p in (results / "answers").iterdir()] == [f"{sorted(tags)[1]}.jsonl"]  # the first built

    # a rerun answers from the store: no new call
    run(_config(qa_folder, text_folder, answers), results=str(results))
    assert shared[1].calls == 0 and SelfAnsweringBm25.backends[1].calls == 0
    assert all(r["cost"]["calls"] == 0 for r in _records(results).values())

    # without `answers:` the run writes exactly the retrieval files, nothing else
    plain = tmp_path / "without" / "results"
    run(_config(qa_folder, text_folder, None), results=str(plain))
    expected = {k: v for k, v in _files(results).items() if ".answers." not in k and not k.startswith("answers/")}
    assert _files(plain) == expected and len(shared) == 2


def test_run_answers_only_the_chosen_rows(qa_folder: Path, text_folder: Path, tmp_path: Path, self_family: None,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("harness.answers.run.make_backend", lambda spec: pytest.fail("no shared row is answered"))
    results = tmp_path / "results"
    answers = {"ks": [1], "variants": [{"name": "base", "backbones": [1]}, "svrag"], "no_retrieval": False}
    run(_config(qa_folder, text_folder, {**answers, "tasks": [1]}), results=str(results))  # the task without answers
    assert _records(results) == {} and not SelfAnsweringBm25.backends
    run(_config(qa_folder, text_folder, answers), results=str(results))
    assert set(_records(results)) == {("bm25-self", "base", "1"), ("-", "oracle", "gold")}


def test_answers_config_errors(tmp_path: Path) -> None:
    def load(answers: str) -> RunConfig:
        path = tmp_path / "run.yaml"
        path.write_text(f"backbones: [{{family: bm25}}]\ntasks: [generated]\nanswers: {answers}\n")
        return load_run_config(path)

    assert load("{}").answers == AnswersSpec()  # defaults: the hf answerer, k 1 and 3, every row
    assert load("{}").answers.answerer.kind == "hf"
    assert load("{variants: [base, svrag]}").answers.answers_row(["svrag"], 0)  # svrag need not be in the run
    for text, message in [("{answerer: {kind: hf, temprature: 0}}", "answers.answerer.temprature: Extra inputs"),
                          ("{answerer: {kind: vllm}}", "answers.answerer.kind: Input should be"),
                          ("{ks: [1, 0]}", "answers.ks: Value error, every k must be at least 1"),
                          ("{limit: 0}", "answers.limit: Input should be greater than or equal to 1"),
                          ("{k: [1]}", "answers.k: Extra inputs are not permitted"),
                          ("{backbones: [1]}", r"answers.backbones: no backbone with index \[1\]"),
                          ("{tasks: [0, 1]}", r"answers.tasks: no task with index \[1\] \(the run has 1\)"),
                          ("{variants: [{name: base, backbones: [2]}]}", r"answers.variants.0.backbones: no backbone"),
                          ("{variants: [{name: base, layers: 2}]}", "answers.variants.0.layers: Extra inputs")]:
        with pytest.raises(ConfigError, match=message):
            load(text)


def test_answers_command_self(qa_folder: Path, tmp_path: Path, self_family: None,
                              capsys: pytest.CaptureFixture[str]) -> None:
    from harness.cli import main

    results = tmp_path / "results"
    argv = ["answers", "--task", str(qa_folder), "--k", "1", "--answerer", "self", "--answerer-set",
            "max_page_tokens=64", "--results", str(results), "-q", "--no-baseline"]
    assert main([argv[0], "--backbone", "bm25", *argv[1:]]) == 2
    assert "--answerer self: the bm25 backbone cannot answer (it has no answer_backend" in capsys.readouterr().err
    assert not results.exists()  # nothing built, nothing written
    assert main([argv[0], "--backbone", "bm25-self", *argv[1:]]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split("\t")[:3] for line in lines] == [["base/bm25-self", "QaRetrieval", "k=1"],
                                                        ["oracle", "QaRetrieval", "k=gold"]]
    backend, = SelfAnsweringBm25.backends
    assert backend.calls == 4 and backend.spec["max_page_tokens"] == 64  # the oracle reads k1's pages: stored
    record = json.loads(Path(lines[0].split("\t")[-1]).read_text())
    assert record["answerer"]["kind"] == "own" and record["scores"]["em"] == 0.75  # "million" vs "1204 million"
    assert [p.name for p in (results / "answers").iterdir()] == [f"{record['answerer_tag']}.jsonl"]


def test_answer_rows_are_named_like_the_retrieval_rows(qa_folder: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Two configurations of one backbone (same tag) are two answer rows, named as the leaderboard names them."""
    from harness.report.results import collect

    monkeypatch.setattr("harness.answers.run.make_backend", lambda spec: Scripted())
    results = tmp_path / "results"
    config = RunConfig(backbones=[{"family": "bm25"}, {"family": "bm25", "config": {"k1": 1.2}}], variants=["base"],
                       tasks=[str(qa_folder)], answers={"ks": [1], "oracle": False, "no_retrieval": False})
    run(config, results=str(results))
    assert set(_records(results)) == {("bm25", "base", "1"), ("bm25 [k1=1.2]", "base", "1")}
    assert {e.backbone for e in collect(results)} == {"bm25", "bm25 [k1=1.2]"}
