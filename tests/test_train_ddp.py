"""harness.train under torchrun: 2 CPU processes, gloo backend. Each process sees a different half of the data,
rank 0 saves, and the saved trainable state reloads into a fresh backbone. Also: the shared training module
on its own (checkpoint resume, loss file, early stopping)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = r'''
import json, os, sys
from pathlib import Path
import harness  # noqa: F401
import torch.distributed as dist
from harness.backbones import build_backbone
from harness.train import Example, LoraSpec, TrainSpec, train_retriever
from harness.backbones.base import Page
from PIL import Image

out = Path(sys.argv[1])
colors = ["red", "blue", "green", "white", "black", "yellow", "gray", "purple"]
pages = [Page(f"p{i}", image=Image.new("RGB", (56, 56), c)) for i, c in enumerate(colors)]
examples = [Example(f"question {i}", pages[i], [pages[(i + 1) % 8], pages[(i + 2) % 8]], id=f"ex{i}")
            for i in range(8)]
backbone = build_backbone("tiny", {"arch": "colqwen2_5", "seed": 0})
seen = []
result = train_retriever(backbone, examples, [], out, TrainSpec(epochs=1, batch_size=2, logging_steps=1, seed=1),
                         LoraSpec(r=4, alpha=8), seen=seen)
rank = int(os.environ["RANK"])
(out / f"seen{rank}.json").write_text(json.dumps({"seen": seen, "world": int(os.environ["WORLD_SIZE"]),
                                                  "backend": dist.get_backend() if dist.is_initialized() else None,
                                                  "steps": result.steps}))
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    assert a and b and not a & b and a | b == {f"ex{i}" for i in range(8)}  # each process its own half
    assert runs[0]["steps"] == runs[1]["steps"] == 2  # 8 examples / (2 processes x batch 2)

    from harness.backbones import build_backbone
    from harness.train import load_checkpoint

    fresh = build_backbone("tiny", {"arch": "colqwen2_5", "seed": 0})
    before = fresh.fingerprint()
    load_checkpoint(fresh, out)  # out/final: lora.json + trainable.safetensors, written by rank 0
    assert fresh.fingerprint() != before
    assert fresh.encode_queries(["question 1"])[0].isfinite().all()


def test_resume_after_interruption(tmp_path: Path) -> None:
    from PIL import Image

    from harness.backbones import build_backbone
    from harness.backbones.base import Page
    from harness.train import Example, LoraSpec, TrainSpec, train_retriever

    pages = [Page(f"p{i}", image=Image.new("RGB", (56, 56), (30 * i, 0, 0))) for i in range(6)]
    train = [Example(f"q{i}", pages[i], [pages[(i + 1) % 6]], id=str(i)) for i in range(4)]
    val = [Example("q4", pages[4], [pages[5]]), Example("q5", pages[5], [pages[0]])]
    spec = TrainSpec(epochs=1, batch_size=2, logging_steps=1)
    first = train_retriever(build_backbone("tiny", {"arch": "colqwen2_5", "seed": 0}), train, val, tmp_path, spec,
                            LoraSpec(r=4, alpha=8), eval_pages=pages, eval_queries={"q4": "q4", "q5": "q5"},
                            eval_qrels={"q4": {"p4": 1}, "q5": {"p5": 1}})
    assert first.resumed_from is None and first.best_checkpoint and first.best_ndcg_at_10 is not None
    # "interrupted" after epoch 1 of 2: a second call with more epochs resumes from checkpoint-2
    more = spec.model_copy(update={"epochs": 2})
    second = train_retriever(build_backbone("tiny", {"arch": "colqwen2_5", "seed": 0}), train, val, tmp_path, more,
                             LoraSpec(r=4, alpha=8), eval_pages=pages, eval_queries={"q4": "q4", "q5": "q5"},
                             eval_qrels={"q4": {"p4": 1}, "q5": {"p5": 1}})
    assert second.resumed_from and second.resumed_from.endswith("checkpoint-2") and second.steps == 4
    steps = [json.loads(x)["step"] for x in Path(second.loss_log).read_text().splitlines()]
    assert steps == [1, 2, 3, 4]  # the curve continues, no restart


def test_loss_registry() -> None:
    import torch

    from harness.train import make_loss

    q = torch.nn.functional.normalize(torch.randn(3, 1, 8), dim=-1)
    pos, neg = torch.nn.functional.normalize(torch.randn(3, 1, 8), dim=-1), torch.randn(3, 2, 1, 8)
    colbert = make_loss("colbert_pairwise_negative")(q, pos, neg)
    bi = make_loss("bi_pairwise_negative")(q, pos, neg)
    assert colbert.isfinite() and bi.isfinite()
    with pytest.raises(ValueError, match="one vector"):
        make_loss("bi_negative")(torch.randn(3, 2, 8), pos, neg)
    with pytest.raises(ValueError, match="unknown loss"):
        make_loss("nope")
