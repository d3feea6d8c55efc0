"""The benchmark: its pieces by hand, and the smoke run end to end (rows present and sane; never wall times)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from prosocial_lib.bench.inference import bench_generation
from prosocial_lib.bench.memory import PeakMemory
from prosocial_lib.bench.run import load_bench, load_or_run_bench, run_bench, target_checks
from prosocial_lib.bench.settings import (
    PRESET_SETTINGS,
    TARGETS,
    BenchError,
    BenchSettings,
    bench_fingerprint,
    bench_path,
    bench_settings,
)
from prosocial_lib.bench.training import _summarise_steps, history_of, with_k
from prosocial_lib.config import get_config
from prosocial_lib.groups.types import ContrastiveGroup
from prosocial_lib.report.bench import format_bench, headline_numbers, inference_table, targets_markdown, training_table

torch.set_num_threads(1)


def _cfg(tmp_path, **over):
    return get_config("smoke", {"runs_dir": str(tmp_path / "runs"), "model.threads": 1, **over})


# ---------------------------------------------------------------------- pieces
def test_settings_come_from_the_config_and_are_checked(tmp_path):
    cfg = _cfg(tmp_path)
    s = bench_settings(cfg)
    assert (s.batch_size, s.gen_batch_size, s.gen_contexts, s.max_new_tokens) == (2, 4, 8, 8)
    assert s.ks == (1, 3, 7) and s.timed_steps == PRESET_SETTINGS["smoke"]["timed_steps"]
    assert bench_settings(cfg, ks=[3], timed_steps=None).ks == (3,)  # None keeps the default
    for bad in ({"ks": [0]}, {"timed_steps": 0}, {"warmup_steps": -1}):
        with pytest.raises(BenchError):
            bench_settings(cfg, **bad)
    # the fingerprint follows what changes the numbers
    fp = bench_fingerprint(cfg, s)
    assert fp == bench_fingerprint(cfg, bench_settings(cfg))
    assert fp != bench_fingerprint(cfg, bench_settings(cfg, timed_steps=9))
    assert fp != bench_fingerprint(_cfg(tmp_path, **{"model.threads": 2}), s)


def test_with_k_keeps_the_first_negatives():
    g = ContrastiveGroup(context_messages=[], positive="p", negatives=["a", "b", "c"], neg_weights=[1.0, 2.0, 3.0],
                         neg_severity=[0.0, 0.5, 1.0], meta={})
    (h,) = with_k([g], 2)
    assert (h.negatives, h.neg_weights, h.neg_severity) == (["a", "b"], [1.0, 2.0], [0.0, 0.5])
    assert g.negatives == ["a", "b", "c"]  # the original is untouched


def test_history_of_drops_the_system_message():
    g = ContrastiveGroup(context_messages=[{"role": "system", "content": "be nice"}, {"role": "user", "content": "hi"},
                                           {"role": "assistant", "content": "hello"}, {"role": "user", "content": "bye"}],
                         positive="p")
    assert history_of(g) == ["hi", "hello", "bye"]


def test_steps_are_summarised_by_the_median_after_warm_up():
    s = _summarise_steps([9.0, 1.0, 3.0, 2.0], warmup=1)
    assert s["step_s"] == 2.0 and s["steps_timed"] == 3
    with pytest.raises(BenchError):
        _summarise_steps([1.0], warmup=1)


def _fake_result(sep3=2.0, shared3=1.0, ce=0.5, dpo=1.5, speedup=5.0, dpo_ok=True):
    def row(obj, k, layout, step):
        return {"row": f"{obj} {k} {layout}", "objective": obj, "K": k, "layout": layout, "step_s": step,
                "available": True}
    training = [row("ce", 0, "separate", ce), row("npair", 3, "separate", sep3), row("npair", 3, "shared", shared3)]
    training.append(row("dpo", 1, "TRL", dpo) if dpo_ok else
                    {"row": "dpo", "objective": "dpo", "K": 1, "layout": "TRL", "available": False, "reason": "x"})
    return {"training": training, "generation": {"available": True, "speedup": speedup}}


def test_targets_by_hand():
    t = target_checks(_fake_result())
    assert t["shared_vs_separate_k3"]["value"] == pytest.approx(0.5) and t["shared_vs_separate_k3"]["met"]
    assert t["shared_k3_vs_ce"]["value"] == pytest.approx(2.0) and t["shared_k3_vs_ce"]["met"]  # <= 2.0
    assert t["shared_k3_vs_3dpo"]["value"] == pytest.approx(1.0 / 4.5) and t["shared_k3_vs_3dpo"]["met"]
    assert t["generation_speedup"]["met"]
    t = target_checks(_fake_result(shared3=1.5, speedup=3.0, dpo_ok=False))
    assert t["shared_vs_separate_k3"]["met"] is False and t["generation_speedup"]["met"] is False
    assert t["shared_k3_vs_3dpo"] == {**t["shared_k3_vs_3dpo"], "value": None, "met": None}  # DPO row missing


def test_headline_numbers_are_floats_nan_when_missing():
    result = _fake_result(dpo_ok=False)
    result["targets"] = target_checks(result)
    h = headline_numbers(result)
    assert h["shared_k3_vs_ce"] == pytest.approx(2.0) and h["ce_step_s"] == 0.5
    assert math.isnan(h["shared_k3_vs_3dpo"]) and math.isnan(h["dpo_step_s"])
    assert math.isnan(h["judge_replies_per_s"]) and math.isnan(h["audit_100_judge_s"])  # no judge part
    assert all(isinstance(v, float) for v in h.values())
    md = targets_markdown(result)
    assert "not measured" in md and "**not met**" not in md and md.count("\n- ") == 3


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="Linux /proc only")
def test_peak_memory_sees_a_temporary_allocation():
    mem = PeakMemory(torch.device("cpu"))
    mem.baseline()
    mem.reset()
    block = bytearray(200 * 2**20)
    block[:: 4096] = b"x" * len(block[:: 4096])  # touch every page so it is resident
    del block
    peak = mem.peak_mb()
    assert 190 <= peak <= 400, (peak, mem.method)
    assert mem.method


def test_a_broken_generation_is_reported_not_raised(monkeypatch):
    import prosocial_lib.modeling.generation as generation

    def boom(*args, **kwargs):
        raise RuntimeError("no decoder today")
    monkeypatch.setattr(generation, "generate_replies", boom)
    out = bench_generation(None, None, [["hi"]], BenchSettings(gen_contexts=1, gen_batch_size=1,
                                                                           max_new_tokens=2))
    assert out["available"] is False and "no decoder today" in out["reason"]


# ---------------------------------------------------------------------- the smoke benchmark
def _small_judges(cfg):
    """The preset's judge heads trained on a few examples per class: scoring costs the same (the heads are
    linear on fixed-size embeddings), training takes seconds instead of a minute."""
    from prosocial_lib.eval.judges.encoder import SentenceEncoder
    from prosocial_lib.eval.judges.judges import train_judges
    from prosocial_lib.eval.judges.tasks import load_judge_tasks

    tasks = []
    for t in load_judge_tasks(cfg.judges, cfg.data, seed=cfg.seed):
        pick = [i for c in t.classes for i in [j for j, y in enumerate(t.train_y) if y == c][:4]]
        tasks.append(dataclasses.replace(t, train_x=[t.train_x[i] for i in pick],
                                         train_y=[t.train_y[i] for i in pick], test_x=t.test_x[:4],
                                         test_y=t.test_y[:4]))
    return train_judges(tasks, SentenceEncoder(progress=False))


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    cfg = _cfg(tmp_path_factory.mktemp("bench"))
    return cfg, run_bench(cfg, judges=_small_judges(cfg), progress=False)


@pytest.mark.slow
def test_the_smoke_benchmark_writes_every_row(smoke_run):
    cfg, result = smoke_run
    saved = json.loads(bench_path(cfg).read_text())
    assert saved["fingerprint"] == result["fingerprint"]
    h = saved["header"]
    assert h["preset"] == "smoke" and h["torch_threads"] == 1 and h["torch"] == torch.__version__
    assert {"cpu", "cpu_cores", "device", "transformers"} <= set(h)

    rows = {r["row"]: r for r in saved["training"]}
    expected = ["plain CE", *[f"n-pair K={k} ({lay})" for lay in ("separate", "shared") for k in (1, 3, 7)],
                "TRL DPO (K=1 pairs)"]
    assert list(rows) == expected
    for name, r in rows.items():
        assert r["available"], (name, r.get("reason"))
        assert len(r["step_s_all"]) == 4 and r["steps_timed"] == 3
        assert 0 < r["step_s"] < 60 and r["groups_per_s"] == pytest.approx(2 / r["step_s"])
        assert r["peak_mem_mb"] > 0 and r["mem_method"]
        assert r["response_tokens_per_s"] > 0 and r["cpu_step_s"] > 0 and r["cpu_ratio_to_ce"] > 0
    assert rows["plain CE"]["ratio_to_ce"] == 1.0
    for k in (1, 3, 7):
        sep, shared = rows[f"n-pair K={k} (separate)"], rows[f"n-pair K={k} (shared)"]
        # the same groups in the same order: the same reply tokens, but the shared layout computes fewer positions
        assert sep["response_tokens_per_step"] == shared["response_tokens_per_step"]
        assert shared["model_tokens_per_step"] < sep["model_tokens_per_step"]
    assert (rows["n-pair K=1 (separate)"]["response_tokens_per_step"] < rows["n-pair K=3 (separate)"][
        "response_tokens_per_step"] < rows["n-pair K=7 (separate)"]["response_tokens_per_step"])

    gen = saved["generation"]
    assert gen["available"], gen.get("reason")
    assert gen["batched"]["replies_per_s"] > 0 and gen["one_at_a_time"]["replies_per_s"] > 0
    assert gen["same_replies"] == 1.0  # greedy: batching does not change the replies
    assert gen["contexts"] == 8 and gen["max_prompt_tokens"] >= gen["mean_prompt_tokens"] > 0
    # the prompts are cut as the audit cuts them
    from prosocial_lib.eval.audit import prompt_token_limit
    limit = prompt_token_limit(cfg.model.max_length, cfg.generation.max_new_tokens)
    assert gen["prompt_token_limit"] == limit >= gen["max_prompt_tokens"]
    for mode in ("batched", "one_at_a_time"):  # the prompt pass is part of the whole
        assert 0 < gen[mode]["prefill_seconds"] and gen[mode]["decode_seconds"] >= 0
    j = saved["judges"]
    assert j["available"], j.get("reason")
    assert j["replies"] == saved["groups"]["groups"] * (1 + saved["groups"]["mean_negatives"])
    assert j["replies_per_s"] > 0 and 0 <= j["unsafe_share"] <= 1
    assert set(saved["targets"]) == set(TARGETS)
    assert all(t["value"] is not None and math.isfinite(t["value"]) for t in saved["targets"].values())
    assert all(t["value_cpu_time"] > 0 for n, t in saved["targets"].items() if n != "generation_speedup")


@pytest.mark.slow
def test_tables_figure_and_reuse(smoke_run):
    from prosocial_lib.report.plots import plot_bench_cost_vs_k

    cfg, result = smoke_run
    table = training_table(result)
    assert len(table) == 8 and table["x plain CE"].iloc[0] == 1.0
    inference = inference_table(result)
    assert list(inference["part"]) == ["generation, batch 4", "generation, batch 1", "judges (replies scored)",
                                       "judges (training, all)"]
    assert inference["seconds"].iloc[-1] > 0  # training all judges, as measured when they were trained
    text = format_bench(result)
    assert "torch threads 1" in text and "shared-context K=3 step" in text
    fig = plot_bench_cost_vs_k(result)
    assert len(fig.axes) == 2 and len(fig.axes[0].lines) >= 3
    again = load_or_run_bench(cfg)
    assert again["reused"] and again["fingerprint"] == result["fingerprint"]
    assert load_bench(cfg, bench_settings(cfg, timed_steps=7)) is None  # other settings: no reuse


def test_a_fresh_run_is_saved_then_reused(tmp_path, monkeypatch):
    """load_or_run_bench runs the benchmark when nothing is saved, writes it, and reuses it the next time."""
    import prosocial_lib.bench.run as bench_run

    cfg = _cfg(tmp_path)
    settings = bench_settings(cfg)
    calls = []

    def fake_run(cfg_, settings_, **kwargs):
        calls.append(kwargs)
        return {"fingerprint": bench_run.bench_fingerprint(cfg_, settings_), "rows": [1, 2]}

    monkeypatch.setattr(bench_run, "run_bench", fake_run)
    first = load_or_run_bench(cfg, settings)
    assert not first["reused"] and calls == [{"save": False}]
    assert json.loads(bench_path(cfg).read_text())["rows"] == [1, 2]
    again = load_or_run_bench(cfg, settings)
    assert again["reused"] and len(calls) == 1


def test_cli_runs_a_minimal_benchmark(tmp_path, capsys):
    from prosocial_lib.cli import main

    out = tmp_path / "b.json"
    rc = main(["bench", "--preset", "smoke", "--runs-dir", str(tmp_path / "runs"), "--set", "model.threads=1",
               "--warmup", "0", "--steps", "1", "--ks", "3", "--no-dpo", "--no-generation", "--no-judges",
               "--no-progress", "--out", str(out)])
    assert rc == 0
    saved = json.loads(out.read_text())
    assert [r["row"] for r in saved["training"]] == ["plain CE", "n-pair K=3 (separate)", "n-pair K=3 (shared)"]
    assert saved["generation"]["available"] is False and "skipped" in saved["generation"]["reason"]
    assert "saved" in capsys.readouterr().out
    assert main(["bench", "--preset", "smoke", "--ks", "0"]) == 1  # a clear error, no traceback
