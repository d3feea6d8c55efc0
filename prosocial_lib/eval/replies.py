"""Side-by-side greedy replies of several models to the same contexts."""

from __future__ import annotations

from typing import Any, Sequence

from ..config.schema import GenerationConfig
from ..groups.types import ContrastiveGroup


def compare_replies(models: dict[str, tuple[Any, Any]], groups: Sequence[ContrastiveGroup],
                    generation: GenerationConfig | None = None, *, max_new_tokens: int | None = None,
                    max_prompt_tokens: int | None = None, seed: int = 0, progress: bool = False):
    """Greedy replies of each named ``(model, tokenizer)`` to the groups' contexts, beside the gold reply.

    ``generation`` (None = its defaults) gives the batch size, the repetition controls and trimming and, unless
    ``max_new_tokens`` is given, the reply length; ``max_prompt_tokens`` (usually ``model.max_length``) cuts long contexts from the left; ``seed`` is
    ``Config.seed``. Chapters 02 and 03 show these tables."""
    import pandas as pd

    from ..modeling.generation import generate_replies
    generation = generation if generation is not None else GenerationConfig()
    histories, systems = [], []
    for g in groups:
        msgs = g.context_messages
        systems.append(next((m["content"] for m in msgs if m["role"] == "system"), None))
        histories.append([m["content"] for m in msgs if m["role"] != "system"])
    table = pd.DataFrame({"kind": [g.kind for g in groups],
                          "context (last turn)": [h[-1] for h in histories],
                          "gold reply": [g.positive for g in groups]})
    for name, (model, tok) in models.items():
        replies: list[tuple[int, str]] = []
        for system in dict.fromkeys(systems):  # one call per distinct system prompt (rot_in_context)
            idx = [i for i, s in enumerate(systems) if s == system]
            out = generate_replies(model, tok, [histories[i] for i in idx], system_prompt=system,
                                   max_new_tokens=max_new_tokens or generation.max_new_tokens,
                                   batch_size=generation.batch_size, seed=seed, progress=progress,
                                   max_prompt_tokens=max_prompt_tokens,
                                   no_repeat_ngram_size=generation.no_repeat_ngram_size,
                                   repetition_penalty=generation.repetition_penalty,
                                   trim_to_sentence=generation.trim_to_sentence)
            replies += [(i, r[0]) for i, r in zip(idx, out)]
        table[name] = [r for _, r in sorted(replies)]
    return table
