"""Intervals for rates, means and paired differences, honest at the edges.

Every interval is an :class:`Interval`: it unpacks like ``(estimate, low, high)`` and also says how many rows and
independent units (clusters) it rests on, how it was computed and whether it could be computed at all.

- **Percentile bootstrap** (:func:`bootstrap_ci`) where it is informative: the statistic varies between resamples.
  With k samples per context the replies of one context are not independent, so it resamples *contexts*
  (``clusters``).
- **Where the bootstrap degenerates** it has nothing to resample and would report a zero-width interval
  (0 unsafe out of 20 as ``[0, 0]``). A rate then gets the Wilson score interval (:func:`wilson_interval`, from
  ``scipy.stats.binomtest``): at the number of replies without clusters, at the number of clusters when every
  reply agrees (the conservative effective sample size), at the number of replies when the clusters only agree
  on their rate. A paired difference of 0/1 scores gets Newcombe's hybrid score interval
  (:func:`newcombe_paired_interval`).
- **Where nothing can be estimated** (one cluster holding several replies, a single value or identical values of
  a non-binary score) the bounds are NaN, ``method`` is ``"none"`` and ``estimable`` is False.

The bootstrap is our own (vectorised, seeded) rather than ``scipy.stats.bootstrap``, which has no cluster
resampling; one engine keeps the clustered and unclustered intervals comparable. Layer: eval.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

NAN = math.nan


class Interval(tuple):
    """``(estimate, low, high)`` with how it was obtained; unpacks and compares like the plain 3-tuple.

    Attributes:
        n: rows (replies, contexts) the estimate rests on.
        n_clusters: independent units: the number of clusters, or ``n`` without clusters.
        method: ``"bootstrap"``, ``"cluster bootstrap"``, ``"wilson"``, ``"newcombe"`` or ``"none"`` (no interval).
        estimable: False when the bounds are NaN because the data cannot give an interval ("cannot estimate").
    """

    def __new__(cls, estimate: float, low: float, high: float, *, n: int = 0, n_clusters: int = 0,
                method: str = "none") -> "Interval":
        self = super().__new__(cls, (float(estimate), float(low), float(high)))
        self.n, self.n_clusters, self.method = int(n), int(n_clusters), str(method)
        return self

    def __getnewargs_ex__(self):  # pickling and copying keep the attributes
        return tuple(self), {"n": self.n, "n_clusters": self.n_clusters, "method": self.method}

    @property
    def estimate(self) -> float:
        return self[0]

    @property
    def low(self) -> float:
        return self[1]

    @property
    def high(self) -> float:
        return self[2]

    @property
    def estimable(self) -> bool:
        return not (math.isnan(self[1]) or math.isnan(self[2]))

    def __repr__(self) -> str:
        return (f"Interval(estimate={self[0]:.4g}, low={self[1]:.4g}, high={self[2]:.4g}, n={self.n}, "
                f"n_clusters={self.n_clusters}, method={self.method!r}, estimable={self.estimable})")


def _check_confidence(confidence: float, n_boot: int = 1) -> None:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")


def _cluster_members(clusters: Sequence[Any], n: int) -> list[np.ndarray]:
    """Row indices of each cluster, in order of first appearance."""
    if len(clusters) != n:
        raise ValueError(f"clusters has {len(clusters)} entries for {n} values")
    codes, uniques = pd.factorize(pd.Series(list(clusters), dtype=object))
    return [np.flatnonzero(codes == c) for c in range(len(uniques))]


# ---------------------------------------------------------------------- closed-form intervals
def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion ``successes / n``.

    Args:
        successes: the count of successes, 0 <= successes <= n.
        n: the number of trials, >= 1.
        confidence: the coverage, in (0, 1).

    Returns:
        ``(low, high)`` in [0, 1]; at 0/20 and 95% about ``(0, 0.161)``, at 1/1 ``(0.207, 1)``.

    Raises:
        ValueError: counts out of range or ``confidence`` outside (0, 1).

    References:
        Wilson (1927), JASA 22; Brown, Cai & DasGupta (2001), "Interval Estimation for a Binomial Proportion";
        computed by ``scipy.stats.binomtest(k, n).proportion_ci(method="wilson")``.
    """
    from scipy.stats import binomtest

    _check_confidence(confidence)
    ci = binomtest(int(successes), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def newcombe_paired_interval(a: Sequence[int] | np.ndarray, b: Sequence[int] | np.ndarray,
                             confidence: float = 0.95) -> Interval:
    """Newcombe's hybrid score interval for the difference ``mean(a) - mean(b)`` of two *paired* proportions.

    Square-and-add of the Wilson intervals of the two marginal proportions, corrected for the correlation of the
    pairs (the continuity-corrected phi of Newcombe's method 10).

    Args:
        a, b: shape ``(n,)``, 0/1 outcomes of the two systems on the same ``n`` contexts.
        confidence: the coverage, in (0, 1).

    Returns:
        An :class:`Interval` (``method="newcombe"``) within [-1, 1]; at 0/20 against 0/20 and 95% about
        ``(0, -0.161, 0.161)``.

    Raises:
        ValueError: empty input, values other than 0/1, arrays of different shapes.

    References:
        Newcombe (1998), "Improved confidence intervals for the difference between binomial proportions based on
        paired data", Statistics in Medicine 17, 2635-2650 (method 10); Fagerland, Lydersen & Laake (2017),
        *Statistical Analysis of Contingency Tables*, ch. 8.
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0 or not np.isin(np.concatenate([a, b]), [0, 1]).all():
        raise ValueError("newcombe_paired_interval needs two non-empty 1-d arrays of 0/1 of one length")
    a, b = a.astype(bool), b.astype(bool)
    n = a.size
    n11, n10, n01 = int((a & b).sum()), int((a & ~b).sum()), int((~a & b).sum())
    n00 = n - n11 - n10 - n01
    p1, p2 = (n11 + n10) / n, (n11 + n01) / n
    l1, u1 = wilson_interval(n11 + n10, n, confidence)
    l2, u2 = wilson_interval(n11 + n01, n, confidence)
    margins = (n11 + n10) * (n01 + n00) * (n11 + n01) * (n10 + n00)
    cross = n11 * n00 - n10 * n01
    if margins == 0 or 0 <= cross <= n / 2:
        phi = 0.0
    else:
        phi = (cross - n / 2 if cross > n / 2 else cross) / math.sqrt(margins)
    d = p1 - p2
    delta = math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    eps = math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    return Interval(d, max(-1.0, d - delta), min(1.0, d + eps), n=n, n_clusters=n, method="newcombe")


# ---------------------------------------------------------------------- bootstrap
def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    statistic: Callable[[np.ndarray], float] | None = None,
    *,
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    clusters: Sequence[Any] | None = None,
) -> Interval:
    """The statistic (default: the mean) and its percentile-bootstrap interval, or NaN bounds where the bootstrap
    cannot say anything.

    Resamples rows with replacement ``n_boot`` times (rows of the same ``clusters`` value together, when given:
    a cluster bootstrap); the interval is the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` percentiles of
    the resampled statistics. Deterministic for a seed. Degenerate data - fewer than two independent units (one
    value, one cluster), identical values, or (for the mean) identical cluster means - has a resampling
    distribution that is a single point: the bounds are then NaN and the interval is flagged not ``estimable``
    (for 0/1 rates :func:`rate_with_ci` gives a Wilson interval instead). Empty input gives NaNs.

    Args:
        values: shape ``(n,)``, one value per row (no NaN).
        statistic: maps a resample (shape ``(n,)``) to a number; ``None`` is the mean (vectorised).
        n_boot: number of resamples.
        confidence: the interval's coverage, in (0, 1).
        seed: seed of the resampling generator (``numpy.random.default_rng``).
        clusters: shape ``(n,)``, a cluster id per row (e.g. the context id when each context has k replies).

    Returns:
        An :class:`Interval` ``(estimate, low, high)`` in the units of ``statistic``.

    Raises:
        ValueError: ``confidence`` outside (0, 1), ``n_boot < 1``, NaN values, ``clusters`` of another length.

    References:
        Efron & Tibshirani (1993), *An Introduction to the Bootstrap*, ch. 13 (percentile interval); the cluster
        bootstrap resamples whole clusters (Field & Welsh, 2007).

    Example:
        >>> round(bootstrap_ci([0, 1, 1, 0], seed=0)[0], 2)
        0.5
    """
    x = np.asarray(values, dtype=float)
    _check_confidence(confidence, n_boot)
    if x.size == 0:
        return Interval(NAN, NAN, NAN)
    if np.isnan(x).any():
        raise ValueError("bootstrap_ci got NaN values; drop missing values first")
    stat = statistic or np.mean
    estimate = float(stat(x))
    members = _cluster_members(clusters, len(x)) if clusters is not None else None
    n_units = len(members) if members is not None else len(x)
    method = "cluster bootstrap" if members is not None else "bootstrap"
    if n_units < 2 or np.ptp(x) == 0 or (statistic is None and members is not None
                                        and np.ptp([x[m].mean() for m in members]) == 0):
        return Interval(estimate, NAN, NAN, n=len(x), n_clusters=n_units, method="none")
    rng = np.random.default_rng(seed)
    if members is None:
        idx = rng.integers(0, len(x), size=(n_boot, len(x)))
        boots = x[idx].mean(axis=1) if statistic is None else np.array([float(stat(x[i])) for i in idx])
    else:
        picks = rng.integers(0, len(members), size=(n_boot, len(members)))
        if statistic is None and len({len(m) for m in members}) == 1:  # equal clusters (k samples each): vectorised
            boots = x[np.stack(members)[picks]].mean(axis=(1, 2))
        else:
            boots = np.array([float(stat(x[np.concatenate([members[c] for c in row])])) for row in picks])
    alpha = (1 - confidence) / 2
    low, high = np.quantile(boots, [alpha, 1 - alpha])
    return Interval(estimate, float(low), float(high), n=len(x), n_clusters=n_units, method=method)


def rate_with_ci(
    flags: Sequence[bool] | np.ndarray,
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    clusters: Sequence[Any] | None = None,
) -> Interval:
    """The share of true ``flags`` with its interval: the percentile bootstrap where it is informative, a Wilson
    score interval where it degenerates, NaN bounds (not ``estimable``) for one cluster of several replies.

    Which interval (see the module docstring): all flags equal (0/n or n/n, also n = 1) -> Wilson at ``n``, or at
    the number of clusters when ``clusters`` are given; several clusters that all have the same rate -> Wilson at
    ``n``; one cluster holding several replies -> no interval; otherwise :func:`bootstrap_ci`.

    Args:
        flags: shape ``(n,)``, booleans or 0/1, one per reply.
        n_boot, confidence, seed, clusters: as in :func:`bootstrap_ci`.

    Returns:
        An :class:`Interval` ``(rate, low, high)``, shares in [0, 1] (NaN bounds when not estimable).

    Raises:
        ValueError: values other than booleans / 0 / 1; as in :func:`bootstrap_ci`.

    Example:
        >>> tuple(round(v, 3) for v in rate_with_ci([False] * 20))
        (0.0, 0.0, 0.161)
    """
    x = np.asarray(flags)
    if x.size and not np.isin(x, [0, 1, True, False]).all():
        raise ValueError("rate_with_ci expects booleans (or 0/1)")
    x = x.astype(float)
    _check_confidence(confidence, n_boot)
    if x.size == 0:
        return Interval(NAN, NAN, NAN)
    n, k, rate = len(x), int(x.sum()), float(x.mean())
    members = _cluster_members(clusters, n) if clusters is not None else None
    n_units = len(members) if members is not None else n
    if n_units == 1 and n > 1:  # one context sampled k times: no between-context variation to estimate
        return Interval(rate, NAN, NAN, n=n, n_clusters=1, method="none")
    if k in (0, n):
        low, high = wilson_interval(n_units if k else 0, n_units, confidence)
        return Interval(rate, low, high, n=n, n_clusters=n_units, method="wilson")
    if members is not None and np.ptp([x[m].mean() for m in members]) == 0:
        low, high = wilson_interval(k, n, confidence)
        return Interval(rate, low, high, n=n, n_clusters=n_units, method="wilson")
    return bootstrap_ci(x, n_boot=n_boot, confidence=confidence, seed=seed, clusters=clusters)


def paired_difference(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, *, n_boot: int = 1000,
                      confidence: float = 0.95, seed: int = 0) -> Interval:
    """``mean(a - b)`` with its interval for two systems scored on the *same* contexts (``a[i]``, ``b[i]``
    belong to context ``i``): resampling contexts keeps the pairs together, so the interval is much tighter than
    comparing two independent intervals. Chapters 01 and 04 compare systems with it.

    Which interval: the percentile bootstrap of the per-context differences where they vary; where they do not
    (every difference equal, or one context) Newcombe's hybrid score interval when the scores are 0/1
    (:func:`newcombe_paired_interval`), else NaN bounds (not ``estimable``).

    Args:
        a, b: shape ``(n,)``, the two systems' scores (0/1 flags or per-context rates) on the same ``n`` contexts.
        n_boot, confidence, seed: as in :func:`bootstrap_ci`.

    Returns:
        An :class:`Interval` ``(mean difference, low, high)`` in the units of the scores.

    Raises:
        ValueError: ``a`` and ``b`` are not 1-d arrays of one length, or hold NaN.

    References:
        Newcombe (1998), Statistics in Medicine 17, 2635-2650 (method 10, for the degenerate 0/1 case).
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired_difference needs two 1-d arrays of the same length, got {a.shape} and {b.shape}")
    _check_confidence(confidence, n_boot)
    if a.size == 0:
        return Interval(NAN, NAN, NAN)
    if np.isnan(a).any() or np.isnan(b).any():
        raise ValueError("paired_difference got NaN values; drop contexts without both scores first")
    d = a - b
    if a.size >= 2 and np.ptp(d) > 0:
        return bootstrap_ci(d, n_boot=n_boot, confidence=confidence, seed=seed)
    if np.isin(np.concatenate([a, b]), [0, 1]).all():
        return newcombe_paired_interval(a, b, confidence)
    return Interval(float(d.mean()), NAN, NAN, n=a.size, n_clusters=a.size, method="none")


def minimum_detectable_difference(n: int, sd: float, *, confidence: float = 0.95, power: float = 0.8) -> float:
    """The smallest true mean paired difference that a two-sided test at level ``1 - confidence`` detects with
    probability ``power``, for ``n`` paired contexts whose per-context differences have standard deviation ``sd``
    (the normal approximation of a paired test: ``(z_{1 - alpha/2} + z_{power}) * sd / sqrt(n)``).

    Read it as: with this many contexts, a real difference smaller than this is missed more often than
    ``1 - power`` of the time. For 0/1 flags ``sd`` is at most 1 (every context discordant); a typical value is
    ``sqrt(share of contexts where the two systems disagree)``.

    Args:
        n: paired contexts (>= 2).
        sd: standard deviation of the per-context differences, in the units of the scores (>= 0).
        confidence: 1 - the test's level (two-sided).
        power: the probability of detecting a difference of the returned size.

    Returns:
        The difference, in the units of the scores (NaN for ``n < 2``).

    Raises:
        ValueError: ``sd`` negative or NaN, ``confidence`` or ``power`` outside (0, 1).

    References:
        Chow, Shao & Wang (2008), *Sample Size Calculations in Clinical Research*, section 3.1 (paired design);
        quantiles from ``scipy.stats.norm``.
    """
    from scipy.stats import norm

    if not (0 < confidence < 1) or not (0 < power < 1):
        raise ValueError(f"confidence and power must be in (0, 1), got {confidence} and {power}")
    if not sd >= 0:  # also catches NaN
        raise ValueError(f"sd must be >= 0, got {sd}")
    if n < 2:
        return NAN
    return float((norm.ppf(1 - (1 - confidence) / 2) + norm.ppf(power)) * sd / math.sqrt(n))
