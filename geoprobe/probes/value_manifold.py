"""Value manifold (Paper III's default protocol).

Data X [n, D]: one row per sample. Default variants: ``site="values"`` (value vectors, all heads concatenated
into D = heads * d_head; for GQA, ``meta["kv_expanded"]`` says whether KV heads were repeated to query heads;
uniform repetition does not change the PCA ratios below) and ``positions="final"`` (one sample per prompt: the
final token of the last layer). Variants: ``site="residual"`` (residual stream) and
``positions="all_positions"`` (every supervised position of a wind tunnel).

Protocol:
1. standardise each coordinate across samples, z_ij = (x_ij - mean_j) / std_j (constant coordinates -> 0);
2. PCA of Z: eigenvalues lambda_1 >= lambda_2 >= ... of the correlation matrix (thin SVD of Z);
3. PC1 share = lambda_1 / sum lambda, PC1+PC2 = (lambda_1 + lambda_2) / sum lambda,
   participation ratio PR = (sum lambda)^2 / sum lambda^2;
4. rho = Spearman(PC1 score, entropy) (model next-token entropy for LLMs, Bayes entropy for wind tunnels);
   the PC sign is arbitrary, so it is fixed such that rho >= 0 and ``sign_flipped`` records a flip;
5. CIs. rho: percentile bootstrap over (score, entropy) pairs with the PC1 axis held fixed. PC1 and PC1+PC2
   shares re-run steps 1-2 on each resample, with ``share_ci``: ``"jackknife"`` (delete-one jackknife normal
   interval), ``"bootstrap"`` (percentile bootstrap), or ``"auto"`` (default: jackknife when n <= D, else
   bootstrap). Bootstrap resamples duplicate rows, and with n << D duplicated rows inflate the top eigenvalue:
   on isotropic data at n=75, D=1024 the bootstrap interval is about [4.3%, 7.4%] around an estimate of 2.1%,
   i.e. it does not even contain the estimate; the jackknife never duplicates rows. The method used is in meta;
6. null: the same PC1/PC1+PC2/PR statistics on isotropic Gaussian data of the same n and D (Monte Carlo).
7. rho's null: because the PC1 sign is chosen so that rho >= 0, the reported statistic is |rho|, whose
   expectation under no relation is not 0 (about 0.09 at n = 75). ``rho_perm`` permutes the entropies
   (``n_perm`` times, seeded) and recomputes |rho| for each of the first ``k_pcs`` components with the same
   sign rule: a permutation p-value for PC1, and the best component's |rho| with a p-value against the
   permutation distribution of max_j |rho_j| (so picking the best of k is paid for).
8. position control (``all_positions`` with sample positions given): in a task where the Bayes entropy is a
   function of position (the default bijection: H = log2(V - t + 1)), rho(PC1, H) equals rho(PC1, position)
   up to sign and a model that merely encodes position scores high. Reported beside rho: rho(PC1, position);
   the rank partial correlation of PC1 and H given position, r(e_PC1, e_H) with e_v the residual of rank(v)
   after least squares on [1, rank(position)]; the pooled within-position Spearman rho (ranks taken and
   centred inside each position, one Pearson r over all samples); both with permutation p-values that permute
   the entropies within position (the null keeps every position's entropies, so it tests entropy beyond
   position). The partial removes only the part of H that is linear in rank(position): when the mean entropy
   is a non-monotone or curved function of position (bijection with replacement), the partial keeps that
   position effect, its estimate can be far from 0 for a position-only model, and only its p-value (or the
   within-position rho, which removes every position effect) separates entropy from position; and ``entropy_determined_by_position`` (H constant at every position: then
   rho(PC1, H) cannot separate entropy from position, and a stream where they decouple is needed, e.g. the
   bijection with ``replacement=true``, where a repeated key has 0 bits at any position).
9. shares against the model at initialisation: the same config with fresh weights (tunnels: the step-0
   checkpoint) on the same inputs and samples gives values X0; D_k = share_k(X) - share_k(X0) (k = 1: PC1, k = 2:
   PC1+PC2) with a paired bootstrap CI over prompts and a swap p-value
   (:func:`geoprobe.stats.paired_statistic_test`). ``pc1_above_null`` / ``pc12_above_null``: the share is
   above the isotropic null's 95th percentile AND the CI of D_k lies above 0 (initial model missing: the
   isotropic null only, ``share_null_used`` says which). A random network's values are not isotropic (a tiny
   random Llama's PC1+PC2 share, 41% on 24 prompts, lies above the isotropic q95 of 34%), so the isotropic
   null alone passes untrained models.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from geoprobe.errors import ConfigError, UnknownNameError
from geoprobe.results import ResultRow
from geoprobe.stats import (
    AbsRhoPermutation,
    BootstrapCI,
    GroupControlledRho,
    IsotropicNull,
    PCAResult,
    abs_rho_permutation,
    as_float64,
    bootstrap_ci,
    group_controlled_rho,
    isotropic_pca_null,
    jackknife_ci,
    pca,
    spearman_rho,
    spearman_with_ci,
)

PROBE = "value_manifold"
SITES = ("values", "residual")
POSITIONS = ("final", "all_positions")
SHARE_CI = ("auto", "jackknife", "bootstrap")
#: principal components searched for the best |rho| with entropy
N_PCS_SEARCHED = 10


@dataclass
class ValueManifoldResult:
    """Everything the value-manifold protocol measures (shares are fractions in [0, 1])."""

    pc1: BootstrapCI
    pc12: BootstrapCI
    participation_ratio: float
    rho: BootstrapCI
    sign_flipped: bool
    null: IsotropicNull | None
    pca: PCAResult
    n: int
    d: int
    site: str = "values"
    positions: str = "final"
    meta: dict[str, Any] = field(default_factory=dict)
    rho_perm: AbsRhoPermutation | None = None
    position_control: GroupControlledRho | None = None

    @property
    def axis(self) -> torch.Tensor:
        """PC1 direction u [D] in standardised coordinates (sign fixed so rho >= 0)."""
        return self.pca.components[:, 0]

    @property
    def variant(self) -> str:
        return f"{self.site}/{self.positions}"


#: numbers held by one batch of resampled [B, n, D] samples in the PC-share CIs (4 MiB in float64): the batch
#: shrinks as n * D grows, so the CI's peak memory stays flat in the number of samples (results do not depend
#: on the batch size: every resample is reduced on its own)
BOOT_BATCH_NUMBERS = 2**19


def _share_stat(k: int):
    def stat(x: torch.Tensor) -> torch.Tensor:  # x [B, n, D]
        n = x.shape[-2]
        xc = x - x.mean(-2, keepdim=True)
        std = xc.pow(2).sum(-2, keepdim=True).div(n - 1).sqrt()
        z = torch.where(std > 0, xc / torch.where(std > 0, std, torch.ones_like(std)), torch.zeros_like(xc))
        gram = z @ z.transpose(-1, -2) if n <= z.shape[-1] else z.transpose(-1, -2) @ z  # same non-zero spectrum
        lam = torch.linalg.eigvalsh(gram).flip(-1).clamp_min(0.0)
        return lam[..., :k].sum(-1) / lam.sum(-1)

    return stat


def value_manifold(
    x: torch.Tensor,
    entropy: torch.Tensor,
    *,
    site: str = "values",
    positions: str = "final",
    n_boot: int = 1000,
    seed: int = 0,
    null_draws: int = 200,
    kv_expanded: bool | None = None,
    share_ci: str = "auto",
    boot_batch: int | None = None,
    n_perm: int | None = None,
    k_pcs: int = N_PCS_SEARCHED,
    position: torch.Tensor | None = None,
) -> ValueManifoldResult:
    """Run the value-manifold protocol (module docstring) on samples ``x`` [n, D] with ``entropy`` [n] in bits.

    ``share_ci`` picks the CI method of the PC shares ("auto", "jackknife", "bootstrap"; module docstring).
    ``null_draws=0`` skips the isotropic null. ``kv_expanded`` is recorded (None = not applicable / unknown).
    ``n_perm`` (default ``n_boot``; 0 skips) entropy permutations give the |rho| p-values of step 7 over the
    first ``k_pcs`` components. ``position`` [n] (the sample's token position) adds the position control of
    step 8 (``n_perm`` within-position permutations).
    """
    if site not in SITES:
        raise UnknownNameError(f"unknown value-manifold site {site!r}; valid choices: {', '.join(SITES)}")
    if positions not in POSITIONS:
        raise UnknownNameError(f"unknown value-manifold positions {positions!r}; valid choices: {', '.join(POSITIONS)}")
    x = as_float64(x.reshape(x.shape[0], -1))
    h = as_float64(entropy).reshape(-1)
    n, d = x.shape
    if h.shape[0] != n:
        raise ConfigError(f"value_manifold: {n} samples but {h.shape[0]} entropies")
    if n < 3:
        raise ConfigError("value_manifold needs at least 3 samples")
    res = pca(x, standardized=True)
    rho0 = float(spearman_rho(res.scores[:, 0], h))
    flipped = bool(rho0 < 0)
    if flipped:
        res.flip(0)
    rho = spearman_with_ci(res.scores[:, 0], h, n_boot=n_boot, seed=seed)
    if share_ci not in SHARE_CI:
        raise UnknownNameError(f"unknown share CI method {share_ci!r}; valid choices: {', '.join(SHARE_CI)}")
    method = ("jackknife" if n <= d else "bootstrap") if share_ci == "auto" else share_ci
    if boot_batch is None:
        boot_batch = max(1, min(64, int(BOOT_BATCH_NUMBERS // (n * d))))
    if method == "jackknife":
        pc1 = jackknife_ci(x, _share_stat(1), vectorized=True, batch_size=boot_batch)
        pc12 = jackknife_ci(x, _share_stat(2), vectorized=True, batch_size=boot_batch)
    else:
        pc1 = bootstrap_ci(x, _share_stat(1), n_boot=n_boot, seed=seed, vectorized=True, batch_size=boot_batch)
        pc12 = bootstrap_ci(x, _share_stat(2), n_boot=n_boot, seed=seed, vectorized=True, batch_size=boot_batch)
    # report the point estimates from the full-sample SVD (identical up to rounding)
    pc1.estimate, pc12.estimate = res.pc1, res.pc12
    null = isotropic_pca_null(n, d, n_draws=null_draws, seed=seed) if null_draws > 0 else None
    meta: dict[str, Any] = {"n_constant_coords": res.n_constant, "share_ci": method}
    if kv_expanded is not None:
        meta["kv_expanded"] = kv_expanded
    n_perm = n_boot if n_perm is None else n_perm
    k = max(1, min(k_pcs, res.scores.shape[1]))
    perm = abs_rho_permutation(res.scores[:, :k], h, n_perm=n_perm, seed=seed) if n_perm > 0 else None
    ctrl = None
    if position is not None:
        pos = as_float64(position).reshape(-1)
        if pos.shape[0] != n:
            raise ConfigError(f"value_manifold: {n} samples but {pos.shape[0]} positions")
        ctrl = group_controlled_rho(res.scores[:, 0], h, pos, n_perm=n_perm, seed=seed)
    return ValueManifoldResult(pc1, pc12, res.participation_ratio, rho, flipped, null, res, n, d, site, positions,
                               meta, perm, ctrl)


def value_manifold_rows(result: ValueManifoldResult, layer: int | None = None) -> list[ResultRow]:
    """Rows: pc1_share, pc12_share (with CIs, null mean/q95 and excess over the null in ``meta``),
    participation_ratio, spearman_rho_pc1_entropy (with CI and ``sign_flipped``; ``meta["perm_p"]`` its
    permutation p-value) and, with the permutation test, rho_pc1_entropy_perm_p and best_pc_abs_rho_entropy
    (meta: ``pc`` 1-based, ``perm_p`` corrected for the best-of-k choice, ``k_searched``). Variant
    ``"site/positions"``."""
    r = result
    base = dict(r.meta, n=r.n, d=r.d, n_boot=r.rho.n_boot, seed=r.rho.seed)
    null = r.null
    m1 = dict(base)
    m12 = dict(base)
    mpr = dict(base)
    if null is not None:
        m1.update(null_mean=null.pc1_mean, null_q95=null.pc1_q95, excess_over_null=r.pc1.estimate - null.pc1_mean,
                  null_draws=null.n_draws)
        m12.update(null_mean=null.pc12_mean, null_q95=null.pc12_q95, excess_over_null=r.pc12.estimate - null.pc12_mean)
        mpr.update(null_mean=null.pr_mean)
    v = r.variant
    mrho = dict(base, sign_flipped=r.sign_flipped, sign_convention="PC1 sign fixed so rho >= 0")
    extra: list[ResultRow] = []
    rp = r.rho_perm
    if rp is not None:
        mrho.update(perm_p=rp.p_each[0], null_mean_abs_rho=rp.null_mean_abs_rho, n_perm=rp.n_perm)
        pm = dict(base, n_perm=rp.n_perm, null_mean_abs_rho=rp.null_mean_abs_rho,
                  test="entropies permuted; |rho| with the same sign rule")
        extra = [
            ResultRow(PROBE, "rho_pc1_entropy_perm_p", rp.p_each[0], layer=layer, variant=v, meta=pm),
            ResultRow(PROBE, "best_pc_abs_rho_entropy", rp.best_abs_rho, layer=layer, variant=v,
                      meta=dict(pm, pc=rp.best + 1, perm_p=rp.p_best, k_searched=len(rp.abs_rho),
                                abs_rho_by_pc=rp.abs_rho, perm_p_by_pc=rp.p_each,
                                correction="p against max over the k components of the permuted |rho|")),
        ]
    pc = r.position_control
    if pc is not None:
        cm = dict(base, n_perm=pc.n_perm, n_positions=pc.n_groups, n_positions_entropy_varies=pc.n_groups_varying,
                  entropy_determined_by_position=pc.y_determined_by_group,
                  test="entropies permuted within position; two-sided on |statistic|")
        extra += [
            ResultRow(PROBE, "spearman_rho_pc1_position", pc.rho_xz, layer=layer, variant=v, meta=dict(cm)),
            ResultRow(PROBE, "partial_rho_pc1_entropy_given_position", pc.partial, layer=layer, variant=v,
                      meta=dict(cm, perm_p=pc.partial_p,
                                formula="Pearson r of rank residuals after least squares on [1, rank(position)]")),
            ResultRow(PROBE, "within_position_rho_pc1_entropy", pc.within, layer=layer, variant=v,
                      meta=dict(cm, perm_p=pc.within_p,
                                formula="Pearson r of ranks taken and centred within each position, pooled")),
        ]
    return [
        ResultRow(PROBE, "pc1_share", r.pc1.estimate, layer=layer, ci_low=r.pc1.low, ci_high=r.pc1.high, variant=v, meta=m1),
        ResultRow(PROBE, "pc12_share", r.pc12.estimate, layer=layer, ci_low=r.pc12.low, ci_high=r.pc12.high,
                  variant=v, meta=m12),
        ResultRow(PROBE, "participation_ratio", r.participation_ratio, layer=layer, variant=v, meta=mpr),
        ResultRow(PROBE, "spearman_rho_pc1_entropy", r.rho.estimate, layer=layer, ci_low=r.rho.low, ci_high=r.rho.high,
                  variant=v, meta=mrho),
        *extra,
    ]


def passes_manifold_criterion(result: ValueManifoldResult, threshold: float = 0.30) -> bool:
    """Paper III criterion: PC1 share or PC1+PC2 share > 30%."""
    return bool(result.pc1.estimate > threshold or result.pc12.estimate > threshold) and not math.isnan(result.pc1.estimate)


# ------------------------------------------------------------------------------------------ the probe

#: the value-manifold variants' sites
MANIFOLD_SITES = {"values": "v", "residual": "resid_post"}


@dataclass
class ValueSpace:
    """What value_manifold leaves for later probes (entropy_axis): per-layer samples and their PCA fits."""

    site: str
    positions: str
    values: dict[int, torch.Tensor]
    entropy: torch.Tensor
    results: dict[int, ValueManifoldResult]


def _site(options: Any) -> str:
    if options.manifold_site not in MANIFOLD_SITES:
        raise ConfigError(f"unknown value-manifold site {options.manifold_site!r}; valid choices: "
                          f"{', '.join(MANIFOLD_SITES)}")
    return MANIFOLD_SITES[options.manifold_site]


def manifold_needs(state: Any, options: Any) -> list[Any]:
    """The activations the value manifold reads (also declared by entropy_axis)."""
    from geoprobe.probes.common import default_layers, manifold_positions
    from geoprobe.probes.contract import Need

    positions = manifold_positions(state.target, options)
    return [Need(_site(options), tuple(default_layers(state.target, options)),
                 "samples" if positions == "all_positions" else "final")]


def fit_value_space(state: Any, acts: Any, options: Any) -> tuple[list[ResultRow], ValueSpace]:
    """PCA of the collected value (or residual) vectors per layer, with rho against the reference entropy."""
    from geoprobe.probes.common import default_layers, manifold_positions, sample_entropy

    t = state.target
    positions = manifold_positions(t, options)
    layers = default_layers(t, options)
    sel = "samples" if positions == "all_positions" else "final"
    raw = acts.get(_site(options), sel)
    vals = {layer: raw[layer].reshape(raw[layer].shape[0], -1) for layer in layers}
    ent = sample_entropy(t, positions, state.samples if sel == "samples" else None)
    position = state.samples[1] if sel == "samples" else None
    if float(ent.std()) == 0.0:
        raise ConfigError("the reference entropy is constant over the samples, so rho is undefined "
                          "(e.g. the bijection's final key always has 1 bit): use the all_positions variant")
    rows, results = [], {}
    for layer in layers:
        res = value_manifold(vals[layer], ent, site=options.manifold_site, positions=positions,
                             n_boot=options.n_boot, seed=options.seed,
                             kv_expanded=False if options.manifold_site == "values" else None, position=position)
        results[layer] = res
        rows += value_manifold_rows(res, layer=layer)
    site_name = _site(options)
    for r in rows:
        r.meta["site_name"] = site_name
    return rows, ValueSpace(options.manifold_site, positions, vals, ent, results)


def _needs(state: Any) -> list[Any]:
    if state.options.manifold_site == "values" and not state.target.handle.info.has_attention:
        raise ConfigError(f"probe {PROBE!r} on attention values needs attention heads; "
                          f"{state.target.name} ({state.target.handle.info.family}) has none (use "
                          "manifold_site='residual', the residual stream)")
    return manifold_needs(state, state.options)


def _run(state: Any, acts: Any) -> Any:
    from geoprobe.probes.contract import ProbeOutput

    opts = state.options
    rows, space = fit_value_space(state, acts, opts)
    layers = sorted(space.results)
    last = space.results[layers[-1]]
    summary = {
        "layer": layers[-1], "site": opts.manifold_site, "positions": space.positions, "n": last.n, "d": last.d,
        "pc1_share": last.pc1.estimate, "pc12_share": last.pc12.estimate,
        "participation_ratio": last.participation_ratio,
        "spearman_rho_pc1_entropy": last.rho.estimate, "rho_ci": [last.rho.low, last.rho.high],
        "pc1_sign_flipped": last.sign_flipped,
        "isotropic_null_pc1": last.null.pc1_mean if last.null else None,
        "isotropic_null_pc1_q95": last.null.pc1_q95 if last.null else None,
        "isotropic_null_pc12": last.null.pc12_mean if last.null else None,
        "isotropic_null_pc12_q95": last.null.pc12_q95 if last.null else None,
        "pc1_above_isotropic_q95": (bool(last.pc1.estimate > last.null.pc1_q95) if last.null else None),
        "kv_heads_expanded": False if opts.manifold_site == "values" else None,
    }
    rp = last.rho_perm
    if rp is not None:
        summary.update({
            "rho_pc1_perm_p": rp.p_each[0], "rho_null_mean_abs": rp.null_mean_abs_rho, "rho_n_perm": rp.n_perm,
            "rho_pc1_significant": bool(rp.p_each[0] < 0.05),
            "best_pc": rp.best + 1, "best_pc_abs_rho": rp.best_abs_rho, "best_pc_perm_p": rp.p_best,
            "best_pc_significant": bool(rp.p_best < 0.05), "pcs_searched": len(rp.abs_rho),
            "abs_rho_by_pc": rp.abs_rho,
        })
    summary.update(position_control_summary(last))
    summary.update(_initial_model_summary(state, opts, layers[-1], space.entropy, last,
                                          x_trained=space.values[layers[-1]]))
    from geoprobe.plots import PCA_TABLE, pca_table

    tables = {PCA_TABLE: pca_table(last.pca.scores[:, :2], space.entropy, layer=layers[-1])}
    return ProbeOutput(rows, summary, data=space, tables=tables)


#: the stream to use when the probe's entropy is a function of position
DECOUPLED_STREAM = ("bijection with replacement=true: a key seen before has 0 bits and an unseen one log2(unused "
                    "values) bits, so the Bayes entropy varies at a fixed position")


def position_control_summary(res: ValueManifoldResult) -> dict[str, Any]:
    """Summary keys of the position control (module docstring, step 8); empty without sample positions."""
    pc = res.position_control
    if pc is None:
        return {}
    out: dict[str, Any] = {
        "spearman_rho_pc1_position": pc.rho_xz,
        "partial_rho_pc1_entropy_given_position": pc.partial, "partial_rho_perm_p": pc.partial_p,
        "within_position_rho_pc1_entropy": pc.within, "within_position_rho_perm_p": pc.within_p,
        "entropy_determined_by_position": pc.y_determined_by_group,
    }
    if pc.y_determined_by_group:
        out["position_confound_note"] = ("the Bayes entropy is constant at every position, so rho(PC1, H) cannot "
                                         "separate entropy from position; use " + DECOUPLED_STREAM)
    return out


def share_null_summary(x: torch.Tensor | None, x0: torch.Tensor | None, trained: ValueManifoldResult, *,
                       n_boot: int, seed: int) -> dict[str, Any]:
    """``pc1_minus_init`` / ``pc12_minus_init`` (paired tests, None without ``x0``), ``pc1_above_null`` /
    ``pc12_above_null`` and ``share_null_used`` (module docstring, step 9). ``x``, ``x0``: [n, D] values of the
    model and of the initial model on the same inputs."""
    from geoprobe.stats import paired_statistic_test

    out: dict[str, Any] = {}
    iso = trained.null
    used = [] if iso is None else ["isotropic q95"]
    if x0 is not None and x is not None:
        used.append("initial model (paired CI)")
    for name, k, est, q95 in (("pc1", 1, trained.pc1.estimate, iso.pc1_q95 if iso else None),
                              ("pc12", 2, trained.pc12.estimate, iso.pc12_q95 if iso else None)):
        test = (paired_statistic_test(x, x0, _share_stat(k), n_boot=n_boot, seed=seed)
                if x0 is not None and x is not None else None)
        out[f"{name}_minus_init"] = test.to_dict() if test is not None else None
        ok = [est > q95] if q95 is not None else []
        if test is not None:
            ok.append(test.significant)
        out[f"{name}_above_null"] = bool(ok) and all(ok)
    out["share_null_used"] = " and ".join(used) or "none"
    return out


def _initial_model_summary(state: Any, opts: Any, layer: int, entropy: torch.Tensor,
                           trained: ValueManifoldResult, x_trained: torch.Tensor | None = None) -> dict[str, Any]:
    """The same protocol on the model at initialisation (same inputs, samples and reference entropies):
    ``init_pc1_share``, ``init_pc12_share``, ``init_abs_rho_pc1_entropy``, ``init_rho_pc1_perm_p``, and
    ``rho_minus_init_ci``: a bootstrap CI over samples of |rho_trained| - |rho_init| (PC axes held fixed), and
    with sample positions ``init_spearman_rho_pc1_position``, ``init_partial_rho_pc1_entropy_given_position``,
    ``init_within_position_rho_pc1_entropy`` (+ ``init_within_position_rho_perm_p``).
    Empty when no initial model is available."""
    from geoprobe.probes.suite import init_collected

    acts0 = init_collected(state, PROBE)
    if acts0 is None:
        return {"init_pc1_share": None, "init_pc12_share": None, "init_abs_rho_pc1_entropy": None,
                **share_null_summary(None, None, trained, n_boot=opts.n_boot, seed=opts.seed)}
    (need,) = _init_needs(state)
    raw = acts0.get(need.site, need.positions)[layer]
    vals = {layer: raw.reshape(raw.shape[0], -1)}
    position = state.samples[1] if trained.position_control is not None else None  # the same samples
    res0 = value_manifold(vals[layer], entropy, site=opts.manifold_site, positions=trained.positions,
                          n_boot=opts.n_boot, seed=opts.seed, null_draws=0, position=position)
    a, b = trained.pca.scores[:, 0], res0.pca.scores[:, 0]
    diff = bootstrap_ci((a, b, entropy.double()), lambda x, y, e: spearman_rho(x, e, dim=-1).abs()
                        - spearman_rho(y, e, dim=-1).abs(), n_boot=opts.n_boot, seed=opts.seed, vectorized=True)
    return {"init_pc1_share": res0.pc1.estimate, "init_pc12_share": res0.pc12.estimate,
            "init_abs_rho_pc1_entropy": abs(res0.rho.estimate),
            "init_rho_pc1_perm_p": res0.rho_perm.p_each[0] if res0.rho_perm else None,
            "rho_minus_init": diff.estimate, "rho_minus_init_ci": [diff.low, diff.high],
            "rho_above_init": bool(diff.low > 0),
            **share_null_summary(x_trained, vals[layer], trained, n_boot=opts.n_boot, seed=opts.seed),
            **{f"init_{k}": v for k, v in position_control_summary(res0).items()
               if k in ("spearman_rho_pc1_position", "partial_rho_pc1_entropy_given_position",
                        "within_position_rho_pc1_entropy", "within_position_rho_perm_p")}}


def _init_needs(state: Any) -> list[Any]:
    """What the initial-model summary reads from the run's pass over the model at initialisation: the manifold
    site at the last measured layer, at the same positions (final token, or the same supervised samples)."""
    from geoprobe.probes.contract import Need

    (need,) = manifold_needs(state, state.options)
    return [Need(need.site, need.layers[-1:], need.positions)]


def _register() -> None:
    from geoprobe.probes.common import row_figures
    from geoprobe.probes.contract import Probe, register_probe

    register_probe(Probe(
        name=PROBE, run=_run, needs=_needs, init_needs=_init_needs, default_for=("tunnel", "llm"),
        figures=row_figures(PROBE),
        needs_attention=False,  # the residual-stream variant runs on attention-free models; _needs checks values
        claims={"tunnel": "Paper I: low-dimensional value manifold parameterised by posterior entropy",
                "llm": "Paper III: PC1 or PC1+PC2 > 30% (Pythia-410M 99.7%, Phi-2 60.6%, Llama-3.2-1B 51.4%)"},
        description="PCA of standardised value vectors; PC1, PC1+PC2, participation ratio, rho(PC1, H)"))


_register()
