"""Leaderboard from ``results/``: rows backbone x variant, a column per task (or per ViDoRe v2 language), the
average, the change against the same backbone's base with paired significance markers, and cost columns.

Inputs (written by ``harness run`` / ``harness eval``)
  results/mteb/results/<model>/<revision>/<Task>.json   MTEB result: the scores shown (latest per row and task)
  results/runs/<model>/<revision>/<Task>.json           run record: backbone, variant, per-query scores, costs
A partial, corrupt or foreign JSON file is reported and skipped.

Significance: for each task, the per-query main metric (pytrec_eval, from the run record) of a row is compared
with the same backbone's base (and with ``--reference``) on the queries both ran: a two-sided paired permutation
test (sign flips of the per-query differences; exact below 2^16 flips, else ``--permutations`` random flips from
``--seed``) and a bootstrap 95% interval of the mean difference. p-values are Holm-adjusted across the columns of
one comparison. Markers: * p < 0.05, ** p < 0.01 (adjusted).

Training record contract (a recipe's ``<checkpoint>/training.json``, copied into the run record as
``training``; null for variants that do not train):
  wall_s      training wall time in seconds, synthetic-data generation included
  llm_calls   LLM requests made to generate synthetic training data (0 when none)
  llm_tokens  tokens of those requests (prompt + completion), optional
  examples    training examples used
  loss_log    path of a JSONL loss file, one line per logged step: {"step": int, "epoch": float, "loss": float};
              absolute, or relative to ``checkpoint`` when the record has that key, else to the folder holding
              results/
Costs per row: training time and LLM calls summed over its distinct trainings; encode ms per page and per query
from items actually encoded (a fully cached run takes the rate of the most recent run of the same model that
encoded); index bytes per page; query latency = encode + search ms per query (see harness/report/costs.py).

Outputs (in --out, default the results folder): leaderboard.md, .csv, .tex, .html (self-contained, sortable,
plots embedded), leaderboard_tests.csv (every paired test) and plots/*.png; a terminal table. Answer records
(``harness answers``, a run's ``answers:``) add "Answers" tables after the retrieval tables in every output (terminal,
.md, .tex, .html: one per answerer and task, rows per k, with time and memory per query) and leaderboard_answers.md
and .csv (harness/report/answers.py); they follow --backbone and the tasks left by the other filters.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

BENCHMARKS = ("v1", "v2", "v3", "v3.1", "local", "mteb")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The leaderboard's options (also those of ``harness leaderboard``)."""
    parser.add_argument("--results", default="results", help="results folder (default: results)")
    parser.add_argument("--out", help="folder for the files (default: the results folder)")
    parser.add_argument("--benchmark", action="append", choices=BENCHMARKS, default=[],
                        help="keep tasks of this benchmark: ViDoRe v1, v2, v3, v3.1, local folders/generated, "
                             "other mteb tasks; repeatable")
    parser.add_argument("--backbone", action="append", default=[], metavar="GLOB",
                        help="keep backbones whose tag matches (fnmatch pattern); repeatable")
    parser.add_argument("--in-domain", choices=("include", "exclude", "only"), default="include",
                        help="the four ViDoRe v1 tasks that overlap colpali's training data (marked †)")
    parser.add_argument("--view", choices=("tasks", "languages"), default="tasks",
                        help="columns: tasks, or ViDoRe v2/v3 query languages (averaged over each benchmark's tasks)")
    parser.add_argument("--published", action="append", default=[], metavar="MODEL",
                        help="add the published mteb results of this model (e.g. vidore/colqwen2.5-v0.2) on the "
                             "same tasks, as a row left out of the tests; repeatable (harness/report/published.py)")
    parser.add_argument("--published-results", metavar="DIR",
                        help="a clone of github.com/embeddings-benchmark/results (default: mteb's ~/.cache/mteb)")
    parser.add_argument("--fetch-published", action="store_true",
                        help="clone or update that repository with mteb first (needs the network and git)")
    parser.add_argument("--reference", metavar="NAME",
                        help="also test every row against this: a variant (of each row's backbone) or a model "
                             "name variant/backbone-tag")
    parser.add_argument("--permutations", type=int, default=10_000, help="random sign flips per test")
    parser.add_argument("--seed", type=int, default=0, help="seed of the permutations and bootstrap")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots (faster)")
    parser.add_argument("--screenshot", metavar="PNG", help="also save a headless-Chromium screenshot of the page")


def collect(results_dir: str | Path) -> list[Any]:
    from harness.report.results import collect as collect_entries

    return collect_entries(results_dir)


def build_table(entries: list[Any], **options: Any) -> Any:
    """The table as a DataFrame: scores, average, delta_<column> against base, costs."""
    from harness.report.board import build

    return build(entries, **options).table


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from harness.report import board as board_mod
    from harness.report import html, plots, render

    results_dir = Path(args.results)
    out_dir = Path(args.out) if args.out else results_dir
    filters = board_mod.Filters(args.benchmark, args.backbone, args.in_domain)
    from harness.report.published import PublishedError, add_published

    try:  # published rows (mteb's results repository) for the chosen models, on the tasks these results ran
        entries = add_published(collect(results_dir), args.published, args.published_results, args.fetch_published)
    except PublishedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    board = board_mod.build(entries, filters=filters, view=args.view, reference=args.reference,
                            n_permutations=args.permutations, seed=args.seed)
    if board.table.empty:
        print(f"no results under {results_dir / 'mteb' / 'results'} (after filters)", file=sys.stderr)
        return 1
    from harness.report import answers as answer_rows  # answer-level rows (harness answers / run), if any

    answers = answer_rows.load(results_dir, tasks={e.task for e in board.entries}, backbones=args.backbone,
                               n_permutations=args.permutations, seed=args.seed)
    render.print_tables(board, Console(), answers)
    written = render.write_text_outputs(board, out_dir, answers)
    written += answer_rows.write_files(answers, out_dir)
    figures = {} if args.no_plots else plots.write_plots(board, results_dir, out_dir / "plots")
    chosen = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in (
        ("benchmark", ",".join(args.benchmark)), ("backbone", ",".join(args.backbone)),
        ("in_domain", "" if args.in_domain == "include" else args.in_domain), ("reference", args.reference)) if v)
    page = html.write_html(board, figures, out_dir / "leaderboard.html", source=str(results_dir), filters=chosen,
                           answers=answers)
    written += [page, *figures.values()]
    if args.screenshot:
        from harness.report.browser import page_url, screenshot

        written.append(screenshot(page_url(page), Path(args.screenshot)))
    for path in written:
        print(f"wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python leaderboard.py`` (and ``harness run``'s closing leaderboard)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return run(args)

