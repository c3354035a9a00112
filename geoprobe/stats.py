"""Statistics shared by the probes: bootstrap CIs, Student-t intervals, Spearman rho, PCA, participation ratio, null baselines and a
streaming moments/covariance accumulator.

All computations run in float64 (inputs of any float dtype are upcast), on the inputs' device.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from geoprobe.errors import ConfigError

TensorLike = torch.Tensor | np.ndarray | Sequence[float]


def as_float64(x: TensorLike) -> torch.Tensor:
    """``x`` as a float64 tensor (numpy arrays and sequences are converted; tensors keep their device)."""
    if isinstance(x, torch.Tensor):
        return x.detach().to(torch.float64)
    return torch.as_tensor(np.asarray(x, dtype=np.float64))


def make_generator(seed: int | torch.Generator | None, device: torch.device | str = "cpu") -> torch.Generator:
    """A ``torch.Generator`` seeded with ``seed`` (an existing generator is returned unchanged; None -> 0)."""
    if isinstance(seed, torch.Generator):
        return seed
    g = torch.Generator(device=device)
    g.manual_seed(0 if seed is None else int(seed))
    return g


# --------------------------------------------------------------------------------------------------------------
# Bootstrap
# --------------------------------------------------------------------------------------------------------------


@dataclass
class BootstrapCI:
    """A statistic with its percentile bootstrap confidence interval.

    ``estimate`` is the statistic on the full sample; ``low``/``high`` are the (1-level)/2 and (1+level)/2
    quantiles of the statistic over ``n_boot`` resamples (with replacement, along the sample axis), NaN
    resamples ignored.
    """

    estimate: float
    low: float
    high: float
    level: float
    n_boot: int
    seed: int | None

    def as_tuple(self) -> tuple[float, float, float]:
        return self.estimate, self.low, self.high


def bootstrap_ci(
    data: TensorLike | Sequence[TensorLike],
    statistic: Callable[..., Any] | None = None,
    *,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int | torch.Generator | None = 0,
    vectorized: bool = False,
    batch_size: int = 256,
) -> BootstrapCI:
    """Percentile bootstrap CI of ``statistic`` over the sample axis (axis 0) of ``data``.

    ``data`` is one array or a tuple/list of arrays sharing axis 0 (resampled jointly, e.g. paired x, y). Each
    resample draws n indices uniformly with replacement (seeded ``torch.Generator``); the CI is
    [q_{(1-level)/2}, q_{(1+level)/2}] of the resampled statistics.

    Args:
        statistic: ``f(*arrays) -> scalar``. Default: the mean over axis 0 (vectorised automatically).
        vectorized: if True, ``statistic`` receives arrays with an extra leading resample axis ``[B, n, ...]``
            and must return ``[B]``; resamples are processed ``batch_size`` at a time.
    """
    arrays = [as_float64(a) for a in data] if isinstance(data, (tuple, list)) and not _is_flat(data) else None
    if arrays is None:
        arrays = [as_float64(data)]
    n = arrays[0].shape[0]
    if any(a.shape[0] != n for a in arrays):
        raise ConfigError("bootstrap_ci: all arrays must share the sample axis (axis 0)")
    if n == 0:
        raise ConfigError("bootstrap_ci: empty sample")
    if n_boot < 1:
        raise ConfigError(f"bootstrap_ci needs n_boot >= 1 resamples, got {n_boot}")
    if statistic is None:
        if len(arrays) != 1:
            raise ConfigError("bootstrap_ci: give a statistic for more than one array")

        def statistic(x: torch.Tensor) -> torch.Tensor:
            return x.mean(dim=-arrays[0].ndim)

        vectorized = True
    estimate = _to_float(statistic(*[a.unsqueeze(0) for a in arrays])[0] if vectorized else statistic(*arrays))
    gen = make_generator(seed)
    stats = torch.empty(n_boot, dtype=torch.float64)
    # resample indices are drawn one chunk at a time (the generator yields the same stream as one
    # [n_boot, n] draw), so memory holds one chunk of indices, never n_boot x n of them
    chunk = batch_size if vectorized else max(1, min(n_boot, batch_size))
    for start in range(0, n_boot, chunk):
        sl = torch.randint(0, n, (min(chunk, n_boot - start), n), generator=gen).to(arrays[0].device)
        if vectorized:
            out = statistic(*[a[sl] for a in arrays])
            stats[start : start + sl.shape[0]] = torch.as_tensor(out, dtype=torch.float64).reshape(-1).cpu()
        else:
            for j in range(sl.shape[0]):
                stats[start + j] = _to_float(statistic(*[a[sl[j]] for a in arrays]))
    lo, hi = percentile_interval(stats, level)
    return BootstrapCI(estimate, lo, hi, level, n_boot, seed if not isinstance(seed, torch.Generator) else None)


def jackknife_ci(
    data: TensorLike,
    statistic: Callable[[torch.Tensor], Any],
    *,
    level: float = 0.95,
    vectorized: bool = False,
    batch_size: int = 64,
) -> BootstrapCI:
    """Delete-one jackknife normal interval: estimate +- z_{(1+level)/2} * SE_jack, with
    SE_jack^2 = (n-1)/n * sum_i (theta_(i) - mean_i theta_(i))^2 and theta_(i) the statistic without sample i.

    Unlike the bootstrap it never duplicates samples, so it suits statistics that depend on the number of
    distinct samples (e.g. PCA variance shares with n << d). With ``vectorized`` the statistic receives
    [B, n-1, ...] (``batch_size`` leave-one-out samples at a time) and returns [B]. Returned as a :class:`BootstrapCI` with
    ``n_boot = 0`` and ``seed = None``.
    """
    x = as_float64(data)
    n = x.shape[0]
    if n < 3:
        raise ConfigError("jackknife_ci needs at least 3 samples")
    estimate = _to_float(statistic(x.unsqueeze(0))[0] if vectorized else statistic(x))
    loo = torch.empty(n, dtype=torch.float64)
    step = max(1, batch_size) if vectorized else 1
    for start in range(0, n, step):  # leave-one-out index rows built per chunk, never the n x (n-1) table
        idx = _leave_one_out_rows(n, start, min(n, start + step), x.device)
        if vectorized:
            loo[start : start + idx.shape[0]] = torch.as_tensor(statistic(x[idx]), dtype=torch.float64).reshape(-1).cpu()
        else:
            loo[start] = _to_float(statistic(x[idx[0]]))
    se = math.sqrt((n - 1) / n * float(((loo - loo.mean()) ** 2).sum()))
    z = float(torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor((1.0 + level) / 2.0)))
    return BootstrapCI(estimate, estimate - z * se, estimate + z * se, level, 0, None)


def _leave_one_out_rows(n: int, start: int, stop: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Rows ``start..stop-1`` of the leave-one-out index table: row i = [0, ..., i-1, i+1, ..., n-1]."""
    j = torch.arange(n - 1, device=device).unsqueeze(0)
    i = torch.arange(start, stop, device=device).unsqueeze(1)
    return j + (j >= i).long()


def _is_flat(data: Sequence[Any]) -> bool:
    """True for a plain list of numbers (one sample), False for a list of arrays."""
    return len(data) > 0 and all(isinstance(x, (int, float, np.floating, np.integer)) for x in data)


def _to_float(x: Any) -> float:
    if isinstance(x, torch.Tensor):
        return float(x.detach().double().reshape(-1)[0]) if x.numel() else math.nan
    return float(x)


def t_interval(values: Sequence[Any], level: float = 0.95) -> tuple[float, float]:
    """Student-t interval of the mean of the finite ``values`` (None and NaN dropped, n = how many remain):
    mean ± t((1+level)/2, n-1) · sd / sqrt(n), sd with n-1; (nan, nan) when fewer than two remain (undefined).
    Plain double-precision arithmetic over Python floats."""
    from scipy.stats import t as student_t

    x = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    n = len(x)
    if n < 2:
        return math.nan, math.nan
    mean = sum(x) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in x) / (n - 1))
    half = float(student_t.ppf((1 + level) / 2, n - 1)) * sd / math.sqrt(n)
    return mean - half, mean + half


def percentile_interval(samples: torch.Tensor, level: float = 0.95) -> tuple[float, float]:
    """(q_{(1-level)/2}, q_{(1+level)/2}) of the finite entries of ``samples`` (NaN, NaN if none)."""
    s = samples[torch.isfinite(samples)].double()
    if s.numel() == 0:
        return math.nan, math.nan
    alpha = (1.0 - level) / 2.0
    q = torch.quantile(s, torch.tensor([alpha, 1.0 - alpha], dtype=torch.float64))
    return float(q[0]), float(q[1])


# --------------------------------------------------------------------------------------------------------------
# Ranks and correlations
# --------------------------------------------------------------------------------------------------------------


def average_ranks(x: TensorLike, dim: int = -1) -> torch.Tensor:
    """Ranks 1..n along ``dim`` with ties given their average rank (as ``scipy.stats.rankdata``), float64.

    Vectorised over all other dims: sort, find tie groups (runs of equal sorted values), give each member the
    mean of the group's first and last 1-based sorted position, and scatter back.
    """
    x = as_float64(x).movedim(dim, -1)
    n = x.shape[-1]
    s, order = torch.sort(x, dim=-1, stable=True)
    pos = torch.arange(n, dtype=torch.float64, device=x.device).expand_as(s)
    new_group = torch.ones_like(s, dtype=torch.bool)
    new_group[..., 1:] = s[..., 1:] != s[..., :-1]
    end_group = torch.ones_like(s, dtype=torch.bool)
    end_group[..., :-1] = new_group[..., 1:]
    first = torch.where(new_group, pos, torch.zeros_like(pos)).cummax(dim=-1).values
    last = torch.where(end_group, pos, torch.full_like(pos, float(n))).flip(-1).cummin(dim=-1).values.flip(-1)
    ranks_sorted = (first + last) / 2.0 + 1.0
    ranks = torch.empty_like(ranks_sorted).scatter_(-1, order, ranks_sorted)
    return ranks.movedim(-1, dim)


def pearson_r(x: TensorLike, y: TensorLike, dim: int = -1) -> torch.Tensor:
    """Pearson r = sum (x-mx)(y-my) / sqrt(sum (x-mx)^2 sum (y-my)^2) along ``dim`` (NaN if a side is constant)."""
    x, y = as_float64(x), as_float64(y)
    xc = x - x.mean(dim=dim, keepdim=True)
    yc = y - y.mean(dim=dim, keepdim=True)
    den = torch.sqrt((xc * xc).sum(dim) * (yc * yc).sum(dim))
    num = (xc * yc).sum(dim)
    return torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), torch.full_like(num, math.nan))


def spearman_rho(x: TensorLike, y: TensorLike, dim: int = -1) -> torch.Tensor:
    """Spearman rho = Pearson r of the average ranks of x and y along ``dim`` (ties -> average ranks).

    Batched over other dims; equals ``scipy.stats.spearmanr`` for 1-D inputs. NaN when either side is constant.
    """
    return pearson_r(average_ranks(x, dim), average_ranks(y, dim), dim)


def spearman_with_ci(
    x: TensorLike, y: TensorLike, *, n_boot: int = 1000, level: float = 0.95, seed: int | None = 0
) -> BootstrapCI:
    """Spearman rho(x, y) with a percentile bootstrap CI over paired samples (vectorised)."""
    return bootstrap_ci((x, y), lambda a, b: spearman_rho(a, b, dim=-1), n_boot=n_boot, level=level,
                        seed=seed, vectorized=True)


# --------------------------------------------------------------------------------------------------------------
# PCA
# --------------------------------------------------------------------------------------------------------------


def participation_ratio(eigenvalues: TensorLike, dim: int = -1) -> torch.Tensor:
    """Participation ratio PR = (sum_i lambda_i)^2 / sum_i lambda_i^2 (between 1 and the number of eigenvalues)."""
    lam = as_float64(eigenvalues).clamp_min(0.0)
    return lam.sum(dim) ** 2 / (lam * lam).sum(dim)


def standardize(x: TensorLike, dim: int = 0, eps: float = 1e-12) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """z-score along ``dim``: z = (x - mean) / std (std with ddof=1); constant coordinates become 0.

    Returns (z, mean, std) with std = 1 substituted where a coordinate is constant (|std| <= eps * scale).
    """
    x = as_float64(x)
    mean = x.mean(dim=dim, keepdim=True)
    xc = x - mean
    n = x.shape[dim]
    std = torch.sqrt((xc * xc).sum(dim=dim, keepdim=True) / max(n - 1, 1))
    scale = x.abs().amax(dim=dim, keepdim=True).clamp_min(1.0)
    const = std <= eps * scale
    std = torch.where(const, torch.ones_like(std), std)
    z = torch.where(const, torch.zeros_like(xc), xc / std)
    return z, mean.squeeze(dim), std.squeeze(dim)


@dataclass
class PCAResult:
    """PCA of an [n, d] sample (rows = samples).

    eigenvalues: variances along the components (descending), ``explained_ratio`` = eigenvalues / their sum;
    components: [d, k] orthonormal columns (in the standardised coordinates when ``standardized``);
    scores: [n, k] = (x - mean)/scale @ components; mean, scale: the [d] shift and scale applied first
    (scale = 1 when not standardised); n_constant: coordinates with zero variance (set to 0).
    """

    eigenvalues: torch.Tensor
    explained_ratio: torch.Tensor
    components: torch.Tensor
    scores: torch.Tensor | None
    mean: torch.Tensor
    scale: torch.Tensor
    standardized: bool
    n_constant: int = 0

    @property
    def pc1(self) -> float:
        return float(self.explained_ratio[0])

    @property
    def pc12(self) -> float:
        return float(self.explained_ratio[:2].sum())

    @property
    def participation_ratio(self) -> float:
        return float(participation_ratio(self.eigenvalues))

    def transform(self, x: TensorLike) -> torch.Tensor:
        """Scores of new samples: ((x - mean) / scale) @ components."""
        return ((as_float64(x) - self.mean) / self.scale) @ self.components

    def flip(self, k: int = 0) -> None:
        """Negate component ``k`` (and its scores) in place."""
        self.components[:, k] = -self.components[:, k]
        if self.scores is not None:
            self.scores[:, k] = -self.scores[:, k]


def _sign_convention(components: torch.Tensor) -> torch.Tensor:
    """Flip each column so its largest-|.| entry is positive (deterministic sign; returns the +-1 signs)."""
    idx = components.abs().argmax(dim=0)
    signs = torch.sign(components[idx, torch.arange(components.shape[1], device=components.device)])
    return torch.where(signs == 0, torch.ones_like(signs), signs)


def pca(x: TensorLike, standardized: bool = True, n_components: int | None = None) -> PCAResult:
    """PCA of ``x`` [n, d] via the thin SVD of the centred (and, by default, z-scored) data.

    With Z = (x - mean)/std (std ddof=1) and Z = U S V^T: eigenvalues lambda_k = S_k^2 / (n-1) (the
    eigenvalues of the covariance/correlation matrix), components = V, scores = U S. At most min(n, d)
    components. Signs follow the convention "largest-magnitude loading positive".
    """
    x = as_float64(x)
    if x.ndim != 2:
        raise ConfigError(f"pca expects [n, d] data, got shape {tuple(x.shape)}")
    n, d = x.shape
    if n < 2:
        raise ConfigError("pca needs at least 2 samples")
    if standardized:
        z, mean, scale = standardize(x, dim=0)
        n_const = int((z.abs().sum(0) == 0).sum())
    else:
        mean = x.mean(0)
        z = x - mean
        scale = torch.ones(d, dtype=torch.float64, device=x.device)
        n_const = 0
    U, S, Vh = torch.linalg.svd(z, full_matrices=False)
    k = S.shape[0] if n_components is None else min(n_components, S.shape[0])
    eig_all = S**2 / (n - 1)
    total = eig_all.sum()
    comps = Vh[:k].T.contiguous()
    scores = U[:, :k] * S[:k]
    signs = _sign_convention(comps)
    comps, scores = comps * signs, scores * signs
    ratio = eig_all[:k] / total if total > 0 else torch.full_like(eig_all[:k], math.nan)
    return PCAResult(eig_all[:k], ratio, comps, scores, mean, scale, standardized, n_const)


def pca_from_moments(moments: RunningMoments, standardized: bool = True) -> PCAResult:
    """PCA from a streaming :class:`RunningMoments` (covariance tracked): eigh of the covariance, or of the
    correlation matrix C_ij / (s_i s_j) when ``standardized``. Scores are None (project with ``transform``)."""
    cov = moments.cov()
    mean = moments.mean.reshape(-1)
    d = cov.shape[0]
    if standardized:
        var = torch.diagonal(cov).clone()
        const = var <= 1e-24 * var.max().clamp_min(1e-300)
        scale = torch.where(const, torch.ones_like(var), var.sqrt())
        cov = cov / torch.outer(scale, scale)
        cov[const, :] = 0.0
        cov[:, const] = 0.0
        n_const = int(const.sum())
    else:
        scale = torch.ones(d, dtype=torch.float64, device=cov.device)
        n_const = 0
    evals, evecs = torch.linalg.eigh(cov)
    evals, evecs = evals.flip(0).clamp_min(0.0), evecs.flip(1)
    evecs = evecs * _sign_convention(evecs)
    return PCAResult(evals, evals / evals.sum(), evecs, None, mean, scale, standardized, n_const)


@dataclass
class IsotropicNull:
    """Monte Carlo null of PCA statistics on isotropic Gaussian data of matched n and d."""

    n: int
    d: int
    n_draws: int
    seed: int
    pc1_mean: float
    pc1_std: float
    pc1_q95: float
    pc12_mean: float
    pc12_q95: float
    pr_mean: float


def isotropic_pca_null(
    n: int, d: int, *, n_draws: int = 200, seed: int = 0, standardized: bool = True, chunk: int | None = None
) -> IsotropicNull:
    """PC1 share (and PC1+PC2, participation ratio) of standardised isotropic Gaussian data, x ~ N(0, I_d), n rows.

    Each draw runs the same pipeline as :func:`pca` (centre, z-score, eigenvalues of Z Z^T / (n-1) or of
    Z^T Z / (n-1), whichever is smaller: both have the non-zero covariance eigenvalues). For n=75, d=1024 the PC1 share is about
    2.2% (approximately (1 + sqrt(n/d))^2 / (n-1)), not 1/d.
    """
    g = make_generator(seed)
    if chunk is None:
        chunk = max(1, min(n_draws, int(4e6 // max(n * d, 1))))
    pc1, pc12, pr = [], [], []
    done = 0
    while done < n_draws:
        b = min(chunk, n_draws - done)
        x = torch.randn(b, n, d, generator=g, dtype=torch.float64)
        x = x - x.mean(1, keepdim=True)
        if standardized:
            x = x / x.std(1, keepdim=True).clamp_min(1e-300)
        # the n x n Gram matrix and the d x d covariance share their non-zero spectrum: use the smaller one
        gram = x @ x.transpose(1, 2) if n <= d else x.transpose(1, 2) @ x
        lam = torch.linalg.eigvalsh(gram / (n - 1)).flip(-1).clamp_min(0.0)
        tot = lam.sum(-1)
        pc1.append(lam[:, 0] / tot)
        pc12.append(lam[:, :2].sum(-1) / tot)
        pr.append(participation_ratio(lam))
        done += b
    p1, p12, prs = torch.cat(pc1), torch.cat(pc12), torch.cat(pr)
    return IsotropicNull(
        n, d, n_draws, seed,
        pc1_mean=float(p1.mean()), pc1_std=float(p1.std()) if n_draws > 1 else 0.0,
        pc1_q95=float(torch.quantile(p1, 0.95)), pc12_mean=float(p12.mean()),
        pc12_q95=float(torch.quantile(p12, 0.95)), pr_mean=float(prs.mean()),
    )


# --------------------------------------------------------------------------------------------------------------
# Streaming moments
# --------------------------------------------------------------------------------------------------------------


class RunningMoments:
    """Streaming count, mean and (optionally) covariance of feature vectors, in float64, mergeable.

    Uses the pairwise (Chan et al.) update: for the running state (n_a, mean_a, M2_a) and a batch
    (n_b, mean_b, M2_b = sum (x - mean_b)(x - mean_b)^T),
    n = n_a + n_b, delta = mean_b - mean_a, mean = mean_a + delta n_b / n,
    M2 = M2_a + M2_b + delta delta^T n_a n_b / n;  cov = M2 / (n - ddof).
    Nothing but these sums is kept, so scans need not cache activations.

    Args:
        feature_shape: trailing shape of one sample (e.g. ``(d,)`` or ``(n_heads, d_head)``).
        track_cov: keep the full covariance of the flattened feature (size prod(feature_shape)^2); otherwise
            only per-coordinate variances.
    """

    def __init__(self, feature_shape: int | Sequence[int], track_cov: bool = False, device: str | torch.device = "cpu"):
        self.feature_shape = (feature_shape,) if isinstance(feature_shape, int) else tuple(feature_shape)
        self.dim = int(np.prod(self.feature_shape)) if self.feature_shape else 1
        self.track_cov = track_cov
        self.count = 0
        self._mean = torch.zeros(self.dim, dtype=torch.float64, device=device)
        self._m2 = torch.zeros((self.dim, self.dim) if track_cov else (self.dim,), dtype=torch.float64, device=device)

    def update(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> RunningMoments:
        """Add samples ``x`` of shape [..., *feature_shape]; ``mask`` (bool, shape = the leading dims) selects
        which to add."""
        nf = len(self.feature_shape)
        if tuple(x.shape[x.ndim - nf :]) != self.feature_shape:
            raise ConfigError(f"RunningMoments: expected trailing shape {self.feature_shape}, got {tuple(x.shape)}")
        xb = x.detach().reshape(-1, self.dim).to(device=self._mean.device, dtype=torch.float64)
        if mask is not None:
            xb = xb[mask.reshape(-1).to(self._mean.device)]
        nb = xb.shape[0]
        if nb == 0:
            return self
        mean_b = xb.mean(0)
        xc = xb - mean_b
        m2_b = xc.T @ xc if self.track_cov else (xc * xc).sum(0)
        self._combine(nb, mean_b, m2_b)
        return self

    def _combine(self, nb: int, mean_b: torch.Tensor, m2_b: torch.Tensor) -> None:
        na = self.count
        n = na + nb
        delta = mean_b - self._mean
        self._mean = self._mean + delta * (nb / n)
        corr = torch.outer(delta, delta) if self.track_cov else delta * delta
        self._m2 = self._m2 + m2_b + corr * (na * nb / n)
        self.count = n

    def merge(self, other: RunningMoments) -> RunningMoments:
        """Fold another accumulator (same feature shape and covariance tracking) into this one."""
        if other.feature_shape != self.feature_shape or other.track_cov != self.track_cov:
            raise ConfigError("RunningMoments.merge: feature shape / track_cov differ")
        if other.count:
            self._combine(other.count, other._mean.to(self._mean.device), other._m2.to(self._mean.device))
        return self

    @property
    def mean(self) -> torch.Tensor:
        """Mean of the samples, shaped ``feature_shape`` (NaN before any update)."""
        m = self._mean if self.count else torch.full_like(self._mean, math.nan)
        return m.reshape(self.feature_shape)

    def var(self, ddof: int = 1) -> torch.Tensor:
        """Per-coordinate variance M2_ii / (n - ddof), shaped ``feature_shape``."""
        diag = torch.diagonal(self._m2) if self.track_cov else self._m2
        return (diag / max(self.count - ddof, 1)).reshape(self.feature_shape)

    def std(self, ddof: int = 1) -> torch.Tensor:
        return self.var(ddof).sqrt()

    def cov(self, ddof: int = 1) -> torch.Tensor:
        """Covariance [dim, dim] of the flattened feature, M2 / (n - ddof) (needs ``track_cov``)."""
        if not self.track_cov:
            raise ConfigError("RunningMoments was created with track_cov=False")
        return self._m2 / max(self.count - ddof, 1)

    def state_dict(self) -> dict[str, Any]:
        return {"feature_shape": list(self.feature_shape), "track_cov": self.track_cov, "count": self.count,
                "mean": self._mean.cpu(), "m2": self._m2.cpu()}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> RunningMoments:
        obj = cls(tuple(state["feature_shape"]), track_cov=bool(state["track_cov"]))
        obj.count = int(state["count"])
        obj._mean = state["mean"].to(torch.float64)
        obj._m2 = state["m2"].to(torch.float64)
        return obj


# --------------------------------------------------------------------------------------------------------------
# Nulls for verdicts: permutation p-values, paired-difference tests, empirical p-values
# --------------------------------------------------------------------------------------------------------------


@dataclass
class AbsRhoPermutation:
    """|Spearman rho| of several score columns against one variable, with permutation p-values.

    ``abs_rho[j]`` = |rho(scores[:, j], y)| (the sign of a principal component is arbitrary and fixed so that
    rho >= 0, so |rho| is the statistic actually reported). ``p_each[j]`` = (1 + #{perm: |rho_j^perm| >=
    |rho_j|}) / (1 + n_perm), y permuted with the same permutation for every column. ``best`` = argmax_j
    |rho_j| and ``p_best`` its p-value against the permutation distribution of max_j |rho_j^perm| (so choosing
    the best of k is accounted for).
    """

    abs_rho: list[float]
    p_each: list[float]
    best: int
    p_best: float
    null_mean_abs_rho: float
    n_perm: int
    seed: int

    @property
    def best_abs_rho(self) -> float:
        return self.abs_rho[self.best]


def abs_rho_permutation(scores: TensorLike, y: TensorLike, *, n_perm: int = 1000, seed: int = 0,
                        batch_size: int = 250) -> AbsRhoPermutation:
    """Permutation test of |Spearman rho| between each column of ``scores`` [n, k] and ``y`` [n].

    Each permutation shuffles ``y`` once and recomputes |rho| for every column (the sign rule rho >= 0 is part
    of the statistic, hence the absolute value). Returns per-column p-values, the best column and its
    max-statistic p-value, and ``null_mean_abs_rho`` (mean |rho| of column 0 under permutation: what "no
    relation" gives at this n).
    """
    s = as_float64(scores)
    if s.ndim == 1:
        s = s.unsqueeze(1)
    yy = as_float64(y).reshape(-1)
    n, k = s.shape
    if yy.shape[0] != n:
        raise ConfigError(f"abs_rho_permutation: {n} scores but {yy.shape[0]} values")
    if n_perm < 1:
        raise ConfigError(f"abs_rho_permutation needs n_perm >= 1, got {n_perm}")
    rs = average_ranks(s, dim=0)  # [n, k]
    ry = average_ranks(yy)
    obs = pearson_r(rs.T, ry.unsqueeze(0).expand(k, n), dim=-1).abs()  # [k]
    gen = make_generator(seed)
    perm_abs = torch.empty(n_perm, k, dtype=torch.float64)
    for start in range(0, n_perm, batch_size):
        b = min(batch_size, n_perm - start)
        idx = torch.argsort(torch.rand(b, n, generator=gen), dim=1)
        ryp = ry[idx]  # [b, n]
        perm_abs[start:start + b] = pearson_r(rs.T.unsqueeze(0).expand(b, k, n), ryp.unsqueeze(1).expand(b, k, n),
                                              dim=-1).abs()
    obs_f = torch.nan_to_num(obs, nan=0.0)
    perm_f = torch.nan_to_num(perm_abs, nan=0.0)
    p_each = ((perm_f >= obs_f.unsqueeze(0) - 1e-12).sum(0) + 1).double() / (n_perm + 1)
    best = int(torch.argmax(obs_f))
    mx = perm_f.max(1).values
    p_best = float(((mx >= obs_f[best] - 1e-12).sum() + 1) / (n_perm + 1))
    return AbsRhoPermutation([float(v) for v in obs], [float(v) for v in p_each], best, p_best,
                             float(perm_f[:, 0].mean()), n_perm, int(seed))


@dataclass
class DifferenceTest:
    """A mean difference with a bootstrap CI and a one-sided sign-flip p-value for "difference > 0".

    ``significant`` is True only when the CI excludes 0 on the positive side (``low > 0``).
    """

    estimate: float
    low: float
    high: float
    p_greater: float
    n: int
    n_boot: int
    seed: int

    @property
    def significant(self) -> bool:
        return bool(self.low > 0)

    def to_dict(self) -> dict[str, Any]:
        return {"estimate": self.estimate, "ci": [self.low, self.high], "p_one_sided": self.p_greater,
                "n": self.n, "significant": self.significant}


def paired_difference_test(diff: TensorLike, *, n_boot: int = 1000, seed: int = 0, level: float = 0.95
                           ) -> DifferenceTest:
    """Test mean(d) > 0 for paired differences ``d`` [n] (NaN dropped).

    CI: percentile bootstrap of the mean. p-value: sign-flip randomisation, p = (1 + #{flips: mean(s * d) >=
    mean(d)}) / (1 + n_boot), s_i = +-1 uniformly (exact under the symmetric null of no difference).
    """
    d = as_float64(diff).reshape(-1)
    d = d[~torch.isnan(d)]
    n = int(d.numel())
    if n < 2:
        return DifferenceTest(float(d.mean()) if n else math.nan, math.nan, math.nan, math.nan, n, n_boot, seed)
    ci = bootstrap_ci(d, n_boot=n_boot, seed=seed, level=level)
    gen = make_generator(seed + 1)
    chunk = max(1, min(n_boot, int(2**18 // n)))  # sign draws held at once: a fixed budget, not n_boot x n
    m = float(d.mean())
    hits = 0
    for start in range(0, n_boot, chunk):
        signs = torch.randint(0, 2, (min(chunk, n_boot - start), n), generator=gen).double() * 2 - 1
        hits += int(((signs * d).mean(1) >= m - 1e-15).sum())
    p = float((torch.tensor(hits) + 1) / (n_boot + 1))  # as before: a float32 tensor division
    return DifferenceTest(float(d.mean()), ci.low, ci.high, p, n, n_boot, seed)


def paired_statistic_test(a: TensorLike, b: TensorLike, statistic: Callable[[torch.Tensor], torch.Tensor], *,
                          n_boot: int = 1000, seed: int = 0, level: float = 0.95,
                          batch_size: int | None = None) -> DifferenceTest:
    """Test S(a) > S(b) for a statistic S of paired samples: ``a`` and ``b`` are ``[n, ...]``, row i of ``a`` and
    row i of ``b`` measured on the same unit (e.g. the same prompt through the model and through a null model).

    ``statistic`` is vectorised: ``[B, n, ...] -> [B]``. Estimate: D = S(a) - S(b). CI: percentile bootstrap of
    D, resampling the n pairs jointly. p-value: swap randomisation, p = (1 + #{draws: D* >= D}) / (1 + n_boot)
    where each draw swaps a_i and b_i independently with probability 1/2 (exact under the null that the two
    members of each pair are exchangeable). ``significant`` = CI low > 0, as for :func:`paired_difference_test`.
    ``batch_size``: resamples evaluated at once (default: as many as keep one batch near 2**19 numbers, so the
    peak memory stays flat in n).
    """
    x, y = as_float64(a), as_float64(b)
    if x.shape != y.shape:
        raise ConfigError(f"paired_statistic_test: shapes {tuple(x.shape)} and {tuple(y.shape)} differ")
    n = int(x.shape[0])
    bs = batch_size or max(1, min(256, int(2**19 // max(1, x.numel()))))

    def diff(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return statistic(u) - statistic(v)

    est = float(diff(x.unsqueeze(0), y.unsqueeze(0))[0])
    if n < 2:
        return DifferenceTest(est, math.nan, math.nan, math.nan, n, n_boot, seed)
    ci = bootstrap_ci((x, y), diff, n_boot=n_boot, seed=seed, level=level, vectorized=True, batch_size=bs)
    gen = make_generator(seed + 1)
    hits = 0
    for start in range(0, n_boot, bs):  # swap draws made per batch (same stream as one [n_boot, n] draw)
        b = min(bs, n_boot - start)
        s = torch.randint(0, 2, (b, n), generator=gen).bool().view(b, n, *([1] * (x.ndim - 1)))
        u, v = torch.where(s, y, x), torch.where(s, x, y)
        d = diff(u, v)
        hits += int((torch.nan_to_num(d, nan=-math.inf) >= est - 1e-12).sum())
    p = (hits + 1) / (n_boot + 1)
    return DifferenceTest(est, ci.low, ci.high, float(p), n, n_boot, seed)


def empirical_p(value: float, null: TensorLike, *, alternative: str = "greater") -> float:
    """(1 + #{null draws at least as extreme}) / (1 + #draws); ``alternative`` "greater", "less" or "two-sided"
    (two-sided: |draw - mean(null)| >= |value - mean(null)|)."""
    z = as_float64(null).reshape(-1)
    z = z[torch.isfinite(z)]
    if z.numel() == 0 or not math.isfinite(value):
        return math.nan
    if alternative == "greater":
        hits = (z >= value).sum()
    elif alternative == "less":
        hits = (z <= value).sum()
    elif alternative == "two-sided":
        c = z.mean()
        hits = ((z - c).abs() >= abs(value - float(c))).sum()
    else:
        raise ConfigError(f"unknown alternative {alternative!r}; valid choices: greater, less, two-sided")
    return float((hits + 1) / (z.numel() + 1))


def settling_step(steps: Sequence[int], values: Sequence[float], remaining: float = 0.1) -> int | None:
    """Scale-free settling step of a trajectory: the first step s_i after which the remaining excess
    |v(s_j) - v_final| stays <= ``remaining`` * |v(s_0) - v_final| for every j >= i.

    With ``remaining = 0.1`` this is the step at which the quantity has covered (and keeps) 90% of its total
    change. Independent of units and scale: two trajectories decaying proportionally settle at the same step.
    None when the trajectory has no change (v(s_0) == v_final) or is empty.
    """
    v = [float(x) for x in values]
    if len(v) != len(steps) or not v:
        raise ConfigError(f"settling_step: {len(steps)} steps but {len(v)} values")
    total = abs(v[0] - v[-1])
    if total == 0 or not math.isfinite(total):
        return None
    found = None
    for s, x in zip(reversed(list(steps)), reversed(v), strict=True):
        if abs(x - v[-1]) > remaining * total + 1e-15:
            break
        found = int(s)
    return found


def normalised_excess(values: Sequence[float]) -> list[float]:
    """(v - v_final) / (v_0 - v_final): 1 at the first step, 0 at the last (NaN if there is no change)."""
    v = [float(x) for x in values]
    total = v[0] - v[-1]
    return [(x - v[-1]) / total if total != 0 else math.nan for x in v]


# --------------------------------------------------------------------------------------------------------------
# Controlling a rank correlation for a grouping variable (e.g. position)
# --------------------------------------------------------------------------------------------------------------


def _rank_residuals(r: torch.Tensor, rz: torch.Tensor) -> torch.Tensor:
    """Residuals of ``r`` after ordinary least squares on ``[1, rz]`` (1-D)."""
    zc = rz - rz.mean()
    vz = float((zc * zc).sum())
    rc = r - r.mean()
    return rc if vz == 0 else rc - zc * float((rc * zc).sum()) / vz


def _within_group_centred_ranks(v: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Ranks of ``v`` computed within each group, minus the group's mean rank (0 for a constant group)."""
    out = torch.zeros_like(v)
    for g in torch.unique(groups):
        sel = groups == g
        r = average_ranks(v[sel])
        out[sel] = r - r.mean()
    return out


@dataclass
class GroupControlledRho:
    """rho(x, y) controlled for a grouping variable z (e.g. token position), with permutation p-values.

    - ``rho_xz``: Spearman rho(x, z);
    - ``partial``: rank partial correlation of x and y given z: Pearson r of e_x and e_y, where e_v is the
      residual of rank(v) after least squares on [1, rank(z)] (ranks over all samples, ties averaged);
      equivalently (rho_xy - rho_xz rho_yz) / sqrt((1 - rho_xz^2)(1 - rho_yz^2)). NaN when y's ranks are an
      exact linear function of z's ranks (nothing of y is left once z is known);
    - ``within``: pooled within-group Spearman: ranks of x and of y computed inside each group and centred on
      the group's mean rank, then one Pearson r over all samples (sum_g cov_g / sqrt(sum_g var_g(x) sum_g
      var_g(y))). Groups where x or y is constant contribute nothing; NaN when y is constant in every group;
    - ``y_determined_by_group``: y is constant within every group (so rho(x, y) cannot be told apart from a
      correlation with the group itself);
    - p-values: y permuted within groups (``n_perm`` times, seeded), two-sided on |statistic|, (1 + #{|perm|
      >= |obs|}) / (1 + n_perm); None when the statistic is NaN or ``n_perm`` = 0.
    """

    rho_xz: float
    partial: float
    within: float
    y_determined_by_group: bool
    n_groups: int
    n_groups_varying: int
    partial_p: float | None
    within_p: float | None
    n_perm: int
    seed: int


def group_controlled_rho(x: TensorLike, y: TensorLike, z: TensorLike, *, n_perm: int = 1000, seed: int = 0,
                         batch_size: int = 250) -> GroupControlledRho:
    """Rank correlation of ``x`` and ``y`` [n] controlled for the group label ``z`` [n] (class docstring)."""
    xx, yy, zz = as_float64(x).reshape(-1), as_float64(y).reshape(-1), as_float64(z).reshape(-1)
    n = xx.shape[0]
    if yy.shape[0] != n or zz.shape[0] != n:
        raise ConfigError(f"group_controlled_rho: {n} x values but {yy.shape[0]} y and {zz.shape[0]} group labels")
    rz = average_ranks(zz)
    ex, ey = _rank_residuals(average_ranks(xx), rz), _rank_residuals(average_ranks(yy), rz)
    tol = 1e-9 * n * n
    partial = float(pearson_r(ex, ey)) if float((ey * ey).sum()) > tol and float((ex * ex).sum()) > tol else math.nan
    wx, wy = _within_group_centred_ranks(xx, zz), _within_group_centred_ranks(yy, zz)
    within = float(pearson_r(wx, wy)) if float((wy * wy).sum()) > 0 and float((wx * wx).sum()) > 0 else math.nan
    groups = torch.unique(zz)
    varying = sum(int(bool((yy[zz == g] != yy[zz == g][0]).any())) for g in groups)
    p_part = p_within = None
    if n_perm > 0 and not (math.isnan(partial) and math.isnan(within)):
        gen = make_generator(seed)
        members = [torch.nonzero(zz == g).squeeze(1) for g in groups]
        cnt_p = cnt_w = 0
        for start in range(0, n_perm, batch_size):
            b = min(batch_size, n_perm - start)
            idx = torch.arange(n).expand(b, n).clone()
            for m in members:  # permute only inside each group
                idx[:, m] = m[torch.argsort(torch.rand(b, len(m), generator=gen), dim=1)]
            # permuting y inside groups permutes e_y and the within-group ranks of y the same way (the
            # regression on rank(z) sees the same z per sample), so the statistics are recomputed from them
            if not math.isnan(partial):
                cnt_p += int((pearson_r(ex.expand(b, n), ey[idx]).abs() >= abs(partial) - 1e-12).sum())
            if not math.isnan(within):
                cnt_w += int((torch.nan_to_num(pearson_r(wx.expand(b, n), wy[idx]), nan=0.0).abs()
                              >= abs(within) - 1e-12).sum())
        p_part = None if math.isnan(partial) else (cnt_p + 1) / (n_perm + 1)
        p_within = None if math.isnan(within) else (cnt_w + 1) / (n_perm + 1)
    return GroupControlledRho(float(spearman_rho(xx, zz)), partial, within, varying == 0, len(groups), varying,
                              p_part, p_within, n_perm, int(seed))
