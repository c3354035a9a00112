"""Paper II routing law for a single attention head.

Scores s_ij, weights a_ij = softmax_j s_ij, values v_j, output o_i = sum_j a_ij v_j, upstream gradient
u_i = dL/do_i. Then, with b_ij = u_i . v_j and E_{a_i}[b] = sum_k a_ik b_ik:
    routing law:   dL/ds_ij = a_ij (b_ij - E_{a_i}[b])
    value grad:    dL/dv_j  = sum_i a_ij u_i            (i.e. A^T U)
    value update:  Delta v_j = -eta sum_i a_ij u_i
First-order loss change of that value update (o_i changes by sum_j a_ij Delta v_j):
    Delta L ~= sum_j (dL/dv_j) . Delta v_j = -eta sum_j ||sum_i a_ij u_i||^2 <= 0,
which for a dominant query i (one i contributing to column j) is -eta a_ij^2 ||u_i||^2.

Masked (e.g. causal) scores may be -inf: those a_ij are 0 and contribute nothing. Leading batch dims are
allowed: scores [..., n_q, n_k], values [..., n_k, d_v], upstream [..., n_q, d_v].

EM reading: a = soft responsibilities (E-step), values = responsibility-weighted prototypes (M-step); "EM-like"
training uses a larger learning rate on value parameters (:func:`em_param_groups`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from geoprobe.errors import ConfigError


def routing_gradient(scores: torch.Tensor, values: torch.Tensor, upstream: torch.Tensor) -> torch.Tensor:
    """dL/ds_ij = a_ij (b_ij - sum_k a_ik b_ik), b = U V^T. Returns [..., n_q, n_k]."""
    a = torch.softmax(scores, dim=-1)
    b = upstream @ values.transpose(-1, -2)
    b = torch.where(a > 0, b, torch.zeros_like(b))
    return a * (b - (a * b).sum(-1, keepdim=True))


def value_gradient(scores: torch.Tensor, upstream: torch.Tensor) -> torch.Tensor:
    """dL/dv_j = sum_i a_ij u_i = (A^T U)_j. Returns [..., n_k, d_v]."""
    return torch.softmax(scores, dim=-1).transpose(-1, -2) @ upstream


def value_update(scores: torch.Tensor, upstream: torch.Tensor, lr: float) -> torch.Tensor:
    """Delta v_j = -lr sum_i a_ij u_i (one gradient step on the values)."""
    return -lr * value_gradient(scores, upstream)


def first_order_loss_change(scores: torch.Tensor, upstream: torch.Tensor, lr: float) -> torch.Tensor:
    """Delta L ~= -lr sum_j ||sum_i a_ij u_i||^2 (<= 0) for the value update; summed over the last two dims."""
    g = value_gradient(scores, upstream)
    return -lr * (g * g).sum((-1, -2))


def autograd_reference(
    scores: torch.Tensor, values: torch.Tensor, upstream: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(dL/ds, dL/dv) by autograd for L = sum_i u_i . o_i (so that dL/do_i = u_i), float64."""
    s = scores.detach().to(torch.float64).requires_grad_(True)
    v = values.detach().to(torch.float64).requires_grad_(True)
    o = torch.softmax(s, dim=-1) @ v
    (o * upstream.detach().to(torch.float64)).sum().backward()
    return s.grad, v.grad


def routing_law_residual(scores: torch.Tensor, values: torch.Tensor, upstream: torch.Tensor) -> dict[str, float]:
    """Max |analytic - autograd| for the routing law and the value gradient (float64); both ~1e-15."""
    s, v, u = (t.detach().to(torch.float64) for t in (scores, values, upstream))
    gs, gv = autograd_reference(s, v, u)
    return {
        "scores": float((routing_gradient(s, v, u) - gs).abs().max()),
        "values": float((value_gradient(s, u) - gv).abs().max()),
    }


def em_param_groups(
    model: torch.nn.Module,
    value_param_predicate: Callable[[str, torch.nn.Parameter], bool],
    lr: float,
    value_lr_multiplier: float = 10.0,
) -> list[dict]:
    """Optimiser parameter groups for "EM-like" training: value parameters at lr * value_lr_multiplier,
    all other trainable parameters at lr.

    ``value_param_predicate(name, param)`` marks value parameters (e.g. ``lambda n, p: "W_V" in n``).
    Returns ``[{"params": [...], "lr": lr, "name": "other"}, {"params": [...], "lr": lr * m, "name": "value"}]``
    (the "other" group is omitted when empty); pass it to any ``torch.optim`` optimiser.
    """
    value, other = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (value if value_param_predicate(name, p) else other).append(p)
    if not value:
        raise ConfigError("em_param_groups: the predicate matched no trainable value parameters")
    groups = []
    if other:
        groups.append({"params": other, "lr": lr, "name": "other"})
    groups.append({"params": value, "lr": lr * value_lr_multiplier, "name": "value"})
    return groups
