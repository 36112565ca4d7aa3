"""BEIR datasets by name (``beir/scifact``) through beir's own downloader, cached and offline-safe. Nothing is fetched
from the internet here: the download path runs against a zip served by a local HTTP server."""

from __future__ import annotations

import functools
import http.server
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import FACTS, write_beir
from harness.cli import main
from harness.data.beir import DataError
from harness.data.beir_download import beir_dataset
from tasks.registry import TaskSpecError, resolve_task


def _facts_folder(root: Path) -> Path:
    docs = [{"_id": f"d{i}", "title": "", "text": fact} for i, (fact, _) in enumerate(FACTS)]
    queries = {f"q{i}": q for i, (_, q) in enumerate(FACTS)}
    write_beir(root, docs, queries, [(f"q{i}", f"d{i}", 1) for i in range(3)], split="train")
    return write_beir(root, docs, queries, [(f"q{i}", f"d{i}", 1) for i in range(3, 6)], split="test")


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_offline_error_names_the_dataset_and_the_folder_to_fill(cache: Path, capsys) -> None:
    # conftest sets HF_HUB_OFFLINE=1: no request is made, the error says what to put where
    assert main(["eval", "--task", "beir/scifact"]) == 2
    err = capsys.readouterr().err
    assert "BEIR dataset 'scifact'" in err and str(cache / "beir" / "scifact") in err
    assert "scifact.zip" in err and "corpus.jsonl" in err
    assert not (cache / "beir" / "scifact").exists()


def test_unreachable_mirror_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("HARNESS_OFFLINE", raising=False)
    with pytest.raises(DataError, match=r"'scifact': cannot reach http://127\.0\.0\.1:9/scifact\.zip") as exc:
        beir_dataset("scifact", cache=tmp_path, url="http://127.0.0.1:9/scifact.zip")  # nothing listens on port 9
    assert str(tmp_path / "scifact") in str(exc.value)
    assert list(tmp_path.iterdir()) == []  # no half-made folder


def test_a_filled_cache_folder_is_used_without_the_network(cache: Path) -> None:
    _facts_folder(cache / "beir" / "scifact")
    (task,) = resolve_task("beir/scifact")
    assert task.split == "test" and sorted(task.data.queries) == ["q3", "q4", "q5"]
    (train,) = resolve_task({"name": "beir/scifact", "split": "train"})
    assert sorted(train.data.queries) == ["q0", "q1", "q2"]
    with pytest.raises(TaskSpecError, match="unknown option"):
        resolve_task({"name": "beir/scifact", "local_dir": "x"})
    with pytest.raises(DataError, match="unknown BEIR dataset 'scifactt'"):
        resolve_task("beir/scifactt")


@pytest.fixture
def served(tmp_path: Path) -> Iterator[str]:
    """A local HTTP server with scifact.zip (a BEIR folder zipped as the BEIR mirror zips it: one top folder)."""
    site = tmp_path / "site"
    _facts_folder(tmp_path / "src" / "scifact")
    site.mkdir()
    shutil.make_archive(str(site / "scifact"), "zip", tmp_path / "src", "scifact")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_download_unzips_into_the_cache_once(served: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    cache = tmp_path / "cache"
    folder = beir_dataset("scifact", cache=cache, url=f"{served}/scifact.zip")
    assert folder == cache / "scifact" and (folder / "qrels" / "test.tsv").is_file()
    assert sorted(p.name for p in cache.iterdir()) == ["scifact"]  # the zip and staging folder are gone
    # the second call finds the folder: no request (the server could be gone)
    assert beir_dataset("scifact", cache=cache, url="http://127.0.0.1:9/scifact.zip") == folder
    with pytest.raises(DataError, match="nfcorpus.zip answered HTTP 404"):  # a file the mirror lacks
        beir_dataset("nfcorpus", cache=cache, url=f"{served}/nfcorpus.zip")
