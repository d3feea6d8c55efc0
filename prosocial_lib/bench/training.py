"""Benchmark of a training step: throughput and memory against K, score and layout."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import statistics
import tempfile
import time
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..config.schema import Config, StageConfig
from ..groups.types import ContrastiveGroup
from .memory import PeakMemory, _rss_bytes, release_memory
from .settings import BenchError, BenchSettings

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------- data
def bench_groups(cfg: Config, n_groups: int, k_max: int) -> list[ContrastiveGroup]:
    """``n_groups`` stage-2 training groups (dialogue histories; ``k_max`` negatives where the data has them).

    Raises:
        BenchError: the data gives fewer than ``n_groups`` groups.
    """
    from ..data.casual import load_casual
    from ..data.errors import DataSkipWarning
    from ..data.prosocial_dialog import load_prosocial_dialog
    from ..groups.stage2 import build_stage2_groups

    bc = dataclasses.replace(cfg, loss=dataclasses.replace(cfg.loss, num_negatives=k_max))
    prosocial = load_prosocial_dialog(cfg.data.prosocial_source, split="train", max_rows=cfg.data.max_train_examples)
    casual_rows = cfg.data.max_train_examples if cfg.data.max_train_examples is not None else 4 * n_groups
    with warnings.catch_warnings():  # skipped empty turns: chapter 0 reports them; here they only change the pool
        warnings.simplefilter("ignore", DataSkipWarning)
        casual = load_casual(cfg.data.casual_source, split="train", seed=cfg.seed, max_rows=casual_rows,
                             prosocial_source=cfg.data.prosocial_source)
    groups, _ = build_stage2_groups(prosocial, casual, bc.loss, bc.stage2, max_groups=n_groups, seed=cfg.seed,
                                    where=f"ProsocialDialog ({cfg.data.prosocial_source}, train)")
    if len(groups) < n_groups:
        raise BenchError(f"the benchmark needs {n_groups} stage-2 groups; the data gave {len(groups)}")
    return groups


def with_k(groups: Sequence[ContrastiveGroup], k: int) -> list[ContrastiveGroup]:
    """The groups with at most their first ``k`` negatives (and weights)."""
    return [g.with_negatives(k) for g in groups]


def history_of(group: ContrastiveGroup) -> list[str]:
    """A group's context as the list of turns generation and the judges take (the user's turn last)."""
    return [m["content"] for m in group.context_messages if m["role"] != "system"]


class _CountingCollator:
    """Wraps a collator: records per batch the reply tokens (our own count, the same for every layout) and the
    positions the model computes (``input_ids`` rows x length, padding included)."""

    def __init__(self, inner, reply_tokens: Callable[[dict[str, Any]], int]):
        self.inner = inner
        self.reply_tokens = reply_tokens
        self.response_tokens: list[int] = []
        self.model_tokens: list[int] = []

    def __call__(self, groups):
        out = self.inner(groups)
        self.response_tokens.append(sum(self.reply_tokens(g) for g in groups))
        self.model_tokens.append(int(out["input_ids"].numel()))
        return out


# ---------------------------------------------------------------------- timing
class StepTimer:
    """A ``TrainerCallback`` timing every optimizer step (``on_step_begin`` -> ``on_step_end``), synchronising the
    GPU so queued kernels count where they run."""

    def __new__(cls, device: torch.device):
        from transformers import TrainerCallback

        class _Timer(TrainerCallback):
            def __init__(self):
                self.times: list[float] = []
                self.cpu_times: list[float] = []
                self._t0 = self._c0 = 0.0

            def _sync(self):
                if device.type == "cuda":
                    torch.cuda.synchronize(device)

            def on_step_begin(self, args, state, control, **kwargs):
                self._sync()
                self._t0, self._c0 = time.perf_counter(), time.process_time()

            def on_step_end(self, args, state, control, **kwargs):
                self._sync()
                self.times.append(time.perf_counter() - self._t0)
                self.cpu_times.append(time.process_time() - self._c0)
        return _Timer()


def _bench_stage(cfg: Config, settings: BenchSettings) -> StageConfig:
    """The optimisation settings every row shares: stage 2's learning rate and weight decay, the benchmark's batch
    size, no accumulation, no warm-up, warm-up + timed steps, no held-out evaluations (it times training steps)."""
    return dataclasses.replace(cfg.stage2, batch_size=settings.batch_size, grad_accum=1, warmup_ratio=0.0,
                               max_steps=settings.warmup_steps + settings.timed_steps, eval_steps=0)


def _bench_overrides(cfg: Config) -> dict[str, Any]:
    """What the benchmark's trainers change from a stage's: a constant rate, no logs, checkpoints or bars."""
    return dict(lr_scheduler_type="constant", warmup_steps=0, logging_strategy="no", save_strategy="no",
                disable_tqdm=True, remove_unused_columns=False, data_seed=cfg.seed)


def _summarise_steps(times: list[float], warmup: int) -> dict[str, Any]:
    timed = times[warmup:]
    if not timed:
        raise BenchError(f"no timed steps: the trainer ran {len(times)} steps and {warmup} are warm-up")
    return {"step_s": statistics.median(timed), "step_s_all": [round(t, 5) for t in times],
            "steps_timed": len(timed)}


def _train_row(make_trainer: Callable[[], Any], device: torch.device, settings: BenchSettings,
               counter: _CountingCollator | None) -> dict[str, Any]:
    """Build a trainer (a fresh model copy inside), train warm-up + timed steps, return timings and memory."""
    from ..train.trainer import quiet_trainer

    mem = PeakMemory(device)
    mem.baseline()
    rss_before = round(_rss_bytes() / 2**20, 1)
    with warnings.catch_warnings():  # deprecation notices from library internals (TRL, transformers)
        warnings.simplefilter("ignore", FutureWarning)
        trainer = quiet_trainer(make_trainer())  # no per-run log lines or bars inside the benchmark
        timer = StepTimer(device)
        trainer.add_callback(timer)
        mem.reset()
        trainer.train()
        peak = mem.peak_mb()
    opt = getattr(trainer, "optimizer", None)
    optim = type(getattr(opt, "optimizer", opt)).__name__ if opt is not None else None  # inside accelerate's wrapper
    del trainer
    release_memory()
    row = _summarise_steps(timer.times, settings.warmup_steps)
    # CPU time of the whole process (all threads) per step: on a shared machine it moves less than wall time when
    # other processes compete for the cores (with one torch thread it is close to the work done)
    row["cpu_step_s"] = statistics.median(timer.cpu_times[settings.warmup_steps:])
    row.update({"peak_mem_mb": peak, "mem_method": mem.method, "optimizer": optim, "rss_before_mb": rss_before})
    if counter is not None:
        w, n = settings.warmup_steps, settings.timed_steps
        resp, model_tok = counter.response_tokens[w:w + n], counter.model_tokens[w:w + n]
        row["response_tokens_per_step"] = statistics.mean(resp) if resp else None
        row["model_tokens_per_step"] = statistics.mean(model_tok) if model_tok else None
    return row


def _collate_ms(collator, batches: list[list[dict[str, Any]]]) -> float:
    times = []
    for b in batches:
        t0 = time.perf_counter()
        collator(b)
        times.append(time.perf_counter() - t0)
    return round(1000 * statistics.median(times), 2)


def _unavailable(reason: str, **extra: Any) -> dict[str, Any]:
    return {"available": False, "reason": reason, **extra}


def _error_reason(e: BaseException) -> str:
    tb = traceback.extract_tb(e.__traceback__)
    where = f" (at {Path(tb[-1].filename).name}:{tb[-1].lineno})" if tb else ""
    return f"{type(e).__name__}: {e}"[:400] + where


def bench_training(cfg: Config, settings: BenchSettings, model, tok, groups: list[ContrastiveGroup],
                   device: torch.device, mp_dtype: torch.dtype, progress: bool = True) -> list[dict[str, Any]]:
    """Time training steps: plain CE, the n-pair loss for each K in both layouts, and TRL's DPO.

    Args:
        cfg: the experiment config (loss, stage-2 optimisation settings, model length, seed).
        settings: the benchmark's sizes (batch size, K values, warm-up and timed steps, DPO on/off).
        model, tok: the model (each row trains a fresh copy) and its tokenizer.
        groups: the groups every row trains on, in the same order.
        device, mp_dtype: where and in which mixed precision to train.
        progress: show a bar over the rows.

    Returns:
        One dict per row (module docstring), plain CE first; each available row gets ``groups_per_s``,
        ``response_tokens_per_s`` and ``ratio_to_ce``; a row that failed has ``available`` False and a reason.

    Chapter 05 (and ``prosocial bench``) shows these rows.
    """
    from tqdm.auto import tqdm

    from ..train.collator import GroupCollator
    from ..train.trainer import quiet_trainer

    bs = settings.batch_size
    reply_tokens_for = _reply_counter(tok)
    rows: list[dict[str, Any]] = []
    bar = tqdm(_plan(settings), desc="bench: training rows", unit="row", disable=not progress)
    with tempfile.TemporaryDirectory(prefix="prosocial-bench-") as tmp:
        # The first Trainer of a process pays one-off costs (imports, thread pools, allocator growth): a throwaway
        # one-step run takes them, so they do not land on the first measured row.
        with contextlib.suppress(Exception):
            first = with_k(groups[:bs], 0)
            warm = _contrastive_trainer(cfg, settings, model, tok, 0, "separate", first,
                                        GroupCollator(tok, cfg.model.max_length, positives_only=True),
                                        f"{tmp}/warm-up", device, mp_dtype, max_steps=1)
            quiet_trainer(warm).train()
            del warm
        for spec in bar:
            bar.set_postfix_str(spec["row"])
            row = dict(spec)
            try:
                if spec["objective"] == "dpo":
                    row.update(_dpo_row(cfg, settings, model, tok, groups, device, mp_dtype, tmp))
                    k1 = next((r for r in rows if r.get("K") == 1 and r.get("available", True)
                               and r["objective"] == "npair"), None)
                    if k1 is not None:  # the same (positive, first negative) pairs in the same order
                        row["response_tokens_per_step"] = k1.get("response_tokens_per_step")
                else:
                    row.update(_contrastive_row(cfg, settings, model, tok, groups, spec, reply_tokens_for,
                                                f"{tmp}/{len(rows)}", device, mp_dtype))
                row["available"] = True
            except Exception as e:  # a broken row is reported, the others still run
                log.warning("bench row %s failed: %s", spec["row"], e)
                row.update(_unavailable(_error_reason(e)))
            rows.append(row)
    bar.close()
    _add_rates(rows, bs, device)
    return rows


def _plan(settings: BenchSettings) -> list[dict[str, Any]]:
    """The rows to measure: plain CE, n-pair for each K in the separate then the shared layout, DPO."""
    plan: list[dict[str, Any]] = [{"row": "plain CE", "objective": "ce", "K": 0, "layout": "separate"}]
    for layout in ("separate", "shared"):
        for k in settings.ks:
            plan.append({"row": f"n-pair K={k} ({layout})", "objective": "npair", "K": k, "layout": layout})
    if settings.dpo:
        plan.append({"row": "TRL DPO (K=1 pairs)", "objective": "dpo", "K": 1, "layout": "TRL"})
    return plan


def _reply_counter(tok) -> Callable[[int], Callable[[ContrastiveGroup], int]]:
    """``k -> (group -> reply tokens of its positive and first k negatives)``, with a token-count cache."""
    from ..modeling.chat import chat_turn_end

    turn_end = chat_turn_end(tok)
    n_tok_cache: dict[str, int] = {}

    def reply_len(text: str) -> int:
        if text not in n_tok_cache:
            n_tok_cache[text] = len(tok(text + turn_end, add_special_tokens=False)["input_ids"])
        return n_tok_cache[text]

    def reply_tokens_for(k: int) -> Callable[[ContrastiveGroup], int]:
        return lambda g: reply_len(g.positive) + sum(reply_len(n) for n in list(g.negatives)[:k])
    return reply_tokens_for


def _contrastive_trainer(cfg: Config, settings: BenchSettings, model, tok, k: int, layout: str, data, collator,
                         out_dir: str, device: torch.device, mp_dtype: torch.dtype, **extra: Any):
    """A :class:`ContrastiveTrainer` on a fresh copy of ``model``: lambda = 0 (plain CE) when ``k`` is 0."""
    from ..train.config import contrastive_args
    from ..train.trainer import ContrastiveTrainer

    loss = dataclasses.replace(cfg.loss, npair_weight=cfg.loss.npair_weight if k else 0.0,
                               num_negatives=max(k, 1), shared_context=layout == "shared")
    args = contrastive_args(loss, _bench_stage(cfg, settings), out_dir, seed=cfg.seed, device=device,
                            mp_dtype=mp_dtype, n_groups=len(data), **{**_bench_overrides(cfg), **extra})
    return ContrastiveTrainer(model=copy.deepcopy(model), args=args, train_dataset=list(data),
                              data_collator=collator, processing_class=tok)


def _contrastive_row(cfg: Config, settings: BenchSettings, model, tok, groups, spec: dict[str, Any],
                     reply_tokens_for, out_dir: str, device: torch.device, mp_dtype: torch.dtype) -> dict[str, Any]:
    """One CE or n-pair row: the collation time, then the timed training steps."""
    from ..train.collator import GroupCollator

    k, bs = spec["K"], settings.batch_size
    data = with_k(groups, k)
    collator = GroupCollator(tok, cfg.model.max_length, positives_only=k == 0,
                             shared_context=spec["layout"] == "shared")
    counter = _CountingCollator(collator, reply_tokens_for(k))
    row = {"collate_ms": _collate_ms(collator, [data[i:i + bs] for i in range(0, len(data), bs)])}

    def make():
        return _contrastive_trainer(cfg, settings, model, tok, k, spec["layout"], data, counter, out_dir, device,
                                    mp_dtype)
    row.update(_train_row(make, device, settings, counter))
    return row


def _add_rates(rows: list[dict[str, Any]], bs: int, device: torch.device) -> None:
    """Add groups/s, reply tokens/s and the ratios to plain CE to every available row (in place)."""
    ce = next((r for r in rows if r["objective"] == "ce" and r.get("available")), None)
    for r in rows:
        if r.get("available"):
            r["groups_per_s"] = bs / r["step_s"]
            tps = r.get("response_tokens_per_step")
            r["response_tokens_per_s"] = tps / r["step_s"] if tps else None
            r["ratio_to_ce"] = r["step_s"] / ce["step_s"] if ce else None
            if device.type == "cpu" and ce and r.get("cpu_step_s") and ce.get("cpu_step_s"):
                r["cpu_ratio_to_ce"] = r["cpu_step_s"] / ce["cpu_step_s"]


def _dpo_row(cfg: Config, settings: BenchSettings, model, tok, groups, device, mp_dtype, tmp: str) -> dict:
    """TRL's DPOTrainer on (positive, first negative) of the same groups; the frozen reference model is a copy."""
    import datasets
    from trl import DPOTrainer

    from ..train.config import dpo_args
    from ..train.dpo import dpo_pairs, fit_prompts

    pairs = dpo_pairs(groups, max_negatives_per_group=1)
    pairs, n_short, n_long = fit_prompts(pairs, tok, cfg.model.max_length)
    note = f"{len(pairs)} pairs from {len(groups)} groups"
    if n_short:
        note += f"; {n_short} prompts shortened, {n_long} still too long"
    train = pairs.select_columns(["prompt", "chosen", "rejected"])

    def make():
        args = dpo_args(_bench_stage(cfg, settings), f"{tmp}/dpo", seed=cfg.seed, device=device, mp_dtype=mp_dtype,
                        beta=cfg.compare.dpo_beta, max_length=cfg.model.max_length, **_bench_overrides(cfg))
        policy = copy.deepcopy(model)
        was = datasets.is_progress_bar_enabled()
        datasets.disable_progress_bars()
        try:
            return DPOTrainer(model=policy, ref_model=copy.deepcopy(model), args=args, train_dataset=train,
                              processing_class=tok)
        finally:
            if was:
                datasets.enable_progress_bars()
    row = _train_row(make, device, settings, None)
    row["note"] = note + "; reply tokens counted as in the K=1 rows (the same pairs)"
    return row
