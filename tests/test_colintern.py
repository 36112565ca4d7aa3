"""ColIntern: head-only training over a frozen tiny colpali backbone and the OCR-text backbone, mining, resume,
reload through models/colintern/model.py; shared heads for OCR text, the mined run reusing epoch 1, LoRA, and
the ``harness plot`` command."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from conftest import FACTS
from harness.backbones import Page
from harness.variants import TrainingCorpus
from models.colintern import model as colintern_model
from models.colintern import recipe
from models.colintern.heads import ColInternBackbone, Heads

COLORS = ["red", "green", "blue", "orange", "purple", "black", "cyan", "yellow"]


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


def _config(triples: Path, **kw) -> recipe.Config:
    base = dict(triples=str(triples), epochs=3, negatives=3, batch_size=4, save_every=2, lr=1e-2, use_faiss=False)
    return recipe.Config(**{**base, **kw})


def test_tiny_colqwen_head_only_mining_and_reload(tiny, tmp_path: Path) -> None:
    triples = _triples(tmp_path / "data")
    before = {k: v.clone() for k, v in tiny.state_dict().items()}
    ckpt = recipe.train(tiny, TrainingCorpus("x", []), _config(triples), tmp_path / "run")
    after = tiny.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the backbone stays frozen

    training = json.loads((ckpt / "training.json").read_text())
    assert {"wall_s", "llm_calls", "llm_tokens", "examples", "loss_log"} <= training.keys()
    assert training["examples"] == 8 and training["llm_calls"] == 0 and training["label"] == "colintern-mined"
    assert training["trainable_parameters"] == 2 * 64 * 128  # two heads, hidden 64 (text and vision) -> 128
    assert training["shared_head"] is False and Heads.load(ckpt)[1]["shared"] is False  # pages are vision features
    losses = [json.loads(x) for x in Path(training["loss_log"]).read_text().splitlines()]
    assert [x["step"] for x in losses] == list(range(1, 7))  # 2 batches x 3 epochs
    mined = [json.loads(x) for x in (tmp_path / "run" / "mined_triples.jsonl").read_text().splitlines()]
    assert len(mined) == 8 and all(len(m["negs"]) == 3 and m["pos"] not in m["negs"] for m in mined)
    assert (Path(training["epoch1_dir"]) / "checkpoints" / "epoch-1.txt").is_file()  # epoch 1: the shared folder
    assert (tmp_path / "run" / "checkpoints" / "epoch-2.txt").is_file()
    from models.colintern.plot import plot_loss, read_losses

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


def test_resume_gives_the_same_weights(tiny, tmp_path: Path) -> None:
    triples = _triples(tmp_path / "data")
    full = recipe.train(tiny, TrainingCorpus("x", []), _config(triples), tmp_path / "full" / "run")
    for stop in (1, 3, 5):  # mid epoch 1, mid epoch 2 (after mining), and mid epoch 3
        out = tmp_path / f"stopped{stop}" / "run"  # its own parent: its own epoch-1 folder, nothing reused
        recipe.train(tiny, TrainingCorpus("x", []), _config(triples, max_steps=stop, save_every=1), out)
        assert not (out / "model").exists()
        resumed = recipe.train(tiny, TrainingCorpus("x", []), _config(triples), out)
        a, b = Heads.load(full)[0].state_dict(), Heads.load(resumed)[0].state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)
        steps = [json.loads(x)["step"] for x in (out / "loss.jsonl").read_text().splitlines()]
        assert steps == list(range(1, 7))


def test_e1_label_and_bad_triples(tiny, tmp_path: Path) -> None:
    triples = _triples(tmp_path / "data", n=4)
    ckpt = recipe.train(tiny, TrainingCorpus("x", []), _config(triples, epochs=1, mine_negatives=False),
                        tmp_path / "e1")
    assert colintern_model.load_model(tiny, ckpt).mteb_model_meta.name == "colintern-e1/tiny-colqwen2_5-seed0"
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


def _fact_pages(monkeypatch: pytest.MonkeyPatch) -> list[Page]:
    """The FACTS as text pages, with their questions standing in for the generator's pseudo-queries."""
    pages = [Page(f"d{i}", text=fact) for i, (fact, _) in enumerate(FACTS)]
    monkeypatch.setattr(recipe, "pseudo_query_pairs", lambda corpus, config, store: recipe.Pairs(
        sorted(corpus.pages, key=lambda p: p.id), [q for _, q in FACTS], list(range(len(FACTS))),
        [[] for _ in FACTS], llm_calls=len(FACTS)))
    return pages


def test_ocr_text_with_pseudo_queries(ocr, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    backbone = ocr
    pages = _fact_pages(monkeypatch)
    config = recipe.Config(epochs=2, negatives=2, batch_size=3, lr=5e-3, use_faiss=False)
    ckpt = recipe.train(backbone, TrainingCorpus("facts", pages), config, tmp_path / "run")
    training = json.loads((ckpt / "training.json").read_text())
    # One head shared by queries and OCR pages (both are text tokens of the same encoder).
    assert training["llm_calls"] == len(FACTS) and training["trainable_parameters"] == 384 * 128
    assert training["shared_head"] is True
    encoder = colintern_model.load_model(backbone, ckpt)
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


def test_untrained_shared_head_ranks_like_the_base(ocr) -> None:
    """A random shared projection roughly keeps the encoder's similarities (the base's ranking); two independent
    random heads put queries and pages in unrelated spaces (why the separate-head ocr-text rows fell far below
    base)."""
    from harness.retrieval.maxsim import maxsim, pad_vectors

    pages = [Page(f"d{i}", text=fact) for i, (fact, _) in enumerate(FACTS)]
    queries = [q for _, q in FACTS]

    def scores(model) -> torch.Tensor:
        return maxsim(pad_vectors(model.encode_queries(queries)), pad_vectors(model.encode_pages(pages)))

    base = scores(ocr)
    torch.manual_seed(0)
    shared = scores(ColInternBackbone(ocr, Heads(384, 384, 128, shared=True)))
    torch.manual_seed(0)
    separate = scores(ColInternBackbone(ocr, Heads(384, 384, 128)))
    assert base.argmax(1).tolist() == list(range(len(FACTS)))
    assert shared.argmax(1).tolist() == base.argmax(1).tolist()

    def corr(a: torch.Tensor) -> float:
        return torch.corrcoef(torch.stack([a.flatten(), base.flatten()]))[0, 1].item()

    assert corr(shared) > 0.9 and corr(separate) < corr(shared)


# --- the mined run starts from the e1 run's epoch 1 -------------------------------------------------------
def test_mined_run_reuses_the_e1_runs_epoch_1(tiny, tmp_path: Path) -> None:
    triples = _triples(tmp_path / "data")
    corpus = TrainingCorpus("x", [])
    e1 = recipe.train(tiny, corpus, _config(triples, epochs=1, mine_negatives=False), tmp_path / "runs" / "e1")
    e1_record = json.loads((e1 / "training.json").read_text())
    e1_ckpts = {p.name: p.stat().st_mtime_ns for p in (Path(e1_record["epoch1_dir"]) / "checkpoints").iterdir()}

    mined = recipe.train(tiny, corpus, _config(triples), tmp_path / "runs" / "mined")
    record = json.loads((mined / "training.json").read_text())
    assert record["epoch1_dir"] == e1_record["epoch1_dir"]  # same settings but epochs/mining: one epoch-1 folder
    assert Path(record["resumed_from"]).parent == Path(e1_record["epoch1_dir"]) / "checkpoints"
    # epoch 1 was not trained again: its checkpoints are untouched
    assert {p.name: p.stat().st_mtime_ns for p in Path(record["resumed_from"]).parent.iterdir()} == e1_ckpts
    # its cost includes the e1 run's work up to the end of epoch 1, not only this process's
    assert record["run_wall_s"] < record["wall_s"]
    assert record["wall_s"] - record["run_wall_s"] <= e1_record["wall_s"]

    fresh = recipe.train(tiny, corpus, _config(triples), tmp_path / "alone" / "mined")  # no sibling: epoch 1 here
    assert json.loads((fresh / "training.json").read_text())["resumed_from"] is None
    a, b = Heads.load(mined)[0].state_dict(), Heads.load(fresh)[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)  # reuse changes no weight
    assert (mined.parent / "mined_triples.jsonl").read_text() == (fresh.parent / "mined_triples.jsonl").read_text()
    # the mined run's loss file has epoch 1's lines too, the same as when it trained them itself
    assert (mined.parent / "loss.jsonl").read_text() == (fresh.parent / "loss.jsonl").read_text()
    assert len((mined.parent / "loss.jsonl").read_text().splitlines()) == 6


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
    record = json.loads((ckpt / "training.json").read_text())
    trained = _lora_state(backbone)
    assert trained and not any("visual" in n for n in trained)  # the language model only, as the seed
    assert any("lora_B" in n and v.abs().sum() > 0 for n, v in trained.items())  # lora_B starts at 0: it trained
    assert record["trainable_parameters"] == 2 * 64 * 128 + sum(v.numel() for v in trained.values())

    # Resume with LoRA gives the same heads and adapter (dropout masks come from the checkpointed RNG).
    out = tmp_path / "stopped" / "run"
    stopped = recipe.Config(**{**config.model_dump(), "max_steps": 3, "save_every": 1})
    recipe.train(copy.deepcopy(untrained), TrainingCorpus("x", []), stopped, out)
    resumed_backbone = copy.deepcopy(untrained)
    resumed = recipe.train(resumed_backbone, TrainingCorpus("x", []), config, out)
    a, b = Heads.load(ckpt)[0].state_dict(), Heads.load(resumed)[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    resumed_lora = _lora_state(resumed_backbone)
    assert resumed_lora.keys() == trained.keys() and all(torch.equal(trained[k], v) for k, v in resumed_lora.items())

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
    pages = _fact_pages(monkeypatch)
    untrained = copy.deepcopy(ocr)
    backbone = copy.deepcopy(ocr)
    config = recipe.Config(epochs=2, negatives=2, batch_size=3, lr=5e-3, use_faiss=False, lora_lr=5e-2,
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


# --- harness plot ----------------------------------------------------------------------------------------
def test_plot_command_draws_curves_and_names_bad_lines(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from harness.cli import main

    for name, losses in (("a", [2.0, 1.5, 1.0, 0.7]), ("b", [2.2, 1.1, 0.9, 0.5])):
        (tmp_path / name).mkdir()
        (tmp_path / name / "loss.jsonl").write_text("".join(
            json.dumps({"step": i + 1, "epoch": (i + 1) / 2, "loss": x}) + "\n" for i, x in enumerate(losses)))
    out = tmp_path / "plots" / "loss.png"
    for x in ("step", "epoch"):
        assert main(["plot", str(tmp_path / "a" / "loss.jsonl"), str(tmp_path / "b" / "loss.jsonl"),
                     "--out", str(out), "--x", x]) == 0
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        out.unlink()

    bad = tmp_path / "bad.jsonl"
    for text, message in [('{"step": 1, "loss": 1.0}\n{oops\n', "bad.jsonl:2: not JSON"),
                          ('{"step": 1, "loss": 1.0}\n\n{"step": 2}\n', "bad.jsonl:3: needs a number under 'loss'"),
                          ('{"step": 1, "loss": "high"}\n', "bad.jsonl:1: needs a number under 'loss'"),
                          ("", "bad.jsonl: no loss lines")]:
        bad.write_text(text)
        assert main(["plot", str(bad), "--out", str(out)]) == 2
        assert message in capsys.readouterr().err and not out.exists()
    assert main(["plot", str(tmp_path / "missing.jsonl"), "--out", str(out)]) == 2
    assert "missing.jsonl: no such file" in capsys.readouterr().err
    # --x epoch needs the epoch in every line
    bad.write_text('{"step": 1, "loss": 1.0}\n')
    assert main(["plot", str(bad), "--x", "epoch", "--out", str(out)]) == 2
    assert "bad.jsonl:1: needs a number under 'epoch'" in capsys.readouterr().err
