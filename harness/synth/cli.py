"""``harness synth``: run one synthetic-data operation over a BEIR folder, into a resumable store.

  harness synth queries FOLDER --store s.jsonl [--n 3 --kind general --limit 20 --out queries.jsonl]
  harness synth judge FOLDER --pairs pairs.tsv [--judge ql-pmi|ql|yesno|graded|pairwise] --store s.jsonl [--out j.jsonl]
  harness synth syntriever FOLDER --split train --store s.jsonl [--limit 20 --out samples.jsonl]

Backend options (all commands): --backend llama-cpp|hf|http, --model, --url, --set KEY=VALUE (see
harness.synth.backends.BackendSpec). The default is the packaged Gemma 3 270M GGUF in llama.cpp.
Re-running a command serves finished records from the store and calls the model only for the rest.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

JUDGES = ("graded", "yesno", "ql", "ql-pmi", "pairwise")


def register(subparsers: Any) -> None:
    """Add ``synth`` and its sub-commands to the ``harness`` parser."""
    synth = subparsers.add_parser("synth", help="generate pseudo-queries, judgements, Syntriever data",
                                  description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = synth.add_subparsers(dest="synth_command", required=True)

    p = sub.add_parser("queries", help="SynTR pseudo-queries for the folder's pages")
    p.add_argument("--n", type=int, default=3, help="distinct queries per page (default 3)")
    p.add_argument("--kind", choices=("general", "specific"), default="general", help="SynTR prompt")
    p.add_argument("--limit", type=int, help="sample this many pages (seeded), as SynTR samples 400 of 500")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.set_defaults(func=run, synth_func=cmd_queries)

    p = sub.add_parser("judge", help="judge (query, page) pairs, or (query, page a, page b) for pairwise")
    p.add_argument("--pairs", required=True, help="TSV: query-id, corpus-id (pairwise: query-id, corpus-id, "
                                                  "corpus-id); header optional")
    p.add_argument("--judge", choices=JUDGES, default="ql-pmi",
                   help="graded (SynTR's 3 levels), yesno (next-token P(yes)), ql (query likelihood), ql-pmi (query "
                        "likelihood minus the query's own: the default), pairwise (both orders averaged)")
    p.add_argument("--queries", help="queries JSONL (_id, text) instead of the folder's queries.jsonl "
                                     "(e.g. the output of `synth queries`)")
    p.set_defaults(func=run, synth_func=cmd_judge)

    p = sub.add_parser("syntriever", help="Syntriever passages, CoT augmentation and self-verification")
    p.add_argument("--limit", type=int, help="the first N queries only")
    p.add_argument("--no-verify", action="store_true", help="skip self-verification of the generated passage")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.set_defaults(func=run, synth_func=cmd_syntriever)

    for p in sub.choices.values():
        p.add_argument("folder", help="BEIR folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv)")
        p.add_argument("--split", default="test", help="qrels split whose queries the folder serves (default test)")
        p.add_argument("--store", required=True, help="JSONL store of model outputs (created or resumed)")
        p.add_argument("--out", help="write the operation's result (JSONL) here")
        p.add_argument("--seed", type=int, default=42)
        p.add_argument("--backend", choices=("llama-cpp", "hf", "http"), default="llama-cpp")
        p.add_argument("--model", help="GGUF file / folder / Hub id / served model name (default: packaged Gemma)")
        p.add_argument("--url", help="http backend: base URL ending in /v1")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="backend option")
        p.add_argument("-q", "--quiet", "--no-progress", dest="no_progress", action="store_true",
                       help="no progress bars (shown by default)")


def _backend(args: argparse.Namespace) -> Any:
    from harness.cli_args import parse_sets
    from harness.synth.backends import BackendSpec, make_backend

    fields: dict[str, Any] = {"kind": args.backend, **parse_sets(args.set)}
    if args.model:
        fields["model"] = args.model
    if args.url:
        fields["url"] = args.url
    return make_backend(BackendSpec.model_validate(fields))


def _folder(args: argparse.Namespace) -> Any:
    from harness.data.beir import read_beir_folder

    return read_beir_folder(args.folder, args.split, check_images=False)


def _write_jsonl(path: str | None, rows: list[dict[str, Any]]) -> None:
    if path:
        from harness.io import atomic_write_text

        atomic_write_text(Path(path), "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        print(f"wrote {len(rows)} rows to {path}")


def _finish(store: Any, reports: list[Any]) -> int:
    for report in reports:
        print(report.line())
    print(store.summary())
    return 0


def cmd_queries(args: argparse.Namespace) -> int:
    from harness.synth.backends import GenParams
    from harness.synth.operations import QUERY_PARAMS, pseudo_queries
    from harness.synth.pages import load_pages
    from harness.synth.store import SynthStore

    folder, backend = _folder(args), _backend(args)
    ids = sorted(folder.corpus)
    if args.limit:
        ids = sorted(random.Random(args.seed).sample(ids, min(args.limit, len(ids))))
    pages = load_pages(folder, ids, images=backend.sees_images)
    params: GenParams = QUERY_PARAMS.model_copy(update={"max_new_tokens": args.max_new_tokens})
    with SynthStore(args.store) as store:
        queries, report = pseudo_queries(backend, store, pages, n=args.n, kind=args.kind, params=params,
                                         seed=args.seed, progress=not args.no_progress)
        rows = [{"_id": f"{pid}#q{i}", "text": q, "page": pid} for pid, qs in queries.items() for i, q in enumerate(qs)]
        _write_jsonl(args.out, rows)
        return _finish(store, [report])


def _read_pairs(path: str, width: int) -> list[list[str]]:
    rows = []
    with open(path, encoding="utf-8", newline="") as f:
        for lineno, fields in enumerate(csv.reader(f, delimiter="\t"), 1):
            if not fields or (lineno == 1 and fields[0].strip().lower() in {"query-id", "query_id", "qid"}):
                continue
            if len(fields) < width:
                raise SystemExit(f"error: {path}:{lineno}: expected {width} tab-separated fields, got {len(fields)}")
            rows.append([x.strip() for x in fields[:width]])
    return rows


def cmd_judge(args: argparse.Namespace) -> int:
    from harness.data.beir import read_jsonl
    from harness.synth import operations as ops
    from harness.synth.pages import load_pages
    from harness.synth.store import SynthStore

    folder, backend = _folder(args), _backend(args)
    queries = dict(folder.queries)
    if args.queries:
        queries = {str(r["_id"]): r["text"] for _, r in read_jsonl(Path(args.queries))}
    rows = _read_pairs(args.pairs, 3 if args.judge == "pairwise" else 2)
    missing = sorted({r[0] for r in rows} - set(queries))
    if missing:
        raise SystemExit(f"error: {args.pairs}: unknown query id(s) {missing[:5]}")
    page_ids = sorted({pid for r in rows for pid in r[1:]})
    pages = {p.id: p for p in load_pages(folder, page_ids, images=backend.sees_images)}
    progress = not args.no_progress
    with SynthStore(args.store) as store:
        if args.judge == "pairwise":
            items = [ops.PairItem(q, queries[q], pages[a], pages[b]) for q, a, b in rows]
            values, report = ops.judge_pairwise(backend, store, items, progress=progress)
            out = [{"query": q, "a": a, "b": b, "p_a": v} for (q, a, b), v in zip(rows, values, strict=True)]
        else:
            items = [ops.JudgeItem(q, queries[q], pages[d]) for q, d in rows]
            if args.judge == "ql-pmi":
                values, report = ops.judge_query_likelihood(backend, store, items, pmi=True, progress=progress)
            else:
                fn = {"graded": ops.judge_graded, "yesno": ops.judge_yesno, "ql": ops.judge_query_likelihood}
                values, report = fn[args.judge](backend, store, items, progress=progress)
            out = [{"query": q, "page": d, args.judge: v} for (q, d), v in zip(rows, values, strict=True)]
        _write_jsonl(args.out, out)
        return _finish(store, [report])


def cmd_syntriever(args: argparse.Namespace) -> int:
    from harness.synth.operations import SYNTRIEVER_PARAMS, syntriever_synthesis
    from harness.synth.store import SynthStore

    folder, backend = _folder(args), _backend(args)
    queries = dict(list(folder.queries.items())[: args.limit] if args.limit else folder.queries.items())
    params = SYNTRIEVER_PARAMS.model_copy(update={"max_new_tokens": args.max_new_tokens})
    with SynthStore(args.store) as store:
        samples, reports = syntriever_synthesis(backend, store, queries, params=params, seed=args.seed,
                                                verify=not args.no_verify, progress=not args.no_progress)
        _write_jsonl(args.out, [asdict(s) for s in samples])
        return _finish(store, reports)


def run(args: argparse.Namespace) -> int:
    """Entry point used by harness.cli: turn the engine's errors into one clear line."""
    from pydantic import ValidationError

    from harness.synth.backends import BackendError
    from harness.synth.operations import OperationError
    from harness.synth.pages import PageError
    from harness.synth.store import StoreError

    try:
        return args.synth_func(args)
    except (BackendError, OperationError, PageError, StoreError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ValidationError as exc:  # a wrong --set key or value: name it
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        print(f"error: backend options: {problems}", file=sys.stderr)
        return 2
