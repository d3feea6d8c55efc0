"""How far a judge's verdicts can be trusted: agreement with labels it never trained on, and calibration.

scikit-learn computes the classification metrics (per-label precision / recall / F1, macro-F1, Cohen's kappa, the
confusion matrix); this module adds what it lacks in the form the book reports: the majority baseline of the
scored set, the expected calibration error with its reliability table, and the flag thresholds chosen on a
calibration split.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from .encoder import JudgeError


def majority_baseline(y_true: Sequence) -> float:
    """Accuracy of always answering the most frequent label of ``y_true`` (the set being scored; NaN if empty)."""
    y = list(y_true)
    return Counter(y).most_common(1)[0][1] / len(y) if y else float("nan")


def reliability_table(confidence: Sequence[float], correct: Sequence[bool], n_bins: int = 10) -> pd.DataFrame:
    """Predictions grouped by confidence into ``n_bins`` equal-width bins over [0, 1].

    Args:
        confidence: ``n`` predicted probabilities of the predicted class (or of a flag), in [0, 1].
        correct: ``n`` outcomes: was the prediction right (or was the flag's event true)?
        n_bins: number of bins (the last one includes 1.0).

    Returns:
        One row per non-empty bin: ``bin_low``, ``bin_high``, ``n``, ``mean_confidence``, ``accuracy`` (the share
        correct), the data of a reliability diagram.

    Raises:
        JudgeError: lengths differ, or a confidence outside [0, 1].
    """
    conf = np.asarray(confidence, dtype=np.float64)
    ok = np.asarray(correct, dtype=np.float64)
    if conf.shape != ok.shape:
        raise JudgeError(f"reliability_table: {conf.size} confidences but {ok.size} outcomes")
    if conf.size and (conf.min() < 0 or conf.max() > 1):
        raise JudgeError("reliability_table: confidences must lie in [0, 1]")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, n_bins - 1)
    rows = [{"bin_low": edges[b], "bin_high": edges[b + 1], "n": int((which == b).sum()),
             "mean_confidence": float(conf[which == b].mean()), "accuracy": float(ok[which == b].mean())}
            for b in range(n_bins) if (which == b).any()]
    return pd.DataFrame(rows, columns=["bin_low", "bin_high", "n", "mean_confidence", "accuracy"])


def expected_calibration_error(confidence: Sequence[float], correct: Sequence[bool], n_bins: int = 10) -> float:
    """ECE: the bin-size-weighted mean gap between confidence and accuracy (Naeini et al., 2015; Guo et al., 2017).

    ``sum_b n_b / n * |accuracy_b - mean_confidence_b|`` over the bins of :func:`reliability_table`; 0 is perfectly
    calibrated. NaN without predictions.
    """
    table = reliability_table(confidence, correct, n_bins)
    if table.empty:
        return float("nan")
    return float((table["n"] * (table["accuracy"] - table["mean_confidence"]).abs()).sum() / table["n"].sum())


def choose_threshold(probability: Sequence[float], positive: Sequence[bool], *, default: float = 0.5) -> float:
    """The flag threshold that maximises F1 of ``probability >= threshold`` against ``positive``.

    Choose it on a calibration split, never on the set the judge is then scored on. Candidates are the midpoints
    between sorted distinct probabilities (plus ``default``); ties go to the candidate nearest ``default``.

    Args:
        probability: ``n`` predicted probabilities of the flag's event.
        positive: ``n`` true outcomes.
        default: returned when there are no positives or no negatives (F1 is then undefined).

    Returns:
        The threshold, in (0, 1).
    """
    from sklearn.metrics import f1_score

    p = np.asarray(probability, dtype=np.float64)
    y = np.asarray(positive, dtype=bool)
    if p.size == 0 or y.all() or not y.any():
        return float(default)
    distinct = np.unique(p)
    candidates = np.unique(np.concatenate([(distinct[1:] + distinct[:-1]) / 2, [default]]))
    scores = np.array([f1_score(y, p >= t, zero_division=0) for t in candidates])
    best = np.flatnonzero(scores >= scores.max() - 1e-12)
    return float(candidates[best[np.argmin(np.abs(candidates[best] - default))]])


def flag_agreement(y_true: Sequence[bool], y_pred: Sequence[bool]) -> dict[str, float]:
    """Agreement of a binary flag with labels: Cohen's kappa, precision, recall, F1, the true and flagged rates.

    Kappa corrects agreement for chance (Cohen, 1960; scikit-learn's ``cohen_kappa_score``): 0 = chance, 1 =
    perfect; 0.6-0.8 is conventionally "substantial" (Landis & Koch, 1977).
    """
    from sklearn.metrics import cohen_kappa_score, precision_recall_fscore_support

    t, p = np.asarray(y_true, dtype=bool), np.asarray(y_pred, dtype=bool)
    if t.size == 0:
        return {"kappa": float("nan"), "precision": float("nan"), "recall": float("nan"), "f1": float("nan"),
                "true_rate": float("nan"), "flagged_rate": float("nan"), "n": 0}
    prec, rec, f1, _ = precision_recall_fscore_support(t, p, average="binary", zero_division=0)
    kappa = cohen_kappa_score(t, p) if (len(set(t)) > 1 or len(set(p)) > 1) else 1.0
    return {"kappa": float(kappa), "precision": float(prec), "recall": float(rec), "f1": float(f1),
            "true_rate": float(t.mean()), "flagged_rate": float(p.mean()), "n": int(t.size)}


def classification_summary(y_true: Sequence, y_pred: Sequence, labels: Sequence,
                           confidence: Sequence[float] | None = None) -> dict[str, Any]:
    """How a judge's predicted classes agree with true ones.

    Args:
        y_true: ``n`` true labels.
        y_pred: ``n`` predicted labels.
        labels: the class order of the per-label table and the confusion matrix.
        confidence: ``n`` probabilities of the predicted class (for the ECE), or None.

    Returns:
        ``n``, ``accuracy``, ``majority_baseline`` (of ``y_true``), ``macro_f1`` (over the labels that occur in
        ``y_true``), ``per_label`` (``{label: {precision, recall, f1, support}}``), ``confusion`` (rows = true,
        columns = predicted, ``labels`` order) and ``ece`` (NaN without ``confidence``).

    Raises:
        JudgeError: lengths differ.
    """
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

    y_true, y_pred, labels = list(y_true), list(y_pred), list(labels)
    if len(y_true) != len(y_pred):
        raise JudgeError(f"classification_summary: {len(y_true)} true labels but {len(y_pred)} predictions")
    if not y_true:
        return {"n": 0, "accuracy": float("nan"), "majority_baseline": float("nan"), "macro_f1": float("nan"),
                "per_label": {}, "confusion": [], "ece": float("nan")}
    present = [lab for lab in labels if lab in set(y_true)]
    prec, rec, f1, sup = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    ece = float("nan")
    if confidence is not None:
        ece = expected_calibration_error(confidence, [a == b for a, b in zip(y_true, y_pred)])
    return {"n": len(y_true), "accuracy": float(accuracy_score(y_true, y_pred)),
            "majority_baseline": majority_baseline(y_true),
            "macro_f1": float(f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0)),
            "per_label": {str(lab): {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
                          for lab, p, r, f, s in zip(labels, prec, rec, f1, sup)},
            "confusion": confusion_matrix(y_true, y_pred, labels=labels).tolist(), "ece": ece}
