"""Stage-2 groups from ProsocialDialog and casual chat (method.md section 3), and where their negatives come from.

An unsafe context's negatives should differ from its gold reply in *stance*, not in topic: a casual reply from an
unrelated chat ("i like pounded yam and egusi") can be told apart from a prosocial reply by topic alone. The sources
(``stage2.negative_sources``, a reconstruction; each one a switch):

- ``near_topic``: the user's own next unsafe turn (labelled ``__needs_caution__`` or worse, so not a concession) in
  the ProsocialDialog contexts nearest to this one (cosine of sentence embeddings of the last
  :data:`NEAR_TOPIC_TURNS` utterances): the neighbour goes on with its unsafe plan, which as a reply to this
  context goes along with it, on the same topic.
- ``near_topic_mic``: MIC answers that violate their rule of thumb with ``violation-severity`` >=
  :data:`MIC_MIN_SEVERITY`, of the MIC questions nearest to this context.
- ``casual_reply``: a casual reply from an unrelated casual conversation (the first version's only source).
- ``preachy``: for a casual context, a gold reply written for an unsafe context.
- extra negatives the caller brings for a context (``extra_negatives``, e.g. the model's own replies that a judge
  flagged), counted as their own source.

The enabled unsafe sources share an unsafe group's K slots in the configured order (K = 3 with ``near_topic`` and
``near_topic_mic``: 2 + 1); a source that runs short leaves its slots to the others. Candidates only come from the
data given to the builder (one split), never from the context's own dialogue, never its gold reply.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config.schema import NEGATIVE_SOURCES, LossConfig, StageConfig
from .types import (
    BuildReport,
    ContrastiveGroup,
    GroupBuildError,
    _finish,
    _int,
    _rng,
    _rows,
    _text,
    make_group,
)

#: ``BuildReport.excluded`` reason: a casual turn with rules of thumb whose reply is not used as a chat-along negative.
ROT_GROUNDED_CASUAL = "casual turn with rules of thumb (a RoT-grounded reply, not chat-along)"
#: The last N utterances of a history that are embedded to find its nearest neighbours (reconstructed).
NEAR_TOPIC_TURNS = 3
#: A follow-up serves as a ``near_topic`` negative when its own turn is labelled at least this severe
#: (``SAFETY_SEVERITY``: 0.75 = ``__needs_caution__``); milder follow-ups often concede ("ok i'm gonna stop").
FOLLOWUP_MIN_SEVERITY = 0.75
#: A MIC answer serves as a ``near_topic_mic`` negative when it violates its rule of thumb at least this badly (1-5).
MIC_MIN_SEVERITY = 3
#: The sources of an unsafe context's negatives and of a casual context's (:data:`~prosocial_lib.config.schema.
#: NEGATIVE_SOURCES` is the union).
UNSAFE_SOURCES: tuple[str, ...] = ("near_topic", "near_topic_mic", "casual_reply")
CASUAL_SOURCES: tuple[str, ...] = ("preachy",)
NEAR_TOPIC_SOURCES: tuple[str, ...] = ("near_topic", "near_topic_mic")
#: What each source is, for the chapter's mix table.
SOURCE_DESCRIPTIONS: dict[str, str] = {
    "near_topic": "the user's own next unsafe turn in the nearest ProsocialDialog contexts (goes along, same topic)",
    "near_topic_mic": f"MIC answers violating their rule of thumb (severity >= {MIC_MIN_SEVERITY}) of the nearest "
                      "MIC questions",
    "casual_reply": "a casual reply from an unrelated casual conversation (ignores the problem, other topic)",
    "preachy": "a gold reply written for an unsafe context (a lecture in small talk)",
    "extra": "replies the caller brought for this context (e.g. the model's own, flagged by a judge)",
}
_TOP = 64  # neighbours ranked per context before a full sort is needed (most contexts never need it)

Embed = Callable[[Sequence[str]], np.ndarray]


# ---------------------------------------------------------------------- stage 2: ProsocialDialog + casual chat
def _history_messages(history: list[str]) -> list[dict[str, str]]:
    from ..data.dialogue import history_to_messages
    return history_to_messages(list(history))


def _turns(prosocial_ds):
    """Per-turn rows (history, response, safety_label, ...): accepts hub rows or ``dialogue_turns`` output."""
    cols = prosocial_ds.column_names if hasattr(prosocial_ds, "column_names") else list(prosocial_ds[0])
    if "history" in cols:
        return _rows(prosocial_ds)
    from ..data.dialogue import dialogue_turns
    return _rows(dialogue_turns(prosocial_ds))


def context_key(history: Sequence[str] | Sequence[Mapping[str, str]]) -> str:
    """The key of a context in ``extra_negatives``: its utterances, oldest first, joined by newlines.

    Args:
        history: the utterances (strings), or chat messages (``{"role", "content"}``; system messages skipped),
            e.g. a group's ``context_messages``.

    Returns:
        The key (a string).

    >>> context_key(["I'll key his car.", "Please don't.", "He deserves it."])
    "I'll key his car.\\nPlease don't.\\nHe deserves it."
    """
    return "\n".join(m["content"] if isinstance(m, Mapping) else str(m) for m in history
                     if not (isinstance(m, Mapping) and m.get("role") == "system"))


def near_topic_text(history: Sequence[str]) -> str:
    """The text of a context that is embedded to find its neighbours: its last :data:`NEAR_TOPIC_TURNS`
    utterances, one per line."""
    return "\n".join(str(h) for h in list(history)[-NEAR_TOPIC_TURNS:])


def build_stage2_groups(prosocial_ds, casual_ds, loss: LossConfig, stage: StageConfig, *, seed: int = 0,
                        max_groups: int | None = -1, where: str = "ProsocialDialog", mic_ds=None,
                        embed: Embed | None = None, extra_negatives: Mapping[str, Sequence[str]] | None = None,
                        extra_origin: str = "extra", split: str | None = None
                        ) -> tuple[list[ContrastiveGroup], BuildReport]:
    """Stage-2 groups from ProsocialDialog turns and casual chat (rules in :mod:`prosocial_lib.groups.types`; the
    negative sources in this module's docstring).

    Args:
        prosocial_ds: hub-column rows (turned into per-turn histories with ``data.dialogue_turns``) or its output.
        casual_ds: rows ``(history: list[str], response, source)``, or None.
        loss: the ``loss`` section: ``num_negatives`` (K) and ``social_alpha``.
        stage: the ``stage2`` section: ``max_groups``, ``casual_fraction`` and ``negative_sources``.
        seed: the root seed (``Config.seed``); contexts and random negatives are drawn with it, each random source
            from a stream of its own (the near-topic ones are the nearest, no draw).
        max_groups: cap on groups (default -1 = ``stage.max_groups``; None = every unsafe turn plus casual
            ones in proportion); ``casual_fraction`` of them come from casual contexts.
        where: names the data in error messages.
        mic_ds: MIC rows of the same split (``data.load_mic``), for ``near_topic_mic``; None: that source is
            empty (a warning in the report).
        embed: texts -> ``(n, d)`` unit vectors (float), for the near-topic sources; None: the all-MiniLM-L6-v2
            encoder of :mod:`prosocial_lib.modeling.sentence_encoder` (in memory only; the stage runner passes
            one with a file cache). Called once per build, only when a near-topic source has slots to fill.
        extra_negatives: context key (:func:`context_key` of the history) -> replies to use as negatives for that
            context before any configured source (any kind of context; counted as ``extra_origin``; severity: the
            context's). They must come from the same split: the builder cannot check that.
        extra_origin: the name of the extra negatives in ``meta["neg_origin"]`` and the report.
        split: the split the data comes from; MIC rows whose ``split`` column names another split are an error.

    Returns:
        ``(groups, report)``: the :class:`ContrastiveGroup` list (``meta["kind"]`` "unsafe" or "casual", in a
        seeded random order; ``meta["neg_origin"]`` names each negative's source and ``meta["neg_similarity"]``
        its cosine to the context for the near-topic sources, else None) and the :class:`BuildReport`
        (``negatives``: counts per kind and source; ``similarity``: mean cosine per near-topic source).

    Raises:
        GroupBuildError: an unknown safety label or negative source, a non-string text, a MIC row from another
            split, malformed ``extra_negatives`` or embeddings, or no replies at all to take an enabled kind's
            negatives from.

    Chapter 03 shows the groups and the report.
    """
    max_groups = stage.max_groups if max_groups == -1 else max_groups
    k, alpha, frac = loss.num_negatives, loss.social_alpha, stage.casual_fraction
    sources = list(stage.negative_sources)
    unknown = [s for s in sources if s not in NEGATIVE_SOURCES]
    if unknown:
        raise GroupBuildError(f"stage2.negative_sources: unknown source {unknown[0]!r}; expected some of "
                              f"{', '.join(NEGATIVE_SOURCES)}")
    extra = _extra_map(extra_negatives, extra_origin)
    report = BuildReport(stage=2)
    report.negative_sources = sources + ([extra_origin] if extra else [])
    unsafe, casual, casual_replies, preachy_replies = _contexts(prosocial_ds, casual_ds, where, report)
    report.candidates = len(unsafe) + len(casual)
    rng = _rng(seed, 2)
    n_unsafe, n_casual = _counts(len(unsafe), len(casual), max_groups, frac, report)
    pools = {"casual_reply": casual_replies, "preachy": preachy_replies,
             "near_topic": _followups(unsafe), "near_topic_mic": _mic_pool(mic_ds, split)}
    _check_pools(sources, pools, n_unsafe, n_casual, bool(extra), where, report)
    pick_unsafe = rng.permutation(len(unsafe))[:n_unsafe]
    pick_casual = rng.permutation(len(casual))[:n_casual]
    picked = [("unsafe", unsafe[j]) for j in pick_unsafe] + [("casual", casual[j]) for j in pick_casual]
    picked = [picked[j] for j in rng.permutation(len(picked))]
    # each random source draws from a stream of its own: switching one source never changes another's negatives
    draws = {s: _rng(seed, 2, 1 + i) for i, s in enumerate(NEGATIVE_SOURCES)}
    near = _NearTopic.build([s for s in sources if s in NEAR_TOPIC_SOURCES and pools[s]], pools,
                            [c for kind, c in picked if kind == "unsafe"], embed, where)

    groups, sims, extra_used = [], {s: [] for s in NEAR_TOPIC_SOURCES}, 0
    for kind, ctx in picked:
        wanted = [s for s in sources if s in (UNSAFE_SOURCES if kind == "unsafe" else CASUAL_SOURCES)]
        mine = extra.get(context_key(ctx["history"]), [])
        extra_used += bool(mine)
        feeds = [(s, _feed(s, pools[s], ctx, k, draws[s], kind, near)) for s in wanted]
        chosen = _fill(k, ctx, [(extra_origin, iter([(r, ctx["severity"], None) for r in mine]))], feeds)
        if len(chosen) < k and (wanted or mine):
            report.skipped["negative slots left empty (reply pool too small)"] += k - len(chosen)
        for reply, origin, _, sim in chosen:
            report.negatives.setdefault(kind, Counter())[origin] += 1
            if sim is not None:
                sims[origin].append(sim)
        meta = {"stage": 2, "kind": kind, "safety_label": ctx["label"], "context_severity": ctx["severity"],
                "source": ctx["source"], "dialogue": list(ctx["dialogue"]), "response_id": ctx["response_id"],
                "neg_origin": [c[1] for c in chosen],
                "neg_similarity": [None if c[3] is None else round(c[3], 4) for c in chosen]}
        groups.append(make_group(_history_messages(ctx["history"]), ctx["positive"], [c[0] for c in chosen],
                                 [c[2] for c in chosen], alpha, meta))
    report.similarity = {s: float(np.mean(v)) for s, v in sims.items() if v}
    if extra:
        report.notes.append(f"{extra_origin} negatives were given for {len(extra)} contexts; {extra_used} of them "
                            "are groups here")
    if n_casual and not [s for s in sources if s in CASUAL_SOURCES] and not extra:
        report.notes.append("no negative source for casual contexts: their groups train the positive only (CE)")
    if n_unsafe and not [s for s in sources if s in UNSAFE_SOURCES] and not extra:
        report.notes.append("no negative source for unsafe contexts: their groups train the positive only (CE)")
    report.groups = len(groups)
    return groups, _finish(report)


def _contexts(prosocial_ds, casual_ds, where: str, report: BuildReport):
    """The candidate contexts and the two reply pools.

    Returns ``(unsafe, casual, casual_replies, preachy_replies)``: contexts are dicts (history, positive,
    severity, label, dialogue, source, response_id); ``casual_replies`` ``(reply, dialogue key)`` chat along;
    ``preachy_replies`` ``(reply, severity of its context, dialogue key)`` are gold replies of unsafe contexts.

    A ``__casual__`` turn that keeps rules of thumb (inside an unsafe dialogue the speaker concedes, and the gold
    reply is still RoT-grounded guidance) stays a casual context but its reply is kept out of ``casual_replies``:
    as a negative of an unsafe context it would push the model away from a prosocial reply with the largest
    weight. ``report.excluded`` counts these replies (:data:`ROT_GROUNDED_CASUAL`).
    """
    from ..data.labels import SAFETY_SEVERITY

    unsafe, casual = [], []
    casual_replies: list[tuple[str, Any]] = []
    preachy_replies: list[tuple[str, float, Any]] = []
    for i, row in enumerate(_turns(prosocial_ds)):
        label = row.get("safety_label")
        if label not in SAFETY_SEVERITY:
            raise GroupBuildError(f"{where}, turn {i}, field 'safety_label': unknown label {label!r}; "
                                  f"expected one of {', '.join(SAFETY_SEVERITY)}")
        response = _text(row, "response", where, i, required=False)
        history = row.get("history") or []
        if not response or not history:
            report.skipped["turn without response or history"] += 1
            continue
        sev = float(SAFETY_SEVERITY[label])
        key = ("pd", row.get("dialogue_id"))
        ctx = {"history": history, "positive": response, "severity": sev, "label": label, "dialogue": key,
               "source": row.get("source") or "prosocial_dialog", "response_id": row.get("response_id")}
        if sev == 0.0:
            casual.append(ctx)
            if row.get("rots"):  # the speaker conceded but the reply still gives the rule: guidance, not chat
                report.excluded[ROT_GROUNDED_CASUAL] += 1
            else:
                casual_replies.append((response, key))
        else:
            unsafe.append(ctx)
            preachy_replies.append((response, sev, key))
    for i, row in enumerate(_rows(casual_ds) if casual_ds is not None else []):
        response = _text(row, "response", "casual chat", i, required=False)
        history = row.get("history") or []
        if not response or not history:
            report.skipped["casual chat row without response or history"] += 1
            continue
        key = ("casual", i)
        casual.append({"history": history, "positive": response, "severity": 0.0, "label": "__casual__",
                       "dialogue": key, "source": row.get("source") or "casual", "response_id": None})
        casual_replies.append((response, key))
    return unsafe, casual, casual_replies, preachy_replies


def _counts(have_unsafe: int, have_casual: int, max_groups: int | None, frac: float,
            report: BuildReport) -> tuple[int, int]:
    """How many unsafe and casual groups to build; a shortfall is a warning in the report."""
    if max_groups is None:
        n_unsafe = have_unsafe if frac < 1 else 0
        n_casual = have_casual if frac >= 1 else min(have_casual, round(n_unsafe * frac / (1 - frac)))
    else:
        n_casual = round(max_groups * frac)
        n_unsafe = max_groups - n_casual
    for kind, want, have in (("unsafe", n_unsafe, have_unsafe), ("casual", n_casual, have_casual)):
        if want > have:
            report.warnings.append(f"wanted {want} {kind} groups, the data has {have} {kind} contexts")
    return min(n_unsafe, have_unsafe), min(n_casual, have_casual)


def _random_feed(pool: list[tuple], ctx: dict[str, Any], k: int, rng: np.random.Generator, kind: str
                 ) -> Iterator[tuple[str, float, None]]:
    """Replies of ``pool`` in a seeded random order, not from the context's own dialogue, as ``(reply, severity,
    None)``: severity is the context's for an unsafe context, the reply's own context's for a casual one.

    ``k`` sizes the first draw (the slots this source fills): a few random draws usually suffice, a tiny pool is
    permuted, and unlucky draws finish with a full permutation drawn only when needed, so the cost does not grow
    with the pool. Nothing is drawn until the first reply is asked for."""
    n = len(pool)
    draws = rng.integers(0, n, size=min(n, 4 * k + 8)) if n > 16 * k else rng.permutation(n)

    def candidates():
        yield from draws
        if n > 16 * k:
            yield from rng.permutation(n)

    for j in candidates():
        item = pool[int(j)]
        if item[-1] == ctx["dialogue"]:
            continue
        yield item[0], (ctx["severity"] if kind == "unsafe" else float(item[1])), None


def _feed(source: str, pool: list[tuple], ctx: dict[str, Any], k: int, rng: np.random.Generator, kind: str,
          near: _NearTopic) -> Iterator[tuple[str, float, float | None]]:
    """The candidates of one source for one context, best first, as ``(reply, severity, cosine or None)``."""
    if source in NEAR_TOPIC_SOURCES:
        return near.candidates(source, ctx)
    return _random_feed(pool, ctx, k, rng, kind) if pool else iter(())


def _fill(k: int, ctx: dict[str, Any], first: list[tuple[str, Iterator]], shared: list[tuple[str, Iterator]]
          ) -> list[tuple[str, str, float, float | None]]:
    """Up to ``k`` distinct negatives ``(reply, origin, severity, cosine)``: ``first`` feeds (the caller's extra
    negatives) take what they have, then the ``shared`` feeds split the remaining slots in order (K = 3 over two
    sources: 2 + 1) and fill each other's shortfall in the same order. Never the context's gold reply."""
    seen = {ctx["positive"]}
    out: list[tuple[str, str, float, float | None]] = []

    def take(origin: str, feed: Iterator, n: int) -> None:
        while n > 0:
            item = next(feed, None)
            if item is None:
                return
            reply, sev, sim = item
            if not isinstance(reply, str) or not reply.strip() or reply in seen:
                continue
            seen.add(reply)
            out.append((reply, origin, sev, sim))
            n -= 1

    for origin, feed in first:
        take(origin, feed, k - len(out))
    left = k - len(out)
    for i, (origin, feed) in enumerate(shared):
        take(origin, feed, left // len(shared) + (i < left % len(shared)))
    for origin, feed in shared:
        take(origin, feed, k - len(out))
    return out


def _extra_map(extra: Mapping[str, Sequence[str]] | None, origin: str) -> dict[str, list[str]]:
    """``extra_negatives`` checked: context key -> a list of replies."""
    if not extra:
        return {}
    if not isinstance(extra, Mapping):
        raise GroupBuildError(f"extra_negatives must map a context key (context_key) to replies, got "
                              f"{type(extra).__name__}")
    out = {}
    for key, replies in extra.items():
        if not isinstance(key, str) or isinstance(replies, str) or not isinstance(replies, Sequence) or not all(
                isinstance(r, str) for r in replies):
            raise GroupBuildError(f"extra_negatives ({origin}): entry {str(key)[:60]!r} must map a string context "
                                  "key to a list of reply strings")
        out[key] = list(replies)
    return out


def _followups(unsafe: list[dict[str, Any]]) -> list[tuple[str, Any, str]]:
    """The ``near_topic`` pool: ``(follow-up, dialogue key, anchor text)`` for each unsafe turn whose next turn in
    its dialogue is labelled at least :data:`FOLLOWUP_MIN_SEVERITY`; the follow-up is that next turn's user
    utterance (the user going on with the plan), the anchor is :func:`near_topic_text` of the turn it follows."""
    by_dialogue: dict[Any, dict[int, dict[str, Any]]] = {}
    for ctx in unsafe:
        rid = ctx["response_id"]
        if ctx["dialogue"][1] is not None and isinstance(rid, (int, np.integer)):
            by_dialogue.setdefault(ctx["dialogue"], {})[int(rid)] = ctx
    pool = []
    for key, turns in by_dialogue.items():
        for rid, ctx in sorted(turns.items()):
            nxt = turns.get(rid + 1)
            if nxt is not None and nxt["severity"] >= FOLLOWUP_MIN_SEVERITY:
                pool.append((nxt["history"][-1], key, near_topic_text(ctx["history"])))
    return pool


def _mic_pool(mic_ds, split: str | None) -> list[tuple[str, Any, str]]:
    """The ``near_topic_mic`` pool: ``(answer, ("mic", question), question)`` for each distinct MIC answer that
    violates a rule of thumb (``A_agrees`` 0) with ``violation-severity`` >= :data:`MIC_MIN_SEVERITY`.

    Raises:
        GroupBuildError: a row whose ``split`` is not ``split``, or a malformed row (names the row and field).
    """
    if mic_ds is None:
        return []
    from ..data.labels import normalise_split
    want = None if split is None else normalise_split(split)
    pool, seen = [], set()
    for i, row in enumerate(_rows(mic_ds)):
        if want is not None and row.get("split") is not None and normalise_split(row["split"]) != want:
            raise GroupBuildError(f"MIC (near_topic_mic negatives), row {i}, field 'split': {row['split']!r} is not "
                                  f"the split being built ({split!r}); negatives never cross splits")
        where = "MIC (near_topic_mic negatives)"
        if _int(row, "A_agrees", where, i, (0, 1, 2)) != 0:
            continue
        if _int(row, "violation-severity", where, i, (-1, 1, 2, 3, 4, 5)) < MIC_MIN_SEVERITY:
            continue
        q, a = _text(row, "Q", where, i), _text(row, "A", where, i, required=False)
        if a and (q, a) not in seen:
            seen.add((q, a))
            pool.append((a, ("mic", q), q))
    return pool


def _check_pools(sources: list[str], pools: dict[str, list], n_unsafe: int, n_casual: int, has_extra: bool,
                 where: str, report: BuildReport) -> None:
    """An enabled source with nothing to give is a warning; a kind of context whose enabled sources are all empty
    is an error (unless the caller brings extra negatives)."""
    for kind, n, kind_sources in (("unsafe", n_unsafe, UNSAFE_SOURCES), ("casual", n_casual, CASUAL_SOURCES)):
        enabled = [s for s in sources if s in kind_sources]
        if not n or not enabled:
            continue
        empty = [s for s in enabled if not pools[s]]
        if len(empty) == len(enabled) and not has_extra:
            raise GroupBuildError(f"{where}: no replies to use as negatives for {kind} contexts: the enabled "
                                  f"sources ({', '.join(enabled)}) have none in this data")
        for s in empty:
            report.warnings.append(f"negative source {s!r} has no replies in this data; its slots go to the others")


@dataclass
class _NearTopic:
    """Nearest-neighbour rankings of the near-topic pools for the unsafe contexts being built.

    ``vectors[source]`` is the ``(n_pool, d)`` matrix of the pool's anchor embeddings; ``top[source][i]`` holds the
    :data:`_TOP` nearest pool rows of context ``i`` (by its ``near_topic_text``), best first, ties by pool order."""

    pools: dict[str, list[tuple[str, Any, str]]]
    index: dict[str, int]  # near_topic_text of a context -> its row in ``contexts``
    contexts: np.ndarray
    vectors: dict[str, np.ndarray]
    top: dict[str, dict[int, np.ndarray]]

    @classmethod
    def build(cls, sources: list[str], pools: dict[str, list], unsafe: list[dict[str, Any]], embed: Embed | None,
              where: str) -> _NearTopic:
        """Embed the contexts and the pools' anchors (one ``embed`` call) and rank the neighbours."""
        near = cls({s: pools[s] for s in sources}, {}, np.zeros((0, 0), np.float32), {}, {s: {} for s in sources})
        if not sources or not unsafe:
            return near
        ctx_texts = list(dict.fromkeys(near_topic_text(c["history"]) for c in unsafe))
        anchors = list(dict.fromkeys(item[2] for s in sources for item in pools[s]))
        texts = list(dict.fromkeys(ctx_texts + anchors))
        vecs = _embed_checked(embed if embed is not None else _default_embed(), texts, where)
        row = {t: i for i, t in enumerate(texts)}
        near.index = {t: i for i, t in enumerate(ctx_texts)}
        near.contexts = vecs[[row[t] for t in ctx_texts]]
        for s in sources:
            near.vectors[s] = vecs[[row[item[2]] for item in pools[s]]]
            m = min(len(pools[s]), _TOP)
            for start in range(0, len(ctx_texts), 512):
                sims = near.contexts[start:start + 512] @ near.vectors[s].T
                for i, srow in enumerate(sims, start):
                    near.top[s][i] = _best(srow, m)
        return near

    def candidates(self, source: str, ctx: dict[str, Any]) -> Iterator[tuple[str, float, float]]:
        """The pool's replies for ``ctx``, nearest anchor first, as ``(reply, ctx severity, cosine)``: never from
        the context's own dialogue, never a repeat of one of its own utterances."""
        pool = self.pools.get(source) or []
        if not pool:
            return
        i = self.index[near_topic_text(ctx["history"])]
        own = set(ctx["history"])
        sims = None
        order = self.top[source][i]
        for rank in range(2):
            for j in order:
                reply, key, _ = pool[int(j)]
                if key == ctx["dialogue"] or reply in own:
                    continue
                if sims is None:
                    sims = self.vectors[source] @ self.contexts[i]
                yield reply, ctx["severity"], float(sims[int(j)])
            if rank == 0 and len(order) < len(pool):  # the ranked top ran out: the rest, fully sorted
                sims = self.vectors[source] @ self.contexts[i]
                rest = np.setdiff1d(np.arange(len(pool)), order)
                order = rest[np.lexsort((rest, -sims[rest]))]
            else:
                return


def _best(sims: np.ndarray, m: int) -> np.ndarray:
    """Indices of the ``m`` largest values of ``sims``, largest first, ties by index."""
    idx = np.arange(len(sims)) if m >= len(sims) else np.argpartition(-sims, m - 1)[:m]
    return idx[np.lexsort((idx, -sims[idx]))]


def _embed_checked(embed: Embed, texts: list[str], where: str) -> np.ndarray:
    """``embed(texts)`` as a ``(len(texts), d)`` float32 matrix of unit rows.

    Raises:
        GroupBuildError: another shape, or values that are not finite."""
    vecs = np.asarray(embed(texts), dtype=np.float32)
    if vecs.ndim != 2 or vecs.shape[0] != len(texts) or not np.isfinite(vecs).all():
        raise GroupBuildError(f"{where}: the sentence embedder returned {vecs.shape} values for {len(texts)} texts "
                              "(expected one finite vector per text)")
    norms = np.linalg.norm(vecs, axis=1, keepdims=True)
    return vecs / np.where(norms > 0, norms, 1.0)


def _default_embed() -> Embed:
    """The all-MiniLM-L6-v2 encoder on the CPU, in memory (:func:`~prosocial_lib.modeling.sentence_encoder.
    shared_encoder`)."""
    from ..modeling.sentence_encoder import shared_encoder
    return shared_encoder("cpu").encode


def stage2_negative_inputs(stage: StageConfig, *, mic_source: str, split: str, max_rows: int | None,
                           cache_dir: str | Path, device: str = "auto") -> dict[str, Any]:
    """What :func:`build_stage2_groups` needs for ``stage.negative_sources`` beyond the dialogues (the stage
    runner's call).

    Args:
        stage: the ``stage2`` section.
        mic_source: ``data.mic_source``; MIC is loaded only for ``near_topic_mic``.
        split: the split being built; MIC comes from the same one.
        max_rows: ``data.max_train_examples`` or ``data.max_eval_examples``, the MIC cap.
        cache_dir: folder of the embedding cache (``<cache_dir>/<encoder name>.npz``).
        device: ``model.device`` ("auto" | "cpu" | "cuda" | "mps"), where the sentence encoder runs.

    Returns:
        Keyword arguments: ``split``, and ``mic_ds`` and ``embed`` when a near-topic source asks for them.

    Raises:
        FileNotFoundError, DataFormatError: from ``load_mic``.
    """
    out: dict[str, Any] = {"split": split}
    if "near_topic_mic" in stage.negative_sources:
        from ..data.mic import load_mic
        out["mic_ds"] = load_mic(mic_source, split=split, max_rows=max_rows)
    if any(s in NEAR_TOPIC_SOURCES for s in stage.negative_sources):
        from ..modeling.loading import resolve_device
        from ..modeling.sentence_encoder import cached_embedder, shared_encoder
        enc = shared_encoder(str(resolve_device(device)))
        out["embed"] = cached_embedder(Path(cache_dir) / f"{enc.name}.npz", enc)
    return out
