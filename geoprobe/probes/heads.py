"""Head bookkeeping shared by the probes: grouped-query attention (GQA) and head concatenation.

Convention (Hugging Face ``repeat_kv``): with ``n_heads`` query heads and ``n_kv`` key/value heads,
group = n_heads / n_kv, and query head h reads key/value head ``h // group``. Expanding KV heads therefore
repeat-interleaves them along the head axis.
"""

from __future__ import annotations

import torch

from geoprobe.errors import ConfigError


def kv_group_size(n_heads: int, n_kv_heads: int) -> int:
    """group = n_heads / n_kv_heads (1 for multi-head attention); raises if it does not divide."""
    if n_kv_heads <= 0 or n_heads % n_kv_heads:
        raise ConfigError(f"n_heads={n_heads} is not a multiple of n_kv_heads={n_kv_heads}")
    return n_heads // n_kv_heads


def expand_kv(x: torch.Tensor, n_heads: int, head_dim: int = -2) -> torch.Tensor:
    """Repeat-interleave KV heads to query heads along ``head_dim``: out[..., h, :] = x[..., h // group, :].

    Returns ``x`` unchanged when it already has ``n_heads`` heads (multi-head attention). Callers record
    ``kv_expanded = x.shape[head_dim] != n_heads``.
    """
    n_kv = x.shape[head_dim]
    if n_kv == n_heads:
        return x
    return x.repeat_interleave(kv_group_size(n_heads, n_kv), dim=head_dim)


def concat_heads(x: torch.Tensor, n_heads: int | None = None) -> tuple[torch.Tensor, bool]:
    """Concatenate heads: [..., heads, d_head] -> [..., heads * d_head] (head-major), optionally expanding
    KV heads to ``n_heads`` query heads first. Returns (concatenated, kv_expanded)."""
    expanded = False
    if n_heads is not None and x.shape[-2] != n_heads:
        x = expand_kv(x, n_heads, head_dim=-2)
        expanded = True
    return x.reshape(*x.shape[:-2], x.shape[-2] * x.shape[-1]), expanded
