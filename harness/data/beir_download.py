"""BEIR datasets by name (``beir/scifact``), fetched once with beir's own downloader into the harness cache.

``beir_dataset("scifact")`` returns ``<cache>/beir/scifact`` (corpus.jsonl, queries.jsonl, qrels/<split>.tsv). A
folder already there is used as it is, without the network; otherwise the zip is fetched from the BEIR mirror with
``beir.util.download_and_unzip`` into a temp folder beside it and moved into place whole. Offline
(``HF_HUB_OFFLINE`` / ``HARNESS_OFFLINE`` set, or the mirror unreachable) the error names the dataset, the URL and
the folder to fill by hand. cqadupstack's forums are ``beir/cqadupstack/<forum>``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from pathlib import Path

from harness.data.beir import DataError
from harness.paths import cache_root

BEIR_URL = "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets/{name}.zip"
# The datasets the BEIR mirror serves (bioasq, signal1m, trec-news and robust04 need their own licences).
BEIR_DATASETS = ("arguana", "climate-fever", "cqadupstack", "dbpedia-entity", "fever", "fiqa", "hotpotqa",
                 "msmarco", "nfcorpus", "nq", "quora", "scidocs", "scifact", "trec-covid", "webis-touche2020")
PROBE_TIMEOUT_S = 10.0  # beir's downloader has no timeout: a HEAD request first fails fast when offline


def beir_cache() -> Path:
    return cache_root() / "beir"


def _offline() -> bool:
    return any(os.environ.get(k, "").strip().lower() in {"1", "true", "yes", "on"}
               for k in ("HARNESS_OFFLINE", "HF_HUB_OFFLINE"))


def beir_dataset(name: str, cache: Path | None = None, url: str | None = None) -> Path:
    """The local folder of BEIR dataset ``name`` (``scifact``, ``cqadupstack/android``), downloaded if missing."""
    dataset, _, sub = name.strip("/").partition("/")
    root = Path(cache) if cache is not None else beir_cache()
    folder = root / dataset
    target = folder / sub if sub else folder
    if (target / "corpus.jsonl").is_file():
        return target
    if dataset not in BEIR_DATASETS and url is None:
        raise DataError(f"unknown BEIR dataset {dataset!r}: one of {', '.join(BEIR_DATASETS)} "
                        f"(or any BEIR folder by path)")
    url = url or BEIR_URL.format(name=dataset)
    fill = (f"to use it offline, unzip {url} so that {target}/corpus.jsonl, queries.jsonl and qrels/<split>.tsv "
            "exist, or give the folder's path as the task")
    if _offline():
        raise DataError(f"BEIR dataset {name!r} is not in {folder} and the network is off (HARNESS_OFFLINE / "
                        f"HF_HUB_OFFLINE): {fill}")
    _download(dataset, url, folder, fill)
    if not (target / "corpus.jsonl").is_file():
        raise DataError(f"BEIR dataset {name!r}: {url} unpacked without {target}/corpus.jsonl")
    return target


def _download(dataset: str, url: str, folder: Path, fill: str) -> None:
    import requests
    from beir.util import download_and_unzip

    try:
        requests.head(url, timeout=PROBE_TIMEOUT_S, allow_redirects=True).raise_for_status()
    except requests.HTTPError as exc:
        raise DataError(f"BEIR dataset {dataset!r}: {url} answered HTTP {exc.response.status_code}; {fill}") from None
    except requests.RequestException as exc:
        raise DataError(f"BEIR dataset {dataset!r}: cannot reach {url} ({type(exc).__name__}); {fill}") from None
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dataset}.", suffix=".download", dir=folder.parent))
    try:  # a killed download leaves only the staging folder, never a half-filled dataset folder
        extracted = Path(download_and_unzip(url, str(staging)))
        if not extracted.is_dir():
            raise DataError(f"BEIR dataset {dataset!r}: {url} did not unpack to a folder named {dataset}")
        os.replace(extracted, folder)
    except (requests.RequestException, OSError, ValueError, zipfile.BadZipFile) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f"BEIR dataset {dataset!r}: download of {url} failed ({exc}); {fill}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
