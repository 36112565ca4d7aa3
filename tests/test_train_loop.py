"""The shared training loop (harness.train.loop) and its contrastive objective.

- the training scorer equals the evaluation MaxSim on the same tensors (padding masked the same way);
- a duplicate of a query's positive in the batch is a positive, never a negative;
- the step budget is met with passes over small data, the lr schedule warms up and decays, a cut run resumes to
  the same weights as an uninterrupted one, checkpoint choice prefers the later state on ties and falls back to
  the last state on small validation sets, and the record says how far the model moved;
- under torchrun with 2 CPU processes each process trains on its own half of the data.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from harness.backbones import build_backbone
from harness.backbones.base import Page
from harness.retrieval.maxsim import maxsim, pad_vectors, score_matrix
from harness.train import (
    ContrastiveCollator,
    ContrastiveObjective,
    Example,
    LoopSpec,
    LoraSpec,
    PageValidator,
    attach_lora,
    contrastive_loss,
    run_loop,
)
from harness.train.loop import relative_weight_change, spearman_rows

ROOT = Path(__file__).resolve().parent.parent


def _ragged(n: int, lengths: list[int], dim: int = 8, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.functional.normalize(torch.randn(t, dim, generator=g), dim=-1) for t in lengths[:n]]


def test_training_scores_equal_evaluation_maxsim_on_the_same_tensors() -> None:
    queries = _ragged(3, [2, 5, 1], seed=1)
    docs = _ragged(4, [7, 1, 3, 4], seed=2)
    q, d = pad_vectors(queries), pad_vectors(docs)
    qm, dm = q.abs().sum(-1) > 0, d.abs().sum(-1) > 0
    train = score_matrix(q, qm, d, dm)
    evaluation = maxsim(q, d)
    assert torch.allclose(train, evaluation, atol=1e-6)
    # the reference, one pair at a time, without any padding
    ref = torch.tensor([[float((a @ b.T).amax(1).sum()) for b in docs] for a in queries])
    assert torch.allclose(train, ref, atol=1e-6)
    # zero padding scored as 0 (colpali-engine's losses) would lift a page whose real tokens are all negative
    neg_doc = -queries[0][:1]
    padded = pad_vectors([neg_doc, docs[0]])  # the 1-token page is padded to 7 tokens
    s = score_matrix(q[:1], qm[:1], padded, padded.abs().sum(-1) > 0)
    assert s[0, 0] < 0


def test_backbone_training_scores_equal_its_evaluation_scores() -> None:
    backbone = build_backbone("ocr-text", {"mode": "pooled", "chunk_tokens": 32, "chunk_overlap": 8})
    pages = [Page("a", text="Tesseract reads the page image. " * 12), Page("b", text="A short page."),
             Page("c", text="Quarterly revenue rose by twelve percent in the third quarter. " * 5)]
    queries = ["what does tesseract read", "revenue growth in the third quarter"]
    objective = ContrastiveObjective(backbone)
    backbone.eval()
    with torch.no_grad():
        train = objective.scores(backbone.query_inputs(queries), backbone.page_inputs(pages))
    evaluation = maxsim(pad_vectors(backbone.encode_queries(queries)), pad_vectors(backbone.encode_pages(pages)))
    # pooled: one vector per query, so the per-token mean equals the sum
    assert torch.allclose(train, evaluation, atol=1e-5)
    assert backbone.encode_pages(pages[:1])[0].shape[0] > 1  # page "a" has several chunks (max-passage)


def test_duplicate_positive_is_never_a_negative() -> None:
    backbone = build_backbone("ocr-text", {"mode": "pooled"})
    p = [Page(f"p{i}", text=f"page {i}") for i in range(4)]
    batch = [Example("what is on page one", [p[1]], [p[2]]),
             Example("What is on page one?", [p[0]], [p[3]]),  # the same query text, another positive
             Example("something else", [p[1]], [p[0]])]  # the same page as example 0's positive
    out = ContrastiveCollator(backbone)(batch)
    ids = ["p1", "p2", "p0", "p3"]  # candidates, each page once, in first-seen order
    assert out["pages"]["n_items"] == 4
    pos = out["positive"]
    assert pos[0].tolist() == [True, False, True, False]  # its own positive and its duplicate's
    assert pos[1].tolist() == [True, False, True, False]
    assert pos[2].tolist() == [True, False, False, False]
    assert ids[2] == "p0"
    # the loss ignores how many times a page was listed: scores over distinct candidates
    scores = torch.tensor([[0.9, 0.1, 0.8, 0.0], [0.7, 0.2, 0.9, 0.1], [0.5, 0.4, 0.6, 0.3]])
    loss = contrastive_loss(scores, pos, "infonce", 0.1)
    expected = (torch.logsumexp(scores[0] / 0.1, 0) - torch.logsumexp(scores[0, [0, 2]] / 0.1, 0)
                + torch.logsumexp(scores[1] / 0.1, 0) - torch.logsumexp(scores[1, [0, 2]] / 0.1, 0)
                + torch.logsumexp(scores[2] / 0.1, 0) - scores[2, 0] / 0.1) / 3
    assert torch.isclose(loss, expected)
    pairwise = contrastive_loss(scores, pos, "pairwise", 0.1)
    want = torch.nn.functional.softplus(torch.tensor([(0.1 - 0.9) / 0.1, (0.2 - 0.9) / 0.1, (0.6 - 0.5) / 0.1]))
    assert torch.isclose(pairwise, want.mean())


class _Toy(torch.nn.Module):
    """Queries and pages as learned vectors: a fast objective for loop mechanics."""

    def __init__(self, n: int = 12, dim: int = 8) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.q = torch.nn.Parameter(torch.randn(n, dim, generator=g))
        self.p = torch.nn.Parameter(torch.randn(n, dim, generator=g))

    def sim(self) -> torch.Tensor:
        return torch.nn.functional.normalize(self.q, dim=-1) @ torch.nn.functional.normalize(self.p, dim=-1).T

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        s = self.sim()[idx][:, idx]
        positive = torch.eye(len(idx), dtype=torch.bool)
        return contrastive_loss(s, positive, "infonce", 0.1)


class _ToyValidator:
    def __init__(self, model: _Toy, n_queries: int, metric: list[float] | None = None) -> None:
        self.model, self.n = model, n_queries
        self.query_ids = [f"q{i}" for i in range(n_queries)]
        self.page_ids = [f"p{i}" for i in range(12)]
        self.qrels = {f"q{i}": {f"p{i}": 1} for i in range(n_queries)}

    def scores(self) -> torch.Tensor:
        with torch.no_grad():
            return self.model.sim()[: self.n].clone()


def _collate(items: list[int]) -> dict[str, torch.Tensor]:
    return {"idx": torch.tensor(items)}


def test_loop_meets_the_step_budget_with_passes_and_records_movement(tmp_path: Path) -> None:
    model = _Toy()
    spec = LoopSpec(steps=9, batch_size=4, lr=0.05, warmup=0.2, eval_every=3, logging_steps=1, min_val_queries=5)
    result = run_loop(model, list(range(8)), _collate, spec, tmp_path, _ToyValidator(model, 8))
    assert result.steps == 9  # 8 items / batch 4 = 2 steps a pass: 4.5 passes
    assert result.examples_seen == 36
    assert [h["step"] for h in result.val_history] == [0, 3, 6, 9]
    assert result.val_history[-1]["val_ndcg_at_10"] > result.val_history[0]["val_ndcg_at_10"]
    assert result.relative_weight_change > 0.01
    assert result.rank_correlation is not None and result.rank_correlation < 0.999
    assert result.train_s > 0 and result.val_s > 0 and result.examples_per_s > 0
    lrs = [json.loads(x) for x in Path(result.loss_log).read_text().splitlines()]
    assert [x["step"] for x in lrs] == list(range(1, 10))
    state = json.loads((tmp_path / "checkpoints" / "checkpoint-9" / "trainer_state.json").read_text())
    lr = [h["learning_rate"] for h in state["log_history"] if "learning_rate" in h]
    assert lr[0] < lr[1]  # warmup
    assert lr[-1] < max(lr) / 2  # cosine decay



def test_training_shows_a_progress_bar_on_stderr_unless_quiet(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    spec = LoopSpec(steps=3, batch_size=4, logging_steps=1)
    for enabled in ("1", "0"):
        monkeypatch.setenv("HARNESS_PROGRESS", enabled)
        run_loop(_Toy(), list(range(8)), _collate, spec, tmp_path / enabled)
        out, err = capsys.readouterr()
        assert out == ""  # stdout stays for results
        assert ("training steps" in err) == (enabled == "1")


def test_resume_ends_with_the_same_weights(tmp_path: Path) -> None:
    spec = LoopSpec(steps=8, batch_size=4, lr=0.05, eval_every=4, logging_steps=1, min_val_queries=5)
    whole = _Toy()
    run_loop(whole, list(range(8)), _collate, spec, tmp_path / "whole", _ToyValidator(whole, 8))
    # interrupt a run after its step-4 checkpoint: remove what it saved later, then run again
    again = _Toy()
    out = tmp_path / "again"
    run_loop(again, list(range(8)), _collate, spec, out, _ToyValidator(again, 8))
    shutil.rmtree(out / "checkpoints" / "checkpoint-8")
    resumed_model = _Toy()
    resumed = run_loop(resumed_model, list(range(8)), _collate, spec, out, _ToyValidator(resumed_model, 8))
    assert resumed.resumed_from and resumed.resumed_from.endswith("checkpoint-4") and resumed.steps == 8
    assert torch.allclose(resumed_model.q, whole.q, atol=1e-6) and torch.allclose(resumed_model.p, whole.p, atol=1e-6)
    assert [h["step"] for h in resumed.val_history] == [0, 4, 8]
    steps = [json.loads(x)["step"] for x in Path(resumed.loss_log).read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6, 7, 8]  # the cut run's lines after step 4 are not repeated


def test_checkpoint_choice_ties_go_to_the_later_state_and_small_sets_keep_the_last(tmp_path: Path) -> None:
    from harness.train.loop import LoopSpec as Spec
    from harness.train.loop import _Loop

    loop = _Loop(Spec(steps=10, min_val_queries=2, min_delta=0.01), tmp_path, _ToyValidator(_Toy(), 4))
    loop.history = [{"step": 0, "val_ndcg_at_10": 0.50}, {"step": 5, "val_ndcg_at_10": 0.60},
                    {"step": 10, "val_ndcg_at_10": 0.595}]
    assert loop.chosen() == 10  # within min_delta of the best: the later, more trained state
    loop.history[-1]["val_ndcg_at_10"] = 0.55
    assert loop.chosen() == 5
    small = _Loop(Spec(steps=10, min_val_queries=30), tmp_path, _ToyValidator(_Toy(), 4))
    small.history = loop.history
    assert small.chosen() is None  # 4 validation queries select nothing: the last state is kept


class _Fixed:
    """Two documents (A: p0, p1; B: p2, p3) and fixed scores."""

    query_ids, page_ids, page_groups = ["q0", "q1"], ["p0", "p1", "p2", "p3"], ["A", "A", "B", "B"]
    qrels = {"q0": {"p0": 1}, "q1": {"p3": 1}}

    def scores(self) -> torch.Tensor:
        return torch.tensor([[0.5, 0.8, 0.9, 0.1], [0.2, 0.1, 0.3, 0.7]])


def test_within_document_validation_ranks_each_query_among_its_own_documents_pages() -> None:
    from harness.train.loop import val_ndcg

    v = _Fixed()
    # q0's page is third over the pool (behind a page of B), second within A; q1's page is first either way
    assert val_ndcg(v, v.scores()) == pytest.approx((1 / math.log2(4) + 1) / 2)
    assert val_ndcg(v, v.scores(), within_doc=True) == pytest.approx((1 / math.log2(3) + 1) / 2)
    v.page_groups = None
    with pytest.raises(ValueError, match="page_groups"):
        val_ndcg(v, v.scores(), within_doc=True)


def test_select_by_reads_the_named_validation_figure(tmp_path: Path) -> None:
    from harness.train.loop import _Loop

    history = [{"step": 0, "val_ndcg_at_10": 0.50, "val_within_doc_ndcg_at_10": 0.70},
               {"step": 5, "val_ndcg_at_10": 0.60, "val_within_doc_ndcg_at_10": 0.62},
               {"step": 10, "val_ndcg_at_10": 0.55, "val_within_doc_ndcg_at_10": 0.69}]
    chosen = {}
    for by in ("corpus", "within_doc", "mean"):
        loop = _Loop(LoopSpec(steps=10, min_val_queries=1, select_by=by), tmp_path, _Fixed())
        loop.history = history
        chosen[by] = loop.chosen()
    assert chosen == {"corpus": 5, "within_doc": 0, "mean": 10}  # mean: 0.60, 0.61, 0.62
    # a corpus without documents cannot select by them: said at once, not after training
    with pytest.raises(ValueError, match="metadata.doc_id"):
        _Loop(LoopSpec(steps=10, select_by="mean"), tmp_path, _ToyValidator(_Toy(), 4))


def test_a_run_records_both_validation_figures_when_pages_have_documents(tmp_path: Path) -> None:
    model = _Toy()

    class WithDocs(_ToyValidator):
        page_groups = [f"d{i // 3}" for i in range(12)]

    result = run_loop(model, list(range(8)), _collate, LoopSpec(steps=2, batch_size=4, eval_every=1,
                                                                min_val_queries=5, select_by="within_doc"),
                      tmp_path, WithDocs(model, 8))
    assert all(0 < h["val_within_doc_ndcg_at_10"] <= 1 for h in result.val_history)
    assert all(h["val_within_doc_ndcg_at_10"] >= h["val_ndcg_at_10"] for h in result.val_history)
    assert "within document" in result.selection


@pytest.mark.parametrize("name", ["colintern", "colqwen3vl", "supervised", "svrag", "syntr", "syntriever"])
def test_a_partial_train_block_keeps_the_recipes_other_defaults(name: str) -> None:
    from harness.variants import get_variant

    config_cls = get_variant(name).recipe.Config
    defaults = config_cls()
    loops = [k for k in config_cls.model_fields if isinstance(getattr(defaults, k), LoopSpec)]
    assert "train" in loops
    for key in loops:
        default = getattr(defaults, key)
        given = config_cls.model_validate({key: {"steps": default.steps + 7}})
        spec = getattr(given, key)
        assert spec.steps == default.steps + 7
        # every other setting is the recipe's, not LoopSpec's generic one, and "unless given" checks see only
        # what the recipe's default and the config named
        assert spec.model_dump(exclude={"steps"}) == default.model_dump(exclude={"steps"})
        assert spec.model_fields_set == default.model_fields_set | {"steps"}
        # a key the config names wins over the recipe's; an unknown key is still an error naming it
        assert getattr(config_cls.model_validate({key: {"grad_accum": 3}}), key).grad_accum == 3
        with pytest.raises(ValueError, match="stpes"):
            config_cls.model_validate({key: {"stpes": 1}})
    # the case the merge is for: ColQwen3VL's accumulation and ColIntern's weight decay survive a partial block
    assert get_variant("colqwen3vl").recipe.Config.model_validate({"train": {"steps": 5}}).train.grad_accum == 8
    assert get_variant("colintern").recipe.Config.model_validate({"train": {"steps": 5}}).train.weight_decay == 0.0


def test_a_step_zero_choice_restores_the_untrained_state(tmp_path: Path) -> None:
    model = _Toy()
    start = model.q.detach().clone()
    # lr so large that training wrecks the validation ranking: the untrained state is chosen
    spec = LoopSpec(steps=4, batch_size=4, lr=50.0, warmup=0.0, eval_every=2, min_val_queries=5,
                    schedule="constant")

    class Fixed(_ToyValidator):
        def scores(self) -> torch.Tensor:
            diag = torch.eye(12)[: self.n]
            moved = float((self.model.q.detach() - start).abs().sum()) > 0
            return -diag if moved else diag

    result = run_loop(model, list(range(8)), _collate, spec, tmp_path, Fixed(model, 8))
    assert result.chosen_step == 0 and result.steps == 4
    assert torch.equal(model.q.detach(), start)


def test_lora_weight_change_counts_the_folded_adapter() -> None:
    backbone = build_backbone("ocr-text", {"mode": "pooled"})
    attach_lora(backbone, LoraSpec(r=4, alpha=8, dropout=0.0))
    assert relative_weight_change(backbone, {}) == 0.0  # B starts at zero
    for name, p in backbone.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.01)
    assert relative_weight_change(backbone, {}) > 0
    a = torch.randn(3, 20)
    assert spearman_rows(a, a * 2 + 1) == pytest.approx(1.0)
    assert spearman_rows(a, -a) == pytest.approx(-1.0)


def test_contrastive_training_moves_a_real_encoder(tmp_path: Path) -> None:
    backbone = build_backbone("ocr-text", {"mode": "pooled"})
    topics = ["solar panels on the roof", "the cafeteria menu for monday", "quarterly tax filing deadlines",
              "repairing a flat bicycle tyre", "the history of the printing press", "training a sheepdog"]
    pages = [Page(f"p{i}", text=f"This page explains {t} in detail.") for i, t in enumerate(topics)]
    examples = [Example(f"tell me about {t}", [pages[i]]) for i, t in enumerate(topics)]
    attach_lora(backbone, LoraSpec(r=4, alpha=8, dropout=0.0))
    validator = PageValidator(backbone, {f"q{i}": f"where is {t} explained" for i, t in enumerate(topics)}, pages,
                              {f"q{i}": {f"p{i}": 1} for i in range(6)})
    spec = LoopSpec(steps=6, batch_size=3, lr=1e-3, eval_every=3, min_val_queries=100)
    # temperature 1: these pairs are easy, and at 0.02 the loss is 0 from the first step
    result = run_loop(ContrastiveObjective(backbone, temperature=1.0), examples, ContrastiveCollator(backbone), spec,
                      tmp_path, validator)
    assert result.steps == 6 and result.chosen_step is None and result.selection.startswith("last")
    assert result.relative_weight_change > 1e-4
    assert (tmp_path / "checkpoints" / "checkpoint-6" / "trainable.safetensors").is_file()


SCRIPT = r'''
import json, os, sys
from pathlib import Path
import harness  # noqa: F401
import torch.distributed as dist
from harness.backbones import build_backbone
from harness.backbones.base import Page
from harness.train import ContrastiveCollator, ContrastiveObjective, Example, LoopSpec, LoraSpec, attach_lora, run_loop
from harness.train.lora import save_trainable
from PIL import Image

out = Path(sys.argv[1])
colors = ["red", "blue", "green", "white", "black", "yellow", "gray", "purple"]
pages = [Page(f"p{i}", image=Image.new("RGB", (56, 56), c)) for i, c in enumerate(colors)]
examples = [Example(f"question {i}", [pages[i]], [pages[(i + 1) % 8]]) for i in range(8)]
backbone = build_backbone("tiny", {"arch": "colqwen2_5", "seed": 0})
spec = LoraSpec(r=4, alpha=8)
targets = attach_lora(backbone, spec)
collator, seen = ContrastiveCollator(backbone), []

def collate(batch):
    seen.extend(ex.query for ex in batch)
    return collator(batch)

result = run_loop(ContrastiveObjective(backbone), examples, collate, LoopSpec(steps=2, batch_size=2, seed=1), out)
rank = int(os.environ["RANK"])
if rank == 0:
    save_trainable(backbone, out / "final", spec, targets)
(out / f"seen{rank}.json").write_text(json.dumps({"seen": seen, "world": int(os.environ["WORLD_SIZE"]),
                                                  "backend": dist.get_backend() if dist.is_initialized() else None,
                                                  "steps": result.steps}))
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_gloo_training(tmp_path: Path) -> None:
    script = tmp_path / "train_ddp.py"
    script.write_text(SCRIPT)
    out = tmp_path / "out"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT),
           "ACCELERATE_USE_CPU": "true"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), str(script), str(out)]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    runs = [json.loads((out / f"seen{r}.json").read_text()) for r in (0, 1)]
    assert all(r["world"] == 2 and r["backend"] == "gloo" for r in runs)
    a, b = set(runs[0]["seen"]), set(runs[1]["seen"])
    assert a and b and not a & b and a | b == {f"question {i}" for i in range(8)}  # each process its own half
    assert runs[0]["steps"] == runs[1]["steps"] == 2  # 8 examples / (2 processes x batch 2)

    from harness.train import load_checkpoint

    fresh = build_backbone("tiny", {"arch": "colqwen2_5", "seed": 0})
    before = fresh.fingerprint()
    load_checkpoint(fresh, out)  # out/final: lora.json + trainable.safetensors, written by rank 0
    assert fresh.fingerprint() != before
    assert fresh.encode_queries(["question 1"])[0].isfinite().all()
