"""Lists of texts: the one tokenizer and the one distinct-n of the book, the guard every metric over a list of
replies uses so that a bare ``str`` is refused instead of being scored character by character, and where a
sentence ends (generation trims replies cut by the token limit; the quality tables count replies that end
mid-sentence).

The data chapter (variety table, quality gates), its exercise and the evaluation's quality table
(:mod:`prosocial_lib.eval.quality`) all compute distinct-n here. Layer: data.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from typing import Any

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def text_list(texts: Any, name: str = "texts", *, strings: bool = True) -> list:
    """``texts`` as a list, refusing a bare ``str`` (or ``bytes``) where a list of texts is expected.

    A ``str`` is itself a sequence of one-character strings, so without this check ``distinct_n("hello world", 1)``
    would count characters (0.7 instead of 1.0) and a unigram F1 of two bare strings would compare letters.

    Args:
        texts: a list, tuple, pandas Series or any other iterable of texts.
        name: the argument's name, for the message.
        strings: also require every item to be a ``str``.

    Returns:
        A new list of the items.

    Raises:
        TypeError: ``texts`` is a ``str`` or ``bytes``, is not iterable, or (``strings``) holds a non-string.

    References:
        sacrebleu refuses a bare string the same way (mjpost/sacrebleu#99).
    """
    if isinstance(texts, (str, bytes)):
        raise TypeError(f"{name}: expected a list of texts (replies), got a single {type(texts).__name__} "
                        f"{texts[:40]!r}; wrap one text in a list: [text]")
    try:
        out = list(texts)
    except TypeError:
        raise TypeError(f"{name}: expected a list of texts, got {type(texts).__name__}") from None
    if strings:
        for i, t in enumerate(out):
            if not isinstance(t, str):
                raise TypeError(f"{name}[{i}]: expected a str, got {type(t).__name__} {t!r:.40}")
    return out


def words(text: str) -> list[str]:
    """Lower-cased word tokens (letters, digits, an apostrophe inside a word); punctuation is not a word.

    Raises:
        TypeError: ``text`` is not a ``str``.
    """
    if not isinstance(text, str):
        raise TypeError(f"words: expected a str, got {type(text).__name__}")
    return _WORD.findall(text.lower())


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    """The ``n``-grams of a token list, in order (a bare ``str`` is refused: it would give character n-grams).

    Raises:
        TypeError: ``tokens`` is a ``str``.
    """
    tokens = text_list(tokens, "tokens")
    return [tuple(tokens[i: i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(texts: Iterable[str], n: int = 2) -> float:
    """Corpus-level distinct-n: the number of distinct n-grams divided by the number of all n-grams over all texts.

    This is Li et al.'s definition (distinct n-grams scaled by the total number of generated n-grams, counted over
    the whole set of replies, not averaged per reply). Tokens are :func:`words`: lower-cased words, punctuation not
    counted - a full stop or comma repeats in nearly every reply, so counting it would lower the score by an
    amount that depends on punctuation habits rather than on vocabulary. 1.0 = no n-gram repeats anywhere.

    Args:
        texts: the replies (a list; a bare ``str`` is refused).
        n: the n-gram order, >= 1 (1 and 2 in chapters 00, 01 and 04).

    Returns:
        A share in (0, 1], or NaN when the texts hold no n-gram at all (e.g. only one-word texts for n = 2).

    Raises:
        TypeError: ``texts`` is a bare ``str`` or holds a non-string.
        ValueError: ``n < 1``.

    References:
        Li, Galley, Brockett, Gao & Dolan (2016), "A Diversity-Promoting Objective Function for Neural
        Conversation Models", NAACL (section 4.3, distinct-1 and distinct-2).

    Example:
        >>> distinct_n(["a b a", "b a"], 1)
        0.4
    """
    texts = text_list(texts, "texts")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    total, unique = 0, set()
    for text in texts:
        grams = ngrams(words(text), n)
        total += len(grams)
        unique.update(grams)
    return len(unique) / total if total else math.nan


# ---------------------------------------------------------------------- sentence ends (generation, reply quality)
#: Sentence-final punctuation: full stop, question and exclamation marks, the ellipsis character, and their
#: full-width / CJK forms.
SENTENCE_FINAL = ".!?…。！？"
#: What may follow sentence-final punctuation and still close the sentence: closing quotes and brackets.
_CLOSERS = "\"')]}»”’"
_SENTENCE_END = re.compile(rf"[{re.escape(SENTENCE_FINAL)}]+[{re.escape(_CLOSERS)}]*(?=\s|$)")


def ends_sentence(text: str) -> bool:
    """True when ``text`` (surrounding whitespace ignored) ends a sentence: its last character is sentence-final
    punctuation (:data:`SENTENCE_FINAL`), possibly followed by closing quotes or brackets, or it is a symbol such
    as an emoji (Unicode category ``So``: a chat reply that ends on one is finished). An empty text ends no
    sentence.

    Raises:
        TypeError: ``text`` is not a ``str``.

    Example:
        >>> ends_sentence('He said "stop."'), ends_sentence("I think that")
        (True, False)
    """
    import unicodedata

    if not isinstance(text, str):
        raise TypeError(f"ends_sentence: expected a str, got {type(text).__name__}")
    t = text.rstrip().rstrip(_CLOSERS)
    if not t:
        return False
    return t[-1] in SENTENCE_FINAL or unicodedata.category(t[-1]) == "So"


def trim_to_sentence(text: str) -> str:
    """``text`` cut back after its last complete sentence; unchanged when it already ends one
    (:func:`ends_sentence`) or has no sentence boundary at all (then nothing would be left).

    A boundary is sentence-final punctuation (:data:`SENTENCE_FINAL`, a run of it such as ``"?!"`` or ``"..."``
    counts once), optionally followed by closing quotes or brackets, then whitespace. Punctuation inside a token
    (``"3.5"``, ``"e.g.x"``) is no boundary; an abbreviation followed by a space (``"Mr. Smith"``) is one - the
    rule is a heuristic for replies cut by a token limit, not a sentence splitter.

    Args:
        text: one reply.

    Returns:
        The trimmed reply, without trailing whitespace.

    Raises:
        TypeError: ``text`` is not a ``str``.

    Example:
        >>> trim_to_sentence("I'm sorry to hear that. Maybe you could talk to")
        "I'm sorry to hear that."
    """
    if not isinstance(text, str):
        raise TypeError(f"trim_to_sentence: expected a str, got {type(text).__name__}")
    if ends_sentence(text):
        return text.rstrip()
    ends = [m.end() for m in _SENTENCE_END.finditer(text)]
    return text[: ends[-1]].rstrip() if ends else text
