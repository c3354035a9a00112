"""``--max-tokens N``: the scan's explicit, recorded cut of over-long prompts (never applied silently).

A candidate whose text tokenises (with the tokenizer's special tokens) to more than N tokens is replaced by the
shortest suffix of its text that starts at a token boundary and tokenises to at most N tokens: the last N
tokens' character span (from the tokenizer's offsets), shortened one token at a time when re-tokenising the
suffix gives more than N. The cut text is what the model sees and what ``prompts.jsonl`` records, so every
number can be recomputed from it; the manifest lists the ids that were cut with their original token counts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from geoprobe.errors import ConfigError
from geoprobe.scan.pools.base import Candidate


def check_max_tokens(max_tokens: int | None, context: int | None) -> None:
    """``max_tokens`` is None or a positive integer no larger than the model's context."""
    if max_tokens is None:
        return
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise ConfigError(f"--max-tokens must be a positive integer, got {max_tokens!r}")
    if context is not None and max_tokens > int(context):
        raise ConfigError(f"--max-tokens {max_tokens} exceeds the model's context of {int(context)} tokens; use at "
                          f"most {int(context)}")


def _count(tok: Any, text: str) -> int:
    return len(tok(text, add_special_tokens=True)["input_ids"])


def cut_text(tok: Any, text: str, max_tokens: int) -> tuple[str, int]:
    """(the text cut to at most ``max_tokens`` tokens, its original token count); the text itself when short."""
    n = _count(tok, text)
    if n <= max_tokens:
        return text, n
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = [o for o in enc["offset_mapping"] if o[1] > o[0]]
    special = n - len(enc["input_ids"])  # BOS/EOS the tokenizer adds around the text
    keep = max(1, max_tokens - special)
    while keep >= 1:
        start = offsets[-keep][0]
        out = text[start:].lstrip()
        if out and _count(tok, out) <= max_tokens:
            return out, n
        keep -= 1
    raise ConfigError(f"cannot cut a prompt to {max_tokens} tokens with this tokenizer (it starts {text[:40]!r})")


def cut_candidates(tok: Any, cands: Sequence[Candidate], max_tokens: int) -> tuple[list[Candidate], dict[str, int]]:
    """Every candidate cut to ``max_tokens`` (module docstring) and ``{id: original token count}`` of the cut."""
    out, cut = [], {}
    for c in cands:
        text, n = cut_text(tok, c.text, max_tokens)
        if text != c.text:
            cut[c.id] = n
            c = dataclasses.replace(c, text=text)
        out.append(c)
    return out, cut
