"""Chat formatting: the chat templates, prompts and turn ends every model kind is given."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from .runtime import ModelSpecError

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------- native formats of template-less models
#: DialoGPT: turns joined by the end-of-text token, the reply follows the last one (Zhang et al., 2020).
DIALOGPT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}"
    "{{ raise_exception('DialoGPT has no system prompt: audit it without one') }}"
    "{% endif %}"
    "{{ message['content'] + eos_token }}"
    "{% endfor %}"
)
#: BlenderBot (encoder input): user turns start with a space, turns are separated by two spaces, then </s>
#: (the template transformers shipped as BlenderBot's default before chat templates moved to the hub).
BLENDERBOT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}"
    "{{ raise_exception('BlenderBot has no system prompt: audit it without one') }}"
    "{% endif %}"
    "{% if message['role'] == 'user' %}{{ ' ' }}{% endif %}"
    "{{ message['content'] }}"
    "{% if not loop.last %}{{ '  ' }}{% endif %}"
    "{% endfor %}"
    "{{ eos_token }}"
)
#: model_type -> the native template used when the tokenizer brings none.
NATIVE_CHAT_TEMPLATES: dict[str, str] = {
    "gpt2": DIALOGPT_CHAT_TEMPLATE,
    "blenderbot": BLENDERBOT_CHAT_TEMPLATE,
    "blenderbot-small": BLENDERBOT_CHAT_TEMPLATE,
}
#: Substrings of model names that :func:`~prosocial_lib.modeling.loading.load_model_and_tokenizer` loads with
#: their native dialog format (no chat template).
NATIVE_FORMAT_NAMES: tuple[str, ...] = ("dialogpt", "blenderbot")


def has_native_format(name: str) -> bool:
    """True for models the book knows to have no chat template (DialoGPT, BlenderBot), by name.

    Args:
        name: a model name, hub id or folder (matched case-insensitively on :data:`NATIVE_FORMAT_NAMES`).
    """
    return any(s in name.lower() for s in NATIVE_FORMAT_NAMES)


def ensure_chat_template(tokenizer, model) -> Any:
    """Give a template-less tokenizer the template of its model's native input format, or fail clearly.

    Args:
        tokenizer: a tokenizer; changed in place when it has no ``chat_template``.
        model: its model (``model.config.model_type`` picks the template in :data:`NATIVE_CHAT_TEMPLATES`).

    Returns:
        ``tokenizer``.

    Raises:
        GenerationInputError: no template and no known native format for the model type.

    References:
        Zhang et al. (2020), DialoGPT (turns joined by end-of-text); BlenderBot's former default template in
        transformers.
    """
    if getattr(tokenizer, "chat_template", None):
        return tokenizer
    model_type = getattr(model.config, "model_type", "?")
    if model_type not in NATIVE_CHAT_TEMPLATES:
        raise GenerationInputError(
            f"model {getattr(model.config, 'name_or_path', '?')!r} (type {model_type!r}) has no chat template and "
            f"the book knows no native dialog format for it (known: {', '.join(sorted(NATIVE_CHAT_TEMPLATES))}); "
            "set tokenizer.chat_template")
    tokenizer.chat_template = NATIVE_CHAT_TEMPLATES[model_type]
    log.info("using the native %s dialog format for %s", model_type, getattr(model.config, "name_or_path", "?"))
    return tokenizer


# ---------------------------------------------------------------------- prompts
def format_prompt(tokenizer, history: Sequence[str], system_prompt: str | None = None) -> str:
    """The chat-template text that ends where the model's reply starts (the prompt of generation).

    Args:
        tokenizer: a tokenizer with a chat template.
        history: the dialogue turns, oldest first, the user's turn last (roles alternate back from it).
        system_prompt: an optional system message first.

    Returns:
        The prompt string.
    """
    from ..data.dialogue import history_to_messages
    from .chat import chat_prompt
    return chat_prompt(tokenizer, history_to_messages(list(history), system=system_prompt),
                       add_generation_prompt=True)


def stop_token_ids(tokenizer, model=None) -> list[int]:
    """Token ids that end a turn: eos, the model's configured eos ids, and ChatML's ``<|im_end|>``.

    Args:
        tokenizer: the tokenizer (its eos and vocabulary).
        model: optionally the model (its ``generation_config.eos_token_id``).

    Returns:
        Sorted distinct token ids.
    """
    ids: list[int] = []
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.extend([gen_eos] if isinstance(gen_eos, int) else list(gen_eos or []))
    vocab = tokenizer.get_vocab()
    ids.extend(vocab[t] for t in ("<|im_end|>", "<|endoftext|>", "<|eot_id|>") if t in vocab)
    return sorted(set(ids))

# "tiny": a ChatML template in SmolLM2's layout (without its default system prompt).
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


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
    reply starts. Training and generation both format contexts with this function.

    Args:
        tok: a tokenizer with a chat template.
        messages: ``{"role", "content"}`` dicts (content a string), non-empty.
        add_generation_prompt: end with the assistant's turn header.

    Returns:
        The formatted text (not tokenized).

    Raises:
        ValueError: malformed ``messages``.
    """
    _check_messages(messages)
    return tok.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=add_generation_prompt)


def chat_turn_end(tok) -> str:
    """The text the template puts after an assistant reply (``"<|im_end|>\\n"`` for ChatML).

    Args:
        tok: a tokenizer with a chat template.

    Returns:
        The turn end, found by rendering a marker reply.

    Raises:
        ModelSpecError: the template does not render an assistant reply as prompt + reply + end.
    """
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

    Args:
        tok: a tokenizer with a chat template.
        messages: the context, as for :func:`chat_prompt`.
        response: the reply to train on.

    Returns:
        ``(prompt, completion)``.

    Raises:
        ValueError, ModelSpecError: as :func:`chat_prompt` and :func:`chat_turn_end`.
    """
    return chat_prompt(tok, messages, add_generation_prompt=True), response + chat_turn_end(tok)


class GenerationInputError(ValueError):
    """Contexts or settings that cannot be generated from."""
