"""Binary two-stage search against exhaustive float MaxSim, in one process on the same vectors.

    python benchmarks/binary_search.py                            # synthetic: 1k and 10k pages of 550 tokens
    python benchmarks/binary_search.py --real ../shared/data/mmlongbench_dev --pages 329 1000 10000

For each corpus and first stage (pooled vote, binary MaxSim, cascade: binary MaxSim on 64-bit prefixes of the codes,
then on the whole codes over its best):
seconds of exhaustive float MaxSim (its index prebuilt, as a served index would be) and of the two-stage search,
their ratio, the mean overlap of the two top-10 lists, nDCG@5 of both and index bytes per page (float32 vectors vs
the first stage's bits).

Synthetic (no --real): 128-d token vectors shaped like real ones (``synthetic``: its weights reproduce the token and
query statistics of mmlongbench_dev's OCR-text vectors); a query's tokens are noisy copies of tokens of its one
relevant page.
Real (--real FOLDER): the OCR-text backbone in multi mode (MiniLM token vectors of each page's Tesseract text,
projected to 128 dimensions by a fixed random orthogonal map, as Col* heads project to 128) and the folder's
questions and qrels. Larger corpora add distractor pages made of real tokens: each takes the token positions of a
random real page and draws every token from one of three random real pages, so distractors keep the real tokens'
geometry (anisotropy, length) without being any real page. Set HARNESS_CACHE to a cache that already holds the OCR.
"""

from __future__ import annotations

import argparse
import math
import time

import pytrec_eval
import torch
import torch.nn.functional as F

from harness.retrieval.binary import BinaryIndex, SearchStats
from harness.retrieval.maxsim import DocIndex, maxsim, pad_vectors


def synthetic(pages: int, tokens: int, queries: int, query_tokens: int, dim: int, seed: int = 0):
    """Pages of L2-normalised token vectors: a corpus-wide direction (0.25), a topic (0.6: half the page's document's,
    documents of 8 pages, half its own), 8 directions every page's tokens mix with random weights (1.0) and token
    noise (1.0); lengths log-normal around ``tokens`` (sigma 0.9, as real pages run from a few words to dense text). A
    query's tokens are copies of random tokens of its one relevant page plus noise (1.6), re-normalised. The weights
    give the statistics of mmlongbench_dev's real OCR-text tokens at 128-d (real -> synthetic, 550 tokens): cosine of
    two random tokens, mean 0.035 -> 0.03 and sd 0.12 -> 0.16; of two tokens of one page 0.185 -> 0.18; a query row's
    best cosine in its relevant page 0.53 -> 0.53, in a random page 0.34 -> 0.31."""
    g = torch.Generator().manual_seed(seed)
    shared = torch.randn(dim, generator=g)
    common = torch.linalg.qr(torch.randn(dim, 8, generator=g))[0] * dim**0.5
    mean_log = math.log(tokens) - 0.9**2 / 2  # log-normal lengths whose mean is ``tokens``
    docs, document = [], torch.zeros(dim)
    for p in range(pages):
        if p % 8 == 0:
            document = torch.randn(dim, generator=g)
        topic = (document + torch.randn(dim, generator=g)) / 2**0.5
        n = int(min(4 * tokens, max(8, math.exp(mean_log + 0.9 * float(torch.randn(1, generator=g))))))
        mix = torch.randn(n, 8, generator=g) / 8**0.5 @ common.T
        docs.append(F.normalize(0.25 * shared + 0.6 * topic + mix + torch.randn(n, dim, generator=g), dim=-1))
    targets = torch.randint(0, pages, (queries,), generator=g)
    qs = []
    for t in targets:
        picks = docs[int(t)][torch.randint(0, len(docs[int(t)]), (query_tokens,), generator=g)]
        qs.append(F.normalize(picks + 1.6 * torch.randn(query_tokens, dim, generator=g) / dim**0.5, dim=-1))
    qrels = {f"q{i}": {f"d{int(t)}": 1} for i, t in enumerate(targets)}
    return pad_vectors(qs), docs, qrels


def real(folder: str, dim: int):
    from harness.backbones import build_backbone
    from harness.pipeline import training_corpus
    from tasks.beir_folder import BeirFolderTask

    task = BeirFolderTask(folder)
    pages = training_corpus(task).pages
    backbone = build_backbone("ocr-text", {"mode": "multi"})
    docs = backbone.encode_pages(pages)
    qids = sorted(task.data.queries)
    q = pad_vectors(backbone.encode_queries([task.data.queries[i] for i in qids]))
    g = torch.Generator().manual_seed(0)
    rotation = torch.linalg.qr(torch.randn(q.shape[-1], q.shape[-1], generator=g))[0][:, :dim]
    docs = [F.normalize(d @ rotation, dim=-1) for d in docs]
    q = F.normalize(q @ rotation, dim=-1) * (q.abs().sum(-1, keepdim=True) != 0)  # padded rows stay zero
    ids = {p.id: n for n, p in enumerate(pages)}
    qrels = {f"q{n}": {f"d{ids[d]}": int(s) for d, s in task.data.qrels[i].items() if d in ids}
             for n, i in enumerate(qids)}
    return q, docs, qrels


def with_distractors(docs: list[torch.Tensor], total: int, seed: int = 0) -> list[torch.Tensor]:
    """``docs`` plus distractor pages up to ``total``: each takes a random page's length and draws every token from
    one of three random pages (real tokens, no real page)."""
    g = torch.Generator().manual_seed(seed)
    out = list(docs)
    lengths = torch.tensor([len(d) for d in docs])
    while len(out) < total:
        length = int(lengths[int(torch.randint(len(docs), (1,), generator=g))])
        sources = torch.randint(len(docs), (3,), generator=g)
        pool = torch.cat([docs[int(i)] for i in sources])
        start = torch.cumsum(lengths[sources], 0) - lengths[sources]
        picks = torch.randint(3, (length,), generator=g)  # which source page, then a random token of it
        rows = start[picks] + (torch.rand(length, generator=g) * lengths[sources][picks]).long()
        out.append(pool[rows])
    return out


def ndcg5(scores: torch.Tensor, ids: torch.Tensor, qrels: dict[str, dict[str, int]]) -> float:
    run = {f"q{i}": {f"d{int(j)}": float(s) for s, j in zip(scores[i], ids[i], strict=True) if j >= 0}
           for i in range(len(ids))}
    per = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.5"}).evaluate(run)
    return sum(v["ndcg_cut_5"] for v in per.values()) / len(per)


def compare(name: str, q: torch.Tensor, docs: list[torch.Tensor], qrels: dict, top_k: int, ratio: int,
            firsts: list[str]) -> None:
    index = DocIndex(docs, consume=True)  # the list gives up its pages as they are copied: held once, not twice
    docs = index.documents()  # views into the index: the float vectors are held once (50k pages fit in memory)
    start = time.perf_counter()
    ex_scores, ex_ids = maxsim(q, index).topk(top_k, dim=1)
    t_ex = time.perf_counter() - start
    binary = BinaryIndex(docs)
    for first in firsts:  # numba compiles (or loads its cache) on the first call: not part of the timing
        binary.search(q[:1], top_k, first=first, rescore_ratio=ratio)
    tokens = sum(len(d) for d in docs)
    print(f"\n{name}: {len(docs):,} pages, {tokens / len(docs):.0f} tokens/page, {len(q)} queries, dim {q.shape[-1]}; "
          f"bytes/page: float32 {binary.float_nbytes / len(docs):,.0f}, bits {binary.binary_nbytes / len(docs):,.0f}")
    print(f"  exhaustive float MaxSim: {t_ex:.2f} s, nDCG@5 {ndcg5(ex_scores, ex_ids, qrels):.4f}")
    for first in firsts:
        stats = SearchStats()
        start = time.perf_counter()
        scores, ids = binary.search(q, top_k, first=first, rescore_ratio=ratio, stats=stats)
        t = time.perf_counter() - start
        overlap = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(ids, ex_ids, strict=True))
        print(f"  two-stage ({first:>6} first stage, {ratio}x{top_k} candidates): {t:.2f} s ({t_ex / t:.1f}x), "
              f"top-{top_k} overlap {overlap / ids.numel():.3f}, nDCG@5 {ndcg5(scores, ids, qrels):.4f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pages", type=int, nargs="*", default=[1000, 10000])
    ap.add_argument("--tokens", type=int, default=550)
    ap.add_argument("--queries", type=int, default=257)  # as many as mmlongbench_dev has
    ap.add_argument("--query-tokens", type=int, default=22)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--top-k", type=int, default=10)
    ap.add_argument("--rescore-ratio", type=int, default=10)
    ap.add_argument("--first", nargs="+", default=["pooled", "multi", "cascade"], help="first stages to measure")
    ap.add_argument("--real", help="a BEIR folder of page images (e.g. ../shared/data/mmlongbench_dev); "
                    "--pages are then corpus sizes, real pages plus distractors")
    args = ap.parse_args()
    print(f"{torch.get_num_threads()} threads")
    if args.real:
        q, base, qrels = real(args.real, args.dim)
        for n in args.pages:
            compare(f"real {args.real} + {n - len(base)} distractors", q, with_distractors(base, n), qrels, args.top_k,
                    args.rescore_ratio, args.first)
        return
    for n in args.pages:
        q, docs, qrels = synthetic(n, args.tokens, args.queries, args.query_tokens, args.dim)
        compare(f"synthetic {n}", q, docs, qrels, args.top_k, args.rescore_ratio,
                    args.first)
        del q, docs


if __name__ == "__main__":
    main()
