"""Answer-level evaluation for any variant: retrieve top-k, answer with a synth backend, score EM / F1 / ANLS.

metrics.py (the scores), answerer.py (SV-RAG's prompt over a backend, answers cached in a store), evaluate.py (rows
per k, oracle and no-retrieval rows, records next to the retrieval results), cli.py (``harness answers``).
"""
