"""Logistic-regression heads on sentence embeddings, and their held-out evaluation."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .encoder import JudgeError


@dataclass
class LinearHead:
    """A trained logistic-regression head stored as plain arrays, so saved judges load in any scikit-learn
    version. Binary heads have one weight row (sigmoid), multi-class heads one per class (softmax)."""

    classes: list
    coef: np.ndarray  # (1, d) binary | (k, d) multinomial
    intercept: np.ndarray  # (1,) | (k,)

    def decision(self, X: np.ndarray) -> np.ndarray:
        """``(n, 1)`` (binary) or ``(n, k)`` decision values ``X @ coef.T + intercept`` (float64) of ``(n, d)``
        features."""
        return np.asarray(X, dtype=np.float64) @ self.coef.T.astype(np.float64) + self.intercept.astype(np.float64)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """``(n, len(classes))`` class probabilities of ``(n, d)`` features (sigmoid for one weight row, else
        softmax); columns in :attr:`classes` order."""
        z = self.decision(X)
        if len(self.classes) == 2 and z.shape[1] == 1:
            p = 1.0 / (1.0 + np.exp(-z[:, 0]))
            return np.stack([1.0 - p, p], axis=1)
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """``(n,)`` most probable class of each row of ``(n, d)`` features."""
        return np.asarray(self.classes, dtype=object)[self.predict_proba(X).argmax(axis=1)]


def fit_head(X: np.ndarray, y: Sequence, *, C: float = 4.0, balanced: bool = False, seed: int = 0) -> LinearHead:
    """Fit an L2 logistic regression (lbfgs, multinomial for > 2 classes). ``balanced`` reweights classes
    inversely to their frequency (for the binary flags, whose positives are rarer). Deterministic.

    Args:
        X: ``(n, d)`` features (sentence embeddings, or :func:`~.encoder.pair_features`).
        y: ``n`` labels, at least two distinct.
        C: inverse L2 strength (``eval.judge_C``).
        balanced: ``class_weight="balanced"``.
        seed: scikit-learn's ``random_state``.

    Returns:
        The fitted :class:`LinearHead` (float32 arrays).

    Raises:
        JudgeError: fewer than two classes in ``y``.

    References:
        scikit-learn's ``LogisticRegression`` (lbfgs); Reimers & Gurevych (2019) for heads on sentence embeddings.
    """
    from sklearn.linear_model import LogisticRegression

    y = list(y)
    if len(set(y)) < 2:
        raise JudgeError(f"a judge head needs at least two classes in its training data, got only {sorted(set(y))}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # lbfgs convergence chatter on tiny data
        lr = LogisticRegression(C=C, max_iter=2000, class_weight="balanced" if balanced else None,
                                random_state=seed)
        lr.fit(np.asarray(X, dtype=np.float64), y)
    return LinearHead(classes=list(lr.classes_.tolist()), coef=lr.coef_.astype(np.float32),
                      intercept=lr.intercept_.astype(np.float32))


# ====================================================================== the judges
def evaluate_head(head: LinearHead, X: np.ndarray, y: Sequence, classes: Sequence) -> dict[str, Any]:
    """Accuracy, macro-F1, the majority-class baseline OF THE SCORED EXAMPLES and the confusion matrix (rows =
    true class, columns = predicted, in ``classes`` order) of a head on test examples
    (:func:`~.validation.classification_summary`).

    Args:
        head: the trained head.
        X: ``(n, d)`` test features.
        y: ``n`` test labels, each in ``classes``.
        classes: the class order of the confusion matrix.

    Returns:
        ``n_test``, ``classes``, ``accuracy``, ``macro_f1`` (over classes that occur), ``majority_baseline``
        (shares in [0, 1]; NaN without test examples), ``confusion`` (a list of rows) and ``per_label``.
    """
    from .validation import classification_summary

    y = list(y)
    pred = head.predict(X).tolist() if y else []
    summary = classification_summary(y, pred, classes)
    return {"n_test": len(y), "classes": list(classes), "accuracy": summary["accuracy"],
            "macro_f1": summary["macro_f1"], "majority_baseline": summary["majority_baseline"],
            "confusion": summary["confusion"], "per_label": summary["per_label"]}


def profanity_prob(texts: Sequence[str]) -> np.ndarray:
    """``alt-profanity-check``'s probability that each text is profane (a secondary signal only).

    Args:
        texts: the replies.

    Returns:
        ``(len(texts),)`` probabilities in [0, 1].
    """
    texts = [str(t) for t in texts]
    if not texts:
        return np.zeros(0)
    from profanity_check import predict_prob

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn version chatter from the bundled model
        return np.asarray(predict_prob(texts), dtype=float)
