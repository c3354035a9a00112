"""Selective scan of Mamba-1 on the CPU: a sequential recurrence with an analytic backward pass.

The scan of one Mamba mixer (per batch element b, channel d, state n, time t)::

    h_t[d, n] = exp(delta_t[d] A[d, n]) h_{t-1}[d, n] + delta_t[d] u_t[d] B_t[n],      h_0 = 0
    y_t[d]    = sum_n C_t[n] h_t[d, n]

transformers' CPU paths are the sequential reference loop (autograd keeps one graph node per time step) and
``mambapy``'s parallel scan (pads T to a power of two and runs log2(T) passes over the [B, T, D, N] state).
Both are bound by memory traffic on the state. :class:`SelectiveScan` keeps the state in place of one
[T, B, D, N] buffer, updated in place, and computes the gradients in closed form instead of through autograd.
With g_t = dL/dh_t, filled backwards in time from dL/dy::

    g_t = C_t (dL/dy_t) + exp(delta_{t+1} A) g_{t+1}               (g_{T+1} = 0)
    G_t = g_t h_{t-1} exp(delta_t A)                                 (= dL/d(delta_t A); G_1 = 0)
    dL/dC_t[n]   = sum_d h_t[d, n] dL/dy_t[d]
    dL/dB_t[n]   = sum_d g_t[d, n] delta_t[d] u_t[d]
    dL/du_t[d]   = delta_t[d] sum_n g_t[d, n] B_t[n]
    dL/ddelta_t[d] = u_t[d] sum_n g_t[d, n] B_t[n] + sum_n G_t[d, n] A[d, n]
    dL/dA[d, n]  = sum_{b, t} G_t[d, n] delta_t[d]

It is the same function as transformers' reference (``tests`` check values and gradients against it) and
about 2.7x faster per training step of the cpu-preset wind-tunnel Mamba (``benchmarks/architectures.py``).

:func:`fast_cpu_scan` switches it on for the Mamba forward passes inside a ``with`` block (geoprobe's
training and evaluation use it); everywhere else transformers' own choice of kernel is untouched. Tensors on
an accelerator always go to transformers' implementation (the fused ``mamba_ssm`` kernels when installed).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F

_ENABLED: contextvars.ContextVar[bool] = contextvars.ContextVar("geoprobe_fast_cpu_scan", default=False)
_INSTALLED_MARK = "_geoprobe_dispatcher"


class SelectiveScan(torch.autograd.Function):
    """``y = scan(u, delta, A, B, C)`` with shapes u, delta ``[Bt, D, T]``, A ``[D, N]``, B, C ``[Bt, N, T]``;
    returns y ``[Bt, D, T]``. The formulas are in the module docstring."""

    @staticmethod
    def forward(ctx: Any, u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                C: torch.Tensor) -> torch.Tensor:
        n_batch, d_inner, T = u.shape
        ut = u.permute(2, 0, 1).contiguous()                  # [T, Bt, D]
        dt = delta.permute(2, 0, 1).contiguous()
        Bm = B.permute(2, 0, 1).contiguous()                  # [T, Bt, N]
        Cm = C.permute(2, 0, 1).contiguous()
        decay = torch.exp(dt.unsqueeze(-1) * A)               # exp(delta_t A): [T, Bt, D, N]
        drive = (dt * ut).unsqueeze(-1)                       # delta_t u_t: [T, Bt, D, 1]
        B_row, C_col = Bm.unsqueeze(2), Cm.unsqueeze(-1)      # [T, Bt, 1, N], [T, Bt, N, 1]
        hs = torch.empty(T, n_batch, d_inner, A.shape[1], dtype=u.dtype, device=u.device)
        y = torch.empty(T, n_batch, d_inner, 1, dtype=u.dtype, device=u.device)
        torch.mul(drive[0], B_row[0], out=hs[0])
        torch.matmul(hs[0], C_col[0], out=y[0])
        for t in range(1, T):
            torch.mul(decay[t], hs[t - 1], out=hs[t])
            hs[t].addcmul_(drive[t], B_row[t])
            torch.matmul(hs[t], C_col[t], out=y[t])
        ctx.save_for_backward(ut, dt, drive, A, Bm, Cm, hs, decay)
        return y.squeeze(-1).permute(1, 2, 0)

    @staticmethod
    def backward(ctx: Any, grad_y: torch.Tensor):  # type: ignore[override]
        ut, dt, drive, A, Bm, Cm, hs, decay = ctx.saved_tensors
        T = hs.shape[0]
        gy = grad_y.permute(2, 0, 1).contiguous().unsqueeze(-1)  # [T, Bt, D, 1]
        C_row = Cm.unsqueeze(2)
        g = torch.empty_like(hs)                                  # g_t = dL/dh_t
        torch.mul(gy[T - 1], C_row[T - 1], out=g[T - 1])
        for t in range(T - 2, -1, -1):
            torch.mul(decay[t + 1], g[t + 1], out=g[t])
            g[t].addcmul_(gy[t], C_row[t])
        G = torch.zeros_like(hs)                                  # dL/d(delta_t A)
        torch.mul(g[1:], hs[:-1], out=G[1:])
        G.mul_(decay)
        grad_C = (hs * gy).sum(2)
        grad_B = (g * drive).sum(2)
        g_drive = (g * Bm.unsqueeze(2)).sum(-1)                   # dL/d(delta_t u_t)
        grad_delta = g_drive * ut + (G * A).sum(-1)
        grad_u = g_drive * dt
        grad_A = (G * dt.unsqueeze(-1)).sum((0, 1))
        back = (grad_u, grad_delta, grad_B, grad_C)
        grad_u, grad_delta, grad_B, grad_C = (x.permute(1, 2, 0) for x in back)
        return grad_u, grad_delta, grad_A, grad_B, grad_C


def selective_scan(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                   C: torch.Tensor) -> torch.Tensor:
    """The Mamba-1 scan y (module docstring), in float32; shapes as in :class:`SelectiveScan`."""
    return SelectiveScan.apply(u.float(), delta.float(), A.float(), B.float(), C.float())


def _mixer_scan(reference: Callable[..., Any]) -> Callable[..., Any]:
    """A drop-in for transformers' ``mamba_selective_scan`` that uses :func:`selective_scan` for CPU tensors
    while :func:`fast_cpu_scan` is active, and ``reference`` otherwise (or when the final state is asked for)."""

    def scan(hidden_states: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
             D: torch.Tensor | None = None, z: torch.Tensor | None = None, delta_bias: torch.Tensor | None = None,
             delta_softplus: bool = False, return_last_state: bool = False, **kwargs: Any) -> Any:
        if not _ENABLED.get() or return_last_state or hidden_states.device.type != "cpu":
            return reference(hidden_states, dt, A, B, C, D=D, z=z, delta_bias=delta_bias,
                             delta_softplus=delta_softplus, return_last_state=return_last_state, **kwargs)
        if delta_bias is not None:
            dt = dt + delta_bias.to(dt.dtype)[..., None]
        if delta_softplus:
            dt = F.softplus(dt)
        y = selective_scan(hidden_states, dt, A, B, C)
        if D is not None:
            y = y + hidden_states * D[None, :, None]
        if z is not None:
            y = y * F.silu(z)
        return y

    setattr(scan, _INSTALLED_MARK, reference)
    return scan


def _install() -> None:
    """Route transformers' Mamba scan through :func:`_mixer_scan` (idempotent; inert until enabled)."""
    from transformers.models.mamba import modeling_mamba

    current = modeling_mamba.mamba_selective_scan
    if not hasattr(current, _INSTALLED_MARK):
        modeling_mamba.mamba_selective_scan = _mixer_scan(current)


@contextlib.contextmanager
def fast_cpu_scan(enabled: bool = True) -> Iterator[None]:
    """Within the block, Mamba mixers running on the CPU use :class:`SelectiveScan` (``enabled=False``: keep
    transformers' implementation, e.g. as a benchmark baseline)."""
    _install()
    token = _ENABLED.set(enabled)
    try:
        yield
    finally:
        _ENABLED.reset(token)
