"""Proportions with confidence intervals for the per-experiment summary."""

import math

Z_95 = 1.959963984540054  # two-sided 95% normal quantile


def wilson_interval(k, n, z=Z_95):
    """Wilson score interval for a binomial proportion k/n; (0.0, 1.0) when n == 0. (nscfate.metrics has
    the same for evaluations; server code on Anvil cannot import nscfate, so this is a copy on purpose.)

    Unlike the normal (Wald) interval it stays inside [0, 1] and behaves well for small n and for
    proportions near 0 or 1, which is common when a batch is mostly one condition.
    """
    if n < 0 or k < 0 or k > n:
        raise ValueError("need 0 <= k <= n, got k=%r n=%r" % (k, n))
    if n == 0:
        return 0.0, 1.0
    p = k / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    low = 0.0 if k == 0 else max(0.0, centre - half)  # exact bounds at the edges (no float residue)
    high = 1.0 if k == n else min(1.0, centre + half)
    return low, high


def condition_shares(counts, order, display_names=None):
    """One entry per condition in ``order``: count, share of all cells and its 95% Wilson interval."""
    n = sum(counts.values())
    names = display_names or {}
    out = []
    for key in order:
        k = counts.get(key, 0)
        low, high = wilson_interval(k, n)
        out.append({
            "key": key,
            "display_name": names.get(key, key),
            "count": k,
            "share": (k / n) if n else 0.0,
            "low": low,
            "high": high,
        })
    return out
