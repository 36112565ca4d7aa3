"""An OpenAI-compatible HTTP backend (vLLM, llama.cpp server, Ollama, hosted APIs), standard library only.

- Chat models get /v1/chat/completions (the server applies the chat template); base models get /v1/completions.
- Pages go as data URLs to vision models, as OCR text otherwise.
- Each request has a timeout; 5xx, 429, timeouts and connection errors are retried with exponential backoff;
  any other 4xx is an immediate, clear error (retrying a bad request cannot help).
- ``parallelism`` lets the operations keep ``concurrency`` requests in flight (servers batch them).
- Scoring needs prompt log-probabilities (/v1/completions with echo and logprobs: vLLM, llama-cpp-python with
  logits_all); next-token choices need top_logprobs. A server without them is a clear error.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import math
import os
import random
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

from harness.synth.base import (
    PAGE_SLOT,
    BackendError,
    Choice,
    Generation,
    GenParams,
    PageText,
    Prompt,
    Score,
    chat_messages,
    logsumexp,
    render_pages_as_text,
)

log = logging.getLogger(__name__)


class TransientError(BackendError):
    """A failure worth retrying (5xx, 429, timeout, refused connection)."""


class OpenAIBackend:
    kind = "http"

    def __init__(self, url: str, model: str, *, instruct: bool = True, vision: bool = False,
                 api_key_env: str = "OPENAI_API_KEY", concurrency: int = 8, timeout_s: float = 120.0,
                 retries: int = 4, backoff_s: float = 0.5, max_page_tokens: int = 512,
                 chars_per_token: float = 4.0) -> None:
        self.url, self.model = url.rstrip("/"), model
        self.instruct, self.sees_images = instruct, vision
        self.parallelism = max(1, concurrency)
        self.timeout_s, self.retries, self.backoff_s = timeout_s, retries, backoff_s
        self._api_key = os.environ.get(api_key_env)
        self.pages = PageText(max_page_tokens)
        # No tokenizer on the client: page text is cut by a character budget (recorded as page_truncated).
        self._chars_per_token = chars_per_token
        self.requests = 0
        self.retried = 0

    def describe(self) -> dict[str, Any]:
        # Identity of the outputs (hashed into record keys): the served model, not the server's address, so a
        # run resumes against another replica or port.
        return {"kind": self.kind, "model": self.model, "instruct": self.instruct,
                "sees_images": self.sees_images, "max_page_tokens": self.pages.max_page_tokens}

    def prepare(self, pages: Sequence[Any]) -> None:
        if not self.sees_images:
            self.pages.prepare(pages)

    # --- transport ----------------------------------------------------------------------------------------------
    def post(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        """POST JSON with retries on transient failures; the final error names the URL and the last cause."""
        last: BaseException | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                self.retried += 1
                delay = self.backoff_s * 2 ** (attempt - 1) * (1 + 0.25 * random.random())  # jitter: no lockstep
                log.warning("%s%s: %s; retry %d/%d in %.1fs", self.url, path, last, attempt, self.retries, delay)
                time.sleep(delay)
            try:
                return self._post_once(path, payload)
            except TransientError as exc:
                last = exc
        raise BackendError(f"{self.url}{path}: failed after {self.retries + 1} attempts: {last}") from last

    def _post_once(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        headers = {"Content-Type": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        req = urllib.request.Request(self.url + path, data=json.dumps(payload).encode(), headers=headers)
        self.requests += 1
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            body = exc.read().decode(errors="replace")[:500]
            if exc.code >= 500 or exc.code == 429:
                raise TransientError(f"HTTP {exc.code}: {body}") from exc
            raise BackendError(f"{self.url}{path}: HTTP {exc.code}: {body}") from exc
        except TimeoutError as exc:
            raise TransientError(f"no answer within {self.timeout_s}s") from exc
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, (TimeoutError, socket.timeout)):
                raise TransientError(f"no answer within {self.timeout_s}s") from exc
            raise TransientError(f"connection failed: {exc.reason}") from exc
        except (ConnectionError, json.JSONDecodeError) as exc:
            raise TransientError(f"{type(exc).__name__}: {exc}") from exc

    # --- prompts ------------------------------------------------------------------------------------------------
    def _truncate(self, text: str, max_tokens: int) -> tuple[str, bool]:
        budget = int(max_tokens * self._chars_per_token)
        return (text, False) if len(text) <= budget else (text[:budget], True)

    def _text(self, prompt: Prompt) -> tuple[str, dict[str, Any]]:
        body, meta = render_pages_as_text(prompt, self.pages, self._truncate)
        if prompt.system:
            body = f"{prompt.system}\n\n{body}"
        return body, meta

    def _messages(self, prompt: Prompt) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        if not (self.sees_images and any(p.image is not None for p in prompt.pages)):
            body, meta = render_pages_as_text(prompt, self.pages, self._truncate)
            return chat_messages(prompt, body), meta
        parts: list[dict[str, Any]] = []
        pieces = PAGE_SLOT.split(prompt.text)  # text, page index, text, page index, ...
        named = {int(i) for i in pieces[1::2]}
        for i, page in enumerate(prompt.pages):
            if i not in named:
                parts.append(_image_part(page))
        for j, piece in enumerate(pieces):
            if j % 2:
                parts.append(_image_part(prompt.pages[int(piece)]))
            elif piece.strip():
                parts.append({"type": "text", "text": piece})
        return chat_messages(prompt, parts), {"page_modes": ["image"] * len(prompt.pages), "page_truncated": False}

    # --- the Backend interface ----------------------------------------------------------------------------------
    def generate(self, prompts: Sequence[Prompt], params: GenParams,
                 seeds: Sequence[int] | None = None) -> list[Generation]:
        out = []
        for i, prompt in enumerate(prompts):
            sampling: dict[str, Any] = {"model": self.model, "max_tokens": params.max_new_tokens,
                                        "temperature": params.temperature, "top_p": params.top_p}
            if params.stop:
                sampling["stop"] = list(params.stop)
            if seeds is not None:
                sampling["seed"] = int(seeds[i])
            if self.instruct:
                messages, meta = self._messages(prompt)
                if prompt.prefill:
                    messages[-1]["content"] = _append_text(messages[-1]["content"], "\n" + prompt.prefill)
                resp = self.post("/chat/completions", {**sampling, "messages": messages})
                choice = resp["choices"][0]
                text = (choice.get("message") or {}).get("content") or ""
            else:
                text_prompt, meta = self._text(prompt)
                resp = self.post("/completions", {**sampling, "prompt": text_prompt + prompt.prefill})
                choice = resp["choices"][0]
                text = choice.get("text") or ""
            usage = resp.get("usage") or {}
            out.append(Generation(text, usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0),
                                  choice.get("finish_reason") or "stop", meta))
        return out

    def score(self, prompts: Sequence[Prompt], continuations: Sequence[str]) -> list[Score]:
        out = []
        for prompt, cont in zip(prompts, continuations, strict=True):
            text, meta = self._text(prompt)
            text += prompt.prefill
            resp = self.post("/completions", {"model": self.model, "prompt": text + cont, "max_tokens": 1,
                                              "echo": True, "logprobs": 1, "temperature": 0.0})
            lp = resp["choices"][0].get("logprobs") or {}
            offsets, values = lp.get("text_offset"), lp.get("token_logprobs")
            if not offsets or not values:
                raise BackendError(f"{self.url}: the server returned no prompt log-probabilities (needs /completions "
                                   "with echo and logprobs; llama-cpp-python: --logits_all true)")
            # Continuation tokens: those starting at or after the prompt's end, minus the one generated token.
            picked = [v for off, v in zip(offsets[:-1], values[:-1], strict=True) if off >= len(text) and v is not None]
            out.append(Score(float(sum(picked)), len(picked), meta))
        return out

    def next_token_logprobs(self, prompt: Prompt, candidates: Sequence[str]) -> Choice:
        wanted = {c: c.strip().lower() for c in candidates}
        if self.instruct:
            messages, meta = self._messages(prompt)
            # No portable prefill in chat APIs: let the model answer a few tokens and read the first position
            # whose alternatives include a candidate ("Passage #1": the position after "#").
            resp = self.post("/chat/completions", {"model": self.model, "messages": messages, "max_tokens": 8,
                                                   "temperature": 0.0, "logprobs": True, "top_logprobs": 20})
            content = ((resp["choices"][0].get("logprobs") or {}).get("content")) or []
            positions = [{t["token"]: t["logprob"] for t in pos.get("top_logprobs") or []} for pos in content]
        else:
            text, meta = self._text(prompt)
            resp = self.post("/completions", {"model": self.model, "prompt": text + prompt.prefill, "max_tokens": 1,
                                              "temperature": 0.0, "logprobs": 20})
            lp = resp["choices"][0].get("logprobs") or {}
            positions = [dict(p) for p in lp.get("top_logprobs") or [] if p]
        if not positions:
            raise BackendError(f"{self.url}: the server returned no top log-probabilities (logprobs unsupported?)")
        for top in positions:
            found = {c: logsumexp([v for t, v in top.items() if t.strip().lower() == w]) for c, w in wanted.items()}
            if any(v != -math.inf for v in found.values()):
                # A candidate missing from the server's top-k is at most as likely as the least likely listed:
                # use that bound (recorded) rather than -inf, which would make the other answer certain.
                bounded = [c for c, v in found.items() if v == -math.inf]
                found.update({c: min(top.values()) for c in bounded})
                return Choice(found, {**meta, "top": sorted(top, key=top.get, reverse=True)[:5], "bounded": bounded})
        return Choice({c: -math.inf for c in candidates}, {**meta, "top": list(positions[0])[:5]})


def _image_part(page: Any) -> dict[str, Any]:
    buf = io.BytesIO()
    page.image.convert("RGB").save(buf, format="PNG")
    return {"type": "image_url",
            "image_url": {"url": "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()}}


def _append_text(content: Any, text: str) -> Any:
    if isinstance(content, str):
        return content + text
    return [*content, {"type": "text", "text": text}]
