"""Where and how a model runs: device, dtype, CPU threads, the model cache folder, and model-spec errors."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch


class ModelSpecError(ValueError):
    """A model spec that cannot be resolved (unknown name, missing folder, missing package)."""


# ---------------------------------------------------------------------- device, dtype, threads
def resolve_device(device: str = "auto") -> torch.device:
    """The torch device a model runs on.

    Args:
        device: ``"auto"`` (cuda > mps > cpu), ``"cuda"``, ``"mps"``, ``"cpu"`` or any torch device string.

    Returns:
        A :class:`torch.device`.

    Raises:
        ModelSpecError: ``"cuda"`` / ``"mps"`` asked for where torch does not see one.
    """
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelSpecError("model.device = 'cuda' but torch sees no CUDA GPU; use 'auto' or 'cpu'")
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ModelSpecError("model.device = 'mps' but MPS is not available; use 'auto' or 'cpu'")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device | str) -> torch.dtype:
    """The torch dtype of a model's weights.

    Args:
        dtype: ``"auto"`` (bf16 on a CUDA GPU that supports it, fp32 elsewhere: bf16 is far slower on most
            CPUs), ``"float32"``, ``"bfloat16"`` or ``"float16"``.
        device: where the model runs (:func:`resolve_device`).

    Returns:
        A :class:`torch.dtype`.

    Raises:
        ModelSpecError: another ``dtype`` name.
    """
    device = torch.device(device)
    if dtype == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    table = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype not in table:
        raise ModelSpecError(f"model.dtype = {dtype!r}: expected auto, float32, bfloat16 or float16")
    return table[dtype]


def set_threads(threads: int | None) -> None:
    """Set torch's CPU thread count (on a busy 2-core machine 1 thread can beat the default 2).

    Args:
        threads: the count (>= 1); ``None`` leaves torch's default.

    Raises:
        ModelSpecError: ``threads < 1``.
    """
    if threads is not None:
        if threads < 1:
            raise ModelSpecError(f"model.threads = {threads}: expected >= 1")
        torch.set_num_threads(threads)


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """Folder holding converted / generated models (the embedded model, the tiny tokenizer).

    Args:
        cache_dir: an explicit folder; else ``$PROSOCIAL_CACHE/models``, else ``~/.cache/prosocial_lib/models``.

    Returns:
        The folder (not created here).
    """
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    if os.environ.get("PROSOCIAL_CACHE"):
        return Path(os.environ["PROSOCIAL_CACHE"]).expanduser() / "models"
    return Path("~/.cache/prosocial_lib/models").expanduser()


def _dtype_kwarg(dtype: torch.dtype) -> dict[str, Any]:
    """transformers >= 4.56 calls it ``dtype``; older releases ``torch_dtype``."""
    import transformers
    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    return {"dtype": dtype} if (major, minor) >= (4, 56) else {"torch_dtype": dtype}
