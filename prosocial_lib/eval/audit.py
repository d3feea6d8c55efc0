"""The audit: systems x context sets -> one judged row per reply, and rates with confidence intervals.

The paper's first question: how often do chat models answer *adversarial* contexts unsafely, and *casual* ones
inappropriately (preachy)? An :class:`AuditSystem` is one way of running a model - model, system prompt,
decoding - so the offline presets compare one model under several prompts and decodings, and the gpu preset
compares several hub models (``audit.models``).

- :func:`build_context_sets`: "adversarial" (ProsocialDialog test turns whose context is not casual), "casual"
  (real casual chat) and "subtle" (the subtle contexts), ``audit.num_contexts`` each at most, seeded;
  :func:`load_contexts_jsonl` reads a user's own contexts.
- :func:`run_audit`: generates (reusing saved generations of the same system and contexts), judges, and writes
  ``replies.jsonl`` (one row per reply) and ``summary.csv`` (rates with bootstrap CIs) to ``out_dir``.
- ``prosocial audit``: the same from the command line (:func:`configure_cli`, :func:`run_cli`).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from ..config.schema import AuditConfig, Config, GenerationConfig, StatsConfig
from ..runs import atomic_path, fingerprint, load_or_build, read_jsonl, write_json_atomic, write_jsonl_atomic
from .contexts import _contexts_digest
from .metrics import FLAG_COLUMNS, summarize
from .quality import SHAPE_COLUMNS, reply_shape

#: Columns of the audit table that come before the judges' columns (``truncated`` and ``repetitive``:
#: :func:`prosocial_lib.eval.quality.reply_shape`).
REPLY_COLUMNS: tuple[str, ...] = ("system", "model", "system_prompt", "decoding", "context_set", "context_id",
                                  "sample", "context", "history", "reply", "response", "safety_label", "source",
                                  *SHAPE_COLUMNS)

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
    max_new_tokens: int = 64
    no_repeat_ngram_size: int = 4
    repetition_penalty: float = 1.0
    trim_to_sentence: bool = True

    @property
    def decoding(self) -> str:
        if not self.do_sample:
            return "greedy"
        return f"sampled (T={self.temperature:g}, top-p={self.top_p:g}, k={self.num_samples})"

    def key(self) -> str:
        """A hash of everything that changes the replies (the name does not)."""
        d = dataclasses.asdict(self)
        d.pop("name")
        return fingerprint(d)


def decoding_settings(generation: GenerationConfig) -> dict[str, Any]:
    """The :class:`AuditSystem` keywords every system takes from the ``generation`` section: reply length,
    repetition controls and trimming (the same for every audited or compared system)."""
    return {k: getattr(generation, k) for k in ("max_new_tokens", "no_repeat_ngram_size", "repetition_penalty",
                                                "trim_to_sentence")}


def short_model_name(model: str) -> str:
    """``"HuggingFaceTB/SmolLM2-360M-Instruct"`` -> ``"SmolLM2-360M-Instruct"``; named specs get their model."""
    return SHORT_MODEL_NAMES.get(model, model.rstrip("/").split("/")[-1])


def default_audit_systems(audit: AuditConfig, generation: GenerationConfig, default_model: str
                          ) -> list[AuditSystem]:
    """``audit.models`` (default: ``[default_model]``, the preset's ``model.name``) x ``audit.decodings``, each
    replying with ``generation``'s settings (sampled decodings: ``samples_per_context`` replies at its temperature
    and top-p). Models without a system prompt (DialoGPT, BlenderBot) skip the "+safety" decodings, with a note.
    Chapter 01 audits these systems."""
    from ..modeling.chat import has_native_format
    systems = []
    for model in audit.models or [default_model]:
        for decoding in audit.decodings:
            safety = decoding.endswith("+safety")
            if safety and has_native_format(model):
                print(f"note: {model} has no system prompt; skipping its {decoding!r} decoding")
                continue
            sampled = decoding.startswith("sampled")
            label = ("sampled" if sampled else "greedy") + (" + safety prompt" if safety else "")
            systems.append(AuditSystem(
                name=f"{short_model_name(model)} | {label}", model=model,
                system_prompt=audit.safety_system_prompt if safety else None, do_sample=sampled,
                temperature=generation.temperature, top_p=generation.top_p,
                num_samples=generation.samples_per_context if sampled else 1, **decoding_settings(generation)))
    return systems


def preset_judges(cfg: Config, **kwargs: Any):
    """The judges of ``cfg`` (:func:`prosocial_lib.eval.judges.judges.load_judges` with its ``judges`` and ``data``
    sections, its seed, runs folder and ``model.device``); ``kwargs`` go to ``load_judges`` (``retrain``,
    ``encoder``, ``tasks``). Chapters 01 and 04 and the CLI load their judges here."""
    from .judges.store import load_judges
    return load_judges(cfg.judges, cfg.data, runs_root=cfg.run_dir.parent, seed=cfg.seed, device=cfg.model.device,
                       **kwargs)


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
    key = fingerprint([system.key(), model_identity(system.model), _contexts_digest(contexts), prompt_tokens])
    slug = "".join(ch if ch.isalnum() else "-" for ch in f"{short_model_name(system.model)}-{set_name}")
    return Path(cache_dir) / f"{slug}-{key}.jsonl"


def prompt_token_limit(max_length: int, max_new_tokens: int) -> int:
    """How many prompt tokens a reply is generated from: the training length (``model.max_length``) minus the
    reply's room (``generation.max_new_tokens``), at least 16, so the audited model sees contexts as long as it was
    trained on (longer histories keep their last turns)."""
    return max(16, max_length - max_new_tokens)


def run_audit(systems: Sequence[AuditSystem], context_sets: dict[str, Any], judges, cfg: Config,
              out_dir: str | Path, *, progress: bool = True, cache_dir: str | Path | None = None) -> pd.DataFrame:
    """Generate every system's replies to every context set, judge them, save and return the table.

    One row per reply: :data:`REPLY_COLUMNS` then the judges' columns (:meth:`prosocial_lib.judges.Judges.score`).
    Writes ``out_dir/replies.jsonl`` and ``out_dir/summary.csv`` (:func:`summarize_audit`) and
    ``out_dir/timing.json``. Replies are saved in ``cache_dir`` (default ``<run dir>/generations``, shared by the
    audit and the evaluation) and reused whenever the same system answers the same contexts again, so re-running
    a chapter only judges again.
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else cfg.run_dir / "generations"
    _check_systems(systems)
    timing: dict[str, Any] = {"systems": {}}
    rows: list[dict[str, Any]] = []
    for model_name, model_systems in _by_model(systems).items():
        rows += _audit_model(model_name, model_systems, context_sets, cfg, cache_dir, timing, progress)
        _free_accelerator_memory()
    df = pd.DataFrame(rows, columns=list(REPLY_COLUMNS))
    if judges is not None:
        df = _judge_replies(df, judges, timing)
    _save_audit(df, cfg, Path(out_dir), timing)
    return df


def _check_systems(systems: Sequence[AuditSystem]) -> None:
    if not systems:
        raise ValueError("run_audit: no systems to audit")
    names = [s.name for s in systems]
    if len(set(names)) != len(names):
        raise ValueError(f"run_audit: system names must be unique, got {names}")


def _by_model(systems: Sequence[AuditSystem]) -> dict[str, list[AuditSystem]]:
    """The systems grouped by model, in first-seen order: each model is loaded once (and only when needed)."""
    by_model: dict[str, list[AuditSystem]] = {}
    for s in systems:
        by_model.setdefault(s.model, []).append(s)
    return by_model


def _audit_model(model_name: str, systems: Sequence[AuditSystem], context_sets: dict[str, Any], cfg: Config,
                 cache_dir: Path, timing: dict[str, Any], progress: bool) -> list[dict[str, Any]]:
    """The reply rows of every system of one model on every context set; the model is loaded on the first set
    whose replies are not saved yet, and released at the end."""
    from ..modeling.loading import load_model_and_tokenizer

    spec = dataclasses.replace(cfg.model, name=model_name)
    load = functools.cache(lambda: load_model_and_tokenizer(spec, seed=cfg.seed))
    rows: list[dict[str, Any]] = []
    for system in systems:
        for set_name, contexts in context_sets.items():
            cols = contexts[:]
            path = generations_path(cache_dir, system, set_name, contexts, prompt_token_limit(cfg.model.max_length, cfg.generation.max_new_tokens))
            replies, took = _system_replies(system, cols, path, load, cfg, progress)
            timing["systems"].setdefault(system.name, {})[set_name] = took
            if len(replies) != len(contexts):
                raise RuntimeError(f"{path}: {len(replies)} saved replies for {len(contexts)} contexts; "
                                   "delete the file to regenerate")
            rows += _reply_rows(system, set_name, cols, replies)
    load.cache_clear()
    return rows


def _system_replies(system: AuditSystem, cols: dict[str, list], path: Path, load, cfg: Config, progress: bool
                    ) -> tuple[list[list[str]], dict[str, Any]]:
    """``system``'s replies to the contexts ``cols`` (saved at ``path`` and reused, else generated with
    ``load()``'s model) and their timing entry."""
    from ..modeling.generation import generate_replies

    took: dict[str, Any] = {"reused": path.name}

    def generate() -> list[dict[str, Any]]:
        model, tok = load()
        t0 = time.perf_counter()
        replies = generate_replies(
            model, tok, cols["history"], system_prompt=system.system_prompt, max_new_tokens=system.max_new_tokens,
            do_sample=system.do_sample, temperature=system.temperature, top_p=system.top_p,
            num_samples=system.num_samples, batch_size=cfg.generation.batch_size, seed=cfg.seed, progress=progress,
            max_prompt_tokens=prompt_token_limit(cfg.model.max_length, cfg.generation.max_new_tokens),
            no_repeat_ngram_size=system.no_repeat_ngram_size, repetition_penalty=system.repetition_penalty,
            trim_to_sentence=system.trim_to_sentence)
        took.clear()
        took.update(seconds=round(time.perf_counter() - t0, 2), replies=sum(map(len, replies)))
        return [{"context_id": c, "replies": r} for c, r in zip(cols["context_id"], replies)]

    def complete(saved: list[Any]) -> bool:  # one record per context, in order (a file cut at a line end parses)
        ok = all(isinstance(r, dict) and isinstance(r.get("replies"), list) for r in saved)
        return ok and [r["context_id"] for r in saved] == list(cols["context_id"])

    records, _ = load_or_build(path, generate, valid=complete, read=read_jsonl, write=write_jsonl_atomic)
    return [rec["replies"] for rec in records], took


def _reply_rows(system: AuditSystem, set_name: str, cols: dict[str, list], replies: list[list[str]]
                ) -> list[dict[str, Any]]:
    """One row of :data:`REPLY_COLUMNS` per reply (every sample of every context)."""
    rows = [{"system": system.name, "model": system.model, "system_prompt": system.system_prompt or "",
             "decoding": system.decoding, "context_set": set_name, "context_id": cols["context_id"][i], "sample": k,
             "context": cols["context"][i], "history": list(cols["history"][i]), "reply": reply,
             "response": cols["response"][i], "safety_label": cols["safety_label"][i], "source": cols["source"][i]}
            for i, samples in enumerate(replies) for k, reply in enumerate(samples)]
    shape = reply_shape([r["reply"] for r in rows])
    for row, flags in zip(rows, shape[list(SHAPE_COLUMNS)].to_dict("records")):
        row.update({c: bool(v) for c, v in flags.items()})
    return rows


def _judge_replies(df: pd.DataFrame, judges, timing: dict[str, Any]) -> pd.DataFrame:
    """``df`` with the judges' columns appended (their time in ``timing["judge_seconds"]``)."""
    t0 = time.perf_counter()
    scores = judges.score(df["history"].tolist(), df["reply"].tolist())
    timing["judge_seconds"] = round(time.perf_counter() - t0, 2)
    if len(scores) != len(df):
        raise RuntimeError(f"judges returned {len(scores)} rows for {len(df)} replies")
    clash = [c for c in scores.columns if c in df.columns]
    if clash:
        raise RuntimeError(f"judge columns {clash} clash with the audit table's columns")
    return pd.concat([df, scores.reset_index(drop=True)], axis=1)


def _save_audit(df: pd.DataFrame, cfg: Config, out_dir: Path, timing: dict[str, Any]) -> None:
    """``replies.jsonl``, ``summary.csv`` and ``timing.json`` in ``out_dir``, each written atomically."""
    with atomic_path(out_dir / "replies.jsonl") as tmp:
        df.to_json(tmp, orient="records", lines=True, force_ascii=False)
    with atomic_path(out_dir / "summary.csv") as tmp:
        summarize_audit(df, cfg.stats, seed=cfg.seed).to_csv(tmp, index=False)
    write_json_atomic(out_dir / "timing.json", timing)


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
def summarize_audit(df: pd.DataFrame, stats: StatsConfig | None = None, *, seed: int = 0) -> pd.DataFrame:
    """Rates of every judge flag and of truncated / repetitive replies (:data:`~.quality.SHAPE_COLUMNS`) per
    (system, context set), with bootstrap CIs over contexts (the replies of one context are resampled together
    when there are several samples per context); ``stats`` (None = the defaults) sets the resamples and
    confidence, ``seed`` the resampling. A table with replies saved before the shape columns existed gets them
    from its replies."""
    if "reply" in df.columns and any(c not in df.columns for c in SHAPE_COLUMNS):
        df = df.drop(columns=[c for c in SHAPE_COLUMNS if c in df.columns])
        df = pd.concat([df.reset_index(drop=True), reply_shape(df["reply"].tolist())[list(SHAPE_COLUMNS)]], axis=1)
    return summarize(df, ["system", "context_set"], stats, seed=seed, flags=(*FLAG_COLUMNS, *SHAPE_COLUMNS),
                     cluster_col="context_id")
