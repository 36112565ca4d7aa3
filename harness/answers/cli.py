"""``harness answers``: retrieve top-k with one backbone x variant, answer with a chosen answerer, score the answers.

    harness answers --backbone ocr-text --variant base --task generated --k 1 --k 3 --answerer llamacpp
    harness answers --task ../shared/data/mmlongbench_dev --answerer http --answerer-set url=http://host:8000/v1 \\
        --answerer-set model=Qwen/Qwen2.5-7B-Instruct

The retrieval run is the one `harness eval` writes (reused when finished, run otherwise); answers are cached in
<results>/answers/<answerer tag>.jsonl, so a rerun only calls the answerer for what is missing.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

ANSWERERS = {"llamacpp": "llama-cpp", "llama-cpp": "llama-cpp", "hf": "hf", "http": "http"}
SELF = "self"  # the retriever backbone's own language model (its answer_backend: an LLM retriever, adapter off)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("answers", help="answer-level evaluation: retrieve top-k, answer, score EM/F1/ANLS",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="ocr-text", help="backbone family (see `harness models`)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="backbone config value")
    p.add_argument("--backbone-path", help="a saved backbone folder instead of --backbone/--set")
    p.add_argument("--variant", default="base", help="variant name or folder (default: base)")
    p.add_argument("--variant-set", action="append", default=[], metavar="KEY=VALUE", help="recipe config value")
    p.add_argument("--task", action="append", required=True, help="a task whose queries carry metadata.answer")
    p.add_argument("--k", action="append", type=int, help="pages given to the answerer (repeatable; default 1, 3)")
    p.add_argument("--answerer", choices=[*sorted(ANSWERERS), SELF], default="llamacpp",
                   help="synth backend (default: llama.cpp with the packaged Gemma 3 270M), or self: the backbone's "
                        "own language model (backbones with answer_backend; --answerer-set goes to it)")
    p.add_argument("--answerer-set", action="append", default=[], metavar="KEY=VALUE",
                   help="backend setting (model, url, n_ctx, max_page_tokens, ...; see harness.synth.backends)")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--limit", type=int, help="the first N questions only (a quick look)")
    p.add_argument("--no-oracle", action="store_true", help="skip the oracle row (gold pages)")
    p.add_argument("--no-baseline", action="store_true", help="skip the no-retrieval row")
    p.add_argument("--results", default="results", help="results folder (default: results)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from harness.answers.answerer import Answerer
    from harness.answers.evaluate import answer_task, evaluate_answers, ranking_for
    from harness.answers.run import backbone_label, own_backend, store_for
    from harness.backbones import backbone_class, saved_family
    from harness.cli_args import parse_sets, task_spec
    from harness.config import BackboneSpec, ConfigError, VariantSpec
    from harness.evaluate.runner import evaluate_model
    from harness.pipeline import build_model, set_seed
    from harness.synth.backends import BackendSpec, make_backend
    from harness.variants import get_variant
    from tasks.registry import resolve_tasks

    results = Path(args.results)
    bspec = BackboneSpec(family=args.backbone, config=parse_sets(args.set), path=args.backbone_path)
    vspec = VariantSpec(name=args.variant, config=parse_sets(args.variant_set, "--variant-set"))
    variant = get_variant(vspec.name)
    spec = BackendSpec.model_validate({"kind": ANSWERERS.get(args.answerer, "hf"),
                                       **parse_sets(args.answerer_set, "--answerer-set")})
    family = saved_family(bspec.path) if bspec.path else bspec.family
    if args.answerer == SELF and not hasattr(backbone_class(family), "answer_backend"):
        raise ConfigError(f"--answerer self: the {family} backbone cannot answer (it has no answer_backend: only a "
                          f"backbone with its own language model can); choose {', '.join(sorted(ANSWERERS))}")
    shared = None
    if args.answerer != SELF:  # built before any training: a backend that cannot load fails early
        shared = Answerer(make_backend(spec), None, max_new_tokens=args.max_new_tokens)
        shared.store = store_for(results, shared)
    try:
        for task in resolve_tasks([task_spec(t) for t in args.task]):
            qa = answer_task(task)  # fails before any training when the task has no answers
            if args.limit:
                qa.questions = dict(list(qa.questions.items())[:args.limit])
            set_seed(args.seed)
            trains = getattr(variant.recipe, "TRAINS", True)
            encoder = build_model(variant, bspec, vspec, task if trains else None, where="variant",
                                  backbone_where="backbone", checkpoints=results.parent / "checkpoints")
            backbone = {"family": encoder.model.family, "tag": encoder.model.describe(),
                        "config": encoder.model.config.model_dump(mode="json"), "index": 0}
            variant_name = getattr(encoder, "variant_label", None) or variant.name
            evaluate_model(encoder, [task], results, variant=variant_name,
                           backbone=backbone, run_config={"run": "answers", "variant_config": vspec.config},
                           seed=args.seed, show_progress=not args.quiet)
            meta = encoder.mteb_model_meta
            ranking = ranking_for(results, meta.name, meta.revision, task.metadata.name, qa.subset)
            answerer = shared or Answerer(own_backend(encoder.model, spec), None, max_new_tokens=args.max_new_tokens)
            if answerer is not shared:  # the backbone's own model (--answerer self)
                answerer.store = store_for(results, answerer)
            try:
                for path in evaluate_answers(answerer, qa, results, ranking=ranking, model_name=meta.name,
                                             revision=meta.revision, ks=args.k or [1, 3],
                                             page_texts=getattr(encoder.model, "page_texts", None),
                                             oracle=not args.no_oracle, no_retrieval=not args.no_baseline,
                                             row={"backbone": backbone_label(encoder.model),
                                                  "variant": variant_name}):
                    print(_line(path))
            finally:
                if answerer is not shared:
                    answerer.close()
    finally:
        if shared is not None:
            shared.close()
    return 0


def _line(path: Path) -> str:
    import json

    rec = json.loads(path.read_text())
    s = rec["scores"]
    recall = "-" if s["recall"] is None else f"{s['recall']:.3f}"
    return (f"{rec['model']}\t{rec['task']}\tk={rec['k']}\tEM {s['em']:.3f}\tF1 {s['f1']:.3f}\tANLS {s['anls']:.3f}"
            f"\trecall {recall}\t{rec['cost']['seconds_per_query']:.2f} s/q\t{path}")
