"""The synthetic-data engine: generators, judges and resumable stores that every recipe uses.

- backends.py: the ``Backend`` interface (generate / score / next-token choices) and ``make_backend``;
  llamacpp.py (the offline default over the packaged Gemma 3 270M GGUF), hf.py (transformers), http_api.py
  (OpenAI-compatible servers).
- prompts.py: every prompt, with ids; parsing.py: raw output -> value or None (counted).
- operations.py: pseudo-queries, graded / yes-no / query-likelihood / pairwise judges, Syntriever synthesis and
  self-verification; store.py: the append-only JSONL store that makes every operation resumable.
- cli.py: ``harness synth queries|judge|syntriever``.
"""
