"""Quality gates for the embedded data: size, labels, variety, split hygiene and lengths, each with its
bound, as one table. The data tests assert every gate; the data chapter (00) shows the table.

The upstream figures the gates compare against are published ones, with their source next to each; where no
figure is published (words per utterance) the bound is the book's own target and says so.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping

import datasets
import pandas as pd

from .labels import MORAL_FOUNDATIONS, PROSOCIAL_SOURCES, SAFETY_LABELS, UPSTREAM_LABEL_SHARES, aggregate_safety_votes
from .stats import distinct_n, near_duplicate_share, split_overlap, words

#: ProsocialDialog as published. Source: the dataset card of ``allenai/prosocial-dialog`` on the Hugging Face hub
#: ("58K dialogues, with 331K utterances, 160K unique RoTs, and 497K dialogue safety labels"; rows per split
#: 120,236 / 20,416 / 25,029 in its ``dataset_info``) and Kim et al. (EMNLP 2022), whose splits hold 42,304 /
#: 7,132 / 8,701 dialogues. One row is one (context, response) turn, so a dialogue has 165,681 / 58,137 = 2.85
#: turns (5.7 utterances). Label shares: :data:`~prosocial_lib.data.labels.UPSTREAM_LABEL_SHARES`.
UPSTREAM_PROSOCIAL = {"dialogues": 58_137, "turns": 120_236 + 20_416 + 25_029, "utterances": 331_000,
                      "turns_per_dialogue": (120_236 + 20_416 + 25_029) / 58_137}
#: MIC as published (Ziems et al., ACL 2022): about 38K prompt-reply pairs, 99K RoTs, 114K annotations; split
#: 80/10/10 by prompt-reply pair.
UPSTREAM_MIC = {"pairs": 38_000, "rots": 99_000, "annotations": 114_000, "test_share": 0.10}
#: Words per utterance are not given in the ProsocialDialog card or abstract; these ranges are the book's writing
#: targets (drafts/SPEC.md: contexts like online posts, about 15-25 words, replies about 25-50), NOT published.
BOOK_LENGTH_TARGETS = {"context words": (10.0, 30.0), "response words": (20.0, 55.0)}

#: At most this share of lines may have a near-duplicate (:func:`~prosocial_lib.data.stats.near_duplicate_share`).
MAX_NEAR_DUPLICATES = 0.01
MIN_DISTINCT_2 = 0.5
#: Corpora longer than this are measured for near-duplicates on a seeded sample of this many lines (the search
#: compares all pairs, so the real corpora would need n x n bytes).
MAX_TEXTS = 5000


def _dup_share(texts: list[str]) -> float:
    import random

    if len(texts) > MAX_TEXTS:
        texts = random.Random(0).sample(texts, MAX_TEXTS)
    return near_duplicate_share(texts)


def _gate(rows: list, dataset: str, gate: str, value: float, op: str, bound: float, source: str = "") -> None:
    ok = {">=": value >= bound, "<=": value <= bound, "==": value == bound}[op]
    rows.append({"dataset": dataset, "gate": gate, "value": value, "bound": f"{op} {bound:g}", "ok": bool(ok),
                 "source of the bound": source or "this book's target for the embedded sample"})


def _mean_words(texts) -> float:
    texts = list(texts)
    return sum(len(words(t)) for t in texts) / max(1, len(texts))


def _prosocial_gates(rows: list, splits: Mapping[str, datasets.Dataset]) -> None:
    name = "ProsocialDialog-style"
    turns = [r for ds in splits.values() for r in ds]
    dialogues = {(s, d) for s, ds in splits.items() for d in ds["dialogue_id"]}
    _gate(rows, name, "dialogues", len(dialogues), ">=", 600)
    _gate(rows, name, "turns", len(turns), ">=", 2000)
    test_open = {c for c, r, lab in zip(splits["test"]["context"], splits["test"]["response_id"],
                                        splits["test"]["safety_label"]) if r == 0 and lab != "__casual__"}
    _gate(rows, name, "test: distinct non-casual first turns", len(test_open), ">=", 150)
    _gate(rows, name, "validation dialogues", len(set(splits["validation"]["dialogue_id"])), ">=", 75)
    for split, ds in {"all": turns, **splits}.items():
        labels = Counter(r["safety_label"] for r in ds)
        worst = max(abs(labels[lab] / max(1, len(ds)) - UPSTREAM_LABEL_SHARES[lab]) for lab in SAFETY_LABELS)
        _gate(rows, name, f"label shares, largest gap to upstream ({split})", worst, "<=", 0.05,
              "upstream shares 17/13/15/42/13 % (Kim et al., 2022)")
    unsafe = [r for r in turns if r["safety_label"] != "__casual__"]
    _gate(rows, name, "non-casual turns with rules of thumb", sum(bool(r["rots"]) for r in unsafe) / len(unsafe),
          "==", 1.0)
    _gate(rows, name, "labels that follow the 3 votes", sum(aggregate_safety_votes(r["safety_annotations"]) ==
                                                          r["safety_label"] for r in turns) / len(turns), "==", 1.0)
    _gate(rows, name, "turns with 3 free-text reasons", sum(len([x for x in r["safety_annotation_reasons"]
                                                                if x.strip()]) == 3 for r in turns) / len(turns),
          "==", 1.0)
    _gate(rows, name, "sources", len({r["source"] for r in turns} & set(PROSOCIAL_SOURCES)), "==", 4)
    lengths = Counter((s, d) for s, ds in splits.items() for d in ds["dialogue_id"])
    _gate(rows, name, "multi-turn dialogues (share)", sum(n >= 2 for n in lengths.values()) / len(lengths), ">=",
          0.9)
    _gate(rows, name, "turns per dialogue, gap to upstream", abs(len(turns) / len(dialogues) -
                                                               UPSTREAM_PROSOCIAL["turns_per_dialogue"]), "<=", 1.0,
          "upstream 165,681 turns / 58,137 dialogues = 2.85 (dataset card)")
    for field in ("context", "response"):
        texts = [r[field] for r in turns]
        lo, hi = BOOK_LENGTH_TARGETS[f"{field} words"]
        mean = _mean_words(texts)
        _gate(rows, name, f"mean words per {field}", mean, ">=", lo, "book's target, not published")
        _gate(rows, name, f"mean words per {field} (upper)", mean, "<=", hi, "book's target, not published")
        _gate(rows, name, f"distinct-2 over {field}s", distinct_n(texts, 2), ">=", MIN_DISTINCT_2)
        _gate(rows, name, f"near-duplicate {field}s (share)", _dup_share(texts), "<=", MAX_NEAR_DUPLICATES)
    for key, what in (("dialogue_id", "dialogues"), ("context", "contexts")):
        shared = split_overlap({s: ds[key] for s, ds in splits.items()})["shared"].sum()
        _gate(rows, name, f"{what} in two splits", int(shared), "==", 0)


def _mic_gates(rows: list, splits: Mapping[str, datasets.Dataset]) -> None:
    name = "MIC-style"
    all_rows = [r for ds in splits.values() for r in ds]
    answers: dict[str, set] = defaultdict(set)
    for r in all_rows:
        answers[r["Q"]].add(r["A_agrees"])
    _gate(rows, name, "rows", len(all_rows), ">=", 1000)
    _gate(rows, name, "prompts", len(answers), ">=", 400)
    _gate(rows, name, "test rows", len(splits["test"]), ">=", 100)
    _gate(rows, name, "test share of rows", len(splits["test"]) / len(all_rows), ">=", 0.08,
          "MIC splits 80/10/10 (Ziems et al., 2022)")
    _gate(rows, name, "prompts with an agreeing and a violating answer", sum({0, 2} <= a for a in answers.values())
          / len(answers), "==", 1.0)
    foundations = {f for r in all_rows for f in r["moral"].split("|") if f}
    _gate(rows, name, "moral foundations", len(foundations & set(MORAL_FOUNDATIONS)), "==", 6)
    _gate(rows, name, "severity levels used", len({r["violation-severity"] for r in all_rows} & {1, 2, 3, 4, 5}),
          "==", 5)
    _gate(rows, name, "consensus levels used", len({r["rot-agree"] for r in all_rows} & {1, 2, 3, 4, 5}), ">=", 4)
    texts = [r["A"] for r in all_rows]
    _gate(rows, name, "distinct-2 over answers", distinct_n(texts, 2), ">=", MIN_DISTINCT_2)
    _gate(rows, name, "near-duplicate answers (share)", _dup_share(texts), "<=", MAX_NEAR_DUPLICATES)
    _gate(rows, name, "near-duplicate prompts (share)", _dup_share(sorted(answers)), "<=",
          MAX_NEAR_DUPLICATES)
    _gate(rows, name, "prompts in two splits", int(split_overlap({s: ds["Q"] for s, ds in splits.items()})
                                                  ["shared"].sum()), "==", 0)


def _subtle_gates(rows: list, subtle: datasets.Dataset, pd_contexts: set[str]) -> None:
    name = "subtle"
    last = [h[-1] for h in subtle["history"]]
    _gate(rows, name, "contexts", len(subtle), ">=", 120)
    _gate(rows, name, "non-casual labels (share)", sum(lab != "__casual__" for lab in subtle["safety_label"])
          / len(subtle), "==", 1.0)
    _gate(rows, name, "with rules of thumb and a reason", sum(bool(r) and bool(x.strip()) for r, x in
                                                              zip(subtle["rots"], subtle["reason"])) / len(subtle),
          "==", 1.0)
    _gate(rows, name, "distinct-2 over contexts", distinct_n([" ".join(h) for h in subtle["history"]], 2), ">=",
          MIN_DISTINCT_2)
    _gate(rows, name, "distinct-2 over last turns", distinct_n(last, 2), ">=", MIN_DISTINCT_2)
    _gate(rows, name, "near-duplicate last turns (share)", _dup_share(last), "<=", MAX_NEAR_DUPLICATES)
    _gate(rows, name, "turns also in the ProsocialDialog-style sample", sum(t in pd_contexts for h in
                                                                            subtle["history"] for t in h), "==", 0)


def quality_gates(pd_splits: Mapping[str, datasets.Dataset], mic_splits: Mapping[str, datasets.Dataset],
                  subtle: datasets.Dataset) -> pd.DataFrame:
    """One row per gate: dataset, gate, value, bound (e.g. ">= 600"), ok, and the source of the bound.

    Args:
        pd_splits: ProsocialDialog-style splits ``train`` / ``validation`` / ``test`` (from
            :func:`~prosocial_lib.data.load_prosocial_dialog`).
        mic_splits: MIC-style splits ``train`` / ``dev`` / ``test`` (:func:`~prosocial_lib.data.load_mic`).
        subtle: the subtle contexts (:func:`~prosocial_lib.data.load_subtle`).

    The size bounds are this book's targets for the embedded sample (enough contexts for the experiment's
    intervals); on the real corpora they hold trivially except where the sample imitates upstream (label shares,
    lengths). Used by chapter 00 and
    ``tests/test_data_sample.py``.
    """
    rows: list[dict] = []
    _prosocial_gates(rows, pd_splits)
    _mic_gates(rows, mic_splits)
    _subtle_gates(rows, subtle, {c for ds in pd_splits.values() for c in ds["context"]})
    return pd.DataFrame(rows)
