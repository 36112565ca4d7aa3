"""Per-query metrics with pytrec_eval, the same library and measures mteb averages."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pytrec_eval

K_VALUES = (1, 3, 5, 10, 20, 100)


def per_query_scores(qrels: Mapping[str, Mapping[str, int]], run: Mapping[str, Mapping[str, float]],
                     k_values: Sequence[int] = K_VALUES) -> dict[str, dict[str, float]]:
    """{metric: {query id: value}} for ndcg_at_k and recall_at_k, named as in mteb's result files."""
    ks = ",".join(map(str, k_values))
    evaluator = pytrec_eval.RelevanceEvaluator(
        {q: dict(d) for q, d in qrels.items()}, {f"ndcg_cut.{ks}", f"recall.{ks}"})
    scores = evaluator.evaluate({q: dict(d) for q, d in run.items()})
    out: dict[str, dict[str, float]] = {}
    for qid, values in scores.items():
        for k in k_values:
            out.setdefault(f"ndcg_at_{k}", {})[qid] = values[f"ndcg_cut_{k}"]
            out.setdefault(f"recall_at_{k}", {})[qid] = values[f"recall_{k}"]
    return out


def top_k(run: Mapping[str, Mapping[str, float]], k: int) -> dict[str, dict[str, float]]:
    return {q: dict(sorted(d.items(), key=lambda x: -x[1])[:k]) for q, d in run.items()}
