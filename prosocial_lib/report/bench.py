"""The benchmark's tables and generated Markdown for the appendix."""

from __future__ import annotations

from typing import Any

from ..eval.audit import short_model_name
from ..bench.run import _row


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
    return (f"These numbers were {how}: preset `{h['preset']}`, model {short_model_name(h['model'])}, device `{h['device']}`, "
            f"{h['cpu']} with {h['cpu_cores_usable']} usable cores, {h['torch_threads']} torch threads, torch "
            f"{h['torch']}; load average {h.get('load_average_start')} at the start.")


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
                     "note": f"{j['contexts']} contexts, {j.get('model', 'logistic')} judges {j['judges']} "
                             f"(setup {j['setup_s']:.1f} s)"})
        train = j.get("train_seconds") or {}
        if train.get("total") is not None:
            parts = ", ".join(f"{k} {v:.0f} s" for k, v in train.items() if k != "total")
            rows.append({"part": "judges (training, all)", "items": None, "seconds": train["total"],
                         "per second": None, "note": f"when they were trained: {parts}"})
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
    lines = [f"preset {h['preset']} | model {short_model_name(h['model'])} ({h.get('parameters', 0) / 1e6:.1f}M parameters) | "
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
