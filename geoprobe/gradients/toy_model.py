"""Paper II's toy model: one causal attention head over continuous inputs with a linear readout.

For inputs x_1..x_T in R^{d_x} (one chain), per replica::

    q_t = x_t W_Q,  k_t = x_t W_K  (d_k),   v_t = x_t W_V  (d_v),
    s_tj = q_t . k_j / sqrt(d_k)  for t - C < j <= t  (causal; C = ``context``, None: every j <= t),
    a_tj = softmax_j s_tj,   o_t = sum_j a_tj v_j,   logits_t = o_t W_O  (n_out classes).

No biases, so a replica has d_x d_k + d_x d_k + d_x d_v + d_v n_out parameters: 200 + 200 + 300 + 120 = 820 for
Paper II's sizes (d_x = 20, d_k = 10, d_v = 15, 8 classes). The value parameters are ``W_V``
(:func:`is_value_param`); query, key and output parameters are ``W_Q``, ``W_K``, ``W_O``.

:class:`SingleHeadAttention` holds ``R`` independent replicas stacked along a leading axis (each initialised
from its own seed, like ``torch.nn.Linear``: U(-1/sqrt(fan_in), 1/sqrt(fan_in))), so several seeds train in one
vectorised pass: the summed loss sum_r L_r gives every replica exactly its own gradient.

``context = C`` restricts each query to its last C inputs (a banded causal mask computed on ``[R, T, C]``
blocks, cost O(T C) instead of O(T^2)); it is the same head with a shorter memory, and equals the full causal
head on chains of length <= C.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from geoprobe.errors import ConfigError

PARAM_NAMES = ("W_Q", "W_K", "W_V", "W_O")
VALUE_PARAMS = ("W_V",)


def is_value_param(name: str, param: torch.nn.Parameter) -> bool:
    """The value-parameter predicate for :func:`geoprobe.gradients.routing.em_param_groups`."""
    return name in VALUE_PARAMS


@dataclass(frozen=True)
class HeadSizes:
    """Widths of the toy head (Paper II: d_x = 20, d_k = 10, d_v = 15, n_out = 8)."""

    d_x: int = 20
    d_k: int = 10
    d_v: int = 15
    n_out: int = 8

    @property
    def n_params(self) -> int:
        """Parameters of one replica: 2 d_x d_k + d_x d_v + d_v n_out."""
        return 2 * self.d_x * self.d_k + self.d_x * self.d_v + self.d_v * self.n_out

    def shapes(self) -> dict[str, tuple[int, int]]:
        return {"W_Q": (self.d_x, self.d_k), "W_K": (self.d_x, self.d_k), "W_V": (self.d_x, self.d_v),
                "W_O": (self.d_v, self.n_out)}


@dataclass
class HeadParts:
    """Intermediate tensors of a forward pass (dense or windowed layout, see :meth:`SingleHeadAttention.parts`).

    ``scores``/``weights``: ``[R, T, T]`` (dense, -inf / 0 outside the causal band) or ``[R, nb, C, 2C]``
    (blocked: query block b of C positions against key blocks b - 1 and b);
    ``values``: ``[R, T, d_v]``; ``out``: ``[R, T, d_v]``; ``logits``: ``[R, T, n_out]``.
    """

    scores: torch.Tensor
    weights: torch.Tensor
    values: torch.Tensor
    out: torch.Tensor
    logits: torch.Tensor


def band_mask(T: int, context: int | None, device: torch.device | str = "cpu") -> torch.Tensor:
    """``[T, T]`` bool: True where query t may read key j (t - C < j <= t)."""
    t = torch.arange(T, device=device)
    diff = t[:, None] - t[None, :]
    ok = diff >= 0
    return ok if context is None else ok & (diff < context)


def _block_band(nb: int, C: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """``[nb, C, 2C]`` bool band of the blocked layout: query t = bC + i reads key j = (b-1)C + m when
    0 <= t - j < C and j >= 0."""
    i = torch.arange(C, device=device)[:, None]
    m = torch.arange(2 * C, device=device)[None, :]
    diff = C + i - m
    ok = (diff >= 0) & (diff < C)
    first = ok & (m >= C)
    return torch.stack([first] + [ok] * (nb - 1))


class SingleHeadAttention(torch.nn.Module):
    """``len(seeds)`` replicas of the toy head (see the module docstring).

    Args:
        seeds: one initialisation seed per replica.
        sizes: the head's widths.
        context: keys each query may read (None: the whole causal prefix).
        dtype: parameter dtype.
    """

    def __init__(self, seeds: list[int] | tuple[int, ...], sizes: HeadSizes = HeadSizes(),
                 context: int | None = None, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        if not seeds:
            raise ConfigError("the toy head needs at least one seed")
        if context is not None and context < 1:
            raise ConfigError(f"context must be >= 1 input (or None for the whole prefix), got {context}")
        self.sizes, self.context, self.seeds = sizes, context, [int(s) for s in seeds]
        inits: dict[str, list[torch.Tensor]] = {k: [] for k in PARAM_NAMES}
        for seed in self.seeds:
            g = torch.Generator().manual_seed(seed)
            for name in PARAM_NAMES:
                fan_in, fan_out = sizes.shapes()[name]
                bound = 1.0 / math.sqrt(fan_in)
                inits[name].append((torch.rand(fan_in, fan_out, generator=g, dtype=torch.float64) * 2 - 1) * bound)
        for name in PARAM_NAMES:
            self.register_parameter(name, torch.nn.Parameter(torch.stack(inits[name]).to(dtype)))

    @property
    def n_replicas(self) -> int:
        return len(self.seeds)

    def replica_state(self, r: int) -> dict[str, torch.Tensor]:
        """The parameters of replica ``r`` (detached copies)."""
        return {name: getattr(self, name)[r].detach().clone() for name in PARAM_NAMES}

    def parts(self, x: torch.Tensor, dense: bool = False) -> HeadParts:
        """Forward pass keeping every intermediate. ``x``: ``[R, T, d_x]`` (or ``[T, d_x]``, shared by all
        replicas). ``dense`` forces the ``[R, T, T]`` layout also when ``context`` is set."""
        x = x.to(self.W_Q.dtype)
        if x.dim() == 2:
            x = x.expand(self.n_replicas, *x.shape)
        q, k, v = x @ self.W_Q, x @ self.W_K, x @ self.W_V
        T, scale = x.shape[1], 1.0 / math.sqrt(self.sizes.d_k)
        if self.context is None or self.context >= T or dense:
            s = (q @ k.transpose(-1, -2)) * scale
            s = s.masked_fill(~band_mask(T, self.context, x.device), float("-inf"))
            a = torch.softmax(s, dim=-1)
            o = a @ v
        else:  # blocks of C queries read their own block and the previous one: [R, nb, C, 2C] scores
            C = self.context
            nb = -(-T // C)
            pad = (0, 0, 0, nb * C - T)
            qb, kb, vb = (torch.nn.functional.pad(z, pad).view(z.shape[0], nb, C, z.shape[-1]) for z in (q, k, v))
            k2 = torch.cat([torch.nn.functional.pad(kb, (0, 0, 0, 0, 1, 0))[:, :-1], kb], dim=2)
            v2 = torch.cat([torch.nn.functional.pad(vb, (0, 0, 0, 0, 1, 0))[:, :-1], vb], dim=2)
            s = (qb @ k2.transpose(-1, -2)) * scale
            s = s.masked_fill(~_block_band(nb, C, x.device), float("-inf"))
            a = torch.softmax(s, dim=-1)
            o = (a @ v2).reshape(x.shape[0], nb * C, -1)[:, :T]
        return HeadParts(scores=s, weights=a, values=v, out=o, logits=o @ self.W_O)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[R, T, n_out]``."""
        return self.parts(x).logits


def n_params_per_replica(model: SingleHeadAttention) -> int:
    """Trainable parameters of one replica, counted from the tensors (equals ``model.sizes.n_params``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad) // model.n_replicas
