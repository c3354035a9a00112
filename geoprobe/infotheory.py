"""Information-theoretic primitives in bits, used by every task and probe (one place for the math)."""

from __future__ import annotations

import math

import torch

LN2 = math.log(2.0)


def entropy_bits(probs: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Shannon entropy H(p) = -sum_i p_i log2 p_i along ``dim``, with 0 log 0 = 0."""
    p = probs.double() if probs.dtype == torch.float64 else probs.float()
    logp = torch.where(p > 0, torch.log(p.clamp_min(1e-300)), torch.zeros_like(p))
    return (-(p * logp).sum(dim) / LN2).clamp_min(0.0)


def entropy_from_logits_bits(logits: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Entropy in bits of softmax(logits) along ``dim``, computed stably from log-softmax (float32 or wider)."""
    logp = torch.log_softmax(logits.float(), dim=dim)
    return -(logp.exp() * logp).sum(dim) / LN2


def kl_bits(p: torch.Tensor, log_q: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """KL(p || q) = sum_i p_i (log2 p_i - log2 q_i) in bits, given p and natural-log q; terms with p_i = 0 vanish."""
    p = p.float()
    logp = torch.where(p > 0, torch.log(p.clamp_min(1e-30)), torch.zeros_like(p))
    return (p * (logp - log_q.float())).sum(dim) / LN2


def binary_entropy_bits(p: torch.Tensor) -> torch.Tensor:
    """H_b(p) = -p log2 p - (1-p) log2 (1-p)."""
    return entropy_bits(torch.stack([p, 1 - p], dim=-1))
