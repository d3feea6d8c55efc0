"""The benchmark's settings per preset and its targets."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config.schema import Config

BENCH_FORMAT = 2  # bump when the JSON layout or the measurement changes (older saved results are not reused)
BENCH_FILE = "bench.json"

# The book's targets for this benchmark (2-core CPU, embedded model); checked, never asserted.
TARGETS = {
    "shared_vs_separate_k3": ("shared-context K=3 step / separate-rows K=3 step", "<=", 0.6),
    "shared_k3_vs_ce": ("shared-context K=3 step / plain CE step", "<=", 2.0),
    "shared_k3_vs_3dpo": ("shared-context K=3 step / three DPO steps (per compared pair)", "<=", 0.35),
    "generation_speedup": ("batched / one-at-a-time generation, replies per second", ">=", 4.0),
}


@dataclass(frozen=True)
class BenchSettings:
    """What the benchmark runs. ``None`` fields come from the config (see :func:`bench_settings`)."""

    warmup_steps: int = 1  # first steps of every training row that are not timed (optimizer state, caches)
    timed_steps: int = 4  # timed steps per training row; the median is reported
    ks: tuple[int, ...] = (1, 3, 7)  # negatives per group for the n-pair rows
    batch_size: int | None = None  # groups per step; None = stage2.batch_size
    gen_contexts: int | None = None  # contexts for the generation rows; None = two batches
    gen_batch_size: int | None = None  # None = generation.batch_size
    max_new_tokens: int | None = None  # None = generation.max_new_tokens
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
    gen_batch_size = s.gen_batch_size or cfg.generation.batch_size
    s = dataclasses.replace(s, batch_size=s.batch_size or cfg.stage2.batch_size, gen_batch_size=gen_batch_size,
                            gen_contexts=s.gen_contexts or 2 * gen_batch_size,
                            max_new_tokens=s.max_new_tokens or cfg.generation.max_new_tokens)
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
    sections = ("data", "model", "loss", "stage2", "generation", "judges")
    payload = {"format": BENCH_FORMAT, "config": cfg.fingerprint(*sections),
               "seed": cfg.seed, "settings": settings.to_dict()}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def bench_path(cfg: Config) -> Path:
    return Path(cfg.run_dir) / "bench" / BENCH_FILE
