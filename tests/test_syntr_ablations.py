"""SynTR's ablation switches: the graded and yes/no judges' label mapping (unreadable answers counted), extra
positives, judged vs random negatives, and multi-ranker reciprocal rank fusion. The judge is a scripted fake
(every answer fixed by the query's source page and the judged page), so each label's effect is checked exactly;
tests/test_syntr.py and tests/test_synth_ops.py keep the end-to-end and packaged-model paths."""

from __future__ import annotations

import json
import math
import random
import re
from pathlib import Path
from typing import Any

import pytest

from harness.backbones import build_backbone
from harness.backbones.base import Page
from harness.synth.backends import Choice, Generation
from harness.synth.store import SynthStore
from harness.train import rank
from helpers import SYNTR_CONFIG as CONFIG
from helpers import FakeBackend
from helpers import syntr_corpus as _corpus
from models.syntr import recipe

IDS = [f"p{i}" for i in range(6)]
GRADED = {0: "Highly Relevant", 1: "Highly relevant.", 2: "Somewhat Relevant", 3: "the page shows a cat",
          4: "Not Relevant", 5: "Not relevant"}  # by the page's offset from the query's source page
P_YES = {0: 0.9, 1: 0.6, 2: 0.4, 3: None, 4: 0.1, 5: 0.2}  # None: neither "yes" nor "no" readable
SOURCE_OVERRIDE = {"p4": 3, "p5": 4}  # p4's queries: own page unreadable; p5's: own page judged not relevant


def _offset(source: str, page: str) -> int:
    return (IDS.index(page) - IDS.index(source)) % len(IDS)


class ScriptedJudge(FakeBackend):
    """FakeBackend's queries ("what is on page p3 seed ..."), and judgements fixed by (source page, page)."""

    def _case(self, prompt: Any) -> int:
        source = re.search(r"page (\S+) seed", prompt.text).group(1)
        page = prompt.pages[0].id
        return SOURCE_OVERRIDE.get(source, 0) if page == source else _offset(source, page)

    def generate(self, prompts: Any, params: Any, seeds: Any = None) -> list[Generation]:
        if not prompts[0].template_id.startswith("syntr.judge"):
            return super().generate(prompts, params, seeds)
        self.calls += len(prompts)
        return [Generation(GRADED[self._case(p)], 10, 3) for p in prompts]

    def next_token_logprobs(self, prompt: Any, candidates: Any) -> Choice:
        self.calls += 1
        p = P_YES[self._case(prompt)]
        if p is None:
            return Choice({"yes": -math.inf, "no": -math.inf})
        return Choice({"yes": math.log(p), "no": math.log(1 - p)})


def _judge(tmp_path: Path, **config: Any) -> tuple[dict[str, tuple[list[str], list[str]]], dict[str, Any]]:
    """judge_queries on one query per page, each ranking its pages at offsets 1, 0 (the source), 2, 3, 4, 5."""
    pages = {i: Page(i, text=f"text of {i}") for i in IDS}
    queries = {f"{s}#q0": f"what is on page {s} seed 1?" for s in IDS}
    source = {q: q.split("#")[0] for q in queries}
    ranked = {q: [(IDS[(IDS.index(s) + o) % 6], 1.0 - o / 10) for o in (1, 0, 2, 3, 4, 5)]
              for q, s in source.items()}
    cfg = recipe.Config(**{"top_m": 5, "n_negatives": 2, **config})
    with SynthStore(tmp_path / f"{cfg.judge}-{cfg.negatives}-{cfg.extra_positives}.jsonl") as store:
        return recipe.judge_queries(ScriptedJudge(), store, cfg, queries, source, ranked, pages, random.Random(0))


def _at(source: str, offset: int) -> str:
    return IDS[(IDS.index(source) + offset) % 6]


@pytest.mark.parametrize("extra", [False, True])
def test_graded_judge_labels(tmp_path: Path, extra: bool) -> None:
    labels, stats = _judge(tmp_path, judge="graded", extra_positives=extra)
    # p4's own page unreadable, p5's own page not relevant: both dropped, each counted
    assert sorted(labels) == ["p0#q0", "p1#q0", "p2#q0", "p3#q0"]
    assert stats["dropped_unreadable"] == stats["dropped_source_not_relevant"] == 1
    for q, (pos, neg) in labels.items():
        s = q.split("#")[0]
        # top 5 minus the source: +1 Highly (extra positive or unused), +2 Somewhat (dropped), +3 unparseable
        # (skipped), +4 Not (a negative). One judged negative of the two asked for: no random filler (the batch's
        # other pages are negatives too), counted as short.
        assert pos == ([s, _at(s, 1)] if extra else [s])
        assert neg == [_at(s, 4)]
    assert stats["somewhat"] == stats["unreadable"] == stats["short_of_negatives"] == 4
    assert stats["extra_positives"] == (4 if extra else 0)
    assert stats["calls"] == 6 + 4 * 4  # the six source pages, then four candidates for each kept query


def test_yesno_judge_labels(tmp_path: Path) -> None:
    labels, stats = _judge(tmp_path, judge="yesno", extra_positives=True)
    assert sorted(labels) == ["p0#q0", "p1#q0", "p2#q0", "p3#q0"]
    assert stats["dropped_unreadable"] == stats["dropped_source_not_relevant"] == 1
    for q, (pos, neg) in labels.items():
        s = q.split("#")[0]
        # P(yes) 0.6 at +1 -> highly; 0.4 at +2 -> not; +3 unreadable; 0.1 at +4 -> not: two negatives found,
        # so judging stops there and nothing is filled at random
        assert pos == [s, _at(s, 1)] and neg == [_at(s, 2), _at(s, 4)]
    assert stats["unreadable"] == 4 and stats["short_of_negatives"] == stats["somewhat"] == 0


def test_no_negatives_judges_only_the_source_page(tmp_path: Path) -> None:
    labels, stats = _judge(tmp_path, judge="graded", negatives="none")
    # the source pages are judged (p4 unreadable and p5 not relevant are dropped), nothing else is
    assert sorted(labels) == ["p0#q0", "p1#q0", "p2#q0", "p3#q0"]
    assert all(pos == [q.split("#")[0]] and neg == [] for q, (pos, neg) in labels.items())
    assert stats["calls"] == 6 and stats["short_of_negatives"] == 0


def test_random_negatives_ignore_the_judge(tmp_path: Path) -> None:
    labels, stats = _judge(tmp_path, judge="graded", negatives="random", extra_positives=True)
    # the judge still picks positives (and drops conflicting sources), but never negatives
    assert sorted(labels) == ["p0#q0", "p1#q0", "p2#q0", "p3#q0"] and stats["extra_positives"] == 4
    for q, (pos, neg) in labels.items():
        s = q.split("#")[0]
        assert pos == [s, _at(s, 1)] and len(neg) == 2 and not set(neg) & set(pos)
    assert stats["short_of_negatives"] == 0  # random negatives are drawn to the full count
    # Random pages from the whole corpus: unlike judged negatives (always +4 and +5, as above), they include
    # pages the judge called somewhat relevant (+2) or could not read (+3).
    assert any({_at(q.split("#")[0], 2), _at(q.split("#")[0], 3)} & set(neg) for q, (_, neg) in labels.items())


def test_random_negatives_without_extra_positives_call_no_judge(tmp_path: Path) -> None:
    labels, stats = _judge(tmp_path, judge="graded", negatives="random")
    assert len(labels) == 6 and stats["calls"] == 0  # no judging at all: no conflict check either
    assert all(pos == [q.split("#")[0]] and len(neg) == 2 and pos[0] not in neg for q, (pos, neg) in labels.items())


@pytest.mark.parametrize(("value", "label"), [(-1.05, "highly"), (-1.3, "somewhat"), (-1.5, "not"), (None, None)])
def test_score_judge_margins(value: float | None, label: str | None) -> None:
    config = recipe.Config(judge="ql", pos_margin=0.1, neg_margin=0.5)
    assert recipe._label(config, value, -1.0) == label


def test_reciprocal_rank_fusion_by_hand() -> None:
    a = {"q": [("d1", 9.0), ("d2", 5.0), ("d3", 1.0)]}
    b = {"q": [("d3", 0.7), ("d1", 0.6), ("d4", 0.1)]}
    fused = recipe.rrf([a, b], k=60)["q"]
    # d1: ranks 1 and 2; d3: ranks 3 and 1; d2: rank 2 in a only; d4: rank 3 in b only
    want = {"d1": 1 / 61 + 1 / 62, "d3": 1 / 63 + 1 / 61, "d2": 1 / 62, "d4": 1 / 63}
    assert [p for p, _ in fused] == ["d1", "d3", "d2", "d4"]
    assert dict(fused) == pytest.approx(want, rel=1e-12)


def test_extra_ranker_is_fused(image_folder: Path) -> None:
    pages = list(_corpus(image_folder).pages)
    queries = {"a": "When does the river flood?", "b": "What bread does the bakery sell?"}
    spec = {"family": "tiny", "config": {"arch": "colqwen2_5", "seed": 1}}
    config = recipe.Config(rankers=[spec], rrf_k=5)
    base = build_backbone("tiny", {"arch": "colqwen2_5", "seed": 0})
    fused = recipe.rank_fused(base, config, pages, queries)
    own = rank(base, pages, queries)
    other = rank(build_backbone("tiny", spec["config"]), pages, queries)
    assert fused == recipe.rrf([own, other], k=5) != own
    assert recipe.rank_fused(base, recipe.Config(), pages, queries) == own  # no rankers: the base ranking as is


def test_recipe_with_extra_positives_graded_judge_and_extra_ranker(image_folder: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    judge = ScriptedJudge()
    monkeypatch.setattr(recipe, "make_backend", lambda spec: judge)
    config = recipe.Config(**{**CONFIG, "judge": "graded", "extra_positives": True, "top_m": 5,
                              "rankers": [{"family": "tiny", "config": {"arch": "colqwen2_5", "seed": 1}}],
                              "train": {"steps": 2, "batch_size": 2}})
    out = recipe.train(build_backbone("tiny", {"arch": "colqwen2_5", "seed": 0}), _corpus(image_folder), config,
                       tmp_path / "ckpt")
    record = json.loads((out / "training.json").read_text())
    rows = [json.loads(x) for x in (out / "examples.jsonl").read_text().splitlines()]
    grades = {(r["inputs"]["query"], r["inputs"]["page"]): r["parsed"]
              for r in map(json.loads, (out / "synth.jsonl").read_text().splitlines()) if r["op"] == "judge_graded"}
    for r in rows:
        q, s = r["query"], r["query_id"].split("#")[0]  # the store names a judged query by its text
        assert s not in ("p4", "p5")  # their own pages were judged unreadable / not relevant
        # the +1 page is a positive exactly when the fused ranking put it in reach of the judge
        assert r["positives"] == ([s, _at(s, 1)] if (q, _at(s, 1)) in grades else [s])
        assert all(grades.get((q, n), "not") == "not" for n in r["negatives"])  # judged negatives were "not"
    judging = record["notes"]["judging"]
    assert judging["extra_positives"] == sum(len(r["positives"]) - 1 for r in rows) > 0
    # one training example per query, with all its positives (and one qrel per positive)
    assert record["examples"] == sum(1 for r in rows if r["split"] == "train")
    assert record["notes"]["split"]["train"]["queries"] == record["examples"]
    assert record["notes"]["split"]["train"]["examples"] == sum(len(r["positives"]) for r in rows
                                                                if r["split"] == "train")
