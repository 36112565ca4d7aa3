"""Paired significance for two retrieval runs on the same queries.

- ``permutation_test``: two-sided paired randomisation test. Under the null hypothesis that the two runs are
  exchangeable, each per-query difference is as likely to have either sign, so the null distribution of the
  statistic is that of all sign flips. Exact (every one of the 2^n flips) when that is small, otherwise
  ``n_permutations`` random flips from a fixed seed, with p = (1 + hits) / (1 + n_permutations) so that a
  sampled p is never 0.
- ``bootstrap_ci``: percentile bootstrap interval of the same statistic, resampling queries with replacement.
- ``holm``: Holm's step-down adjustment of a family of p-values (here: one comparison across tasks).

The statistic is the mean per-query difference. Queries may come in groups (a task's subsets and splits, such as
the four languages of a ViDoRe v2 task): mteb scores each group and averages the groups, so the statistic is the
mean over groups of each group's mean difference (each query weighted 1 / (groups x group size)), and the
bootstrap resamples within each group. When both runs cover the same queries it equals the difference of the
two main scores.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

CHUNK = 1000  # random flips or resamples drawn per batch: bounded memory on large query sets


@dataclass(frozen=True)
class PairedResult:
    n: int  # queries present in both runs
    delta: float  # statistic: run b minus run a
    ci_low: float
    ci_high: float
    p: float
    exact: bool  # True: every sign flip was enumerated


def query_weights(groups: np.ndarray) -> np.ndarray:
    """Per-query weights that make a weighted sum the mean over groups of the group means."""
    _, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    return 1.0 / (len(counts) * counts[inverse])


def permutation_test(diffs: np.ndarray, groups: np.ndarray | None = None, *, n_permutations: int = 10_000,
                     seed: int = 0, max_exact: int = 2**16) -> tuple[float, bool]:
    """Two-sided p-value of the (group-weighted) mean of ``diffs`` under random sign flips; (p, exact)."""
    diffs = np.asarray(diffs, dtype=float)
    weights = query_weights(np.zeros(len(diffs)) if groups is None else np.asarray(groups))
    x = weights * diffs
    x = x[x != 0]  # a zero difference is the same under either sign: leaving it out changes nothing
    if len(x) == 0:
        return 1.0, True
    observed = abs(x.sum())
    tol = 1e-12 * max(1.0, float(np.abs(x).sum()))  # ties computed in another summation order still count
    if 2 ** len(x) <= max(max_exact, 1):
        signs = ((np.arange(2 ** len(x))[:, None] >> np.arange(len(x))) & 1) * 2 - 1
        hits = int((np.abs(signs @ x) >= observed - tol).sum())
        return hits / 2 ** len(x), True
    rng = np.random.default_rng(seed)
    hits, done, total = 0, 0, x.sum()
    while done < n_permutations:
        size = min(CHUNK, n_permutations - done)
        # random bits from random bytes (8 flips per draw); a flip set's sum is 2 * (kept x) - sum(x)
        bits = np.unpackbits(rng.integers(0, 256, size=(size, (len(x) + 7) // 8), dtype=np.uint8), axis=1,
                             count=len(x))
        hits += int((np.abs(2 * (bits @ x) - total) >= observed - tol).sum())
        done += size
    return (hits + 1) / (n_permutations + 1), False


def bootstrap_ci(values: np.ndarray, groups: np.ndarray | None = None, *, n_boot: int = 10_000,
                 confidence: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean over groups of group means of ``values``."""
    values = np.asarray(values, dtype=float)
    groups = np.zeros(len(values)) if groups is None else np.asarray(groups)
    members = [values[groups == g] for g in np.unique(groups)]
    rng = np.random.default_rng(seed)
    stats = np.empty(n_boot)
    for start in range(0, n_boot, CHUNK):
        size = min(CHUNK, n_boot - start)
        means = [v[rng.integers(0, len(v), size=(size, len(v)))].mean(axis=1) for v in members]
        stats[start:start + size] = np.mean(means, axis=0)
    alpha = 1 - confidence
    low, high = np.quantile(stats, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values in the input order; NaN (an untested comparison) stays NaN and is not counted."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(len(p), np.nan)
    tested = np.flatnonzero(~np.isnan(p))
    order = tested[np.argsort(p[tested], kind="stable")]
    m = len(order)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))  # step-down: adjusted values never decrease
        out[i] = running
    return out.tolist()


def align(a: Mapping[str, Mapping[str, float]], b: Mapping[str, Mapping[str, float]]
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-query values of both runs on the queries they share, group by group: (a, b, group index)."""
    va, vb, groups = [], [], []
    for g, key in enumerate(sorted(set(a) & set(b))):
        shared = sorted(set(a[key]) & set(b[key]))
        va += [a[key][q] for q in shared]
        vb += [b[key][q] for q in shared]
        groups += [g] * len(shared)
    return np.asarray(va, dtype=float), np.asarray(vb, dtype=float), np.asarray(groups, dtype=int)


def paired_test(a: Mapping[str, Mapping[str, float]], b: Mapping[str, Mapping[str, float]], *,
                n_permutations: int = 10_000, n_boot: int = 10_000, seed: int = 0) -> PairedResult | None:
    """Compare run b with run a ({group: {query id: score}}) on their shared queries; None when none are shared."""
    va, vb, groups = align(a, b)
    if len(va) == 0:
        return None
    diffs = vb - va
    delta = float((query_weights(groups) * diffs).sum())
    p, exact = permutation_test(diffs, groups, n_permutations=n_permutations, seed=seed)
    low, high = bootstrap_ci(diffs, groups, n_boot=n_boot, seed=seed)
    return PairedResult(len(diffs), delta, low, high, p, exact)
