"""The Syntriever variant end to end with a scripted LLM: the text setting (a training split's queries, pooled
MiniLM, through the pipeline and the leaderboard) and the page setting (pseudo-queries, tiny colpali, passages
rendered as page images), both stages, the stage-1 cache and the training record."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import FACTS, write_beir
from harness.backbones import Page, build_backbone
from harness.config import ConfigError, RunConfig
from harness.pipeline import run, training_corpus
from harness.synth.backends import Choice, Generation, GenParams, Prompt, Score
from harness.variants import TrainingCorpus
from models.syntriever import model as syn_model
from models.syntriever import recipe
from tasks.beir_folder import BeirFolderTask


class ScriptedLLM:
    """Writes a passage that repeats the prompt's last question; answers "yes" / "1" to every choice."""

    kind, model, instruct, sees_images, parallelism = "fake", "scripted", True, False, 1

    def __init__(self) -> None:
        self.calls = 0

    def generate(self, prompts: Sequence[Prompt], params: GenParams,
                 seeds: Sequence[int] | None = None) -> list[Generation]:
        out = []
        for p in prompts:
            self.calls += 1
            words = re.findall(r"[A-Za-z]{3,}", p.text)[-12:]
            text = "What is " + " ".join(words[-4:]) + "?" if "image" in p.text or "<page" in p.text else \
                "This passage explains " + " ".join(words)
            out.append(Generation(text, n_prompt_tokens=len(p.text.split()), n_tokens=len(text.split())))
        return out

    def score(self, prompts: Sequence[Prompt], continuations: Sequence[str]) -> list[Score]:
        self.calls += len(prompts)
        return [Score(-float(len(c)), max(1, len(c.split())), {"n_prompt_tokens": 5}) for c in continuations]

    def next_token_logprobs(self, prompt: Prompt, candidates: Sequence[str]) -> Choice:
        self.calls += 1
        return Choice({c: (-0.1 if i == 0 else -2.4) for i, c in enumerate(candidates)}, {"n_prompt_tokens": 7})

    def prepare(self, pages: Sequence[Page]) -> None:
        pass

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "model": self.model}


@pytest.fixture
def llm(monkeypatch: pytest.MonkeyPatch) -> ScriptedLLM:
    fake = ScriptedLLM()
    monkeypatch.setattr(recipe, "make_backend", lambda spec: fake)
    return fake


@pytest.fixture
def split_folder(tmp_path: Path) -> Path:
    """One corpus, queries 0-3 in the train split, 4-5 in the test split."""
    docs = [{"_id": f"d{i}", "title": "", "text": fact} for i, (fact, _) in enumerate(FACTS)]
    queries = {f"q{i}": q for i, (_, q) in enumerate(FACTS)}
    root = write_beir(tmp_path / "split", docs, queries, [(f"q{i}", f"d{i}", 1) for i in range(4)], split="train")
    write_beir(root, docs, queries, [(f"q{i}", f"d{i}", 1) for i in range(4, 6)], split="test")
    return root


def test_train_split_corpus_carries_only_that_split(split_folder: Path) -> None:
    task = BeirFolderTask(split_folder, split="train")
    plain, supervised = training_corpus(task), training_corpus(task, with_queries=True)
    assert plain.train_queries == {} and plain.train_qrels == {}
    assert sorted(supervised.train_queries) == ["q0", "q1", "q2", "q3"]
    assert supervised.train_qrels["q2"] == {"d2": 1} and len(supervised.pages) == len(FACTS)


def _text_run(folder: Path, results: Path, variants: list[dict[str, Any]], split: str = "test") -> RunConfig:
    return RunConfig(name="syn", results=str(results), seed=0,
                     backbones=[{"family": "ocr-text", "config": {"mode": "pooled"}}], variants=variants,
                     tasks=[{"path": str(folder), "split": split, "name": "SplitText"}])


@pytest.mark.slow
def test_text_setting_both_stages_through_the_pipeline(split_folder: Path, tmp_path: Path, llm: ScriptedLLM) -> None:
    train_spec = {"path": str(split_folder), "split": "train"}
    common = {"train": {"batch_size": 4, "steps": 2, "lr": 1e-4}, "stage2": {"batch_size": 4, "steps": 2},
              "top_k": 3, "verify_by": "yesno"}
    variants = ["base", {"name": "syntriever", "config": {**common, "stages": 1}, "train_corpus": train_spec},
                {"name": "syntriever", "config": {**common, "stages": 2, "reg_weight": 0.5},
                 "train_corpus": train_spec}]
    outcomes = run(_text_run(split_folder, tmp_path / "results", variants))
    assert len(outcomes) == 3
    from harness.report.results import collect

    rows = {(e.backbone, e.variant) for e in collect(tmp_path / "results")}
    assert {v for _, v in rows} == {"base", "syntriever-s1", "syntriever-s2"}
    ckpts = sorted((tmp_path / "checkpoints" / "syntriever").glob("*/*-train-*/training.json"))
    records = [json.loads(p.read_text()) for p in ckpts]
    by_stage = {r["stages_trained"]: r for r in records}
    assert set(by_stage) == {1, 2}
    s1, s2 = by_stage[1], by_stage[2]
    for r in (s1, s2):
        assert {"wall_s", "llm_calls", "llm_tokens", "examples", "loss_log", "per_stage"} <= set(r)
        assert r["examples"] == 4 and r["stage1_loss"] == "multi_positive" and r["finetune"] == "full"
        assert r["stage1"]["query_source"] == "train_split" and Path(r["loss_log"]).is_absolute()
        lines = [json.loads(x) for x in Path(r["loss_log"]).read_text().splitlines()]
        assert lines and all({"step", "epoch", "loss"} <= set(x) for x in lines)
    # 4 queries x (relevant, irrelevant, CoT) + 4 self-verifications; stage 2: 3 pairs x 2 orders x 4 queries
    assert s1["per_stage"]["stage1"]["llm_calls"] == 16 and s1["llm_calls"] == 16
    assert s2["stage1"]["reused"] is True  # stage 1 came from the cache, its costs still count
    assert s2["per_stage"]["stage2"]["llm_calls"] == 24 and s2["llm_calls"] == 16 + 24
    assert s2["llm_tokens"] > s2["per_stage"]["stage2"]["llm_tokens"] > 0
    assert llm.calls == 16 + 24  # the stages-2 run made no stage-1 call: the synth store served nothing twice
    # the records of the run carry the training record, so the leaderboard reads its costs
    run_records = [json.loads(p.read_text()) for p in (tmp_path / "results" / "runs").glob("syntriever*/*/*.json")]
    assert {r["variant"] for r in run_records} == {"syntriever-s1", "syntriever-s2"}
    assert all(r["training"]["llm_calls"] > 0 for r in run_records)
    # another stage-1 setting from the warm store: no new call, and the row still reports the calls behind its data
    calls = llm.calls
    again = {"name": "syntriever", "config": {**common, "stages": 1, "train": {"batch_size": 4, "steps": 3}},
             "train_corpus": train_spec}
    run(_text_run(split_folder, tmp_path / "results", ["base", again]))
    assert llm.calls == calls
    fresh = [json.loads(p.read_text())
             for p in (tmp_path / "checkpoints" / "syntriever").glob("*/*-train-*/training.json")]
    redo = [r for r in fresh if r["stages_trained"] == 1 and r["stage1"]["train"]["steps"] == 3]
    assert len(redo) == 1 and redo[0]["llm_calls"] == 16 and redo[0]["per_stage"]["stage1"]["llm_new"] == 0


def test_the_evaluated_split_is_never_a_training_split(split_folder: Path, tmp_path: Path) -> None:
    variants = [{"name": "syntriever", "train_corpus": {"path": str(split_folder), "split": "test"}}]
    with pytest.raises(ConfigError, match="also evaluated"):
        run(_text_run(split_folder, tmp_path / "results", variants))


def test_single_target_loss_is_selectable_and_recorded(split_folder: Path, tmp_path: Path, llm: ScriptedLLM) -> None:
    backbone = build_backbone("ocr-text", {"mode": "pooled"})
    corpus = training_corpus(BeirFolderTask(split_folder, split="train"), with_queries=True)
    config = recipe.Config(stages=1, loss="single_target", train={"batch_size": 2, "steps": 2}, max_queries=2,
                           verify=False)
    out = recipe.train(backbone, corpus, config, tmp_path / "ck" / "a" / "run")
    record = json.loads((out / "training.json").read_text())
    assert record["stage1_loss"] == "single_target" and record["examples"] == 2
    assert record["per_stage"]["stage1"]["llm_calls"] == 2 * 3  # no verification
    encoder = syn_model.load_model(backbone, out)
    assert encoder.mteb_model_meta.name.startswith("syntriever-s1/")


def test_without_passages_and_cot_stage1_calls_no_llm(split_folder: Path, tmp_path: Path, llm: ScriptedLLM) -> None:
    """use_passages and use_cot false (gold pages only): no passage, CoT or verification is written or paid for."""
    backbone = build_backbone("ocr-text", {"mode": "pooled"})
    corpus = training_corpus(BeirFolderTask(split_folder, split="train"), with_queries=True)
    config = recipe.Config(stages=1, use_passages=False, use_cot=False, train={"batch_size": 2, "steps": 2})
    out = recipe.train(backbone, corpus, config, tmp_path / "ck" / "a" / "run")
    record = json.loads((out / "training.json").read_text())
    assert llm.calls == 0 and record["llm_calls"] == 0
    assert record["stage1"]["synthetic"] == {"queries": 4, "generated": False} and record["examples"] == 4
    assert record["stage1"]["train"]["steps"] == 2


def test_tiny_colpali_through_both_stages_with_pages(image_folder: Path, tmp_path: Path, llm: ScriptedLLM) -> None:
    task = BeirFolderTask(image_folder, split="test")
    corpus = training_corpus(task)  # pages only: pseudo-queries
    assert corpus.train_queries == {}
    backbone = build_backbone("tiny", {"arch": "colqwen2_5"})
    config = recipe.Config(stages=2, max_pages=4, train={"batch_size": 2, "steps": 2},
                           stage2={"batch_size": 2, "steps": 2}, top_k=3, judge="ql-pmi", reg_weight=0.1)
    out = recipe.train(backbone, corpus, config, tmp_path / "ck" / "tiny" / "run")
    record = json.loads((out / "training.json").read_text())
    assert record["finetune"] == "lora" and record["synthetic_as"] == "image"
    assert record["stage1"]["query_source"] == "pseudo_queries" and record["examples"] == 4
    assert record["stage2"]["steps"] == 2 and record["per_stage"]["stage2"]["llm_calls"] > 0
    trained = syn_model.load_model(backbone, out)  # the same process: LoRA still attached, merged now
    fresh = syn_model.load_model(build_backbone("tiny", {"arch": "colqwen2_5"}), out)  # a fresh process
    assert trained.mteb_model_meta.revision == fresh.mteb_model_meta.revision
    assert fresh.mteb_model_meta.name.startswith("syntriever-s2/tiny-")
    untrained = build_backbone("tiny", {"arch": "colqwen2_5"}).fingerprint()
    assert fresh.mteb_model_meta.revision != untrained
    vecs = fresh.model.encode_queries(["a question"])
    assert torch.isfinite(vecs[0]).all()


def test_rendered_passages_are_page_images() -> None:
    from models.syntriever.data import passage_page, query_id

    page = passage_page("x", "A generated passage " * 40, as_image=True)
    assert page.image is not None and page.text is None and page.image.size[0] == 640
    assert passage_page("y", "text", as_image=False).text == "text"
    assert query_id("p1", "a") != query_id("p1", "b") and query_id("p1", "a") == query_id("p1", "a")


def test_empty_corpus_queries_are_an_error(tmp_path: Path, llm: ScriptedLLM) -> None:
    backbone = build_backbone("ocr-text", {"mode": "pooled"})
    corpus = TrainingCorpus("c", [Page("d0", text="x")], {"q0": "question"}, {"q0": {"missing": 1}})
    with pytest.raises(ValueError, match="no training query"):
        recipe.train(backbone, corpus, recipe.Config(stages=1), tmp_path / "a" / "b" / "c")


def test_query_filter_keeps_pseudo_queries_their_page_makes_more_likely(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """query_filter ql-pmi: a pseudo-query survives only when log p(query | its page) > log p(query) (PMI > 0)."""
    from harness.synth import operations as ops
    from harness.synth.store import SynthStore

    pages = [Page("p0", text="the eiffel tower is in paris"), Page("p1", text="mitochondria make energy")]
    written = {"p0": ["where is the eiffel tower", "how tall are giraffes"], "p1": ["what do mitochondria make"]}
    monkeypatch.setattr(ops, "pseudo_queries", lambda backend, store, ps, **kw: (
        {p.id: written[p.id] for p in ps}, ops.Report("queries")))

    class PageAwareLM(ScriptedLLM):
        def score(self, prompts: Sequence[Prompt], continuations: Sequence[str]) -> list[Score]:
            out = []
            for p, c in zip(prompts, continuations, strict=True):
                words = set(c.split())
                per_token = -2.0 if not p.pages else (-1.0 if words & set(p.pages[0].text.split()) else -3.0)
                out.append(Score(per_token * len(words), len(words)))
            return out

    corpus = TrainingCorpus("c", pages)
    report: dict[str, Any] = {}
    with SynthStore(tmp_path / "s.jsonl") as store:
        kept = recipe.training_queries(PageAwareLM(), store, corpus,
                                       recipe.Config(max_pages=None, query_filter="ql-pmi"), report)
        unfiltered = recipe.training_queries(PageAwareLM(), store, corpus, recipe.Config(max_pages=None), {})
    assert sorted(q.text for q in kept) == ["what do mitochondria make", "where is the eiffel tower"]
    assert len(unfiltered) == 3
    assert report["query_filter"]["queries"] == 3 and report["query_filter"]["kept"] == 2


def test_stage1_examples_with_and_without_the_generated_passages() -> None:
    from models.syntriever.data import TrainQuery

    pages = {"g": Page("g", text="gold page")}
    tq = TrainQuery("q", "a question", ["g"], positives=[Page("q:pos0", text="kept passage")],
                    negatives=[Page("q:neg0", text="irrelevant passage")], cot=Page("q:cot", text="reasoning"))
    ids = [[p.id for p in e.positives] + ["|"] + [p.id for p in e.negatives]
           for e in recipe.stage1_examples([tq], pages, recipe.Config())]
    assert ids == [["g", "q:pos0", "q:cot", "|", "q:neg0"]]
    single = recipe.stage1_examples([tq], pages, recipe.Config(loss="single_target"))[0]
    assert [p.id for p in single.positives] == ["g"] and len(single.negatives) == 3
    bare = recipe.stage1_examples([tq], pages, recipe.Config(use_passages=False))[0]
    assert [p.id for p in bare.positives] == ["g", "q:cot"] and bare.negatives == []
