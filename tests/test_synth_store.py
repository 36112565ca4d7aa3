"""The synth store and parsers, with fake backends: resume, interrupted writes, locking, garbled answers."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from harness.backbones.base import Page
from harness.synth import operations as ops
from harness.synth import parsing
from harness.synth.backends import Choice, Generation, GenParams, Prompt, Score
from harness.synth.store import StoreError, SynthStore


class FakeBackend:
    """Answers from a script; counts calls; can fail on a given call."""

    kind, model, instruct, sees_images, parallelism = "fake", "fake-1", True, False, 1

    def __init__(self, answers: Sequence[str] = ("Highly Relevant",), fail_on: int | None = None) -> None:
        self.answers, self.fail_on, self.calls = list(answers), fail_on, 0
        self.prompts: list[Prompt] = []

    def _tick(self, prompt: Prompt) -> int:
        self.calls += 1
        self.prompts.append(prompt)
        if self.fail_on is not None and self.calls == self.fail_on:
            raise RuntimeError("model crashed")
        return self.calls - 1

    def generate(self, prompts: Sequence[Prompt], params: GenParams,
                 seeds: Sequence[int] | None = None) -> list[Generation]:
        return [Generation(self.answers[self._tick(p) % len(self.answers)]) for p in prompts]

    def score(self, prompts: Sequence[Prompt], continuations: Sequence[str]) -> list[Score]:
        return [Score(-float(self._tick(p) + 1), 2) for p in prompts]

    def next_token_logprobs(self, prompt: Prompt, candidates: Sequence[str]) -> Choice:
        self._tick(prompt)
        return Choice({c: (-0.1 if i == 0 else -2.4) for i, c in enumerate(candidates)})

    def prepare(self, pages: Sequence[Page]) -> None:
        pass

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "model": self.model}


def _items(n: int = 4) -> list[ops.JudgeItem]:
    return [ops.JudgeItem(f"q{i}", f"question {i}?", Page(id=f"d{i}", text=f"page {i}")) for i in range(n)]


def test_parsers_read_varied_answers_and_refuse_garbage() -> None:
    assert parsing.parse_grade("Highly Relevant") == "highly"
    assert parsing.parse_grade("  'somewhat relevant'.") == "somewhat"
    assert parsing.parse_grade("The image is Not Relevant to the question.") == "not"
    assert parsing.parse_grade("Irrelevant") == "not"
    assert parsing.parse_grade("Not Relevant. It is not highly relevant") == "not"
    assert parsing.parse_grade("Highly") == "highly"
    assert parsing.parse_grade("asdf qwerty") is None
    assert parsing.parse_grade("") is None
    assert parsing.parse_yes_no("Yes, it is.") is True
    assert parsing.parse_yes_no(" no") is False
    assert parsing.parse_yes_no("maybe") is None
    assert parsing.parse_choice("Passage #2") == 2
    assert parsing.parse_choice("#1 is better") == 1
    assert parsing.parse_choice("neither") is None
    raw = ' 1. Question: "What was the revenue in 2019?"\nAnswer: 41'
    assert parsing.clean_query(raw) == "What was the revenue in 2019?"
    assert parsing.clean_query("\n\n   \n") is None
    assert parsing.clean_query("?? 123 ...") is None
    assert parsing.query_key("What is X?") == parsing.query_key("what is x")


def test_garbled_answers_are_counted_not_crashed_on(tmp_path: Path) -> None:
    backend = FakeBackend(answers=["Highly Relevant", "%%%$$$ garbled", "", "Not Relevant"])
    with SynthStore(tmp_path / "s.jsonl") as store:
        labels, report = ops.judge_graded(backend, store, _items(4), progress=False)
    assert labels == ["highly", None, None, "not"]
    assert report.statuses == {"ok": 2, "unparseable": 1, "empty": 1}
    assert "unparseable 1" in report.line() and "empty 1" in report.line()
    records = [json.loads(line) for line in (tmp_path / "s.jsonl").read_text().splitlines()]
    assert [r["raw"] for r in records] == ["Highly Relevant", "%%%$$$ garbled", "", "Not Relevant"]
    for r in records:  # provenance on every record
        assert {"key", "op", "backend", "model", "prompt_id", "params", "seed", "sample", "inputs", "raw", "parsed",
                "status", "time", "elapsed_s"} <= set(r)


def test_resume_serves_stored_records_and_writes_no_duplicates(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    first = FakeBackend(fail_on=3)  # the third call dies: two records are kept
    with SynthStore(path) as store, pytest.raises(ops.OperationError, match="2 new record"):
        ops.judge_query_likelihood(first, store, _items(5), progress=False)
    assert len(path.read_text().splitlines()) == 2

    second = FakeBackend()
    with SynthStore(path) as store:
        scores, report = ops.judge_query_likelihood(second, store, _items(5), progress=False)
    assert second.calls == 3 and report.reused == 2 and report.new == 3
    keys = [json.loads(line)["key"] for line in path.read_text().splitlines()]
    assert len(keys) == len(set(keys)) == 5
    assert all(isinstance(s, float) for s in scores)


def test_judgements_are_keyed_by_what_was_judged_not_by_the_callers_ids(tmp_path: Path) -> None:
    page = Page(id="d0", text="page 0")
    with SynthStore(tmp_path / "s.jsonl") as store:
        first, _ = ops.judge_query_likelihood(FakeBackend(), store, [ops.JudgeItem("p#q0", "what is X?", page)],
                                              pmi=True, progress=False)
        # the same id for another query (SynTR's positional ids after a prompt change) is a new judgement ...
        backend = FakeBackend()
        _, report = ops.judge_query_likelihood(backend, store, [ops.JudgeItem("p#q0", "where is Y?", page)],
                                               pmi=True, progress=False)
        assert backend.calls == 2 and report.reused == 0
        # ... another id for the same query and page (another recipe) is the stored one
        backend = FakeBackend()
        again, report = ops.judge_query_likelihood(backend, store, [ops.JudgeItem("pq-1", "what is X?", page)],
                                                   pmi=True, progress=False)
        assert backend.calls == 0 and report.reused == 2 and again == first
        # and a page whose text changed under the same id (a regenerated passage) is judged again
        backend = FakeBackend()
        ops.judge_yesno(backend, store, [ops.JudgeItem("q", "what is X?", Page(id="q:relevant", text="one"))],
                        progress=False)
        ops.judge_yesno(backend, store, [ops.JudgeItem("q", "what is X?", Page(id="q:relevant", text="two"))],
                        progress=False)
        assert backend.calls == 2
        # the same judgement asked twice in one batch is one call, served to both
        backend = FakeBackend()
        twice = [ops.JudgeItem(f"a{i}", "why?", page) for i in range(2)]
        values, report = ops.judge_query_likelihood(backend, store, twice, progress=False)
        assert backend.calls == 1 and values[0] == values[1] and report.notes == {"repeated_calls": 1}


def test_truncated_last_line_is_counted_cut_and_redone(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    with SynthStore(path) as store:
        ops.judge_yesno(FakeBackend(), store, _items(3), progress=False)
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:2]) + lines[2][: len(lines[2]) // 2])  # a kill in the middle of a write
    backend = FakeBackend()
    with SynthStore(path) as store:
        assert store.bad_lines == 1
        p_yes, report = ops.judge_yesno(backend, store, _items(3), progress=False)
        assert "1 bad line(s) skipped" in store.summary()
    assert backend.calls == 1 and report.reused == 2
    records = [json.loads(line) for line in path.read_text().splitlines()]  # every line parses again
    assert len(records) == 3 and len({r["key"] for r in records}) == 3
    assert all(0.5 < p < 1 for p in p_yes)  # FakeBackend favours the first candidate, "yes"


def test_a_store_is_locked_against_a_second_writer(tmp_path: Path) -> None:
    with SynthStore(tmp_path / "s.jsonl"), pytest.raises(StoreError, match="another process"):
        SynthStore(tmp_path / "s.jsonl")


def test_pairwise_averages_both_orders_cancelling_position_bias(tmp_path: Path) -> None:
    # FakeBackend always prefers whatever comes first: averaged over both orders that is no preference at all.
    items = [ops.PairItem("q0", "question?", Page(id="a", text="A"), Page(id="b", text="B"))]
    with SynthStore(tmp_path / "s.jsonl") as store:
        prefs, report = ops.judge_pairwise(FakeBackend(), store, items, progress=False)
    assert prefs[0] == pytest.approx(0.5)
    assert report.notes["mean_p_first_x1000"] > 900  # and the bias is reported
    firsts = [json.loads(line)["inputs"]["first"] for line in (tmp_path / "s.jsonl").read_text().splitlines()]
    assert firsts == ["a", "b"]


def test_pseudo_queries_drop_duplicates_and_empties_then_resample(tmp_path: Path) -> None:
    backend = FakeBackend(answers=["What is X?", "what is x", "", "How big is Y?", "Where is Z?"])
    pages = [Page(id="p0", text="X and Y")]
    with SynthStore(tmp_path / "s.jsonl") as store:
        queries, report = ops.pseudo_queries(backend, store, pages, n=3, max_samples=6, progress=False)
    assert queries == {"p0": ["What is X?", "How big is Y?", "Where is Z?"]}
    assert report.notes["duplicates"] == 1 and report.statuses["empty"] == 1
    records = [json.loads(line) for line in (tmp_path / "s.jsonl").read_text().splitlines()]
    assert [r["sample"] for r in records] == [0, 1, 2, 3, 4]
    assert len({r["seed"] for r in records}) == 5  # a distinct, recorded seed per sample
    assert records[0]["params"]["top_p"] == 0.9 and records[0]["params"]["temperature"] == 1.0


def test_syntriever_verifies_the_generated_passage(tmp_path: Path) -> None:
    backend = FakeBackend(answers=["GENERATED relevant passage about rivers.", "An unrelated passage on cooking.",
                                   "Step 1: rivers flood in spring."])
    with SynthStore(tmp_path / "s.jsonl") as store:
        samples, reports = ops.syntriever_synthesis(backend, store, {"q0": "When do rivers flood?"}, progress=False)
    verify_prompt = backend.prompts[-1]
    assert verify_prompt.pages[0].text == "GENERATED relevant passage about rivers."  # not the input query
    assert samples[0].positives == ["GENERATED relevant passage about rivers."]  # verified: yes
    assert samples[0].negatives == ["An unrelated passage on cooking."]
    assert samples[0].cot == "Step 1: rivers flood in spring."
    assert [r.op for r in reports] == ["syntriever", "self_verify"]


def test_unreadable_next_token_answer_is_unparseable(tmp_path: Path) -> None:
    class NoCandidates(FakeBackend):
        def next_token_logprobs(self, prompt: Prompt, candidates: Sequence[str]) -> Choice:
            return Choice({c: -math.inf for c in candidates}, {"top": ["Maybe"]})

    with SynthStore(tmp_path / "s.jsonl") as store:
        values, report = ops.judge_yesno(NoCandidates(), store, _items(2), progress=False)
    assert values == [None, None] and report.statuses == {"unparseable": 2}


def test_a_wrong_backend_option_is_a_clear_error(text_folder: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from harness.cli import main

    args = ["synth", "queries", str(text_folder), "--store", str(tmp_path / "s.jsonl"), "--set", "colour=red"]
    assert main(args) == 2
    assert "colour: Extra inputs are not permitted" in capsys.readouterr().err


def test_cost_counts_the_records_behind_a_result_served_or_new(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    with SynthStore(path) as store:
        ops.judge_query_likelihood(FakeBackend(), store, _items(3), progress=False)
        made = store.cost()
        start = len(store.used)
        ops.judge_query_likelihood(FakeBackend(), store, _items(2), progress=False)  # served again, same run
        assert store.cost(start)[0] == 2
    assert made[0] == 3
    with SynthStore(path) as store:  # a rerun from a warm store: no new call, the same cost
        again = FakeBackend()
        ops.judge_query_likelihood(again, store, _items(3), progress=False)
        assert again.calls == 0 and store.cost() == made
