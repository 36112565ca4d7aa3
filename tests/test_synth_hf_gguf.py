"""The transformers backend over the packaged Gemma 3 270M Q4_K_M GGUF (dequantised by transformers + gguf), checked
against the llama.cpp backend on the same file.

conftest gives each test session a private, empty HARNESS_CACHE, so the module fixture runs the real conversion
(~45 s on 2 idle cores) and later loads in the module reuse its cached folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import FACTS
from harness.backbones.base import Page
from harness.synth import operations as ops
from harness.synth.backends import Backend, BackendSpec, GenParams, make_backend, packaged_gguf
from harness.synth.store import SynthStore

pytest.importorskip("gguf", reason="transformers reads GGUF files with the gguf package")
pytest.importorskip("llama_cpp", reason="llama-cpp-python is a dependency: run scripts/setup.sh")
PAGES = [Page(id=f"d{i}", text=fact) for i, (fact, _) in enumerate(FACTS[:2])]
QUERIES = [q for _, q in FACTS[:2]]
# Mean log-prob per query token, transformers (Q4_K_M dequantised, fp32 compute) minus llama.cpp (quantised
# compute), measured on FACTS' 6 queries x (own page, next page): |diff| mean 0.037, max 0.154 nats; the relevant -
# irrelevant gap on the same pairs was 2.9-4.3 nats. 0.3 is twice the largest difference seen and still 10x under
# the gap a relevance decision rests on.
QL_TOLERANCE = 0.3
pytestmark = pytest.mark.slow  # the module fixture converts the GGUF with transformers (~80 s)


@pytest.fixture(scope="module")
def hf_backend() -> Backend:
    return make_backend(BackendSpec(kind="hf"))  # model None: the packaged GGUF, as the base model


def test_the_conversion_is_cached(hf_backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    import transformers

    from harness.paths import cache_root
    from harness.synth.hf import _gguf_folder

    assert hf_backend.describe() == {"kind": "hf", "model": "gemma-3-270m-q4_k_m.gguf", "instruct": False,
                                     "sees_images": False, "max_page_tokens": 512}
    folder, name = packaged_gguf().rsplit("/", 1)

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("dequantised the GGUF file again")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)
    cached = _gguf_folder(folder, name)
    assert cached.parent == cache_root() / "hf-gguf" and (cached / "model.safetensors").is_file()


def test_pseudo_query_through_the_hf_backend(hf_backend: Backend, tmp_path: Path) -> None:
    params = GenParams(max_new_tokens=24, temperature=1.0, top_p=0.9)
    with SynthStore(tmp_path / "s.jsonl") as store:
        queries, report = ops.pseudo_queries(hf_backend, store, PAGES[:1], n=1, params=params, progress=False)
    assert len(queries["d0"]) == 1 and queries["d0"][0].strip() and "\n" not in queries["d0"][0]
    record = json.loads((tmp_path / "s.jsonl").read_text().splitlines()[0])
    assert record["backend"] == "hf" and record["model"] == "gemma-3-270m-q4_k_m.gguf"
    assert record["prompt_id"] == "syntr.general.fewshot.v1" and record["params"]["stop"] == ["\n"]
    assert record["page_modes"] == ["text"] and 0 < record["n_tokens"] <= 24


def test_query_likelihood_agrees_with_llama_cpp(hf_backend: Backend, tmp_path: Path) -> None:
    # Each query against its own page, then against the other page.
    items = [ops.JudgeItem(f"q{i}", QUERIES[i], PAGES[j]) for i in range(2) for j in (i, 1 - i)]
    scores = {}
    for name, backend in (("hf", hf_backend), ("llama-cpp", make_backend())):
        with SynthStore(tmp_path / f"{name}.jsonl") as store:
            scores[name], _ = ops.judge_query_likelihood(backend, store, items, progress=False)
    hf, lc = scores["hf"], scores["llama-cpp"]
    for item, a, b in zip(items, hf, lc, strict=True):
        assert abs(a - b) < QL_TOLERANCE, (item.query_id, item.page.id, a, b)
    for own in (0, 2):  # both backends rank the page that answers the query first
        assert hf[own] > hf[own + 1] and lc[own] > lc[own + 1]
