"""Each synthetic-data operation on the packaged Gemma 3 270M GGUF (llama.cpp, CPU), on tiny inputs; the
``harness synth`` command; and a kill in the middle of a run, resumed without duplicates."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import FACTS
from harness.backbones.base import Page
from harness.cli import main
from harness.synth import operations as ops
from harness.synth.backends import Generation, GenParams, Prompt, make_backend
from harness.synth.store import SynthStore

pytest.importorskip("llama_cpp", reason="llama-cpp-python is a dependency: run scripts/setup.sh")
PAGES = [Page(id=f"d{i}", text=fact) for i, (fact, _) in enumerate(FACTS[:3])]
QUERIES = [q for _, q in FACTS[:3]]


@pytest.fixture(scope="module")
def backend():  # noqa: ANN201
    return make_backend()  # the offline default: packaged GGUF, llama.cpp, base model -> few-shot prompts


def test_default_backend_is_the_packaged_base_model(backend) -> None:  # noqa: ANN001
    assert backend.describe() == {"kind": "llama-cpp", "model": "gemma-3-270m-q4_k_m.gguf", "instruct": False,
                                  "max_page_tokens": 512}


def test_pseudo_queries_on_the_packaged_model(backend, tmp_path: Path) -> None:  # noqa: ANN001
    params = GenParams(max_new_tokens=32, temperature=1.0, top_p=0.9)
    with SynthStore(tmp_path / "s.jsonl") as store:
        queries, report = ops.pseudo_queries(backend, store, PAGES[:2], n=2, params=params, progress=False)
    assert sum(len(q) for q in queries.values()) >= 2
    for qs in queries.values():
        assert len(qs) == len({q.lower() for q in qs}) and all(q.strip() and "\n" not in q for q in qs)
    record = json.loads((tmp_path / "s.jsonl").read_text().splitlines()[0])
    assert record["prompt_id"] == "syntr.general.fewshot.v1" and record["page_modes"] == ["text"]
    assert record["params"]["stop"] == ["\n"] and record["model"] == "gemma-3-270m-q4_k_m.gguf"
    with SynthStore(tmp_path / "s.jsonl") as store:  # a second run is served from the store entirely
        again, report2 = ops.pseudo_queries(backend, store, PAGES[:2], n=2, params=params, progress=False)
    assert again == queries and report2.new == 0


def test_judges_on_the_packaged_model(backend, tmp_path: Path) -> None:  # noqa: ANN001
    # Each query against its own page and another page.
    items = [ops.JudgeItem(f"q{i}", QUERIES[i], PAGES[j]) for i in range(2) for j in (i, 1 - i)]
    with SynthStore(tmp_path / "s.jsonl") as store:
        ql, _ = ops.judge_query_likelihood(backend, store, items, progress=False)
        pmi, pmi_report = ops.judge_query_likelihood(backend, store, items, pmi=True, progress=False)
        p_yes, _ = ops.judge_yesno(backend, store, items, progress=False)
        labels, graded = ops.judge_graded(backend, store, items, progress=False)
        prefs, pair = ops.judge_pairwise(
            backend, store, [ops.PairItem("q0", QUERIES[0], PAGES[0], PAGES[1])], progress=False)
    assert ql[0] > ql[1] and ql[2] > ql[3]  # query likelihood prefers the page that answers the query
    assert pmi[0] > pmi[1] and pmi[2] > pmi[3]
    assert pmi_report.reused == 4 and pmi_report.new == 2  # one prior per query; the likelihoods came from the store
    assert all(v is not None and 0 < v < 1 for v in p_yes)
    # each label is what the model wrote for that (query, page): its word is in the raw answer, and only the
    # answers the parser read count as ok
    graded_records = {(r["inputs"]["query"], r["inputs"]["page"]): r for r in map(
        json.loads, (tmp_path / "s.jsonl").read_text().splitlines()) if r["op"] == "judge_graded"}
    raws = [graded_records[(it.query, it.page.id)]["raw"].lower() for it in items]
    assert all(label is None or label in raw for label, raw in zip(labels, raws, strict=True))
    assert graded.statuses.get("ok", 0) == sum(label is not None for label in labels) and len(labels) == 4
    assert prefs[0] is not None and 0 <= prefs[0] <= 1 and pair.calls == 2


def test_syntriever_on_the_packaged_model(backend, tmp_path: Path) -> None:  # noqa: ANN001
    params = GenParams(max_new_tokens=40, temperature=0.7, top_p=1.0)
    with SynthStore(tmp_path / "s.jsonl") as store:
        samples, reports = ops.syntriever_synthesis(backend, store, {"q0": QUERIES[0]}, params=params,
                                                    progress=False)
    s = samples[0]
    assert len(s.positives) + len(s.negatives) >= 1
    records = [json.loads(x) for x in (tmp_path / "s.jsonl").read_text().splitlines()]
    made = {r["inputs"]["what"]: r for r in records if r["op"] == "syntriever"}
    assert sorted(made) == ["cot", "irrelevant", "relevant"]
    assert made["cot"]["params"]["stop"] == ["Question:"]  # base model: not "\n\n" (see the scripted test below)
    # the generated relevant passage (when there is one) is self-verified, and the verdict decides its side
    passage, irrelevant = made["relevant"]["parsed"], made["irrelevant"]["parsed"]
    verify = [r for r in records if r["op"] == "self_verify"]
    assert [v["inputs"]["page"] for v in verify] == (["q0:relevant"] if passage else [])
    verdict = verify[0]["parsed"] if verify else None
    rejected = passage is not None and verdict is not None and verdict < 0.5
    assert s.positives == ([passage] if passage and not rejected else [])
    assert s.negatives == ([passage] if rejected else []) + ([irrelevant] if irrelevant else [])


class _BlankLineFirst:
    """A base model (no chat template) that, like the packaged 270M model in about 1 call in 5, starts its answer with
    a blank line, then writes the passage, then a second paragraph. It honours ``stop`` as llama.cpp does."""

    kind, model, instruct, sees_images, parallelism = "scripted", "blank-line-first", False, False, 1
    RAW = "\nBLM encodes a RecQ-class DNA helicase.\n\nIt is mutated in Bloom syndrome.\nQuestion: next"

    def __init__(self) -> None:
        self.stops: list[tuple[str, ...]] = []

    def describe(self) -> dict:
        return {"kind": self.kind, "model": self.model}

    def generate(self, prompts, params, seeds=None) -> list[Generation]:  # noqa: ANN001
        self.stops.append(params.stop)
        cut = min([self.RAW.index(x) for x in params.stop if x in self.RAW] or [len(self.RAW)])
        return [Generation(self.RAW[:cut], 10, 12) for _ in prompts]


def test_syntriever_passage_after_a_leading_blank_line(tmp_path: Path) -> None:
    # A stop at "\n\n" turned such outputs into empty passages (9 of 10 empties in
    # benchmarks/synth_syntriever_empty.py); base models now stop at "Question:" and keep the first paragraph.
    llm = _BlankLineFirst()
    with SynthStore(tmp_path / "s.jsonl") as store:
        samples, reports = ops.syntriever_synthesis(llm, store, {"157": "BLM gene encodes RecQ-class DNA helicase."},
                                                    params=GenParams(max_new_tokens=16), verify=False, progress=False)
    assert set(llm.stops) == {("Question:",)}
    records = {r["inputs"]["what"]: r for r in map(json.loads, (tmp_path / "s.jsonl").read_text().splitlines())}
    assert {w: r["status"] for w, r in records.items()} == {"relevant": "ok", "irrelevant": "ok", "cot": "ok"}
    assert records["cot"]["raw"].startswith("\n") and "Bloom" in records["cot"]["raw"]  # recorded whole
    assert samples[0].cot == records["cot"]["parsed"] == "BLM encodes a RecQ-class DNA helicase."
    assert samples[0].positives == ["BLM encodes a RecQ-class DNA helicase."] and reports[0].statuses["ok"] == 3


@pytest.mark.slow
def test_synth_commands(text_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store, out = tmp_path / "q.jsonl", tmp_path / "queries.jsonl"
    assert main(["synth", "queries", str(text_folder), "--store", str(store), "--out", str(out), "--n", "1",
                 "--limit", "2", "--no-progress", "--set", "max_page_tokens=64"]) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert rows and all(r["page"].startswith("d") and r["text"] for r in rows)
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("query-id\tcorpus-id\nq0\td0\nq0\td1\n")
    judged = tmp_path / "j.jsonl"
    assert main(["synth", "judge", str(text_folder), "--pairs", str(pairs), "--judge", "ql", "--store",
                 str(tmp_path / "j_store.jsonl"), "--out", str(judged), "--no-progress"]) == 0
    scores = [json.loads(x)["ql"] for x in judged.read_text().splitlines()]
    assert scores[0] > scores[1]
    assert main(["synth", "syntriever", str(text_folder), "--limit", "1", "--max-new-tokens", "24",
                 "--store", str(tmp_path / "s.jsonl"), "--out", str(tmp_path / "samples.jsonl"), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "queries:" in text and "judge_ql:" in text and "syntriever:" in text and "self_verify" in text


@pytest.mark.slow
def test_a_killed_run_resumes_without_duplicates(text_folder: Path, tmp_path: Path) -> None:
    store = tmp_path / "q.jsonl"
    cmd = [sys.executable, "-m", "harness.cli", "synth", "queries", str(text_folder), "--store", str(store),
           "--n", "2", "--limit", "4", "--no-progress", "--set", "max_page_tokens=64"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while (not store.exists() or len(store.read_bytes().splitlines()) < 2) and time.monotonic() < deadline:
            time.sleep(0.05)
            assert proc.poll() is None, "the run finished before it could be killed"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    killed_at = len(store.read_bytes().splitlines())
    assert 2 <= killed_at < 8
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    records = [json.loads(x) for x in store.read_text().splitlines()]
    keys = [r["key"] for r in records]
    assert len(keys) == len(set(keys))  # nothing written twice
    reused = re.search(r"\((\d+) new, (\d+) reused", done.stdout)
    assert reused and int(reused.group(2)) >= killed_at - 1  # at most the line being written was lost
    samples = {(r["inputs"]["page"], r["sample"]) for r in records}
    assert len(samples) == len(records) and all(s < 4 for _, s in samples)


def test_instruct_gguf_prompts_go_through_the_chat_template(backend, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    # The packaged GGUF is a base model without a chat template: give it a simple one to run the instruct path.
    template = ("{% for m in messages %}<start_of_turn>{{ m['role'] }}\n{{ m['content'] }}<end_of_turn>\n{% endfor %}"
                "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")
    monkeypatch.setattr(backend, "template", template)
    monkeypatch.setattr(backend, "instruct", True)
    from harness.synth.prompts import YESNO_TEMPLATES

    prompt = Prompt.of(YESNO_TEMPLATES["chat"], [PAGES[0]], query=QUERIES[0])
    tokens, meta = backend.render(prompt)
    text = backend.llm.detokenize(tokens, special=True).decode()
    assert text.startswith("<bos><start_of_turn>user\nQuestion: When does the Orvell river flood?")
    assert text.endswith("<start_of_turn>model\n") and meta["page_modes"] == ["text"]
    choice = backend.next_token_logprobs(prompt, ["yes", "no"])
    assert all(v > -math.inf for v in choice.logprobs.values())


def test_picture_only_pages_are_skipped_and_counted(backend, tmp_path: Path) -> None:  # noqa: ANN001
    """A page whose OCR text is empty (a picture-only slide) cannot be read by a text-only model: queries skip it
    and count it, judges give None for it, and a rerun does the same instead of stopping at that page."""
    from PIL import Image

    from harness.synth.pages import OcrPage

    blank = Page(id="slide", image=Image.new("RGB", (200, 120), "white"))
    ocred = OcrPage(id="slide2", text="")  # what `harness synth queries` loads for a text-only model: OCR text only
    pages = [PAGES[0], blank, ocred]
    params = GenParams(max_new_tokens=24, temperature=1.0, top_p=0.9)
    for _ in range(2):
        with SynthStore(tmp_path / "s.jsonl") as store:
            queries, report = ops.pseudo_queries(backend, store, pages, n=1, params=params, progress=False)
            values, jreport = ops.judge_query_likelihood(
                backend, store, [ops.JudgeItem("q0", QUERIES[0], PAGES[0]), ops.JudgeItem("q0", QUERIES[0], blank)],
                pmi=True, progress=False)
        assert queries["slide"] == queries["slide2"] == [] and len(queries[PAGES[0].id]) == 1
        assert report.notes["skipped_no_text"] == 2
        assert values[0] is not None and values[1] is None and jreport.notes["skipped_no_text"] == 1
