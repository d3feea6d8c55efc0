"""The frozen sentence encoder (MiniLM) under the judges, and how contexts and replies become its text."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# the encoder lives in modeling/ (stage 2's near-topic negatives use it too); re-exported for the judges
from ...modeling.sentence_encoder import (  # noqa: F401
    ENCODER_NAME,
    SentenceEncoder,
    SentenceEncoderError,
    _read_npz_cache,
    encoder_path,
    text_key,
)


class JudgeError(ValueError):
    """Input the judges cannot score, or judge data that cannot train them."""


# ====================================================================== features and linear heads
def context_text(history: Sequence[str] | str, turns: int = 1) -> str:
    """The text a judge reads as the context: the last ``turns`` utterances of ``history``, one per line.

    Args:
        history: the turns (oldest first), or one string (returned as is).
        turns: how many of the last turns to keep (at least 1; ``eval.judge_context_turns``).

    Returns:
        The context text.

    Raises:
        JudgeError: an empty history.
    """
    if isinstance(history, str):
        return history
    history = [str(h) for h in history]
    if not history:
        raise JudgeError("empty history: there is no context to judge a reply against")
    return "\n".join(history[-max(1, int(turns)):])


def pair_features(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Features of a (context, reply) pair from their embeddings: ``[u, v, u * v, |u - v|]`` (InferSent's
    matching features). The products let a linear head react to how the reply relates to the context.

    Args:
        u: ``(n, d)`` context embeddings.
        v: ``(n, d)`` reply embeddings.

    Returns:
        ``(n, 4d)`` float32 features.

    Raises:
        JudgeError: ``u`` and ``v`` differ in shape.

    References:
        Conneau et al. (2017), "Supervised Learning of Universal Sentence Representations from Natural Language
        Inference Data" (InferSent).
    """
    u = np.asarray(u, dtype=np.float32)
    v = np.asarray(v, dtype=np.float32)
    if u.shape != v.shape:
        raise JudgeError(f"pair_features: context embeddings {u.shape} and reply embeddings {v.shape} differ")
    return np.hstack([u, v, u * v, np.abs(u - v)])
