"""The key frame of a layer: the residual-stream subspace its keys read, and how two checkpoints' frames overlap.

Frame of one key head (the ``"weights"`` reading of W_K, as in key orthogonality): W_K^h = W_K[:, h, :] in the
canonical layout [d_model, n_kv_heads, d_head] is a [d_model, d_head] matrix; its thin SVD W_K^h = U S V^T gives
the residual directions the head reads, ordered by how strongly. The **rank-r key frame** is U_r = the first r
columns of U ([d_model, r], orthonormal; the top-r *right* singular subspace of the ``nn.Linear`` weight
[d_head, d_model]). Under grouped-query attention the heads are the n_kv key heads (never expanded). With
r = d_head the frame is the whole column space of W_K^h, which is unchanged by any invertible re-mixing of the
key coordinates (W_K^h -> W_K^h R, the symmetry that W_Q W_K^T leaves free); a smaller r keeps the dominant
directions only.

Overlap of two frames A, B ([d, r_a], [d, r_b]; :func:`geoprobe.probes.dynamics.subspace_overlap`,
``"projection"``):

    overlap(A, B) = ||Q_A^T Q_B||_F^2 / k = (1/k) sum_i cos^2 theta_i,   k = min(rank A, rank B),

the mean squared cosine of the k principal angles theta_i. 1 = the same subspace, 0 = orthogonal ones.

Null: for a uniformly random r-dimensional subspace (e.g. the column space of an i.i.d. Gaussian W_K at
initialisation) and any fixed r-dimensional one in R^d, E[overlap] = r / d exactly (:func:`random_overlap`:
E ||Q_A^T Q_B||_F^2 = r * r / d). An overlap near r / d says no more than chance; the value for a freshly
initialised model of the same configuration is the practical floor for a training trajectory.
"""

from __future__ import annotations

import math

import torch

from geoprobe.errors import ConfigError
from geoprobe.probes.dynamics import subspace_overlap
from geoprobe.probes.key_orthogonality import to_canonical_layout


def key_frame_bases(W_K: torch.Tensor, rank: int | None = None, layout: str = "model_head_dhead") -> torch.Tensor:
    """Rank-r key frames of every key head of one layer (module docstring): [n_kv_heads, d_model, r] (float64).

    ``rank`` None (or above d_head) keeps all d_head directions; the result never has more columns than
    min(d_model, d_head). Columns are ordered by singular value (largest first); their signs are arbitrary.
    """
    w = to_canonical_layout(W_K, layout).detach().to(torch.float64).cpu().permute(1, 0, 2)  # [H, d_model, d_head]
    r = min(w.shape[1], w.shape[2]) if rank is None else min(int(rank), w.shape[1], w.shape[2])
    if r < 1:
        raise ConfigError(f"key frame rank must be >= 1, got {rank}")
    U, _, _ = torch.linalg.svd(w, full_matrices=False)
    return U[..., :r].contiguous()


def frame_overlaps(frames: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Overlap (module docstring) of matching frames [..., d, r] and [..., d, r']: one value per leading index."""
    if frames.shape[:-2] != reference.shape[:-2] or frames.shape[-2] != reference.shape[-2]:
        raise ConfigError(f"key frames of shape {tuple(frames.shape)} and {tuple(reference.shape)} do not match "
                          "(different architectures?)")
    a = frames.reshape(-1, *frames.shape[-2:])
    b = reference.reshape(-1, *reference.shape[-2:])
    vals = [subspace_overlap(x, y, "projection") for x, y in zip(a, b, strict=True)]
    return torch.tensor(vals, dtype=torch.float64).reshape(frames.shape[:-2])


def random_overlap(rank: int, dim: int) -> float:
    """E[overlap] of a uniformly random ``rank``-dim subspace with a fixed one in R^``dim``: rank / dim."""
    if not 1 <= rank <= dim:
        raise ConfigError(f"subspace rank must be in 1..{dim}, got {rank}")
    return rank / dim


def null_normalised(overlap: float, rank: int, dim: int) -> float:
    """(overlap - r/d) / (1 - r/d): 0 at the random null, 1 for the same subspace (NaN when r = d)."""
    base = random_overlap(rank, dim)
    return (overlap - base) / (1.0 - base) if base < 1.0 else math.nan
