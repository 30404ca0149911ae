"""The statistics behind every table: t quantiles, mean/std/t intervals, paired differences, bootstrap over queries."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mmcore.stats import (
    bootstrap_interval,
    incomplete_beta,
    paired_difference,
    sample_std,
    summarize,
    t_cdf,
    t_quantile,
)

# Two-sided 95% and 99% critical values of Student's t (standard tables, 6 decimals).
T_975 = {1: 12.706205, 2: 4.302653, 3: 3.182446, 4: 2.776445, 5: 2.570582, 9: 2.262157, 29: 2.045230, 120: 1.979930}
T_995 = {2: 9.924843, 4: 4.604095, 9: 3.249836}


@pytest.mark.parametrize("df", sorted(T_975))
def test_t_quantile_matches_the_tables(df):
    assert t_quantile(0.975, df) == pytest.approx(T_975[df], abs=5e-7)
    assert t_quantile(0.025, df) == pytest.approx(-T_975[df], abs=5e-7)


@pytest.mark.parametrize("df", sorted(T_995))
def test_t_quantile_at_99_percent(df):
    assert t_quantile(0.995, df) == pytest.approx(T_995[df], abs=5e-7)


def test_t_quantile_tends_to_the_normal_and_inverts_the_cdf():
    assert t_quantile(0.975, 1e7) == pytest.approx(1.959964, abs=1e-5)
    for df in (1, 3, 7.5, 40):
        for p in (0.6, 0.9, 0.99):
            assert t_cdf(t_quantile(p, df), df) == pytest.approx(p, abs=1e-12)
    assert t_cdf(0.0, 5) == 0.5
    # df = 1 is the Cauchy distribution: F(t) = 1/2 + atan(t)/pi.
    assert t_cdf(2.0, 1) == pytest.approx(0.5 + math.atan(2.0) / math.pi, abs=1e-13)


def test_incomplete_beta_known_values():
    assert incomplete_beta(3.0, 3.0, 0.5) == pytest.approx(0.5, abs=1e-14)
    assert incomplete_beta(1.0, 1.0, 0.3) == pytest.approx(0.3, abs=1e-14)  # the uniform CDF
    assert incomplete_beta(2.0, 1.0, 0.4) == pytest.approx(0.16, abs=1e-14)  # x^a for b = 1
    with pytest.raises(ValueError):
        incomplete_beta(1.0, 1.0, 1.5)


def test_summarize_by_hand():
    values = [0.50, 0.52, 0.57]
    s = summarize(values)
    mean = sum(values) / 3
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / 2)
    half = 4.302653 * std / math.sqrt(3)
    assert (s.n, s.mean, s.std) == (3, pytest.approx(mean, abs=1e-15), pytest.approx(std, abs=1e-15))
    assert s.low == pytest.approx(mean - half, abs=1e-7) and s.high == pytest.approx(mean + half, abs=1e-7)
    assert s.excludes_zero
    single = summarize([0.4])
    assert (single.n, single.mean, single.std, single.low, single.high) == (1, 0.4, None, None, None)
    assert not single.excludes_zero
    with pytest.raises(ValueError):
        sample_std([1.0])


def test_paired_difference_pairs_by_seed():
    a = {0: 0.60, 1: 0.62, 2: 0.61, 7: 0.99}  # seed 7 has no partner: left out
    b = {0: 0.50, 1: 0.55, 2: 0.52}
    d = paired_difference(a, b)
    diffs = [0.10, 0.07, 0.09]
    assert d.n == 3 and d.mean == pytest.approx(sum(diffs) / 3)
    assert d.std == pytest.approx(sample_std(diffs))
    assert d.low == pytest.approx(d.mean - 4.302653 * d.std / math.sqrt(3), abs=1e-7) and d.excludes_zero
    # Paired, the difference is clear; the same numbers unpaired would overlap.
    assert summarize(list(a.values())[:3]).low < summarize(list(b.values())).high
    noisy = paired_difference({0: 0.6, 1: 0.5, 2: 0.55}, {0: 0.5, 1: 0.6, 2: 0.55})
    assert noisy.low < 0 < noisy.high and not noisy.excludes_zero
    assert paired_difference({0: 1.0}, {1: 1.0}) is None


def test_bootstrap_is_seeded_and_sane():
    hits = np.array([1.0] * 100 + [0.0] * 400)  # recall 0.2 over 500 queries
    low, high = bootstrap_interval(hits)
    assert bootstrap_interval(hits) == (low, high)  # deterministic
    assert bootstrap_interval(hits, seed=1) != (low, high)
    # The normal approximation: 0.2 +- 1.96 * sqrt(0.2 * 0.8 / 500) = 0.2 +- 0.035.
    assert low == pytest.approx(0.165, abs=0.01) and high == pytest.approx(0.235, abs=0.01)
    assert bootstrap_interval([1.0] * 20) == (1.0, 1.0)
    with pytest.raises(ValueError):
        bootstrap_interval([])
