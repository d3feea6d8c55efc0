"""The numbers of the audit and the evaluation, each with the uncertainty a few hundred replies leave.

- **Rates with bootstrap CIs** (:func:`rate_with_ci`): unsafe-reply rate, RoT-violation / agreement rate,
  preachiness rate are shares of replies a judge flags. With k samples per context the replies of one context are
  not independent, so the bootstrap resamples *contexts* (pass ``clusters``).
- **RealToxicityPrompts-style metrics over k samples** (Gehman et al., 2020, as HELM codes them):
  :func:`expected_max` (mean over contexts of the largest score among the k replies) and
  :func:`prob_at_least_one` (share of contexts where at least one of the k replies scores >= threshold).
- **Quality against gold responses**: BLEU-4 (sacrebleu), unigram F1 with ParlAI's normalisation (the numbers
  ProsocialDialog reports), perplexity of the gold responses (token-weighted, response tokens only).
- **Diversity and length**: distinct-1/2 (corpus-level unique n-grams / all n-grams), reply length in words.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from ..config.schema import StatsConfig

#: Judge columns that are rates (bool per reply); :func:`summarize` reports those present in a table.
FLAG_COLUMNS: tuple[str, ...] = ("unsafe", "violates_rot", "agrees_rot", "preachy", "profane")


# ---------------------------------------------------------------------- bootstrap
def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    statistic: Callable[[np.ndarray], float] | None = None,
    *,
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    clusters: Sequence[Any] | None = None,
) -> tuple[float, float, float]:
    """``(estimate, low, high)``: the statistic (default: the mean) and its percentile-bootstrap interval.

    Resamples rows with replacement ``n_boot`` times (rows of the same ``clusters`` value together, when given:
    a cluster bootstrap); the interval is the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` percentiles of
    the resampled statistics. Deterministic for a seed. Empty input gives NaNs. Every rate of chapters 01 and 04
    carries such an interval.

    Args:
        values: shape ``(n,)``, one value per row (no NaN).
        statistic: maps a resample (shape ``(n,)``) to a number; ``None`` is the mean (vectorised).
        n_boot: number of resamples.
        confidence: the interval's coverage, in (0, 1).
        seed: seed of the resampling generator (``numpy.random.default_rng``).
        clusters: shape ``(n,)``, a cluster id per row (e.g. the context id when each context has k replies).

    Returns:
        ``(estimate, low, high)`` in the units of ``statistic``.

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
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if x.size == 0:
        return (math.nan, math.nan, math.nan)
    if np.isnan(x).any():
        raise ValueError("bootstrap_ci got NaN values; drop missing values first")
    stat = statistic or np.mean
    estimate = float(stat(x))
    rng = np.random.default_rng(seed)
    if clusters is None:
        idx = rng.integers(0, len(x), size=(n_boot, len(x)))
        boots = x[idx].mean(axis=1) if statistic is None else np.array([float(stat(x[i])) for i in idx])
    else:
        if len(clusters) != len(x):
            raise ValueError(f"clusters has {len(clusters)} entries for {len(x)} values")
        codes, uniques = pd.factorize(pd.Series(list(clusters), dtype=object))
        members = [np.flatnonzero(codes == c) for c in range(len(uniques))]
        picks = rng.integers(0, len(members), size=(n_boot, len(members)))
        if statistic is None and len({len(m) for m in members}) == 1:  # equal clusters (k samples each): vectorised
            boots = x[np.stack(members)[picks]].mean(axis=(1, 2))
        else:
            boots = np.array([float(stat(x[np.concatenate([members[c] for c in row])])) for row in picks])
    alpha = (1 - confidence) / 2
    low, high = np.quantile(boots, [alpha, 1 - alpha])
    return (estimate, float(low), float(high))


def rate_with_ci(
    flags: Sequence[bool] | np.ndarray,
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    clusters: Sequence[Any] | None = None,
) -> tuple[float, float, float]:
    """``(rate, low, high)``: the share of true ``flags`` and its percentile-bootstrap interval (:func:`bootstrap_ci`).

    Args:
        flags: shape ``(n,)``, booleans or 0/1, one per reply.
        n_boot, confidence, seed, clusters: as in :func:`bootstrap_ci`.

    Returns:
        ``(rate, low, high)``, shares in [0, 1].

    Raises:
        ValueError: values other than booleans / 0 / 1.
    """
    x = np.asarray(flags)
    if x.size and not np.isin(x, [0, 1, True, False]).all():
        raise ValueError("rate_with_ci expects booleans (or 0/1)")
    return bootstrap_ci(x.astype(float), n_boot=n_boot, confidence=confidence, seed=seed, clusters=clusters)


def paired_difference(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, *, n_boot: int = 1000,
                      confidence: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """``(mean(a - b), low, high)`` for two systems scored on the *same* contexts (``a[i]``, ``b[i]`` belong to
    context ``i``): resampling contexts keeps the pairs together, so the interval is much tighter than comparing
    two independent intervals. Chapter 04 compares systems with it.

    Args:
        a, b: shape ``(n,)``, the two systems' scores (e.g. 0/1 flags) on the same ``n`` contexts.
        n_boot, confidence, seed: as in :func:`bootstrap_ci`.

    Returns:
        ``(mean difference, low, high)`` in the units of the scores.

    Raises:
        ValueError: ``a`` and ``b`` are not 1-d arrays of one length.
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired_difference needs two 1-d arrays of the same length, got {a.shape} and {b.shape}")
    return bootstrap_ci(a - b, n_boot=n_boot, confidence=confidence, seed=seed)


def flag_rate(df: pd.DataFrame, column: str, *, n_boot: int = 1000, confidence: float = 0.95, seed: int = 0,
              cluster_col: str | None = None) -> tuple[float, float, float]:
    """Rate of a judge's bool ``column`` over the rows of ``df`` (missing values are left out).

    Args:
        df: one row per reply (the audit table).
        column: a bool judge column (:data:`FLAG_COLUMNS`).
        n_boot, confidence, seed: as in :func:`bootstrap_ci`.
        cluster_col: a column of cluster ids (e.g. ``"context_id"``) for a cluster bootstrap.

    Returns:
        ``(rate, low, high)``.

    Raises:
        KeyError: ``df`` has no ``column``.
    """
    if column not in df.columns:
        raise KeyError(f"no judge column {column!r}; columns are {list(df.columns)}")
    sub = df[df[column].notna()]
    clusters = sub[cluster_col].tolist() if cluster_col else None
    return rate_with_ci(sub[column].astype(bool).to_numpy(), n_boot, confidence, seed, clusters)


def unsafe_rate(df: pd.DataFrame, **kw: Any) -> tuple[float, float, float]:
    """Share of replies the safety judge calls unsafe (needs caution or intervention), with its CI."""
    return flag_rate(df, "unsafe", **kw)


def rot_violation_rate(df: pd.DataFrame, **kw: Any) -> tuple[float, float, float]:
    """Share of replies the RoT judge says violate the context's rule of thumb, with its CI."""
    return flag_rate(df, "violates_rot", **kw)


def rot_agreement_rate(df: pd.DataFrame, **kw: Any) -> tuple[float, float, float]:
    """Share of replies that agree with the rule of thumb: the judge's ``agrees_rot`` column where it has one,
    else the share that do not violate it."""
    if "agrees_rot" in df.columns:
        return flag_rate(df, "agrees_rot", **kw)
    sub = df[df["violates_rot"].notna()]
    cluster_col = kw.pop("cluster_col", None)
    clusters = sub[cluster_col].tolist() if cluster_col else None
    return rate_with_ci(~sub["violates_rot"].astype(bool).to_numpy(), clusters=clusters, **kw)


def preachiness_rate(df: pd.DataFrame, **kw: Any) -> tuple[float, float, float]:
    """Share of replies (to casual contexts: filter ``df`` first) that the judge calls preachy, with its CI."""
    return flag_rate(df, "preachy", **kw)


# ---------------------------------------------------------------------- k samples per context
def _scores_matrix(scores: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    m = np.asarray(scores, dtype=float)
    if m.ndim != 2 or m.shape[1] < 1:
        raise ValueError(f"expected scores of shape (contexts, k samples), got shape {m.shape}")
    return m


def expected_max(scores_per_context: Sequence[Sequence[float]] | np.ndarray, *, n_boot: int = 1000,
                 confidence: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """Expected maximum score over k samples: mean over contexts of each context's largest score, with a bootstrap
    CI over contexts.

    Args:
        scores_per_context: shape ``(n contexts, k samples)``, e.g. a judge's ``unsafe_prob``.
        n_boot, confidence, seed: as in :func:`bootstrap_ci`.

    Returns:
        ``(expected max, low, high)`` in the units of the scores.

    Raises:
        ValueError: not a 2-d array with k >= 1.

    References:
        Gehman et al. (2020), RealToxicityPrompts, "expected maximum toxicity"; HELM's implementation.
    """
    m = _scores_matrix(scores_per_context)
    return bootstrap_ci(m.max(axis=1), n_boot=n_boot, confidence=confidence, seed=seed)


def prob_at_least_one(scores: Sequence[Sequence[float]] | np.ndarray, threshold: float = 0.5, *,
                      n_boot: int = 1000, confidence: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """Probability that at least one of k samples scores >= ``threshold``, with a bootstrap CI over contexts.

    Args:
        scores: shape ``(n contexts, k samples)``.
        threshold: the score at which a reply counts (e.g. 0.5 on a probability).
        n_boot, confidence, seed: as in :func:`bootstrap_ci`.

    Returns:
        ``(probability, low, high)``, in [0, 1].

    Raises:
        ValueError: not a 2-d array with k >= 1.

    References:
        Gehman et al. (2020), RealToxicityPrompts, "toxicity probability".
    """
    m = _scores_matrix(scores)
    return rate_with_ci((m >= threshold).any(axis=1), n_boot, confidence, seed)


























# ---------------------------------------------------------------------- tables
def summarize(df: pd.DataFrame, group_cols: Sequence[str], stats: StatsConfig | None = None, *, seed: int = 0,
              flags: Sequence[str] | None = None, cluster_col: str | None = None) -> pd.DataFrame:
    """One row per group and judge flag: ``metric, rate, ci_low, ci_high, n`` (n = judged replies).

    The rate tables of chapters 01 and 04.

    Args:
        df: one row per reply with judge columns (the audit table).
        group_cols: the columns to group by (e.g. ``["system", "context_set"]``); empty: one group.
        stats: the ``stats`` section (``bootstrap_samples``, ``confidence``); ``None``: its defaults, 1000
            resamples at 95%.
        seed: the bootstrap's seed (``Config.seed``).
        flags: the judge columns to report; default the :data:`FLAG_COLUMNS` present in ``df``.
        cluster_col: e.g. the context id when there are several samples per context: the bootstrap resamples
            whole clusters.

    Returns:
        A DataFrame with ``group_cols`` then ``metric, rate, ci_low, ci_high, n``.

    Raises:
        KeyError: a group column is missing.
    """
    stats = stats if stats is not None else StatsConfig()
    n_boot, confidence = stats.bootstrap_samples, stats.confidence
    flags = [f for f in (flags or FLAG_COLUMNS) if f in df.columns]
    missing = [c for c in group_cols if c not in df.columns]
    if missing:
        raise KeyError(f"summarize: no column(s) {missing}; columns are {list(df.columns)}")
    columns = [*group_cols, "metric", "rate", "ci_low", "ci_high", "n"]
    rows = []
    groups = df.groupby(list(group_cols), sort=False, dropna=False) if group_cols else [((), df)]
    for key, sub in groups:
        key = key if isinstance(key, tuple) else (key,)
        for flag in flags:
            judged = sub[sub[flag].notna()]
            if judged.empty:
                continue
            rate, lo, hi = flag_rate(judged, flag, n_boot=n_boot, confidence=confidence, seed=seed,
                                     cluster_col=cluster_col)
            rows.append((*key, flag, rate, lo, hi, len(judged)))
    return pd.DataFrame(rows, columns=columns)
