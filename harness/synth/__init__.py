"""The synthetic-data engine: generators, judges and resumable stores that every recipe uses.

- base.py: the shared types (``Prompt``, ``GenParams``, outputs, the ``Backend`` protocol); backends.py:
  ``BackendSpec`` and ``make_backend`` over llamacpp.py (the offline default over the packaged Gemma 3 270M GGUF),
  hf.py (transformers) and http_api.py (OpenAI-compatible servers).
- prompts.py: every prompt, with ids; parsing.py: raw output -> value or None (counted).
- jobs.py: how an operation runs its calls (the store first, then the model, resumable); operations.py:
  pseudo-queries, graded / yes-no / query-likelihood / pairwise judges, Syntriever synthesis and self-verification;
  store.py: the append-only JSONL store that makes every operation resumable.
- cli.py: ``harness synth queries|judge|syntriever``.
"""
