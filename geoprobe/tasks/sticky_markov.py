"""Sticky Markov chain with Gaussian inputs (Paper II's gradient-dynamics wind tunnel).

Generative model. ``n`` symbols on a circle; the transition matrix is circulant:

    P[i, i] = p_stay,     P[i, j] = (1 - p_stay) (1 / d(i, j)) / sum_{k != i} 1 / d(i, k)     (j != i),

with d(i, j) = min(|i - j|, n - |i - j|) the circular distance (defaults n = 8, p_stay = 0.3). P is doubly
stochastic, so the stationary distribution is uniform; y_0 is drawn from it and y_t ~ P[y_{t-1}, .] for
t = 1..T. Because P is circulant, y_t = y_{t-1} + D_t (mod n) with i.i.d. steps D_t ~ P[0, .].

Inputs are continuous: x_t = mu_{y_{t-1}} + e_t, e_t ~ N(0, I_d), with fixed random means
mu ~ N(0, mu_scale^2 I_d) (one draw per task, from ``mu_seed``; defaults d = 20). The target at position t is
y_t: x_t carries noisy evidence about the *previous* symbol, and the next one is a stochastic step away.

Floor. Even knowing y_{t-1} exactly, y_t keeps H(Y_t | Y_{t-1}) = H(P[0, .]) bits (every row is a rotation of
row 0); for the defaults 2.7170 bits. No predictor's expected cross-entropy (bits) is below it.

Exact Bayes predictive. The pair (hidden state s_t = y_{t-1}, observation x_t) is a hidden Markov model with
transition P, Gaussian emissions N(mu_i, I) and s_1 = y_0 ~ uniform. With the normalised forward filter

    alpha_1 ∝ pi ⊙ e_1,     alpha_t ∝ (P^T alpha_{t-1}) ⊙ e_t,     e_t(i) = exp(-||x_t - mu_i||^2 / 2),

alpha_t(i) = p(y_{t-1} = i | x_1..x_t), and the predictive of the target is

    p(y_t = j | x_1..x_t) = sum_i alpha_t(i) P[i, j]        (i.e. P^T alpha_t).

(Derivation: p(y_{t-1}, x_{1..t}) = sum_{y_{t-2}} p(y_{t-2}, x_{1..t-1}) P[y_{t-2}, y_{t-1}] N(x_t; mu_{y_{t-1}}),
and y_t is independent of x_{1..t} given y_{t-1}.) :func:`bayes_predictive` computes it in float64 with
log-space emissions; :func:`window_predictive` gives the same quantity from the last ``W`` inputs only (the filter
restarted from the stationary prior), which is what a model that sees only ``W`` inputs can at best reach.
"""

from __future__ import annotations

from typing import Any

import torch

from geoprobe.infotheory import entropy_bits
from geoprobe.tasks.base import TASKS, Task, TaskBatch, require
from geoprobe.tasks.params import Param

INPUT_SLOT = 0


def circular_distance(n: int) -> torch.Tensor:
    """``[n, n]`` int64 matrix d(i, j) = min(|i - j|, n - |i - j|)."""
    i = torch.arange(n)
    diff = (i[:, None] - i[None, :]).abs()
    return torch.minimum(diff, n - diff)


def sticky_transition_matrix(n: int = 8, p_stay: float = 0.3) -> torch.Tensor:
    """``[n, n]`` float64 P: ``p_stay`` on the diagonal, the rest split in proportion to 1 / circular distance."""
    d = circular_distance(n).double()
    w = torch.where(d > 0, 1.0 / d.clamp_min(1.0), torch.zeros_like(d))
    return torch.eye(n, dtype=torch.float64) * p_stay + (1.0 - p_stay) * w / w.sum(1, keepdim=True)


def stationary_distribution(P: torch.Tensor) -> torch.Tensor:
    """pi with pi P = pi, sum pi = 1: the left eigenvector of P for eigenvalue 1 (float64)."""
    vals, vecs = torch.linalg.eig(P.double().T)
    v = vecs[:, torch.argmin((vals - 1).abs())].real
    return v / v.sum()


def conditional_entropy_floor(P: torch.Tensor, pi: torch.Tensor | None = None) -> float:
    """H(Y_t | Y_{t-1}) = sum_i pi_i H(P[i, .]) in bits (pi: the stationary distribution by default)."""
    pi = stationary_distribution(P) if pi is None else pi
    return float((pi.double() * entropy_bits(P.double())).sum())


def emission_log_likelihood(x: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    """``[..., T, n]`` log N(x_t; mu_i, I) up to the constant shared by every i: -||x_t - mu_i||^2 / 2."""
    x, mu = x.double(), mu.double()
    return -0.5 * ((x[..., :, None, :] - mu) ** 2).sum(-1)


def _filter_step(prior: torch.Tensor, loglik: torch.Tensor) -> torch.Tensor:
    """alpha ∝ prior ⊙ exp(loglik), normalised, with the log-likelihood shifted by its max (no underflow)."""
    w = prior * torch.exp(loglik - loglik.max(-1, keepdim=True).values)
    return w / w.sum(-1, keepdim=True)


def bayes_predictive(x: torch.Tensor, mu: torch.Tensor, P: torch.Tensor,
                     pi: torch.Tensor | None = None) -> torch.Tensor:
    """p(y_t | x_1..x_t) for every t: ``x`` ``[B, T, d]`` -> ``[B, T, n]`` float64 (see the module docstring)."""
    P = P.double()
    pi = stationary_distribution(P) if pi is None else pi.double()
    loglik = emission_log_likelihood(x, mu)
    B, T, n = loglik.shape
    out = torch.empty(B, T, n, dtype=torch.float64)
    prior = pi.expand(B, n)
    for t in range(T):
        alpha = _filter_step(prior, loglik[:, t])
        out[:, t] = alpha @ P
        prior = out[:, t]  # P^T alpha_t is also the prior of s_{t+1} = y_t
    return out


def window_predictive(x: torch.Tensor, mu: torch.Tensor, P: torch.Tensor, window: int,
                      pi: torch.Tensor | None = None) -> torch.Tensor:
    """p(y_t | x_{t-W+1}..x_t) (the filter restarted from pi on the last ``window`` inputs), ``[B, T, n]``.

    Equals :func:`bayes_predictive` at t <= W (1-based), where the window holds the whole prefix."""
    P = P.double()
    pi = stationary_distribution(P) if pi is None else pi.double()
    loglik = emission_log_likelihood(x, mu)  # [B, T, n]
    B, T, n = loglik.shape
    W = min(int(window), T)
    padded = torch.cat([torch.zeros(B, W - 1, n, dtype=torch.float64), loglik], 1)
    windows = padded.unfold(1, W, 1)  # [B, T, n, W]; slot w holds input t - W + 1 + w (zeros before t = 1)
    prior = pi.expand(B, T, n)
    for w in range(W):
        alpha = _filter_step(prior, windows[..., w])
        # before the chain starts (t - W + 1 + w < 1) the zero log-likelihood leaves pi unchanged: restart at pi
        before = (torch.arange(T) - (W - 1) + w < 0)[None, :, None]
        prior = torch.where(before, pi.expand(B, T, n), alpha @ P)
    return prior


def sample_chain(n_chains: int, T: int, P: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``[n_chains, T + 1]`` symbols y_0..y_T of the circulant chain (y_0 uniform; i.i.d. circular steps)."""
    n = P.shape[0]
    y0 = torch.randint(0, n, (n_chains, 1), generator=generator)
    steps = torch.multinomial(P[0].double().expand(n_chains * T, n), 1, replacement=True,
                              generator=generator).view(n_chains, T)
    return torch.cat([y0, y0 + torch.cumsum(steps, 1)], 1) % n


@TASKS.register("sticky")
class StickyMarkovTask(Task):
    """Sticky circular Markov chain read through Gaussian inputs (see the module docstring).

    Args:
        n_symbols: chain states (the readout size).
        p_stay: P[i, i]; the rest is split in proportion to 1 / circular distance.
        d: input dimension.
        T: positions per chain.
        mu_scale: standard deviation of the entries of the fixed means mu.
        mu_seed: seed of the fixed means (part of the task: every chain of one task uses the same mu).
    """

    name = "sticky"
    summary = "sticky circular Markov chain seen through Gaussian inputs (Paper II): HMM forward-filter predictive"
    default_target = "hard"
    params = {"n_symbols": Param(int, low=2), "p_stay": Param(float, low=0, high=1, high_open=True),
              "d": Param(int, low=1), "T": Param(int, low=1), "mu_scale": Param(float, low=0),
              "mu_seed": Param(int, low=0)}

    def __init__(self, n_symbols: int = 8, p_stay: float = 0.3, d: int = 20, T: int = 2000,
                 mu_scale: float = 1.0, mu_seed: int = 0) -> None:
        require(n_symbols >= 3 or p_stay > 0, "task sticky: n_symbols=2 needs p_stay > 0")
        self.n_symbols, self.p_stay, self.d, self.T = n_symbols, p_stay, d, T
        self.mu_scale, self.mu_seed = mu_scale, mu_seed
        self.P = sticky_transition_matrix(n_symbols, p_stay)
        self.pi = torch.full((n_symbols,), 1.0 / n_symbols, dtype=torch.float64)  # P is doubly stochastic
        g = torch.Generator().manual_seed(mu_seed)
        self.mu = torch.randn(n_symbols, d, generator=g, dtype=torch.float64) * mu_scale

    def config(self) -> dict[str, Any]:
        return {"n_symbols": self.n_symbols, "p_stay": self.p_stay, "d": self.d, "T": self.T,
                "mu_scale": self.mu_scale, "mu_seed": self.mu_seed}

    @property
    def floor_bits(self) -> float:
        """H(Y_t | Y_{t-1}) in bits."""
        return conditional_entropy_floor(self.P, self.pi)

    @property
    def vocab_size(self) -> int:
        return 1 + self.n_symbols

    @property
    def seq_len(self) -> int:
        return self.T

    @property
    def n_features(self) -> int:
        return self.d

    @property
    def readout_ids(self) -> torch.Tensor:
        return torch.arange(1, 1 + self.n_symbols)

    def token_names(self) -> list[str]:
        return ["X"] + [f"y{i}" for i in range(self.n_symbols)]

    def sample_inputs(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(x ``[n, T, d]`` float64, y ``[n, T + 1]`` int64 with y_0..y_T): the raw chain and its inputs."""
        y = sample_chain(n, self.T, self.P, generator)
        noise = torch.randn(n, self.T, self.d, generator=generator, dtype=torch.float64)
        return self.mu[y[:, :-1]] + noise, y

    def sample(self, n: int, generator: torch.Generator) -> TaskBatch:
        x, y = self.sample_inputs(n, generator)
        probs = bayes_predictive(x, self.mu, self.P, self.pi)
        T = self.T
        return TaskBatch(tokens=torch.full((n, T), INPUT_SLOT, dtype=torch.long),
                         loss_mask=torch.ones(n, T, dtype=torch.bool), target_probs=probs.float(),
                         bayes_entropy=entropy_bits(probs).float(), labels=y[:, 1:].clone(),
                         step=torch.arange(T).expand(n, T).clone(), readout_ids=self.readout_ids,
                         features=x.float(), extras={"previous_symbol": y[:, :-1].clone()})


def floor_bits(n_symbols: int = 8, p_stay: float = 0.3) -> float:
    """H(Y_t | Y_{t-1}) in bits for the sticky chain (2.7170 bits for the defaults)."""
    P = sticky_transition_matrix(n_symbols, p_stay)
    return conditional_entropy_floor(P)

