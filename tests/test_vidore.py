"""ViDoRe v1, v2 and v3 through mteb's own task classes, offline: small mirrors in the Hub layout the classes load,
built from generated pages, evaluated with `harness eval` and checked against a direct computation."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import mteb
import pytest
import pytrec_eval
import torch
from PIL import Image

from harness.backbones import Page, build_backbone
from harness.cli import main
from harness.data.vidore import DownloadError, download, download_plan, layout, write_task_mirror
from harness.evaluate.records import mteb_result_path
from harness.retrieval.maxsim import maxsim, pad_vectors
from tasks.registry import TaskSpecError, resolve_task
from tasks.vidore import benchmark_tasks, point_at_local_copy

DOCVQA = "mteb/docvqa_test_subsampled_beir"


def test_vidore_benchmarks_are_mteb_tasks() -> None:
    v1, v2, v3 = resolve_task("ViDoRe(v1)"), resolve_task("ViDoRe(v2)"), resolve_task("ViDoRe(v3)")
    assert len(v1) == 10 and len(v2) == 4 and len(v3) == 10
    assert {t.metadata.main_score for t in v1 + v2} == {"ndcg_at_5"}
    assert {t.metadata.main_score for t in v3} == {"ndcg_at_10"}
    assert {t.metadata.category for t in v1 + v2 + v3} == {"t2i"}
    assert {layout(t) for t in v1 + v2} == {"beir"} and {layout(t) for t in v3} == {"mteb"}
    assert set(v3[0].hf_subsets) == {"english", "french", "german", "italian", "portuguese", "spanish"}
    assert {t.metadata.category for t in resolve_task("ViDoRe(v3.1)")} == {"t2it"}


def test_vidore_local_copy(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="local copy .* not found"):
        resolve_task({"name": "VidoreDocVQARetrieval", "local_dir": str(tmp_path)})
    (tmp_path / DOCVQA).mkdir(parents=True)
    [task] = resolve_task({"name": "VidoreDocVQARetrieval", "local_dir": str(tmp_path)})
    assert task.metadata.dataset["path"] == str(tmp_path / DOCVQA)
    with pytest.raises(TaskSpecError, match=r"unknown option\(s\) \['bogus'\]"):
        resolve_task({"name": "ViDoRe(v1)", "bogus": 1})


def test_a_mirror_does_not_leak_into_other_instances(tmp_path: Path) -> None:
    """mteb keeps a task's metadata on its class: pointing one instance at a mirror must not move the others."""
    (tmp_path / DOCVQA).mkdir(parents=True)
    resolve_task({"name": "VidoreDocVQARetrieval", "local_dir": str(tmp_path)})
    assert mteb.get_task("VidoreDocVQARetrieval").metadata.dataset["path"] == DOCVQA
    [fresh] = [t for t in resolve_task("ViDoRe(v1)") if t.metadata.name == "VidoreDocVQARetrieval"]
    assert fresh.metadata.dataset["path"] == DOCVQA
    shared = next(t for t in mteb.get_benchmark("ViDoRe(v1)").tasks if t.metadata.name == "VidoreDocVQARetrieval")
    point_at_local_copy(next(t for t in benchmark_tasks("v1") if t.metadata.name == "VidoreDocVQARetrieval"),
                        tmp_path)
    assert shared.metadata.dataset["path"] == DOCVQA


def test_download_plan_is_mteb_pins() -> None:
    for short, name in (("v1", "ViDoRe(v1)"), ("v2", "ViDoRe(v2)"), ("v3", "ViDoRe(v3)"), ("v3.1", "ViDoRe(v3.1)")):
        plan = download_plan(short)
        tasks = mteb.get_benchmark(name).tasks
        assert [(p.task, p.repo_id, p.revision) for p in plan] == [
            (t.metadata.name, t.metadata.dataset["path"], t.metadata.dataset["revision"]) for t in tasks]
        assert all(len(p.revision) == 40 for p in plan)
    assert {p.task for p in download_plan("v3") if not p.public} == {"Vidore3TelecomRetrieval",
                                                                      "Vidore3NuclearRetrieval"}


def test_download_without_the_hub_names_the_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the Hub unreachable, as on these machines; nothing is faked
    with pytest.raises(DownloadError, match=r"VidoreArxivQARetrieval: cannot download dataset "
                                            r"mteb/arxivqa_test_subsampled_beir at revision 1797624"):
        download("v1", tmp_path, log=lambda _: None)
    assert main(["vidore", "download", "--benchmark", "v2", "--to", str(tmp_path)]) == 2
    assert "cannot download dataset vidore/esg_reports_v2" in capsys.readouterr().err
    assert main(["vidore", "download", "--benchmark", "v3", "--to", str(tmp_path), "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 10 and lines[0].split("\t")[1:] == ["vidore/vidore_v3_finance_en_mteb_format",
                                                             "fa78cb14152b3dde8c5defdc4e3ddf50de69dfeb"]
    assert sum("private: skipped" in line for line in lines) == 2


# ------------------------------------------------------------------------------------------ mirrors, end to end

@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict, dict]:
    """Generated pages: corpus id -> image file, query id -> text, qrels."""
    from tasks.generated import GeneratedConfig, generate

    folder = generate(GeneratedConfig(n_entities=2, page_size=(500, 650)), tmp_path_factory.mktemp("gen") / "g")
    corpus = [json.loads(line) for line in (folder / "corpus.jsonl").read_text().splitlines()]
    queries = {q["_id"]: q["text"] for q in map(json.loads, (folder / "queries.jsonl").read_text().splitlines())}
    qrels: dict[str, dict[str, int]] = {}
    with open(folder / "qrels" / "test.tsv") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            qrels.setdefault(row["query-id"], {})[row["corpus-id"]] = int(row["score"])
    return {d["_id"]: folder / d["image"] for d in corpus}, queries, qrels


def build_mirror(benchmark: str, root: Path, pages: tuple[dict, dict, dict],
                 only: list[str] | None = None) -> dict[tuple[str, str], dict]:
    """Every public task of the benchmark (or those named in ``only``) over the same pages, each (task, subset)
    with its own share of the queries. Returns (task, subset) -> {"queries": {id: text}, "qrels": ...}."""
    images, queries, qrels = pages
    plan = {}
    for k, task in enumerate(benchmark_tasks(benchmark)):
        if not task.metadata.is_public or (only and task.metadata.name not in only):
            continue
        subsets = list(task.hf_subsets) if task.metadata.is_multilingual else ["default"]
        chosen = {s: {f"{q}-{s}": t for i, (q, t) in enumerate(queries.items()) if (i + k + j) % 3}
                  for j, s in enumerate(subsets)}
        task_qrels = {f"{q}-{s}": qrels[q] for s in subsets for q in queries}
        write_task_mirror(task, root, images, chosen, {q: d for q, d in task_qrels.items()
                                                        if any(q in c for c in chosen.values())})
        plan.update({(task.metadata.name, s): {"queries": chosen[s], "qrels": task_qrels} for s in subsets})
    return plan


def direct_scores(backbone, pages: tuple[dict, dict, dict], plan: dict) -> dict[tuple[str, str], dict]:
    """nDCG@1/5/10 per (task, subset): the backbone's vectors, MaxSim, pytrec_eval; no mteb, no harness runner."""
    images, queries, _ = pages
    doc_ids = list(images)
    docs = backbone.encode_pages([Page(d, image=Image.open(images[d]).convert("RGB")) for d in doc_ids], 8)
    texts = list(queries.values())
    qvecs = dict(zip(queries, backbone.encode_queries(texts, 32), strict=True))
    scores_all = maxsim(pad_vectors(list(qvecs.values())), pad_vectors(docs))
    row = {q: i for i, q in enumerate(qvecs)}
    out = {}
    for key, part in plan.items():
        run = {qid: {d: float(scores_all[row[qid.rsplit("-", 1)[0]], j]) for j, d in enumerate(doc_ids)}
               for qid in part["queries"]}
        qrels = {q: part["qrels"][q] for q in run}
        values = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.1,5,10"}).evaluate(run)
        out[key] = {f"ndcg_at_{k}": sum(v[f"ndcg_cut_{k}"] for v in values.values()) / len(values)
                    for k in (1, 5, 10)}
    return out


OCR = ("ocr-text", ["mode=pooled"])


@pytest.mark.slow
@pytest.mark.parametrize("benchmark,family,sets,only", [
    # the whole benchmark (every public task, every language) with the OCR-text backbone: real scores
    ("v1", *OCR, None), ("v2", *OCR, None), ("v3", *OCR, None),
    # the tiny ColQwen2.5 (image path) and ViDoRe v3.1 (OCR markdown column, t2it) on one task each, by task name
    ("v1", "tiny", [], ["VidoreDocVQARetrieval"]), ("v2", "tiny", [], ["Vidore2ESGReportsRetrieval"]),
    ("v3", "tiny", [], ["Vidore3HrRetrieval"]), ("v3.1", *OCR, ["Vidore3HrRetrieval.v2"]),
], ids=lambda v: v if isinstance(v, str) else None)
def test_mirror_through_harness_eval_equals_direct_scores(benchmark: str, family: str, sets: list[str],
                                                          only: list[str] | None, pages: tuple[dict, dict, dict],
                                                          tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tasks.vidore import benchmark_name

    plan = build_mirror(benchmark, tmp_path / "mirror", pages, only)
    mirror = str(tmp_path / "mirror")
    specs = [{"name": t, "local_dir": mirror} for t in only] if only else [{"name": benchmark_name(benchmark),
                                                                            "local_dir": mirror}]
    args = ["eval", "--backbone", family, *[f"--set={s}" for s in sets], "--results", str(tmp_path / "results"),
            *[x for spec in specs for x in ("--task", json.dumps(spec))]]
    assert main(args) == 0
    lines = [line.split("\t") for line in capsys.readouterr().out.splitlines() if line.count("\t") == 4]
    public = only or [t.metadata.name for t in benchmark_tasks(benchmark) if t.metadata.is_public]
    assert [line[0] for line in lines] == public and {line[3] for line in lines} == {"evaluated"}

    backbone = build_backbone(family, dict(s.split("=", 1) for s in sets))
    expected = direct_scores(backbone, pages, plan)
    for task, main_name, score, _, record_file in lines:
        record = json.loads(Path(record_file).read_text())
        assert record["dataset"]["path"].startswith(str(tmp_path / "mirror"))
        result = json.loads(mteb_result_path(tmp_path / "results", record["model"], record["revision"],
                                             task).read_text())
        parts = result["scores"]["test"]
        subsets = {p["hf_subset"] for p in parts}
        assert subsets == {s for t, s in plan if t == task}  # every language of the task, as mteb defines them
        for part in parts:
            want = expected[(task, part["hf_subset"])]
            for metric, value in want.items():
                assert part[metric] == pytest.approx(value, abs=6e-6), (task, part["hf_subset"], metric)
        mean_main = sum(expected[(task, s)][main_name] for s in subsets) / len(subsets)
        assert float(score) == pytest.approx(mean_main, abs=1e-4)
    # what a leaderboard of this folder shows: the benchmark's tasks, per language where the task has them
    assert torch.isfinite(torch.tensor([float(line[2]) for line in lines])).all()


def test_each_mirror_is_read_afresh(tmp_path: Path, pages: tuple[dict, dict, dict]) -> None:
    """datasets caches a local folder by its basename: a second mirror (or a re-downloaded one) must not be
    served the first one's rows."""
    images, queries, qrels = pages
    seen = []
    for root, n in ((tmp_path / "a", 3), (tmp_path / "b", 5), (tmp_path / "a", 7)):
        chosen = dict(list(queries.items())[:n])
        write_task_mirror(mteb.get_task("VidoreDocVQARetrieval"), root, images, {"default": chosen},
                          {q: qrels[q] for q in chosen})
        [task] = resolve_task({"name": "VidoreDocVQARetrieval", "local_dir": str(root)})
        task.load_data()
        seen.append(len(task.dataset["default"]["test"]["queries"]))
    assert seen == [3, 5, 7]


def test_a_mirror_at_another_revision_is_recorded(tmp_path: Path, pages: tuple[dict, dict, dict],
                                                   caplog: pytest.LogCaptureFixture) -> None:
    """snapshot_download notes each file's commit; a mirror not at mteb's pin is said so, and recorded as it is."""
    from huggingface_hub._local_folder import write_download_metadata

    images, queries, qrels = pages
    folder = write_task_mirror(mteb.get_task("VidoreDocVQARetrieval"), tmp_path, images, {"default": queries}, qrels)
    pin = mteb.get_task("VidoreDocVQARetrieval").metadata.dataset["revision"]
    write_download_metadata(folder, "README.md", pin, "etag")
    [task] = resolve_task({"name": "VidoreDocVQARetrieval", "local_dir": str(tmp_path)})
    assert task.metadata.dataset["revision"] == pin and not caplog.records
    write_download_metadata(folder, "README.md", "f" * 40, "etag")
    [task] = resolve_task({"name": "VidoreDocVQARetrieval", "local_dir": str(tmp_path)})
    assert task.metadata.dataset["revision"] == "f" * 40
    assert f"holds revision {'f' * 40}, mteb pins {pin}" in caplog.text


def test_v3_answers_from_the_queries_answer_column(tmp_path: Path, pages: tuple[dict, dict, dict]) -> None:
    """Answer evaluation on an mteb task: a ViDoRe v3 mirror whose queries carry an ``answer`` column gives the
    english subset's questions, references, qrels and (lazily decoded) page images; one subset's saved ranking."""
    import gzip

    from harness.answers.evaluate import AnswerTaskError, answer_task, evaluate_answers, ranking_for
    from harness.evaluate.records import record_path
    from harness.synth.backends import Generation

    images, queries, qrels = pages
    name = "Vidore3ComputerScienceRetrieval"
    subsets = list(mteb.get_task(name).hf_subsets)
    chosen = {s: {f"{q}-{s}": t for q, t in list(queries.items())[:4]} for s in subsets}
    task_qrels = {q: qrels[q.rsplit("-", 1)[0]] for s in subsets for q in chosen[s]}
    english = list(chosen["english"])
    answers = {q: f"answer of {q}" for s in subsets for q in chosen[s]} | {english[0]: ""}  # one without an answer
    write_task_mirror(mteb.get_task(name), tmp_path / "m", images, chosen, task_qrels, answers=answers)
    [task] = resolve_task({"name": name, "local_dir": str(tmp_path / "m")})
    qa = answer_task(task)
    assert qa.subset == "english" and list(qa.questions) == english[1:]
    assert qa.answers[english[1]] == [f"answer of {english[1]}"] and qa.qrels[english[1]] == task_qrels[english[1]]
    assert len(qa.pages) == len(images) and qa.pages[next(iter(images))].image.size == (500, 650)
    assert list(answer_task(task, "german").questions) == list(chosen["german"])
    with pytest.raises(AnswerTaskError, match="no subset 'klingon'"):
        answer_task(task, "klingon")

    class FirstPageId:  # answers with the id of the first page it sees
        kind, model, instruct, sees_images, parallelism = "scripted", "scripted", True, True, 1

        def describe(self) -> dict:
            return {"kind": "scripted"}

        def prepare(self, pages: object) -> None:
            pass

        def generate(self, prompts: list, params: object, seeds: object = None) -> list[Generation]:
            return [Generation(p.pages[0].id if p.pages else "none", 5, 2) for p in prompts]

    from harness.answers.answerer import Answerer

    [oracle] = evaluate_answers(Answerer(FirstPageId()), qa, tmp_path / "results", no_retrieval=False)
    record = json.loads(oracle.read_text())
    assert record["scores"]["recall"] == 1.0 and record["queries"] == 3
    assert {q: r["answer"] for q, r in record["per_query"].items()} == {
        q: sorted(d for d, s in task_qrels[q].items() if s > 0)[0] for q in english[1:]}

    # one subset's saved ranking (a multilingual run keeps one per language)
    path = record_path(tmp_path / "results", "m", "r", name).with_suffix(".run.json.gz")
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt") as f:
        json.dump({"english/test": {"q": {"a": 1.0}}, "french/test": {"q": {"b": 1.0}}}, f)
    assert ranking_for(tmp_path / "results", "m", "r", name, "french") == {"q": {"b": 1.0}}

    plain = tmp_path / "plain"  # the same task without answers: a clear error
    write_task_mirror(mteb.get_task(name), plain, images, chosen, task_qrels)
    [task] = resolve_task({"name": name, "local_dir": str(plain)})
    with pytest.raises(AnswerTaskError, match="carry no reference answers"):
        answer_task(task)
