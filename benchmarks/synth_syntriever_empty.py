"""Empty-passage rate of Syntriever synthesis on the packaged base model, on a seeded sample of SciFact training
queries (the recipe's own parameters: temperature 0.7, top-p 1.0, ``--tokens`` new tokens).

Runs ``ops.syntriever_synthesis`` (no self-verification) into a store and counts the records whose status is
"empty", per passage kind. ``--raw`` also generates each empty call again WITHOUT stop strings (same prompt, seed and
parameters) and prints the start of what the model wrote, which shows why a stopped output came back empty.

    python benchmarks/synth_syntriever_empty.py /work/shared/data/scifact_train --n 15 --store /tmp/empty.jsonl
"""

from __future__ import annotations

import argparse
import json
import random
from collections import Counter
from pathlib import Path

from harness.synth import operations as ops
from harness.synth import prompts
from harness.synth.backends import GenParams, Prompt, make_backend
from harness.synth.store import SynthStore


def sample_queries(folder: Path, n: int, seed: int) -> dict[str, str]:
    """``n`` seeded training queries that have qrels (the recipe trains only on those)."""
    with_qrels = {line.split("\t")[0] for line in (folder / "qrels" / "train.tsv").read_text().splitlines()[1:]}
    rows = [json.loads(x) for x in (folder / "queries.jsonl").read_text().splitlines()]
    ids = sorted(r["_id"] for r in rows if r["_id"] in with_qrels)
    chosen = sorted(random.Random(seed).sample(ids, min(n, len(ids))))
    text = {r["_id"]: r["text"] for r in rows}
    return {q: text[q] for q in chosen}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path)
    ap.add_argument("--n", type=int, default=15)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tokens", type=int, default=64, help="max new tokens (configs/syntriever_scifact.yaml: 64)")
    ap.add_argument("--store", type=Path, required=True)
    ap.add_argument("--raw", action="store_true", help="also print each empty call's output without stop strings")
    args = ap.parse_args()
    queries = sample_queries(args.folder, args.n, args.seed)
    backend = make_backend()
    params = GenParams(max_new_tokens=args.tokens, temperature=0.7, top_p=1.0)
    with SynthStore(args.store) as store:
        ops.syntriever_synthesis(backend, store, queries, params=params, seed=args.seed, verify=False,
                                 progress=False)
    records = [json.loads(x) for x in args.store.read_text().splitlines()]
    recorded = ops.syntriever_params(backend, params).model_dump(mode="json")
    records = [r for r in records if r["op"] == "syntriever" and r["inputs"]["query"] in queries
               and r["seed"] == ops.derive_seed(args.seed, r["inputs"]["query"], r["inputs"]["what"])
               and r["params"] == recorded]
    by_what: dict[str, Counter[str]] = {}
    for r in records:
        by_what.setdefault(r["inputs"]["what"], Counter())[r["status"]] += 1
    empty = sum(c["empty"] for c in by_what.values())
    print(f"prompt ids: {sorted({r['prompt_id'] for r in records})}; stop {records[0]['params']['stop']}")
    for what, c in sorted(by_what.items()):
        print(f"{what}: {dict(c)}")
    no_passage = sum(1 for r in records if not r.get("parsed"))
    tokens = sum(r["n_tokens"] for r in records)
    print(f"empty: {empty}/{len(records)} = {100 * empty / max(len(records), 1):.1f}%; no passage (empty or "
          f"unparseable): {no_passage}/{len(records)} = {100 * no_passage / max(len(records), 1):.1f}%; "
          f"{tokens} tokens generated")
    if args.raw:
        # Only the empty ones, and a few tokens: enough to see what the model wrote past the stop string.
        free = params.model_copy(update={"stop": (), "max_new_tokens": min(args.tokens, 24)})
        for r in (r for r in records if r["status"] == "empty"):
            what, qid = r["inputs"]["what"], r["inputs"]["query"]
            template = prompts.SYNTRIEVER_TEMPLATES[(what, "fewshot")]
            gen = backend.generate([Prompt.of(template, query=queries[qid])], free, seeds=[r["seed"]])[0]
            print(f"[{r['status']}] {what} q{qid}: stored {r['raw'][:60]!r} | no-stop {gen.text[:100]!r}")


if __name__ == "__main__":
    main()
