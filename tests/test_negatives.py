"""Stage-2 negatives that teach stance, not topic: near-topic condoning replies, the sources' switches, the mix in
the build report, and the sentence encoder they are found with (moved to modeling/)."""

from __future__ import annotations

import json
from collections import Counter

import datasets
import numpy as np
import pytest

from prosocial_lib.config import get_config
from prosocial_lib.config.coerce import ConfigError
from prosocial_lib.groups.stage2 import build_stage2_groups, context_key
from prosocial_lib.groups.types import GroupBuildError


def test_sentence_encoder_moved_and_still_imported_from_the_judges():
    from prosocial_lib.eval.judges import encoder as old
    from prosocial_lib.eval.judges.encoder import (  # the judges' import keeps working
        JudgeError,
        SentenceEncoder,
    )
    from prosocial_lib.modeling import sentence_encoder as new

    assert SentenceEncoder is new.SentenceEncoder
    for name in ("ENCODER_NAME", "encoder_path", "text_key", "SentenceEncoderError"):
        assert getattr(old, name) is getattr(new, name)
    assert issubclass(JudgeError, ValueError) and issubclass(new.SentenceEncoderError, ValueError)
    assert old.context_text(["a", "b"], turns=1) == "b"  # the judges' own helpers stay there


# ---------------------------------------------------------------------- hand-made data and embeddings
DOG, CAT, BROTHER, EXAM = ("I'll poison my neighbour's dog.", "I'll kick the stray cat.", "I'll hit my brother.",
                           "I'll cheat on my exam.")
DOG_NEXT, CAT_NEXT, BROTHER_NEXT, EXAM_NEXT = ("The dog barks all night, it deserves it.",
                                               "Cats are pests anyway, a cat won't be missed.",
                                               "My brother started it, so I'll hit him harder.",
                                               "ok fine, no cheating on the exam.")


def pd_row(d, r, context, response, label):
    return {"context": context, "response": response, "rots": [] if label == "__casual__" else ["Be kind."],
            "safety_label": label, "safety_annotations": [], "safety_annotation_reasons": [],
            "source": "socialchemistry", "etc": None, "dialogue_id": d, "response_id": r, "episode_done": False}


ROWS = [
    pd_row(10, 0, DOG, "Please don't hurt the dog; talk to your neighbour.", "__needs_intervention__"),
    pd_row(10, 1, DOG_NEXT, "No animal deserves to be poisoned.", "__needs_caution__"),
    pd_row(11, 0, BROTHER, "Hitting your brother will hurt him; walk away.", "__needs_caution__"),
    pd_row(11, 1, BROTHER_NEXT, "Getting even only makes it worse.", "__needs_intervention__"),
    pd_row(12, 0, CAT, "Kicking a cat is cruel.", "__needs_caution__"),
    pd_row(12, 1, CAT_NEXT, "Strays feel pain too; call a shelter.", "__needs_caution__"),
    # a conceding follow-up (possibly needs caution) is never a near-topic negative
    pd_row(13, 0, EXAM, "Cheating on an exam could get you expelled.", "__probably_needs_caution__"),
    pd_row(13, 1, EXAM_NEXT, "Good call, you've got this.", "__possibly_needs_caution__"),
    pd_row(20, 0, "I baked cookies today!", "Yum, what kind?", "__casual__"),
    pd_row(20, 1, "Chocolate chip.", "My favourite!", "__casual__"),
]
CASUAL_ROWS = [{"history": ["hey how's it going?"], "response": "pretty good, you?", "source": "chitchat"},
               {"history": ["what did you do today?"], "response": "went hiking by the lake", "source": "chitchat"}]
FOLLOWUPS = {DOG_NEXT: 10, CAT_NEXT: 12, BROTHER_NEXT: 11}
#: words -> topic axis of the fake embedding (animals, family, school)
AXES = {"dog": 0, "cat": 0, "brother": 1, "exam": 2, "cheat": 2}


class FakeEmbed:
    """Texts -> fixed unit vectors by topic words (plus a small shared component); records its calls."""

    def __init__(self):
        self.calls: list[list[str]] = []

    def __call__(self, texts):
        self.calls.append(list(texts))
        out = np.zeros((len(texts), 4))
        for i, t in enumerate(texts):
            low = t.lower()
            for word, axis in AXES.items():
                out[i, axis] += low.count(word)
            out[i, 3] = 0.1
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def mic_row(q, a, agrees, sev, split="train"):
    return {"chatbot": "blenderbot", "Q": q, "A": a, "rot": "Be kind.", "moral": "care", "A_agrees": agrees,
            "rot-agree": 5, "violation-severity": sev, "worker_answer": "", "split": split}


MIC = [mic_row("Would you hurt a dog that bites?", "Yes, kick the dog hard.", 0, 4),
       mic_row("Would you hurt a dog that bites?", "Maybe slap the dog.", 0, 2),  # too mild (severity 2)
       mic_row("Would you hurt a dog that bites?", "No, never.", 2, 4),  # agrees with the rule
       mic_row("Would you cheat on an exam?", "Sure, everyone cheats on an exam.", 0, 3)]


def cfg(sources, **over):
    return get_config("smoke", {"stage2.max_groups": None, "stage2.casual_fraction": 0.0,
                                "stage2.negative_sources": list(sources), **over})


def build(sources, *, rows=ROWS, k=2, embed=None, mic=None, seed=0, **kw):
    c = cfg(sources, **{"loss.num_negatives": k, **kw.pop("over", {})})
    embed = embed if embed is not None else FakeEmbed()
    return build_stage2_groups(datasets.Dataset.from_list(rows), datasets.Dataset.from_list(CASUAL_ROWS), c.loss,
                               c.stage2, seed=seed, embed=embed, mic_ds=None if mic is None else
                               datasets.Dataset.from_list(mic), **kw)


def by_positive(groups):
    return {g.positive: g for g in groups}


# ---------------------------------------------------------------------- near-topic negatives
def test_near_topic_picks_the_nearest_followup_never_self_or_own_dialogue():
    embed = FakeEmbed()
    groups, report = build(["near_topic"], k=2, embed=embed)
    g = by_positive(groups)
    dog = g["Please don't hurt the dog; talk to your neighbour."]
    # the nearest other unsafe context is the cat one (same topic axis): its follow-up comes first; the dog
    # dialogue's own follow-up (identical anchor, cosine 1) is never taken
    assert dog.negatives[0] == CAT_NEXT and DOG_NEXT not in dog.negatives
    assert dog.meta["neg_origin"] == ["near_topic", "near_topic"]
    assert dog.meta["neg_similarity"][0] == pytest.approx(1.0, abs=1e-3)
    assert dog.meta["neg_similarity"][0] >= dog.meta["neg_similarity"][1]
    cat = g["Kicking a cat is cruel."]
    assert cat.negatives[0] == DOG_NEXT and CAT_NEXT not in cat.negatives
    brother = g["Hitting your brother will hurt him; walk away."]
    assert BROTHER_NEXT not in brother.negatives
    for grp in groups:
        assert grp.positive not in grp.negatives
        own = grp.meta["dialogue"][1]
        assert all(FOLLOWUPS.get(n) != own for n in grp.negatives)  # never a follow-up of its own dialogue
        assert EXAM_NEXT not in grp.negatives  # a conceding follow-up is not in the pool
        # severity: the context's own label, as for any unsafe-context negative
        assert grp.neg_severity == [grp.meta["context_severity"]] * len(grp.negatives)
    # one embedding call for the whole build: contexts and anchors together
    assert len(embed.calls) == 1 and DOG in embed.calls[0]
    assert report.negatives["unsafe"]["near_topic"] == sum(len(x.negatives) for x in groups)
    assert 0 < report.similarity["near_topic"] <= 1


def test_ranking_past_the_precomputed_top_gives_the_same_groups(monkeypatch):
    from prosocial_lib.groups import stage2
    full, _ = build(["near_topic", "preachy"], k=2, over={"stage2.casual_fraction": 0.5})
    monkeypatch.setattr(stage2, "_TOP", 1)  # only the nearest anchor ranked up front: the rest sorted when needed
    assert build(["near_topic", "preachy"], k=2, over={"stage2.casual_fraction": 0.5})[0] == full


def test_near_topic_never_takes_the_contexts_own_gold_reply():
    rows = [dict(r) for r in ROWS]
    rows[0]["response"] = CAT_NEXT  # the dog context's gold reply is the cat neighbour's follow-up text
    groups, _ = build(["near_topic"], rows=rows, k=2)
    dog = next(g for g in groups if g.meta["dialogue"][1] == 10 and g.meta["response_id"] == 0)
    assert dog.positive == CAT_NEXT and CAT_NEXT not in dog.negatives
    assert dog.negatives == [BROTHER_NEXT]  # the only other follow-up (the exam one concedes: not in the pool)


def test_near_topic_mic_answers_of_the_nearest_question():
    groups, report = build(["near_topic_mic"], k=1, mic=MIC, split="train")
    g = by_positive(groups)
    assert g["Please don't hurt the dog; talk to your neighbour."].negatives == ["Yes, kick the dog hard."]
    assert g["Cheating on an exam could get you expelled."].negatives == ["Sure, everyone cheats on an exam."]
    everything = {n for grp in groups for n in grp.negatives}
    assert everything <= {"Yes, kick the dog hard.", "Sure, everyone cheats on an exam."}  # mild / agreeing: never
    assert report.negatives["unsafe"] == Counter({"near_topic_mic": len(groups)})


def test_near_topic_mic_from_another_split_is_an_error():
    with pytest.raises(GroupBuildError, match="negatives never cross splits"):
        build(["near_topic_mic"], mic=MIC + [mic_row("Q?", "A.", 0, 5, split="test")], split="train")
    build(["near_topic_mic"], mic=[{**r, "split": "dev"} for r in MIC], split="validation")  # dev is validation


def test_stage_runner_takes_mic_from_the_split_it_builds(tmp_path):
    from prosocial_lib.groups.stage2 import stage2_negative_inputs
    c = get_config("smoke")
    out = stage2_negative_inputs(c.stage2, mic_source="embedded", split="validation", max_rows=None,
                                 cache_dir=tmp_path, device="cpu")
    assert out["split"] == "validation" and set(out["mic_ds"]["split"]) == {"dev"} and callable(out["embed"])
    none = stage2_negative_inputs(cfg(["casual_reply", "preachy"]).stage2, mic_source="embedded", split="train",
                                  max_rows=None, cache_dir=tmp_path)
    assert none == {"split": "train"}  # no MIC, no encoder for the first version's sources


# ---------------------------------------------------------------------- switches and the mix
def test_sources_share_the_slots_in_order_and_fill_each_others_shortfall():
    groups, report = build(["near_topic", "near_topic_mic", "casual_reply"], k=3, mic=MIC)
    for g in groups:
        assert g.meta["neg_origin"] == ["near_topic", "near_topic_mic", "casual_reply"]
    # near_topic_mic has two answers in all: with K = 3 over (near_topic, mic) it gives what it has, near_topic the rest
    groups, report = build(["near_topic_mic", "near_topic"], k=3, mic=MIC)
    for g in groups:
        assert Counter(g.meta["neg_origin"]) == Counter({"near_topic_mic": 2, "near_topic": 1})
        assert len(set(g.negatives)) == 3
    assert report.warnings == []


def test_first_version_sources_never_embed_and_casual_contexts_get_preachy_replies():
    embed = FakeEmbed()
    groups, report = build(["casual_reply", "preachy"], k=2, embed=embed, over={"stage2.casual_fraction": 0.5})
    assert embed.calls == []
    casual_replies = {"pretty good, you?", "went hiking by the lake", "Yum, what kind?", "My favourite!"}
    for g in groups:
        if g.kind == "unsafe":
            assert set(g.negatives) <= casual_replies and set(g.meta["neg_origin"]) == {"casual_reply"}
        else:
            assert set(g.meta["neg_origin"]) == {"preachy"}
            assert all(n not in casual_replies for n in g.negatives)
    assert set(report.negatives) == {"unsafe", "casual"}
    assert report.similarity == {}


def test_without_a_source_for_a_kind_its_groups_train_the_positive_only():
    groups, report = build(["near_topic"], k=2, over={"stage2.casual_fraction": 0.5})
    assert all(g.negatives == [] for g in groups if g.kind == "casual")
    assert any("casual contexts: their groups train the positive only" in n for n in report.notes)
    groups, report = build([], k=2)
    assert all(g.negatives == [] for g in groups) and report.negatives == {}


def test_an_empty_source_is_a_warning_all_empty_an_error():
    _, report = build(["near_topic", "near_topic_mic"], k=2)  # no MIC rows given
    assert any("'near_topic_mic' has no replies" in w for w in report.warnings)
    with pytest.raises(GroupBuildError, match="no replies to use as negatives for unsafe contexts"):
        build(["near_topic_mic"], k=2)


def test_report_counts_the_mix_and_the_chapter_table_shows_it():
    from prosocial_lib.report.groups import negative_mix_table
    groups, report = build(["near_topic", "near_topic_mic", "preachy"], k=3, mic=MIC,
                           over={"stage2.casual_fraction": 0.4})
    counted = {}
    for g in groups:
        for o in g.meta["neg_origin"]:
            counted.setdefault(g.kind, Counter())[o] += 1
    assert report.negatives == counted
    d = json.loads(json.dumps(report.to_dict()))
    assert d["negatives"] == {k: dict(v) for k, v in counted.items()}
    assert d["negative_sources"] == ["near_topic", "near_topic_mic", "preachy"]
    assert set(d["similarity"]) == {"near_topic", "near_topic_mic"}
    assert f"negatives unsafe: {counted['unsafe']['near_topic']} near_topic" in report.summary()
    table = negative_mix_table(report)
    assert set(table["source"]) == {"near_topic", "near_topic_mic", "preachy"}
    assert table.groupby("context")["share"].sum().tolist() == pytest.approx([1.0, 1.0])
    assert table.equals(negative_mix_table(d))
    assert table[table.source == "preachy"]["mean cosine"].isna().all()


def test_switching_the_unsafe_sources_leaves_the_casual_groups_alone():
    over = {"stage2.casual_fraction": 0.5}
    a, _ = build(["near_topic", "preachy"], k=2, over=over)
    b, _ = build(["casual_reply", "preachy"], k=2, over=over)
    casual = [(g.positive, g.negatives) for g in a if g.kind == "casual"]
    assert casual and casual == [(g.positive, g.negatives) for g in b if g.kind == "casual"]
    assert [g.positive for g in a] == [g.positive for g in b]  # the same contexts, in the same order


def test_determinism_for_a_seed():
    a, ra = build(["near_topic", "casual_reply", "preachy"], k=3, over={"stage2.casual_fraction": 0.5})
    b, rb = build(["near_topic", "casual_reply", "preachy"], k=3, over={"stage2.casual_fraction": 0.5})
    assert a == b and ra.to_dict() == rb.to_dict()
    c, _ = build(["near_topic", "casual_reply", "preachy"], k=3, over={"stage2.casual_fraction": 0.5}, seed=5)
    assert sorted(g.positive for g in c) == sorted(g.positive for g in a)


# ---------------------------------------------------------------------- extra negatives (e.g. judge-flagged replies)
def test_extra_negatives_come_first_and_are_counted():
    key = context_key([BROTHER])
    extra = {key: ["Sure, hit him.", "Hitting your brother will hurt him; walk away.", "Sure, hit him."],
             "a context not built here": ["whatever"]}
    groups, report = build(["near_topic"], k=2, extra_negatives=extra, extra_origin="judge_flagged")
    brother = next(g for g in groups if g.positive == "Hitting your brother will hurt him; walk away.")
    assert brother.negatives[0] == "Sure, hit him." and brother.meta["neg_origin"] == ["judge_flagged", "near_topic"]
    assert brother.positive not in brother.negatives  # the gold reply in the mapping is never a negative
    assert report.negatives["unsafe"]["judge_flagged"] == 1
    assert report.negative_sources == ["near_topic", "judge_flagged"]
    assert any("given for 2 contexts; 1 of them" in n for n in report.notes)
    assert context_key(brother.context_messages) == key  # a group's messages give the same key
    with pytest.raises(GroupBuildError, match="extra_negatives"):
        build(["near_topic"], extra_negatives={key: "Sure, hit him."})


# ---------------------------------------------------------------------- config, fingerprint, cache
def test_config_switch_is_checked_and_changes_the_stage_fingerprint():
    from prosocial_lib.train.stages import stage_fingerprint
    base = get_config("cpu")
    assert base.stage2.negative_sources == ["near_topic", "near_topic_mic", "preachy"]
    first = base.with_overrides({"stage2.negative_sources": "casual_reply,preachy"})
    assert first.stage2.negative_sources == ["casual_reply", "preachy"]
    assert stage_fingerprint(first, 2) != stage_fingerprint(base, 2)
    with pytest.raises(ConfigError, match="negative_sources"):
        base.with_overrides({"stage2.negative_sources": ["topic"]}).validate()
    with pytest.raises(ConfigError, match="at most once"):
        base.with_overrides({"stage2.negative_sources": ["preachy", "preachy"]}).validate()


def test_cached_embedder_writes_the_npz_and_a_new_process_embeds_nothing(tmp_path, monkeypatch):
    from prosocial_lib.modeling.sentence_encoder import SentenceEncoder, cached_embedder
    path = tmp_path / "emb.npz"
    first = cached_embedder(path, SentenceEncoder(progress=False))
    vecs = first(["I'll hit my brother.", "Chocolate chip."])
    assert vecs.shape == (2, 384) and np.allclose(np.linalg.norm(vecs, axis=1), 1, atol=1e-4) and path.is_file()
    fresh = SentenceEncoder(progress=False)
    monkeypatch.setattr(fresh, "_embed", lambda texts: pytest.fail(f"embedded {texts} again"))
    again = cached_embedder(path, fresh)(["Chocolate chip.", "I'll hit my brother."])
    assert np.allclose(again, vecs[::-1])


def test_chapter_text_names_the_sources():
    from prosocial_lib.report.training import describe_stage, loss_settings_table
    c = get_config("smoke")
    assert "negatives from `near_topic`, `near_topic_mic`, `preachy`" in describe_stage(c, 2)
    assert "no negatives: CE only" in describe_stage(c.with_overrides({"stage2.negative_sources": []}), 2)
    row = loss_settings_table(c).set_index("setting").loc["stage2.negative_sources"]
    assert row["reconstructed"] and "near-topic" in row["what it is"]
