"""The embedded sample (written for this book in the upstream schemas; NOT the real data) and the subtle contexts:
size, label coverage, split disjointness and variety, as the data issues (#12) ask; every quality gate of
:func:`prosocial_lib.data.gates.quality_gates` holds. The figures are printed (run with ``-s`` to see them)."""

from collections import Counter, defaultdict

import pytest

from prosocial_lib.data import (
    MORAL_FOUNDATIONS,
    PROSOCIAL_SOURCES,
    SAFETY_LABELS,
    UPSTREAM_LABEL_SHARES,
    aggregate_safety_votes,
    dialogue_turns,
    load_mic,
    load_prosocial_dialog,
    load_subtle,
    stats,
)
from prosocial_lib.data.gates import MAX_NEAR_DUPLICATES, quality_gates

PD_SPLITS = ("train", "validation", "test")
MIC_SPLITS = ("train", "dev", "test")


@pytest.fixture(scope="module")
def pd_splits():
    return {s: load_prosocial_dialog("embedded", s) for s in PD_SPLITS}  # strict: every row is valid


@pytest.fixture(scope="module")
def mic_splits():
    return {s: load_mic("embedded", s) for s in MIC_SPLITS}


def _all(splits, col):
    return [v for ds in splits.values() for v in ds[col]]


# ---------------------------------------------------------------------- ProsocialDialog
def test_prosocial_size_and_multi_turn(pd_splits):
    dialogues = {(s, d) for s, ds in pd_splits.items() for d in ds["dialogue_id"]}
    turns = sum(len(ds) for ds in pd_splits.values())
    print(f"\nProsocialDialog sample: {len(dialogues)} dialogues, {turns} turns, "
          + ", ".join(f"{s} {len(ds)}" for s, ds in pd_splits.items()))
    assert len(dialogues) >= 600 and turns >= 2000
    test_openers = {c for c, r, lab in zip(pd_splits["test"]["context"], pd_splits["test"]["response_id"],
                                           pd_splits["test"]["safety_label"]) if r == 0 and lab != "__casual__"}
    assert len(test_openers) >= 150 and len(set(pd_splits["validation"]["dialogue_id"])) >= 75
    lengths = Counter()
    for ds in pd_splits.values():
        lengths.update(ds["dialogue_id"])
    multi = sum(1 for n in lengths.values() if n >= 2) / len(lengths)
    print(f"dialogues with >= 2 turns: {multi:.0%}, mean turns per dialogue {turns / len(dialogues):.2f}")
    assert multi >= 0.5 and all(len(ds) > 0 for ds in pd_splits.values())


def test_prosocial_turn_ids_are_contiguous_and_episodes_end_on_the_last_turn(pd_splits):
    for split, ds in pd_splits.items():
        by = defaultdict(list)
        for d, r, done in zip(ds["dialogue_id"], ds["response_id"], ds["episode_done"]):
            by[d].append((r, done))
        for d, turns in by.items():
            assert [r for r, _ in turns] == list(range(len(turns))), (split, d)
            assert [done for _, done in turns] == [False] * (len(turns) - 1) + [True], (split, d)


def test_prosocial_labels_cover_all_five_in_roughly_upstream_shares(pd_splits):
    labels = Counter(_all(pd_splits, "safety_label"))
    total = sum(labels.values())
    shares = {lab: labels[lab] / total for lab in SAFETY_LABELS}
    print("label shares (sample vs upstream): " + ", ".join(
        f"{lab.strip('_')} {shares[lab]:.1%} vs {UPSTREAM_LABEL_SHARES[lab]:.0%}" for lab in SAFETY_LABELS))
    for lab in SAFETY_LABELS:
        assert abs(shares[lab] - UPSTREAM_LABEL_SHARES[lab]) <= 0.05, lab
        for split, ds in pd_splits.items():
            share = sum(1 for x in ds["safety_label"] if x == lab) / len(ds)
            assert abs(share - UPSTREAM_LABEL_SHARES[lab]) <= 0.05, (split, lab)
    assert set(pd_splits["train"]["safety_label"]) == set(SAFETY_LABELS)


def test_prosocial_rots_votes_and_sources(pd_splits):
    for ds in pd_splits.values():
        for label, rots, votes, reasons in zip(ds["safety_label"], ds["rots"], ds["safety_annotations"],
                                               ds["safety_annotation_reasons"]):
            assert aggregate_safety_votes(votes) == label
            assert len(reasons) == 3 and all(r.strip() for r in reasons)
            if label != "__casual__":
                assert rots and all(r.strip() for r in rots)
            else:
                assert rots == []
    sources = Counter(_all(pd_splits, "source"))
    print(f"sources: {dict(sources)}")
    assert set(sources) == set(PROSOCIAL_SOURCES)


def test_prosocial_splits_are_disjoint_by_dialogue_and_by_prompt(pd_splits):
    ids = {s: set(ds["dialogue_id"]) for s, ds in pd_splits.items()}
    contexts = {s: set(ds["context"]) for s, ds in pd_splits.items()}
    openers = {s: {c for c, r in zip(ds["context"], ds["response_id"]) if r == 0} for s, ds in pd_splits.items()}
    for table in (stats.split_overlap(ids), stats.split_overlap(contexts), stats.split_overlap(openers)):
        assert table["shared"].sum() == 0, table


def test_prosocial_dialogue_turns_cover_every_row(pd_splits):
    for ds in pd_splits.values():
        turns = dialogue_turns(ds)
        assert len(turns) == len(ds)
        assert all(len(h) == 2 * r + 1 for h, r in zip(turns["history"], turns["response_id"]))


def test_prosocial_text_is_varied(pd_splits):
    responses = _all(pd_splits, "response")
    contexts = _all(pd_splits, "context")
    d2_resp, d2_ctx = stats.distinct_n(responses, 2), stats.distinct_n(contexts, 2)
    dup_resp, dup_ctx = stats.near_duplicate_share(responses), stats.near_duplicate_share(contexts)
    rots = _all(pd_splits, "rots")
    flat_rots = [r for rs in rots for r in rs]
    print(f"distinct-2: responses {d2_resp:.3f}, contexts {d2_ctx:.3f}; near-duplicate lines (rapidfuzz ratio "
          f">= {stats.NEAR_DUPLICATE_THRESHOLD}): responses {dup_resp:.1%}, contexts {dup_ctx:.1%}; distinct RoTs "
          f"{len(set(flat_rots))} of {len(flat_rots)}")
    assert d2_resp >= 0.5 and d2_ctx >= 0.5
    assert dup_resp <= MAX_NEAR_DUPLICATES and dup_ctx <= MAX_NEAR_DUPLICATES
    assert len(set(responses)) == len(responses) and len(set(contexts)) == len(contexts)


# ---------------------------------------------------------------------- MIC
def test_mic_prompts_answers_and_agreement(mic_splits):
    answers = defaultdict(list)
    for ds in mic_splits.values():
        for q, agree in zip(ds["Q"], ds["A_agrees"]):
            answers[q].append(agree)
    rows = sum(len(ds) for ds in mic_splits.values())
    with_two = sum(1 for a in answers.values() if len(a) >= 2)
    both = sum(1 for a in answers.values() if 2 in a and 0 in a)
    print(f"\nMIC sample: {rows} rows, {len(answers)} prompts, {with_two} with >= 2 answers, {both} with an "
          f"agreeing and a violating answer; " + ", ".join(f"{s} {len(ds)}" for s, ds in mic_splits.items()))
    assert len(answers) >= 400 and with_two >= 400 and rows >= 1000 and len(mic_splits["test"]) >= 100
    assert all(len(a) >= 2 for a in answers.values())
    agree = Counter(_all(mic_splits, "A_agrees"))
    print(f"A_agrees: {dict(sorted(agree.items()))}")
    assert agree[2] > 0 and agree[0] > 0 and both == len(answers)  # every prompt: an agreeing and a violating answer


def test_mic_foundations_severity_and_consensus_spread(mic_splits):
    foundations = Counter(f for m in _all(mic_splits, "moral") for f in m.split("|") if f)
    severity = Counter(_all(mic_splits, "violation-severity"))
    consensus = Counter(_all(mic_splits, "rot-agree"))
    print(f"foundations: {dict(foundations)}; severity: {dict(sorted(severity.items()))}; consensus: "
          f"{dict(sorted(consensus.items()))}")
    assert set(foundations) == set(MORAL_FOUNDATIONS)
    assert len({s for s in severity if s > 0}) >= 4 and len({c for c in consensus if c > 0}) >= 4
    violating = [s for s, a in zip(_all(mic_splits, "violation-severity"), _all(mic_splits, "A_agrees")) if a == 0]
    assert len(set(violating)) >= 3  # violations range from mild to severe


def test_mic_splits_are_disjoint_by_prompt(mic_splits):
    prompts = {s: set(ds["Q"]) for s, ds in mic_splits.items()}
    assert stats.split_overlap(prompts)["shared"].sum() == 0
    assert all(len(ds) > 0 for ds in mic_splits.values())


def test_mic_text_is_varied(mic_splits):
    answers = _all(mic_splits, "A")
    prompts = sorted(set(_all(mic_splits, "Q")))
    d2, dup = stats.distinct_n(answers, 2), stats.near_duplicate_share(answers)
    dup_q = stats.near_duplicate_share(prompts)
    print(f"MIC distinct-2 of answers {d2:.3f}; near-duplicate answers {dup:.1%}, prompts {dup_q:.1%}")
    assert d2 >= 0.5 and dup <= MAX_NEAR_DUPLICATES and dup_q <= MAX_NEAR_DUPLICATES


# ---------------------------------------------------------------------- subtle contexts and the gates
def test_subtle_contexts_are_everyday_chats_with_a_labelled_last_turn(pd_splits):
    ds = load_subtle()
    print(f"\nsubtle contexts: {len(ds)}; labels {dict(Counter(ds['safety_label']))}; topics "
          f"{dict(Counter(ds['topic']))}")
    assert len(ds) >= 120 and len(set(ds["topic"])) >= 8
    for label, votes, rots, reason in zip(ds["safety_label"], ds["safety_annotations"], ds["rots"], ds["reason"]):
        assert label != "__casual__" and aggregate_safety_votes(votes) == label and rots and reason.strip()
    last = [h[-1] for h in ds["history"]]
    assert stats.distinct_n(last, 2) >= 0.5 and stats.near_duplicate_share(last) <= MAX_NEAR_DUPLICATES
    pd_contexts = {c for split in pd_splits.values() for c in split["context"]}
    assert not {t for h in ds["history"] for t in h} & pd_contexts


def test_every_quality_gate_holds(pd_splits, mic_splits):
    gates = quality_gates(pd_splits, mic_splits, load_subtle())
    print("\n" + gates.drop(columns="source of the bound").to_string())
    assert len(gates) >= 30 and gates["ok"].all(), gates[~gates["ok"]].to_string()


def test_sample_builder_is_up_to_date(repo_root):
    """The committed sample is what tools/build_sample.py makes from tools/sample_drafts/ (re-runnable)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("build_sample", repo_root / "tools" / "build_sample.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--check"]) == 0


def test_sample_files_ship_as_package_data(repo_root):
    """A non-editable install (Colab's pip install from git) only gets the files pyproject's package-data globs
    name: every sample file must match one of them."""
    import tomllib

    patterns = tomllib.loads((repo_root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"][
        "prosocial_lib"]
    package = repo_root / "prosocial_lib"
    shipped = {p for pattern in patterns for p in package.glob(pattern)}
    samples = [p for p in (package / "data" / "samples").rglob("*") if p.is_file() and p.suffix in (".jsonl", ".csv")]
    assert samples and not [p.relative_to(package) for p in samples if p not in shipped]
