"""Identities behind reuse: model revisions, task identities, checkpoint keys, run records, lazy page images.

Each test here failed on the code before issue 12's fixes (see notes/issue12_identities.md)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

import harness  # noqa: F401  (torchvision fix before colpali_engine)
from conftest import FACTS, write_beir
from harness.backbones import build_backbone
from harness.backbones.colpali import ColpaliBackbone, ColpaliConfig
from harness.backbones.colpali import hub as colpali_hub
from harness.backbones.tiny import build_tiny_checkpoint
from harness.config import BackboneSpec, ConfigError, RunConfig, VariantSpec
from harness.evaluate.records import versions
from harness.evaluate.runner import evaluate_model
from harness.pipeline import build_model, run
from harness.variants import get_variant
from models.base.model import load_model
from tasks.beir_folder import BeirFolderTask

REPO = Path(__file__).resolve().parent.parent


# ---- 1. a merged LoRA on a pinned Hub checkpoint is a new model ------------------------------------------------

def test_merged_lora_on_pinned_checkpoint_changes_the_revision(tmp_path: Path, monkeypatch) -> None:
    from harness.train.lora import LoraSpec, attach_lora, merge_lora

    folder = build_tiny_checkpoint("colqwen2_5", tmp_path / "tiny", seed=0)
    backbone = ColpaliBackbone(ColpaliConfig(model=str(folder)))
    # As if loaded from the Hub at a pinned commit (no network here): the identity path of fingerprint().
    monkeypatch.setattr(colpali_hub, "is_local", lambda source: False)
    backbone.spec = backbone.config = ColpaliConfig(model="org/model", revision="a" * 40)
    backbone.base = "org/model"
    pinned = backbone.fingerprint()
    assert backbone.fingerprint() == pinned  # stable while untouched

    attach_lora(backbone, LoraSpec(r=2, alpha=4, dropout=0.0))
    optimizer = torch.optim.SGD([p for p in backbone.parameters() if p.requires_grad], lr=0.5)
    states, _ = backbone.forward_queries(backbone.query_inputs(["a query", "another"]))
    states.pow(2).sum().backward()
    optimizer.step()
    merge_lora(backbone)  # LoRA folded in, nothing requires grad: only the weights tell
    assert not any(p.requires_grad for p in backbone.parameters())
    assert backbone.fingerprint() != pinned


def test_in_place_weight_edit_on_pinned_checkpoint_changes_the_revision(tmp_path: Path, monkeypatch) -> None:
    folder = build_tiny_checkpoint("colqwen2_5", tmp_path / "tiny", seed=0)
    backbone = ColpaliBackbone(ColpaliConfig(model=str(folder)))
    monkeypatch.setattr(colpali_hub, "is_local", lambda source: False)
    backbone.spec = backbone.config = ColpaliConfig(model="org/model", revision="a" * 40)
    backbone.base = "org/model"
    pinned = backbone.fingerprint()
    with torch.no_grad():
        backbone.model.custom_text_proj.bias += 1  # no recipe, no LoRA: a plain in-place edit
    assert backbone.fingerprint() != pinned


# ---- 2 and 7. local BEIR tasks: split and content are part of the identity; reuse only on an exact match ---------

def _two_splits(root: Path) -> Path:
    docs = [{"_id": f"d{i}", "title": "", "text": fact} for i, (fact, _) in enumerate(FACTS)]
    queries = {f"q{i}": q for i, (_, q) in enumerate(FACTS)}
    write_beir(root, docs, queries, [(f"q{i}", f"d{i}", 1) for i in range(3)], split="test")
    # train: the other queries, and wrong answers, so its score cannot equal the test split's
    write_beir(root, docs, queries, [(f"q{i}", f"d{(i + 1) % 6}", 1) for i in range(3, 6)], split="train")
    return root


@pytest.fixture(scope="module")
def ocr_text():
    return build_backbone("ocr-text", {"mode": "pooled"})


def test_split_is_part_of_the_task_identity(ocr_text, tmp_path: Path) -> None:
    folder = _two_splits(tmp_path / "scifact")
    test, train = BeirFolderTask(folder, split="test"), BeirFolderTask(folder, split="train")
    assert test.metadata.dataset["revision"] != train.metadata.dataset["revision"]
    results = tmp_path / "results"
    [a] = evaluate_model(load_model(ocr_text), [test], results, variant="base", backbone={})
    [b] = evaluate_model(load_model(ocr_text), [train], results, variant="base", backbone={})
    assert not b.reused and b.main_score != a.main_score


def test_same_basename_other_content_is_not_reused(ocr_text, tmp_path: Path, caplog) -> None:
    docs = [{"_id": f"d{i}", "title": "", "text": fact} for i, (fact, _) in enumerate(FACTS)]
    queries = {f"q{i}": q for i, (_, q) in enumerate(FACTS)}
    one = write_beir(tmp_path / "a" / "set", docs, queries, [(f"q{i}", f"d{i}", 1) for i in range(6)])
    other = write_beir(tmp_path / "b" / "set", docs, queries, [(f"q{i}", f"d{(i + 2) % 6}", 1) for i in range(6)])
    first, second = BeirFolderTask(one), BeirFolderTask(other)
    assert first.metadata.dataset["revision"] != second.metadata.dataset["revision"]
    assert BeirFolderTask(one).metadata.dataset["revision"] == first.metadata.dataset["revision"]  # stable
    results = tmp_path / "results"
    [a] = evaluate_model(load_model(ocr_text), [first], results, variant="base", backbone={})
    with caplog.at_level(logging.INFO, logger="harness.evaluate.runner"):
        [b] = evaluate_model(load_model(ocr_text), [second], results, variant="base", backbone={})
    assert not b.reused and b.main_score < a.main_score
    assert "dataset revision" in caplog.text  # the log says why it ran again
    with caplog.at_level(logging.INFO, logger="harness.evaluate.runner"):
        [c] = evaluate_model(load_model(ocr_text), [BeirFolderTask(other)], results, variant="base", backbone={})
    assert c.reused and c.main_score == b.main_score and "reusing" in caplog.text


def test_one_run_refuses_two_tasks_of_one_name_and_other_data(tmp_path: Path) -> None:
    docs = [{"_id": f"d{i}", "title": "", "text": fact} for i, (fact, _) in enumerate(FACTS)]
    queries = {f"q{i}": q for i, (_, q) in enumerate(FACTS)}
    one = write_beir(tmp_path / "a" / "set", docs, queries, [(f"q{i}", f"d{i}", 1) for i in range(6)])
    other = write_beir(tmp_path / "b" / "set", docs[:5], queries, [(f"q{i}", f"d{i}", 1) for i in range(5)])
    config = RunConfig(results=str(tmp_path / "results"), backbones=[{"family": "ocr-text"}],
                       tasks=[{"path": str(one)}, {"path": str(other)}])
    with pytest.raises(ConfigError, match=r"tasks.0 and tasks.1 are both named 'SetRetrieval'"):
        run(config)


# ---- 2 and 5. checkpoint keys: the full task identity and the recipe's code ------------------------------------

RECIPE = '''
from pathlib import Path
from pydantic import BaseModel, ConfigDict


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")


def train(backbone, corpus, config, out_dir):
    """Trains once per checkpoint folder (a real recipe also reuses a finished folder)."""
    if not (out_dir / "done").is_file():
        out_dir.mkdir(parents=True, exist_ok=True)
        with (Path(__file__).parent / "trainings.txt").open("a") as f:
            f.write(corpus.name + "\\n")
        (out_dir / "done").write_text("")
    return out_dir
'''
MODEL = '''
from models.base.model import load_model as base_model


def load_model(backbone, checkpoint=None, cache=None):
    return base_model(backbone, None, cache)
'''


def _variant(folder: Path, extra: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "recipe.py").write_text(RECIPE + extra)
    (folder / "model.py").write_text(MODEL)
    return folder


def _trainings(folder: Path) -> int:
    path = folder / "trainings.txt"
    return len(path.read_text().splitlines()) if path.is_file() else 0


def test_checkpoints_keyed_by_task_identity_and_recipe_code(tmp_path: Path, caplog) -> None:
    docs = [{"_id": f"d{i}", "title": "", "text": fact} for i, (fact, _) in enumerate(FACTS)]
    queries = {f"q{i}": q for i, (_, q) in enumerate(FACTS)}
    one = _two_splits(tmp_path / "a" / "set")
    other = write_beir(tmp_path / "b" / "set", docs[:4], queries, [(f"q{i}", f"d{i}", 1) for i in range(4)])
    folder = _variant(tmp_path / "toy")
    spec, vspec = BackboneSpec(family="ocr-text"), VariantSpec(name=str(folder))
    checkpoints = tmp_path / "checkpoints"

    def build(task: BeirFolderTask) -> None:
        build_model(get_variant(str(folder)), spec, vspec, task, where="v", backbone_where="b",
                    checkpoints=checkpoints)

    build(BeirFolderTask(one))
    build(BeirFolderTask(one))
    assert _trainings(folder) == 1  # same everything: reused
    build(BeirFolderTask(other))
    assert _trainings(folder) == 2  # same basename, other pages
    build(BeirFolderTask(one, split="train"))
    assert _trainings(folder) == 3  # same folder, other split
    _variant(folder, extra="\n# the recipe changed\n")
    with caplog.at_level(logging.INFO, logger="harness.pipeline"):
        build(BeirFolderTask(one))
    assert _trainings(folder) == 4  # same task, new recipe code
    assert "code" in caplog.text  # and the log says what changed


# ---- 6. the run record's commit: the repository the run was launched from, and whether it was dirty ------------

def test_run_record_commit_is_the_launch_repository_with_dirty_flag(tmp_path: Path, monkeypatch) -> None:
    repo = tmp_path / "project"
    repo.mkdir()
    git = ["git", "-c", "user.email=t@example.org", "-c", "user.name=t", "-C", str(repo)]
    subprocess.run([*git, "init", "-q"], check=True)
    (repo / "run.yaml").write_text("name: a\n")
    subprocess.run([*git, "add", "run.yaml"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "one"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()
    monkeypatch.chdir(repo)
    clean = versions()
    assert clean["git_commit"] == head and clean["git_dirty"] is False
    (repo / "run.yaml").write_text("name: b\n")
    assert versions()["git_dirty"] is True


# ---- 8. page images open at use, not all at once --------------------------------------------------------------

LAZY = '''
import os, resource, sys
from harness.pipeline import training_corpus
from tasks.beir_folder import BeirFolderTask
task = BeirFolderTask(sys.argv[1])
soft = len(os.listdir("/proc/self/fd")) + 64  # far fewer descriptors than pages
resource.setrlimit(resource.RLIMIT_NOFILE, (soft, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
corpus = training_corpus(task)
sizes = {p.image.size for p in corpus.pages}  # every page still opens when used
print(len(corpus.pages), len(os.listdir("/proc/self/fd")) < soft, sorted(sizes))
'''


def test_training_corpus_does_not_hold_every_page_open(tmp_path: Path) -> None:
    root = tmp_path / "many"
    (root / "pages").mkdir(parents=True)
    n = 300
    for i in range(n):
        Image.new("RGB", (8 + i % 3, 8), "white").save(root / "pages" / f"p{i}.png")
    docs = [{"_id": f"p{i}", "image": f"pages/p{i}.png"} for i in range(n)]
    write_beir(root, docs, {"q": "a page"}, [("q", "p0", 1)])
    done = subprocess.run([sys.executable, "-c", LAZY, str(root)], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[:2] == [str(n), "True"]
    assert json.loads(done.stdout.split(" ", 2)[2].replace("(", "[").replace(")", "]")) == [[8, 8], [9, 8], [10, 8]]
