"""Attention maths on extracted tensors: RoPE, grouped-query expansion, masks, pattern, z, entropies.

These are the pure functions the backends use to turn pre-RoPE q/k into runtime q/k, and that tests and
probes use to recompute a layer's attention from its q/k/v. Conventions follow :mod:`geoprobe.backends.sites`
(``q [B, T, H, d]``, ``k``/``v [B, T, H_kv, d]``, ``pattern [B, H, T_q, T_k]``).

Statistic path (no eager pattern needed): with ``q``/``k`` captured (cheap, any attention kernel), the final
query's attention row costs O(H T d) per sequence: :func:`final_row_attention`, and the entropy of every query
row costs O(H T^2 d) time but only O(H * chunk^2) extra memory: :func:`attention_entropy` (computed by
:mod:`geoprobe.attention_stats`, the one implementation of attention-row entropy). The
bridge backend always runs eager attention anyway (it materialises ``[B, H, T, T]`` scores per layer, about
2x time and memory of SDPA at 2k tokens, see BACKENDS.md); the nnsight/torch backends keep the model's own
(SDPA) kernel unless ``pattern`` is requested.
"""

from __future__ import annotations

import torch

from geoprobe.attention_stats import attention_stats
from geoprobe.infotheory import entropy_bits  # noqa: F401  (re-exported: one definition of entropy)
from geoprobe.tensor_ops import expand_kv


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """``[x1, x2] -> [-x2, x1]`` over the last axis (the GPT-NeoX/Llama "half" RoPE convention)."""
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE on ``x [B, T, H, d]`` with ``cos``/``sin`` ``[B or 1, T, rotary_dim]``.

    ``x_rot = x[..., :r] * cos + rotate_half(x[..., :r]) * sin``; the remaining ``d - r`` dims pass through
    (partial rotary, GPT-NeoX/Phi). ``cos``/``sin`` follow ``x``'s device and dtype (under a device map the
    rotary table lives on the first layer's device, the layer's q/k on its own).
    """
    r = cos.shape[-1]
    cos = cos.unsqueeze(2).to(x.device, x.dtype)
    sin = sin.unsqueeze(2).to(x.device, x.dtype)
    xr, xp = x[..., :r], x[..., r:]
    out = xr * cos + rotate_half(xr) * sin
    return torch.cat((out, xp), dim=-1) if xp.shape[-1] else out


def visibility_mask(attention_mask: torch.Tensor | None, t: int, *, sliding_window: int | None = None,
                    device: torch.device | None = None) -> torch.Tensor:
    """Boolean ``[B or 1, 1, T_q, T_k]``: key j visible to query i iff ``j <= i``, ``i - j < window`` (if
    any) and key j is a real token."""
    i = torch.arange(t, device=device).unsqueeze(1)
    j = torch.arange(t, device=device).unsqueeze(0)
    vis = j <= i
    if sliding_window is not None:
        vis = vis & (j > i - sliding_window)
    vis = vis[None, None]
    if attention_mask is not None:
        vis = vis & attention_mask.bool().to(vis.device)[:, None, None, :]
    return vis


def attention_scores(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """``scale * q k^T`` per head: ``q [B, T, H, d]``, ``k [B, T, H_kv, d]`` -> ``[B, H, T_q, T_k]``."""
    k = expand_kv(k, q.shape[2])
    return torch.einsum("bqhd,bkhd->bhqk", q, k) * scale


def attention_pattern(q: torch.Tensor, k: torch.Tensor, *, scale: float, attention_mask: torch.Tensor | None
                      = None, sliding_window: int | None = None) -> torch.Tensor:
    """Softmax over visible keys of :func:`attention_scores` -> ``[B, H, T, T]`` (masked entries exactly 0).

    Query rows with no visible key (left-padding positions) come out as all zeros.
    """
    scores = attention_scores(q.float(), k.float(), scale)
    vis = visibility_mask(attention_mask, q.shape[1], sliding_window=sliding_window, device=q.device)
    scores = scores.masked_fill(~vis, float("-inf"))
    p = torch.softmax(scores, dim=-1)
    return torch.nan_to_num(p, nan=0.0)


def attention_z(pattern: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``z[b, t, h] = sum_j pattern[b, h, t, j] v[b, j, kv(h)]`` -> ``[B, T, H, d]``."""
    v = expand_kv(v.float(), pattern.shape[1])
    return torch.einsum("bhqk,bkhd->bqhd", pattern, v)


def attention_out(z: torch.Tensor, W_O: torch.Tensor, b_O: torch.Tensor | None = None) -> torch.Tensor:
    """``sum_h z_h @ W_O[h] + b_O``: ``z [B, T, H, d]``, ``W_O [H, d, d_model]`` -> ``[B, T, d_model]``."""
    out = torch.einsum("bthd,hdm->btm", z.float(), W_O.float())
    return out + b_O.float() if b_O is not None else out


def final_row_attention(q: torch.Tensor, k: torch.Tensor, final_index: torch.Tensor, *, scale: float,
                        attention_mask: torch.Tensor | None = None, sliding_window: int | None = None
                        ) -> torch.Tensor:
    """The final query's attention row from post-RoPE ``q``/``k`` without the T x T pattern: ``[B, H, T]``."""
    b = torch.arange(q.shape[0], device=q.device)
    qf = q[b, final_index.to(q.device)].float()  # [B, H, d]
    k = expand_kv(k.float(), q.shape[2])
    scores = torch.einsum("bhd,bkhd->bhk", qf, k) * scale
    j = torch.arange(q.shape[1], device=q.device)[None, :]
    fi = final_index.to(q.device)[:, None]
    vis = j <= fi
    if sliding_window is not None:
        vis = vis & (j > fi - sliding_window)
    if attention_mask is not None:
        vis = vis & attention_mask.bool().to(q.device)
    scores = scores.masked_fill(~vis[:, None, :], float("-inf"))
    return torch.softmax(scores, dim=-1)


def attention_entropy(q: torch.Tensor, k: torch.Tensor, *, scale: float, attention_mask: torch.Tensor | None
                      = None, sliding_window: int | None = None, chunk: int = 256) -> torch.Tensor:
    """Entropy (bits) of every query row, ``[B, H, T]``, ``chunk`` query rows at a time (peak extra memory
    ``B * H * chunk * T`` floats instead of ``B * H * T * T``); rows of padding queries give 0.

    The computation is :func:`geoprobe.attention_stats.attention_stats` (``method="stream"``, key blocks of
    ``chunk``): the one implementation of attention-row entropy.
    """
    return attention_stats(q, k, scale=scale, attention_mask=attention_mask, sliding_window=sliding_window,
                           queries="all", block_size=chunk, method="stream").entropy_bits
