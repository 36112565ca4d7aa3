"""Local BEIR folders as mteb tasks, and every kind of bad input named clearly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.config import ConfigError, load_run_config
from harness.data.beir import DataError, read_beir_folder
from tasks.beir_folder import BeirFolderTask
from tasks.registry import TaskSpecError, resolve_task


def test_text_folder_is_a_t2t_task(text_folder: Path) -> None:
    task = BeirFolderTask(text_folder)
    assert task.metadata.category == "t2t" and task.metadata.main_score == "ndcg_at_10"
    task.load_data()
    split = task.dataset["default"]["test"]
    assert split["corpus"].num_rows == 6 and split["queries"].num_rows == 6
    assert split["relevant_docs"]["q1"] == {"d1": 1}


def test_image_folder_is_a_t2i_task(image_folder: Path) -> None:
    task = BeirFolderTask(image_folder, name="MyPages")
    assert task.metadata.name == "MyPages" and task.metadata.category == "t2i"
    task.load_data()
    corpus = task.dataset["default"]["test"]["corpus"]
    assert corpus[0]["image"].size == (640, 320)
    # mteb drops instance metadata on unload; the task must survive it
    task.unload_data()
    assert task.metadata.name == "MyPages"


def test_folder_path_resolves_through_registry(text_folder: Path) -> None:
    [task] = resolve_task(str(text_folder))
    assert task.metadata.name == "TextsetRetrieval"
    [task] = resolve_task({"path": str(text_folder), "name": "Custom"})
    assert task.metadata.name == "Custom"


def test_malformed_jsonl_line_names_file_and_line(text_folder: Path) -> None:
    path = text_folder / "corpus.jsonl"
    lines = path.read_text().splitlines()
    lines[2] = '{"_id": "d2", "text": '
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"corpus\.jsonl:3: malformed JSON"):
        read_beir_folder(text_folder)


def test_qrels_with_unknown_ids(text_folder: Path) -> None:
    qrels = text_folder / "qrels" / "test.tsv"
    qrels.write_text(qrels.read_text() + "q1\tnope\t1\n")
    with pytest.raises(DataError, match=r"test\.tsv:8: unknown corpus id 'nope'"):
        read_beir_folder(text_folder)
    qrels.write_text("query-id\tcorpus-id\tscore\nqX\td1\t1\n")
    with pytest.raises(DataError, match=r"test\.tsv:2: unknown query id 'qX'"):
        read_beir_folder(text_folder)


def test_empty_corpus_and_queries(text_folder: Path) -> None:
    (text_folder / "queries.jsonl").write_text("")
    with pytest.raises(DataError, match=r"queries\.jsonl: no queries"):
        read_beir_folder(text_folder)
    (text_folder / "corpus.jsonl").write_text("\n")
    with pytest.raises(DataError, match="empty corpus"):
        read_beir_folder(text_folder)


def test_missing_split_lists_available(text_folder: Path) -> None:
    with pytest.raises(DataError, match=r"train\.tsv: qrels file not found \(available splits: \['test'\]\)"):
        read_beir_folder(text_folder, split="train")


def test_missing_and_corrupt_images(image_folder: Path) -> None:
    (image_folder / "pages" / "p1.png").unlink()
    with pytest.raises(DataError, match=r"corpus\.jsonl:2: .*p1\.png: image file not found"):
        read_beir_folder(image_folder)
    (image_folder / "pages" / "p1.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(DataError, match=r"p1\.png: image does not decode"):
        read_beir_folder(image_folder)
    # A truncated file: valid header, cut-off data
    good = (image_folder / "pages" / "p2.png").read_bytes()
    (image_folder / "pages" / "p2.png").write_bytes(good[: len(good) // 2])
    data = read_beir_folder(image_folder, skip_bad_images=True)
    assert data.skipped_images == ["p1", "p2"]
    assert "p1" not in data.corpus and "q1" not in data.queries and "q2" not in data.queries
    assert len(data.queries) == 4


def test_unknown_task_name() -> None:
    with pytest.raises(TaskSpecError, match="unknown task 'NoSuchTask'"):
        resolve_task("NoSuchTask")
    with pytest.raises(TaskSpecError, match=r"unknown option\(s\) \['bogus'\]"):
        resolve_task({"name": "ViDoRe(v1)", "bogus": 1})


def test_wrong_config_key_is_named(tmp_path: Path) -> None:
    cfg = tmp_path / "run.yaml"
    cfg.write_text("backbones:\n  - family: ocr-text\ntasks: [generated]\nvariantz: [base]\n")
    with pytest.raises(ConfigError, match=r"run\.yaml: variantz: Extra inputs are not permitted"):
        load_run_config(cfg)
    cfg.write_text(json.dumps({"backbones": [{"family": "ocr-text"}], "tasks": [], "seed": "x"}))
    with pytest.raises(ConfigError) as err:
        load_run_config(cfg)
    assert "seed" in str(err.value) and "tasks" in str(err.value)


def test_wrong_backbone_key_is_named() -> None:
    from harness.backbones import BackboneError, build_backbone

    with pytest.raises(BackboneError, match=r"backbone\.config\.chunk_tokenz: Extra inputs"):
        build_backbone("ocr-text", {"chunk_tokenz": 5}, where="backbone.config")
    with pytest.raises(BackboneError, match="unknown backbone family 'nope'"):
        build_backbone("nope")


def test_candidates_by_metadata_restricts_each_query(tmp_path: Path) -> None:
    from conftest import write_beir

    docs = [{"_id": f"d{i}", "text": f"page {i}", "metadata": {"doc_id": "A" if i < 2 else "B"}} for i in range(4)]
    root = write_beir(tmp_path / "docs", docs, {"q0": "page zero", "q1": "page three"},
                      [("q0", "d0", 1), ("q1", "d3", 1)])
    lines = (root / "queries.jsonl").read_text().splitlines()
    metas = [{"doc_id": "A"}, {"doc_id": "B"}]
    (root / "queries.jsonl").write_text(
        "".join(json.dumps({**json.loads(line), "metadata": m}) + "\n" for line, m in zip(lines, metas, strict=True)))
    [task] = resolve_task({"path": str(root), "candidates_by": "doc_id"})
    assert task.metadata.name == "DocsWithinDocIdRetrieval"
    assert task.top_ranked == {"q0": ["d0", "d1"], "q1": ["d2", "d3"]}
    with pytest.raises(DataError, match="has no metadata.page"):
        BeirFolderTask(root, candidates_by="page")


def test_a_training_corpus_knows_each_pages_document_only_when_every_page_has_one(tmp_path: Path) -> None:
    from conftest import write_beir
    from harness.pipeline import training_corpus

    docs = [{"_id": f"d{i}", "text": f"page {i}", "metadata": {"doc_id": "A" if i < 2 else "B"}} for i in range(4)]
    root = write_beir(tmp_path / "docs", docs, {"q0": "page zero"}, [("q0", "d0", 1)])
    corpus = training_corpus(BeirFolderTask(root))
    assert corpus.page_docs == {"d0": "A", "d1": "A", "d2": "B", "d3": "B"}
    assert corpus.docs_of(["d3", "d0"]) == ["B", "A"]
    docs[3]["metadata"] = {}
    bare = training_corpus(BeirFolderTask(write_beir(tmp_path / "bare", docs, {"q0": "page zero"}, [("q0", "d0", 1)])))
    assert bare.page_docs == {} and bare.docs_of(["d0"]) is None
