"""Build the comparison table from ``results/``: rows backbone x variant, columns each task's main score,
the average, and the change against the same backbone's base variant.

Reads MTEB result files directly (mteb's own leaderboard helpers return nothing for unregistered models and
tasks) and the harness's run records for backbone and variant. Prints a rich table and writes
``results/leaderboard.md`` and ``results/leaderboard.csv``. Unreadable files are reported and skipped.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.table import Table

log = logging.getLogger("leaderboard")
BASE = "base"


@dataclass
class Entry:
    backbone: str
    variant: str
    model: str
    revision: str
    task: str
    main_score_name: str
    score: float
    date: str


def _read_entry(result_file: Path, results_dir: Path) -> Entry | None:
    from mteb.results import TaskResult

    try:
        result = TaskResult.from_disk(result_file)
        score = float(result.get_score())
    except Exception as exc:  # partial, corrupt or foreign JSON: report, skip, carry on
        log.warning("skipping %s: %s", result_file, str(exc).splitlines()[0][:200])
        return None
    revision_dir = result_file.parent
    model_dir = revision_dir.parent.name
    record_file = results_dir / "runs" / model_dir / revision_dir.name / result_file.name
    record = {}
    if record_file.is_file():
        try:
            record = json.loads(record_file.read_text())
        except json.JSONDecodeError as exc:
            log.warning("skipping run record %s: %s", record_file, exc)
    model = record.get("model") or model_dir.replace("__", "/")
    variant = record.get("variant") or (model.split("/", 1)[0] if "/" in model else "-")
    backbone = (record.get("backbone") or {}).get("tag") or (model.split("/", 1)[-1])
    date = record.get("date") or str(result.date or "")
    name = result.task_name
    return Entry(backbone, variant, model, revision_dir.name, name,
                 record.get("main_score_name") or "main_score", score, date)


def collect(results_dir: str | Path) -> list[Entry]:
    results_dir = Path(results_dir)
    root = results_dir / "mteb" / "results"
    entries = []
    for result_file in sorted(root.glob("*/*/*.json")):
        if result_file.name == "model_meta.json":
            continue
        entry = _read_entry(result_file, results_dir)
        if entry is not None:
            entries.append(entry)
    return entries


def build_table(entries: list[Entry]) -> pd.DataFrame:
    """One row per (backbone, variant): the latest result per task, the average, and deltas to base."""
    if not entries:
        return pd.DataFrame()
    df = pd.DataFrame([e.__dict__ for e in entries]).sort_values("date")
    latest = df.groupby(["backbone", "variant", "task"], as_index=False).last()
    table = latest.pivot(index=["backbone", "variant"], columns="task", values="score")
    tasks = sorted(table.columns)
    table = table[tasks]
    table["average"] = table[tasks].mean(axis=1, skipna=False)  # NaN unless the row has every task
    table = table.reset_index()
    base = table[table.variant == BASE].set_index("backbone")
    for col in [*tasks, "average"]:
        table[f"delta_{col}"] = table[col] - table.backbone.map(base[col])  # NaN where no base row
    return table


def _fmt(value: float, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{100 * value:+.2f}" if signed else f"{100 * value:.2f}"


def task_columns(table: pd.DataFrame) -> list[str]:
    return [c for c in table.columns if c not in {"backbone", "variant", "average"} and not c.startswith("delta_")]


def render_rows(table: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    tasks = task_columns(table)
    header = ["backbone", "variant", *tasks, "average", "Δ avg vs base"]
    rows = []
    for _, r in table.iterrows():
        cells = [r["backbone"], r["variant"]]
        for t in tasks:
            delta = "" if r["variant"] == BASE or math.isnan(r[f"delta_{t}"]) else f" ({_fmt(r[f'delta_{t}'], True)})"
            cells.append(_fmt(r[t]) + delta)
        cells += [_fmt(r["average"]), "" if r["variant"] == BASE else _fmt(r["delta_average"], True)]
        rows.append(cells)
    return header, rows


def to_markdown(table: pd.DataFrame) -> str:
    header, rows = render_rows(table)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    note = ("\nScores are each task's main score x 100 (nDCG@5 for page tasks, nDCG@10 for text tasks); "
            "(+x) is the change against the same backbone's base.\n")
    return "\n".join(lines) + "\n" + note


def print_table(table: pd.DataFrame, console: Console | None = None) -> None:
    header, rows = render_rows(table)
    rt = Table(title="Leaderboard (main score x 100; change vs the same backbone's base)")
    for h in header:
        rt.add_column(h, justify="left" if h in {"backbone", "variant"} else "right", overflow="fold")
    for r in rows:
        rt.add_row(*r)
    (console or Console()).print(rt)


def write_outputs(table: pd.DataFrame, results_dir: Path) -> list[Path]:
    from harness.evaluate.records import atomic_write_text

    md, csv = results_dir / "leaderboard.md", results_dir / "leaderboard.csv"
    atomic_write_text(md, "# Leaderboard\n\n" + to_markdown(table))
    atomic_write_text(csv, table.to_csv(index=False))
    return [md, csv]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", default="results", help="results folder (default: results)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    results_dir = Path(args.results)
    table = build_table(collect(results_dir))
    if table.empty:
        print(f"no results under {results_dir / 'mteb' / 'results'}", file=sys.stderr)
        return 1
    print_table(table)
    for path in write_outputs(table, results_dir):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
