"""Bayesian linear regression in context: continuous inputs, a closed-form Gaussian posterior predictive.

Generative model, per sequence (in-context regression, conjugate Gaussian case)::

    w ~ N(0, tau^2 I_d),   x_i ~ N(0, I_d),   y_i = w . x_i + e_i,   e_i ~ N(0, sigma^2),   i = 1..K

Layout: 2K positions, ``X_1 Y_1 X_2 Y_2 ... X_K Y_K``. Token ids only say which slot a position is (``X`` = 0,
``Y`` = 1); the values enter as **continuous features** ``[B, T, d + 1]`` through the model's input projection
(``features[.., :d] = x_i`` at the X slot, ``features[.., d] = y_i`` at the Y slot, zeros elsewhere).

Next-token convention: the logits at the X slot of example i predict y_i having seen x_1..x_i and y_1..y_{i-1}.
With n = i - 1 observed pairs (design matrix X_n, targets y_n) the posterior is

    Sigma_n = (I / tau^2 + X_n^T X_n / sigma^2)^-1,      mu_n = Sigma_n X_n^T y_n / sigma^2

and the posterior predictive is ``y_i | x_i ~ N(m, s^2)``, ``m = mu_n . x_i``, ``s^2 = sigma^2 + x_i^T Sigma_n x_i``.

Readout (the stated discretisation): the real line is cut into ``n_bins`` bins, uniform on
[-y_max, y_max] with the two outer bins extended to -inf / +inf. The exact Bayes target is the predictive's
probability mass per bin, ``P(bin j) = Phi((e_{j+1} - m) / s) - Phi((e_j - m) / s)``, so every calibration
statistic (entropy MAE and KL in bits, per position) is exact for that categorical readout. The differential
entropy of the Gaussian predictive, ``h = 0.5 log2(2 pi e s^2)`` bits, is returned in
``extras["differential_entropy_bits"]``; for s much wider than the bin width D (and inside the range) the
discretised entropy is close to ``h - log2 D``.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from geoprobe.infotheory import entropy_bits
from geoprobe.tasks.base import IGNORE_INDEX, TASKS, Task, TaskBatch
from geoprobe.tasks.params import Param

X_SLOT, Y_SLOT = 0, 1


def posterior_predictive(x: torch.Tensor, y: torch.Tensor, tau: float, sigma: float
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of y_i | (x_1..x_i, y_1..y_{i-1}) for every i (see the module docstring).

    Args:
        x: ``[B, K, d]`` inputs; y: ``[B, K]`` targets.
    Returns:
        ``(m, s2)``, each ``[B, K]`` float64: predictive mean and variance of y_i before it is observed.
    """
    x, y = x.double(), y.double()
    B, K, d = x.shape
    outer = x[..., :, None] * x[..., None, :]  # [B, K, d, d]
    xy = x * y[..., None]  # [B, K, d]
    # statistics of the pairs strictly before i: exclusive prefix sums
    xtx = torch.cumsum(outer, dim=1) - outer
    xty = torch.cumsum(xy, dim=1) - xy
    precision = torch.eye(d, dtype=torch.float64) / tau**2 + xtx / sigma**2
    cov = torch.linalg.inv(precision)  # Sigma_n, [B, K, d, d]
    mu = (cov @ xty[..., None]).squeeze(-1) / sigma**2
    m = (mu * x).sum(-1)
    s2 = sigma**2 + (x[..., None, :] @ cov @ x[..., :, None])[..., 0, 0]
    return m, s2


def bin_edges(n_bins: int, y_max: float) -> torch.Tensor:
    """``n_bins + 1`` edges: uniform on [-y_max, y_max], outermost edges at -inf and +inf."""
    edges = torch.linspace(-y_max, y_max, n_bins + 1, dtype=torch.float64)
    edges[0], edges[-1] = -math.inf, math.inf
    return edges


def discretised_gaussian(m: torch.Tensor, s2: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """Probability mass of N(m, s2) in each bin: ``Phi((e_{j+1} - m)/s) - Phi((e_j - m)/s)``, ``[..., n_bins]``."""
    s = s2.sqrt()[..., None]
    cdf = torch.special.ndtr((edges - m[..., None]) / s)
    return (cdf[..., 1:] - cdf[..., :-1]).clamp_min(0.0)


def gaussian_differential_entropy_bits(s2: torch.Tensor) -> torch.Tensor:
    """h(N(m, s2)) = 0.5 log2(2 pi e s2) bits."""
    return 0.5 * torch.log2(2 * math.pi * math.e * s2)


@TASKS.register("linreg")
class LinearRegressionTask(Task):
    """In-context Bayesian linear regression with continuous inputs (see the module docstring).

    Args:
        d: input dimension.
        K: (x, y) examples per sequence.
        n_bins: readout bins for y.
        tau: prior standard deviation of each weight.
        sigma: observation noise standard deviation.
        y_max: the bins cover [-y_max, y_max] (outer bins open); default 3 x the prior sd of y.
    """

    name = "linreg"
    summary = "in-context Bayesian linear regression: Gaussian posterior predictive, continuous inputs"
    params = {"d": Param(int, low=1), "K": Param(int, low=1), "n_bins": Param(int, low=2),
              "tau": Param(float, low=0, low_open=True), "sigma": Param(float, low=0, low_open=True),
              "y_max": Param(float, low=0, low_open=True, optional=True)}

    def __init__(self, d: int = 2, K: int = 12, n_bins: int = 32, tau: float = 1.0, sigma: float = 0.5,
                 y_max: float | None = None) -> None:
        self.d, self.K, self.n_bins = d, K, n_bins
        self.tau, self.sigma = tau, sigma
        prior_sd = math.sqrt(self.d * self.tau**2 + self.sigma**2)
        self.y_max = y_max if y_max is not None else round(3.0 * prior_sd, 6)
        self.edges = bin_edges(self.n_bins, self.y_max)

    def config(self) -> dict[str, Any]:
        return {"d": self.d, "K": self.K, "n_bins": self.n_bins, "tau": self.tau, "sigma": self.sigma,
                "y_max": self.y_max}

    @property
    def vocab_size(self) -> int:
        return 2 + self.n_bins

    @property
    def seq_len(self) -> int:
        return 2 * self.K

    @property
    def n_features(self) -> int:
        return self.d + 1

    @property
    def readout_ids(self) -> torch.Tensor:
        return torch.arange(2, 2 + self.n_bins)

    def token_names(self) -> list[str]:
        e = self.edges.tolist()
        return ["X", "Y"] + [f"y[{e[j]:.2f},{e[j + 1]:.2f})" for j in range(self.n_bins)]

    def sample(self, n: int, generator: torch.Generator) -> TaskBatch:
        d, K = self.d, self.K
        w = torch.randn(n, d, generator=generator, dtype=torch.float64) * self.tau
        x = torch.randn(n, K, d, generator=generator, dtype=torch.float64)
        y = (x @ w[:, :, None]).squeeze(-1) + self.sigma * torch.randn(n, K, generator=generator,
                                                                        dtype=torch.float64)
        m, s2 = posterior_predictive(x, y, self.tau, self.sigma)
        probs = discretised_gaussian(m, s2, self.edges)
        probs = probs / probs.sum(-1, keepdim=True)
        labels_k = (torch.bucketize(y, self.edges[1:-1], right=True)).long()  # bin index of the realised y

        T = 2 * K
        xs, ys = torch.arange(0, T, 2), torch.arange(1, T, 2)
        tokens = torch.empty(n, T, dtype=torch.long)
        tokens[:, xs], tokens[:, ys] = X_SLOT, Y_SLOT
        features = torch.zeros(n, T, d + 1)
        features[:, xs, :d] = x.float()
        features[:, ys, d] = y.float()
        loss_mask = torch.zeros(n, T, dtype=torch.bool)
        loss_mask[:, xs] = True
        target = torch.zeros(n, T, self.n_bins)
        target[:, xs] = probs.float()
        labels = torch.full((n, T), IGNORE_INDEX, dtype=torch.long)
        labels[:, xs] = labels_k
        step = torch.full((n, T), -1, dtype=torch.long)
        step[:, xs] = torch.arange(K).expand(n, K)
        return TaskBatch(tokens=tokens, loss_mask=loss_mask, target_probs=target,
                         bayes_entropy=_scatter(entropy_bits(probs), xs, T), labels=labels, step=step,
                         readout_ids=self.readout_ids, features=features,
                         extras={"w": w.float(), "predictive_mean": _scatter(m, xs, T),
                                 "predictive_var": _scatter(s2, xs, T),
                                 "differential_entropy_bits": _scatter(gaussian_differential_entropy_bits(s2), xs, T)})


def _scatter(values: torch.Tensor, positions: torch.Tensor, T: int) -> torch.Tensor:
    """``[B, K]`` values placed at ``positions`` of a zero ``[B, T]`` float32 tensor."""
    out = torch.zeros(values.shape[0], T)
    out[:, positions] = values.float()
    return out
