"""Final-position readouts of a loaded model over text prompts, without ever holding ``[N, T, vocab]``.

:func:`map_final_logits` tokenises the prompts with the handle's tokenizer, runs them ``batch_size`` at a time
(grouped by token length to limit padding, left-padded with an attention mask), hands each batch's final-position
logits ``[B, vocab]`` (float32) to ``fn`` and concatenates ``fn``'s outputs in input order. Only one batch's
activations exist at a time. Batched results equal per-prompt results (the final real position is located per
row from the mask).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from geoprobe.errors import ConfigError


def tokenize_prompts(handle: Any, texts: Sequence[str], *, max_tokens: int | None = None) -> list[list[int]]:
    """Token ids of each text (the tokenizer's own special tokens); one clear error for unusable prompts.

    Raises:
        ConfigError: no texts, an empty text, no tokenizer, or a text longer than ``max_tokens`` (default: the
            model's context length), naming the first offender.
    """
    texts = list(texts)
    if not texts:
        raise ConfigError("no prompts to run: the prompt list is empty")
    empty = [i for i, t in enumerate(texts) if not str(t).strip()]
    if empty:
        raise ConfigError(f"prompt(s) {empty[:5]} are empty")
    if getattr(handle, "tokenizer", None) is None:
        raise ConfigError("this model has no tokenizer, so text prompts cannot be run; load one that has")
    ids = [list(handle.tokenizer(t, add_special_tokens=True)["input_ids"]) for t in texts]
    limit = max_tokens if max_tokens is not None else getattr(handle.info, "max_positions", None)
    if limit:
        too_long = [i for i, s in enumerate(ids) if len(s) > int(limit)]
        if too_long:
            i = too_long[0]
            raise ConfigError(f"prompt {i} is {len(ids[i])} tokens long, more than the model's context of "
                              f"{int(limit)} tokens ({len(too_long)} prompt(s) too long)")
    nothing = [i for i, s in enumerate(ids) if not s]
    if nothing:
        raise ConfigError(f"prompt(s) {nothing[:5]} tokenise to nothing")
    return ids


def map_final_logits(handle: Any, texts: Sequence[str], fn: Callable[[torch.Tensor], torch.Tensor], *,
                     batch_size: int = 8, max_tokens: int | None = None) -> torch.Tensor:
    """``cat_b fn(final logits of batch b)`` in input order (see the module docstring).

    Args:
        handle: a :class:`geoprobe.backends.ModelHandle` with a tokenizer.
        texts: prompts.
        fn: ``[B, vocab] float32 -> [B, ...]``.
        batch_size: rows per forward pass.
        max_tokens: context limit (default: the model's).
    """
    from geoprobe.backends.batches import map_final_logits as map_ids

    return map_ids(handle, tokenize_prompts(handle, texts, max_tokens=max_tokens), fn, batch_size=batch_size)
