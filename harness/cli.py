"""The ``harness`` command: eval, run, tasks, models, leaderboard, plot, answers."""

from __future__ import annotations

import argparse
import logging
import os
import sys

EXAMPLES = """examples:
  harness run configs/default.yaml
  harness eval --backbone ocr-text --set mode=pooled --task generated
  harness eval --backbone ocr-text --task ../shared/data/mmlongbench_dev
  harness eval --backbone ocr-text --task beir/scifact
  harness eval --backbone colpali --set model=vidore/colqwen2.5-v0.2 --task "ViDoRe(v1)"
  harness plot checkpoints/colintern/TAG/RUN_A/loss.jsonl checkpoints/colintern/TAG/RUN_B/loss.jsonl --out loss.png
"""


def cmd_eval(args: argparse.Namespace) -> int:
    from harness.cli_args import parse_sets, task_spec
    from harness.config import BackboneSpec, RunConfig, VariantSpec
    from harness.pipeline import run

    backbone = BackboneSpec(family=args.backbone, config=parse_sets(args.set), path=args.backbone_path)
    variant = VariantSpec(name=args.variant, config=parse_sets(args.variant_set, "--variant-set"),
                          train_corpus=task_spec(args.train_corpus) if args.train_corpus else None)
    config = RunConfig(name="eval", results=args.results, seed=args.seed, overwrite=args.overwrite,
                       backbones=[backbone], variants=[variant], tasks=[task_spec(t) for t in args.task],
                       searches=args.search or ["exhaustive"])
    outcomes = run(config, show_progress=not args.quiet)
    for o in outcomes:
        print(f"{o.task}\t{o.main_score_name}\t{o.main_score:.4f}\t{'reused' if o.reused else 'evaluated'}"
              f"\t{o.record_path}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from harness.config import load_run_config
    from harness.pipeline import run

    config = load_run_config(args.config)
    run(config, results=args.results, overwrite=args.overwrite or None, show_progress=not args.quiet)
    if not args.no_leaderboard:
        from harness.report.leaderboard import main as leaderboard_main

        leaderboard_main(["--results", args.results or config.results])
    return 0


def cmd_tasks(args: argparse.Namespace) -> int:
    from tasks.registry import known_tasks

    for group, names in known_tasks().items():
        print(f"{group}:")
        for name in names:
            print(f"  {name}")
    print("local: any BEIR folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv), by path")
    from harness.data.beir_download import BEIR_DATASETS, beir_cache

    print(f"beir/<name>: a BEIR dataset, downloaded once into {beir_cache()}: {', '.join(BEIR_DATASETS)}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from harness.backbones import FAMILIES, backbone_class
    from harness.variants import list_variants

    print("backbone families:")
    for family in FAMILIES:
        try:
            fields = ", ".join(backbone_class(family).config_class.model_fields)
        except ImportError as exc:  # a family whose optional dependency is missing
            fields = f"(unavailable: {exc})"
        print(f"  {family}: {fields}")
    print("variants (models/<name>/):")
    for name in list_variants():
        print(f"  {name}")
    return 0


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from harness.report.leaderboard import run as leaderboard_run

    return leaderboard_run(args)


def cmd_plot(args: argparse.Namespace) -> int:
    from harness.report.losses import LossFileError, run

    try:
        print(run(args))
    except LossFileError as exc:  # a missing file or a malformed line: the message names file:line
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="harness", description=__doc__, epilog=EXAMPLES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress (INFO)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("eval", help="evaluate one backbone x variant on tasks")
    p.add_argument("--backbone", default="ocr-text", help="backbone family (see `harness models`)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="backbone config value")
    p.add_argument("--backbone-path", help="a saved backbone folder instead of --backbone/--set")
    p.add_argument("--variant", default="base", help="variant name or folder (default: base)")
    p.add_argument("--variant-set", action="append", default=[], metavar="KEY=VALUE", help="recipe config value")
    p.add_argument("--train-corpus", help="task whose pages the recipe trains on (default: each task's own)")
    p.add_argument("--task", action="append", required=True,
                   help="task name, benchmark, BEIR folder or inline YAML; repeatable")
    p.add_argument("--search", action="append", metavar="STRATEGY",
                   help="exhaustive (default), binary-pooled|multi|cascade[:R][@K] (two-stage: sign-bit first stage, "
                        "K x R candidates reranked by float MaxSim, K returned; defaults R 10, K 100); "
                        "repeatable, one result per strategy")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("run", help="run a backbone x variant x task matrix from a YAML config, then the leaderboard")
    p.add_argument("config")
    p.add_argument("--no-leaderboard", action="store_true")
    p.set_defaults(func=cmd_run, results=None)

    for p in (sub.choices["eval"], sub.choices["run"]):
        p.add_argument("--overwrite", action="store_true", help="re-run tasks that have results")
        p.add_argument("-q", "--quiet", action="store_true", help="no progress bars (shown by default)")
        p.add_argument("--progress", action="store_true", help=argparse.SUPPRESS)  # the default now; still accepted
        if p.prog.endswith("eval"):
            p.add_argument("--results", default="results", help="results folder (default: results)")
            p.add_argument("--seed", type=int, default=0)
        else:
            p.add_argument("--results", default=None, help="results folder (default: the config's)")

    p = sub.add_parser("tasks", help="list the tasks the harness knows")
    p.set_defaults(func=cmd_tasks)
    p = sub.add_parser("models", help="list backbone families and variants")
    p.set_defaults(func=cmd_models)
    p = sub.add_parser("leaderboard", help="print and write the leaderboard from a results folder")
    from harness.report.leaderboard import add_arguments as leaderboard_arguments  # light: the work imports lazily

    leaderboard_arguments(p)
    p.set_defaults(func=cmd_leaderboard)
    p = sub.add_parser("plot", help="draw training loss curves (one line per loss JSONL file) as a PNG")
    from harness.report.losses import add_arguments as plot_arguments  # light: matplotlib imports lazily

    plot_arguments(p)
    p.set_defaults(func=cmd_plot)

    from harness.synth.cli import register as register_synth  # light: the engine imports lazily

    register_synth(sub)
    from harness.data.vidore import register as register_vidore  # `harness vidore download`

    register_vidore(sub)
    from harness.answers.cli import register as register_answers  # `harness answers`: answer-level evaluation

    register_answers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import harness  # noqa: F401  (torchvision fix before anything else)
    from harness.progress import set_progress

    quiet = getattr(args, "quiet", False) or getattr(args, "no_progress", False)
    set_progress(not quiet)
    if quiet:  # keep the terminal for results: no library progress bars
        import datasets
        import transformers

        datasets.disable_progress_bars()
        transformers.utils.logging.disable_progress_bar()
    from harness.backbones import BackboneError
    from harness.config import ConfigError
    from harness.data.beir import DataError
    from harness.variants import VariantError
    from tasks.registry import TaskSpecError

    try:
        return args.func(args)
    except (ConfigError, DataError, BackboneError, VariantError, TaskSpecError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
