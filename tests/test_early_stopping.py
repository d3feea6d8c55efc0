"""Training to convergence under one rule: early stopping on the held-out validation groups
(transformers' EarlyStoppingCallback, load_best_model_at_end), resumable, in the fingerprint, and the same budget
for every compared system."""

import dataclasses
from pathlib import Path

import pytest
import torch

from prosocial_lib.config import get_config
from prosocial_lib.config.coerce import ConfigError
from prosocial_lib.eval.systems import VARIANTS, uses_main_run, variant_config
from prosocial_lib.train.config import contrastive_args, dpo_args, early_stopping_callbacks
from prosocial_lib.train.stages import run_stage, stage_fingerprint
from prosocial_lib.train.trainer import ContrastiveTrainer

torch.set_num_threads(1)


class Interrupt(Exception):
    pass


def tiny_cfg(tmp_path, name="run", **over):
    base = {"runs_dir": str(tmp_path), "run_name": name, "model.threads": 1,
            "stage1.max_groups": 8, "stage1.max_steps": 12, "stage1.batch_size": 4, "stage1.learning_rate": 3e-3,
            "stage1.eval_groups": 4, "stage1.logging_steps": 1, "stage1.warmup_ratio": 0.0,
            "stage1.eval_steps": 1, "stage1.early_stopping_patience": 2}
    return get_config("smoke", {**base, **over})


def test_training_stops_when_the_held_out_loss_stops_improving(tmp_path):
    # a learning rate so small that the held-out loss cannot move by the threshold: the first evaluation is the
    # best, the next `patience` ones do not improve on it, and training stops at step 1 + patience of 12
    cfg = tiny_cfg(tmp_path, **{"stage1.learning_rate": 1e-9, "stage1.early_stopping_threshold": 0.05})
    r = run_stage(cfg, 1, progress=False)
    t = r.metrics["train"]
    assert t["global_step"] == 3 and t["max_steps"] == 12 and t["stopped_early"]
    assert t["evaluations"] == 3 and t["metric"] == "eval_loss"
    evals = [h for h in r.log_history if "eval_loss" in h]
    assert [h["step"] for h in evals] == [1, 2, 3]
    # changes below the threshold do not reset the patience, but the checkpoint kept is the lowest loss
    assert t["best_step"] == min(evals, key=lambda h: h["eval_loss"])["step"]
    assert all({"eval_ce", "eval_npair", "eval_contrastive_accuracy", "eval_margin"} <= set(h) for h in evals)
    # the objective on the held-out groups: CE + lambda * n-pair (lambda = 1)
    e = evals[0]
    assert e["eval_loss"] == pytest.approx(e["eval_ce"] + e["eval_npair"], abs=1e-4)
    assert e["eval_ce"] == pytest.approx(r.metrics["before"]["ce"], abs=1e-3)  # the same groups, the same model
    assert not (r.checkpoint_dir / "trainer").exists()  # finished: the checkpoints are gone
    # the chapters' training curves show the held-out loss beside the training loss
    from prosocial_lib.report.plots import plot_training_curves
    from prosocial_lib.report.training import log_frame
    logs = log_frame(r.log_history)
    assert logs[logs.metric == "eval_loss"]["step"].tolist() == [1, 2, 3]
    fig = plot_training_curves(logs)
    assert "held-out loss" in " ".join(ax.get_title() for ax in fig.axes if ax.get_visible())


def _scripted_losses(monkeypatch, losses):
    """Replace the held-out loss by ``losses[global_step]``: the best is where the script says."""
    original = ContrastiveTrainer.evaluation_loop

    def scripted(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        out.metrics[f"{kwargs.get('metric_key_prefix', 'eval')}_loss"] = losses[self.state.global_step]
        return out

    monkeypatch.setattr(ContrastiveTrainer, "evaluation_loop", scripted)


class BestIsLoaded:
    """A callback that checks, when training ends, that the model holds the best checkpoint's weights."""

    def __new__(cls):
        from transformers import TrainerCallback

        class _Check(TrainerCallback):
            seen = {}

            def on_train_end(self, args, state, control, model=None, **kw):
                from safetensors.torch import load_file
                saved = load_file(str(Path(state.best_model_checkpoint) / "model.safetensors"))
                params = dict(model.named_parameters())
                _Check.seen = {"best": Path(state.best_model_checkpoint).name,
                               "equal": all(torch.equal(params[k].detach().cpu(), v) for k, v in saved.items()
                                            if k in params)}
        return _Check()


def test_the_best_checkpoint_is_loaded_and_an_interrupted_run_resumes_to_the_same_result(tmp_path, monkeypatch):
    from transformers import TrainerCallback

    # held-out losses by step: best at step 2, no improvement at 3 and 4 -> patience 2 stops at step 4
    _scripted_losses(monkeypatch, {1: 1.0, 2: 0.5, 3: 0.7, 4: 0.8, 5: 0.9, 6: 0.1})
    check = BestIsLoaded()
    straight = run_stage(tiny_cfg(tmp_path, name="straight"), 1, callbacks=[check], progress=False)
    t = straight.metrics["train"]
    assert t["global_step"] == 4 and t["best_step"] == 2 and t["best_metric"] == 0.5 and t["stopped_early"]
    assert check.seen == {"best": "checkpoint-2", "equal": True}

    class StopAfterSave(TrainerCallback):
        def on_save(self, args, state, control, **kw):
            if state.global_step == 3:
                raise Interrupt()

    cfg = tiny_cfg(tmp_path, name="resume")
    with pytest.raises(Interrupt):
        run_stage(cfg, 1, callbacks=[StopAfterSave()], progress=False)
    kept = sorted(p.name for p in (cfg.run_dir / "stage1" / "trainer").glob("checkpoint-*"))
    assert kept == ["checkpoint-2", "checkpoint-3"]  # the newest and the best survive
    check = BestIsLoaded()
    resumed = run_stage(cfg, 1, callbacks=[check], progress=False)
    r = resumed.metrics["train"]
    assert r["resumed"] and r["global_step"] == 4 and r["best_step"] == 2  # the patience counter was restored
    assert check.seen == {"best": "checkpoint-2", "equal": True}
    top = lambda m: {k: v for k, v in m.items() if k != "by_kind"}  # noqa: E731
    assert top(resumed.metrics["after"]) == pytest.approx(top(straight.metrics["after"]), abs=1e-5)


def test_early_stopping_settings_are_checked_and_fingerprinted(tmp_path):
    cfg = tiny_cfg(tmp_path)
    assert stage_fingerprint(cfg, 1) != stage_fingerprint(cfg.with_overrides({"stage1.eval_steps": 2}), 1)
    assert stage_fingerprint(cfg, 1) != stage_fingerprint(
        cfg.with_overrides({"stage1.early_stopping_patience": 3}), 1)
    for key, value in (("stage1.eval_steps", -1), ("stage1.early_stopping_patience", 0),
                       ("stage1.early_stopping_threshold", -0.1), ("stage2.early_stopping_metric", "accuracy")):
        with pytest.raises(ConfigError, match=key.split(".")[1]):
            tiny_cfg(tmp_path, **{key: value})
    off = dataclasses.replace(cfg.stage1, eval_steps=0)
    args = contrastive_args(cfg.loss, off, tmp_path / "a", seed=0, device=torch.device("cpu"),
                            mp_dtype=torch.float32, n_groups=8)
    assert not args.load_best_model_at_end and early_stopping_callbacks(off) == []
    args = contrastive_args(cfg.loss, cfg.stage1, tmp_path / "b", seed=0, device=torch.device("cpu"),
                            mp_dtype=torch.float32, n_groups=8)
    assert args.load_best_model_at_end and args.metric_for_best_model == "eval_loss" and not args.greater_is_better
    assert args.eval_steps == args.save_steps == 1 and args.restore_callback_states_from_checkpoint


# ---------------------------------------------------------------------- one rule for every compared system
BUDGET_FIELDS = ("max_groups", "epochs", "max_steps", "batch_size", "grad_accum", "eval_groups", "eval_steps",
                 "early_stopping_patience", "early_stopping_threshold", "early_stopping_metric")


@pytest.mark.parametrize("preset, cap", [("cpu", None), ("gpu", None), ("cpu", 6)])
def test_every_compared_system_trains_under_the_same_budget_rule(preset, cap):
    cfg = get_config(preset, {"compare.max_steps": cap})
    budgets = {}
    for key in cfg.compare.systems:
        v = VARIANTS[key]
        vc = variant_config(cfg, v)
        for s in v.stages:
            st = getattr(vc, f"stage{s}")
            budgets.setdefault(s, {})[key] = {f: getattr(st, f) for f in BUDGET_FIELDS}
    for s, per_system in budgets.items():
        first = next(iter(per_system.values()))
        assert all(b == first for b in per_system.values()), (s, per_system)
        assert first["eval_steps"] > 0, "the cpu and gpu presets train every system to convergence"
        if cap is not None:
            assert first["max_steps"] == cap
    # the full method is the chapter-03 run itself only without a cap
    assert uses_main_run(cfg, VARIANTS["npair-both"]) is (cap is None)
    # DPO stops by the same rule, on its own held-out loss
    st = variant_config(cfg, VARIANTS["dpo"]).stage2
    args = dpo_args(st, "/tmp/unused-dpo", seed=0, device=torch.device("cpu"), mp_dtype=torch.float32, beta=0.1,
                    max_length=64)
    assert args.load_best_model_at_end and args.eval_steps == st.eval_steps
    assert args.metric_for_best_model == "eval_loss"
    assert "early stopping" in VARIANTS["dpo"].budget(cfg) and "early stopping" in VARIANTS["ce-stage2"].budget(cfg)
