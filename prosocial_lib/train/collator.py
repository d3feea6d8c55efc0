"""The collator that packs contrastive groups into padded tensors."""

from __future__ import annotations

from typing import Sequence

import torch

from ..groups.types import ContrastiveGroup

Row = tuple[list[int], list[int], int, list[tuple[int, int, int]]]  # ids, positions, context length, segments


# ---------------------------------------------------------------------- collate
class GroupCollator:
    """Groups -> one token batch plus the bookkeeping to score every reply.

    Args:
        tokenizer: the model's tokenizer (its chat template formats the context, its end-of-turn marker ends
            each reply).
        max_length: tokens per (context + reply); longer contexts lose their oldest turns (:meth:`fit`).
        positives_only: leave the negatives out (``lambda = 0``: nothing to contrast).
        shared_context: the packed layout (below).

    Raises:
        ValueError: ``max_length`` < 8.

    Two layouts, the same scores (tested):

    - ``shared_context=True`` (default): one row per group, ``[context, reply_0, ..., reply_K]``. A 4D attention
      mask lets each reply see the context and itself (causally) but not the other replies, and its
      ``position_ids`` restart where the context ends, so the model computes the shared context once (about 2-3x
      less work on short replies).
    - ``shared_context=False``: one row per (group, reply), ``context + reply``, a plain 2D padding mask: for
      models whose attention does not take custom 4D masks.

    Rows are left-padded to the batch's longest row. Output tensors: ``input_ids``, ``position_ids`` and
    ``context_mask`` (rows, T); ``attention_mask`` (rows, T) or (rows, 1, T, T) bool; ``ctx_row`` (B,), the row
    holding group b's context; one entry per scored reply token in ``tgt_row``, ``tgt_pos`` (its position),
    ``tgt_pred`` (the position whose logits predict it), ``tgt_id`` and ``tgt_seg`` (``b * (1 + K) + slot``,
    slot 0 = the positive); ``neg_weights`` and ``neg_mask`` (B, K, True = a real negative), K the most negatives
    in the batch.

    Shapes:
        Input: B :class:`~prosocial_lib.groups.types.ContrastiveGroup` objects. Output: as above, with
        rows = B (shared) or B * (1 + K) (separate) and T the longest row.

    Used by the stage runner (chapters 02, 03), the held-out scoring and the benchmark (chapter 05).
    """

    def __init__(self, tokenizer, max_length: int, positives_only: bool = False, shared_context: bool = True):
        from ..modeling.chat import chat_turn_end
        if max_length < 8:
            raise ValueError(f"max_length must be >= 8, got {max_length}")
        self.tokenizer = tokenizer
        self.max_length = int(max_length)
        self.positives_only = positives_only
        self.shared_context = shared_context
        self.turn_end = chat_turn_end(tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.truncated = 0  # contexts (or replies) cut to fit max_length
        self._prompt_cache: dict[str, list[int]] = {}

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        from ..modeling.chat import chat_prompt
        text = chat_prompt(self.tokenizer, messages, add_generation_prompt=True)
        ids = self._prompt_cache.get(text)
        if ids is None:
            ids = self._encode(text)
            if len(self._prompt_cache) < 10000:
                self._prompt_cache[text] = ids
        return ids

    def context_ids(self, messages: list[dict[str, str]], budget: int) -> list[int]:
        """The context in at most ``budget`` tokens: drop the oldest turns (keeping a system message) while it is
        too long, so the template stays whole; only a single turn that is still too long loses its oldest
        tokens."""
        ids = self.prompt_ids(messages)
        msgs = list(messages)
        while len(ids) > budget:
            turns = [i for i, m in enumerate(msgs) if m["role"] != "system"]
            if len(turns) <= 1:
                break
            del msgs[turns[0]]
            ids = self.prompt_ids(msgs)
        return ids[max(0, len(ids) - budget):]

    def fit(self, messages: list[dict[str, str]], completions: list[list[int]]
            ) -> tuple[list[int], list[list[int]]]:
        """Context ids and completions such that the context plus each completion fits ``max_length``. A
        completion longer than the window keeps its start and leaves at least half the window to the context."""
        prompt = self.prompt_ids(messages)
        longest = max(len(c) for c in completions)
        if len(prompt) + longest <= self.max_length:
            return prompt, completions
        self.truncated += 1
        keep_prompt = min(len(prompt), self.max_length // 2)
        completions = [c[: self.max_length - keep_prompt] for c in completions]
        longest = max(len(c) for c in completions)
        return self.context_ids(messages, self.max_length - longest), completions

    def __call__(self, groups: Sequence[ContrastiveGroup]) -> dict[str, torch.Tensor]:
        """Collate ``groups`` into one batch (the tensors listed in the class docstring).

        Raises:
            ValueError: no groups.
        """
        if not groups:
            raise ValueError("cannot collate an empty list of groups")
        k = 0 if self.positives_only else max(len(g.negatives) for g in groups)
        rows, ctx_row = self._rows(groups, 1 + k)
        neg_w = torch.ones(len(groups), k, dtype=torch.float32)
        neg_mask = torch.zeros(len(groups), k, dtype=torch.bool)
        for b, g in enumerate(groups):
            n = 0 if self.positives_only else len(g.negatives)
            if n:
                neg_w[b, :n] = torch.tensor([float(w) for w in g.neg_weights], dtype=torch.float32)
                neg_mask[b, :n] = True
        out, tgt = self._pack(rows)
        out.update({"ctx_row": torch.tensor(ctx_row, dtype=torch.long), "neg_weights": neg_w, "neg_mask": neg_mask})
        out.update({f"tgt_{name}": torch.tensor(v, dtype=torch.long) for name, v in tgt.items()})
        return out

    def _rows(self, groups: Sequence[ContrastiveGroup], width: int) -> tuple[list[Row], list[int]]:
        """Token rows ``(ids, positions, context length, [(start, end, segment)])`` and each group's context row;
        segment ``b * width + slot`` (slot 0 = the positive)."""
        rows: list[Row] = []
        ctx_row = []
        for b, g in enumerate(groups):
            replies = [g.positive] + ([] if self.positives_only else list(g.negatives))
            comps = [self._encode(r + self.turn_end) for r in replies]
            ctx_row.append(len(rows))
            if self.shared_context:
                p, comps = self.fit(g.context_messages, comps)
                ids, pos, segs = list(p), list(range(len(p))), []
                for slot, c in enumerate(comps):
                    segs.append((len(ids), len(ids) + len(c), b * width + slot))
                    ids += c
                    pos += list(range(len(p), len(p) + len(c)))
                rows.append((ids, pos, len(p), segs))
            else:
                for slot, c in enumerate(comps):
                    p, (c,) = self.fit(g.context_messages, [c])
                    rows.append((p + c, list(range(len(p) + len(c))), len(p), [(len(p), len(p) + len(c),
                                                                                     b * width + slot)]))
        return rows, ctx_row

    def _pack(self, rows: list[Row]) -> tuple[dict[str, torch.Tensor], dict[str, list[int]]]:
        """Left-pad the rows into ``input_ids``, ``attention_mask``, ``position_ids``, ``context_mask`` and list
        every scored reply token (row, position, predicting position, id, segment)."""
        t = max(len(r[0]) for r in rows)
        n_rows = len(rows)
        input_ids = torch.full((n_rows, t), self.pad_id, dtype=torch.long)
        position_ids = torch.zeros((n_rows, t), dtype=torch.long)
        context = torch.zeros((n_rows, t), dtype=torch.bool)
        if self.shared_context:
            attention = torch.zeros((n_rows, 1, t, t), dtype=torch.bool)
        else:
            attention = torch.zeros((n_rows, t), dtype=torch.long)
        tgt: dict[str, list[int]] = {"row": [], "pos": [], "pred": [], "id": [], "seg": []}
        for r, (ids, pos, c, segs) in enumerate(rows):
            o = t - len(ids)  # left padding
            input_ids[r, o:] = torch.tensor(ids, dtype=torch.long)
            position_ids[r, o:] = torch.tensor(pos, dtype=torch.long)
            context[r, o:o + c] = True
            if self.shared_context:
                _packed_mask(attention[r, 0], o, c, segs)
            else:
                attention[r, o:] = 1
            for s, e, seg in segs:
                for p in range(s, e):
                    tgt["row"].append(r)
                    tgt["pos"].append(o + p)
                    tgt["pred"].append(o + (p - 1 if p > s else c - 1))
                    tgt["id"].append(ids[p])
                    tgt["seg"].append(seg)
        out = {"input_ids": input_ids, "attention_mask": attention, "position_ids": position_ids,
               "context_mask": context}
        return out, tgt


def _packed_mask(a: torch.Tensor, o: int, c: int, segs: list[tuple[int, int, int]]) -> None:
    """Fill one packed row's (T, T) mask in place: the context is causal, each reply sees the context and itself
    (causally) but no other reply; padding (the first ``o`` positions) attends to itself only."""
    a[o:o + c, o:o + c] = torch.ones(c, c, dtype=torch.bool).tril()
    for s, e, _ in segs:
        a[o + s:o + e, o:o + c] = True
        a[o + s:o + e, o + s:o + e] = torch.ones(e - s, e - s, dtype=torch.bool).tril()
    idx = torch.arange(o)
    a[idx, idx] = True  # padding attends to itself: no fully masked row (NaN in sdpa)


class TrainingSetupError(ValueError):
    """A stage that cannot run as configured (missing checkpoint, no groups, an attention without 4D masks)."""
