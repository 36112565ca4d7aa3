"""In-process llama.cpp (llama-cpp-python) over a GGUF file: the offline default backend.

Why llama.cpp rather than transformers for the packaged GGUF: transformers dequantises it to fp32 and generates at
about 5-11 tokens/s here; llama.cpp runs the Q4_K_M weights directly, several times faster (figures in
benchmarks/synth_throughput.py). Text only: pages reach the model as their text or OCR text.

Two things the high-level ``Llama`` API does not do, done here with its own context and batch objects:
- prefix reuse for scoring: the KV cache keeps the last prompt, so a page scored against several queries is read
  once (templates put the page before the query for that reason);
- logits only where needed: a page needs no logits, a continuation needs one row per token. (``logits_all=True``
  would compute all rows, and Gemma 3's 262k-token vocabulary makes each row costly.)
"""

from __future__ import annotations

import logging
import math
import os
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from harness.synth.base import (
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
    spelling_variants,
)

log = logging.getLogger(__name__)

# llama.cpp's threads meet at an OpenMP barrier after every operation, and libgomp spins while it waits by default.
# On cores that anything else uses, spinning threads starve the one they wait for: measured on 2 busy cores, 2
# threads decoded at 0.4 tokens/s spinning, 8.7 tokens/s passive, 4.2 with 1 thread. On the same 2 cores otherwise
# idle (benchmarks/synth_throughput.py --pages 6, other jobs paused) spinning is faster: 2.64 vs 1.71 queries/s,
# 3.51 vs 2.80 query-likelihood judgements/s. Passive is the default because it loses ~1.5x at best and spinning
# loses ~20x at worst; on a dedicated machine set OMP_WAIT_POLICY=ACTIVE. libgomp reads this once, when
# llama.cpp's library loads (below, on first use): a value the user set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


class LlamaCppBackend:
    kind = "llama-cpp"
    sees_images = False
    parallelism = 1  # one context: calls run one after another (prefix reuse depends on that order)

    def __init__(self, model_path: str, *, n_ctx: int = 4096, threads: int | None = None,
                 instruct: bool | None = None, max_page_tokens: int = 512) -> None:
        try:
            from llama_cpp import Llama
        except ImportError as exc:
            raise BackendError("the llama-cpp backend needs llama-cpp-python (scripts/setup.sh builds it)") from exc
        if not Path(model_path).is_file():
            raise BackendError(f"{model_path}: GGUF file not found")
        # One thread per usable core: 1.7x faster than one thread on 2 idle cores.
        if not threads:
            threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        self.llm = Llama(model_path=str(model_path), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
                         logits_all=False, verbose=False)
        # Free the model while the interpreter is intact (llama-cpp's own __del__ fails at interpreter exit).
        weakref.finalize(self, self.llm.close)
        self.model = str(model_path)
        self.n_ctx = n_ctx
        self.template = self.llm.metadata.get("tokenizer.chat_template")
        self.instruct = bool(self.template) if instruct is None else instruct
        if self.instruct and not self.template:
            raise BackendError(f"{model_path}: instruct=True but the GGUF file has no chat template")
        self.pages = PageText(max_page_tokens)
        self._vocab = self.llm.n_vocab()

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "model": Path(self.model).name, "instruct": self.instruct,
                "max_page_tokens": self.pages.max_page_tokens}

    def prepare(self, pages: Sequence[Any]) -> None:
        self.pages.prepare(pages)

    # --- text and tokens ----------------------------------------------------------------------------------------
    def tokenize(self, text: str, bos: bool = False) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=bos, special=True)

    def _truncate(self, text: str, max_tokens: int) -> tuple[str, bool]:
        tokens = self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)
        if len(tokens) <= max_tokens:
            return text, False
        return self.llm.detokenize(tokens[:max_tokens]).decode("utf-8", errors="ignore"), True

    def render(self, prompt: Prompt) -> tuple[list[int], dict[str, Any]]:
        body, meta = render_pages_as_text(prompt, self.pages, self._truncate)
        if self.instruct:
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter

            bos = self.llm.detokenize([self.llm.token_bos()], special=True).decode()
            eos = self.llm.detokenize([self.llm.token_eos()], special=True).decode()
            text = Jinja2ChatFormatter(self.template, eos, bos)(messages=chat_messages(prompt, body)).prompt
            tokens = self.tokenize(text + prompt.prefill, bos=not text.startswith(bos))
        else:
            system = f"{prompt.system}\n\n" if prompt.system else ""
            tokens = self.tokenize(system + body + prompt.prefill, bos=True)
        if len(tokens) >= self.n_ctx:
            raise BackendError(f"prompt {prompt.template_id!r} has {len(tokens)} tokens, over n_ctx={self.n_ctx}: "
                               "lower max_page_tokens or raise n_ctx")
        return tokens, {**meta, "n_prompt_tokens": len(tokens)}

    # --- KV cache with prefix reuse ----------------------------------------------------------------------------
    def _feed(self, tokens: list[int], logits: str) -> np.ndarray | None:
        """Decode ``tokens`` after the current cache. logits: "none", "last" (1 row) or "all" (1 row per token)."""
        llm = self.llm
        llm._ctx.kv_cache_seq_rm(-1, llm.n_tokens, -1)
        rows = []
        for i in range(0, len(tokens), llm.n_batch):
            batch = tokens[i:i + llm.n_batch]
            n_past = llm.n_tokens
            llm._batch.set_batch(batch=batch, n_past=n_past, logits_all=logits == "all")
            llm._ctx.decode(llm._batch)
            llm.input_ids[n_past:n_past + len(batch)] = batch
            llm.n_tokens += len(batch)
            if logits == "all":
                rows.append(np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(len(batch), self._vocab)).copy())
        if logits == "last" and tokens:
            return np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(1, self._vocab)).copy()
        return np.concatenate(rows) if rows else None

    def _rewind_to_common_prefix(self, tokens: list[int], keep_at_most: int) -> int:
        llm = self.llm
        common = 0
        for a, b in zip(llm.input_ids[:llm.n_tokens], tokens[:keep_at_most], strict=False):
            if a != b:
                break
            common += 1
        if common == 0 or not llm._ctx.kv_cache_seq_rm(-1, common, -1):
            llm.reset()
            common = 0
        llm.n_tokens = common
        return common

    # --- the Backend interface ----------------------------------------------------------------------------------
    def generate(self, prompts: Sequence[Prompt], params: GenParams,
                 seeds: Sequence[int] | None = None) -> list[Generation]:
        out = []
        for i, prompt in enumerate(prompts):
            tokens, meta = self.render(prompt)
            # Pure temperature + top-p sampling, as recorded: llama.cpp's top_k and min_p defaults are switched off.
            resp = self.llm.create_completion(
                tokens, max_tokens=min(params.max_new_tokens, self.n_ctx - len(tokens)),
                temperature=params.temperature, top_p=params.top_p, top_k=0, min_p=0.0, repeat_penalty=1.0,
                stop=list(params.stop) or None, seed=int(seeds[i]) if seeds is not None else 0)
            choice, usage = resp["choices"][0], resp["usage"]
            out.append(Generation(choice["text"], usage["prompt_tokens"], usage["completion_tokens"],
                                  choice.get("finish_reason") or "stop", meta))
        return out

    def score(self, prompts: Sequence[Prompt], continuations: Sequence[str]) -> list[Score]:
        out = []
        for prompt, cont in zip(prompts, continuations, strict=True):
            ptoks, meta = self.render(prompt)
            ctoks = self.tokenize(cont)
            if not ctoks:
                raise BackendError("cannot score an empty continuation")
            if len(ptoks) + len(ctoks) > self.n_ctx:
                raise BackendError(f"prompt + continuation exceed n_ctx={self.n_ctx}")
            # Reuse the cached prefix; the prompt's last token is re-fed because its logits predict the first
            # continuation token. Rows are needed for that token and all continuation tokens but the last.
            start = self._rewind_to_common_prefix(ptoks, len(ptoks) - 1)
            self._feed(ptoks[start:-1], "none")
            logits = self._feed([ptoks[-1], *ctoks[:-1]], "all")
            assert logits is not None
            logp = _log_softmax(logits)
            lps = logp[np.arange(len(ctoks)), ctoks]
            out.append(Score(float(lps.sum()), len(ctoks), meta))
        return out

    def next_token_logprobs(self, prompt: Prompt, candidates: Sequence[str]) -> Choice:
        tokens, meta = self.render(prompt)
        start = self._rewind_to_common_prefix(tokens, len(tokens) - 1)
        self._feed(tokens[start:-1], "none")
        logits = self._feed(tokens[-1:], "last")
        assert logits is not None
        logp = _log_softmax(logits)[0]
        found = {}
        for cand in candidates:
            # The first token of each spelling ("yes", " yes"): distinct tokens only, then log-sum.
            firsts = {self.tokenize(v)[0] for v in spelling_variants(cand) if self.tokenize(v)}
            found[cand] = logsumexp([float(logp[t]) for t in firsts]) if firsts else -math.inf
        top = np.argsort(-logp)[:5]
        meta["top"] = [self.llm.detokenize([int(t)]).decode("utf-8", errors="replace") for t in top]
        return Choice(found, meta)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    top = x.max(axis=-1, keepdims=True)
    return x - top - np.log(np.exp(x - top).sum(axis=-1, keepdims=True))
