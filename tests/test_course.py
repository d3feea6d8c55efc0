"""The course guide's numbers: measured times from execution reports, the gpu estimate from the config."""

import json

import pandas as pd
import pytest

from prosocial_lib.book import course
from prosocial_lib.config import get_config


def report(preset, seconds, ok=True):
    return {"preset": preset, "machine": {"cpu": "Test CPU", "cpu_cores": 4, "cpu_cores_usable": 2,
                                          "date": "2026-11-28"},
            "notebooks": [{"notebook": f"book/{name}.ipynb", "seconds": s, "ok": ok} for name, s in seconds.items()]}


def test_measured_times_in_minutes_in_reading_order():
    reports = {"cpu": report("cpu", {"01_audit": 120.0, "00_data": 30.0}),
               "smoke": report("smoke", {"00_data": 6.0})}
    table = course.measured_times(reports)
    assert list(table.index) == ["00 The data", "01 The audit"]
    assert table.loc["00 The data", "cpu"] == pytest.approx(0.5)
    assert table.loc["01 The audit", "cpu"] == pytest.approx(2.0)
    assert pd.isna(table.loc["01 The audit", "smoke"])  # the smoke run did not reach it
    failed = course.measured_times({"cpu": report("cpu", {"00_data": 30.0}, ok=False)})
    assert failed.empty or failed["cpu"].isna().all()  # a failed chapter's time is not a chapter time


def test_machine_label():
    assert course.machine_label(report("cpu", {})) == "2-core CPU (Test CPU), 2026-11-28"
    assert course.machine_label({"machine": {"gpu": "Tesla T4", "date": "2026-01-01"}}) == "Tesla T4, 2026-01-01"


def test_gpu_work_counts_steps_and_replies():
    cfg = get_config("gpu", {
        "stage1.max_groups": 160, "stage1.batch_size": 8, "stage1.grad_accum": 2, "stage1.epochs": 1.0,
        "stage2.max_groups": 320, "stage2.batch_size": 8, "stage2.grad_accum": 2, "stage2.epochs": 2.0,
        "audit.num_contexts": 10, "generation.samples_per_context": 5,
        "audit.models": ["a", "b"], "audit.decodings": ["greedy", "greedy+safety", "sampled"],
        "compare.num_contexts": 4, "compare.systems": ["base", "ce-stage2", "ce-both", "npair-both"],
        "compare.ablations": ["loss.social_alpha=0"]})
    work = course.gpu_work(cfg)
    assert work.loc["02_stage1_mic", "optimizer steps"] == 10  # 160 groups / 16 per step
    assert work.loc["03_stage2_prosocial", "optimizer steps"] == 40  # 320 groups x 2 epochs / 16
    # 2 models x 2 sets x 10 contexts x (2 greedy variants + 1 sampled variant x 5 samples)
    assert work.loc["01_audit", "replies"] == 280
    # ce-stage2: stage 2 (40); ce-both: both stages (50); base and the full method train nothing here; the
    # ablation retrains stage 2 (40)
    assert work.loc["04_evaluation", "optimizer steps"] == 130
    assert work.loc["04_evaluation", "replies"] == 4 * 2 * 4
    minutes = course.gpu_estimates(cfg, {"seconds_per_step": 6.0, "replies_per_second": 2.0, "data_minutes": 1.0})
    assert minutes["02 Stage 1 (MIC)"] == pytest.approx(1.0)  # 10 steps x 6 s
    assert minutes["01 The audit"] == pytest.approx(280 / 2 / 60)
    assert minutes["00 The data"] == pytest.approx(1.0)


def test_guide_table_joins_measured_and_estimated(tmp_path):
    (tmp_path / "execution-report-cpu.json").write_text(json.dumps(report("cpu", {"00_data": 60.0})))
    (tmp_path / "execution-report-empty.json").write_text(json.dumps({"preset": "empty", "notebooks": []}))
    assert course.load_report(None) is None and course.load_report("") is None  # no report given
    assert course.load_report(tmp_path) is None  # a folder is not a report
    refs = course.reference_reports(tmp_path)
    assert list(refs) == ["cpu"]  # a report without chapters is not a reference
    table = course.guide_table(refs)
    assert table.index[0] == "00 The data" and table.loc["00 The data", "cpu"] == pytest.approx(1.0)
    assert table["gpu preset, Colab GPU (estimate)"].notna().sum() == 5  # the five chapters, data to evaluation


def test_reference_reports_of_the_book(repo_root):
    """The book ships measured reports for the smoke and cpu presets, every chapter executed, with the machine."""
    refs = course.reference_reports(repo_root / "book" / "timings")
    assert {"smoke", "cpu"} <= set(refs)
    chapters = {p.stem for p in (repo_root / "book").glob("*.ipynb")} - {"course_guide"}
    for preset, rep in refs.items():
        assert rep["machine"]["cpu_cores"] and rep["machine"]["date"], preset
        ran = {course.chapter_key(n["notebook"]) for n in rep["notebooks"] if n["ok"]}
        assert chapters <= ran, (preset, chapters - ran)
