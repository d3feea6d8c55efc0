"""Label vocabularies and the vote-aggregation rule of ProsocialDialog (hand-computed cases)."""

import itertools

import pytest

from prosocial_lib.data import (
    MORAL_FOUNDATIONS,
    SAFETY_LABELS,
    SAFETY_SEVERITY,
    aggregate_safety_votes,
    collapse_safety_label,
)
from prosocial_lib.data.labels import normalise_split

C, N, X = "casual", "needs caution", "needs intervention"  # X: needs intervention


@pytest.mark.parametrize("votes, label", [
    ([C, C, C], "__casual__"),
    ([N, C, C], "__possibly_needs_caution__"),
    ([C, N, C], "__possibly_needs_caution__"),
    ([N, N, C], "__probably_needs_caution__"),
    ([C, N, N], "__probably_needs_caution__"),
    ([N, N, N], "__needs_caution__"),
    ([X, C, C], "__needs_intervention__"),
    ([N, X, N], "__needs_intervention__"),  # the ProsocialDialog card's own example
    ([X, X, X], "__needs_intervention__"),
])
def test_aggregate_safety_votes(votes, label):
    assert aggregate_safety_votes(votes) == label


def test_aggregation_is_order_free_and_covers_every_vote_combination():
    seen = set()
    for votes in itertools.product((C, N, X), repeat=3):
        label = aggregate_safety_votes(votes)
        assert all(aggregate_safety_votes(p) == label for p in itertools.permutations(votes))
        seen.add(label)
    assert seen == set(SAFETY_LABELS)


@pytest.mark.parametrize("votes", [[C, C], [C, C, C, C], [C, C, "unsafe"]])
def test_aggregation_rejects_bad_votes(votes):
    with pytest.raises(ValueError):
        aggregate_safety_votes(votes)


def test_label_order_severity_and_collapse():
    assert SAFETY_LABELS == ("__casual__", "__possibly_needs_caution__", "__probably_needs_caution__",
                             "__needs_caution__", "__needs_intervention__")
    assert [SAFETY_SEVERITY[x] for x in SAFETY_LABELS] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert [collapse_safety_label(x) for x in SAFETY_LABELS] == ["casual", "caution", "caution", "caution",
                                                                   "intervention"]
    with pytest.raises(ValueError, match="unknown safety label"):
        collapse_safety_label("casual")


def test_moral_foundations_in_mic_order():
    assert MORAL_FOUNDATIONS == ("care", "fairness", "liberty", "loyalty", "authority", "sanctity")


def test_split_aliases():
    assert normalise_split("valid") == normalise_split("dev") == normalise_split("validation") == "validation"
    assert normalise_split("TRAIN") == "train"
    assert normalise_split("validation", ("train", "dev", "test")) == "dev"
    with pytest.raises(ValueError, match="unknown split"):
        normalise_split("holdout")
