"""Linear probes: where in depth is the posterior linearly readable? (scikit-learn does the fitting.)

For each layer and site, with activations ``X [n, D]`` (tunnels: supervised positions; LLMs: final tokens):

- **entropy (ridge)**: ``StandardScaler + RidgeCV`` (alpha chosen by efficient leave-one-out inside each training
  fold) predicts the reference entropy ``H`` (Bayes entropy for tunnels, next-token entropy for LLMs);
  reported as cross-validated ``R^2 = 1 - sum (H - H_hat)^2 / sum (H - mean H)^2`` on held-out folds.
- **posterior (logistic, tunnels)**: multinomial ``LogisticRegression`` fitted to the *soft* targets: every
  sample is repeated once per hypothesis k with weight ``p_k`` (so the fit minimises the cross-entropy
  ``-sum_k p_k log q_k``, whose optimum is q = p); reported as held-out ``KL(p || q)`` in bits, beside the KL of
  predicting the training folds' mean posterior (``kl_prior_bits``).
- **control**: the same pipeline on labels shuffled across samples (``n_shuffles`` permutations): what the probe
  reads from nothing. Readability = score vs its shuffled control.

Folds are grouped by input sequence (``GroupKFold``), so positions of one sequence never sit on both sides.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from geoprobe.errors import ConfigError
from geoprobe.results import ResultRow

PROBE = "linear_probe"
ALPHAS = tuple(float(a) for a in np.logspace(-3, 4, 15))
LOG2 = math.log(2.0)


@dataclass(frozen=True)
class Readout:
    """A cross-validated score with its shuffled-label control (mean and best over permutations: max R^2,
    min KL)."""

    score: float
    control_mean: float
    control_best: float
    baseline: float | None = None  # logistic: KL of the training folds' mean posterior


def _cv(groups: np.ndarray, folds: int) -> Any:
    from sklearn.model_selection import GroupKFold

    k = min(folds, len(np.unique(groups)))
    if k < 2:
        raise ConfigError(f"linear probes need at least 2 groups (sequences) for cross-validation, got {k}")
    return GroupKFold(n_splits=k)


def _np(x: Any) -> np.ndarray:
    return x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float64)


def ridge_r2(X: Any, y: Any, groups: Any = None, *, folds: int = 5) -> float:
    """Cross-validated R^2 of ``StandardScaler + RidgeCV`` predicting ``y [n]`` from ``X [n, D]``."""
    from sklearn.linear_model import RidgeCV
    from sklearn.metrics import r2_score
    from sklearn.model_selection import cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = _np(X), _np(y)
    g = np.arange(len(y)) if groups is None else _np(groups)
    model = make_pipeline(StandardScaler(), RidgeCV(alphas=ALPHAS))
    pred = cross_val_predict(model, X, y, groups=g, cv=_cv(g, folds))
    return float(r2_score(y, pred))


def posterior_kl_bits(X: Any, P: Any, groups: Any = None, *, folds: int = 5, C: float = 1.0
                      ) -> tuple[float, float]:
    """Held-out mean ``KL(p || q)`` (bits) of a soft-label multinomial logistic readout ``q`` of the posterior
    ``P [n, K]`` from ``X [n, D]``, and the same KL for the training folds' mean posterior (the prior)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, P = _np(X), _np(P)
    n, K = P.shape
    g = np.arange(n) if groups is None else _np(groups)
    eps = 1e-12
    kl_sum, prior_sum = 0.0, 0.0
    for train, test in _cv(g, folds).split(X, groups=g):
        w = P[train].reshape(-1)
        keep = w > 0
        Xr = np.repeat(X[train], K, axis=0)[keep]
        yr = np.tile(np.arange(K), len(train))[keep]
        Pt = P[test]
        if len(np.unique(yr)) < 2:  # one hypothesis only: the readout is that hypothesis
            Q = np.zeros_like(Pt)
            Q[:, yr[0]] = 1.0
        else:
            clf = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000))
            clf.fit(Xr, yr, logisticregression__sample_weight=w[keep])
            Q = np.zeros_like(Pt)
            Q[:, clf.classes_] = clf.predict_proba(X[test])
        prior = P[train].mean(0, keepdims=True)
        logp = np.log(np.clip(Pt, eps, None))
        kl_sum += float(np.sum(Pt * (logp - np.log(np.clip(Q, eps, None)))))
        prior_sum += float(np.sum(Pt * (logp - np.log(np.clip(prior, eps, None)))))
    return kl_sum / n / LOG2, prior_sum / n / LOG2


def _shuffled(fn: Any, X: np.ndarray, y: np.ndarray, groups: np.ndarray | None, n_shuffles: int, seed: int
              ) -> list[float]:
    rng = np.random.default_rng(seed)
    return [fn(X, y[rng.permutation(len(y))], groups) for _ in range(n_shuffles)]


def entropy_readout(X: Any, entropy: Any, groups: Any = None, *, folds: int = 5, n_shuffles: int = 5,
                    seed: int = 0) -> Readout:
    """Ridge R^2 of the entropy, with its shuffled-label control."""
    X, y = _np(X), _np(entropy)
    g = None if groups is None else _np(groups)
    score = ridge_r2(X, y, g, folds=folds)
    ctrl = _shuffled(lambda a, b, c: ridge_r2(a, b, c, folds=folds), X, y, g, n_shuffles, seed)
    return Readout(score, float(np.mean(ctrl)), float(np.max(ctrl)))


def posterior_readout(X: Any, posterior: Any, groups: Any = None, *, folds: int = 5, n_shuffles: int = 5,
                      seed: int = 0) -> Readout:
    """Logistic KL (bits; lower = more readable), with its shuffled-label control and the prior's KL."""
    X, P = _np(X), _np(posterior)
    g = None if groups is None else _np(groups)
    kl, prior = posterior_kl_bits(X, P, g, folds=folds)
    ctrl = _shuffled(lambda a, b, c: posterior_kl_bits(a, b, c, folds=folds)[0], X, P, g, n_shuffles, seed)
    return Readout(kl, float(np.mean(ctrl)), float(np.min(ctrl)), baseline=prior)


def readout_rows(readout: Readout, *, layer: int, site: str, target: str, meta: dict[str, Any]) -> list[ResultRow]:
    """Rows ``r2``/``kl_bits`` and their ``*_shuffled`` controls (variant ``ridge/entropy`` or
    ``logistic/posterior``)."""
    if target == "entropy":
        variant, stat = "ridge/entropy", "r2"
        extra = {"control_best": readout.control_best}
    else:
        variant, stat = "logistic/posterior", "kl_bits"
        extra = {"control_best": readout.control_best, "kl_prior_bits": readout.baseline}
    base = dict(meta, site_name=site, site=site)
    return [ResultRow(PROBE, stat, readout.score, layer=layer, variant=variant, meta=dict(base, **extra)),
            ResultRow(PROBE, f"{stat}_shuffled", readout.control_mean, layer=layer, variant=variant,
                      meta=dict(base, control="labels shuffled across samples"))]


# ------------------------------------------------------------------------------------------ the probe

SITES = ("resid_post", "v")


def _positions(state: Any) -> str:
    return "samples" if state.kind == "tunnel" else "final"


def _needs(state: Any) -> list[Any]:
    from geoprobe.probes.contract import Need

    bad = [s for s in state.options.linear_sites if s not in SITES]
    if bad:
        raise ConfigError(f"linear_probe sites {bad}; valid choices: {', '.join(SITES)}")
    return [Need(s, state.all_layers, _positions(state)) for s in state.options.linear_sites]


def _run(state: Any, acts: Any) -> Any:
    from geoprobe.probes.contract import ProbeOutput

    t, opts = state.target, state.options
    if t.kind == "tunnel":
        rows_idx, pos = state.samples
        entropy = t.batch.bayes_entropy[rows_idx, pos].float()
        posterior = t.batch.target_probs[rows_idx, pos].double()
        groups = rows_idx
    else:
        entropy, posterior, groups = t.final_entropy.float(), None, None
    meta = {"folds": opts.cv_folds, "n_shuffles": opts.n_shuffles, "seed": opts.seed, "n": int(entropy.numel())}
    rows: list[ResultRow] = []
    summary: dict[str, Any] = {"n": meta["n"], "sites": list(opts.linear_sites)}
    for site in opts.linear_sites:
        got = acts.get(site, _positions(state))
        r2, r2c, kl, klc = [], [], [], []
        for layer in sorted(got):
            X = got[layer].reshape(got[layer].shape[0], -1)
            ent = entropy_readout(X, entropy, groups, folds=opts.cv_folds, n_shuffles=opts.n_shuffles,
                                  seed=opts.seed + layer)
            rows += readout_rows(ent, layer=layer, site=site, target="entropy", meta=meta)
            r2.append(ent.score)
            r2c.append(ent.control_mean)
            if posterior is not None:
                post = posterior_readout(X, posterior, groups, folds=opts.cv_folds, n_shuffles=opts.n_shuffles,
                                         seed=opts.seed + layer)
                rows += readout_rows(post, layer=layer, site=site, target="posterior", meta=meta)
                kl.append(post.score)
                klc.append(post.control_mean)
        summary[f"{site}_entropy_r2_by_layer"] = r2
        summary[f"{site}_entropy_r2_shuffled_by_layer"] = r2c
        summary[f"{site}_best_entropy_layer"] = int(np.argmax(r2))
        if kl:
            summary[f"{site}_posterior_kl_bits_by_layer"] = kl
            summary[f"{site}_posterior_kl_bits_shuffled_by_layer"] = klc
    return ProbeOutput(rows, summary)


def _register() -> None:
    from geoprobe.probes.contract import Probe, register_probe

    register_probe(Probe(
        name=PROBE, run=_run, needs=_needs, needs_attention=False,
        claims={"tunnel": "Paper I: the posterior is encoded in the representation (read out linearly here)",
                "llm": "Paper III: the residual stream carries the model's own next-token entropy"},
        description="cross-validated ridge (entropy) / logistic (posterior) readouts per layer vs shuffled labels"))


_register()
