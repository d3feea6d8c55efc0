"""The "what this chapter finds" boxes and the training notes: written from the run's numbers, no machine paths."""

from pathlib import Path

from prosocial_lib.config import get_config
from prosocial_lib.report import audit, training
from prosocial_lib.train.stages import StageResult


def _numbers(**extra):
    numbers = {"unsafe_min_rate": 0.25, "unsafe_max_rate": 0.5, "unsafe_max_low": 0.3, "unsafe_max_high": 0.7,
               "unsafe_min_system": "m | greedy", "unsafe_max_system": "m | sampled", "ci_width_mean": 0.4,
               "prompt_model": "SmolLM2-135M-Instruct", "prompt_decoding": "greedy", "prompt_unsafe_change": -0.25,
               "prompt_unsafe_ci_low": -0.5, "prompt_unsafe_ci_high": -0.05}
    return {**numbers, **extra}


def test_the_audit_box_says_what_the_numbers_say():
    box = audit.findings_box(_numbers(), instrument="The reply judge clears the bar.", preset="cpu")
    assert "from 25% (*m | greedy*) to 50% (*m | sampled*)" in box
    assert "-25.0 percentage points" in box and "lower with the prompt" in box
    assert "40% wide" in box and "clears the bar" in box and "random weights" not in box
    same = audit.findings_box(_numbers(unsafe_min_rate=0.5, prompt_unsafe_ci_high=0.1), preset="smoke")
    assert "50% for every system" in same and "includes zero" in same and "random weights" in same


def test_the_stage_box_and_note_use_the_stage_metrics(tmp_path):
    cfg = get_config("smoke", {"runs_dir": str(tmp_path)})
    metrics = {"before": {"accuracy": 0.25, "margin": -0.1, "groups": 4, "by_kind": {"unsafe": {"accuracy": 0.5}}},
               "after": {"accuracy": 0.75, "margin": 0.2, "groups": 4, "by_kind": {"unsafe": {"accuracy": 1.0}}},
               "train": {"global_step": 4, "groups": 8, "train_seconds": 12.0}}
    result = StageResult(stage=2, checkpoint_dir=cfg.run_dir / "stage2", metrics=metrics, log_history=[], reused=True)
    box = training.findings_box(result, cfg)
    assert "25% before stage 2 and 75% after (up, +50 percentage points)" in box
    assert "unsafe contexts 50% to 100%" in box and "4 optimisation steps on 8 groups" in box
    note = training.training_note(result, cfg)
    assert "`runs/smoke/stage2`" in note and str(tmp_path) not in note and "when it was trained" in note
    assert str(tmp_path) not in training.describe_stage(cfg, 2)
    assert Path(cfg.run_dir).is_relative_to(tmp_path)
