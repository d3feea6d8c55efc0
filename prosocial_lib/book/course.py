"""Numbers for the course guide: how long each chapter takes, measured where the book was run, estimated (and
marked so) where it was not.

Measured times come from execution reports (``_build/execution-report-<preset>.json``, written by
:func:`prosocial_lib.book.build_book` with the machine they ran on). The book keeps reference reports of its
authors' runs in ``book/timings/``; the build that renders the guide adds its own (the guide executes last).

No GPU was available to measure the Colab column, so it is an *estimate* from the gpu preset's sizes (optimizer
steps, replies to generate) and two assumed rates, :data:`ASSUMED_GPU_RATES`, printed beside the table. Replace
it with a measurement: run ``make book PRESET=gpu`` on Colab and copy the report into ``book/timings/``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from ..config.presets import get_config
from ..config.schema import Config

#: Assumed rates on a Colab GPU (T4 class) for the gpu preset's model (SmolLM2-360M, max_length 384); not measured.
ASSUMED_GPU_RATES = {
    "seconds_per_step": 1.0,  # one optimizer step of batch_size x grad_accum groups of 1 + K sequences
    "replies_per_second": 10.0,  # batched greedy or sampled replies of max_new_tokens tokens
    "data_minutes": 3.0,  # downloading and preparing ProsocialDialog, MIC and DailyDialog once
}

CHAPTER_TITLES = {
    "00_data": "00 The data", "01_audit": "01 The audit", "02_stage1_mic": "02 Stage 1 (MIC)",
    "03_stage2_prosocial": "03 Stage 2 (ProsocialDialog)", "04_evaluation": "04 Evaluation",
    "appendix_bench": "Appendix: benchmark", "course_guide": "Course guide",
}


def load_report(path: str | Path | None) -> dict[str, Any] | None:
    """An execution report, or None when no path is given or the file does not exist."""
    if not path or not Path(path).is_file():
        return None
    return json.loads(Path(path).read_text())


def reference_reports(folder: str | Path) -> dict[str, dict[str, Any]]:
    """The reference reports in ``folder`` (``execution-report-<preset>.json``), keyed by preset."""
    out = {}
    for path in sorted(Path(folder).glob("execution-report-*.json")):
        report = load_report(path)
        if report and report.get("notebooks"):
            out[report["preset"]] = report
    return out


def machine_label(report: dict[str, Any]) -> str:
    """A short description of where a report was measured: cores, CPU (or GPU), date."""
    m = report.get("machine") or {}
    where = m.get("gpu") or f"{m.get('cpu_cores_usable', '?')}-core CPU ({m.get('cpu', 'unknown')})"
    return f"{where}, {m.get('date', 'date unknown')}"


def chapter_key(notebook: str) -> str:
    return Path(notebook).stem


def measured_times(reports: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """Minutes per chapter, one column per report label; chapters a report did not reach are missing (NaN)."""
    cols = {}
    for label, report in reports.items():
        cols[label] = {chapter_key(r["notebook"]): r["seconds"] / 60 for r in report["notebooks"] if r.get("ok")}
    table = pd.DataFrame(cols)
    table.index = [CHAPTER_TITLES.get(k, k) for k in table.index]
    return _in_reading_order(table)


def _in_reading_order(table: pd.DataFrame) -> pd.DataFrame:
    """Rows (chapter titles) in the book's order, unknown chapters last, the index named "chapter"."""
    order = [t for t in CHAPTER_TITLES.values() if t in table.index]
    table = table.reindex(order + [t for t in table.index if t not in order])
    table.index.name = "chapter"
    return table


def _steps(cfg: Config, stage: int, groups: int | None) -> int:
    st = cfg.stage1 if stage == 1 else cfg.stage2
    if st.max_steps > 0:
        return int(st.max_steps)
    n = groups if groups is not None else (st.max_groups or 0)
    return math.ceil(n * st.epochs / (st.batch_size * st.grad_accum))


def gpu_work(cfg: Config | None = None) -> pd.DataFrame:
    """What each chapter does under the gpu preset, counted from its config: optimizer steps and replies."""
    cfg = cfg or get_config("gpu")
    audit, gen, cmp = cfg.audit, cfg.generation, cfg.compare
    s1, s2 = _steps(cfg, 1, None), _steps(cfg, 2, None)
    models = len(audit.models) or 1
    sampled = sum("sampled" in v for v in audit.decodings)
    greedy = len(audit.decodings) - sampled
    per_set = audit.num_contexts * (greedy + sampled * gen.samples_per_context)
    audit_replies = models * 2 * per_set
    compare_contexts = cmp.num_contexts or audit.num_contexts
    variants = len(cmp.systems)
    # every trained variant but the full method (chapter 03's run) retrains: stage-2-only variants one stage,
    # "both" variants and DPO two; the ablations retrain stage 2 once each
    retrain_steps = 0
    for v in cmp.systems:
        if v == "base" or v == "npair-both":
            continue
        retrain_steps += s2 if v.endswith("stage2") or v == "dpo" else s1 + s2
    retrain_steps += len(cmp.ablations) * s2
    rows = [
        {"chapter": "00_data", "optimizer steps": 0, "replies": 0},
        {"chapter": "01_audit", "optimizer steps": 0, "replies": audit_replies},
        {"chapter": "02_stage1_mic", "optimizer steps": s1, "replies": 0},
        {"chapter": "03_stage2_prosocial", "optimizer steps": s2, "replies": 0},
        {"chapter": "04_evaluation", "optimizer steps": retrain_steps,
         "replies": variants * 2 * compare_contexts},
    ]
    return pd.DataFrame(rows).set_index("chapter")


def gpu_estimates(cfg: Config | None = None, rates: dict[str, float] | None = None) -> pd.Series:
    """Estimated minutes per chapter for the gpu preset on a Colab GPU: steps and replies at the assumed rates."""
    rates = {**ASSUMED_GPU_RATES, **(rates or {})}
    work = gpu_work(cfg)
    minutes = (work["optimizer steps"] * rates["seconds_per_step"]
               + work["replies"] / rates["replies_per_second"]) / 60
    minutes.loc["00_data"] += rates["data_minutes"]
    minutes.index = [CHAPTER_TITLES[k] for k in minutes.index]
    return minutes


def guide_table(reports: dict[str, dict[str, Any]], cfg_gpu: Config | None = None) -> pd.DataFrame:
    """Minutes per chapter: every measured report (its label says preset and machine) and the gpu estimate."""
    estimate = gpu_estimates(cfg_gpu).rename("gpu preset, Colab GPU (estimate)")
    return _in_reading_order(measured_times(reports).join(estimate, how="outer"))
