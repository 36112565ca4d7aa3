"""Throughput of the synthetic-data engine: queries/s generated and judgements/s, per backend.

Real page text (OCR of mmlongbench_dev pages, cached), a fresh store (nothing is served from earlier runs).
Backends: llama.cpp over the packaged Gemma 3 270M GGUF (the default) and, with --hf, transformers over the same
GGUF file (dequantised to fp32; the first load converts and caches it, timed separately).

  python benchmarks/synth_throughput.py [--pages 6] [--hf]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import harness  # noqa: F401  (torchvision fix first)

# isort: split
from harness.data.beir import read_beir_folder
from harness.synth import operations as ops
from harness.synth.backends import BackendSpec, make_backend
from harness.synth.pages import load_pages
from harness.synth.store import SynthStore

ROOT = Path(__file__).resolve().parent.parent


def measure(name: str, spec: BackendSpec, pages: list, queries: list[str], n: int, tmp: Path) -> list[str]:
    t0 = time.perf_counter()
    backend = make_backend(spec)
    load_s = time.perf_counter() - t0
    lines = [f"{name}: load {load_s:.1f}s"]
    with SynthStore(tmp / f"{name}.jsonl") as store:
        t0 = time.perf_counter()
        got, report = ops.pseudo_queries(backend, store, pages, n=n, progress=False)
        dt = time.perf_counter() - t0
        made = sum(len(q) for q in got.values())
        toks = sum(r.get("n_tokens", 0) for r in store.records.values() if r["op"] == "queries")
        lines.append(f"  pseudo-queries: {made} distinct queries from {report.calls} samples in {dt:.1f}s = "
                     f"{made / dt:.2f} queries/s, {report.calls / dt:.2f} samples/s, "
                     f"{toks / dt:.1f} generated tokens/s")
        # Each page judged against every query (its own and the others'), page-major as the judges benchmark.
        items = [ops.JudgeItem(f"q{i}", q, p) for p in pages for i, q in enumerate(queries)]
        for judge, fn in (("ql", ops.judge_query_likelihood), ("yesno", ops.judge_yesno),
                          ("graded", ops.judge_graded)):
            t0 = time.perf_counter()
            fn(backend, store, items, progress=False)
            dt = time.perf_counter() - t0
            lines.append(f"  judge {judge}: {len(items)} judgements in {dt:.1f}s = {len(items) / dt:.2f} judgements/s")
        pitems = [ops.PairItem("q0", queries[0], pages[0], p) for p in pages[1:]]
        t0 = time.perf_counter()
        ops.judge_pairwise(backend, store, pitems, progress=False)
        dt = time.perf_counter() - t0
        lines.append(f"  judge pairwise: {len(pitems)} comparisons (x2 orders) in {dt:.1f}s = "
                     f"{len(pitems) / dt:.2f} comparisons/s")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT.parent / "shared/data/mmlongbench_dev"))
    ap.add_argument("--pages", type=int, default=6)
    ap.add_argument("--n", type=int, default=3, help="queries per page")
    ap.add_argument("--max-page-tokens", type=int, default=384)
    ap.add_argument("--hf", action="store_true", help="also measure transformers over the same GGUF")
    ap.add_argument("--threads", type=int, help="llama.cpp threads (default: one per usable core)")
    ap.add_argument("--no-llama", action="store_true", help="skip llama.cpp (with --hf: transformers only)")
    args = ap.parse_args()
    folder = read_beir_folder(args.data, "test", check_images=False)
    ids = sorted(folder.corpus)[: args.pages]
    pages = load_pages(folder, ids, images=False)
    queries = [folder.queries[q] for q in sorted(folder.queries)[:3]]
    tmp = Path(tempfile.mkdtemp(prefix="synth-bench-"))
    if not args.no_llama:
        spec = BackendSpec(kind="llama-cpp", max_page_tokens=args.max_page_tokens, threads=args.threads)
        print("\n".join(measure("llama-cpp", spec, pages, queries, args.n, tmp)), flush=True)
    if args.hf:
        spec = BackendSpec(kind="hf", max_page_tokens=args.max_page_tokens)
        print("\n".join(measure("hf", spec, pages, queries, args.n, tmp)))


if __name__ == "__main__":
    main()
