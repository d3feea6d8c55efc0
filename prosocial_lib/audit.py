"""The audit: systems x context sets -> one judged row per reply, and rates with confidence intervals.

The paper's first question: how often do chat models answer *adversarial* contexts unsafely, and *casual* ones
inappropriately (preachy)? An :class:`AuditSystem` is one way of running a model - model, system prompt,
decoding - so the offline presets compare one model under several prompts and decodings, and the gpu preset
compares several hub models (``eval.audit_models``).

- :func:`build_context_sets`: "adversarial" (ProsocialDialog test turns whose context is not casual) and
  "casual" (casual ProsocialDialog turns + real casual chat), ``eval.num_contexts`` each, seeded;
  :func:`load_contexts_jsonl` reads a user's own contexts.
- :func:`run_audit`: generates (reusing saved generations of the same system and contexts), judges, and writes
  ``replies.jsonl`` (one row per reply) and ``summary.csv`` (rates with bootstrap CIs) to ``out_dir``.
- ``prosocial audit``: the same from the command line (:func:`configure_cli`, :func:`run_cli`).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import random
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from .config import Config
from .data.errors import DataFormatError
from .metrics import (
    FLAG_COLUMNS,
    bleu4,
    distinct_n,
    expected_max,
    mean_unigram_f1,
    prob_at_least_one,
    reply_lengths,
    summarize,
)


#: Columns of a context set (a ``datasets.Dataset``), whatever its source.
CONTEXT_COLUMNS: tuple[str, ...] = ("context_id", "history", "context", "response", "safety_label", "rots",
                                    "source")
#: Columns of the audit table that come before the judges' columns.
REPLY_COLUMNS: tuple[str, ...] = ("system", "model", "system_prompt", "decoding", "context_set", "context_id",
                                  "sample", "context", "history", "reply", "response", "safety_label", "source")
#: The headline rate of each context set: what counts as a failure there.
HEADLINE_METRICS: tuple[tuple[str, str], ...] = (
    ("adversarial", "unsafe"), ("adversarial", "violates_rot"), ("casual", "preachy"))

SHORT_MODEL_NAMES = {"embedded": "SmolLM2-135M-Instruct", "tiny": "tiny (random weights)"}


# ---------------------------------------------------------------------- systems
@dataclass(frozen=True)
class AuditSystem:
    """One audited system: a model spec, an optional system prompt and a decoding setting."""

    name: str
    model: str
    system_prompt: str | None = None
    do_sample: bool = False
    temperature: float = 0.7
    top_p: float = 0.9
    num_samples: int = 1
    max_new_tokens: int = 48

    @property
    def decoding(self) -> str:
        if not self.do_sample:
            return "greedy"
        return f"sampled (T={self.temperature:g}, top-p={self.top_p:g}, k={self.num_samples})"

    def key(self) -> str:
        """A hash of everything that changes the replies (the name does not)."""
        d = dataclasses.asdict(self)
        d.pop("name")
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


def short_model_name(model: str) -> str:
    """``"HuggingFaceTB/SmolLM2-360M-Instruct"`` -> ``"SmolLM2-360M-Instruct"``; named specs get their model."""
    return SHORT_MODEL_NAMES.get(model, model.rstrip("/").split("/")[-1])


def default_audit_systems(cfg: Config) -> list[AuditSystem]:
    """``eval.audit_models`` (default: ``model.name``) x ``eval.audit_variants``. Models without a system prompt
    (DialoGPT, BlenderBot) skip the "+safety" variants, with a note."""
    from .generation import has_native_format
    ev = cfg.eval
    systems = []
    for model in ev.audit_models or [cfg.model.name]:
        for variant in ev.audit_variants:
            safety = variant.endswith("+safety")
            if safety and has_native_format(model):
                print(f"note: {model} has no system prompt; skipping its {variant!r} variant")
                continue
            sampled = variant.startswith("sampled")
            label = ("sampled" if sampled else "greedy") + (" + safety prompt" if safety else "")
            systems.append(AuditSystem(
                name=f"{short_model_name(model)} | {label}", model=model,
                system_prompt=ev.safety_system_prompt if safety else None, do_sample=sampled,
                temperature=ev.temperature, top_p=ev.top_p, num_samples=ev.samples_per_context if sampled else 1,
                max_new_tokens=ev.max_new_tokens))
    return systems


# ---------------------------------------------------------------------- context sets
def _context_set(rows: list[dict[str, Any]]):
    import datasets
    features = datasets.Features({
        "context_id": datasets.Value("string"), "history": datasets.Sequence(datasets.Value("string")),
        "context": datasets.Value("string"), "response": datasets.Value("string"),
        "safety_label": datasets.Value("string"), "rots": datasets.Sequence(datasets.Value("string")),
        "source": datasets.Value("string")})
    return datasets.Dataset.from_dict({c: [r[c] for r in rows] for c in CONTEXT_COLUMNS}, features=features)


def _turn_rows(turns, split: str) -> list[dict[str, Any]]:
    cols = turns[:]
    return [{"context_id": f"prosocial-{split}-{d}-{r}", "history": list(h), "context": h[-1], "response": resp,
             "safety_label": lab, "rots": list(rots or []), "source": src}
            for d, r, h, resp, lab, rots, src in zip(cols["dialogue_id"], cols["response_id"], cols["history"],
                                                     cols["response"], cols["safety_label"], cols["rots"],
                                                     cols["source"])]


def build_context_sets(cfg: Config, split: str = "test") -> dict[str, Any]:
    """``{"adversarial": Dataset, "casual": Dataset}`` with :data:`CONTEXT_COLUMNS`, ``eval.num_contexts`` each.

    adversarial: turns of ProsocialDialog's ``split`` whose context is not ``__casual__``, with their dialogue
    history. casual: half casual ProsocialDialog turns, half real casual chat (``data.casual_source``; all casual
    chat when ProsocialDialog has too few casual turns). Seeded by ``eval.seed``: the same config gives the same
    contexts. A set with fewer candidates than asked for is used whole, with a warning.
    """
    from .data import dialogue_turns, load_casual, load_prosocial_dialog
    n, seed = cfg.eval.num_contexts, cfg.eval.seed
    turns = _turn_rows(dialogue_turns(load_prosocial_dialog(cfg.data.prosocial_source, split,
                                                            max_rows=cfg.data.max_eval_examples)), split)
    unsafe = [r for r in turns if r["safety_label"] != "__casual__"]
    casual_pd = [r for r in turns if r["safety_label"] == "__casual__"]
    adversarial = _sample(unsafe, n, seed, "adversarial (non-casual ProsocialDialog turns)")

    casual_pd = _sample(casual_pd, n // 2, seed, None)
    chat: list[dict[str, Any]] = []
    if cfg.data.casual_source not in ("prosocial", "prosocial_casual"):
        need = n - len(casual_pd)
        ds = load_casual(cfg.data.casual_source, split, seed=cfg.data.seed, max_rows=need,
                         prosocial_source=cfg.data.prosocial_source)
        cols = ds[:] if len(ds) else {"history": [], "response": [], "source": []}
        chat = [{"context_id": f"{src}-{split}-{i}", "history": list(h), "context": h[-1], "response": resp,
                 "safety_label": "", "rots": [], "source": src}
                for i, (h, resp, src) in enumerate(zip(cols["history"], cols["response"], cols["source"]))]
        chat = _sample(chat, need, seed, None)
    casual = casual_pd + chat
    if len(casual) < n:  # too little casual chat: top up with more casual ProsocialDialog turns
        more = [r for r in turns if r["safety_label"] == "__casual__" and r not in casual_pd]
        casual += _sample(more, n - len(casual), seed, None)
    if len(casual) < n:
        warnings.warn(f"casual context set: only {len(casual)} contexts available, {n} asked for "
                      f"(eval.num_contexts)", stacklevel=2)
    return {"adversarial": _context_set(adversarial), "casual": _context_set(casual)}


def _sample(rows: list[dict[str, Any]], n: int, seed: int, what: str | None) -> list[dict[str, Any]]:
    if what and len(rows) < n:
        warnings.warn(f"{what}: only {len(rows)} contexts available, {n} asked for (eval.num_contexts); "
                      "using all of them", stacklevel=3)
    picked = sorted(random.Random(seed).sample(range(len(rows)), min(n, len(rows))))
    return [rows[i] for i in picked]


def load_contexts_jsonl(path: str | Path, default_set: str | None = None) -> dict[str, Any]:
    """A user's own contexts: one JSON object per line with ``context`` (a string: one user turn) or ``history``
    (a list of turns, oldest first, the user's last), optionally ``set`` (context set name; default: the file's
    stem), ``id`` and ``response`` (a gold reply, for BLEU/F1). Blank lines are ignored; anything else that is not
    such an object raises :class:`~prosocial_lib.data.DataFormatError` naming the file, line and field."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"contexts file {str(path)!r} does not exist")
    default_set = default_set or path.stem
    sets: dict[str, list[dict[str, Any]]] = {}
    with open(path, encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataFormatError(str(path), line_no, None, f"not valid JSON ({e.msg})", "bad json") from e
            if not isinstance(obj, dict):
                raise DataFormatError(str(path), line_no, None, f"expected a JSON object, got {type(obj).__name__}",
                                      "not an object")
            has_ctx, has_hist = "context" in obj, "history" in obj
            if has_ctx == has_hist:
                raise DataFormatError(str(path), line_no, "context", "give exactly one of 'context' (a string) or "
                                      "'history' (a list of strings)", "missing field")
            if has_ctx:
                if not isinstance(obj["context"], str) or not obj["context"].strip():
                    raise DataFormatError(str(path), line_no, "context", "must be a non-empty string, got "
                                          f"{obj['context']!r:.60}", "bad type")
                history = [obj["context"]]
            else:
                history = obj["history"]
                if (not isinstance(history, list) or not history
                        or not all(isinstance(t, str) and t.strip() for t in history)):
                    raise DataFormatError(str(path), line_no, "history", "must be a non-empty list of non-empty "
                                          f"strings, got {history!r:.60}", "bad type")
            for key in ("set", "id", "response"):
                if key in obj and not isinstance(obj[key], (str, int) if key == "id" else str):
                    raise DataFormatError(str(path), line_no, key, f"must be a string, got {obj[key]!r:.60}",
                                          "bad type")
            name = obj.get("set") or default_set
            rows = sets.setdefault(name, [])
            rows.append({"context_id": str(obj.get("id", f"{path.stem}-{line_no}")), "history": history,
                         "context": history[-1], "response": obj.get("response", ""), "safety_label": "",
                         "rots": [], "source": path.name})
    if not sets:
        raise DataFormatError(str(path), None, None, "no contexts in the file", "empty")
    for name, rows in sets.items():
        ids = [r["context_id"] for r in rows]
        dup = next((i for i in ids if ids.count(i) > 1), None)
        if dup is not None:
            raise DataFormatError(str(path), None, "id", f"context id {dup!r} appears twice in set {name!r}",
                                  "duplicate id")
    return {name: _context_set(rows) for name, rows in sets.items()}


# ---------------------------------------------------------------------- running
def _contexts_digest(ds) -> str:
    cols = ds[:]
    payload = json.dumps([cols["context_id"], cols["history"]], sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def model_identity(model: str) -> str:
    """What identifies a model's weights: the spec, plus the size and modification time of the files of a local
    folder (so a checkpoint retrained in the same folder does not reuse the old replies)."""
    path = Path(model).expanduser()
    if not path.is_dir():
        return model
    stamp = sorted((p.name, p.stat().st_size, int(p.stat().st_mtime)) for p in path.iterdir() if p.is_file())
    return f"{path.resolve()}|{stamp}"


def generations_path(cache_dir: Path, system: AuditSystem, set_name: str, contexts, prompt_tokens: int | None
                     ) -> Path:
    """Where a system's replies to one context set are saved; the name changes when anything that changes the
    replies changes (system settings, the model's weights, the contexts, the prompt length limit)."""
    key = hashlib.sha256(f"{system.key()}|{model_identity(system.model)}|{_contexts_digest(contexts)}|"
                         f"{prompt_tokens}".encode()).hexdigest()[:12]
    slug = "".join(ch if ch.isalnum() else "-" for ch in f"{short_model_name(system.model)}-{set_name}")
    return Path(cache_dir) / f"{slug}-{key}.jsonl"


def _read_generations(path: Path) -> list[list[str]]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line)["replies"] for line in fh if line.strip()]


def _write_jsonl(path: Path, records: Sequence[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
    tmp.replace(path)


def prompt_token_limit(cfg: Config) -> int:
    """How many prompt tokens a reply is generated from: the training length minus the reply's room, so the
    audited model sees contexts as long as it was trained on (longer histories keep their last turns)."""
    return max(16, cfg.model.max_length - cfg.eval.max_new_tokens)


def run_audit(systems: Sequence[AuditSystem], context_sets: dict[str, Any], judges, cfg: Config,
              out_dir: str | Path, *, progress: bool = True, cache_dir: str | Path | None = None) -> pd.DataFrame:
    """Generate every system's replies to every context set, judge them, save and return the table.

    One row per reply: :data:`REPLY_COLUMNS` then the judges' columns (:meth:`prosocial_lib.judges.Judges.score`).
    Writes ``out_dir/replies.jsonl`` and ``out_dir/summary.csv`` (:func:`summarize_audit`) and
    ``out_dir/timing.json``. Replies are saved in ``cache_dir`` (default ``<run dir>/generations``, shared by the
    audit and the evaluation) and reused whenever the same system answers the same contexts again, so re-running
    a chapter only judges again.
    """
    from .generation import generate_replies, load_chat_model
    out_dir = Path(out_dir)
    cache_dir = Path(cache_dir) if cache_dir is not None else cfg.run_dir / "generations"
    if not systems:
        raise ValueError("run_audit: no systems to audit")
    names = [s.name for s in systems]
    if len(set(names)) != len(names):
        raise ValueError(f"run_audit: system names must be unique, got {names}")
    prompt_tokens = prompt_token_limit(cfg)
    rows: list[dict[str, Any]] = []
    timing: dict[str, Any] = {"systems": {}}
    by_model: dict[str, list[AuditSystem]] = {}
    for s in systems:
        by_model.setdefault(s.model, []).append(s)
    for model_name, model_systems in by_model.items():
        model = tok = None
        for system in model_systems:
            for set_name, contexts in context_sets.items():
                path = generations_path(cache_dir, system, set_name, contexts, prompt_tokens)
                cols = contexts[:]
                if path.exists():
                    replies = _read_generations(path)
                    timing["systems"].setdefault(system.name, {})[set_name] = {"reused": str(path.name)}
                else:
                    if model is None:
                        model, tok = load_chat_model(model_name, cfg.model, seed=cfg.seed)
                    t0 = time.perf_counter()
                    replies = generate_replies(
                        model, tok, cols["history"], system_prompt=system.system_prompt,
                        max_new_tokens=system.max_new_tokens, do_sample=system.do_sample,
                        temperature=system.temperature, top_p=system.top_p, num_samples=system.num_samples,
                        batch_size=cfg.eval.batch_size, seed=cfg.eval.seed, progress=progress,
                        max_prompt_tokens=prompt_tokens)
                    seconds = time.perf_counter() - t0
                    _write_jsonl(path, [{"context_id": c, "replies": r} for c, r in zip(cols["context_id"], replies)])
                    timing["systems"].setdefault(system.name, {})[set_name] = {
                        "seconds": round(seconds, 2), "replies": sum(map(len, replies))}
                if len(replies) != len(contexts):
                    raise RuntimeError(f"{path}: {len(replies)} saved replies for {len(contexts)} contexts; "
                                       "delete the file to regenerate")
                for i, samples in enumerate(replies):
                    for k, reply in enumerate(samples):
                        rows.append({"system": system.name, "model": system.model,
                                     "system_prompt": system.system_prompt or "", "decoding": system.decoding,
                                     "context_set": set_name, "context_id": cols["context_id"][i], "sample": k,
                                     "context": cols["context"][i], "history": list(cols["history"][i]),
                                     "reply": reply, "response": cols["response"][i],
                                     "safety_label": cols["safety_label"][i], "source": cols["source"][i]})
        del model, tok
        _free_accelerator_memory()
    df = pd.DataFrame(rows, columns=list(REPLY_COLUMNS))
    if judges is not None:
        t0 = time.perf_counter()
        scores = judges.score(df["history"].tolist(), df["reply"].tolist())
        timing["judge_seconds"] = round(time.perf_counter() - t0, 2)
        if len(scores) != len(df):
            raise RuntimeError(f"judges returned {len(scores)} rows for {len(df)} replies")
        clash = [c for c in scores.columns if c in df.columns]
        if clash:
            raise RuntimeError(f"judge columns {clash} clash with the audit table's columns")
        df = pd.concat([df, scores.reset_index(drop=True)], axis=1)
    out_dir.mkdir(parents=True, exist_ok=True)
    df.to_json(out_dir / "replies.jsonl", orient="records", lines=True, force_ascii=False)
    summarize_audit(df, cfg).to_csv(out_dir / "summary.csv", index=False)
    (out_dir / "timing.json").write_text(json.dumps(timing, indent=2))
    return df


def _free_accelerator_memory() -> None:
    """Let the next audited model have the GPU (the gpu preset audits several in a row)."""
    import gc

    import torch
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def load_audit(out_dir: str | Path) -> pd.DataFrame:
    """The table :func:`run_audit` saved in ``out_dir``."""
    path = Path(out_dir) / "replies.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"no audit in {str(out_dir)!r} (expected {path.name}); run the audit first")
    return pd.read_json(path, orient="records", lines=True, dtype=False)


# ---------------------------------------------------------------------- tables
def summarize_audit(df: pd.DataFrame, cfg: Config) -> pd.DataFrame:
    """Rates of every judge flag per (system, context set), with bootstrap CIs over contexts (the replies of one
    context are resampled together when there are several samples per context)."""
    return summarize(df, ["system", "context_set"], cfg, flags=FLAG_COLUMNS, cluster_col="context_id")


def headline_table(summary: pd.DataFrame, metrics: Sequence[tuple[str, str]] = HEADLINE_METRICS) -> pd.DataFrame:
    """One row per system, one column per (context set, metric) failure rate, as ``"12.5% [5.0, 25.0]"``."""
    out = {}
    for set_name, metric in metrics:
        sub = summary[(summary.context_set == set_name) & (summary.metric == metric)]
        out[f"{metric} on {set_name}"] = {
            r.system: f"{r.rate:.1%} [{100 * r.ci_low:.1f}, {100 * r.ci_high:.1f}]" for r in sub.itertuples()}
    systems = list(dict.fromkeys(summary.system))
    return pd.DataFrame(out).reindex(systems).rename_axis("system")


def quality_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per system and context set: reply length, distinct-1/2, and BLEU-4 / unigram F1 against the gold
    responses (where the contexts have them)."""
    rows = []
    for (system, set_name), sub in df.groupby(["system", "context_set"], sort=False):
        gold = sub[sub["response"].astype(str).str.len() > 0]
        rows.append({
            "system": system, "context_set": set_name, "replies": len(sub),
            "mean_words": float(pd.Series(reply_lengths(sub["reply"].tolist())).mean()),
            "empty_replies": int((sub["reply"].str.strip() == "").sum()),
            "distinct_1": distinct_n(sub["reply"].tolist(), 1), "distinct_2": distinct_n(sub["reply"].tolist(), 2),
            "bleu4": bleu4(gold["reply"].tolist(), gold["response"].tolist()) if len(gold) else float("nan"),
            "unigram_f1": mean_unigram_f1(gold["reply"].tolist(), gold["response"].tolist()) if len(gold)
            else float("nan")})
    return pd.DataFrame(rows)


def k_sample_table(df: pd.DataFrame, cfg: Config, score: str = "unsafe_prob", threshold: float | None = None
                   ) -> pd.DataFrame:
    """RealToxicityPrompts-style metrics for systems with several samples per context: the expected maximum of
    ``score`` over the k samples and the probability that at least one sample is flagged (score >= threshold,
    default ``eval.judge_threshold``), each with a bootstrap CI over contexts."""
    threshold = cfg.eval.judge_threshold if threshold is None else threshold
    kw = dict(n_boot=cfg.eval.bootstrap_samples, confidence=cfg.eval.confidence, seed=cfg.eval.seed)
    rows = []
    for (system, set_name), sub in df.groupby(["system", "context_set"], sort=False):
        k = int(sub["sample"].max()) + 1
        if k < 2:
            continue
        m = sub.pivot_table(index="context_id", columns="sample", values=score, aggfunc="first")
        if m.isna().any().any():
            raise ValueError(f"{system} / {set_name}: not every context has {k} samples")
        em = expected_max(m.to_numpy(), **kw)
        p1 = prob_at_least_one(m.to_numpy(), threshold, **kw)
        rows.append({"system": system, "context_set": set_name, "k": k, "contexts": len(m),
                     "expected_max": em[0], "expected_max_low": em[1], "expected_max_high": em[2],
                     "p_at_least_one": p1[0], "p_at_least_one_low": p1[1], "p_at_least_one_high": p1[2]})
    return pd.DataFrame(rows)


#: The caution-level ProsocialDialog labels: contexts whose problem is easy to miss (not "needs intervention").
SUBTLE_LABELS: tuple[str, ...] = ("__possibly_needs_caution__", "__probably_needs_caution__", "__needs_caution__")


def failure_examples(df: pd.DataFrame, kind: str, n: int = 3) -> pd.DataFrame:
    """The ``n`` clearest failures the judges found, one per context, most confident first (picked by score, not
    by hand).

    ``kind="unsafe"``: replies to adversarial contexts ranked by ``unsafe_prob`` - the model went along with, or
    ignored, a context that needed pushback. ``kind="subtle"``: the same among contexts labelled only *caution*
    (:data:`SUBTLE_LABELS`), the subtle situations the paper says models miss. ``kind="preachy"``: replies to
    casual contexts ranked by ``preachy_prob`` - a lecture where small talk was wanted.
    """
    spec = {"unsafe": ("adversarial", "unsafe_prob"), "subtle": ("adversarial", "unsafe_prob"),
            "preachy": ("casual", "preachy_prob")}
    if kind not in spec:
        raise ValueError(f"kind must be one of {sorted(spec)}, got {kind!r}")
    set_name, score = spec[kind]
    sub = df[df["context_set"] == set_name]
    if kind == "subtle":
        sub = sub[sub["safety_label"].isin(SUBTLE_LABELS)]
    if score not in sub.columns:
        raise KeyError(f"no judge column {score!r}: judge the audit first")
    sub = sub.sort_values([score, "system"], ascending=[False, True], kind="stable")
    sub = sub.drop_duplicates("context_id").head(n)
    cols = ["system", "history", "context", "reply", score, "safety_label"]
    if kind != "preachy":
        cols.append("violates_rot_prob")
    return sub[[c for c in cols if c in sub.columns]].reset_index(drop=True)


def render_examples(examples: pd.DataFrame, max_turns: int = 3) -> str:
    """Markdown for :func:`failure_examples`: the last ``max_turns`` turns of the context, the system's reply and
    the judges' scores."""
    if examples.empty:
        return "_No reply of this kind in this run._"
    parts = []
    for r in examples.itertuples(index=False):
        scores = ", ".join(f"{c.replace('_prob', '')} {getattr(r, c):.2f}" for c in examples.columns
                           if c.endswith("_prob"))
        label = f" ({r.safety_label.strip('_').replace('_', ' ')})" if r.safety_label else ""
        reply = r.reply if r.reply.strip() else "(empty reply)"
        history = list(getattr(r, "history", None) or [r.context])[-max_turns:]
        speakers = ["user" if (len(history) - 1 - i) % 2 == 0 else "bot" for i in range(len(history))]
        turns = " / ".join(f"*{who}:* {_md_quote(t)}" for who, t in zip(speakers, history))
        parts.append(f"- **Context**{label}: {turns}\n  **{r.system}**: {_md_quote(reply)}\n"
                     f"  *judges: {scores}*")
    return "\n".join(parts)


def _md_quote(text: str) -> str:
    """One line of user text, safe inside markdown (no headings, emphasis or html from the data)."""
    text = " ".join(str(text).split())
    for ch in "\\`*_[]<>#|":
        text = text.replace(ch, "\\" + ch)
    return text


# ---------------------------------------------------------------------- the chapter's tables
def context_set_table(context_sets: dict[str, Any]) -> pd.DataFrame:
    """How many contexts of each set come from each source and safety label."""
    frames = []
    for name, ds in context_sets.items():
        d = ds.to_pandas()[["source", "safety_label"]].replace({"safety_label": {"": "(casual chat)"}})
        frames.append(d.assign(context_set=name))
    d = pd.concat(frames, ignore_index=True)
    return (d.groupby(["context_set", "source", "safety_label"], sort=False).size()
            .rename("contexts").reset_index())


def systems_table(systems: Sequence[AuditSystem]) -> pd.DataFrame:
    """The audited systems: model, system prompt and decoding."""
    return pd.DataFrame([{"system": s.name, "model": s.model, "system prompt": s.system_prompt or "(model default)",
                          "decoding": s.decoding, "max new tokens": s.max_new_tokens} for s in systems])


def prompt_effect_table(df: pd.DataFrame, cfg: Config) -> pd.DataFrame:
    """What the safety system prompt changes: for every model and decoding audited with and without it, the
    paired difference (with - without) of the unsafe rate and RoT-violation rate on adversarial contexts and the
    preachiness on casual ones, with a bootstrap CI over contexts (per-context rates when k > 1)."""
    from .metrics import paired_difference
    kw = dict(n_boot=cfg.eval.bootstrap_samples, confidence=cfg.eval.confidence, seed=cfg.eval.seed)
    keyed = df.assign(prompted=df["system_prompt"].astype(str) != "")
    rows = []
    for (model, decoding), sub in keyed.groupby(["model", "decoding"], sort=False):
        if sub["prompted"].nunique() < 2:
            continue
        for set_name, flag in HEADLINE_METRICS:
            part = sub[(sub["context_set"] == set_name) & sub[flag].notna()] if flag in sub else sub.iloc[:0]
            if part.empty:
                continue
            per_ctx = part.assign(v=part[flag].astype(float)).pivot_table(
                index="context_id", columns="prompted", values="v", aggfunc="mean").dropna()
            diff, lo, hi = paired_difference(per_ctx[True].to_numpy(), per_ctx[False].to_numpy(), **kw)
            rows.append({"model": short_model_name(model), "decoding": decoding, "metric": f"{flag} on {set_name}",
                         "without prompt": per_ctx[False].mean(), "with prompt": per_ctx[True].mean(),
                         "change": diff, "ci_low": lo, "ci_high": hi, "contexts": len(per_ctx)})
    return pd.DataFrame(rows)


def headline_numbers(summary: pd.DataFrame, effects: pd.DataFrame) -> dict[str, Any]:
    """The numbers the chapter's prose cites (glued), the same names in every preset: the highest and lowest
    failure rate on each headline metric and which system had it, the mean CI width, and the safety prompt's
    effect for the first model and decoding that has one."""
    out: dict[str, Any] = {}
    for set_name, metric in HEADLINE_METRICS:
        sub = summary[(summary.context_set == set_name) & (summary.metric == metric)]
        if sub.empty:
            continue
        for which, row in (("max", sub.loc[sub.rate.idxmax()]), ("min", sub.loc[sub.rate.idxmin()])):
            out[f"{metric}_{which}_rate"] = float(row.rate)
            out[f"{metric}_{which}_low"] = float(row.ci_low)
            out[f"{metric}_{which}_high"] = float(row.ci_high)
            out[f"{metric}_{which}_system"] = str(row.system)
    sub = summary[summary.metric.isin([m for _, m in HEADLINE_METRICS])]
    out["ci_width_mean"] = float((sub.ci_high - sub.ci_low).mean()) if len(sub) else float("nan")
    if not effects.empty:
        first = effects[(effects.model == effects.model.iloc[0]) & (effects.decoding == effects.decoding.iloc[0])]
        out["prompt_model"] = str(first.model.iloc[0])
        out["prompt_decoding"] = str(first.decoding.iloc[0])
        for r in first.to_dict("records"):
            key = r["metric"].split(" on ")[0]
            out[f"prompt_{key}_without"] = float(r["without prompt"])
            out[f"prompt_{key}_with"] = float(r["with prompt"])
            for field in ("change", "ci_low", "ci_high"):
                out[f"prompt_{key}_{field}"] = float(r[field])
    return out


def extremes_markdown(numbers: dict[str, Any]) -> str:
    """Which systems had the highest and lowest failure rates (from :func:`headline_numbers`), as markdown."""
    lines = []
    for metric, where in (("unsafe", "unsafe on adversarial contexts"), ("violates_rot",
                          "violating the rule of thumb on adversarial contexts"), ("preachy", "preachy on casual contexts")):
        if f"{metric}_max_system" in numbers:
            lines.append(f"- most often {where}: **{numbers[f'{metric}_max_system']}** "
                         f"({numbers[f'{metric}_max_rate']:.1%}); least often: **{numbers[f'{metric}_min_system']}** "
                         f"({numbers[f'{metric}_min_rate']:.1%})")
    return "\n".join(lines)


def describe_run(cfg: Config, systems: Sequence[AuditSystem], context_sets: dict[str, Any]) -> str:
    """A markdown paragraph saying what this run audits, on what, under which preset."""
    models = ", ".join(dict.fromkeys(f"`{s.model}`" for s in systems))
    sets = ", ".join(f"{len(ds)} {name}" for name, ds in context_sets.items())
    note = {"smoke": " The smoke preset's model has **random weights**: its replies are noise and its rates say "
                     "nothing about any real model; it only proves the pipeline runs.",
            "cpu": " The contexts come from the book's **embedded sample** of ProsocialDialog (written for this "
                   "book in the upstream schema, not the real data) and from real chats of `chitchat-dataset`.",
            "gpu": " The contexts come from the real ProsocialDialog test split and DailyDialog."}.get(cfg.preset, "")
    return (f"**Preset `{cfg.preset}`**: {len(systems)} systems built from {models}, each answering {sets} "
            f"contexts with at most {cfg.eval.max_new_tokens} new tokens; rates with {cfg.eval.confidence:.0%} "
            f"bootstrap intervals ({cfg.eval.bootstrap_samples} resamples of the contexts).{note}")


# ---------------------------------------------------------------------- command line
def configure_cli(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--contexts", default=None, metavar="FILE.jsonl",
                        help="audit your own contexts: one JSON object per line with 'context' (str) or 'history' "
                             "(list of str), optional 'set', 'id', 'response'")
    parser.add_argument("--models", nargs="+", default=None, metavar="MODEL",
                        help="models to audit (default: eval.audit_models, else model.name)")
    parser.add_argument("--system-prompt", default=None,
                        help="audit one system per model with this system prompt (instead of eval.audit_variants)")
    parser.add_argument("--sample", action="store_true",
                        help="audit one system per model with sampled replies (eval.samples_per_context each)")
    parser.add_argument("--out", default=None, help="output folder (default: <run dir>/audit)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def cli_systems(args: argparse.Namespace, cfg: Config) -> list[AuditSystem]:
    """The systems the command line asks for: the config's variants, or one system per model when
    ``--system-prompt`` or ``--sample`` is given."""
    if args.models:
        cfg.eval.audit_models = list(args.models)
    if args.system_prompt is None and not args.sample:
        return default_audit_systems(cfg)
    ev = cfg.eval
    label = ("sampled" if args.sample else "greedy") + (" + custom system prompt" if args.system_prompt else "")
    return [AuditSystem(name=f"{short_model_name(m)} | {label}", model=m, system_prompt=args.system_prompt,
                        do_sample=args.sample, temperature=ev.temperature, top_p=ev.top_p,
                        num_samples=ev.samples_per_context if args.sample else 1, max_new_tokens=ev.max_new_tokens)
            for m in (ev.audit_models or [cfg.model.name])]


def run_cli(args: argparse.Namespace, cfg: Config) -> int:
    from .judges import load_judges
    try:
        if args.contexts:
            context_sets = load_contexts_jsonl(args.contexts)
            default_out = cfg.run_dir / f"audit-{Path(args.contexts).stem}"
        else:
            context_sets = build_context_sets(cfg)
            default_out = cfg.run_dir / "audit"
    except (DataFormatError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    systems = cli_systems(args, cfg)
    out_dir = Path(args.out) if args.out else default_out
    print(f"auditing {len(systems)} system(s) on {', '.join(f'{k} ({len(v)})' for k, v in context_sets.items())} "
          f"contexts -> {out_dir}")
    judges = load_judges(cfg)
    df = run_audit(systems, context_sets, judges, cfg, out_dir, progress=not args.no_progress)
    summary = summarize_audit(df, cfg)
    sets = list(context_sets)
    metrics = [(s, m) for s in sets for m in ("unsafe", "violates_rot", "preachy")]
    with pd.option_context("display.max_columns", None, "display.width", 200, "display.max_colwidth", 40):
        print(headline_table(summary, metrics).to_string())
    print(f"\n{len(df)} replies in {out_dir / 'replies.jsonl'}; rates with {cfg.eval.confidence:.0%} bootstrap "
          f"CIs in {out_dir / 'summary.csv'}")
    return 0
