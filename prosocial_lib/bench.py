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
- **generation** replies/s batched (``eval.batch_size``) vs one at a time
  (:func:`prosocial_lib.generation.generate_replies`, greedy, the same contexts), split into the prompt pass and
  decoding (:func:`bench_generation`), and **judge** throughput (replies scored/s by
  :meth:`prosocial_lib.judges.Judges.score`, with a cold embedding cache).

A part that cannot run (a module missing or failing) is reported as unavailable with its reason; the rest still
runs. Results go to ``<run_dir>/bench/bench.json`` with a fingerprint of the config and settings, so the appendix
reuses a saved run of the same config.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import gc
import hashlib
import json
import logging
import os
import re
import statistics
import sys
import tempfile
import threading
import time
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from .config import Config

log = logging.getLogger(__name__)

BENCH_FORMAT = 2  # bump when the JSON layout or the measurement changes (older saved results are not reused)
BENCH_FILE = "bench.json"

# Targets of the issue that asked for this benchmark (2-core CPU, embedded model); checked, never asserted.
TARGETS = {
    "shared_vs_separate_k3": ("shared-context K=3 step / separate-rows K=3 step", "<=", 0.6),
    "shared_k3_vs_ce": ("shared-context K=3 step / plain CE step", "<=", 2.0),
    "shared_k3_vs_3dpo": ("shared-context K=3 step / three DPO steps (per compared pair)", "<=", 0.35),
    "generation_speedup": ("batched / one-at-a-time generation, replies per second", ">=", 4.0),
}


@dataclass
class BenchSettings:
    """What the benchmark runs. ``None`` fields come from the config (see :func:`bench_settings`)."""

    warmup_steps: int = 1  # first steps of every training row that are not timed (optimizer state, caches)
    timed_steps: int = 4  # timed steps per training row; the median is reported
    ks: tuple[int, ...] = (1, 3, 7)  # negatives per group for the n-pair rows
    batch_size: int | None = None  # groups per step; None = stage2.batch_size
    gen_contexts: int | None = None  # contexts for the generation rows; None = two batches
    gen_batch_size: int | None = None  # None = eval.batch_size
    max_new_tokens: int | None = None  # None = eval.max_new_tokens
    judge_replies: int | None = None  # replies the judges score; None = every candidate of the bench groups
    dpo: bool = True
    generation: bool = True
    judges: bool = True

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["ks"] = list(self.ks)
        return d


PRESET_SETTINGS: dict[str, dict[str, Any]] = {
    "smoke": {"warmup_steps": 1, "timed_steps": 3},
    # 2 groups per step (the cpu training preset takes 4): the K = 7 one-row-per-reply row alone then computes
    # 16 sequences per step, minutes on a 2-core CPU; the ratios are per step of the same batch, whatever its size
    "cpu": {"warmup_steps": 1, "timed_steps": 3, "batch_size": 2},
    "gpu": {"warmup_steps": 3, "timed_steps": 10},
}


class BenchError(RuntimeError):
    """The benchmark cannot run at all (no model, no groups)."""


def bench_settings(cfg: Config, **overrides: Any) -> BenchSettings:
    """The preset's settings with the config's sizes filled in and ``overrides`` (``None`` values ignored)."""
    base = dict(PRESET_SETTINGS.get(cfg.preset, {}))
    base.update({k: v for k, v in overrides.items() if v is not None})
    if "ks" in base:
        base["ks"] = tuple(int(k) for k in base["ks"])
    s = BenchSettings(**base)
    s.batch_size = s.batch_size or cfg.stage2.batch_size
    s.gen_batch_size = s.gen_batch_size or cfg.eval.batch_size
    s.gen_contexts = s.gen_contexts or 2 * s.gen_batch_size
    s.max_new_tokens = s.max_new_tokens or cfg.eval.max_new_tokens
    for name in ("warmup_steps",):
        if getattr(s, name) < 0:
            raise BenchError(f"bench {name} = {getattr(s, name)}: expected >= 0")
    for name in ("timed_steps", "batch_size", "gen_contexts", "gen_batch_size", "max_new_tokens"):
        if getattr(s, name) < 1:
            raise BenchError(f"bench {name} = {getattr(s, name)}: expected >= 1")
    if not s.ks or any(k < 1 for k in s.ks):
        raise BenchError(f"bench ks = {list(s.ks)}: expected one or more K >= 1")
    return s


def bench_fingerprint(cfg: Config, settings: BenchSettings) -> str:
    """Equal for runs whose measurements are comparable: same config sections, threads and settings."""
    payload = {"format": BENCH_FORMAT, "config": cfg.fingerprint("data", "model", "loss", "stage2", "eval"),
               "seed": cfg.seed, "settings": settings.to_dict()}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def bench_path(cfg: Config) -> Path:
    return Path(cfg.run_dir) / "bench" / BENCH_FILE


# ---------------------------------------------------------------------- the machine
def machine_header(cfg: Config, device: torch.device, model=None) -> dict[str, Any]:
    """Where the numbers come from: CPU model and cores, torch threads and versions, device, preset, model."""
    import transformers

    from .book import machine_info
    info = machine_info()
    header: dict[str, Any] = {
        "preset": cfg.preset, "model": cfg.model.name, "device": str(device), "cpu": info["cpu"],
        "cpu_cores": info["cpu_cores"], "cpu_cores_usable": info["cpu_cores_usable"],
        "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "transformers": transformers.__version__, "python": info["python"], "platform": info["platform"],
        "load_average_start": _loadavg(),
    }
    with contextlib.suppress(ImportError):
        import trl
        header["trl"] = trl.__version__
    if device.type == "cuda":
        header["gpu"] = torch.cuda.get_device_name(device)
    if model is not None:
        header["parameters"] = sum(p.numel() for p in model.parameters())
    return header


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


# ---------------------------------------------------------------------- memory
def _status_kb(key: str) -> int | None:
    try:
        m = re.search(rf"^{key}:\s+(\d+)\s+kB", Path("/proc/self/status").read_text(), re.M)
    except OSError:
        return None
    return int(m.group(1)) if m else None


def _rss_bytes() -> int:
    kb = _status_kb("VmRSS")
    if kb is not None:
        return kb * 1024
    import psutil
    return psutil.Process().memory_info().rss


def release_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS (glibc ``malloc_trim``), so the next row's
    baseline is not inflated by memory the previous row freed."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    with contextlib.suppress(Exception):
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class PeakMemory:
    """Peak memory of a block above a baseline (module docstring): :meth:`baseline` before the row's model copy is
    made, :meth:`reset` just before training, :meth:`peak_mb` after it."""

    def __init__(self, device: torch.device):
        self.device = device
        self.method = ""
        self._base = 0
        self._sampler: threading.Thread | None = None
        self._stop = threading.Event()
        self._max = 0

    def baseline(self) -> None:
        release_memory()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            self.method = "torch.cuda.max_memory_allocated"
        else:
            self._base = _rss_bytes()

    def reset(self) -> None:
        if self.device.type == "cuda":
            return
        try:  # Linux: writing 5 resets the peak RSS (VmHWM) to the current RSS
            Path("/proc/self/clear_refs").write_text("5")
            if _status_kb("VmHWM") is None:
                raise OSError("no VmHWM")
            self.method = "peak RSS (VmHWM after /proc/self/clear_refs)"
            return
        except OSError:
            pass
        self.method = "RSS sampled every 5 ms (psutil)"
        self._stop.clear()
        self._max = _rss_bytes()

        def sample() -> None:
            while not self._stop.wait(0.005):
                self._max = max(self._max, _rss_bytes())
        self._sampler = threading.Thread(target=sample, daemon=True)
        self._sampler.start()

    def peak_mb(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        elif self._sampler is not None:
            self._stop.set()
            self._sampler.join()
            self._sampler = None
            peak = max(self._max, _rss_bytes())
        else:
            peak = (_status_kb("VmHWM") or 0) * 1024
        return round((peak - self._base) / 2**20, 1)


# ---------------------------------------------------------------------- data
def bench_groups(cfg: Config, n_groups: int, k_max: int) -> list[dict[str, Any]]:
    """``n_groups`` stage-2 training groups (dialogue histories; ``k_max`` negatives where the data has them)."""
    from .data.casual import load_casual
    from .data.errors import DataSkipWarning
    from .data.prosocial_dialog import load_prosocial_dialog
    from .groups import build_stage2_groups

    bc = copy.deepcopy(cfg)
    bc.set("loss.num_negatives", k_max)
    prosocial = load_prosocial_dialog(cfg.data.prosocial_source, split="train", max_rows=cfg.data.max_train_examples)
    casual_rows = cfg.data.max_train_examples if cfg.data.max_train_examples is not None else 4 * n_groups
    with warnings.catch_warnings():  # skipped empty turns: chapter 0 reports them; here they only change the pool
        warnings.simplefilter("ignore", DataSkipWarning)
        casual = load_casual(cfg.data.casual_source, split="train", seed=cfg.data.seed, max_rows=casual_rows,
                             prosocial_source=cfg.data.prosocial_source)
    groups = build_stage2_groups(prosocial, casual, bc, max_groups=n_groups, seed=cfg.data.seed,
                                 where=f"ProsocialDialog ({cfg.data.prosocial_source}, train)")
    if len(groups) < n_groups:
        raise BenchError(f"the benchmark needs {n_groups} stage-2 groups; the data gave {len(groups)}")
    return groups


def with_k(groups: Sequence[dict[str, Any]], k: int) -> list[dict[str, Any]]:
    """The groups with at most their first ``k`` negatives (and weights)."""
    out = []
    for g in groups:
        h = dict(g)
        for key in ("negatives", "neg_weights", "neg_severity"):
            if key in h:
                h[key] = list(h[key])[:k]
        out.append(h)
    return out


def history_of(group: dict[str, Any]) -> list[str]:
    """A group's context as the list of turns generation and the judges take (the user's turn last)."""
    return [m["content"] for m in group["context_messages"] if m["role"] != "system"]


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


def _training_args(cfg: Config, settings: BenchSettings, out_dir: str, device: torch.device,
                   mp_dtype: torch.dtype, args_cls=None, **extra: Any):
    """The same optimisation settings for every row (TRL's DPOConfig is a TrainingArguments subclass)."""
    import inspect

    from transformers import TrainingArguments
    args_cls = args_cls or TrainingArguments
    kwargs: dict[str, Any] = dict(
        output_dir=out_dir, per_device_train_batch_size=settings.batch_size, gradient_accumulation_steps=1,
        learning_rate=cfg.stage2.learning_rate, weight_decay=cfg.stage2.weight_decay,
        max_steps=settings.warmup_steps + settings.timed_steps, lr_scheduler_type="constant", warmup_steps=0,
        logging_strategy="no", save_strategy="no", report_to="none", seed=cfg.seed, data_seed=cfg.seed,
        dataloader_num_workers=0, disable_tqdm=True, use_cpu=device.type == "cpu", remove_unused_columns=False,
        bf16=mp_dtype == torch.bfloat16 and device.type == "cuda",
        fp16=mp_dtype == torch.float16 and device.type == "cuda")
    kwargs.update(extra)
    names = {f.name for f in dataclasses.fields(args_cls)} | set(inspect.signature(args_cls.__init__).parameters)
    if "activation_checkpointing" in names:
        kwargs["activation_checkpointing"] = False
    else:
        kwargs["gradient_checkpointing"] = False
    return args_cls(**{k: v for k, v in kwargs.items() if k in names})


def _summarise_steps(times: list[float], warmup: int) -> dict[str, Any]:
    timed = times[warmup:]
    if not timed:
        raise BenchError(f"no timed steps: the trainer ran {len(times)} steps and {warmup} are warm-up")
    return {"step_s": statistics.median(timed), "step_s_all": [round(t, 5) for t in times],
            "steps_timed": len(timed)}


def _train_row(make_trainer: Callable[[], Any], device: torch.device, settings: BenchSettings,
               counter: _CountingCollator | None) -> dict[str, Any]:
    """Build a trainer (a fresh model copy inside), train warm-up + timed steps, return timings and memory."""
    from .training import quiet_trainer

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


def bench_training(cfg: Config, settings: BenchSettings, model, tok, groups: list[dict[str, Any]],
                   device: torch.device, mp_dtype: torch.dtype, progress: bool = True) -> list[dict[str, Any]]:
    """The training rows (module docstring), plain CE first; each gets ``ratio_to_ce``."""
    from tqdm.auto import tqdm

    from .models import chat_turn_end
    from .training import ContrastiveTrainer, GroupCollator, quiet_trainer

    turn_end = chat_turn_end(tok)
    n_tok_cache: dict[str, int] = {}

    def reply_len(text: str) -> int:
        if text not in n_tok_cache:
            n_tok_cache[text] = len(tok(text + turn_end, add_special_tokens=False)["input_ids"])
        return n_tok_cache[text]

    def reply_tokens_for(k: int) -> Callable[[dict[str, Any]], int]:
        return lambda g: reply_len(g["positive"]) + sum(reply_len(n) for n in list(g["negatives"])[:k])

    bs = settings.batch_size
    plan: list[dict[str, Any]] = [{"row": "plain CE", "objective": "ce", "K": 0, "layout": "separate"}]
    for layout in ("separate", "shared"):
        for k in settings.ks:
            plan.append({"row": f"n-pair K={k} ({layout})", "objective": "npair", "K": k, "layout": layout})
    if settings.dpo:
        plan.append({"row": "TRL DPO (K=1 pairs)", "objective": "dpo", "K": 1, "layout": "TRL"})

    def contrastive(k: int, layout: str, data, collator, out_dir: str, **extra: Any):
        loss_cfg = dataclasses.replace(cfg.loss, npair_weight=cfg.loss.npair_weight if k else 0.0,
                                       num_negatives=max(k, 1), shared_context=layout == "shared")
        args = _training_args(cfg, settings, out_dir, device, mp_dtype, **extra)
        return ContrastiveTrainer(model=copy.deepcopy(model), args=args, train_dataset=list(data),
                                  data_collator=collator, processing_class=tok, loss_cfg=loss_cfg)

    rows: list[dict[str, Any]] = []
    bar = tqdm(plan, desc="bench: training rows", unit="row", disable=not progress)
    with tempfile.TemporaryDirectory(prefix="prosocial-bench-") as tmp:
        # The first Trainer of a process pays one-off costs (imports, thread pools, allocator growth): a throwaway
        # one-step run takes them, so they do not land on the first measured row.
        with contextlib.suppress(Exception):
            first = with_k(groups[:bs], 0)
            warm = contrastive(0, "separate", first, GroupCollator(tok, cfg.model.max_length, positives_only=True),
                               f"{tmp}/warm-up", max_steps=1)
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
                    k = spec["K"]
                    data = with_k(groups, k)
                    collator = GroupCollator(tok, cfg.model.max_length, positives_only=k == 0,
                                             shared_context=spec["layout"] == "shared")
                    counter = _CountingCollator(collator, reply_tokens_for(k))
                    row["collate_ms"] = _collate_ms(collator, [data[i:i + bs] for i in range(0, len(data), bs)])

                    def make(k=k, layout=spec["layout"], data=data, counter=counter):
                        return contrastive(k, layout, data, counter, f"{tmp}/{len(rows)}")
                    row.update(_train_row(make, device, settings, counter))
                row["available"] = True
            except Exception as e:  # a broken row is reported, the others still run
                log.warning("bench row %s failed: %s", spec["row"], e)
                row.update(_unavailable(_error_reason(e)))
            rows.append(row)
    bar.close()
    ce = next((r for r in rows if r["objective"] == "ce" and r.get("available")), None)
    for r in rows:
        if r.get("available"):
            r["groups_per_s"] = bs / r["step_s"]
            tps = r.get("response_tokens_per_step")
            r["response_tokens_per_s"] = tps / r["step_s"] if tps else None
            r["ratio_to_ce"] = r["step_s"] / ce["step_s"] if ce else None
            if device.type == "cpu" and ce and r.get("cpu_step_s") and ce.get("cpu_step_s"):
                r["cpu_ratio_to_ce"] = r["cpu_step_s"] / ce["cpu_step_s"]
    return rows


def _dpo_row(cfg: Config, settings: BenchSettings, model, tok, groups, device, mp_dtype, tmp: str) -> dict:
    """TRL's DPOTrainer on (positive, first negative) of the same groups; the frozen reference model is a copy."""
    import datasets
    from trl import DPOConfig, DPOTrainer

    from .dpo import dpo_pairs, fit_prompts

    pairs = dpo_pairs(groups, max_negatives_per_group=1)
    pairs, n_short, n_long = fit_prompts(pairs, tok, cfg.model.max_length)
    note = f"{len(pairs)} pairs from {len(groups)} groups"
    if n_short:
        note += f"; {n_short} prompts shortened, {n_long} still too long"
    train = pairs.select_columns(["prompt", "chosen", "rejected"])

    def make():
        args = _training_args(cfg, settings, f"{tmp}/dpo", device, mp_dtype, args_cls=DPOConfig,
                              beta=cfg.eval.dpo_beta, max_length=cfg.model.max_length)
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


# ---------------------------------------------------------------------- generation and judges
def bench_generation(model, tok, histories: list[list[str]], settings: BenchSettings,
                     max_prompt_tokens: int | None = None) -> dict[str, Any]:
    """Greedy replies/s for the same contexts batched and one at a time.

    Each mode also runs once with ``max_new_tokens=1`` (the prompt pass alone, "prefill"): the rest of its time is
    decoding. Batching pays off in decoding (one pass over the weights serves the whole batch) but hardly in the
    prompt pass, which is compute-bound and also pays for padding to the batch's longest prompt; long dialogue
    histories therefore cap the speedup. ``same_replies``: share of contexts whose batched reply equals the
    one-at-a-time reply (greedy: should be 1). ``max_prompt_tokens``: the prompt cap the audit uses
    (:func:`prosocial_lib.audit.prompt_token_limit`), so the contexts are as long as an audit's."""
    try:
        from .generation import generate_replies
    except Exception as e:
        return _unavailable(f"prosocial_lib.generation cannot be imported: {_error_reason(e)}")
    hs = histories[: settings.gen_contexts]
    try:
        generate_replies(model, tok, hs[:1], batch_size=1, max_new_tokens=2, progress=False)  # warm-up
        prompt_tokens = [len(tok(_prompt_text(tok, h), add_special_tokens=False)["input_ids"]) for h in hs]
        if max_prompt_tokens:
            prompt_tokens = [min(n, max_prompt_tokens) for n in prompt_tokens]
        out: dict[str, Any] = {"available": True, "contexts": len(hs), "batch_size": settings.gen_batch_size,
                               "max_new_tokens": settings.max_new_tokens, "prompt_token_limit": max_prompt_tokens,
                               "mean_prompt_tokens": statistics.mean(prompt_tokens), "max_prompt_tokens":
                               max(prompt_tokens)}
        replies = {}
        for name, bs in (("batched", settings.gen_batch_size), ("one_at_a_time", 1)):
            t0 = time.perf_counter()
            r = generate_replies(model, tok, hs, batch_size=bs, max_new_tokens=settings.max_new_tokens,
                                 max_prompt_tokens=max_prompt_tokens, progress=False)
            dt = time.perf_counter() - t0
            t0 = time.perf_counter()
            generate_replies(model, tok, hs, batch_size=bs, max_new_tokens=1, max_prompt_tokens=max_prompt_tokens,
                             progress=False)
            prefill = time.perf_counter() - t0
            replies[name] = [x[0] for x in r]
            # reply length re-tokenized from the text (generate_replies returns text), at most max_new_tokens
            n_new = [min(len(tok(x, add_special_tokens=False)["input_ids"]), settings.max_new_tokens)
                     for x in replies[name]]
            out[name] = {"seconds": dt, "replies_per_s": len(hs) / dt, "mean_reply_tokens": statistics.mean(n_new),
                         "prefill_seconds": prefill, "decode_seconds": max(dt - prefill, 0.0)}
        b, o = out["batched"], out["one_at_a_time"]
        out["speedup"] = b["replies_per_s"] / o["replies_per_s"]
        out["prefill_speedup"] = o["prefill_seconds"] / b["prefill_seconds"]
        out["decode_speedup"] = o["decode_seconds"] / b["decode_seconds"] if b["decode_seconds"] > 0 else None
        out["same_replies"] = sum(x == y for x, y in zip(replies["batched"], replies["one_at_a_time"])) / len(hs)
        return out
    except Exception as e:
        log.warning("bench generation failed: %s", e)
        return _unavailable(_error_reason(e))


def _prompt_text(tok, history: list[str]) -> str:
    from .data.dialogue import history_to_messages
    from .models import chat_prompt
    return chat_prompt(tok, history_to_messages(history))


def bench_judges(cfg: Config, pairs: list[tuple[list[str], str]], judges=None) -> dict[str, Any]:
    """Replies scored/s by the judges on ``pairs`` (history, reply) with an empty embedding cache (every text is
    embedded, as in an audit of new replies). ``judges`` None = the preset's (:func:`judges.load_judges`: reused
    when saved, trained otherwise; the setup time is reported apart)."""
    try:
        from .judges import SentenceEncoder, load_judges
    except Exception as e:
        return _unavailable(f"prosocial_lib.judges cannot be imported: {_error_reason(e)}")
    try:
        from .data.errors import DataSkipWarning
        t0 = time.perf_counter()
        with warnings.catch_warnings():  # the judge data's skipped rows are reported where the judges are trained
            warnings.simplefilter("ignore", DataSkipWarning)
            j = judges if judges is not None else load_judges(cfg)
        setup = time.perf_counter() - t0
        old = j.encoder
        j.encoder = SentenceEncoder(old.model_dir, max_seq_length=old.max_seq_length, batch_size=old.batch_size,
                                    device=old.device, progress=False)
        try:
            j.encoder.encode(["warm-up"])  # loads the encoder weights outside the timing
            t0 = time.perf_counter()
            scored = j.score([h for h, _ in pairs], [r for _, r in pairs])
            dt = time.perf_counter() - t0
        finally:
            j.encoder = old
        n_ctx = len({tuple(h) for h, _ in pairs})
        return {"available": True, "replies": len(pairs), "contexts": n_ctx, "seconds": dt,
                "replies_per_s": len(pairs) / dt, "setup_s": setup,
                "judges": "given" if judges is not None else ("reused" if j.reused else "trained now"),
                "unsafe_share": float(scored["unsafe"].mean())}
    except Exception as e:
        log.warning("bench judges failed: %s", e)
        return _unavailable(_error_reason(e))


# ---------------------------------------------------------------------- the whole benchmark
def run_bench(cfg: Config, settings: BenchSettings | None = None, *, judges=None, progress: bool = True,
              save: bool = True) -> dict[str, Any]:
    """Run every part (module docstring) and return the result dict (also written to :func:`bench_path`)."""
    from .audit import prompt_token_limit
    from .models import load_model_and_tokenizer, resolve_device, resolve_dtype

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
                                                max_prompt_tokens=prompt_token_limit(cfg))
        result["seconds_generation"] = time.perf_counter() - t0
    else:
        result["generation"] = _unavailable("skipped (settings.generation = false)")
    if settings.judges:
        pairs = [(history_of(g), r) for g in groups for r in [g["positive"], *g["negatives"]]]
        if settings.judge_replies:
            pairs = pairs[: settings.judge_replies]
        t0 = time.perf_counter()
        result["judges"] = bench_judges(cfg, pairs, judges)
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
    from .models import chat_prompt, chat_turn_end
    end = chat_turn_end(tok)
    ctx = [len(tok(chat_prompt(tok, g["context_messages"]), add_special_tokens=False)["input_ids"]) for g in groups]
    rep = [len(tok(r + end, add_special_tokens=False)["input_ids"]) for g in groups
           for r in [g["positive"], *g["negatives"]]]
    return {"groups": len(groups), "mean_context_turns": statistics.mean(len(g["context_messages"]) for g in groups),
            "mean_context_tokens": statistics.mean(ctx), "mean_reply_tokens": statistics.mean(rep),
            "mean_negatives": statistics.mean(len(g["negatives"]) for g in groups),
            "kinds": {k: sum(g["meta"].get("kind") == k for g in groups) for k in ("unsafe", "casual")}}


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


# ---------------------------------------------------------------------- results
def headline_numbers(result: dict[str, Any]) -> dict[str, float]:
    """The numbers the appendix cites (NaN where a part was not measured), so prose can glue them."""
    nan = float("nan")

    def get(part: dict[str, Any] | None, *keys: str) -> float:
        for key in keys:
            if not isinstance(part, dict) or part.get("available") is False or key not in part:
                return nan
            part = part[key]
        return float(part) if isinstance(part, (int, float)) and not isinstance(part, bool) else nan

    def ratio(a: float, b: float) -> float:
        return a / b if b == b and b > 0 else nan  # b == b: not NaN

    shared3, sep3 = _row(result, "npair", 3, "shared"), _row(result, "npair", 3, "separate")
    ce, dpo = _row(result, "ce", 0), _row(result, "dpo", 1)
    gen, judges = result.get("generation"), result.get("judges")
    out = {name: get(t, "value") for name, t in result.get("targets", {}).items()}
    out.update({f"{name}_cpu": get(t, "value_cpu_time") for name, t in result.get("targets", {}).items()
                if name != "generation_speedup"})
    out.update({
        "ce_step_s": get(ce, "step_s"), "shared_k3_step_s": get(shared3, "step_s"),
        "separate_k3_step_s": get(sep3, "step_s"), "dpo_step_s": get(dpo, "step_s"),
        "model_tokens_ratio_k3": ratio(get(shared3, "model_tokens_per_step"), get(sep3, "model_tokens_per_step")),
        "mem_ratio_k3": ratio(get(shared3, "peak_mem_mb"), get(sep3, "peak_mem_mb")),
        "batched_replies_per_s": get(gen, "batched", "replies_per_s"),
        "single_replies_per_s": get(gen, "one_at_a_time", "replies_per_s"),
        "judge_replies_per_s": get(judges, "replies_per_s"), "bench_seconds": get(result, "seconds_total"),
        "generation_prefill_speedup": get(gen, "prefill_speedup"),
        "generation_decode_speedup": get(gen, "decode_speedup"),
        "generation_prefill_share": ratio(get(gen, "one_at_a_time", "prefill_seconds"),
                                          get(gen, "one_at_a_time", "seconds"))})
    out["audit_100_generate_min"] = ratio(100.0, out["batched_replies_per_s"]) / 60
    out["audit_100_judge_s"] = ratio(100.0, out["judge_replies_per_s"])
    return out


def targets_markdown(result: dict[str, Any]) -> str:
    """One bullet per target: the measured value and whether it is met (generated, so it is true in any run)."""
    lines = []
    for t in result["targets"].values():
        if t["value"] is None:
            lines.append(f"- {t['what']}: not measured in this run (goal {t['target']}).")
        else:
            verdict = "met" if t["met"] else "**not met**"
            cpu = f", {t['value_cpu_time']:.2f} by CPU time" if t.get("value_cpu_time") is not None else ""
            lines.append(f"- {t['what']}: {t['value']:.2f}{cpu} (goal {t['target']}): {verdict}.")
    return "\n".join(lines)


def provenance_markdown(result: dict[str, Any]) -> str:
    h = result["header"]
    how = (f"loaded from the run saved on {result.get('created')}" if result.get("reused")
           else f"measured now ({result.get('seconds_total', 0):.0f} s)")
    return (f"These numbers were {how}: preset `{h['preset']}`, model `{h['model']}`, device `{h['device']}`, "
            f"{h['cpu']} with {h['cpu_cores_usable']} usable cores, {h['torch_threads']} torch threads, torch "
            f"{h['torch']}; load average {h.get('load_average_start')} at the start.")


def save_bench(result: dict[str, Any], path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=1, default=str))
    os.replace(tmp, path)
    return path


def load_bench(cfg: Config, settings: BenchSettings | None = None) -> dict[str, Any] | None:
    """The saved result for this exact config and settings (None when there is none)."""
    settings = settings or bench_settings(cfg)
    path = bench_path(cfg)
    if not path.exists():
        return None
    try:
        result = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return result if result.get("fingerprint") == bench_fingerprint(cfg, settings) else None


def load_or_run_bench(cfg: Config, settings: BenchSettings | None = None, *, rerun: bool = False,
                      **kwargs: Any) -> dict[str, Any]:
    """A saved run of this config (``result["reused"] = True``), else a fresh one."""
    settings = settings or bench_settings(cfg)
    saved = None if rerun else load_bench(cfg, settings)
    if saved is not None:
        return {**saved, "reused": True}
    return {**run_bench(cfg, settings, **kwargs), "reused": False}


def training_table(result: dict[str, Any]):
    """One row per training objective: median step time, its ratio to plain CE, throughput and peak memory."""
    import pandas as pd
    rows = []
    for r in result["training"]:
        if not r.get("available"):
            rows.append({"objective": r["row"], "K": r["K"], "step (s)": None, "x plain CE": None,
                         "x plain CE (CPU time)": None,
                         "groups/s": None, "reply tokens/s": None, "model tokens/step": None,
                         "peak memory (MB)": None, "note": f"unavailable: {r.get('reason')}"})
            continue
        rows.append({"objective": r["row"], "K": r["K"], "step (s)": r["step_s"], "x plain CE": r.get("ratio_to_ce"),
                     "x plain CE (CPU time)": r.get("cpu_ratio_to_ce"),
                     "groups/s": r["groups_per_s"], "reply tokens/s": r.get("response_tokens_per_s"),
                     "model tokens/step": r.get("model_tokens_per_step"), "peak memory (MB)": r["peak_mem_mb"],
                     "note": r.get("note", "")})
    table = pd.DataFrame(rows)
    if table["x plain CE (CPU time)"].isna().all():  # a GPU run: host CPU time says nothing about the work
        table = table.drop(columns="x plain CE (CPU time)")
    return table


def inference_table(result: dict[str, Any]):
    """Generation (batched, one at a time) and judge throughput."""
    import pandas as pd
    rows = []
    gen = result.get("generation") or {}
    if gen.get("available"):
        for name in ("batched", "one_at_a_time"):
            g = gen[name]
            bs = gen["batch_size"] if name == "batched" else 1
            rows.append({"part": f"generation, batch {bs}", "items": gen["contexts"], "seconds": g["seconds"],
                         "per second": g["replies_per_s"],
                         "note": f"prompt pass {g['prefill_seconds']:.1f} s, decoding {g['decode_seconds']:.1f} s; "
                                 f"{g['mean_reply_tokens']:.1f} tokens per reply (max {gen['max_new_tokens']}) after "
                                 f"{gen['mean_prompt_tokens']:.0f} prompt tokens"})
    else:
        rows.append({"part": "generation", "items": None, "seconds": None, "per second": None,
                     "note": f"unavailable: {gen.get('reason')}"})
    j = result.get("judges") or {}
    if j.get("available"):
        rows.append({"part": "judges (replies scored)", "items": j["replies"], "seconds": j["seconds"],
                     "per second": j["replies_per_s"],
                     "note": f"{j['contexts']} contexts, judges {j['judges']} (setup {j['setup_s']:.1f} s)"})
    else:
        rows.append({"part": "judges", "items": None, "seconds": None, "per second": None,
                     "note": f"unavailable: {j.get('reason')}"})
    return pd.DataFrame(rows)


def targets_table(result: dict[str, Any]):
    import pandas as pd
    table = pd.DataFrame([{"target": t["what"], "measured": t["value"], "by CPU time": t.get("value_cpu_time"),
                           "goal": t["target"], "met": {True: "yes", False: "no", None: "not measured"}[t["met"]]}
                          for t in result["targets"].values()])
    return table.drop(columns="by CPU time") if table["by CPU time"].isna().all() else table


def format_header(result: dict[str, Any]) -> str:
    h = result["header"]
    s = result["settings"]
    lines = [f"preset {h['preset']} | model {h['model']} ({h.get('parameters', 0) / 1e6:.1f}M parameters) | "
             f"device {h['device']}{' (' + h['gpu'] + ')' if h.get('gpu') else ''}",
             f"cpu {h['cpu']} | {h['cpu_cores']} cores ({h['cpu_cores_usable']} usable) | torch threads "
             f"{h['torch_threads']} | load average {h.get('load_average_start')} -> {h.get('load_average_end')}",
             f"torch {h['torch']} | transformers {h['transformers']} | trl {h.get('trl', '-')} | python {h['python']}",
             f"{s['batch_size']} groups per step | {s['warmup_steps']} warm-up + {s['timed_steps']} timed steps "
             f"(median) | K in {s['ks']}"]
    return "\n".join(lines)


def format_bench(result: dict[str, Any]) -> str:
    """The header, the three tables and where the JSON is, for the terminal."""
    import pandas as pd
    with pd.option_context("display.max_columns", 20, "display.width", 200, "display.max_colwidth", 60,
                           "display.float_format", lambda x: f"{x:.3g}"):
        parts = [format_header(result), "", "training (per optimizer step)",
                 training_table(result).to_string(index=False),
                 "", "inference", inference_table(result).to_string(index=False), "", "targets",
                 targets_table(result).to_string(index=False)]
    parts.append(f"\n{result.get('seconds_total', 0):.1f} s in total")
    return "\n".join(parts)


# ---------------------------------------------------------------------- the command line
def configure_cli(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--warmup", type=int, default=None, help="untimed warm-up steps per training row")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per training row (median reported)")
    parser.add_argument("--ks", default=None, help="comma-separated K values for the n-pair rows (default 1,3,7)")
    parser.add_argument("--batch-size", type=int, default=None, help="groups per step (default stage2.batch_size)")
    parser.add_argument("--gen-contexts", type=int, default=None, help="contexts for the generation rows")
    parser.add_argument("--no-dpo", action="store_true", help="skip the TRL DPO row")
    parser.add_argument("--no-generation", action="store_true", help="skip the generation rows")
    parser.add_argument("--no-judges", action="store_true", help="skip the judge row")
    parser.add_argument("--out", default=None, help=f"JSON path (default <run_dir>/bench/{BENCH_FILE})")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run_cli(args: argparse.Namespace, cfg: Config) -> int:
    from .data.errors import DataFormatError
    from .groups import GroupBuildError
    from .models import ModelSpecError

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        ks = tuple(int(k) for k in args.ks.split(",")) if args.ks else None
        settings = bench_settings(cfg, warmup_steps=args.warmup, timed_steps=args.steps, ks=ks,
                                  batch_size=args.batch_size, gen_contexts=args.gen_contexts,
                                  dpo=False if args.no_dpo else None,
                                  generation=False if args.no_generation else None,
                                  judges=False if args.no_judges else None)
        result = run_bench(cfg, settings, progress=not args.no_progress, save=args.out is None)
    except (BenchError, GroupBuildError, DataFormatError, ModelSpecError, ValueError) as e:
        print(f"prosocial bench: error: {e}", file=sys.stderr)
        return 1
    path = save_bench(result, args.out) if args.out else bench_path(cfg)
    print(format_bench(result))
    print(f"saved {path}")
    return 0
