"""Statistics for comparing runs: mean, sample standard deviation, Student-t confidence intervals over seeds, paired
differences, and a percentile bootstrap over test queries for one run.

No scipy: the t quantile inverts the t distribution's CDF, written with the regularized incomplete beta function
(continued fraction, as in Numerical Recipes), by bisection to double precision.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

LEVEL = 0.95
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0


@dataclass(frozen=True)
class Summary:
    """``n`` values summarised: mean, sample std and a two-sided Student-t interval (``None`` below two values)."""

    n: int
    mean: float
    std: float | None
    low: float | None
    high: float | None
    level: float = LEVEL

    @property
    def excludes_zero(self) -> bool:
        """Whether the interval lies entirely above or below zero (False when there is no interval)."""
        return self.low is not None and self.high is not None and (self.low > 0 or self.high < 0)

    def as_dict(self) -> dict[str, float | int | None]:
        """A JSON-ready mapping (``ci_low``/``ci_high`` are ``None`` when n < 2)."""
        return {"n": self.n, "mean": self.mean, "std": self.std, "ci_low": self.low, "ci_high": self.high,
                "level": self.level}


def mean(values: Sequence[float]) -> float:
    """Arithmetic mean of at least one value."""
    if not values:
        raise ValueError("the mean of no values is undefined")
    return math.fsum(values) / len(values)


def sample_std(values: Sequence[float]) -> float:
    """Sample standard deviation (n - 1 in the denominator) of at least two values."""
    if len(values) < 2:
        raise ValueError("a sample standard deviation needs at least two values")
    centre = mean(values)
    return math.sqrt(math.fsum((v - centre) ** 2 for v in values) / (len(values) - 1))


def _beta_fraction(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, eps = 1e-300, 1e-16
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        for numerator in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            break
    return h


def incomplete_beta(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b) for a, b > 0 and 0 <= x <= 1."""
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"x must lie in [0, 1], got {x}")
    if x in (0.0, 1.0):
        return x
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    # The fraction converges fast only on one side of the mean; use the symmetry I_x(a,b) = 1 - I_{1-x}(b,a).
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_fraction(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom."""
    if df <= 0:
        raise ValueError(f"degrees of freedom must be positive, got {df}")
    tail = 0.5 * incomplete_beta(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom (e.g. t_quantile(0.975, 2) = 4.302653)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must lie in (0, 1), got {p}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    low, high = 0.0, 1.0
    while t_cdf(high, df) < p:
        high *= 2.0
    for _ in range(200):  # bisection: the CDF is monotone, and 200 halvings exhaust double precision
        middle = 0.5 * (low + high)
        if middle in (low, high):
            break
        low, high = (middle, high) if t_cdf(middle, df) < p else (low, middle)
    return 0.5 * (low + high)


def summarize(values: Sequence[float], level: float = LEVEL) -> Summary:
    """Mean, sample std and the two-sided ``level`` Student-t interval of the mean (none for a single value)."""
    values = [float(v) for v in values]
    centre = mean(values)
    if len(values) < 2:
        return Summary(len(values), centre, None, None, None, level)
    std = sample_std(values)
    half = t_quantile(0.5 + level / 2.0, len(values) - 1) * std / math.sqrt(len(values))
    return Summary(len(values), centre, std, centre - half, centre + half, level)


def paired_difference(values: Mapping[int, float], baseline: Mapping[int, float], level: float = LEVEL) -> Summary | None:
    """``values - baseline`` over the seeds both have, summarised (a paired t interval); None without common seeds."""
    common = sorted(set(values) & set(baseline))
    if not common:
        return None
    return summarize([values[s] - baseline[s] for s in common], level)


def bootstrap_interval(per_query: Sequence[float] | np.ndarray, level: float = LEVEL,
                       resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``per_query`` values (e.g. hits of recall@K), resampling the
    queries with replacement; the generator is seeded, so the same values always give the same interval."""
    values = np.asarray(per_query, dtype=np.float64).ravel()
    if values.size == 0:
        raise ValueError("a bootstrap over no queries is undefined")
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    chunk = max(1, 4_000_000 // values.size)  # bounded memory for large query sets
    for start in range(0, resamples, chunk):
        count = min(chunk, resamples - start)
        means[start:start + count] = values[rng.integers(0, values.size, size=(count, values.size))].mean(axis=1)
    tail = 100.0 * (1.0 - level) / 2.0
    low, high = np.percentile(means, [tail, 100.0 - tail])
    return float(low), float(high)


def query_intervals(values: Mapping[str, Sequence[float] | np.ndarray], level: float = LEVEL) -> dict[str, dict]:
    """Per metric, the percentile bootstrap interval of the mean of its per-query values, JSON-ready (what a
    results entry's ``intervals`` records)."""
    out = {}
    for metric, per_query in values.items():
        array = np.asarray(per_query, dtype=np.float64).ravel()
        if array.size == 0:
            continue
        low, high = bootstrap_interval(array, level)
        out[metric] = {"low": low, "high": high, "level": level, "queries": int(array.size),
                       "method": "percentile bootstrap over test queries", "resamples": BOOTSTRAP_RESAMPLES,
                       "seed": BOOTSTRAP_SEED}
    return out
