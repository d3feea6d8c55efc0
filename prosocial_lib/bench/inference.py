"""Benchmark of generation and judging throughput."""

from __future__ import annotations

import logging
import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

from .settings import BenchSettings
from .training import _error_reason, _unavailable

log = logging.getLogger(__name__)


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
        from ..modeling.generation import generate_replies
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
    from ..data.dialogue import history_to_messages
    from ..modeling.chat import chat_prompt
    return chat_prompt(tok, history_to_messages(history))


def bench_judges(pairs: list[tuple[list[str], str]], judges=None, *,
                 loader: Callable[[], Any] | None = None) -> dict[str, Any]:
    """Replies scored/s by the judges on ``pairs`` (history, reply) with an empty embedding cache (every text is
    embedded, as in an audit of new replies). ``judges`` None = ``loader()``, e.g. the preset's judges
    (:func:`prosocial_lib.eval.audit.preset_judges`: reused when saved, trained otherwise; the setup time is
    reported apart)."""
    if judges is None and loader is None:
        raise ValueError("bench_judges: give judges or a loader")
    try:
        from ..eval.judges.encoder import SentenceEncoder
    except Exception as e:
        return _unavailable(f"prosocial_lib.judges cannot be imported: {_error_reason(e)}")
    try:
        from ..data.errors import DataSkipWarning
        t0 = time.perf_counter()
        with warnings.catch_warnings():  # the judge data's skipped rows are reported where the judges are trained
            warnings.simplefilter("ignore", DataSkipWarning)
            j = judges if judges is not None else loader()
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
                "model": getattr(j, "model", "logistic"), "train_seconds": dict(j.report.get("seconds", {})),
                "unsafe_share": float(scored["unsafe"].mean())}
    except Exception as e:
        log.warning("bench judges failed: %s", e)
        return _unavailable(_error_reason(e))
