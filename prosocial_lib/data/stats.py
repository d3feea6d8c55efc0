"""Figures that describe a dataset: label and source shares, lengths, MIC's moral annotations, split overlap and
the variety of the text (distinct-n, near-duplicates). The data chapter, the CLI and the tests all use these."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence

import datasets
import pandas as pd

from .labels import MIC_AGREEMENT, MIC_CONSENSUS, MIC_SEVERITY, MORAL_FOUNDATIONS, SAFETY_LABELS, collapse_safety_label
from .texts import distinct_n, ngrams, text_list, words  # noqa: F401 (distinct_n, ngrams, words: re-exported)

#: Short names of the safety labels for table columns.
SHORT_LABELS = dict(zip(SAFETY_LABELS, ("casual", "possibly caution", "probably caution", "needs caution",
                                        "intervention")))

#: Near-duplicate threshold: two lines whose normalised Indel similarity (rapidfuzz ``fuzz.ratio`` / 100 on the
#: lower-cased words, i.e. 1 - character insertions and deletions / total length) is at least this are one line
#: said twice. 0.85 flags a line that changes a name or a few words of another; unrelated lines score below 0.6.
NEAR_DUPLICATE_THRESHOLD = 0.85


def near_duplicate_pairs(texts: Sequence[str], threshold: float = NEAR_DUPLICATE_THRESHOLD
                         ) -> list[tuple[int, int, float]]:
    """Pairs ``(i, j, similarity)`` (i < j) of texts whose normalised Indel similarity is at least ``threshold``.

    Args:
        texts: the lines to compare, all against all.
        threshold: in [0, 1]; see :data:`NEAR_DUPLICATE_THRESHOLD`.

    Texts are compared as their lower-cased word tokens (:func:`words`) joined by spaces, so case and punctuation do
    not count. Uses ``rapidfuzz.process.cdist`` with ``rapidfuzz.fuzz.ratio`` (C++; a few seconds for 5,000
    lines, memory n x n bytes). Used by the data chapter (00) and the data tests.

    Raises:
        TypeError: ``texts`` is a bare ``str`` or holds a non-string.
    """
    import numpy as np
    from rapidfuzz import fuzz, process

    texts = text_list(texts, "texts")
    if len(texts) < 2:
        return []
    norm = [" ".join(words(t)) for t in texts]
    cutoff = int(np.ceil(threshold * 100))
    scores = process.cdist(norm, norm, scorer=fuzz.ratio, score_cutoff=cutoff, dtype=np.uint8, workers=1)
    scores = np.triu(scores, 1)
    pairs = []
    for i, j in zip(*np.nonzero(scores >= max(cutoff, 1))):
        sim = fuzz.ratio(norm[i], norm[j]) / 100
        if sim >= threshold:
            pairs.append((int(i), int(j), sim))
    return sorted(pairs)


def near_duplicate_share(texts: Sequence[str], threshold: float = NEAR_DUPLICATE_THRESHOLD) -> float:
    """Share of texts that have at least one near-duplicate (see :func:`near_duplicate_pairs`) in the corpus.

    Raises:
        TypeError: ``texts`` is a bare ``str`` or holds a non-string.
    """
    texts = text_list(texts, "texts")
    if not texts:
        return 0.0
    flagged = set()
    for i, j, _ in near_duplicate_pairs(texts, threshold):
        flagged.update((i, j))
    return len(flagged) / len(texts)


# ---------------------------------------------------------------------- ProsocialDialog
def label_table(splits: Mapping[str, datasets.Dataset]) -> pd.DataFrame:
    """Long table: split, safety_label, collapsed class, count and share within the split (all five labels)."""
    rows = []
    for split, ds in splits.items():
        counts = Counter(ds["safety_label"])
        total = max(1, len(ds))
        for label in SAFETY_LABELS:
            rows.append({"split": split, "safety_label": label, "class": collapse_safety_label(label),
                         "count": counts.get(label, 0), "share": counts.get(label, 0) / total})
    return pd.DataFrame(rows)


def source_table(splits: Mapping[str, datasets.Dataset]) -> pd.DataFrame:
    """Long table: split, source, count and share of turns within the split."""
    rows = []
    for split, ds in splits.items():
        counts = Counter(ds["source"])
        for source, count in sorted(counts.items()):
            rows.append({"split": split, "source": source, "count": count, "share": count / max(1, len(ds))})
    return pd.DataFrame(rows)


def prosocial_overview(splits: Mapping[str, datasets.Dataset]) -> pd.DataFrame:
    """One row per split: turns, dialogues, turns per dialogue, the share of turns per label (columns named by
    :data:`SHORT_LABELS`)."""
    rows = []
    for split, ds in splits.items():
        dialogues = Counter(ds["dialogue_id"])
        row = {"split": split, "turns": len(ds), "dialogues": len(dialogues),
               "turns per dialogue": len(ds) / max(1, len(dialogues))}
        counts = Counter(ds["safety_label"])
        for label in SAFETY_LABELS:
            row[SHORT_LABELS[label]] = counts.get(label, 0) / max(1, len(ds))
        rows.append(row)
    return pd.DataFrame(rows).set_index("split")


def length_table(ds: datasets.Dataset) -> pd.DataFrame:
    """One row per turn: words in the context and in the response, the label and its collapsed class."""
    return pd.DataFrame({
        "context words": [len(words(t)) for t in ds["context"]],
        "response words": [len(words(t)) for t in ds["response"]],
        "safety_label": list(ds["safety_label"]),
        "class": [collapse_safety_label(x) for x in ds["safety_label"]],
    })


def render_dialogue(ds: datasets.Dataset, dialogue_id: int) -> str:
    """One dialogue as Markdown: each context with its label and votes, the rules of thumb, then the reply."""
    rows = [i for i, d in enumerate(ds["dialogue_id"]) if d == dialogue_id]
    turns = sorted((ds[i] for i in rows), key=lambda r: r["response_id"])
    if not turns:
        raise ValueError(f"no dialogue with dialogue_id {dialogue_id}")
    lines = [f"**Dialogue {dialogue_id}** (source: `{turns[0]['source']}`)", ""]
    for t in turns:
        votes = ", ".join(t["safety_annotations"])
        lines.append(f"> **Speaker:** {markdown_escape(t['context'])}  ")
        lines.append(f"> *label `{t['safety_label']}` (votes: {votes})*")
        if t["rots"]:
            lines.append(">")
            lines.append("> *Rules of thumb:* " + " / ".join(markdown_escape(r) for r in t["rots"]))
        lines.append(">")
        lines.append(f"> **Prosocial reply:** {markdown_escape(t['response'])}")
        lines.append("")
    return "\n".join(lines)


def subtle_overview(ds: datasets.Dataset) -> pd.DataFrame:
    """The subtle contexts in one row: contexts, topics, turns per history, words in the last (revealing) user turn,
    and the share of each safety label (columns named by :data:`SHORT_LABELS`)."""
    counts = Counter(ds["safety_label"])
    row = {"contexts": len(ds), "topics": len(set(ds["topic"])),
           "turns per history": sum(map(len, ds["history"])) / max(1, len(ds)),
           "words in last turn": sum(len(words(h[-1])) for h in ds["history"]) / max(1, len(ds))}
    row.update({SHORT_LABELS[lab]: counts.get(lab, 0) / max(1, len(ds)) for lab in SAFETY_LABELS})
    return pd.DataFrame([row], index=pd.Index(["test"], name="split"))


def render_subtle(ds: datasets.Dataset, index: int) -> str:
    """One subtle context as Markdown: the chat (user and assistant turns), then the label, votes, rules of thumb
    and the reason the last turn matters."""
    r = ds[index]
    lines = [f"**{r['id']}** (topic: {r['topic']})", ""]
    for i, turn in enumerate(r["history"]):
        who = "User" if i % 2 == 0 else "Assistant"
        lines.append(f"> **{who}:** {markdown_escape(turn)}  ")
    lines += [">", f"> *label `{r['safety_label']}` (votes: {', '.join(r['safety_annotations'])})*  ",
              "> *Rules of thumb:* " + " / ".join(markdown_escape(x) for x in r["rots"]) + "  ",
              f"> *What the last turn reveals:* {markdown_escape(r['reason'])}", ""]
    return "\n".join(lines)


def markdown_escape(text: str) -> str:
    """Quote user text in Markdown: characters that would start markup or HTML are escaped."""
    text = " ".join(str(text).split())
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    for ch in "\\`*_[]{}#|$~":
        text = text.replace(ch, "\\" + ch)
    return text


def split_overlap(splits: Mapping[str, Iterable]) -> pd.DataFrame:
    """How many keys (dialogue ids, prompts, ...) each pair of splits shares: all zeros = disjoint splits.

    Raises:
        TypeError: a split's keys are a bare ``str`` (its characters would be taken for keys).
    """
    keys = {name: set(text_list(values, f"keys of {name!r}", strings=False)) for name, values in splits.items()}
    names = list(keys)
    rows = []
    for a in range(len(names)):
        for b in range(a + 1, len(names)):
            rows.append({"split a": names[a], "split b": names[b],
                         "shared": len(keys[names[a]] & keys[names[b]])})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------- MIC
def mic_overview(splits: Mapping[str, datasets.Dataset]) -> pd.DataFrame:
    """One row per split: rows, prompts, answers per prompt, share of RoT-agreeing / violating answers."""
    rows = []
    for split, ds in splits.items():
        prompts = Counter(ds["Q"])
        agrees = Counter(ds["A_agrees"])
        rows.append({"split": split, "rows": len(ds), "prompts": len(prompts),
                     "rows per prompt": len(ds) / max(1, len(prompts)),
                     "agrees": agrees.get(2, 0) / max(1, len(ds)), "neutral": agrees.get(1, 0) / max(1, len(ds)),
                     "disagrees": agrees.get(0, 0) / max(1, len(ds))})
    return pd.DataFrame(rows).set_index("split")


def mic_foundation_table(ds: datasets.Dataset) -> pd.DataFrame:
    """Long table: foundation, answer's agreement with the RoT (agrees / neutral / disagrees), count."""
    counts: Counter = Counter()
    for vector, agree in zip(ds["moral-vector"], ds["A_agrees"]):
        for f, on in zip(MORAL_FOUNDATIONS, vector):
            if on:
                counts[(f, MIC_AGREEMENT[agree])] += 1
    return pd.DataFrame([{"foundation": f, "answer": a, "count": counts.get((f, a), 0)}
                         for f in MORAL_FOUNDATIONS for a in MIC_AGREEMENT.values()])


def mic_severity_consensus_table(ds: datasets.Dataset) -> pd.DataFrame:
    """Counts of annotated rows by violation severity (rows) and RoT consensus (columns); -1 codes left out."""
    sev = list(ds["violation-severity"])
    con = list(ds["rot-agree"])
    table = pd.DataFrame(0, index=pd.Index(list(MIC_SEVERITY), name="violation-severity"),
                         columns=pd.Index(list(MIC_CONSENSUS), name="rot-agree"))
    for s, c in zip(sev, con):
        if s in MIC_SEVERITY and c in MIC_CONSENSUS:
            table.loc[s, c] += 1
    return table


def text_length_table(texts: Mapping[tuple[str, str], Iterable[str]]) -> pd.DataFrame:
    """Long table of word counts: ``{(dataset, field): texts}`` -> rows of dataset, field, words.

    Raises:
        TypeError: a value is a bare ``str`` instead of a list of texts.
    """
    rows = [{"dataset": dataset, "field": field_, "words": len(words(t))}
            for (dataset, field_), values in texts.items() for t in text_list(values, f"texts of {field_!r}")]
    return pd.DataFrame(rows, columns=["dataset", "field", "words"])


def variety_table(texts: Mapping[str, Sequence[str]], max_texts: int = 5000, seed: int = 0,
                  threshold: float = NEAR_DUPLICATE_THRESHOLD) -> pd.DataFrame:
    """distinct-1, distinct-2 and the near-duplicate share for each named corpus. Corpora above ``max_texts``
    are measured on a seeded random sample of that size (near-duplicate search grows with the square).
    The near-duplicate share uses :func:`near_duplicate_share` at ``threshold``; distinct-n is
    :func:`~prosocial_lib.data.texts.distinct_n` (NaN for a corpus without any n-gram).

    Raises:
        TypeError: a corpus is a bare ``str`` instead of a list of texts.
    """
    import random

    rows = []
    for name, values in texts.items():
        values = text_list(values, f"corpus {name!r}")
        if len(values) > max_texts:
            values = random.Random(seed).sample(values, max_texts)
        rows.append({"texts": name, "n": len(values), "distinct-1": distinct_n(values, 1),
                     "distinct-2": distinct_n(values, 2),
                     "near-duplicate share": near_duplicate_share(values, threshold)})
    return pd.DataFrame(rows).set_index("texts")


def pick_example_dialogues(ds: datasets.Dataset, k: int = 2) -> list[int]:
    """Dialogue ids worth reading: the most distinct safety classes first, then the most turns, then the id."""
    classes: dict[int, set] = defaultdict(set)
    turns: Counter = Counter()
    for d, label in zip(ds["dialogue_id"], ds["safety_label"]):
        classes[d].add(collapse_safety_label(label))
        turns[d] += 1
    ranked = sorted(classes, key=lambda d: (-len(classes[d]), -turns[d], d))
    return ranked[:k]


def mic_prompt_answers(ds: datasets.Dataset, prompt: str | None = None) -> pd.DataFrame:
    """All annotated answers to one MIC prompt (by default the one with the most answers that include both an
    RoT-agreeing and an RoT-violating answer) as a small table."""
    by_q: dict[str, list[int]] = defaultdict(list)
    for i, q in enumerate(ds["Q"]):
        by_q[q].append(i)
    if prompt is None:
        agree = ds["A_agrees"]
        both = [q for q, idx in by_q.items() if {0, 2} <= {agree[i] for i in idx}] or list(by_q)
        if not both:
            raise ValueError("the dataset has no prompts")
        prompt = max(both, key=lambda q: (len(by_q[q]), q))
    if prompt not in by_q:
        raise ValueError(f"no MIC prompt {prompt!r}")
    rows = ds.select(by_q[prompt])
    return pd.DataFrame({
        "answer": rows["A"], "rule of thumb": rows["rot"],
        "agrees with RoT": [MIC_AGREEMENT[a] for a in rows["A_agrees"]],
        "severity": rows["violation-severity"], "consensus": rows["rot-agree"], "moral": rows["moral"],
    }).rename_axis("answer #").pipe(lambda df: setattr(df, "attrs", {"prompt": prompt}) or df)


def chapter_numbers(pd_splits: Mapping[str, datasets.Dataset], mic_splits: Mapping[str, datasets.Dataset],
                    casual_splits: Mapping[str, datasets.Dataset]) -> dict[str, float | int]:
    """The numbers the data chapter cites, as plain Python ints and floats (for ``glue`` and a JSON summary)."""
    from .labels import UPSTREAM_LABEL_SHARES

    out: dict[str, float | int] = {}
    turns = sum(len(ds) for ds in pd_splits.values())
    dialogues = sum(len(set(ds["dialogue_id"])) for ds in pd_splits.values())
    labels = Counter(v for ds in pd_splits.values() for v in ds["safety_label"])
    out["pd_turns"], out["pd_dialogues"] = int(turns), int(dialogues)
    out["pd_turns_per_dialogue"] = turns / max(1, dialogues)
    for label in SAFETY_LABELS:
        key = label.strip("_")
        out[f"pd_share_{key}"] = labels.get(label, 0) / max(1, turns)
        out[f"pd_upstream_{key}"] = UPSTREAM_LABEL_SHARES[label]
    unsafe = [(lab, rots) for ds in pd_splits.values() for lab, rots in zip(ds["safety_label"], ds["rots"])
              if lab != "__casual__"]
    out["pd_rot_coverage"] = sum(1 for _, r in unsafe if r) / max(1, len(unsafe))
    out["pd_rots_per_turn"] = sum(len(r) for _, r in unsafe) / max(1, len(unsafe))
    out["pd_sources"] = len({v for ds in pd_splits.values() for v in ds["source"]})
    out["pd_shared_dialogues"] = int(split_overlap({s: ds["dialogue_id"] for s, ds in pd_splits.items()})
                                     ["shared"].sum())

    rows = sum(len(ds) for ds in mic_splits.values())
    prompts = len({q for ds in mic_splits.values() for q in ds["Q"]})
    agree = Counter(v for ds in mic_splits.values() for v in ds["A_agrees"])
    out["mic_rows"], out["mic_prompts"] = int(rows), int(prompts)
    out["mic_answers_per_prompt"] = rows / max(1, prompts)
    for code, name in MIC_AGREEMENT.items():
        out[f"mic_share_{name}"] = agree.get(code, 0) / max(1, rows)
    sev = [s for ds in mic_splits.values() for s in ds["violation-severity"]]
    con = [c for ds in mic_splits.values() for c in ds["rot-agree"]]
    ann = pd.DataFrame({"s": sev, "c": con})
    ann = ann[(ann.s > 0) & (ann.c > 0)]
    out["mic_severity_consensus_spearman"] = float(ann["s"].corr(ann["c"], method="spearman")) if len(ann) > 2 \
        else float("nan")
    violating = [s for ds in mic_splits.values() for s, a in zip(ds["violation-severity"], ds["A_agrees"])
                 if a == 0 and s > 0]
    out["mic_violating_severe_share"] = sum(1 for s in violating if s >= 4) / max(1, len(violating))
    out["mic_foundations"] = len({f for ds in mic_splits.values() for m in ds["moral"] for f in m.split("|") if f})
    out["mic_shared_prompts"] = int(split_overlap({s: ds["Q"] for s, ds in mic_splits.items()})["shared"].sum())

    for split, ds in casual_splits.items():
        out[f"casual_{split}"] = len(ds)
    n_casual = sum(len(ds) for ds in casual_splits.values())
    out["casual_turns"] = int(n_casual)
    out["casual_mean_history"] = sum(len(h) for ds in casual_splits.values() for h in ds["history"]) / max(
        1, n_casual)
    return out


def describe_sources(prosocial_source: str, mic_source: str, casual_source: str, preset: str) -> str:
    """Markdown that says, for the sources a preset uses, what the reader is looking at (embedded sample or the
    real corpora), so the chapter's prose stays true under every preset."""
    def name(source: str, real: str) -> str:
        if source == "embedded":
            return f"the **embedded sample** (`embedded`), written for this book in {real}'s exact schema"
        return f"**{real}** from `{source}`"

    casual = {"chitchat": "real human chats from the `chitchat-dataset` package (Chit Chat Challenge)",
              "prosocial": "the casual turns of ProsocialDialog",
              "daily_dialog": "DailyDialog from the Hugging Face hub"}.get(casual_source, f"`{casual_source}`")
    lines = [f"This run uses the `{preset}` preset:", "",
             f"- ProsocialDialog: {name(prosocial_source, 'ProsocialDialog')};",
             f"- MIC: {name(mic_source, 'MIC')};",
             f"- casual chat: {casual}.", ""]
    if "embedded" in (prosocial_source, mic_source):
        lines.append("**The embedded sample is not the real data.** Its dialogues, prompts, answers, labels and "
                     "annotations were written for this book so that every chapter runs offline and in CI; they "
                     "follow the upstream columns, label vocabularies and aggregation rule exactly, but every "
                     "figure below describes the sample, not the corpora. The `gpu` preset loads the real "
                     "ProsocialDialog and MIC instead (MIC needs its data-use agreement).")
    else:
        lines.append("These are the real corpora; the figures below describe them.")
    return "\n".join(lines)


def variety_numbers(variety: pd.DataFrame) -> dict[str, float]:
    """``variety_table`` rows as glue-able numbers: ``var_<corpus>_d2`` and ``var_<corpus>_dup``, where <corpus> is
    the row name in lower case with underscores (``"MIC answers"`` -> ``var_mic_answers_d2``)."""
    out: dict[str, float] = {}
    for name, row in variety.iterrows():
        slug = "_".join(words(str(name)))
        out[f"var_{slug}_d2"] = float(row["distinct-2"])
        out[f"var_{slug}_dup"] = float(row["near-duplicate share"])
    return out
