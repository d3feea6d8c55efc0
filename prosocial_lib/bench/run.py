"""Benchmarks: what the n-pair objective costs next to plain fine-tuning and DPO, and how fast an audit runs.

``prosocial bench`` (:func:`run_bench`) measures, in ONE process, on the same model and the same stage-2 groups
(multi-turn dialogue histories with their positive and K negatives):

- **training steps** (forward + backward + gradient clipping + AdamW step, as the Hugging Face Trainer runs them)
  for plain cross-entropy fine-tuning on the positives, the n-pair objective with K = 1, 3, 7 negatives in both
  layouts of :class:`~prosocial_lib.training.GroupCollator` (``separate``: one row per reply, the context
  recomputed 1 + K times; ``shared``: one packed row per group, the context computed once), and TRL's
  ``DPOTrainer`` on the same (positive, first negative) pairs. Every row is a fresh copy of the model in its own
  Trainer; a callback times ``on_step_begin`` -> ``on_step_end`` (batch collation is outside, for every row),
  the first ``warmup_steps`` are dropped and the median of the rest is the step time. Ratios to plain CE come from
  the same run. On a CPU each step's processor time (``time.process_time``, all threads) is recorded too: when
  other programs share the machine, wall time swings with their load while processor time stays close to the
  work done, so the CPU-time ratios are the steadier comparison there. (A one-step throwaway run first takes the
  one-off costs of the process's first Trainer.)
- **peak memory** of each row's training: on a GPU ``torch.cuda.max_memory_allocated`` above what was allocated
  before the row; on Linux CPUs the peak resident set size (``VmHWM``, reset through ``/proc/self/clear_refs``)
  above the resident size before the row's model copy was made; elsewhere psutil's RSS sampled every 5 ms. It
  counts the model copy, gradients, optimizer state and activations (and DPO's frozen reference model).
- **generation** replies/s batched (``generation.batch_size``) vs one at a time
  (:func:`prosocial_lib.generation.generate_replies`, greedy, the same contexts), split into the prompt pass and
  decoding (:func:`bench_generation`), and **judge** throughput (replies scored/s by
  :meth:`prosocial_lib.judges.Judges.score`, with a cold embedding cache).

A part that cannot run (a module missing or failing) is reported as unavailable with its reason; the rest still
runs. Results go to ``<run_dir>/bench/bench.json`` with a fingerprint of the config and settings, so the appendix
reuses a saved run of the same config.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from ..config.schema import Config
from ..runs import load_or_build, read_json, write_json_atomic
from .inference import bench_generation, bench_judges
from .memory import _loadavg, machine_header
from .settings import BENCH_FORMAT, TARGETS, BenchSettings, bench_fingerprint, bench_path, bench_settings
from .training import _unavailable, bench_groups, bench_training, history_of


# ---------------------------------------------------------------------- the whole benchmark
def run_bench(cfg: Config, settings: BenchSettings | None = None, *, judges=None, progress: bool = True,
              save: bool = True) -> dict[str, Any]:
    """Run every part (module docstring) and return the result dict (also written to :func:`bench_path`)."""
    from ..eval.audit import preset_judges, prompt_token_limit
    from ..modeling.loading import load_model_and_tokenizer, resolve_device, resolve_dtype

    t_start = time.perf_counter()
    cfg.validate()
    settings = settings or bench_settings(cfg)
    device = resolve_device(cfg.model.device)
    mp_dtype = resolve_dtype(cfg.model.dtype, device)
    n_groups = settings.batch_size * (settings.warmup_steps + settings.timed_steps)
    built = bench_groups(cfg, max(n_groups, settings.gen_contexts if settings.generation else 0), max(settings.ks))
    groups = built[:n_groups]  # every training row sees each of these once; generation may use more contexts
    model, tok = load_model_and_tokenizer(dataclasses.replace(cfg.model, dtype="float32", lora=False),
                                          seed=cfg.seed)
    header = machine_header(cfg, device, model)
    result: dict[str, Any] = {
        "format": BENCH_FORMAT, "fingerprint": bench_fingerprint(cfg, settings), "header": header,
        "settings": settings.to_dict(), "groups": _group_stats(groups, tok),
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    t0 = time.perf_counter()
    result["training"] = bench_training(cfg, settings, model, tok, groups, device, mp_dtype, progress)
    result["seconds_training"] = time.perf_counter() - t0

    histories = [history_of(g) for g in built]
    if settings.generation:
        gen_model = model.to(dtype=mp_dtype) if mp_dtype != torch.float32 else model
        t0 = time.perf_counter()
        result["generation"] = bench_generation(gen_model.eval(), tok, histories, settings,
                                                max_prompt_tokens=prompt_token_limit(
                                                    cfg.model.max_length, cfg.generation.max_new_tokens))
        result["seconds_generation"] = time.perf_counter() - t0
    else:
        result["generation"] = _unavailable("skipped (settings.generation = false)")
    if settings.judges:
        pairs = [(history_of(g), r) for g in groups for r in [g.positive, *g.negatives]]
        if settings.judge_replies:
            pairs = pairs[: settings.judge_replies]
        t0 = time.perf_counter()
        result["judges"] = bench_judges(pairs, judges, loader=lambda: preset_judges(cfg))
        result["seconds_judges"] = time.perf_counter() - t0
    else:
        result["judges"] = _unavailable("skipped (settings.judges = false)")
    result["targets"] = target_checks(result)
    header["load_average_end"] = _loadavg()
    result["seconds_total"] = time.perf_counter() - t_start
    if save:
        save_bench(result, bench_path(cfg))
    return result


def _group_stats(groups: list[dict[str, Any]], tok) -> dict[str, Any]:
    from ..modeling.chat import chat_prompt, chat_turn_end
    end = chat_turn_end(tok)
    ctx = [len(tok(chat_prompt(tok, g.context_messages), add_special_tokens=False)["input_ids"]) for g in groups]
    rep = [len(tok(r + end, add_special_tokens=False)["input_ids"]) for g in groups
           for r in [g.positive, *g.negatives]]
    return {"groups": len(groups), "mean_context_turns": statistics.mean(len(g.context_messages) for g in groups),
            "mean_context_tokens": statistics.mean(ctx), "mean_reply_tokens": statistics.mean(rep),
            "mean_negatives": statistics.mean(len(g.negatives) for g in groups),
            "kinds": {k: sum(g.meta.get("kind") == k for g in groups) for k in ("unsafe", "casual")}}


def _row(result: dict[str, Any], objective: str, k: int, layout: str | None = None) -> dict[str, Any] | None:
    for r in result.get("training", []):
        if r["objective"] == objective and r["K"] == k and (layout is None or r["layout"] == layout) \
                and r.get("available"):
            return r
    return None


def target_checks(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each of :data:`TARGETS` with its measured value (None when a row is missing) and whether it is met."""
    shared3, sep3 = _row(result, "npair", 3, "shared"), _row(result, "npair", 3, "separate")
    ce, dpo = _row(result, "ce", 0), _row(result, "dpo", 1)
    gen = result.get("generation") or {}
    def ratio(a, b, key, times=1):
        if not a or not b or a.get(key) is None or b.get(key) is None:
            return None
        return a[key] / (times * b[key])

    values, cpu_values = {}, {}
    for key, into in (("step_s", values), ("cpu_step_s", cpu_values)):
        into["shared_vs_separate_k3"] = ratio(shared3, sep3, key)
        into["shared_k3_vs_ce"] = ratio(shared3, ce, key)
        into["shared_k3_vs_3dpo"] = ratio(shared3, dpo, key, times=3)
    values["generation_speedup"] = gen.get("speedup") if gen.get("available") else None
    on_cpu = str(result.get("header", {}).get("device", "cpu")).startswith("cpu")
    out = {}
    for name, (what, op, target) in TARGETS.items():
        v = values[name]
        met = None if v is None else (v <= target if op == "<=" else v >= target)
        out[name] = {"what": what, "value": v, "target": f"{op} {target}", "met": met,
                     "value_cpu_time": cpu_values.get(name) if on_cpu else None}
    return out


def save_bench(result: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``result`` to ``path`` as JSON, atomically (:func:`~prosocial_lib.runs.write_json_atomic`)."""
    write_json_atomic(path, result, indent=1)
    return Path(path)


def load_bench(cfg: Config, settings: BenchSettings | None = None) -> dict[str, Any] | None:
    """The saved result for this exact config and settings (None when there is none, or it cannot be read)."""
    saved = read_json(bench_path(cfg))
    return saved if _is_run_of(saved, cfg, settings or bench_settings(cfg)) else None


def _is_run_of(saved: Any, cfg: Config, settings: BenchSettings) -> bool:
    return isinstance(saved, dict) and saved.get("fingerprint") == bench_fingerprint(cfg, settings)


def load_or_run_bench(cfg: Config, settings: BenchSettings | None = None, *, rerun: bool = False,
                      **kwargs: Any) -> dict[str, Any]:
    """A saved run of this config (``result["reused"] = True``), else a fresh one (saved; ``reused = False``)."""
    settings = settings or bench_settings(cfg)
    kwargs["save"] = False  # load_or_build saves it
    result, reused = load_or_build(bench_path(cfg), lambda: run_bench(cfg, settings, **kwargs),
                                   valid=lambda saved: _is_run_of(saved, cfg, settings),
                                   write=lambda path, result: save_bench(result, path), force=rerun)
    return {**result, "reused": reused}
