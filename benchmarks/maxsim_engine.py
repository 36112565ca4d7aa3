"""The harness's MaxSim engine against colpali-engine's ``score_multi_vector`` and the machine's bound, in one process
on the same tensors (ratios are the stable figure on a shared machine).

    python benchmarks/maxsim_engine.py                       # 100 q x 20 tokens vs 1,000 pages of 300-800 tokens
    python benchmarks/maxsim_engine.py --queries 200 --pages 5000 --min-tokens 700 --max-tokens 700

Prints, for each engine: seconds (best of --repeats), speed ratio against colpali-engine, max |difference| of the
scores against colpali-engine's (fp32), and the peak of the process's RSS growth while it ran. The bound: one
dense fp32 matrix product with the same number of multiply-adds (query token rows x all page tokens x dim), run as
tiles into one reused output buffer, so neither memory nor the max reduction is counted.
Embeddings are L2-normalised random vectors with a shared component (real ColPali-style embeddings have positive
mean cosine), so every max is positive and colpali-engine's zero padding does not change its scores.
"""

from __future__ import annotations

import argparse
import resource
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from harness.retrieval.maxsim import DocIndex, maxsim, pad_vectors


def embeddings(n: int, lo: int, hi: int, dim: int, g: torch.Generator) -> list[torch.Tensor]:
    shared = torch.randn(dim, generator=g)
    lengths = torch.randint(lo, hi + 1, (n,), generator=g)
    return [F.normalize(torch.randn(int(t), dim, generator=g) + 0.5 * shared, dim=-1) for t in lengths]


def timed(fn: Callable[[], torch.Tensor], repeats: int) -> tuple[float, torch.Tensor]:
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    assert out is not None
    return best, out


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--query-tokens", type=int, default=20)
    ap.add_argument("--pages", type=int, default=1000)
    ap.add_argument("--min-tokens", type=int, default=300)
    ap.add_argument("--max-tokens", type=int, default=800)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    # imported after harness (its torchvision fix comes before colpali-engine imports transformers)
    from colpali_engine.utils.processing_utils import BaseVisualRetrieverProcessor

    if args.threads:
        torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    qs = embeddings(args.queries, args.query_tokens, args.query_tokens, args.dim, g)
    ps = embeddings(args.pages, args.min_tokens, args.max_tokens, args.dim, g)
    q = pad_vectors(qs)
    tokens = sum(p.shape[0] for p in ps)
    print(f"{args.queries} queries x {args.query_tokens} tokens, {args.pages} pages, {tokens:,} page tokens, "
          f"dim {args.dim}, {torch.get_num_threads()} threads")

    # the bound: the same multiply-adds as dense products into a reused buffer; the fastest of a few tilings
    flat = q.reshape(-1, args.dim)
    packed = torch.cat(ps)

    def bound(rows: int, cols: int) -> Callable[[], torch.Tensor]:
        buf = torch.empty(rows * cols)

        def run() -> torch.Tensor:  # every row against every token: the last tiles of each axis may be partial
            for r in range(0, flat.shape[0], rows):
                a = flat[r : r + rows]
                for c in range(0, tokens, cols):
                    b = packed[c : c + cols]
                    torch.mm(a, b.T, out=buf[: len(a) * len(b)].view(len(a), len(b)))
            return buf
        return run

    t_bound = min(timed(bound(rows, cols), args.repeats)[0]
                  for rows, cols in [(flat.shape[0], 4096), (256, 4096), (1024, 1024), (128, 8192)])
    rss0 = rss_mb()
    t_ref, ref = timed(lambda: BaseVisualRetrieverProcessor.score_multi_vector(qs, ps, device="cpu"), args.repeats)
    rss_ref = rss_mb() - rss0
    rows = [("colpali-engine score_multi_vector", t_ref, ref, rss_ref)]
    padded = pad_vectors(ps)
    index_start = time.perf_counter()
    index = DocIndex(ps)
    t_index = time.perf_counter() - index_start
    for name, fn in [("harness maxsim (padded tensor in)", lambda: maxsim(q, padded)),
                     ("harness maxsim (prebuilt DocIndex)", lambda: maxsim(q, index))]:
        rss0 = rss_mb()
        t, out = timed(fn, args.repeats)
        rows.append((name, t, out, rss_mb() - rss0))
    if torch.backends.mkldnn.is_available():
        index16 = DocIndex(ps, dtype=torch.bfloat16)
        t, out = timed(lambda: maxsim(q, index16), args.repeats)
        rows.append(("harness maxsim bf16 (DocIndex)", t, out, 0.0))
    print(f"bound (fastest dense fp32 tiling, same multiply-adds): {t_bound:.3f} s   DocIndex build: {t_index:.3f} s")
    print(f"{'engine':<38}{'seconds':>9}{'x colpali':>11}{'x bound':>9}{'max |diff|':>12}{'RSS growth MB':>15}")
    for name, t, out, rss in rows:
        print(f"{name:<38}{t:>9.3f}{t_ref / t:>11.2f}{t / t_bound:>9.2f}{(out - ref).abs().max().item():>12.2e}"
              f"{rss:>15.0f}")


if __name__ == "__main__":
    main()
