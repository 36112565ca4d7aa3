"""The whole SynTR recipe under torchrun (2 CPU processes, gloo): rank 0 alone calls the LLM (a deterministic fake,
so the calls can be compared with a single-process run), ranks and judges; both ranks read the same examples
back, train on different halves of them, and the checkpoint rank 0 saves reloads."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from harness.backbones import build_backbone
from harness.train import Stages, load_checkpoint
from helpers import SYNTR_CONFIG as CONFIG
from helpers import FakeBackend
from helpers import syntr_corpus as _corpus
from models.syntr import recipe

ROOT = Path(__file__).resolve().parent.parent
DDP_CONFIG = {**CONFIG, "train": {"steps": 1, "batch_size": 2, "logging_steps": 1, "warmup": 0.0}}  # one shuffle

SCRIPT = r'''
import json, os, sys
from pathlib import Path
sys.path.insert(0, sys.argv[4])  # tests/: the fake backend and the corpus helper (tests/helpers.py)
import harness  # noqa: F401
from harness.backbones import build_backbone
from harness.train.loop import run_loop
from models.syntr import recipe
from helpers import FakeBackend
from helpers import syntr_corpus as _corpus

out, folder, config = Path(sys.argv[1]), Path(sys.argv[2]), json.loads(sys.argv[3])
fake, made, seen, steps = FakeBackend(), [], [], []

def make_backend(spec):
    made.append(spec)
    return fake

def train_recording(objective, items, collate, *args, **kwargs):
    def recording(batch):
        seen.extend(ex.query for ex in batch)
        return collate(batch)
    result = run_loop(objective, items, recording, *args, **kwargs)
    steps.append(result.steps)
    return result

recipe.make_backend, recipe.run_loop = make_backend, train_recording
backbone = build_backbone("tiny", {"arch": "colqwen2_5", "seed": 0})
recipe.train(backbone, _corpus(folder), recipe.Config(**config), out / "ckpt")
rank = os.environ["RANK"]
(out / f"rank{rank}.json").write_text(json.dumps({"calls": fake.calls, "backends": len(made), "seen": seen,
                                                  "steps": steps, "world": int(os.environ["WORLD_SIZE"])}))
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


@pytest.mark.slow
def test_syntr_recipe_under_torchrun(image_folder: Path, tmp_path: Path) -> None:
    # The single-process reference: steps 1-4 only (what rank 0 does before training).
    single = tmp_path / "single"
    single.mkdir()
    corpus = _corpus(image_folder)
    pages = {p.id: p for p in corpus.pages}
    fake = FakeBackend()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(recipe, "make_backend", lambda spec: fake)
        recipe._generate(build_backbone("tiny", {"arch": "colqwen2_5", "seed": 0}), recipe.Config(**DDP_CONFIG),
                         single, Stages(), pages, sorted(pages))

    script = tmp_path / "syntr_ddp.py"
    script.write_text(SCRIPT)
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT),
           "ACCELERATE_USE_CPU": "true"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), str(script), str(out), str(image_folder), json.dumps(DDP_CONFIG),
           str(ROOT / "tests")]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    r0, r1 = (json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["world"] == r1["world"] == 2

    # Only rank 0 built a backend and called it, and it made exactly the single-process run's calls, once each.
    assert r0["backends"] == 1 and r0["calls"] == fake.calls > 0
    assert r1["backends"] == 0 and r1["calls"] == 0
    ckpt = out / "ckpt"
    store = _lines(ckpt / "synth.jsonl")
    keys = [r["key"] for r in store]
    assert len(keys) == len(set(keys)) and set(keys) == {r["key"] for r in _lines(single / "synth.jsonl")}
    assert (ckpt / "examples.jsonl").read_text() == (single / "examples.jsonl").read_text()
    record = json.loads((ckpt / "training.json").read_text())
    assert record["llm_calls"] == len(store) and record["processes"] == 2

    # Both ranks trained the same number of steps, each on its own part of the same training examples.
    train_ids = {r["query"] for r in _lines(ckpt / "examples.jsonl") if r["split"] == "train"}
    a, b = set(r0["seen"]) & train_ids, set(r1["seen"]) & train_ids
    assert len(train_ids) >= 4 and a and b and a | b == train_ids
    assert len(a & b) <= len(train_ids) % 2  # an odd count: the sampler repeats one example to even the ranks
    assert r0["steps"] == r1["steps"] == [record["train"]["steps"]] and record["train"]["steps"] > 0

    # The checkpoint rank 0 saved reloads into a fresh backbone.
    fresh = build_backbone("tiny", {"arch": "colqwen2_5", "seed": 0})
    before = fresh.fingerprint()
    load_checkpoint(fresh, ckpt)
    assert fresh.fingerprint() != before and fresh.encode_queries(["a question"])[0].isfinite().all()


def test_waiting_rank_fails_when_rank0_fails(tmp_path: Path) -> None:
    (tmp_path / recipe.GENERATED_FILE).write_text(json.dumps({"error": "RuntimeError: no training examples"}))
    with pytest.raises(RuntimeError, match="rank 0 failed: RuntimeError: no training examples"):
        recipe._wait_for(tmp_path / recipe.EXAMPLES_FILE, poll_s=0.01)
