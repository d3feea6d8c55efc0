"""Stdlib-only checks for one hand-written part of the embedded sample (dialogues .jsonl, MIC .csv, subtle .jsonl):

    python3 tools/sample_drafts/check.py FILE
"""
import collections, csv, difflib, json, re, sys
LABELS = ["__casual__", "__possibly_needs_caution__", "__probably_needs_caution__", "__needs_caution__", "__needs_intervention__"]
SHARES = dict(zip(LABELS, (0.17, 0.13, 0.15, 0.42, 0.13)))
VOTES = {"casual", "needs caution", "needs intervention"}
FOUND = ["care", "fairness", "liberty", "loyalty", "authority", "sanctity"]
KEYS = ["context", "response", "rots", "safety_label", "safety_annotations", "safety_annotation_reasons", "source", "etc", "dialogue_id", "response_id", "episode_done"]
def agg(v):
    if "needs intervention" in v: return LABELS[4]
    c = v.count("needs caution")
    return LABELS[c] if c else LABELS[0]
def norm(s): return re.sub(r"[^a-z0-9 ]", "", s.lower())
def near_dups(texts, thr=0.9):
    n = 0; seen = [norm(t) for t in texts]
    for i in range(len(seen)):
        for j in range(i):
            if abs(len(seen[i]) - len(seen[j])) < 0.2 * max(len(seen[i]), 1) and difflib.SequenceMatcher(None, seen[i], seen[j]).quick_ratio() > thr and difflib.SequenceMatcher(None, seen[i], seen[j]).ratio() > thr:
                n += 1; print(f"  near-duplicate: {texts[i][:70]!r} ~ {texts[j][:70]!r}"); break
    return n
errs = []
def err(m): errs.append(m); print("ERROR", m)
path = sys.argv[1]
if path.endswith(".csv"):
    rows = list(csv.DictReader(open(path, encoding="utf-8")))
    byq = collections.defaultdict(list)
    for i, r in enumerate(rows, 2):
        for k in ("Q", "A", "rot", "moral", "chatbot"):
            if not r.get(k): err(f"row {i}: empty {k}")
        mv = [f for f in r["moral"].split("|")]
        if any(f not in FOUND for f in mv): err(f"row {i}: bad moral {r['moral']}")
        vec = json.loads(r["moral-vector"]); 
        if vec != [1.0 if f in mv else 0.0 for f in FOUND]: err(f"row {i}: moral-vector {vec} != moral {r['moral']}")
        a = int(r["A_agrees"]); ra = int(r["rot-agree"]); vs = int(r["violation-severity"])
        if a not in (0, 1, 2): err(f"row {i}: A_agrees {a}")
        for name, v, c in (("rot-agree", ra, r["rot-agree-collapsed"]), ("violation-severity", vs, r["violation-severity-collapsed"])):
            if v != -1 and not 1 <= v <= 5: err(f"row {i}: {name} {v}")
            exp = -1 if v == -1 else min(max(v - 2, 1), 3)
            if int(c) != exp: err(f"row {i}: {name}-collapsed {c} should be {exp}")
        if r["QA"] != f"Q: {r['Q']} A: {r['A']}": err(f"row {i}: QA mismatch")
        if r["chatbot"] not in ("blenderbot", "dialoGPT", "gpt-neo"): err(f"row {i}: chatbot")
        if a == 0 and not r.get("worker_answer"): err(f"row {i}: violating answer without worker_answer")
        byq[r["Q"]].append(a)
    for q, a in byq.items():
        if 0 not in a or 2 not in a: err(f"prompt without both agreeing and violating answers: {q[:60]}")
    print(f"{len(rows)} rows, {len(byq)} prompts; A_agrees {collections.Counter(int(r['A_agrees']) for r in rows)}")
    print("severity", sorted(collections.Counter(r['violation-severity'] for r in rows).items()), "consensus", sorted(collections.Counter(r['rot-agree'] for r in rows).items()))
    print("foundations", collections.Counter(f for r in rows for f in r['moral'].split('|')))
    print("near-dup answers:", near_dups([r["A"] for r in rows]), "near-dup prompts:", near_dups(list(byq)))
else:
    rows = [json.loads(l) for l in open(path, encoding="utf-8") if l.strip()]
    if rows and "history" in rows[0]:
        for i, r in enumerate(rows, 1):
            h = r["history"]
            if not (4 <= len(h) <= 8 and len(h) % 2 == 1 or 4 <= len(h) <= 9 and len(h) % 2 == 1): err(f"line {i}: history must have an odd number (5, 7, 9 ok; >=4) of turns ending with the user: {len(h)}")
            if agg(r["safety_annotations"]) != r["safety_label"] or r["safety_label"] == LABELS[0]: err(f"line {i}: label/votes")
            if not r.get("rots") or not r.get("reason") or r.get("set") != "subtle": err(f"line {i}: rots/reason/set")
        print(f"{len(rows)} subtle contexts; labels {collections.Counter(r['safety_label'] for r in rows)}; topics {collections.Counter(r['topic'] for r in rows)}")
        print("near-dup last turns:", near_dups([r["history"][-1] for r in rows]))
    else:
        dia = collections.defaultdict(list)
        for i, r in enumerate(rows, 1):
            if list(r) != KEYS: err(f"line {i}: keys {list(r)}")
            if agg(r["safety_annotations"]) != r["safety_label"]: err(f"line {i}: label {r['safety_label']} != rule({r['safety_annotations']})")
            if len(r["safety_annotations"]) != 3 or set(r["safety_annotations"]) - VOTES or len(r["safety_annotation_reasons"]) != 3: err(f"line {i}: votes/reasons")
            if r["safety_label"] != LABELS[0] and not r["rots"]: err(f"line {i}: non-casual turn without rots")
            if r["source"] not in ("socialchemistry", "sbic", "ethics_amt", "ethics_reddit"): err(f"line {i}: source")
            dia[r["dialogue_id"]].append(r)
        for d, ts in dia.items():
            if [t["response_id"] for t in ts] != list(range(len(ts))): err(f"dialogue {d}: response_ids {[t['response_id'] for t in ts]}")
            if [t["episode_done"] for t in ts] != [False] * (len(ts) - 1) + [True]: err(f"dialogue {d}: episode_done")
            if len({t['source'] for t in ts}) != 1: err(f"dialogue {d}: mixed sources")
        c = collections.Counter(r["safety_label"] for r in rows)
        print(f"{len(rows)} turns, {len(dia)} dialogues, mean {len(rows)/max(len(dia),1):.2f} turns; ids {min(dia)}..{max(dia)}")
        for l in LABELS: print(f"  {l:30s} {c[l]/len(rows):.2f} (target {SHARES[l]:.2f})")
        print("  sources", collections.Counter(ts[0]['source'] for ts in dia.values()))
        print("  mean words: context %.1f response %.1f" % (sum(len(r['context'].split()) for r in rows)/len(rows), sum(len(r['response'].split()) for r in rows)/len(rows)))
        print("near-dup contexts:", near_dups([r["context"] for r in rows]), " near-dup responses:", near_dups([r["response"] for r in rows]))
print("OK" if not errs else f"{len(errs)} ERRORS")
