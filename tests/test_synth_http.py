"""The OpenAI-compatible HTTP backend: against a real llama.cpp server over the packaged GGUF (started here on
127.0.0.1 and always stopped), and against tiny scripted servers for a server error and a timeout."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from harness.backbones.base import Page
from harness.synth import operations as ops
from harness.synth.backends import BackendError, GenParams, Prompt, packaged_gguf
from harness.synth.http_api import OpenAIBackend
from harness.synth.store import SynthStore

PAGES = [Page(id="d0", text="The Orvell river floods every spring and feeds the rice farms of the valley."),
         Page(id="d1", text="Tamsin Corp reported revenue of 41 million in 2019, up from 35 million.")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def llama_server() -> Iterator[str]:
    """A real llama-cpp-python OpenAI server over the packaged Gemma 3 270M, on 127.0.0.1."""
    pytest.importorskip("llama_cpp.server", reason="llama-cpp-python[server] is a dependency: run scripts/setup.sh")
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", packaged_gguf(),
                             "--model_alias", "gemma", "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048",
                             "--verbose", "false"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})  # see harness/synth/llamacpp.py
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"llama.cpp server exited: {proc.stderr.read().decode()[-2000:]}")
            try:
                urllib.request.urlopen(url + "/models", timeout=2).read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("llama.cpp server did not start within 90 s") from None
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_real_server_generates_scores_and_judges(llama_server: str, tmp_path: Path) -> None:
    backend = OpenAIBackend(llama_server, "gemma", instruct=False, concurrency=2, timeout_s=60, retries=1)
    gen = backend.generate([Prompt("Question: What is the capital of France?\nAnswer:")],
                           GenParams(max_new_tokens=8, temperature=0.0), seeds=[1])[0]
    assert gen.text.strip() and gen.n_tokens > 0
    # Scoring through /completions with echo + logprobs. (llama-cpp-python's server ranks the whole 262k-token
    # vocabulary in Python for every prompt token it echoes: keep the scored texts short.)
    right, wrong = backend.score([Prompt("The capital of France is")] * 2, [" Paris", " Berlin zoo"])
    assert right.n_tokens == 1 and wrong.n_tokens >= 2 and right.mean_logprob > wrong.mean_logprob
    with SynthStore(tmp_path / "s.jsonl") as store:
        # (The server computes logits for every prompt token, as its logprobs need: keep the prompts few.)
        queries, qreport = ops.pseudo_queries(backend, store, PAGES[:1], n=1, max_samples=2, progress=False,
                                              params=GenParams(max_new_tokens=16, temperature=1.0, top_p=0.9))
        items = [ops.JudgeItem("q0", "When does the Orvell river flood?", p) for p in PAGES]
        p_yes, yreport = ops.judge_yesno(backend, store, items, progress=False)
    assert qreport.statuses["ok"] >= 1 and any(queries.values())
    # Through a server only the top-20 next tokens are visible: an answer outside them is unreadable (counted).
    assert all(p is None or 0 < p < 1 for p in p_yes)
    assert sum(yreport.statuses.values()) == 2
    lines = (tmp_path / "s.jsonl").read_text().splitlines()
    assert len(lines) == qreport.new + yreport.new
    assert {json.loads(x)["backend"] for x in lines} == {"http"}


class _Scripted(BaseHTTPRequestHandler):
    """Plays ``server.script(n)`` for the n-th request: (status, body dict, delay seconds)."""

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        self.rfile.read(int(self.headers["Content-Length"]))
        with self.server.lock:  # type: ignore[attr-defined]
            self.server.count += 1  # type: ignore[attr-defined]
            n = self.server.count  # type: ignore[attr-defined]
        status, body, delay = self.server.script(n)  # type: ignore[attr-defined]
        time.sleep(delay)
        data = json.dumps(body).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout): expected
            pass

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def scripted() -> Iterator[Callable[[Callable[[int], tuple[int, dict, float]]], tuple[str, Any]]]:
    servers: list[ThreadingHTTPServer] = []

    def start(script: Callable[[int], tuple[int, dict, float]]) -> tuple[str, Any]:
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Scripted)
        server.script, server.count, server.lock = script, 0, threading.Lock()  # type: ignore[attr-defined]
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/v1", server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _answer(text: str) -> dict:
    return {"choices": [{"message": {"content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 3}}


def test_server_error_is_retried_and_nothing_is_lost(scripted: Any, tmp_path: Path) -> None:
    url, server = scripted(lambda n: (500, {"error": "overloaded"}, 0) if n == 1
                           else (200, _answer("Highly Relevant"), 0))
    backend = OpenAIBackend(url, "m", concurrency=1, retries=3, backoff_s=0.01)
    with SynthStore(tmp_path / "s.jsonl") as store:
        labels, _ = ops.judge_graded(backend, store, [ops.JudgeItem("q", "Q?", PAGES[0])], progress=False)
    assert labels == ["highly"] and server.count == 2 and backend.retried == 1


def test_timeout_is_retried_then_a_clear_error_keeping_finished_records(scripted: Any, tmp_path: Path) -> None:
    # Requests 1-2 answer; from the 3rd on the server sleeps past the client's timeout.
    url, server = scripted(lambda n: (200, _answer("Not Relevant"), 0) if n <= 2 else (200, _answer("late"), 1.5))
    backend = OpenAIBackend(url, "m", concurrency=1, timeout_s=0.3, retries=1, backoff_s=0.01)
    items = [ops.JudgeItem(f"q{i}", f"Q{i}?", PAGES[0]) for i in range(4)]
    path = tmp_path / "s.jsonl"
    with SynthStore(path) as store, pytest.raises(ops.OperationError, match="2 new record") as err:
        ops.judge_graded(backend, store, items, progress=False)
    assert "no answer within 0.3s" in str(err.value.__cause__)
    assert len(path.read_text().splitlines()) == 2  # finished records were written as they completed

    url2, server2 = scripted(lambda n: (200, _answer("Somewhat Relevant"), 0))
    with SynthStore(path) as store:
        labels, report = ops.judge_graded(OpenAIBackend(url2, "m", concurrency=2), store, items, progress=False)
    assert server2.count == 2 and report.reused == 2  # only the missing two were asked again
    assert labels == ["not", "not", "somewhat", "somewhat"]


def test_client_error_is_immediate_and_clear(scripted: Any) -> None:
    url, server = scripted(lambda n: (400, {"error": {"message": "model 'm' not found"}}, 0))
    backend = OpenAIBackend(url, "m", retries=3, backoff_s=0.01)
    with pytest.raises(BackendError, match="HTTP 400.*not found"):
        backend.generate([Prompt("hi")], GenParams())
    assert server.count == 1  # a bad request is not retried


def test_images_go_as_data_urls(scripted: Any) -> None:
    from PIL import Image

    seen: list[dict] = []

    class Capture(_Scripted):
        def do_POST(self) -> None:  # noqa: N802
            seen.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            data = json.dumps(_answer("What is shown?")).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Capture)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        backend = OpenAIBackend(f"http://127.0.0.1:{server.server_address[1]}/v1", "vlm", vision=True)
        page = Page(id="img", image=Image.new("RGB", (32, 32), "white"))
        from harness.synth.prompts import QUERY_TEMPLATES

        gen = backend.generate([Prompt.of(QUERY_TEMPLATES[("specific", "vlm")], [page])], GenParams())[0]
    finally:
        server.shutdown()
        server.server_close()
    content = seen[0]["messages"][-1]["content"]
    assert content[0]["type"] == "image_url" and content[0]["image_url"]["url"].startswith("data:image/png;base64,")
    assert "following image" in content[1]["text"] and gen.meta["page_modes"] == ["image"]
