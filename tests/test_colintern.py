"""ColIntern on the shared training loop: head-only training over a frozen tiny colpali backbone and the OCR-text
backbone; heads that start from the backbone's geometry (PCA); whole-corpus mining with the false-negative guard;
held-out validation; resume; the mined run reusing stage 1; a shared synth store; LoRA; reload through
models/colintern/model.py."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from conftest import FACTS
from harness.backbones import Page
from harness.retrieval.maxsim import maxsim, pad_vectors
from harness.train.loop import LoopSpec, spearman_rows
from harness.variants import TrainingCorpus
from models.colintern import model as colintern_model
from models.colintern import pairs as colintern_pairs
from models.colintern import recipe
from models.colintern.heads import ColInternBackbone, Featurizer, Heads, pca_projection

COLORS = ["red", "green", "blue", "orange", "purple", "black", "cyan", "yellow"]
RECORD_KEYS = {"wall_s", "llm_calls", "llm_tokens", "examples", "loss_log", "train", "steps", "examples_per_s",
               "relative_weight_change", "rank_correlation_with_base", "label"}


def _triples(folder: Path, n: int = 8) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        image = Image.new("RGB", (56 + 28 * (i % 3), 56), "white")
        ImageDraw.Draw(image).rectangle([4, 4, 40, 40], fill=COLORS[i % len(COLORS)])
        image.save(folder / f"p{i}.png")
        lines.append(json.dumps({"query": f"the {COLORS[i % len(COLORS)]} square number {i}", "pos": f"p{i}.png",
                                 "negs": []}))
    (folder / "train.jsonl").write_text("\n".join(lines) + "\n")
    return folder / "train.jsonl"


@pytest.fixture(scope="module")
def tiny():
    from harness.backbones.tiny import TinyBackbone, TinyConfig

    return TinyBackbone(TinyConfig(arch="colqwen2_5"))


def _spec(**kw) -> LoopSpec:
    return LoopSpec(**{"steps": 4, "batch_size": 4, "lr": 1e-2, "eval_every": 2, "weight_decay": 0.0, **kw})


def _config(triples: Path, **kw) -> recipe.Config:
    # no false-negative guard: random tiny heads rank a query's own page anywhere, and the guard would drop every
    # page above it (tested on a real encoder below)
    base = dict(triples=str(triples), epochs=2, negatives=3, use_faiss=False, fn_margin=None, train=_spec(),
                mined_train=_spec())
    return recipe.Config(**{**base, **kw})


def _record(ckpt: Path) -> dict:
    return json.loads((ckpt / "training.json").read_text())


def _same_heads(a: Path, b: Path) -> bool:
    x, y = Heads.load(a)[0].state_dict(), Heads.load(b)[0].state_dict()
    return x.keys() == y.keys() and all(torch.allclose(x[k], y[k], atol=1e-6) for k in x)


def test_tiny_colqwen_head_only_mining_and_reload(tiny, tmp_path: Path) -> None:
    triples = _triples(tmp_path / "data")
    before = {k: v.clone() for k, v in tiny.state_dict().items()}
    ckpt = recipe.train(tiny, TrainingCorpus("x", []), _config(triples), tmp_path / "run")
    after = tiny.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the backbone stays frozen

    training = _record(ckpt)
    assert RECORD_KEYS <= training.keys()
    # 8 pairs, one source page each: round(8 x 0.15) = 1 page held out for validation
    assert training["examples"] == 7 and training["val_queries"] == 1 and training["llm_calls"] == 0
    assert training["label"] == "colintern-mined" and training["init"] == "random"  # two spaces: the seed's init
    assert training["trainable_parameters"] == 2 * 64 * 128  # two heads, hidden 64 (text and vision) -> 128
    assert training["shared_head"] is False and Heads.load(ckpt)[1]["shared"] is False  # pages are vision features
    # the loop's record of each stage: a step budget (4 steps of 4 = passes over the 7 pairs), the same examples/s
    for stage in (training["train_e1"], training["train"]):
        assert stage["steps"] == 4 and stage["examples_seen"] == 16 and stage["examples_per_s"] > 0
        assert [h["step"] for h in stage["val_history"]] == [0, 2, 4]
        assert stage["selection"].startswith("last (1 validation queries")  # too few to select a checkpoint
    assert training["steps"] == 8 and training["relative_weight_change"] > 0
    assert -1 <= training["rank_correlation_with_base"]["trained"] <= 1
    losses = [json.loads(x) for x in Path(training["loss_log"]).read_text().splitlines()]
    assert [x["step"] for x in losses] == list(range(1, 9))  # both stages, stage 2 numbered after stage 1
    assert [x["stage"] for x in losses] == [1] * 4 + [2] * 4
    mined = [json.loads(x) for x in (tmp_path / "run" / "mined_triples.jsonl").read_text().splitlines()]
    assert len(mined) == 7 and all(len(m["negs"]) == 3 and m["pos"] not in m["negs"] for m in mined)
    assert (Path(training["epoch1_dir"]) / "stage.json").is_file()  # stage 1: the shared folder
    assert (tmp_path / "run" / "stage2" / "stage.json").is_file()
    from harness.report.losses import plot_loss, read_losses

    png = plot_loss(read_losses(ckpt), tmp_path / "loss.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    heads, meta = Heads.load(ckpt)
    assert heads.query_head.bias is None and heads.query_head.out_features == 128
    encoder = colintern_model.load_model(tiny, ckpt)
    assert encoder.mteb_model_meta.name == "colintern-mined/tiny-colqwen2_5-seed0"
    assert encoder.variant_label == "colintern-mined"
    q = encoder.model.encode_queries(["the red square"])
    pages = encoder.model.encode_pages([Page("a", image=Image.open(tmp_path / "data" / "p0.png"))])
    assert q[0].shape[-1] == 128 and pages[0].shape[-1] == 128
    assert torch.allclose(pages[0].norm(dim=-1), torch.ones(len(pages[0])), atol=1e-5)
    # The page side is the vision features (merged patches): 2x2 merged tokens for a 56x56 image.
    assert pages[0].shape[0] == 4


def _interrupt(run: Path, e1: Path, stage: str) -> None:
    """Make a finished run look killed mid-``stage``: its final model, the stage's finish marks, the stage's last
    checkpoint and everything after it gone."""
    shutil.rmtree(run / "model")
    (run / "loss.jsonl").unlink()
    folder = e1 if stage == "stage1" else run / "stage2"
    if stage == "stage1":
        shutil.rmtree(run / "stage2")
        (run / "mined_triples.jsonl").unlink()
    (folder / "stage.json").unlink()
    shutil.rmtree(folder / "chosen")
    shutil.rmtree(folder / "checkpoints" / "checkpoint-4")  # the last of steps 2 and 4


def test_resume_gives_the_same_weights(tiny, tmp_path: Path) -> None:
    triples = _triples(tmp_path / "data")
    full = recipe.train(tiny, TrainingCorpus("x", []), _config(triples), tmp_path / "full" / "run")
    for stage in ("stage1", "stage2"):
        out = tmp_path / stage / "run"  # its own parent: its own stage-1 folder, nothing reused
        ckpt = recipe.train(tiny, TrainingCorpus("x", []), _config(triples), out)
        _interrupt(out, Path(_record(ckpt)["epoch1_dir"]), stage)
        resumed = recipe.train(tiny, TrainingCorpus("x", []), _config(triples), out)
        record = _record(resumed)
        stage_record = record["train_e1"] if stage == "stage1" else record["train"]
        assert stage_record["resumed_from"].endswith("checkpoint-2")  # the loop resumed, it did not start over
        assert _same_heads(full, resumed)
        assert (out / "mined_triples.jsonl").read_text() == (full.parent / "mined_triples.jsonl").read_text()
        assert record["mining"] == _record(full)["mining"]  # the report of the mining done before the stop
        steps = [json.loads(x)["step"] for x in (out / "loss.jsonl").read_text().splitlines()]
        assert steps == list(range(1, 9))


def test_e1_label_removed_keys_and_bad_triples(tiny, tmp_path: Path) -> None:
    triples = _triples(tmp_path / "data", n=4)
    ckpt = recipe.train(tiny, TrainingCorpus("x", []), _config(triples, epochs=1, mine_negatives=False),
                        tmp_path / "e1")
    assert colintern_model.load_model(tiny, ckpt).mteb_model_meta.name == "colintern-e1/tiny-colqwen2_5-seed0"
    record = _record(ckpt)
    assert "train_e1" not in record and record["steps"] == 4 and record["mined_triples"] is None
    with pytest.raises(ValueError, match="'passes_per_epoch' was removed: use train.steps"):
        recipe.Config(passes_per_epoch=15)
    with pytest.raises(ValueError, match="'lr' was removed: use train.lr"):
        recipe.Config(lr=5e-3)
    bad = tmp_path / "data" / "bad.jsonl"
    for line, message in [("{nope", "bad.jsonl:2: not JSON"),
                          ('{"query": "q", "pos": "missing.png"}', "bad.jsonl:2: page 'missing.png' not found"),
                          ('{"pos": "p0.png"}', 'bad.jsonl:2: needs a non-empty string "query"'),
                          ('{"query": "q", "pos": "p0.png", "negs": "p1.png"}', "bad.jsonl:2: \"negs\" must")]:
        bad.write_text('{"query": "a", "pos": "p1.png"}\n' + line + "\n")
        with pytest.raises(ValueError, match=message.replace("(", r"\(")):
            recipe.read_triples(bad)


@pytest.fixture(scope="module")
def ocr():
    from harness.backbones.ocr_text import OcrTextBackbone, OcrTextConfig

    return OcrTextBackbone(OcrTextConfig(mode="multi"))


def _fact_pairs(monkeypatch: pytest.MonkeyPatch, sampled: int | None = None) -> list[Page]:
    """The FACTS as text pages, with their questions standing in for the generator's pseudo-queries; ``sampled``:
    only the first pages get queries (the rest are corpus pages without any)."""
    pages = [Page(f"d{i}", text=fact) for i, (fact, _) in enumerate(FACTS)]
    n = sampled or len(FACTS)

    def pairs(corpus, config, store):
        chosen = sorted(corpus.pages, key=lambda p: p.id)[:n]
        return recipe.Pairs(chosen, [q for _, q in FACTS[:n]], list(range(n)), [[] for _ in range(n)],
                            llm_calls=n)

    monkeypatch.setattr(recipe, "pseudo_query_pairs", pairs)
    return pages


def test_ocr_text_with_pseudo_queries(ocr, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pages = _fact_pairs(monkeypatch)
    config = recipe.Config(epochs=2, negatives=2, use_faiss=False, train=_spec(steps=3, batch_size=3, lr=1e-3),
                           mined_train=_spec(steps=2, batch_size=3, lr=1e-4))
    ckpt = recipe.train(ocr, TrainingCorpus("facts", pages), config, tmp_path / "run")
    training = _record(ckpt)
    # One head shared by queries and OCR pages (both are text tokens of the same encoder), started at PCA.
    assert training["llm_calls"] == len(FACTS) and training["trainable_parameters"] == 384 * 128
    assert training["shared_head"] is True and training["init"] == "pca"
    assert Heads.load(ckpt)[1]["init"] == "pca"
    encoder = colintern_model.load_model(ocr, ckpt)
    assert encoder.mteb_model_meta.name == "colintern-mined/ocr-text-multi-all-MiniLM-L6-v2"
    q = encoder.model.encode_queries([FACTS[0][1]])
    docs = encoder.model.encode_pages(pages)
    assert q[0].shape == (q[0].shape[0], 128) and len(docs) == len(FACTS)


# --- shared heads ----------------------------------------------------------------------------------------
def test_shared_heads_save_load_and_old_checkpoints(tmp_path: Path) -> None:
    torch.manual_seed(0)
    shared = Heads(8, 8, 4, shared=True)
    states = [torch.randn(3, 8), torch.randn(5, 8)]
    q, qm = shared.project(states, "query")
    p, pm = shared.project(states, "page")
    assert torch.equal(q, p) and torch.equal(qm, pm)  # identical states, identical vectors on both sides
    assert sum(x.numel() for x in shared.parameters()) == 8 * 4  # one head, seen once by the optimiser
    shared.save(tmp_path / "shared")
    loaded, meta = Heads.load(tmp_path / "shared")
    assert meta["shared"] is True and loaded.page_head is loaded.query_head
    assert torch.equal(loaded.project(states, "page")[0], p)

    separate = Heads(8, 8, 4)
    assert not torch.equal(separate.project(states, "query")[0], separate.project(states, "page")[0])
    separate.save(tmp_path / "old")
    meta_file = tmp_path / "old" / "colintern.json"  # as written before shared heads existed: no "shared" key
    meta_file.write_text(json.dumps({k: v for k, v in json.loads(meta_file.read_text()).items() if k != "shared"}))
    old, _ = Heads.load(tmp_path / "old")
    assert old.shared is False and old.page_head is not old.query_head
    assert torch.equal(old.page_head.weight, separate.page_head.weight)
    with pytest.raises(ValueError, match="one input width"):
        Heads(8, 6, 4, shared=True)


def test_training_loss_scores_as_evaluation_does() -> None:
    """The objective's scores are evaluation's MaxSim (padding masked, ragged lengths) per query token; with
    negatives each query sees only its own candidates; a page that is two queries' positive is no negative."""
    g = torch.Generator().manual_seed(0)
    q_states = [torch.randn(t, 8, generator=g) for t in (2, 5, 3)]
    p_states = [torch.randn(t, 8, generator=g) for t in (7, 1, 3, 4, 6)]

    class Stub:
        def get(self, side, idx, grad=False):
            return [(q_states if side == "query" else p_states)[i] for i in idx]

    heads = Heads(8, 8, 4, shared=True)
    temperature = 0.5

    def reference(i: int, cands: list[int], positives: set[int]) -> torch.Tensor:
        q = heads.project([q_states[i]], "query")[0]
        d = heads.project([p_states[j] for j in cands], "page")[0]
        s = maxsim(q, d)[0] / len(q_states[i]) / temperature
        return torch.logsumexp(s, 0) - torch.logsumexp(s[[c in positives for c in cands]], 0)

    positives, negatives = [0, 1, 2], [[3, 4], [0, 3], [4]]
    mined = recipe.HeadObjective(heads, Stub(), positives, [{0}, {1}, {2}], temperature, negatives)
    want = torch.stack([reference(i, [positives[i], *negatives[i]], {positives[i]}) for i in range(3)]).mean()
    assert torch.allclose(mined(torch.tensor([0, 1, 2])), want, atol=1e-5)
    # in-batch: queries 0 and 2 share page 0 (one candidate, positive for both)
    in_batch = recipe.HeadObjective(heads, Stub(), [0, 1, 0], [{0}, {1}, {0}], temperature)
    want = torch.stack([reference(i, [0, 1], {[0, 1, 0][i]}) for i in range(3)]).mean()
    assert torch.allclose(in_batch(torch.tensor([0, 1, 2])), want, atol=1e-5)


def test_untrained_pca_heads_rank_like_the_base(ocr, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Heads started at the PCA projection of the pages' token states score (nearly) as the base backbone: per-query
    rank correlation of the scores near 1, the same top page; a random shared head drifts further, two independent
    random heads are unrelated to the base. The training record measures the same on its validation queries."""
    pages = [Page(f"d{i}", text=fact) for i, (fact, _) in enumerate(FACTS)]
    queries = [q for _, q in FACTS]

    def scores(model) -> torch.Tensor:
        return maxsim(pad_vectors(model.encode_queries(queries)), pad_vectors(model.encode_pages(pages)))

    base = scores(ocr)
    p = pca_projection(Featurizer(ocr).pages(pages), 128)
    assert torch.allclose(p @ p.T, torch.eye(128), atol=1e-4)  # orthonormal rows
    pca = scores(ColInternBackbone(ocr, Heads(384, 384, 128, shared=True, init=p)))
    torch.manual_seed(0)
    shared = scores(ColInternBackbone(ocr, Heads(384, 384, 128, shared=True)))
    torch.manual_seed(0)
    separate = scores(ColInternBackbone(ocr, Heads(384, 384, 128)))
    assert base.argmax(1).tolist() == list(range(len(FACTS))) == pca.argmax(1).tolist()
    assert spearman_rows(pca, base) > 0.95
    assert spearman_rows(pca, base) > spearman_rows(shared, base) > spearman_rows(separate, base)

    # the recipe's record: the untrained model against the base on the held-out queries
    _fact_pairs(monkeypatch)
    config = recipe.Config(epochs=1, val_fraction=0.5, train=_spec(steps=1, batch_size=3, lr=1e-4))
    record = _record(recipe.train(ocr, TrainingCorpus("facts", pages), config, tmp_path / "run"))
    assert record["val_queries"] == 3 and record["rank_correlation_with_base"]["untrained"] > 0.95


def test_mining_covers_the_whole_corpus_and_guards_false_negatives(ocr, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Pseudo-queries for 4 of the pages, negatives mined among all of them (pages without queries included); a
    near-duplicate of a query's page is dropped by the guard, and kept without it."""
    pages = _fact_pairs(monkeypatch, sampled=4)
    twin = Page("e-twin", text=FACTS[0][0].replace("every spring", "each spring"))  # a near-duplicate of d0
    pages = [*pages, twin]
    corpus = TrainingCorpus("facts", pages)
    common = dict(epochs=2, negatives=4, val_fraction=0.0, use_faiss=False, train=_spec(steps=1, lr=1e-4),
                  mined_train=_spec(steps=1, lr=1e-4))
    guarded = _record(recipe.train(ocr, corpus, recipe.Config(**common), tmp_path / "guarded"))
    mined = {m["pos"]: m["negs"] for m in map(json.loads, Path(guarded["mined_triples"]).read_text().splitlines())}
    assert set(mined) == {"d0", "d1", "d2", "d3"} and guarded["mining"]["corpus_pages"] == 7
    outside = {"d4", "d5"} & {n for negs in mined.values() for n in negs}
    assert outside and guarded["mining"]["outside_query_pages"] > 0  # corpus pages that got no pseudo-query
    assert "e-twin" not in mined["d0"] and guarded["mining"]["dropped"] >= 1
    assert all(len(negs) == 4 for negs in mined.values())  # the guard's losses are replaced from deeper down

    off = _record(recipe.train(ocr, corpus, recipe.Config(**common, fn_margin=None), tmp_path / "off"))
    unguarded = {m["pos"]: m["negs"] for m in map(json.loads, Path(off["mined_triples"]).read_text().splitlines())}
    assert unguarded["d0"][0] == "e-twin"  # without the guard the twin is d0's hardest "negative"


def test_shared_synth_store_serves_every_query(ocr, text_folder: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A store written by `harness synth queries FOLDER --store S --n 2 --kind specific` (its defaults: seed 42,
    max_new_tokens 48) serves ColIntern's defaults pointed at it with max_pages null: no model call."""
    from harness.cli import main
    from harness.synth import backends

    class Fake:
        kind, model, instruct, sees_images, parallelism = "fake", "fake", False, False, 1

        def __init__(self) -> None:
            self.calls = 0

        def generate(self, prompts, params, seeds=None):
            self.calls += len(prompts)
            return [backends.Generation(f" What does page fact {s} say?") for s in seeds]

        def prepare(self, pages) -> None:
            pass

        def describe(self) -> dict:
            return {"kind": "fake", "model": "fake"}

    writer = Fake()
    monkeypatch.setattr(backends, "make_backend", lambda spec=None: writer)
    store = tmp_path / "shared.jsonl"
    assert main(["synth", "queries", str(text_folder), "--store", str(store), "--n", "2", "--kind", "specific",
                 "--no-progress"]) == 0
    assert writer.calls == 2 * len(FACTS)

    reader = Fake()
    monkeypatch.setattr(colintern_pairs, "make_backend", lambda spec: reader)
    pages = [Page(f"d{i}", text=fact) for i, (fact, _) in enumerate(FACTS)]
    config = recipe.Config(store=str(store), max_pages=None, queries_per_page=2, epochs=1,
                           train=_spec(steps=1, lr=1e-4))
    record = _record(recipe.train(ocr, TrainingCorpus("textset", pages), config, tmp_path / "run"))
    assert reader.calls == 0 and record["pairs_notes"]["llm_calls_new"] == 0
    assert record["llm_calls"] == 2 * len(FACTS) and record["examples"] + record["val_queries"] == 2 * len(FACTS)
    assert record["pairs_notes"]["sampled_pages"] == len(FACTS) and record["llm_tokens"] == 0  # the fake counts none


# --- the mined run starts from the e1 run's stage 1 -------------------------------------------------------
def test_mined_run_reuses_the_e1_runs_stage_1(tiny, tmp_path: Path) -> None:
    triples = _triples(tmp_path / "data")
    corpus = TrainingCorpus("x", [])
    e1 = recipe.train(tiny, corpus, _config(triples, epochs=1, mine_negatives=False), tmp_path / "runs" / "e1")
    e1_record = _record(e1)
    e1_files = {p.name: p.stat().st_mtime_ns for p in (Path(e1_record["epoch1_dir"]) / "checkpoints").iterdir()}

    mined = recipe.train(tiny, corpus, _config(triples), tmp_path / "runs" / "mined")
    record = _record(mined)
    assert record["epoch1_dir"] == e1_record["epoch1_dir"]  # same settings but epochs/mining: one stage-1 folder
    assert record["resumed_from"] == str(Path(e1_record["epoch1_dir"]) / "chosen")
    # stage 1 was not trained again: its checkpoints are untouched
    assert {p.name: p.stat().st_mtime_ns for p in (Path(e1_record["epoch1_dir"]) / "checkpoints").iterdir()} \
        == e1_files
    assert record["train_e1"] == e1_record["train"]
    # its cost includes the e1 run's stage 1, not only this process's
    assert record["run_wall_s"] < record["wall_s"]
    assert record["wall_s"] - record["run_wall_s"] <= e1_record["wall_s"]

    fresh = recipe.train(tiny, corpus, _config(triples), tmp_path / "alone" / "mined")  # no sibling: stage 1 here
    assert _record(fresh)["resumed_from"] is None
    assert _same_heads(mined, fresh)  # reuse changes no weight
    assert (mined.parent / "mined_triples.jsonl").read_text() == (fresh.parent / "mined_triples.jsonl").read_text()
    # the mined run's loss file has stage 1's lines too, the same as when it trained them itself
    reused = [json.loads(x) for x in (mined.parent / "loss.jsonl").read_text().splitlines()]
    again = [json.loads(x) for x in (fresh.parent / "loss.jsonl").read_text().splitlines()]
    assert [(x["step"], round(x["loss"], 5)) for x in reused] == [(x["step"], round(x["loss"], 5)) for x in again]
    assert len(reused) == 8


# --- LoRA ------------------------------------------------------------------------------------------------
def _lora_state(backbone: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in backbone.named_parameters() if "lora_" in n}


def test_lora_on_the_tiny_language_model_trains_resumes_and_reloads(tmp_path: Path) -> None:
    from harness.backbones.tiny import TinyBackbone, TinyConfig

    triples = _triples(tmp_path / "data")
    config = _config(triples, lora={"r": 4, "alpha": 8, "dropout": 0.1})
    backbone = TinyBackbone(TinyConfig(arch="colqwen2_5"))
    untrained = copy.deepcopy(backbone)
    ckpt = recipe.train(backbone, TrainingCorpus("x", []), config, tmp_path / "full" / "run")
    record = _record(ckpt)
    trained = _lora_state(backbone)
    assert trained and not any("visual" in n for n in trained)  # the language model only, as the seed
    assert any("lora_B" in n and v.abs().sum() > 0 for n, v in trained.items())  # lora_B starts at 0: it trained
    assert record["trainable_parameters"] == 2 * 64 * 128 + sum(v.numel() for v in trained.values())

    # Resume with LoRA gives the same heads and adapter (dropout masks come from the checkpointed RNG).
    out = tmp_path / "stopped" / "run"
    first = copy.deepcopy(untrained)
    done = recipe.train(first, TrainingCorpus("x", []), config, out)
    _interrupt(out, Path(_record(done)["epoch1_dir"]), "stage2")
    resumed_backbone = copy.deepcopy(untrained)
    resumed = recipe.train(resumed_backbone, TrainingCorpus("x", []), config, out)
    assert _same_heads(ckpt, resumed)
    resumed_lora = _lora_state(resumed_backbone)
    assert resumed_lora.keys() == trained.keys()
    assert all(torch.allclose(trained[k], v, atol=1e-6) for k, v in resumed_lora.items())

    # Reload in "another process" (an untrained backbone) gives the embeddings of the one trained in place.
    texts = ["the red square number 0", "a blue page"]
    page = [Page("a", image=Image.open(tmp_path / "data" / "p0.png"))]
    in_place = colintern_model.load_model(backbone, ckpt)
    reloaded = colintern_model.load_model(copy.deepcopy(untrained), ckpt)
    without_lora = ColInternBackbone(copy.deepcopy(untrained), Heads.load(ckpt)[0])  # control: the adapter counts
    q_in, q_re = in_place.model.encode_queries(texts), reloaded.model.encode_queries(texts)
    assert all(torch.allclose(x, y, atol=1e-5) for x, y in zip(q_in, q_re, strict=True))
    assert not torch.allclose(q_in[0], without_lora.encode_queries(texts)[0], atol=1e-3)
    assert torch.allclose(in_place.model.encode_pages(page)[0], reloaded.model.encode_pages(page)[0], atol=1e-6)
    assert in_place.mteb_model_meta.revision == reloaded.mteb_model_meta.revision  # same merged weights

    # Missing adapter weights are an error, not a silent evaluation of the untrained encoder.
    from safetensors.torch import load_file, save_file

    weights = load_file(str(ckpt / "trainable.safetensors"))
    save_file(dict(list(weights.items())[1:]), str(ckpt / "trainable.safetensors"))
    with pytest.raises(ValueError, match="missing"):
        colintern_model.load_model(copy.deepcopy(untrained), ckpt)
    (ckpt / "trainable.safetensors").unlink()
    with pytest.raises(ValueError, match="trainable.safetensors is missing"):
        colintern_model.load_model(copy.deepcopy(untrained), ckpt)


def test_lora_on_the_ocr_text_encoder_adapts_queries_and_pages(ocr, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """OCR pages pass through the encoder too: their states are computed with gradient per batch."""
    pages = _fact_pairs(monkeypatch)
    untrained = copy.deepcopy(ocr)
    backbone = copy.deepcopy(ocr)
    # temperature 1: the PCA heads already rank these pages like the base, and at 0.02 the loss starts near 0
    config = recipe.Config(epochs=2, negatives=2, use_faiss=False, temperature=1.0, fn_margin=None,
                           train=_spec(steps=4, batch_size=3, lr=5e-2, warmup=0.0, schedule="constant"),
                           mined_train=_spec(steps=2, batch_size=3, lr=5e-2, warmup=0.0, schedule="constant"),
                           lora={"r": 4, "alpha": 8, "dropout": 0.0, "targets": ["query", "value"]})
    ckpt = recipe.train(backbone, TrainingCorpus("facts", pages), config, tmp_path / "run")
    trained = _lora_state(backbone)
    assert len([n for n in trained if "lora_B" in n]) == 2 * 6  # query and value of MiniLM's 6 layers
    assert all(v.abs().sum() > 0 for n, v in trained.items() if "lora_B" in n)
    assert json.loads((ckpt / "lora.json").read_text())["train_heads"] is False  # the ColIntern heads train

    in_place = colintern_model.load_model(backbone, ckpt)
    reloaded = colintern_model.load_model(untrained, ckpt)
    without_lora = ColInternBackbone(copy.deepcopy(ocr), Heads.load(ckpt)[0])
    p_in, p_re = in_place.model.encode_pages(pages), reloaded.model.encode_pages(pages)
    assert all(torch.allclose(x, y, atol=1e-5) for x, y in zip(p_in, p_re, strict=True))
    assert not torch.allclose(p_in[0], without_lora.encode_pages(pages[:1])[0], atol=1e-3)
    q_in, q_re = in_place.model.encode_queries([FACTS[0][1]]), reloaded.model.encode_queries([FACTS[0][1]])
    assert torch.allclose(q_in[0], q_re[0], atol=1e-5)
