"""Entropy-axis interventions (SCIENCE.md section 5, Paper III): pure operators on value vectors.

Axis u: PC1 of the standardised final-token concatenated values at a layer
(:attr:`geoprobe.probes.value_manifold.ValueManifoldResult.axis`), normalised to ||u|| = 1 here. For a value
vector v (heads concatenated, D = heads * d_head = u.numel()):
- cut:        v' = v - lambda (v . u) u        (lambda = 1 removes the component; 0 < lambda < 1 shrinks it)
- keep-only:  v' = (v . u) u                   (rank 1: every output lies on span(u))
- shift:      v' = v + k sigma u               (k = +1 / -1 by default; sigma = std over samples of v . u)
- control:    the same operator with r = (g - (g . u) u) / ||g - (g . u) u||, g ~ N(0, I) (seeded), r . u = 0.

Space (named variant): ``"raw"`` (default) applies the operator to v directly. ``"standardised"`` applies it to
z = (v - mean) / scale (the coordinates in which u was found) and maps back, v' = mean + scale * z'.
Operators work on any leading shape; ``feature_dims=2`` treats the last two dims [heads, d_head] as the
feature vector (what an attention hook sees), flattened head-major like ``concat_heads``.
The backend applies these inside the forward pass via hooks; this module never touches a model.
"""

from __future__ import annotations

import torch

from geoprobe.errors import UnknownNameError
from geoprobe.results import ResultRow
from geoprobe.stats import make_generator, pearson_r, spearman_rho
from geoprobe.tensor_ops import (  # noqa: F401  (re-exported: the operators live in the low layer)
    OPERATORS,
    SPACES,
    _apply,
    cut,
    keep_only,
    make_operator,
    shift,
    unit,
)

PROBE = "entropy_axis"


def orthogonal_control(u: torch.Tensor, seed: int | torch.Generator = 0) -> torch.Tensor:
    """Random control direction r ⟂ u: g ~ N(0, I_D) (seeded), r = g - (g . u_hat) u_hat, normalised."""
    uh = unit(u.detach().to(torch.float64))
    g = torch.randn(uh.shape[0], generator=make_generator(seed), dtype=torch.float64).to(uh.device)
    r = g - (g @ uh) * uh
    r = r - (r @ uh) * uh  # second Gram-Schmidt pass for exactness
    return (r / r.norm()).to(u.dtype)


def projection_sigma(x: torch.Tensor, u: torch.Tensor) -> float:
    """sigma = std (ddof=1) over samples of the projection x_i . u_hat, for x [n, D]."""
    p = x.reshape(x.shape[0], -1).to(torch.float64) @ unit(u.to(torch.float64))
    return float(p.std())


def axis_entropy_correlation(x: torch.Tensor, u: torch.Tensor, entropy: torch.Tensor, method: str = "spearman") -> float:
    """corr(x_i . u_hat, H_i) over samples x [n, D] ("spearman" default, or "pearson")."""
    p = x.reshape(x.shape[0], -1).to(torch.float64) @ unit(u.to(torch.float64))
    if method == "spearman":
        return float(spearman_rho(p, entropy))
    if method == "pearson":
        return float(pearson_r(p, entropy))
    raise UnknownNameError(f"unknown correlation {method!r}; valid choices: pearson, spearman")


def intervention_rows(
    layer: int | None,
    operator: str,
    baseline: dict[str, float],
    intervened: dict[str, float],
    *,
    direction: str = "axis",
    meta: dict | None = None,
) -> list[ResultRow]:
    """Rows for one intervention: for every metric m in ``baseline`` (e.g. ``axis_entropy_corr``,
    ``sula_mae_bits``): ``m`` (intervened value) with meta baseline, change = intervened - baseline and
    relative_change = change / |baseline|. Variant ``"operator/direction"`` (direction "axis" or "control")."""
    rows = []
    for name, b in baseline.items():
        a = intervened[name]
        change = a - b
        rel = change / abs(b) if b != 0 else float("nan")
        rows.append(ResultRow(PROBE, name, a, layer=layer, variant=f"{operator}/{direction}",
                              meta=dict(meta or {}, baseline=b, change=change, relative_change=rel)))
    return rows
