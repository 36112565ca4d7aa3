"""Binary MaxSim on packed sign bits, compiled with numba.

Each (query token, page token) pair costs an XOR and a popcount per 64-bit word, and the page's best is kept as the
tokens stream past: no similarity matrix is ever written. (Computed as a +-1 matrix product instead, the fp32 or
bf16 products write one similarity per pair to memory, and that write bounds their speed at 128 dimensions.)

Vectors are packed sign bits (``harness.retrieval.binary.pack_bits``) padded with zero bytes to whole 64-bit words;
padding bits are 0 on both sides, so they never differ. Scores are Hamming similarities, dim - popcount(a xor b).
"""

from __future__ import annotations

import os

import llvmlite.binding as llvm
import numpy as np


def _prefer_512_bit_vectors() -> None:
    """LLVM tunes AVX-512 CPUs (Skylake-X to Sapphire Rapids) to prefer 256-bit vectors; with 512-bit ones the
    popcount loops below run 1.6x faster (benchmarks/binary_search.py, 2 cores of a Sapphire Rapids). numba reads
    the CPU features when it first compiles, so this runs before; a user's NUMBA_CPU_FEATURES wins."""
    try:
        features = llvm.get_host_cpu_features()
    except RuntimeError:  # llvmlite cannot read this CPU's features: numba's defaults
        return
    if "NUMBA_CPU_FEATURES" not in os.environ and features.get("avx512vpopcntdq"):
        os.environ["NUMBA_CPU_FEATURES"] = features.flatten() + ",-prefer-256-bit"
        from numba.core import config  # numba imported earlier read its environment already

        config.CPU_FEATURES = os.environ["NUMBA_CPU_FEATURES"]


_prefer_512_bit_vectors()

from numba import njit, prange, types  # noqa: E402 (after the CPU features are chosen)
from numba.extending import intrinsic  # noqa: E402


def _compiled(**options):
    """numba's njit with an on-disk cache (compiled once per machine); without a writable cache location (a
    read-only install and home) numba refuses ``cache=True``, and each process compiles instead."""

    def wrap(fn):
        try:
            return njit(cache=True, **options)(fn)
        except RuntimeError:
            return njit(**options)(fn)

    return wrap


@intrinsic
def _popcount(typingctx, x):  # noqa: ARG001 (numba's intrinsic signature)
    """LLVM's ctpop: one popcount instruction where the CPU has one (vectorised with AVX512-VPOPCNTDQ)."""

    def codegen(context, builder, signature, args):  # noqa: ARG001
        return builder.ctpop(args[0])

    return types.uint64(types.uint64), codegen


def as_words(bits: np.ndarray) -> np.ndarray:
    """Packed bits [..., B] uint8 -> [..., ceil(B / 8)] uint64 (zero bytes appended)."""
    pad = -bits.shape[-1] % 8
    if pad:
        bits = np.concatenate([bits, np.zeros((*bits.shape[:-1], pad), np.uint8)], axis=-1)
    return np.ascontiguousarray(bits).view(np.uint64)


@_compiled()
def _page_scores(best, starts, dim, out, p):
    """out[:, p] = for each query, the sum over its rows starts[i]:starts[i + 1] of dim - best (fewest differing bits
    in page p)."""
    for i in range(len(starts) - 1):
        total = 0
        for r in range(starts[i], starts[i + 1]):
            total += dim - best[r]
        out[i, p] = total


@_compiled()
def _scan_page(q, docs, t, end, best):
    """best[r] = min(best[r], fewest bits in which query row r (q [W, n], word-major, so the loops over rows
    vectorise) differs from a page token docs[t:end]. One-word codes take four page tokens per pass over the rows,
    two-word codes (65-128 dimensions, the Col* models' 128) two, each row's words loaded once for all of them (1.8x
    one token per pass); the last token is repeated where fewer are left. ``docs`` may be a column view."""
    words, n = q.shape
    if words == 1:
        q0 = q[0]
        while t < end:
            a, b = docs[t, 0], docs[min(t + 1, end - 1), 0]
            c, d = docs[min(t + 2, end - 1), 0], docs[min(t + 3, end - 1), 0]
            for r in range(n):
                x = q0[r]
                m = min(min(_popcount(x ^ a), _popcount(x ^ b)), min(_popcount(x ^ c), _popcount(x ^ d)))
                best[r] = min(best[r], np.int64(m))
            t += 4
    elif words == 2:
        q0, q1 = q[0], q[1]
        while t < end:
            a0, a1 = docs[t, 0], docs[t, 1]
            b0, b1 = docs[min(t + 1, end - 1), 0], docs[min(t + 1, end - 1), 1]
            for r in range(n):
                x0, x1 = q0[r], q1[r]
                da = np.int64(_popcount(x0 ^ a0) + _popcount(x1 ^ a1))
                db = np.int64(_popcount(x0 ^ b0) + _popcount(x1 ^ b1))
                best[r] = min(best[r], min(da, db))
            t += 2
    else:
        diff = np.empty(n, np.int64)
        for u in range(t, end):
            diff[:] = 0
            for w in range(words):
                word, row = docs[u, w], q[w]
                for r in range(n):
                    diff[r] += np.int64(_popcount(row[r] ^ word))
            for r in range(n):
                best[r] = min(best[r], diff[r])


@_compiled(parallel=True)
def _maxsim_all(q, starts, docs, offsets, dim):
    """q [W, R] the queries' real token words (word-major), query i's rows starts[i]:starts[i + 1]; docs [T, W]
    page-token words, page p's tokens docs[offsets[p]:offsets[p + 1]] -> [Q, N] sum over each query's tokens of the
    best Hamming similarity in the page (0 for a page without tokens)."""
    pages = len(offsets) - 1
    out = np.zeros((len(starts) - 1, pages), np.float32)
    for p in prange(pages):
        best = np.full(q.shape[1], 1 << 30, np.int64)  # fewest differing bits so far
        _scan_page(q, docs, offsets[p], offsets[p + 1], best)
        if offsets[p + 1] > offsets[p]:
            _page_scores(best, starts, dim, out, p)
    return out


@_compiled(parallel=True)
def _maxsim_groups(q, starts, pair_query, bounds, pages, docs, offsets, dim):
    """q [W, R] the queries' real rows (word-major; query i's rows starts[i]:starts[i + 1]); the pairs
    bounds[g]:bounds[g + 1] (their queries: pair_query) all keep page pages[g] -> [P] each pair's binary MaxSim (0 for
    a page without tokens). Each page is read once, against the rows of all its pairs' queries gathered side by side
    (long loops that vectorise, as in ``_maxsim_all``)."""
    words = q.shape[0]
    out = np.zeros(len(pair_query), np.float32)
    for g in prange(len(pages)):
        t, end = offsets[pages[g]], offsets[pages[g] + 1]
        if end == t:
            continue
        n = 0
        for k in range(bounds[g], bounds[g + 1]):
            n += starts[pair_query[k] + 1] - starts[pair_query[k]]
        rows = np.empty((words, n), np.uint64)
        r = 0
        for k in range(bounds[g], bounds[g + 1]):
            for s in range(starts[pair_query[k]], starts[pair_query[k] + 1]):
                for w in range(words):
                    rows[w, r] = q[w, s]
                r += 1
        best = np.full(n, 1 << 30, np.int64)
        _scan_page(rows, docs, t, end, best)
        r = 0
        for k in range(bounds[g], bounds[g + 1]):
            total = 0
            for _ in range(starts[pair_query[k]], starts[pair_query[k] + 1]):
                total += dim - best[r]
                r += 1
            out[k] = total
    return out


def grouped_binary_maxsim(query_words: np.ndarray, starts: np.ndarray, pair_query: np.ndarray, bounds: np.ndarray,
                          pages: np.ndarray, doc_words: np.ndarray, offsets: np.ndarray, dim: int) -> np.ndarray:
    """Binary MaxSim of (query, page) pairs grouped by page: queries as in ``binary_maxsim``, pair k's query
    pair_query[k], pairs bounds[g]:bounds[g + 1] all of page pages[g] -> [P] scores (0 for a page without tokens)."""
    def c(x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(x, dtype=np.int64)

    return _maxsim_groups(np.ascontiguousarray(query_words.T), c(starts), c(pair_query), c(bounds), c(pages),
                          doc_words, c(offsets), dim)


def binary_maxsim(query_words: np.ndarray, starts: np.ndarray, doc_words: np.ndarray, offsets: np.ndarray, dim: int,
                  *, query_batch: int = 256) -> np.ndarray:
    """Binary MaxSim of queries given as their real tokens' words [R, W] (uint64; query i's rows
    starts[i]:starts[i + 1]) against the pages of ``doc_words`` [T, W] split by ``offsets`` [N + 1] -> [Q, N] scores.
    Queries go in batches of ``query_batch``, so the per-page working set stays in cache. ``doc_words`` may be a
    view of the first word of longer codes (with ``query_words`` cut the same way and ``dim`` 64)."""
    starts = np.ascontiguousarray(starts, dtype=np.int64)
    offsets = np.ascontiguousarray(offsets, dtype=np.int64)
    out = []
    for s in range(0, len(starts) - 1, query_batch):
        batch = starts[s : s + query_batch + 1]
        rows = np.ascontiguousarray(query_words[batch[0] : batch[-1]].T)  # [W, rows]
        out.append(_maxsim_all(rows, batch - batch[0], doc_words, offsets, dim))
    return np.concatenate(out) if out else np.zeros((0, len(offsets) - 1), np.float32)


def query_rows(queries_bits: np.ndarray, real: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Zero-padded queries' packed bits [Q, Tq, B] and their real-token mask [Q, Tq] -> (words of the real tokens
    [R, W], starts [Q + 1])."""
    starts = np.concatenate([[0], np.cumsum(real.sum(1))]).astype(np.int64)
    return as_words(queries_bits[real]), starts
