"""Merge the drafts in tools/sample_drafts/ into the embedded sample (issue #12). Re-runnable: same files out.

    python tools/build_sample.py            # rewrite the sample files
    python tools/build_sample.py --check    # exit 1 if the committed sample differs from what the drafts give

Everything here was WRITTEN FOR THIS BOOK in the upstream schemas; none of it is real ProsocialDialog or MIC data.

- ProsocialDialog-style: every dialogue already in the sample keeps its split; the draft dialogues (one turn per
  line, ``tools/sample_drafts/pd_*.jsonl``) are dealt to splits with a fixed seed, stratified by source and by the
  first turn's label (:data:`NEW_DIALOGUES`: test and validation only get dialogues whose first turn needs caution
  or intervention; dialogues that open casually go to train). Each split is written, sorted by
  ``(dialogue_id, response_id)``, as two shards ``{split}-00000.jsonl`` / ``{split}-00001.jsonl`` of about equal
  size, like the hub's sharded files.
- MIC-style: rows of the drafts (``mic_new.csv``, split column empty) get a split per prompt (every answer to a
  prompt in one split), about 80/10/10 train/dev/test of all rows, and join the earlier rows of
  ``samples/mic/MIC.csv``; the file lists prompts in a seeded order (a prompt's answers together), so that the row
  caps of the smaller presets, which keep a split's first rows, see old and new prompts alike.
- The "subtle" contexts (``subtle.jsonl``) are copied to ``samples/subtle/test.jsonl`` (test only).

Re-running first drops from the sample every dialogue id and every (Q, A) pair the drafts hold, so the output only
depends on the drafts and on the sample as it stood before them.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import random
import sys
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DRAFTS = ROOT / "tools" / "sample_drafts"
SAMPLES = ROOT / "prosocial_lib" / "data" / "samples"
PD_DIR, MIC_FILE, SUBTLE_FILE = SAMPLES / "prosocial_dialog", SAMPLES / "mic" / "MIC.csv", SAMPLES / "subtle" / "test.jsonl"
SEED = 12  # issue #12
#: How many of the draft dialogues go to test and validation (the rest to train). With the 15 + 15 dialogues of
#: the first sample that open with a non-casual turn, test gets >= 150 non-casual first turns, validation >= 75.
NEW_DIALOGUES = {"test": 140, "validation": 64}
MIC_SHARES = {"test": 0.10, "dev": 0.10}  # of all rows; train takes the rest
SPLITS = ("train", "validation", "test")


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def jsonl_text(rows: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def by_dialogue(rows: list[dict]) -> dict[int, list[dict]]:
    out: dict[int, list[dict]] = defaultdict(list)
    for r in sorted(rows, key=lambda r: (r["dialogue_id"], r["response_id"])):
        out[r["dialogue_id"]].append(r)
    return dict(out)


def deal(strata: dict, quotas: dict[str, int], rng: random.Random) -> dict:
    """Assign items of each stratum to splits in proportion to ``quotas`` (largest remainder, so the totals are
    exact); an item in no quota goes to "train". ``strata``: key -> list of items (shuffled here)."""
    total = sum(len(v) for v in strata.values())
    want = {k: {s: len(v) * q / total for s, q in quotas.items()} for k, v in strata.items()}
    got = {k: {s: int(x) for s, x in w.items()} for k, w in want.items()}
    for s, q in quotas.items():  # hand out the remainders, largest first, until each quota is met
        order = sorted(strata, key=lambda k: (-(want[k][s] - got[k][s]), str(k)))
        for k in order[: q - sum(got[k][s] for k in strata)]:
            got[k][s] += 1
    out = {}
    for k in sorted(strata, key=str):
        items = list(strata[k])
        rng.shuffle(items)
        for s, n in got[k].items():
            for item in items[:n]:
                out[item] = s
            items = items[n:]
        out.update({item: "train" for item in items})
    return out


def build_prosocial() -> dict[str, str]:
    """{file name: text} of the merged ProsocialDialog-style sample."""
    new = by_dialogue([r for p in sorted(DRAFTS.glob("pd_*.jsonl")) for r in read_jsonl(p)])
    old = {s: by_dialogue([r for p in sorted(PD_DIR.glob(f"{s}-*.jsonl")) for r in read_jsonl(p)
                           if r["dialogue_id"] not in new]) for s in SPLITS}
    strata: dict[tuple, list[int]] = defaultdict(list)
    casual_first: list[int] = []
    for d, turns in new.items():
        first = turns[0]["safety_label"]
        (casual_first if first == "__casual__" else strata[(turns[0]["source"], first)]).append(d)
    split_of = deal(strata, NEW_DIALOGUES, random.Random(SEED))
    split_of.update({d: "train" for d in casual_first})
    files = {}
    for s in SPLITS:
        dialogues = {**old[s], **{d: t for d, t in new.items() if split_of[d] == s}}
        ids = sorted(dialogues)
        turns = [len(dialogues[d]) for d in ids]
        cut = next(i for i in range(len(ids) + 1) if 2 * sum(turns[:i]) >= sum(turns))
        for shard, part in enumerate((ids[:cut], ids[cut:])):
            files[f"{s}-{shard:05d}.jsonl"] = jsonl_text([t for d in part for t in dialogues[d]])
    return files


def build_mic() -> str:
    """The text of the merged MIC-style ``MIC.csv``."""
    with open(DRAFTS / "mic_new.csv", encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        header, new = reader.fieldnames, list(reader)
    pairs = {(r["Q"], r["A"]) for r in new}
    with open(MIC_FILE, encoding="utf-8", newline="") as f:
        old_reader = csv.DictReader(f)
        assert old_reader.fieldnames == header, (old_reader.fieldnames, header)
        old = [r for r in old_reader if (r["Q"], r["A"]) not in pairs]
    prompts: dict[str, list[dict]] = defaultdict(list)
    for r in new:
        prompts[r["Q"]].append(r)
    order = sorted(prompts)
    random.Random(SEED).shuffle(order)
    total = len(old) + len(new)
    have = Counter(r["split"] for r in old)
    for q in order:  # fill test, then dev, to their share of all rows; the rest is train
        split = next((s for s, share in MIC_SHARES.items() if have[s] < share * total), "train")
        for r in prompts[q]:
            r["split"] = split
        have[split] += len(prompts[q])
    # Rows in a seeded order of prompts (a prompt's answers stay together): the presets' row caps take the first
    # rows of a split, which should be a fair sample of it, not the first sample's prompts only.
    by_prompt: dict[str, list[dict]] = defaultdict(list)
    for r in old + new:
        by_prompt[r["Q"]].append(r)
    order = sorted(by_prompt)
    random.Random(SEED).shuffle(order)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=header, lineterminator="\n")
    writer.writeheader()
    writer.writerows(r for q in order for r in by_prompt[q])
    return out.getvalue()


def outputs() -> dict[Path, str]:
    files = {PD_DIR / name: text for name, text in build_prosocial().items()}
    files[MIC_FILE] = build_mic()
    files[SUBTLE_FILE] = jsonl_text(read_jsonl(DRAFTS / "subtle.jsonl"))
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="only compare with the committed files")
    args = parser.parse_args(argv)
    files = outputs()
    stale = [p for p in PD_DIR.glob("*.jsonl") if p not in files]
    if args.check:
        differ = [p for p, text in files.items() if not p.exists() or p.read_text(encoding="utf-8") != text]
        for p in differ + stale:
            print(f"out of date: {p.relative_to(ROOT)}")
        return 1 if differ or stale else 0
    for p in stale:
        p.unlink()
    for p, text in files.items():
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text, encoding="utf-8")
        print(f"wrote {p.relative_to(ROOT)} ({text.count(chr(10))} lines)")
    sys.path.insert(0, str(ROOT))  # read back with the library's strict loaders: every row valid, no split leak
    from prosocial_lib.data import load_mic, load_prosocial_dialog, load_subtle

    sizes = [f"ProsocialDialog {s} {len(load_prosocial_dialog('embedded', s))}" for s in SPLITS]
    sizes += [f"MIC {s} {len(load_mic('embedded', s))}" for s in ("train", "dev", "test")]
    print("loaded: " + ", ".join(sizes) + f", subtle {len(load_subtle())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
