"""Small statistics for the tables: Student t quantiles and confidence intervals.

Only the t distribution is needed, so it is computed here (regularised incomplete beta by
Lentz's continued fraction, then bisection) instead of depending on SciPy. The paired intervals,
Holm's correction and the summaries of the evidence protocol are in ``paired.py``, built on these.
"""
import math

import numpy as np


def _betacf(a, b, x):
    """Continued fraction of the incomplete beta function (Numerical Recipes, modified Lentz)."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        for num in (m * (b - m) * x / ((a + m2 - 1) * (a + m2)),
                    -(a + m) * (a + b + m) * x / ((a + m2) * (a + m2 + 1))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def betainc(a, b, x):
    """Regularised incomplete beta function I_x(a, b) for a, b > 0 and 0 <= x <= 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                 + a * math.log(x) + b * math.log1p(-x))
    # The continued fraction converges fast only below the mean; use the symmetry above it.
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def t_cdf(t, df):
    """Cumulative distribution function of Student's t with ``df`` degrees of freedom."""
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_quantile(p, df):
    """Quantile of Student's t: the t with ``t_cdf(t, df) == p`` (e.g. p=0.975, df=4 -> 2.776)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p == {p}, must be in (0, 1)")
    if not df > 0:
        raise ValueError(f"df == {df}, must be > 0")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:  # bracket, then bisect: the CDF is monotone
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


def mean_ci(values, level=0.95):
    """Mean, half-width of the two-sided t confidence interval, and count of the finite values.

    The half-width is NaN with fewer than two values (one seed says nothing about the spread).
    """
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    n = x.size
    if n == 0:
        return math.nan, math.nan, 0
    mean = float(x.mean())
    if n < 2:
        return mean, math.nan, 1
    sem = float(x.std(ddof=1)) / math.sqrt(n)
    return mean, t_quantile(0.5 + level / 2.0, n - 1) * sem, n


def welch_diff_ci(a, b, level=0.95):
    """Difference of means mean(a) - mean(b) and the half-width of its Welch t interval.

    Welch's interval does not assume equal variances nor pairing; it is valid (if conservative)
    for runs that share seeds. Half-width is NaN when either side has fewer than two values.
    """
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if a.size == 0 or b.size == 0:
        return math.nan, math.nan
    diff = float(a.mean() - b.mean())
    if a.size < 2 or b.size < 2:
        return diff, math.nan
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    se2 = va + vb
    if se2 == 0.0:
        return diff, 0.0
    df = se2 ** 2 / (va ** 2 / (a.size - 1) + vb ** 2 / (b.size - 1))
    return diff, t_quantile(0.5 + level / 2.0, df) * math.sqrt(se2)
