"""The paired permutation test, bootstrap interval and Holm correction against direct reference computations."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import stats

from harness.evaluate.significance import bootstrap_ci, holm, paired_test, permutation_test


def reference_p(diffs: np.ndarray, weights: np.ndarray | None = None) -> float:
    """Enumerate all 2^n sign flips: the share whose |weighted sum| reaches the observed one."""
    w = np.ones(len(diffs)) / len(diffs) if weights is None else weights
    observed = abs(np.dot(w, diffs))
    flips = [abs(np.dot(w, np.array(s) * diffs)) >= observed - 1e-12 for s in itertools.product([1, -1],
                                                                                                repeat=len(diffs))]
    return float(np.mean(flips))


@pytest.mark.parametrize("seed", range(6))
def test_exact_p_matches_enumeration_and_scipy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    diffs = rng.normal(0.05 * seed, 0.2, size=4 + seed)
    p, exact = permutation_test(diffs)
    assert exact
    assert p == pytest.approx(reference_p(diffs), abs=1e-12)
    scipy_p = stats.permutation_test((diffs,), np.mean, permutation_type="samples", n_resamples=np.inf).pvalue
    assert p == pytest.approx(scipy_p, abs=1e-12)


def test_identical_runs_give_p_one() -> None:
    scores = np.random.default_rng(0).uniform(size=300)
    assert permutation_test(scores - scores) == (1.0, True)  # every difference is 0: nothing to flip
    result = paired_test({"t|default/test": dict(enumerate(scores))}, {"t|default/test": dict(enumerate(scores))})
    assert result is not None and result.p == 1.0 and result.delta == 0 and result.ci_low == result.ci_high == 0


def test_clearly_better_run_is_significant() -> None:
    rng = np.random.default_rng(1)
    base = rng.uniform(0.2, 0.6, size=60)
    better = np.clip(base + rng.uniform(0.1, 0.3, size=60), 0, 1)
    p, exact = permutation_test(better - base, n_permutations=5000)
    assert not exact and p < 0.01 and p == pytest.approx(1 / 5001)  # no random flip reaches the observed sum
    small = np.array([0.3, 0.1, 0.2, 0.25, 0.15, 0.4, 0.35, 0.05, 0.2, 0.1, 0.3, 0.22])
    assert permutation_test(small) == (pytest.approx(2 / 2**12), True)  # only the all-positive flips and their mirror


def test_sampled_p_approaches_exact_and_is_reproducible() -> None:
    diffs = np.random.default_rng(3).normal(0.04, 0.2, size=14)
    exact_p, _ = permutation_test(diffs)
    sampled, exact = permutation_test(diffs, max_exact=1, n_permutations=20_000, seed=7)
    assert not exact and sampled == pytest.approx(exact_p, abs=0.01)
    assert permutation_test(diffs, max_exact=1, n_permutations=20_000, seed=7)[0] == sampled


def test_groups_weight_each_group_equally() -> None:
    """With subsets (languages), the statistic is the mean of the group means, as mteb averages subsets."""
    rng = np.random.default_rng(4)
    diffs = rng.normal(0.1, 0.3, size=9)
    groups = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1])
    weights = np.where(groups == 0, 1 / (2 * 6), 1 / (2 * 3))
    p, exact = permutation_test(diffs, groups)
    assert exact and p == pytest.approx(reference_p(diffs, weights), abs=1e-12)

    a = {"t|french/test": {f"q{i}": 0.0 for i in range(6)}, "t|english/test": {f"q{i}": 0.0 for i in range(3)}}
    b = {"t|french/test": {f"q{i}": 1.0 for i in range(6)}, "t|english/test": {f"q{i}": 0.0 for i in range(3)}}
    result = paired_test(a, b)
    assert result is not None and result.delta == pytest.approx(0.5)  # (1.0 + 0.0) / 2, not 6 / 9
    assert result.ci_low == result.ci_high == pytest.approx(0.5)  # resampled within each group: no spread


def test_only_shared_queries_are_compared() -> None:
    a = {"t|default/test": {"q1": 0.5, "q2": 0.0, "q3": 1.0}, "t|other/test": {"x": 1.0}}
    b = {"t|default/test": {"q2": 1.0, "q3": 1.0, "q4": 0.0}}
    result = paired_test(a, b)
    assert result is not None and result.n == 2 and result.delta == pytest.approx(0.5)
    assert paired_test(a, {"t|default/test": {"q9": 1.0}}) is None
    assert paired_test({}, b) is None


def test_bootstrap_interval() -> None:
    values = np.random.default_rng(5).normal(0.1, 0.2, size=200)
    low, high = bootstrap_ci(values, seed=1)
    assert low < values.mean() < high
    assert (low, high) == bootstrap_ci(values, seed=1)  # fixed seed: same interval
    se = values.std(ddof=1) / np.sqrt(len(values))
    assert high - low == pytest.approx(2 * 1.96 * se, rel=0.15)  # the normal-theory width, roughly
    assert bootstrap_ci(np.full(10, 0.3)) == pytest.approx((0.3, 0.3))


def test_holm() -> None:
    # m = 4: sorted 0.005, 0.01, 0.03, 0.04 -> 4*0.005, 3*0.01, 2*0.03, max(0.06, 1*0.04)
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
    out = holm([0.02, float("nan"), 0.01])  # an untested comparison is not counted in m
    assert out[0] == pytest.approx(0.02) and np.isnan(out[1]) and out[2] == pytest.approx(0.02)
    assert holm([]) == []
    rng = np.random.default_rng(6)
    p = rng.uniform(size=12)
    adjusted = np.array(holm(p))
    order = np.argsort(p)
    direct = np.maximum.accumulate(np.minimum(1, (12 - np.arange(12)) * p[order]))
    assert adjusted[order] == pytest.approx(direct)
