"""The leaderboard's answer group: one line per (answerer, backbone, variant, task, k) from the answer records that
``harness answers`` writes (results/runs/<model>/<revision>/<Task>.answers.<answerer>.k<k>.json): EM, F1, ANLS,
recall@k of the pages given, seconds and prompt tokens per query, peak memory; and, like the retrieval columns, a
paired test of each row's per-query ANLS against the same backbone's base at the same task, k and answerer
(Holm-adjusted across the (task, k) cells of one comparison). The oracle and no-retrieval lines are shown, not tested.
"""

from __future__ import annotations

import fnmatch
import json
import logging
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from harness.evaluate.significance import holm, paired_test
from harness.io import atomic_write_text

log = logging.getLogger("leaderboard")
COLUMNS = ["answerer", "answerer_model", "task", "k", "backbone", "variant", "queries", "em", "f1", "anls", "recall",
           "delta_anls", "p_holm", "marker", "s_per_query", "prompt_tokens", "peak_rss_mb", "peak_cuda_mb"]


def collect(results_dir: str | Path) -> list[dict[str, Any]]:
    """Every answer record under results/runs, the latest per (answerer, backbone, variant, task, k)."""
    latest: dict[tuple[Any, ...], dict[str, Any]] = {}
    for path in sorted(Path(results_dir).glob("runs/*/*/*.answers.*.json")):
        try:
            rec = json.loads(path.read_text())
            key = (rec["answerer_tag"], rec["backbone"], rec["variant"], rec["task"], str(rec["k"]))
            rec["per_query"], rec["scores"], rec["cost"]  # noqa: B018  (a record without them is not ours)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("%s: not an answer record, skipped (%s)", path, exc)
            continue
        if key not in latest or rec.get("date", "") >= latest[key].get("date", ""):
            latest[key] = rec
    return list(latest.values())


def _k_order(k: Any) -> tuple[int, int]:
    return (1, 0) if k == "gold" else (0, int(k))


def table(records: list[dict[str, Any]], *, n_permutations: int = 10_000, seed: int = 0) -> pd.DataFrame:
    by_key = {(r["answerer_tag"], r["backbone"], r["variant"], r["task"], str(r["k"])): r for r in records}
    lines, tested = [], {}
    for (tag, backbone, variant, task, k), rec in by_key.items():
        s, cost = rec["scores"], rec["cost"]
        who = rec.get("answerer") or {}
        lines.append({"answerer": tag, "answerer_model": f"{who.get('kind', '?')} {who.get('model', '?')}",
                      "task": task, "k": rec["k"], "backbone": backbone, "variant": variant,
                      "queries": rec["queries"], "em": s["em"], "f1": s["f1"], "anls": s["anls"],
                      "recall": s.get("recall"), "delta_anls": None, "p_holm": None, "marker": "",
                      "s_per_query": cost.get("seconds_per_query"),
                      "prompt_tokens": cost.get("prompt_tokens_per_query"), "peak_rss_mb": cost.get("peak_rss_mb"),
                      "peak_cuda_mb": cost.get("peak_cuda_mb")})
        base = by_key.get((tag, backbone, "base", task, k))
        if base is not None and variant not in ("base", "oracle", "no-retrieval"):
            result = paired_test({task: {q: v["anls"] for q, v in base["per_query"].items()}},
                                 {task: {q: v["anls"] for q, v in rec["per_query"].items()}},
                                 n_permutations=n_permutations, seed=seed)
            if result is not None:
                tested.setdefault((tag, backbone, variant), []).append((len(lines) - 1, result))
    for family in tested.values():  # one comparison: a row against its base over every (task, k)
        for (i, result), p in zip(family, holm([r.p for _, r in family]), strict=True):
            lines[i].update(delta_anls=result.delta, p_holm=p,
                            marker="**" if p < 0.01 else "*" if p < 0.05 else "")
    frame = pd.DataFrame(lines, columns=COLUMNS)
    if frame.empty:
        return frame
    order = {"no-retrieval": 0, "oracle": 2}
    frame["_k"] = frame.k.map(_k_order)
    frame["_v"] = frame.variant.map(lambda v: order.get(v, 1))
    return frame.sort_values(["answerer", "task", "_k", "_v", "backbone", "variant"]).drop(columns=["_k", "_v"])


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and v != v):
        return ""
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def to_markdown(frame: pd.DataFrame) -> str:
    head = ["answerer", "task", "k", "backbone", "variant", "n", "EM", "F1", "ANLS", "recall@k", "Δ ANLS vs base",
            "s/query", "prompt tokens", "peak RSS MB"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in frame.itertuples():
        delta = "" if r.delta_anls is None or r.delta_anls != r.delta_anls else f"{r.delta_anls:+.3f}{r.marker}"
        rows.append("| " + " | ".join([r.answerer, r.task, str(r.k), r.backbone, r.variant, str(r.queries),
                                       _fmt(r.em), _fmt(r.f1), _fmt(r.anls), _fmt(r.recall), delta,
                                       _fmt(r.s_per_query, 2), _fmt(r.prompt_tokens, 0),
                                       _fmt(r.peak_rss_mb, 0)]) + " |")
    return "\n".join(rows) + "\n"


def load(results_dir: str | Path, *, tasks: Collection[str] | None = None, backbones: Sequence[str] = (),
         **options: Any) -> pd.DataFrame | None:
    """The answer table of a results folder (None when it has no answer records). ``tasks``: keep only these (the
    retrieval board's tasks after its filters); ``backbones``: glob patterns on the backbone tag (the oracle and
    no-retrieval lines stay). The tests run before these filters, as the retrieval board's do."""
    records = collect(results_dir)
    if not records:
        return None
    frame = table(records, **options)
    if tasks is not None:
        frame = frame[frame.task.isin(list(tasks))]
    if backbones:
        frame = frame[[b == "-" or any(fnmatch.fnmatchcase(b, p) for p in backbones) for b in frame.backbone]]
    return None if frame.empty else frame


def write_files(frame: pd.DataFrame | None, out_dir: str | Path) -> list[Path]:
    """leaderboard_answers.md and .csv for an answer table; nothing for None."""
    if frame is None:
        return []
    out = Path(out_dir)
    md = atomic_write_text(out / "leaderboard_answers.md", "# Answer-level evaluation\n\n" + to_markdown(frame))
    csv = atomic_write_text(out / "leaderboard_answers.csv", frame.to_csv(index=False))
    return [md, csv]


def write(results_dir: str | Path, out_dir: str | Path, **options: Any) -> list[Path]:
    """leaderboard_answers.md and .csv when the results hold answer records; nothing otherwise."""
    return write_files(load(results_dir, **options), out_dir)
