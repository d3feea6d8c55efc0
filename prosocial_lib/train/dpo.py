"""The pairwise preference baseline: DPO (TRL's ``DPOTrainer``) on the same contrastive groups.

DPO (Rafailov et al., 2023) takes one chosen and one rejected reply per prompt (TRL supports only one rejected
reply, huggingface/trl#1831), so each group ``(context, positive, K negatives)`` becomes K pairs
``(context, positive, negative_j)``. What DPO cannot use, by construction, is the listwise softmax over all K
negatives at once and the social weights ``w_j``: that is exactly what the n-pair loss adds, and what comparing
the two isolates. (``max_negatives_per_group`` keeps only the first negatives of each group; ``groups.py`` lists
stage-1 negatives most severe first.)

Prompts are chat messages (TRL's "conversational" format), so TRL renders them with the tokenizer's chat
template exactly like :func:`prosocial_lib.models.chat_prompt` does at generation time. Contexts too long for
``model.max_length`` lose their oldest messages first.

A finished run leaves the model + tokenizer and ``metrics.json`` (written last, with the run's fingerprint) in
``output_dir``; calling :func:`train_dpo` again with the same config, data and start model reuses it.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import shutil
import time
from pathlib import Path
from typing import Any, Sequence

from ..config.schema import Config
from ..groups.types import ContrastiveGroup, GroupBuildError, as_groups
from ..runs import file_digests, fingerprint, read_json, write_json_atomic
from .checkpoints import StageInterrupted, require_finite, require_finite_weights, stage_lock, weights_problem

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
RUN_CONFIG_FILE = "run_config.json"
DPO_METRIC_KEYS = ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
                   "logps/chosen", "logps/rejected")


class DPODataError(ValueError):
    """A group that cannot become DPO pairs (names the group and the field)."""


# ---------------------------------------------------------------------- groups -> pairs
def dpo_pairs(groups: Sequence[ContrastiveGroup | dict[str, Any]], max_negatives_per_group: int | None = None):
    """Groups -> a ``datasets.Dataset`` with one row per (positive, negative) pair.

    Args:
        groups: :class:`~prosocial_lib.groups.types.ContrastiveGroup` objects (or group dicts, converted).
        max_negatives_per_group: keep only each group's first negatives (None = all).

    Returns:
        A Dataset with columns ``prompt`` (chat messages), ``chosen`` / ``rejected`` (one assistant message
        each), and for analysis ``group_index`` and ``neg_weight`` (DPO itself ignores the weight). Groups without
        negatives give no pair: they are counted and logged, never silently dropped.

    Raises:
        DPODataError: a malformed group (names the group and the field), a bad ``max_negatives_per_group``, or
            no pair at all.
    """
    from datasets import Dataset

    if max_negatives_per_group is not None and max_negatives_per_group < 1:
        raise DPODataError(f"max_negatives_per_group must be >= 1 or None, got {max_negatives_per_group}")
    try:
        groups = as_groups(groups, "group")
    except GroupBuildError as e:
        raise DPODataError(str(e)) from e
    rows: dict[str, list] = {"prompt": [], "chosen": [], "rejected": [], "group_index": [], "neg_weight": []}
    skipped = 0
    for i, g in enumerate(groups):
        if not g.negatives:
            skipped += 1
            continue
        n = max_negatives_per_group
        for neg, w in zip(g.negatives[:n], g.neg_weights[:n]):
            rows["prompt"].append([{"role": m["role"], "content": m["content"]} for m in g.context_messages])
            rows["chosen"].append([{"role": "assistant", "content": g.positive}])
            rows["rejected"].append([{"role": "assistant", "content": neg}])
            rows["group_index"].append(i)
            rows["neg_weight"].append(float(w))
    if skipped:
        log.warning("dpo_pairs: %d of %d groups have no negatives and give no DPO pair", skipped, len(groups))
    if not rows["prompt"]:
        raise DPODataError(f"none of the {len(groups)} groups has a negative: no DPO pairs")
    ds = Dataset.from_dict(rows)
    ds.info.description = f"{len(ds)} DPO pairs from {len(groups) - skipped} groups ({skipped} without negatives)"
    return ds


def fit_prompts(pairs, tok, max_length: int, reply_budget: int | None = None):
    """Fit the prompts of DPO pairs to ``max_length``, dropping their oldest context messages first.

    A leading system message stays and a prompt keeps starting on a user turn.

    Args:
        pairs: :func:`dpo_pairs` output.
        tok: the tokenizer (its chat template renders the prompts).
        max_length: tokens per prompt + reply.
        reply_budget: tokens left to the reply (default a quarter of ``max_length``, at least 8).

    Returns:
        ``(pairs, n_shortened, n_too_long)``: ``n_too_long`` prompts are still too long with only their last
        message (TRL then drops them; they are reported).
    """
    from ..modeling.chat import chat_prompt

    budget = max_length - (reply_budget if reply_budget is not None else max(8, max_length // 4))
    prompts = [list(msgs) for msgs in pairs["prompt"]]
    lengths = [len(ids) for ids in tok([chat_prompt(tok, m) for m in prompts], add_special_tokens=False).input_ids]
    shortened = too_long = 0
    for i, (msgs, n_ids) in enumerate(zip(prompts, lengths)):
        if n_ids <= budget:
            continue
        system = [m for m in msgs if m["role"] == "system"][:1] if msgs[0]["role"] == "system" else []
        turns = msgs[len(system):]
        while len(turns) > 1 and n_ids > budget:
            turns = turns[1:]
            while len(turns) > 1 and turns[0]["role"] != "user":  # keep the user-first alternation
                turns = turns[1:]
            n_ids = len(tok(chat_prompt(tok, system + turns), add_special_tokens=False).input_ids)
        prompts[i] = system + turns
        shortened += 1
        too_long += n_ids >= max_length
    if shortened:
        pairs = pairs.remove_columns("prompt").add_column("prompt", prompts)
    return pairs, shortened, too_long


# ---------------------------------------------------------------------- training
def dpo_fingerprint(cfg: Config, pairs, init_from: str | None, stage: str, beta: float,
                    learning_rate: float, max_negatives_per_group: int | None, sft_weight: float = 0.0,
                    eval_pairs=None) -> str:
    """A 12-hex-digit hash of everything that changes a DPO result: model and stage settings, seed, DPO knobs,
    the exact pairs (and the held-out pairs early stopping watches) and the start model (for a local folder, its
    small JSON files and file sizes, so a retrained stage 1 counts)."""
    model_cfg = {k: v for k, v in dataclasses.asdict(cfg.model).items() if k != "threads"}
    payload = {
        "model": model_cfg, "stage": dataclasses.asdict(getattr(cfg, stage)), "seed": cfg.seed, "beta": beta,
        "learning_rate": learning_rate, "max_negatives_per_group": max_negatives_per_group,
        "sft_weight": sft_weight,
        "init_from": _folder_signature(init_from) if init_from else cfg.model.name,
        "pairs": fingerprint(pairs.select_columns(["prompt", "chosen", "rejected"]).to_dict(), length=64),
    }
    if eval_pairs is not None:
        payload["eval_pairs"] = fingerprint(eval_pairs.select_columns(["prompt", "chosen", "rejected"]).to_dict(),
                                            length=64)
    return fingerprint(payload)


def _folder_signature(path: str) -> Any:
    p = Path(path)
    if not p.is_dir():
        return path
    sig: dict[str, Any] = {}
    for f in sorted(p.iterdir()):
        if f.is_file():
            sig[f.name] = f.read_text() if f.suffix == ".json" and f.stat().st_size < 1_000_000 else f.stat().st_size
    return sig


def load_dpo_result(output_dir: str | Path) -> dict[str, Any] | None:
    """The saved metrics of a finished DPO run in ``output_dir`` (None when there is none, or when its weight
    files no longer match the SHA-256 the metrics recorded: logged, and the run is trained again)."""
    metrics = read_json(Path(output_dir) / METRICS_FILE)
    if not isinstance(metrics, dict) or not (Path(output_dir) / "config.json").exists():
        return None
    problem = weights_problem(output_dir, metrics)
    if problem:
        log.warning("DPO: %s: training it again", problem)
        return None
    return metrics


def train_dpo(
    cfg: Config,
    groups: Sequence[ContrastiveGroup],
    init_from: str | None,
    output_dir: str | Path,
    *,
    stage: str = "stage2",
    beta: float = 0.1,
    learning_rate: float | None = None,
    max_negatives_per_group: int | None = None,
    sft_weight: float = 0.0,
    eval_groups: Sequence[ContrastiveGroup] | None = None,
    force: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """DPO-train the model (``init_from``, else ``cfg.model.name``) on the groups' pairs; save it and its metrics.

    Args:
        cfg: the experiment config (model, the stage's optimisation settings, seed).
        groups: the contrastive groups; each gives one pair per negative (:func:`dpo_pairs`).
        init_from: a model folder to start from (None = ``cfg.model.name``).
        output_dir: where the model, tokenizer, ``run_config.json`` and ``metrics.json`` go.
        stage: the section whose optimisation settings apply (batch size, accumulation, epochs / max_steps,
            warm-up, logging), through :func:`~prosocial_lib.train.config.dpo_args`.
        beta: DPO's KL strength (TRL's default 0.1).
        learning_rate: default the stage's (the same budget as the n-pair run; DPO alone tends to lower the
            chosen replies' log-probs too, huggingface/trl#800).
        max_negatives_per_group: pairs per group at most (None = all).
        sft_weight: > 0 adds TRL's NLL term on the chosen reply (DPO + lambda * CE, the analogue of our
            CE + lambda * n-pair).
        eval_groups: held-out groups (the validation split) whose pairs early stopping scores when the stage's
            ``eval_steps`` > 0 (the same rule as the n-pair stages, on DPO's own loss); ignored otherwise.
        force: retrain even when a finished run with the same fingerprint exists.
        progress: show a progress bar.

    Returns:
        The metrics dict (also in ``output_dir/metrics.json``); ``reused`` says whether a finished run with the
        same fingerprint was found and training was skipped.

    Raises:
        ValueError: a bad ``stage``, ``beta`` <= 0 or ``sft_weight`` < 0.
        DPODataError: malformed groups or no pairs.
        RunBusyError: another live process is writing ``output_dir`` (names its pid).
        TrainingDivergedError: a loss that is not finite; nothing is marked finished.
        StageInterrupted: Ctrl-C (a ``KeyboardInterrupt``); a rerun trains DPO again from the start.

    References:
        Rafailov et al., "Direct Preference Optimization", NeurIPS 2023; TRL's ``DPOTrainer``. Chapter 04
        compares it with the n-pair loss.
    """
    if stage not in ("stage1", "stage2"):
        raise ValueError(f"stage must be 'stage1' or 'stage2', got {stage!r}")
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if sft_weight < 0:
        raise ValueError(f"sft_weight must be >= 0, got {sft_weight}")
    lr = getattr(cfg, stage).learning_rate if learning_rate is None else learning_rate
    output_dir = Path(output_dir)
    pairs = dpo_pairs(groups, max_negatives_per_group)
    stopping = getattr(cfg, stage).eval_steps > 0
    if stopping and not eval_groups:
        raise ValueError(f"{stage}.eval_steps > 0 (early stopping) needs eval_groups, the held-out groups")
    eval_pairs = dpo_pairs(eval_groups, max_negatives_per_group) if stopping else None
    fingerprint = dpo_fingerprint(cfg, pairs, init_from, stage, beta, lr, max_negatives_per_group, sft_weight,
                                  eval_pairs)
    knobs = {"beta": beta, "sft_weight": sft_weight, "learning_rate": lr, "stage": stage, "init_from": init_from,
             "max_negatives_per_group": max_negatives_per_group, "eval_pairs": eval_pairs}
    with stage_lock(output_dir):
        previous = load_dpo_result(output_dir)
        if previous is not None and previous.get("fingerprint") == fingerprint and not force:
            log.info("DPO: reusing %s (fingerprint %s)", output_dir, fingerprint)
            return {**previous, "reused": True}
        try:
            metrics = _run_dpo(cfg, pairs, len(groups), output_dir, fingerprint, knobs, progress)
        except KeyboardInterrupt:
            raise StageInterrupted("dpo", output_dir, None) from None  # DPO keeps no checkpoints
    return {**metrics, "reused": False}


def _run_dpo(cfg: Config, pairs, n_groups: int, output_dir: Path, fp: str, knobs: dict[str, Any],
             progress: bool) -> dict[str, Any]:
    """Train, check the loss is finite, save the model and write ``metrics.json`` last (with the weights'
    SHA-256), under :func:`train_dpo`'s lock."""
    t0 = time.perf_counter()
    (output_dir / METRICS_FILE).unlink(missing_ok=True)  # the folder no longer holds a finished run
    _drop_checkpoints(output_dir)  # an interrupted run's: DPO starts over
    trainer, tok, n_pairs, n_shortened, device = _dpo_trainer(cfg, pairs, output_dir, knobs, progress)
    n_kept = len(trainer.train_dataset)
    result = trainer.train()
    history = [dict(h) for h in trainer.state.log_history]
    train_loss = float(result.training_loss)
    summary = _log_summary(history)
    require_finite(f"DPO ({output_dir})", {"train_loss": train_loss, **summary["last"]})
    final = trainer.model
    if cfg.model.lora:
        final = final.merge_and_unload()
    require_finite_weights(f"DPO ({output_dir})", final)
    output_dir.mkdir(parents=True, exist_ok=True)
    final.save_pretrained(str(output_dir))
    tok.save_pretrained(str(output_dir))
    metrics: dict[str, Any] = {
        "method": "dpo", "fingerprint": fp, "init_from": knobs["init_from"] or cfg.model.name,
        "stage": knobs["stage"], "beta": knobs["beta"], "sft_weight": knobs["sft_weight"],
        "learning_rate": knobs["learning_rate"], "groups": n_groups, "pairs": n_pairs, "pairs_trained": n_kept,
        "pairs_dropped_too_long": n_pairs - n_kept, "prompts_shortened": n_shortened,
        "max_negatives_per_group": knobs["max_negatives_per_group"], "steps": trainer.state.global_step,
        "train_loss": train_loss, "train_seconds": round(time.perf_counter() - t0, 2),
        **summary, "log_history": history, "device": device.type, "preset": cfg.preset,
        "weights": file_digests(output_dir),
    }
    if trainer.args.load_best_model_at_end:
        st = trainer.state
        metrics.update(max_steps=st.max_steps, best_step=getattr(st, "best_global_step", None),
                       best_metric=st.best_metric, stopped_early=st.global_step < st.max_steps,
                       evaluations=sum(1 for h in history if "eval_loss" in h))
    _drop_checkpoints(output_dir)  # early stopping's checkpoints: the best one is loaded already
    write_json_atomic(output_dir / RUN_CONFIG_FILE, {"config": cfg.to_dict(),
                                                     "dpo": {k: v for k, v in knobs.items() if k != "eval_pairs"}})
    write_json_atomic(output_dir / METRICS_FILE, metrics)  # last: marks completion
    return metrics


def _drop_checkpoints(output_dir: Path) -> None:
    """Delete the Trainer's ``checkpoint-*`` folders in ``output_dir`` (early stopping writes them)."""
    for folder in output_dir.glob("checkpoint-*"):
        shutil.rmtree(folder, ignore_errors=True)


def _dpo_trainer(cfg: Config, pairs, output_dir: Path, knobs: dict[str, Any], progress: bool):
    """Load the start model (fp32 master weights; half precision only as autocast on a GPU), fit the prompts to
    ``model.max_length`` and build TRL's ``DPOTrainer`` (a frozen copy as reference, or LoRA adapters).

    Returns ``(trainer, tokenizer, pairs before TRL's length filter, prompts shortened, device)``."""
    from trl import DPOTrainer

    from ..modeling.loading import load_model_and_tokenizer, resolve_device, resolve_dtype
    from .config import dpo_args, early_stopping_callbacks
    from .trainer import quiet_trainer

    device = resolve_device(cfg.model.device)
    dtype = resolve_dtype(cfg.model.dtype, device)
    mcfg = dataclasses.replace(cfg.model, name=knobs["init_from"] or cfg.model.name, dtype="float32", lora=False)
    model, tok = load_model_and_tokenizer(mcfg, seed=cfg.seed)
    pairs, n_shortened, n_too_long = fit_prompts(pairs, tok, cfg.model.max_length)
    if n_shortened:
        log.warning("DPO: %d prompts lost their oldest messages to fit model.max_length=%d; %d are still too "
                    "long and are dropped by TRL", n_shortened, cfg.model.max_length, n_too_long)
    peft_config = None
    if cfg.model.lora:
        from peft import LoraConfig
        peft_config = LoraConfig(r=cfg.model.lora_r, lora_alpha=cfg.model.lora_alpha, lora_dropout=0.0,
                                 target_modules=list(cfg.model.lora_target_modules), task_type="CAUSAL_LM")
    ref_model = None if peft_config is not None else copy.deepcopy(model)
    args = dpo_args(getattr(cfg, knobs["stage"]), output_dir, seed=cfg.seed, device=device,
                    mp_dtype=dtype,
                    beta=knobs["beta"], max_length=cfg.model.max_length, sft_weight=knobs["sft_weight"],
                    learning_rate=knobs["learning_rate"])
    train_pairs = pairs.select_columns(["prompt", "chosen", "rejected"])
    eval_pairs = knobs.get("eval_pairs")
    if eval_pairs is not None:
        eval_pairs = fit_prompts(eval_pairs, tok, cfg.model.max_length)[0].select_columns(
            ["prompt", "chosen", "rejected"])
    trainer = DPOTrainer(model=model, ref_model=ref_model, args=args, train_dataset=train_pairs,
                         eval_dataset=eval_pairs, processing_class=tok, peft_config=peft_config,
                         callbacks=early_stopping_callbacks(getattr(cfg, knobs["stage"])) or None)
    quiet_trainer(trainer, progress=progress)
    return trainer, tok, len(pairs), n_shortened, device


def _log_summary(history: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """The first, last and mean DPO metrics of the training logs (non-finite values are logged as a warning)."""
    train_logs = [h for h in history if "rewards/margins" in h]
    out = {
        "first": {k: train_logs[0][k] for k in DPO_METRIC_KEYS if train_logs and k in train_logs[0]},
        "last": {k: train_logs[-1][k] for k in DPO_METRIC_KEYS if train_logs and k in train_logs[-1]},
        "mean": {k: sum(h[k] for h in train_logs) / len(train_logs)
                 for k in DPO_METRIC_KEYS if train_logs and all(k in h for h in train_logs)},
    }
    for part, values in out.items():
        bad = [k for k, v in values.items() if not math.isfinite(v)]
        if bad:
            log.warning("DPO: non-finite %s metrics: %s", part, bad)
    return out
