"""Build the judge TRAINING set labelled by reading, ``prosocial_lib/data/samples/judge_train/train.jsonl``
(issue #13): the judge check set's schema and labelling rule (``tools/build_judge_check.py``), on contexts the
judges may train on.

    python tools/build_judge_train.py generate --stage2 runs/cpu/stage2   # regenerate the model replies
    python tools/build_judge_train.py assemble                            # merge replies + labels + written pairs
    python tools/build_judge_train.py assemble --check                    # exit 1 if train.jsonl differs

Three inputs under ``tools/judge_train/`` (the same layout as ``tools/judge_check/``):

- ``generations.jsonl``: model replies written by ``generate``: contexts drawn (seeded) from the TRAIN and
  VALIDATION splits of the embedded ProsocialDialog-style sample (non-casual turns, one per dialogue, with their
  history) and from the ``chitchat-dataset`` TRAIN conversations (a last turn of 4-30 words, one per
  conversation); any context whose history is also a test-split or check-set history is left out. Replies of the
  base model (``embedded``: SmolLM2-135M-Instruct; greedy for every context, sampled at temperature 0.7 / top-p
  0.9 for a seeded subset) and of the cpu-preset stage-2 model (greedy, a seeded subset), ``max_new_tokens`` 64,
  through :func:`prosocial_lib.modeling.generation.generate_replies` exactly as for the check set.
- ``labels_model.jsonl``: ``gen_id``, ``label``, ``reason``: each model reply labelled BY READING it in its
  context, one at a time, with the check set's rule (no classifier, no keyword rule).
- ``written.jsonl``: pairs written by hand for these training contexts, in the style and length of the models'
  replies, for the labels the models rarely produce (prosocial; condoning in a polite, model-like voice; preachy).
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import build_judge_check as check  # noqa: E402  (shares the check set's generation and assembly)

HERE = check.ROOT / "tools" / "judge_train"
GENERATIONS, LABELS, WRITTEN = HERE / "generations.jsonl", HERE / "labels_model.jsonl", HERE / "written.jsonl"
OUT = check.ROOT / "prosocial_lib" / "data" / "samples" / "judge_train" / "train.jsonl"
SEED = 313  # issue #13
N_CONTEXTS = {"adversarial": 150, "casual": 150}
N_SAMPLED = 30  # contexts that also get one sampled reply of the base model
N_STAGE2 = 90  # contexts the stage-2 model answers (greedy)
TRAIN_SPLITS = ("train", "validation")
CASUAL_ROWS = 6000  # chitchat train rows the casual contexts are drawn from


def banned_histories() -> set[str]:
    """History texts the judge training set must not use: every test-split turn and every check-set context."""
    from prosocial_lib.data import dialogue_turns, load_casual, load_judge_check, load_prosocial_dialog
    banned = {"\n".join(h) for h in dialogue_turns(load_prosocial_dialog("embedded", "test"))["history"]}
    banned |= {"\n".join(h) for h in load_casual("chitchat", "test")["history"]}
    banned |= {"\n".join(h) for h in load_judge_check()["history"]}
    return banned


def pick_contexts(seed: int = SEED) -> list[dict]:
    """Adversarial contexts (one non-casual turn per train / validation dialogue) and casual ones (chitchat train
    conversations, one per conversation), none of them a test or check-set history."""
    from prosocial_lib.data import dialogue_turns, load_casual, load_prosocial_dialog
    rng = random.Random(seed)
    banned = banned_histories()
    by_dialogue: dict[tuple[str, int], list[dict]] = {}
    for split in TRAIN_SPLITS:
        t = dialogue_turns(load_prosocial_dialog("embedded", split))[:]
        for d, r, h, lab in zip(t["dialogue_id"], t["response_id"], t["history"], t["safety_label"]):
            if lab != "__casual__" and "\n".join(h) not in banned:
                by_dialogue.setdefault((split, d), []).append(
                    {"context_set": "adversarial", "context_id": f"prosocial-{split}-{d}-{r}", "safety_label": lab,
                     "history": list(h)})
    adversarial = [rng.choice(v) for _, v in sorted(by_dialogue.items())]
    chat = load_casual("chitchat", "train")[:CASUAL_ROWS]
    by_conversation: dict[str, dict] = {}
    for i, h in enumerate(chat["history"]):
        if 4 <= len(h[-1].split()) <= 30 and len(h) <= 5 and "\n".join(h) not in banned:
            by_conversation.setdefault(h[0], {"context_set": "casual", "context_id": f"chitchat-train-{i}",
                                              "safety_label": "", "history": list(h)})
    casual = list(by_conversation.values())
    out = []
    for name, rows in (("adversarial", adversarial), ("casual", casual)):
        out += [rows[i] for i in sorted(rng.sample(range(len(rows)), N_CONTEXTS[name]))]
    return out


def generate(args: argparse.Namespace) -> None:
    contexts = pick_contexts()
    plan = check.generation_plan(len(contexts), N_SAMPLED, N_STAGE2, seed=SEED)
    check.generate_rows(contexts, plan, check.chosen_models(args), Path(args.out), seed=SEED)


def main(argv: list[str] | None = None) -> int:
    return check.cli(argv, __doc__, GENERATIONS, generate, lambda: check.build_rows(GENERATIONS, LABELS, WRITTEN), OUT)


if __name__ == "__main__":
    sys.exit(main())
