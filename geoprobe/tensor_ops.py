"""Tensor operations shared by backends and probes (the lowest layer above :mod:`geoprobe.stats`).

- grouped-query bookkeeping (Hugging Face ``repeat_kv`` convention): with ``n_heads`` query heads and ``n_kv``
  key/value heads, group = n_heads / n_kv and query head h reads key/value head ``h // group``;
- attention-row entropies from queries and keys (:func:`entropy_from_qk`, a thin wrapper of
  :func:`geoprobe.attention_stats.attention_stats`, the one implementation);
- the value-space operators used by interventions: cut ``v - lam (v.u) u``, keep-only ``(v.u) u`` and shift
  ``v + k sigma u`` (:func:`make_operator`);
- streaming per-head means of ``z`` for mean ablation (:class:`HeadMeans`), zero/mean head replacement.

Backends import from here, never from :mod:`geoprobe.probes`; the probe modules re-export these names.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from geoprobe.attention_stats import attention_stats
from geoprobe.errors import ConfigError, UnknownNameError
from geoprobe.stats import RunningMoments

OPERATORS = ("cut", "keep_only", "shift")
SPACES = ("raw", "standardised")

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


def _positions(query_positions: Sequence[int] | torch.Tensor | None, B: int, T: int, device) -> torch.Tensor:
    if query_positions is None:
        return torch.arange(T, device=device).expand(B, T)
    pos = torch.as_tensor(query_positions, dtype=torch.long, device=device)
    if pos.ndim == 0:
        pos = pos.reshape(1)
    if pos.ndim == 1:
        pos = pos.expand(B, pos.shape[0])
    return torch.where(pos < 0, pos + T, pos)


def entropy_from_qk(
    q: torch.Tensor,
    k: torch.Tensor,
    query_positions: Sequence[int] | torch.Tensor | None = None,
    *,
    scale: float | None = None,
    key_padding_mask: torch.Tensor | None = None,
    window: int | None = None,
    chunk_size: int = 64,
) -> torch.Tensor:
    """Row entropies in bits of causal attention from queries and keys, without the full pattern.

    The computation is :func:`geoprobe.attention_stats.attention_stats` (``method="stream"``: key blocks of
    ``chunk_size`` with a running log-sum-exp), the one implementation of attention-row entropy; this wrapper
    keeps the older argument names.

    Args:
        q: [B, T, n_heads, d_head] (after rotary); k: [B, T, n_kv_heads, d_head] (never expanded in memory).
        query_positions: None (all), an int, [P] or [B, P]; negative counts from the end.
        scale: score scale, default 1/sqrt(d_head).
        key_padding_mask: [B, T], True/1 = real token (padded keys get probability 0).
        window: sliding-window size (keys t - window < j <= t), None = full causal.
        chunk_size: block size of the streaming pass (query rows per chunk and keys per block).

    Returns:
        [B, n_heads, P] float32 entropies (bits) of softmax_j(s_tj) over allowed keys (0 for a query that sees
        no key).
    """
    B, T, _, d = q.shape
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    queries = "all" if query_positions is None else _positions(query_positions, B, T, q.device)
    return attention_stats(q, k, scale=scale, attention_mask=key_padding_mask, sliding_window=window,
                           queries=queries, block_size=chunk_size, method="stream").entropy_bits


def unit(u: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """u / ||u|| (flattened)."""
    u = u.reshape(-1)
    n = u.norm()
    if n <= eps:
        raise ConfigError("axis has zero norm")
    return u / n


def _apply(
    v: torch.Tensor,
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    u: torch.Tensor,
    feature_dims: int,
    space: str,
    mean: torch.Tensor | None,
    scale: torch.Tensor | None,
) -> torch.Tensor:
    if space not in SPACES:
        raise UnknownNameError(f"unknown intervention space {space!r}; valid choices: {', '.join(SPACES)}")
    shape = v.shape
    D = 1
    for s in shape[len(shape) - feature_dims :]:
        D *= s
    if D != u.numel():
        raise ConfigError(f"value feature size {D} does not match axis size {u.numel()}")
    x = v.reshape(*shape[: len(shape) - feature_dims], D)
    work = torch.promote_types(v.dtype, torch.float32)
    uh = unit(u.to(device=v.device, dtype=work))
    x = x.to(work)
    if space == "standardised":
        if mean is None or scale is None:
            raise ConfigError("space='standardised' needs the mean and scale used to find the axis")
        m = mean.reshape(-1).to(device=v.device, dtype=work)
        s = scale.reshape(-1).to(device=v.device, dtype=work)
        out = m + s * fn((x - m) / s, uh)
    else:
        out = fn(x, uh)
    return out.to(v.dtype).reshape(shape)


def cut(
    v: torch.Tensor, u: torch.Tensor, lam: float = 1.0, *, feature_dims: int = 1, space: str = "raw",
    mean: torch.Tensor | None = None, scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """v' = v - lam (v . u) u (lam = 1: projection onto the orthogonal complement of u)."""
    return _apply(v, lambda x, uh: x - lam * (x @ uh).unsqueeze(-1) * uh, u, feature_dims, space, mean, scale)


def keep_only(
    v: torch.Tensor, u: torch.Tensor, *, feature_dims: int = 1, space: str = "raw",
    mean: torch.Tensor | None = None, scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """v' = (v . u) u (rank-1 projection onto u)."""
    return _apply(v, lambda x, uh: (x @ uh).unsqueeze(-1) * uh, u, feature_dims, space, mean, scale)


def shift(
    v: torch.Tensor, u: torch.Tensor, k: float = 1.0, sigma: float = 1.0, *, feature_dims: int = 1,
    space: str = "raw", mean: torch.Tensor | None = None, scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """v' = v + k sigma u (use k = -1 for the negative shift; sigma from :func:`projection_sigma`)."""
    return _apply(v, lambda x, uh: x + (k * sigma) * uh, u, feature_dims, space, mean, scale)


def make_operator(
    name: str, u: torch.Tensor, *, lam: float = 1.0, k: float = 1.0, sigma: float = 1.0, feature_dims: int = 1,
    space: str = "raw", mean: torch.Tensor | None = None, scale: torch.Tensor | None = None,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """A closure v -> v' for the operator ``name`` ("cut", "keep_only", "shift"), ready for a hook."""
    kw = {"feature_dims": feature_dims, "space": space, "mean": mean, "scale": scale}
    if name == "cut":
        return lambda v: cut(v, u, lam, **kw)
    if name == "keep_only":
        return lambda v: keep_only(v, u, **kw)
    if name == "shift":
        return lambda v: shift(v, u, k, sigma, **kw)
    raise UnknownNameError(f"unknown entropy-axis operator {name!r}; valid choices: {', '.join(OPERATORS)}")


class HeadMeans:
    """Streaming per-layer, per-head mean of head outputs z [..., heads, d_head] (float64, constant memory).

    ``update(layer, z, mask)`` adds every position selected by ``mask`` (bool over z's leading dims);
    ``means(layer)`` -> [heads, d_head].
    """

    def __init__(self) -> None:
        self._acc: dict[int, RunningMoments] = {}

    def update(self, layer: int, z: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        acc = self._acc.get(layer)
        if acc is None:
            acc = self._acc[layer] = RunningMoments(tuple(z.shape[-2:]), track_cov=False)
        acc.update(z, mask)

    def means(self, layer: int) -> torch.Tensor:
        if layer not in self._acc or self._acc[layer].count == 0:
            raise ConfigError(f"no activations accumulated for layer {layer}")
        return self._acc[layer].mean

    def count(self, layer: int) -> int:
        return self._acc[layer].count if layer in self._acc else 0

    @property
    def layers(self) -> list[int]:
        return sorted(self._acc)

    def merge(self, other: HeadMeans) -> HeadMeans:
        for layer, acc in other._acc.items():
            if layer in self._acc:
                self._acc[layer].merge(acc)
            else:
                self._acc[layer] = RunningMoments.from_state_dict(acc.state_dict())
        return self


def zero_head(z: torch.Tensor, heads: int | Sequence[int]) -> torch.Tensor:
    """Copy of z [..., heads, d_head] with the given head(s) set to 0."""
    out = z.clone()
    out[..., list([heads] if isinstance(heads, int) else heads), :] = 0
    return out


def mean_ablate_head(z: torch.Tensor, heads: int | Sequence[int], means: torch.Tensor) -> torch.Tensor:
    """Copy of z [..., heads, d_head] with the given head(s) replaced by ``means`` [heads, d_head]."""
    idx = list([heads] if isinstance(heads, int) else heads)
    out = z.clone()
    out[..., idx, :] = means[idx].to(device=z.device, dtype=z.dtype)
    return out
