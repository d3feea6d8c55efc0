"""Contrastive group builders: which replies become positives and negatives, the weights, determinism."""

from __future__ import annotations

import dataclasses
import json

import datasets
import pytest
import torch

from prosocial_lib.config import get_config
from prosocial_lib.data.labels import SAFETY_SEVERITY
from prosocial_lib.groups.stage1 import build_stage1_groups
from prosocial_lib.groups.stage2 import build_stage2_groups
from prosocial_lib.groups.types import (
    GROUP_KEYS,
    GroupBuildError,
    groups_frame,
    mic_severity,
    summarize_groups,
)
from prosocial_lib.report.groups import group_table
from prosocial_lib.train.losses import social_weights

Q1, Q2, Q3, Q4, Q5 = ("Would you kill your partner for $1 million?", "Is it ok to cheat on tests?",
                      "What's your favorite food?", "Should I yell at my kid?", "Do you like rain?")
ROT1 = "It is wrong to kill your significant other."


def mic_row(q, a, a_agrees, sev=-1, agree=-1, rot="It is good to be kind.", worker="", chatbot="blenderbot"):
    return {"chatbot": chatbot, "Q": q, "A": a, "rot": rot, "moral": "care", "A_agrees": a_agrees,
            "rot-agree": agree, "violation-severity": sev, "worker_answer": worker, "split": "train"}


MIC_ROWS = [
    mic_row(Q1, "I would do it for the money.", 0, sev=5, agree=5, rot=ROT1,
            worker="No amount of money could convince me to kill my love."),
    mic_row(Q1, "Never, I love them.", 2, sev=5, agree=5, rot=ROT1, chatbot="dialoGPT"),
    mic_row(Q1, "Maybe, it depends.", 0, sev=3, agree=4, rot=ROT1, chatbot="gpt-neo"),
    # one answer, two violated rules: the worse one counts (0.75 * 0.5 = 0.375 beats 0.25 * 1 = 0.25)
    mic_row(Q2, "Sure, everyone does it.", 0, sev=4, agree=-1, rot="Cheating is wrong.",
            worker="No, cheating is unfair to others."),
    mic_row(Q2, "Sure, everyone does it.", 0, sev=2, agree=5, rot="You should be honest."),
    mic_row(Q3, "Pizza.", 2),  # no violating answer -> skipped
    mic_row(Q4, "Yes, yell louder.", 0, sev=4, agree=4, rot="Be patient with children."),  # no positive
    mic_row(Q5, "Rain is okay.", 1),  # neutral only -> skipped
]


def mic_ds():
    return datasets.Dataset.from_list(MIC_ROWS)


def cfg(**over):
    """Stage-2 tests here pin the first version's negative sources (casual replies for unsafe contexts, preachy
    ones for casual contexts); the near-topic sources are tested in test_negatives.py."""
    return get_config("smoke", {"stage1.max_groups": None, "stage2.max_groups": None,
                                "stage2.negative_sources": ["casual_reply", "preachy"], **over})


def s1(c):
    """The sections a stage-1 builder reads."""
    return c.loss, c.stage1


def s2(c):
    """The sections a stage-2 builder reads."""
    return c.loss, c.stage2


# ---------------------------------------------------------------------- stage 1
def test_mic_severity_formula():
    assert mic_severity(5, 5) == 1.0
    assert mic_severity(1, 5) == 0.0  # a "fine" violation is no violation
    assert mic_severity(3, 4) == pytest.approx(0.5 * 0.75)
    assert mic_severity(4, -1) == pytest.approx(0.75 * 0.5)  # missing consensus -> midpoint
    assert mic_severity(-1, -1) == pytest.approx(0.25)


def test_stage1_positive_negatives_and_weights():
    groups, rep = build_stage1_groups(mic_ds(), *s1(cfg()))
    assert rep.groups == 2 and rep.candidates == 5
    assert rep.skipped == {"prompt has no violating answer": 1, "prompt has no aligned answer and no rewrite": 2}
    by_q = {g.meta["prompt"]: g for g in groups}
    assert set(by_q) == {Q1, Q2}
    for g in groups:
        assert tuple(f.name for f in dataclasses.fields(g)) == GROUP_KEYS
        assert len(g.negatives) == 3 and g.positive not in g.negatives

    g1 = by_q[Q1]
    assert g1.context_messages == [{"role": "user", "content": Q1}]
    assert g1.positive == "Never, I love them."  # an aligned answer beats the rewrite
    assert g1.meta["positive_origin"] == "aligned_answer"
    assert g1.negatives[:2] == ["I would do it for the money.", "Maybe, it depends."]  # most severe first
    assert g1.neg_severity[:2] == pytest.approx([1.0, 0.375])
    assert g1.meta["neg_origin"] == ["same_prompt", "same_prompt", "other_prompt"]
    # the padded negative is another prompt's violating answer, with that answer's own severity
    assert (g1.negatives[2], g1.neg_severity[2]) in {("Sure, everyone does it.", 0.375),
                                                            ("Yes, yell louder.", 0.5625)}
    assert g1.meta["rot"] == ROT1

    g2 = by_q[Q2]
    assert g2.positive == "No, cheating is unfair to others."
    assert g2.meta["positive_origin"] == "worker_rewrite"
    assert g2.negatives[0] == "Sure, everyone does it."
    assert g2.neg_severity[0] == pytest.approx(0.375)
    assert g2.meta["neg_origin"] == ["same_prompt", "other_prompt", "other_prompt"]
    assert not set(g2.negatives[1:]) & {"Sure, everyone does it.", g2.positive}
    for g in groups:  # alpha = 1 (default): w = 1 + severity, the same rule as the loss module
        assert g.neg_weights == pytest.approx(social_weights(torch.tensor(g.neg_severity), 1.0).tolist())


def test_stage1_alpha_zero_gives_unit_weights_and_same_groups():
    base, _ = build_stage1_groups(mic_ds(), *s1(cfg()))
    flat, _ = build_stage1_groups(mic_ds(), *s1(cfg(**{"loss.social_alpha": 0.0})))
    assert all(w == 1.0 for g in flat for w in g.neg_weights)
    assert [g.negatives for g in flat] == [g.negatives for g in base]
    assert [g.neg_severity for g in flat] == [g.neg_severity for g in base]
    doubled, _ = build_stage1_groups(mic_ds(), *s1(cfg(**{"loss.social_alpha": 2.0})))
    assert doubled[0].neg_weights == pytest.approx([1 + 2 * s for s in doubled[0].neg_severity])


def test_stage1_without_fill_keeps_fewer_negatives():
    groups, _ = build_stage1_groups(mic_ds(), *s1(cfg(**{"stage1.fill_negatives": False})))
    by_q = {g.meta["prompt"]: g for g in groups}
    assert by_q[Q1].negatives == ["I would do it for the money.", "Maybe, it depends."]
    assert by_q[Q2].negatives == ["Sure, everyone does it."]
    assert by_q[Q2].meta["neg_origin"] == ["same_prompt"]


def test_stage1_rot_in_context_and_k():
    groups, _ = build_stage1_groups(mic_ds(), *s1(cfg(**{"stage1.rot_in_context": True, "loss.num_negatives": 1})))
    g1 = next(g for g in groups if g.meta["prompt"] == Q1)
    assert g1.context_messages == [{"role": "system", "content": f"Rule of thumb: {ROT1}"},
                                      {"role": "user", "content": Q1}]
    assert g1.negatives == ["I would do it for the money."]  # K = 1: only the worst


def test_stage1_deterministic_and_capped():
    a, _ = build_stage1_groups(mic_ds(), *s1(cfg()), seed=3)
    b, _ = build_stage1_groups(mic_ds(), *s1(cfg()), seed=3)
    assert a == b
    one, report = build_stage1_groups(mic_ds(), *s1(cfg()), max_groups=1)
    assert len(one) == 1 and "kept 1 of 2" in report.notes[0]


def test_stage1_bad_row_names_row_and_field():
    rows = MIC_ROWS[:2] + [mic_row(Q2, "x", 7)]
    with pytest.raises(GroupBuildError, match=r"row 2, field 'A_agrees'"):
        build_stage1_groups(datasets.Dataset.from_list(rows), *s1(cfg()))


# ---------------------------------------------------------------------- stage 2
def pd_row(d, r, context, response, label, rots=()):
    return {"context": context, "response": response, "rots": list(rots), "safety_label": label,
            "safety_annotations": [], "safety_annotation_reasons": [], "source": "socialchemistry", "etc": None,
            "dialogue_id": d, "response_id": r, "episode_done": False}


PD_ROWS = [
    pd_row(0, 0, "I want to threaten my neighbor.", "You should not threaten anyone, it's wrong.",
           "__needs_intervention__", ["It's wrong to threaten someone."]),
    pd_row(0, 1, "He is annoying though.", "I understand, but talk to him calmly.", "__needs_caution__"),
    pd_row(1, 0, "I baked cookies today!", "Yum, what kind?", "__casual__"),
    pd_row(1, 1, "Chocolate chip.", "My favourite!", "__casual__"),
    pd_row(2, 0, "I'll skip work and lie to my boss.", "Lying to your boss could cost you your job.",
           "__probably_needs_caution__"),
]
CASUAL_ROWS = [
    {"history": ["hey how's it going?"], "response": "pretty good, you?", "source": "chitchat"},
    {"history": ["what did you do today?", "went hiking", "nice, where?"], "response": "up at the lake",
     "source": "chitchat"},
]
UNSAFE_REPLIES = {r["response"]: SAFETY_SEVERITY[r["safety_label"]] for r in PD_ROWS
                  if r["safety_label"] != "__casual__"}
CASUAL_REPLIES = {r["response"] for r in PD_ROWS if r["safety_label"] == "__casual__"} | {
    r["response"] for r in CASUAL_ROWS}


def stage2(**over):
    return build_stage2_groups(datasets.Dataset.from_list(PD_ROWS), datasets.Dataset.from_list(CASUAL_ROWS),
                               *s2(cfg(**over)))


def test_stage2_unsafe_and_casual_negatives():
    groups, rep = stage2(**{"stage2.casual_fraction": 0.5})
    assert rep.candidates == 7
    kinds = [g.meta["kind"] for g in groups]
    assert kinds.count("unsafe") == 3 and kinds.count("casual") == 3  # all unsafe, casual in proportion 1:1
    for g in groups:
        assert tuple(f.name for f in dataclasses.fields(g)) == GROUP_KEYS
        assert len(g.negatives) == 3 and len(set(g.negatives)) == 3
        assert g.positive not in g.negatives
        assert g.context_messages[-1]["role"] == "user"
        if g.meta["kind"] == "unsafe":
            # chatting along is the bad reply, weighted by how much this context needs intervention
            assert set(g.negatives) <= CASUAL_REPLIES
            sev = SAFETY_SEVERITY[g.meta["safety_label"]]
            assert sev > 0 and g.neg_severity == [sev] * 3
            assert g.neg_weights == pytest.approx([1 + sev] * 3)
        else:
            # a preachy reply written for an unsafe context is the bad reply, weighted by its context's severity
            assert set(g.negatives) <= set(UNSAFE_REPLIES)
            assert g.neg_severity == pytest.approx([UNSAFE_REPLIES[n] for n in g.negatives])
    # the history runs up to this turn: turn 1 of dialogue 0 sees turn 0 and its reply
    g = next(g for g in groups if g.positive == "I understand, but talk to him calmly.")
    assert [m["content"] for m in g.context_messages] == [
        "I want to threaten my neighbor.", "You should not threaten anyone, it's wrong.", "He is annoying though."]
    assert [m["role"] for m in g.context_messages] == ["user", "assistant", "user"]


def test_stage2_own_dialogue_excluded_for_casual_pd_contexts():
    # dialogue 3: a casual turn inside an unsafe dialogue; its unsafe sibling's reply must not be its negative
    rows = PD_ROWS + [pd_row(3, 0, "I'll steal a car.", "Stealing is a crime, please don't.", "__needs_caution__"),
                      pd_row(3, 1, "Just kidding, I like cars.", "Cars are great!", "__casual__")]
    groups, _ = build_stage2_groups(datasets.Dataset.from_list(rows), None,
                                    *s2(cfg(**{"stage2.casual_fraction": 1.0})))
    g = next(g for g in groups if g.positive == "Cars are great!")
    assert "Stealing is a crime, please don't." not in g.negatives


def test_stage2_fraction_and_cap():
    groups, _ = stage2(**{"stage2.max_groups": 4, "stage2.casual_fraction": 0.25})
    kinds = [g.meta["kind"] for g in groups]
    assert len(groups) == 4 and kinds.count("casual") == 1
    groups, report = stage2(**{"stage2.max_groups": 6, "stage2.casual_fraction": 0.0})
    assert {g.meta["kind"] for g in groups} == {"unsafe"} and len(groups) == 3
    assert "wanted 6 unsafe groups, the data has 3" in report.warnings[0]


def test_stage2_alpha_zero_and_determinism():
    a, _ = stage2(**{"stage2.casual_fraction": 0.5})
    b, _ = stage2(**{"stage2.casual_fraction": 0.5})
    assert a == b
    flat, _ = stage2(**{"stage2.casual_fraction": 0.5, "loss.social_alpha": 0.0})
    assert [g.negatives for g in flat] == [g.negatives for g in a]
    assert all(w == 1.0 for g in flat for w in g.neg_weights)
    other, _ = build_stage2_groups(datasets.Dataset.from_list(PD_ROWS), datasets.Dataset.from_list(CASUAL_ROWS),
                                   *s2(cfg(**{"stage2.casual_fraction": 0.5})), seed=1)
    assert sorted(g.positive for g in other) == sorted(g.positive for g in a)


def test_stage2_unknown_label_is_an_error():
    rows = PD_ROWS + [pd_row(9, 0, "hm", "ok", "__weird__")]
    with pytest.raises(GroupBuildError, match="safety_label"):
        build_stage2_groups(datasets.Dataset.from_list(rows), None, *s2(cfg()))


# ---------------------------------------------------------------------- casual turns that keep their RoT (issue #15)
DRINK = "I'm glad you see it. Tampering with someone's drink is never okay and could get you fired."
ROT_CASE_ROWS = [  # shared/cases/casual-pool-rot-turns: the speaker concedes (__casual__) but the reply is guidance
    pd_row(0, 0, "I put salt in my coworker's coffee every morning as a joke.",
           "That's not a harmless joke. How would you feel if someone did that to you?", "__needs_caution__",
           ["It's wrong to tamper with someone's food or drink."]),
    pd_row(0, 1, "Yeah, okay. I guess it isn't that funny.", DRINK, "__casual__",
           ["It's wrong to tamper with someone's food or drink."]),
    pd_row(1, 0, "I just adopted a kitten!", "Congratulations! What did you name it?", "__casual__"),
    pd_row(1, 1, "Her name is Mochi.", "Mochi is adorable. Is she settling in well?", "__casual__"),
    pd_row(2, 0, "I'm going to key my ex's car tonight.", "Please don't. Damaging someone's property is illegal "
           "and will only make things worse.", "__needs_intervention__",
           ["It's wrong to damage other people's property."]),
    pd_row(3, 0, "My neighbour's dog barks all day, so I'll poison it.", "You can't hurt an animal. Talk to your "
           "neighbour or call animal control instead.", "__needs_intervention__", ["It's wrong to hurt animals."]),
]


def test_stage2_rot_grounded_casual_reply_is_never_a_chat_along_negative():
    # the case: the conceding turn's reply was the max-weight negative of "...so I'll poison it."
    from prosocial_lib.groups.stage2 import ROT_GROUNDED_CASUAL
    for seed in range(5):
        groups, report = build_stage2_groups(datasets.Dataset.from_list(ROT_CASE_ROWS), None,
                                             *s2(cfg(**{"loss.num_negatives": 2})), seed=seed)
        unsafe = [g for g in groups if g.kind == "unsafe"]
        assert unsafe and all(DRINK not in g.negatives for g in unsafe)
        assert all(set(g.negatives) <= {"Congratulations! What did you name it?",
                                        "Mochi is adorable. Is she settling in well?"} for g in unsafe)
        assert report.excluded == {ROT_GROUNDED_CASUAL: 1}
        assert report.to_dict()["excluded"] == {ROT_GROUNDED_CASUAL: 1}
        assert f"kept out of the negatives 1 x {ROT_GROUNDED_CASUAL}" in report.summary()
    # it is still a casual context (its gold reply the positive); only the chat-along pool loses it
    groups, _ = build_stage2_groups(datasets.Dataset.from_list(ROT_CASE_ROWS), None,
                                    *s2(cfg(**{"loss.num_negatives": 2, "stage2.casual_fraction": 1.0})))
    assert any(g.positive == DRINK and g.kind == "casual" for g in groups)


def test_stage2_rot_grounded_casual_turn_given_as_turns_with_casual_chat():
    # new instance: per-turn rows (history column) from a __probably_needs_caution__ dialogue, next to casual chat
    # and a casual turn WITHOUT rules of thumb in an unsafe dialogue (that one still chats along and stays a negative)
    guidance = "Fair enough. Still, copying a friend's homework is cheating and hurts you both."
    turns = [
        {"history": ["I'll copy my friend's homework."], "response": "That's cheating; do your own work.",
         "safety_label": "__probably_needs_caution__", "rots": ["It's wrong to cheat."], "source": "x",
         "dialogue_id": 7, "response_id": 0},
        {"history": ["I'll copy my friend's homework.", "That's cheating; do your own work.", "Fine, I won't."],
         "response": guidance, "safety_label": "__casual__", "rots": ["It's wrong to cheat."], "source": "x",
         "dialogue_id": 7, "response_id": 1},
        {"history": ["I'll steal a car."], "response": "Stealing is a crime, please don't.",
         "safety_label": "__needs_caution__", "rots": ["It's wrong to steal."], "source": "x", "dialogue_id": 8,
         "response_id": 0},
        {"history": ["I'll steal a car.", "Stealing is a crime, please don't.", "Just kidding, I like cars."],
         "response": "Cars are great!", "safety_label": "__casual__", "rots": [], "source": "x", "dialogue_id": 8,
         "response_id": 1},
    ]
    negatives = set()
    for seed in range(8):
        groups, report = build_stage2_groups(turns, datasets.Dataset.from_list(CASUAL_ROWS),
                                             *s2(cfg(**{"loss.num_negatives": 3})), seed=seed)
        negatives |= {n for g in groups if g.kind == "unsafe" for n in g.negatives}
        assert sum(report.excluded.values()) == 1
    assert guidance not in negatives
    assert "Cars are great!" in negatives and {r["response"] for r in CASUAL_ROWS} <= negatives


def test_social_weight_of_a_group_rejects_non_finite_alpha():
    from prosocial_lib.groups.types import make_group, social_weight
    for bad in (float("inf"), float("nan"), -1.0):
        with pytest.raises(ValueError, match="alpha"):
            social_weight(0.5, bad)
    with pytest.raises(ValueError, match="alpha"):
        make_group([{"role": "user", "content": "hi"}], "hello", ["go away"], [0.0], alpha=float("inf"))
    with pytest.raises(ValueError, match="severity"):
        social_weight(1.5, 1.0)


# ---------------------------------------------------------------------- summaries
def test_summaries():
    groups, _ = stage2(**{"stage2.casual_fraction": 0.5})
    s = summarize_groups(groups, bins=4)
    assert s["groups"] == 6 and s["by_kind"] == {"unsafe": 3, "casual": 3}
    assert s["negatives"] == 18 and s["negatives_per_group"] == {3: 6} and s["mean_negatives"] == 3.0
    assert sum(s["weight_hist"]["counts"]) == 18 and len(s["weight_hist"]["edges"]) == 5
    assert s["weight_min"] >= 1.0 and s["weight_max"] <= 2.0
    frame = groups_frame(groups)
    assert len(frame) == 18 and set(frame["kind"]) == {"unsafe", "casual"}
    table = group_table(groups[0])
    assert list(table["role"])[-3:] == ["negative 1, " + groups[0].meta["neg_origin"][0],
                                        "negative 2, " + groups[0].meta["neg_origin"][1],
                                        "negative 3, " + groups[0].meta["neg_origin"][2]]
    assert summarize_groups([])["groups"] == 0


# ---------------------------------------------------------------------- your own groups (dicts, JSON, JSONL)
def test_groups_from_dicts_and_files(tmp_path):
    from prosocial_lib.groups.io import read_groups, write_groups
    from prosocial_lib.groups.types import ContrastiveGroup, as_groups

    groups, _ = stage2(**{"stage2.casual_fraction": 0.5})
    assert [ContrastiveGroup.from_dict(g.to_dict()) for g in groups] == groups
    for name in ("own.jsonl", "own.json"):
        assert read_groups(write_groups(groups, tmp_path / name)) == groups
    plain = as_groups([{"context_messages": [{"role": "user", "content": "hi"}], "positive": "hello",
                        "negatives": ["go away"]}])
    assert plain[0].neg_weights == [1.0] and plain[0].neg_severity == [0.0] and plain[0].meta == {}
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(groups[0].to_dict()) + "\n" + json.dumps({**groups[1].to_dict(), "positive": ""}) + "\n")
    with pytest.raises(GroupBuildError, match=r"bad.jsonl, line 2: field 'positive'"):
        read_groups(bad)
    bad.write_text(json.dumps({**groups[0].to_dict(), "negative": ["x"]}) + "\n")
    with pytest.raises(GroupBuildError, match=r"line 1: unknown field 'negative'"):
        read_groups(bad)
    with pytest.raises(GroupBuildError, match=r"group 0: missing field 'negatives'"):
        as_groups([{"context_messages": [{"role": "user", "content": "hi"}], "positive": "hello"}])
