"""ColIntern: head-only training over a frozen tiny colpali backbone and the OCR-text backbone, mining, resume,
reload through models/colintern/model.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from harness.backbones import Page
from harness.variants import TrainingCorpus
from models.colintern import model as colintern_model
from models.colintern import recipe
from models.colintern.heads import Heads
from tests.conftest import FACTS

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
    losses = [json.loads(x) for x in Path(training["loss_log"]).read_text().splitlines()]
    assert [x["step"] for x in losses] == list(range(1, 7))  # 2 batches x 3 epochs
    mined = [json.loads(x) for x in (tmp_path / "run" / "mined_triples.jsonl").read_text().splitlines()]
    assert len(mined) == 8 and all(len(m["negs"]) == 3 and m["pos"] not in m["negs"] for m in mined)
    assert (tmp_path / "run" / "checkpoints" / "epoch-1.txt").is_file()
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
    full = recipe.train(tiny, TrainingCorpus("x", []), _config(triples), tmp_path / "full")
    for stop in (3, 5):  # mid epoch 2 (after mining), and mid epoch 3
        out = tmp_path / f"stopped{stop}"
        recipe.train(tiny, TrainingCorpus("x", []), _config(triples, max_steps=stop), out)
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


def test_ocr_text_with_pseudo_queries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from harness.backbones.ocr_text import OcrTextBackbone, OcrTextConfig

    backbone = OcrTextBackbone(OcrTextConfig(mode="multi"))
    pages = [Page(f"d{i}", text=fact) for i, (fact, _) in enumerate(FACTS)]
    questions = {f"d{i}": [q] for i, (_, q) in enumerate(FACTS)}
    monkeypatch.setattr(recipe, "pseudo_query_pairs", lambda corpus, config, store: recipe.Pairs(
        sorted(corpus.pages, key=lambda p: p.id), [q[0] for q in questions.values()], list(range(len(FACTS))),
        [[] for _ in FACTS], llm_calls=len(FACTS)))
    config = recipe.Config(epochs=2, negatives=2, batch_size=3, lr=5e-3, use_faiss=False)
    ckpt = recipe.train(backbone, TrainingCorpus("facts", pages), config, tmp_path / "run")
    training = json.loads((ckpt / "training.json").read_text())
    assert training["llm_calls"] == len(FACTS) and training["trainable_parameters"] == 2 * 384 * 128
    encoder = colintern_model.load_model(backbone, ckpt)
    assert encoder.mteb_model_meta.name == "colintern-mined/ocr-text-multi-all-MiniLM-L6-v2"
    q = encoder.model.encode_queries([FACTS[0][1]])
    docs = encoder.model.encode_pages(pages)
    assert q[0].shape == (q[0].shape[0], 128) and len(docs) == len(FACTS)
