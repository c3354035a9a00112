"""Length-bucketed batches: which rows go into each forward pass, and which padding columns can be dropped.

One helper for every length-grouped pass: the probe engine's shared pass and :func:`map_final_logits` (the
final-token readouts: reference entropies, selection scores, in-context label readouts).

Given an ``attention_mask [N, T]`` (1 = real token, left or right padding) and a batch size ``B``,
:func:`length_batches` returns the batches as :class:`Batch` (input row indices + the column range that holds
every real token of those rows). With ``bucket=True`` rows are ordered by their number of real tokens (stable:
ties keep input order) before they are cut into batches of ``B``, so each batch is padded only to its own
longest row; the caller restores input order with the row indices. With ``bucket=False`` the batches are the
input's consecutive slices with every column kept (the plain path).

Dropping columns that are padding in every row of a batch changes nothing a causal model computes for the real
tokens when positions come from the mask (left padding) or padding sits after every real token (right padding):
padding keys are masked either way. The only differences are float rounding of kernels that see a different
sequence length.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Batch:
    """One forward pass: ``rows`` (input row indices, long) and ``cols`` (the columns kept, a slice)."""

    rows: torch.Tensor
    cols: slice

    def take(self, x: torch.Tensor) -> torch.Tensor:
        """``x [N, T, ...]`` restricted to this batch's rows and columns."""
        return x[self.rows][:, self.cols]


def lengths(attention_mask: torch.Tensor) -> torch.Tensor:
    """Real tokens per row: ``[N]`` (long)."""
    return attention_mask.bool().sum(1)


def length_batches(attention_mask: torch.Tensor, batch_size: int | None, *, bucket: bool = True) -> list[Batch]:
    """The batches of one pass over ``attention_mask``'s rows (module docstring).

    Args:
        attention_mask: ``[N, T]``, 1 = real token.
        batch_size: rows per batch (None: all rows in one batch).
        bucket: sort rows by length and trim each batch's all-padding columns.
    """
    n, t = attention_mask.shape
    bs = n if batch_size is None else max(1, int(batch_size))
    if not bucket:
        return [Batch(torch.arange(s, min(n, s + bs)), slice(0, t)) for s in range(0, n, bs)]
    lens = lengths(attention_mask).tolist()
    order = sorted(range(n), key=lambda i: (lens[i], i))
    real = attention_mask.bool()
    out = []
    for s in range(0, n, bs):
        rows = torch.tensor(order[s:s + bs], dtype=torch.long)
        cols = real[rows].any(0).nonzero().flatten()
        c0, c1 = (int(cols.min()), int(cols.max()) + 1) if cols.numel() else (0, t)
        out.append(Batch(rows, slice(c0, c1)))
    return out


def restore_order(parts: list[tuple[torch.Tensor | None, torch.Tensor]], n: int) -> torch.Tensor:
    """Concatenate ``(rows, values)`` parts (values with the rows first) back into input order ``[n, ...]``;
    parts without rows (None: values that are not one per row) are concatenated as they come."""
    vals = torch.cat([v for _, v in parts])
    if any(r is None for r, _ in parts):
        return vals
    rows = torch.cat([r for r, _ in parts])
    if rows.numel() != n or bool((rows.sort().values != torch.arange(n)).any()):
        raise RuntimeError(f"batches covered rows {rows.tolist()[:10]}..., not each of the {n} rows once")
    out = torch.empty_like(vals)
    out[rows] = vals
    return out


def pad_positions(x: torch.Tensor, cols: slice, t: int, fill: float = 0.0) -> torch.Tensor:
    """``x [b, cols.stop - cols.start, ...]`` placed back at columns ``cols`` of a ``[b, t, ...]`` tensor, the
    other columns set to ``fill``."""
    if cols.start == 0 and cols.stop == t:
        return x
    out = x.new_full((x.shape[0], t, *x.shape[2:]), fill)
    out[:, cols] = x
    return out


def map_final_logits(handle: Any, ids: Sequence[Sequence[int]], fn: Callable[[torch.Tensor], torch.Tensor], *,
                     batch_size: int | None = 8, on_batch: Callable[[int], None] | None = None) -> torch.Tensor:
    """``fn`` of each prompt's final-position logits, in input order, never holding ``[N, T, vocab]``.

    The token-id lists ``ids`` are left-padded into length buckets (:func:`length_batches`), each batch runs
    with ``positions="final"`` (a backend that can unembeds only the final rows: ``[B, vocab]``), ``fn``
    maps the float32 ``[B, vocab]`` logits to ``[B, ...]`` and the results are put back in input order. Only
    one batch's logits exist at a time. ``on_batch(n_rows)`` is called after each batch (progress bars).
    """
    from geoprobe.backends.sites import pad_sequences

    tokens, mask = pad_sequences([list(s) for s in ids], handle.pad_token_id, side="left")
    parts: list[tuple[torch.Tensor | None, torch.Tensor]] = []
    for b in length_batches(mask, batch_size, bucket=True):
        got: list[torch.Tensor] = []

        def reducer(act: Any, _got: list[torch.Tensor] = got) -> None:
            if act.site == "logits":
                _got.append(fn(act.value).detach().cpu())

        handle.run(b.take(tokens), b.take(mask), sites=["logits"], positions="final", reducer=reducer)
        parts.append((b.rows, torch.cat(got)))
        if on_batch is not None:
            on_batch(int(b.rows.numel()))
    return restore_order(parts, len(ids))
