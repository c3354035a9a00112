"""Frame-precision dissociation across training checkpoints.

Per checkpoint c (the last checkpoint F is the reference):
- **attention distance** D_attn(c) = mean over layers l, heads h and valid query rows t of
      JS(A_c[l,h,t,:] || A_F[l,h,t,:]) in bits,   JS(p||q) = 1/2 KL(p||m) + 1/2 KL(q||m), m = (p+q)/2,
  with A the attention pattern averaged over a fixed probe batch ([layers, heads, T, T]). 0 <= JS <= 1 bit.
- **key-frame overlap** K(c) = mean over layers/heads of the subspace overlap between the column spaces of the
  key-frame matrices F_c and F_F ([d, k] each, e.g. W_K^h [d_model, d_head]):
      ``"projection"`` (default): ||Q_a^T Q_b||_F^2 / k   (Q = orthonormal basis of the column space, k = min
      rank), i.e. the mean squared cosine of the principal angles; 1 = same subspace, k/d expected by chance;
      ``"principal_cosine"``: mean cosine of the principal angles (singular values of Q_a^T Q_b).
  Frames with k >= d span the whole space and always overlap 1: use d_head < d_model frames.
- the per-checkpoint MAE and PC1-entropy rho are passed through.

Scale-free dissociation (the statistic the verdict uses). Each trajectory is measured against its own range:
the settling step of a quantity x is the first checkpoint after which its remaining excess |x(s) - x(final)|
stays within 10% of its initial excess |x(s_0) - x(final)| (:func:`geoprobe.stats.settling_step`: it has
covered 90% of its total change). The frame trajectory is the per-sequence attention distance (mean over
probe sequences of the JS between a sequence's attention at checkpoint c and at the final checkpoint), the
precision trajectory the per-sequence entropy MAE. ``settling_ratio`` = precision settling step / frame
settling step (1 = they settle together, as under proportional decay). A dissociation is called only when the
frame settles significantly earlier: the bootstrap over probe sequences (both trajectories recomputed on each
resample) gives a 95% CI of (precision settling index - frame settling index) in checkpoints that lies above 0.

Legacy threshold statistic (kept, labelled ``legacy``): "frame stabilised at step" = the first checkpoint s_i
such that D_attn(s_j) < 0.05 bits for every j >= i, and MAE(s_i) / MAE(final). A fixed JS threshold is not
scale-free: JS and MAE falling proportionally (51% vs 55% of their step-0 values at one checkpoint, 12% vs 10%
at a later one) can still give a "40x" factor, so it is reported only for comparison with older runs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch

from geoprobe.errors import ConfigError, UnknownNameError
from geoprobe.infotheory import LN2
from geoprobe.results import ResultRow
from geoprobe.stats import make_generator, normalised_excess, percentile_interval, settling_step

PROBE = "dynamics"
OVERLAPS = ("projection", "principal_cosine")
DEFAULT_ATTN_THRESHOLD_BITS = 0.05


def js_divergence_bits(p: torch.Tensor, q: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """JS(p||q) = 1/2 sum p log2(p/m) + 1/2 sum q log2(q/m), m = (p + q)/2 (terms with zero mass vanish)."""
    p, q = p.to(torch.float64), q.to(torch.float64)
    m = 0.5 * (p + q)

    def _kl(a: torch.Tensor) -> torch.Tensor:
        pos = a > 0
        ratio = torch.where(pos, a / torch.where(pos, m, torch.ones_like(m)), torch.ones_like(a))
        return (a * torch.log(ratio)).sum(dim)

    return (0.5 * _kl(p) + 0.5 * _kl(q)).clamp_min(0.0) / LN2


def attention_distance(
    pattern: torch.Tensor, reference: torch.Tensor, row_mask: torch.Tensor | None = None
) -> tuple[float, torch.Tensor]:
    """Mean JS divergence (bits) between attention rows of two patterns [layers, heads, T, T].

    ``row_mask``: optional bool [T] of query rows to include (default all). Returns (overall mean, per-layer [L]).
    """
    if pattern.shape != reference.shape:
        raise ConfigError(f"pattern shapes differ: {tuple(pattern.shape)} vs {tuple(reference.shape)}")
    js = js_divergence_bits(pattern, reference)  # [L, H, T]
    if row_mask is not None:
        js = js[..., row_mask.bool()]
    per_layer = js.reshape(js.shape[0], -1).mean(-1)
    return float(js.mean()), per_layer


def _basis(a: torch.Tensor, tol: float = 1e-10) -> torch.Tensor:
    U, S, _ = torch.linalg.svd(a.to(torch.float64), full_matrices=False)
    r = int((S > tol * S.max().clamp_min(1e-300)).sum()) if S.numel() else 0
    return U[:, :r]


def subspace_overlap(a: torch.Tensor, b: torch.Tensor, method: str = "projection") -> float:
    """Overlap of the column spaces of a [d, k_a] and b [d, k_b] (see module docstring); in [0, 1]."""
    if method not in OVERLAPS:
        raise UnknownNameError(f"unknown subspace overlap {method!r}; valid choices: {', '.join(OVERLAPS)}")
    qa, qb = _basis(a), _basis(b)
    k = min(qa.shape[1], qb.shape[1])
    if k == 0:
        return math.nan
    s = torch.linalg.svdvals(qa.T @ qb)[:k].clamp(0.0, 1.0)
    return float((s**2).sum() / k) if method == "projection" else float(s.mean())


def key_frame_overlap(frames: torch.Tensor, reference: torch.Tensor, method: str = "projection") -> float:
    """Mean subspace overlap over leading dims of frame matrices [..., d, k] (e.g. [layers, heads, d_model, d_head])."""
    fa = frames.reshape(-1, *frames.shape[-2:])
    fb = reference.reshape(-1, *reference.shape[-2:])
    return float(sum(subspace_overlap(x, y, method) for x, y in zip(fa, fb, strict=True)) / fa.shape[0])


def frame_precision_table(
    steps: Sequence[int],
    *,
    patterns: Sequence[torch.Tensor] | None = None,
    key_frames: Sequence[torch.Tensor] | None = None,
    mae: Sequence[float] | None = None,
    rho: Sequence[float] | None = None,
    row_mask: torch.Tensor | None = None,
    overlap: str = "projection",
) -> pd.DataFrame:
    """Per-checkpoint table, reference = the last checkpoint.

    Columns: step, attn_js_bits (D_attn), key_frame_overlap (K), mae, rho (NaN for missing inputs).
    """
    n = len(steps)
    if list(steps) != sorted(steps):
        raise ConfigError("checkpoint steps must be increasing")
    for name, seq in (("patterns", patterns), ("key_frames", key_frames), ("mae", mae), ("rho", rho)):
        if seq is not None and len(seq) != n:
            raise ConfigError(f"{name} has {len(seq)} entries for {n} checkpoints")
    nan = [math.nan] * n
    attn = [attention_distance(p, patterns[-1], row_mask)[0] for p in patterns] if patterns is not None else nan
    keys = [key_frame_overlap(f, key_frames[-1], overlap) for f in key_frames] if key_frames is not None else nan
    return pd.DataFrame({
        "step": [int(s) for s in steps],
        "attn_js_bits": attn,
        "key_frame_overlap": keys,
        "mae": [float(x) for x in mae] if mae is not None else nan,
        "rho": [float(x) for x in rho] if rho is not None else nan,
    })


def stabilised_step(
    steps: Sequence[int], values: Sequence[float], threshold: float, direction: str = "below"
) -> int | None:
    """First step s_i with values[j] < threshold (direction "below") or > threshold ("above") for all j >= i;
    None if even the last checkpoint fails."""
    if direction not in ("below", "above"):
        raise UnknownNameError(f"unknown direction {direction!r}; valid choices: above, below")
    found = None
    for s, v in zip(reversed(list(steps)), reversed(list(values)), strict=True):
        ok = v < threshold if direction == "below" else v > threshold
        if not ok:
            break
        found = int(s)
    return found


@dataclass
class DissociationSummary:
    """Frame-precision summary: when the frame stabilised and how much calibration improved afterwards."""

    frame_stable_step: int | None
    threshold_bits: float
    mae_at_stable: float
    mae_final: float
    mae_improvement_factor: float
    rho_at_stable: float
    rho_final: float


def dissociation_summary(table: pd.DataFrame, threshold_bits: float = DEFAULT_ATTN_THRESHOLD_BITS) -> DissociationSummary:
    """Frame-stabilised step from ``attn_js_bits`` < ``threshold_bits`` and the MAE improvement factor
    MAE(stable step) / MAE(final) (> 1 = calibration kept improving after the frame settled)."""
    step = stabilised_step(table["step"].tolist(), table["attn_js_bits"].tolist(), threshold_bits)
    final = table.iloc[-1]
    if step is None:
        return DissociationSummary(None, threshold_bits, math.nan, float(final["mae"]), math.nan, math.nan,
                                   float(final["rho"]))
    at = table.loc[table["step"] == step].iloc[0]
    factor = float(at["mae"]) / float(final["mae"]) if float(final["mae"]) > 0 else math.inf
    return DissociationSummary(step, threshold_bits, float(at["mae"]), float(final["mae"]), factor,
                               float(at["rho"]), float(final["rho"]))


DEFAULT_REMAINING = 0.1


def settling_dissociation(
    steps: Sequence[int], frame: torch.Tensor, precision: torch.Tensor, *, remaining: float = DEFAULT_REMAINING,
    n_boot: int = 1000, seed: int = 0,
) -> dict[str, Any]:
    """Scale-free frame-precision dissociation from per-sequence trajectories (module docstring).

    Args:
        steps: checkpoint steps (increasing).
        frame, precision: [n_sequences, n_checkpoints] per-sequence values (e.g. JS to the final attention, and
            entropy MAE); each trajectory is the mean over sequences.
        remaining: settled = remaining excess within this fraction of the initial excess (0.1: 90% covered).

    Returns a dict: frame_settling_step, precision_settling_step, settling_ratio (precision / frame step;
    inf when the frame settles at step 0), index_difference (precision - frame, in checkpoints) with its
    bootstrap ``index_difference_ci`` and ``p_not_earlier`` (fraction of resamples where the frame does not
    settle earlier), ``dissociation`` (CI above 0), the normalised trajectories, and the settings.
    """
    steps = [int(x) for x in steps]
    f, p = torch.as_tensor(frame, dtype=torch.float64), torch.as_tensor(precision, dtype=torch.float64)
    if f.shape != p.shape or f.ndim != 2 or f.shape[1] != len(steps):
        raise ConfigError(f"frame {tuple(f.shape)} and precision {tuple(p.shape)} must both be "
                          f"[n_sequences, {len(steps)} checkpoints]")
    index = {s: i for i, s in enumerate(steps)}

    def settle(curve: torch.Tensor) -> int | None:
        return settling_step(steps, curve.tolist(), remaining)

    fs, ps = settle(f.mean(0)), settle(p.mean(0))
    n = f.shape[0]
    gen = make_generator(seed)
    diffs = []
    for _ in range(n_boot):
        idx = torch.randint(0, n, (n,), generator=gen)
        a, b = settle(f[idx].mean(0)), settle(p[idx].mean(0))
        diffs.append(math.nan if a is None or b is None else float(index[b] - index[a]))
    d = torch.tensor(diffs, dtype=torch.float64)
    lo, hi = percentile_interval(d) if n_boot > 0 else (math.nan, math.nan)
    fin = d[torch.isfinite(d)]
    p_not = float((fin <= 0).double().mean()) if fin.numel() else math.nan
    diff = float(index[ps] - index[fs]) if fs is not None and ps is not None else math.nan
    if fs is None or ps is None:
        ratio = math.nan
    else:
        ratio = math.inf if fs == 0 and ps > 0 else (1.0 if fs == ps else ps / fs)

    return {"frame_settling_step": fs, "precision_settling_step": ps, "settling_ratio": ratio,
            "index_difference": diff, "index_difference_ci": [lo, hi], "p_not_earlier": p_not,
            "dissociation": bool(lo > 0) if math.isfinite(lo) else False,
            "frame_normalised": normalised_excess(f.mean(0).tolist()),
            "precision_normalised": normalised_excess(p.mean(0).tolist()),
            "remaining_fraction": remaining, "n_sequences": n, "n_boot": n_boot}


def dynamics_rows(table: pd.DataFrame, summary: DissociationSummary | None = None, overlap: str = "projection") -> list[ResultRow]:
    """Rows: per checkpoint (``meta["step"]``) attn_js_bits, key_frame_overlap, mae, rho; plus the summary
    (frame_stable_step, mae_improvement_factor) when given. Variant = the overlap definition."""
    rows = []
    for r in table.to_dict("records"):
        for stat in ("attn_js_bits", "key_frame_overlap", "mae", "rho"):
            if not math.isnan(r[stat]):
                rows.append(ResultRow(PROBE, stat, r[stat], variant=overlap, meta={"step": int(r["step"])}))
    if summary is not None:
        meta = {"threshold_bits": summary.threshold_bits, "mae_at_stable": summary.mae_at_stable,
                "mae_final": summary.mae_final}
        step = math.nan if summary.frame_stable_step is None else summary.frame_stable_step
        rows.append(ResultRow(PROBE, "frame_stable_step", step, variant=overlap, meta=dict(meta)))
        rows.append(ResultRow(PROBE, "mae_improvement_factor", summary.mae_improvement_factor, variant=overlap,
                              meta=dict(meta)))
    return rows


# ------------------------------------------------------------------------------------------ the probe


def _run(state: Any, acts: Any) -> Any:
    """Intervention probe: loads every checkpoint of the run and measures it on the first 128 inputs."""
    from geoprobe.backends import load_model
    from geoprobe.models.checkpoint import list_checkpoints
    from geoprobe.probes.common import calibration_metric, values_at_samples
    from geoprobe.probes.contract import ProbeOptions, ProbeOutput
    from geoprobe.probes.targets import ProbeTarget
    from geoprobe.probes.value_manifold import value_manifold

    t, opts = state.target, state.options
    if t.kind != "tunnel" or t.run_dir is None:
        raise ConfigError("probe 'dynamics' needs a wind-tunnel run folder with training checkpoints")
    ckpts = list_checkpoints(t.run_dir)
    if len(ckpts) < 2:
        raise ConfigError(f"{t.run_dir} has {len(ckpts)} checkpoint(s); dynamics needs at least 2")
    n_probe = min(t.n, 128)
    sub = ProbeTarget(None, "tunnel", t.name, t.tokens[:n_probe], t.attention_mask[:n_probe],
                      t.final_entropy[:n_probe], batch=t.batch.slice(0, n_probe), task=t.task, run_dir=t.run_dir,
                      batch_size=t.batch_size, seed=t.seed)
    steps, patterns, frames, maes, rhos = [], [], [], [], []
    seq_patterns, seq_mae = [], []
    for step, folder in ckpts:
        sub.handle = load_model(folder, backend=t.handle.backend, device=str(t.handle.device))
        L = sub.handle.info.n_layers
        per_seq = attention_patterns(sub)  # [n, L, H, T, T]
        seq_patterns.append(per_seq)
        seq_mae.append(per_sequence_entropy_mae(sub))
        patterns.append(per_seq.sum(0) / n_probe)  # [L, H, T, T]
        frames.append(hypothesis_key_frames(sub.handle, sub.hypothesis_ids))
        maes.append(calibration_metric(sub)["entropy_mae_bits"])
        vals, ent, positions = values_at_samples(sub, [L - 1], ProbeOptions(max_samples=1000, seed=opts.seed))
        rhos.append(value_manifold(vals[L - 1], ent, positions=positions, n_boot=50, null_draws=0,
                                   seed=opts.seed).rho.estimate)
        steps.append(step)
    table = frame_precision_table(steps, patterns=patterns, key_frames=frames, mae=maes, rho=rhos)
    summ = dissociation_summary(table)
    rows = dynamics_rows(table, summ)
    rowmask = sub.attention_mask.bool()  # [n, T] valid query rows per sequence
    js_seq = torch.stack([per_sequence_js(p, seq_patterns[-1], rowmask) for p in seq_patterns], 1)  # [n, C]
    mae_seq = torch.stack(seq_mae, 1)
    diss = settling_dissociation(steps, js_seq, mae_seq, n_boot=opts.n_boot, seed=opts.seed)
    for stat in ("frame_settling_step", "precision_settling_step", "settling_ratio"):
        v = diss[stat]
        rows.append(ResultRow(PROBE, stat, math.nan if v is None else float(v), variant="settling",
                              meta={"remaining_fraction": diss["remaining_fraction"]}))
    rows.append(ResultRow(PROBE, "settling_index_difference", diss["index_difference"], variant="settling",
                          ci_low=diss["index_difference_ci"][0], ci_high=diss["index_difference_ci"][1],
                          meta={"p_not_earlier": diss["p_not_earlier"], "n_boot": diss["n_boot"],
                                "resampled": "probe sequences"}))
    summary = {"checkpoints": len(steps),
               "frame_settling_step": diss["frame_settling_step"],
               "precision_settling_step": diss["precision_settling_step"],
               "settling_ratio": diss["settling_ratio"], "settling_index_difference": diss["index_difference"],
               "settling_index_difference_ci": diss["index_difference_ci"],
               "settling_index_difference_ci_low": diss["index_difference_ci"][0], "p_not_earlier": diss["p_not_earlier"],
               "dissociation": diss["dissociation"], "settled_when_remaining": diss["remaining_fraction"],
               "frame_normalised": diss["frame_normalised"], "precision_normalised": diss["precision_normalised"],
               "legacy_frame_stable_step": summ.frame_stable_step,
               "legacy_attention_threshold_bits": summ.threshold_bits, "legacy_mae_at_stable": summ.mae_at_stable,
               "mae_final": summ.mae_final,
               "legacy_mae_improvement_factor_after_stable": summ.mae_improvement_factor,
               "table": table.to_dict("list")}
    return ProbeOutput(rows, summary, data=table)


def attention_patterns(t: Any) -> torch.Tensor:
    """Every layer's attention pattern per input row of target ``t``: ``[n, layers, heads, T, T]`` (CPU)."""
    from geoprobe.probes.common import collect

    L = t.handle.info.n_layers
    pat = collect(t, "pattern", list(range(L)), lambda a: a.value)
    return torch.stack([pat[layer] for layer in range(L)], 1)


def hypothesis_key_frames(handle: Any, hypothesis_ids: torch.Tensor) -> torch.Tensor:
    """The key frame of a tunnel model: per layer-0 key head, the keys of the hypothesis tokens
    k_t = LN(E_t) W_K^h + b_K^h as columns, ``[heads_kv, d_head, n_hypotheses]`` (float64); their column space
    is the subspace :func:`key_frame_overlap` compares across checkpoints."""
    from geoprobe.probes.common import token_embeddings
    from geoprobe.probes.key_orthogonality import token_keys

    emb = token_embeddings(handle, hypothesis_ids)
    w = handle.attention_weights(0)
    return token_keys(handle.input_norm(0)(emb), w.W_K, w.b_K).transpose(1, 2)  # [Hkv, n_hyp, d] -> [Hkv, d, n_hyp]


def per_sequence_js(pattern: torch.Tensor, reference: torch.Tensor, row_mask: torch.Tensor) -> torch.Tensor:
    """Mean JS (bits) over layers, heads and valid query rows, per sequence: patterns [n, L, H, T, T]."""
    js = js_divergence_bits(pattern, reference)  # [n, L, H, T]
    m = row_mask.to(js.dtype)[:, None, None, :]
    return (js * m).sum((1, 2, 3)) / (m.sum((1, 2, 3)) * js.shape[1] * js.shape[2]).clamp_min(1)


def per_sequence_entropy_mae(t: Any) -> torch.Tensor:
    """Per sequence: mean over its supervised positions of |H(model over hypotheses) - H(Bayes)| in bits."""
    from geoprobe.calibration import readout_log_probs
    from geoprobe.infotheory import entropy_bits

    logp = readout_log_probs(t.logits(), t.batch.readout_ids)
    h = entropy_bits(logp.exp()).double().cpu()
    m = t.batch.loss_mask.double()
    err = (h - t.batch.bayes_entropy.double()).abs() * m
    return err.sum(1) / m.sum(1).clamp_min(1)


def _register() -> None:
    from geoprobe.probes.common import row_figures
    from geoprobe.probes.contract import Probe, register_probe

    register_probe(Probe(
        name=PROBE, run=_run, intervention=True, kinds=("tunnel",), default_for=("tunnel",), figures=row_figures(PROBE),
        claims={"tunnel": "Paper II/replication: frame in place by step ~400-2,500 while MAE improves a further "
                          "~40x (here: settling steps relative to each quantity's own range)"},
        description="frame-precision dissociation over a run's checkpoints (tunnels only)"))


_register()
