"""The scan's causal test: cut the fitted entropy axis inside the forward pass, against matched random controls.

Axis. At each cut layer l the axis u_l is PC1 of the standardised final-token value vectors (all KV heads
concatenated; z = (v - mean_l) / scale_l over the set's prompts), fitted on an unedited pass, exactly as the
value manifold fits it. The readout layer R is the last layer; its own axis u_R (sign fixed so that
rho(z_R . u_R, H) >= 0) is the reference for the downstream correlation.

Edit. ``cut``: z' = z - lam (z . w) w at every position, in the standardised coordinates of layer l, mapped
back v' = mean_l + scale_l z' (lam = 1 and w = u_l for the axis). Cut sets: each cut layer alone, and all cut
layers together (``"all"``: the several-layer cut the paper applies).

Controls. For every cut set, ``n_controls`` directions r ⟂ u_l per layer (seeded Gaussian, Gram-Schmidt
against u_l), each matched in displacement variance to the axis cut: lam_c = sigma(z . u_l) / sigma(z . r)
(:func:`geoprobe.probes.entropy_axis.matched_control_lambda`).

One forward pass. The prompts are replicated once per condition (the axis cut and every control of every cut
set); each row of a batch carries its own condition, so all cuts of a batch run in the same forward pass and
unedited rows stay bit-identical (the edit subtracts an exact zero for them).

Measured per condition, all downstream of the cut (the cut layers lie below R):
- ``axis_entropy_corr``: Spearman(z_R . u_R, H) with z_R the edited run's last-layer final-token values in the
  unedited run's standardisation and H the unedited next-token entropy (bits) at the final token;
- ``nll_bits``: mean next-token negative log-likelihood over the prompts' own tokens (bits per token);
- ``final_entropy_bits``: mean next-token entropy at the final token (bits);
- ``output_entropy_corr``: Spearman(edited final entropy, unedited final entropy).

For each cut set and metric: the axis change (edited - unedited) with a paired bootstrap CI over prompts, the
controls' changes (mean and 5-95% range) and the empirical p-value of |axis change| among |control changes|,
p = (1 + #{c: |change_c| >= |change_axis|}) / (1 + n_controls); ``axis_effect_beyond_controls`` when p <= 0.05
(a valid level-0.05 test for this p-value; with the default 19 controls it means beating every control).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from geoprobe.errors import ConfigError

#: cut layers at these fractions of the depth (clipped below the readout layer)
DEFAULT_DEPTHS = (0.25, 0.5, 0.75)
#: matched random controls per cut set (19 gives the smallest p-value 0.05)
DEFAULT_CONTROLS = 19
#: an axis effect beyond the controls: empirical p <= ALPHA
ALPHA = 0.05
METRICS = ("axis_entropy_corr", "nll_bits", "final_entropy_bits", "output_entropy_corr")
PROBE = "entropy_axis_causal"


def cut_layers(n_layers: int, depths: Sequence[float] = DEFAULT_DEPTHS) -> list[int]:
    """Layers at ``depths`` (fractions of the depth, floor(d * L)), kept below the last (readout) layer."""
    if n_layers < 2:
        return []
    return sorted({min(max(int(math.floor(float(d) * n_layers)), 0), n_layers - 2) for d in depths})


def not_applicable(handle: Any) -> str | None:
    """Why the causal test cannot run on this model (None when it can)."""
    if not handle.info.has_attention:
        return "not applicable: no attention (the entropy axis lives in attention value space)"
    if int(handle.info.n_layers) < 2:
        return "not applicable: needs at least 2 layers (a cut layer below the readout layer)"
    return None


@dataclass
class Axis:
    """PC1 of the standardised final-token values at one layer."""

    layer: int
    u: torch.Tensor        # [D] unit, standardised coordinates
    mean: torch.Tensor     # [D]
    scale: torch.Tensor    # [D]
    pc1_share: float

    def project(self, v: torch.Tensor) -> torch.Tensor:
        return ((v.double() - self.mean) / self.scale) @ self.u

    def z(self, v: torch.Tensor) -> torch.Tensor:
        return (v.double() - self.mean) / self.scale


def fit_axis(layer: int, values: torch.Tensor) -> Axis:
    """PC1 of ``values`` [n, D] standardised (:func:`geoprobe.stats.pca`)."""
    from geoprobe.stats import pca

    p = pca(values.double(), standardized=True, n_components=1)
    return Axis(layer, p.components[:, 0].clone(), p.mean, p.scale, p.pc1)


@dataclass
class Condition:
    """One edited run: ``cuts[layer] = (w [D] unit in standardised coordinates, lam)``."""

    cut_set: str
    direction: str  # "axis" or "control"
    index: int
    cuts: dict[int, tuple[torch.Tensor, float]] = field(default_factory=dict)


def plan_conditions(axes: dict[int, Axis], values: dict[int, torch.Tensor], n_controls: int, seed: int
                    ) -> list[Condition]:
    """The axis cut and ``n_controls`` matched controls for each single cut layer and (with 2+ layers) all."""
    from geoprobe.probes.entropy_axis import matched_control_lambda, orthogonal_control

    layers = sorted(axes)
    sets = [(str(layer), [layer]) for layer in layers] + ([("all", layers)] if len(layers) > 1 else [])
    out = []
    for label, where in sets:
        out.append(Condition(label, "axis", 0, {layer: (axes[layer].u, 1.0) for layer in where}))
        for c in range(n_controls):
            cuts = {}
            for layer in where:
                a = axes[layer]
                r = orthogonal_control(a.u, seed=seed + 7919 * (c + 1) + layer)
                cuts[layer] = (r, matched_control_lambda(a.z(values[layer]), a.u, r))
            out.append(Condition(label, "control", c, cuts))
    return out


class RowwiseCut:
    """The value operator of one layer: row b of the batch gets the cut of condition ``rows[b]``.

    ``w`` [C, D] (zero rows: no edit), ``lam`` [C]; v' = v - scale * lam (z . w) w with z = (v - mean) / scale.
    """

    def __init__(self, axis: Axis, conditions: Sequence[Condition]) -> None:
        d = axis.u.numel()
        self.w = torch.zeros(len(conditions) + 1, d, dtype=torch.float64)  # row 0: the unedited condition
        self.lam = torch.zeros(len(conditions) + 1, dtype=torch.float64)
        for i, c in enumerate(conditions, start=1):
            if axis.layer in c.cuts:
                w, lam = c.cuts[axis.layer]
                self.w[i] = w.double() / w.double().norm()
                self.lam[i] = float(lam)
        self.layer = axis.layer
        self.mean, self.scale = axis.mean.double(), axis.scale.double()
        self.rows: torch.Tensor | None = None

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        assert self.rows is not None
        dev = v.device
        w = self.w[self.rows].to(dev)                      # [B, D]
        lam = self.lam[self.rows].to(dev)                  # [B]
        z = (v.double() - self.mean.to(dev)) / self.scale.to(dev)   # [B, T, D]
        proj = (z * w[:, None, :]).sum(-1)                 # [B, T]
        delta = self.scale.to(dev) * (lam[:, None, None] * proj[..., None] * w[:, None, :])
        return (v.double() - delta).to(v.dtype)


@dataclass
class RowReadout:
    """Per (prompt, condition) row: last-layer final-token values, final entropy, NLL sum and token count."""

    values: torch.Tensor      # [N, D]
    entropy_bits: torch.Tensor  # [N]
    nll_sum_bits: torch.Tensor  # [N]
    n_tokens: torch.Tensor      # [N]
    extra: dict[int, torch.Tensor] = field(default_factory=dict)  # {layer: [N, D]}


def read_rows(handle: Any, ids: list[list[int]], pairs: list[tuple[int, int]], ops: list[RowwiseCut],
              batch_size: int, also: Sequence[int] = ()) -> RowReadout:
    """Run ``pairs`` = (prompt index, condition index; 0 = unedited) ``batch_size`` rows per forward pass,
    with ``ops`` active, and read the metrics' inputs (never more than one batch's logits); ``also``: layers
    whose final-token values are kept too (``RowReadout.extra``)."""
    import contextlib

    from geoprobe.backends.sites import pad_sequences
    from geoprobe.infotheory import entropy_bits

    last = int(handle.info.n_layers) - 1
    order = sorted(range(len(pairs)), key=lambda i: (len(ids[pairs[i][0]]), pairs[i][0], pairs[i][1]))
    vals: list[torch.Tensor | None] = [None] * len(pairs)
    ent = torch.zeros(len(pairs), dtype=torch.float64)
    nll = torch.zeros(len(pairs), dtype=torch.float64)
    cnt = torch.zeros(len(pairs), dtype=torch.float64)
    extra: dict[int, list[torch.Tensor | None]] = {layer: [None] * len(pairs) for layer in also}
    with contextlib.ExitStack() as stack:
        for op in ops:
            stack.enter_context(handle.value_operator(op.layer, op))
        for s in range(0, len(order), max(1, int(batch_size))):
            chunk = order[s:s + batch_size]
            rows = torch.tensor([pairs[i][1] for i in chunk])
            for op in ops:
                op.rows = rows
            tokens, mask = pad_sequences([ids[pairs[i][0]] for i in chunk], handle.pad_token_id, side="left")
            got: dict[str, torch.Tensor] = {}

            def reducer(act: Any, _got=got, _tokens=tokens) -> None:
                fi = act.final_index.to(act.value.device)
                b = torch.arange(act.value.shape[0], device=act.value.device)
                if act.site == "logits":  # one row's log-softmax at a time: never a second [B, T, vocab]
                    m = act.attention_mask.to(act.value.device)
                    keep = (m[:, 1:] * m[:, :-1]).bool()
                    nxt = _tokens[:, 1:].to(act.value.device)
                    ent_r, nll_r = [], []
                    for r in range(act.value.shape[0]):
                        logp = torch.log_softmax(act.value[r].float(), -1)        # [T, vocab]
                        ent_r.append(entropy_bits(logp[fi[r]].exp()))
                        tok = -logp[:-1].gather(-1, nxt[r, :, None]).squeeze(-1) / math.log(2)
                        nll_r.append((tok * keep[r]).sum())
                    _got["ent"] = torch.stack(ent_r).double().cpu()
                    _got["nll"] = torch.stack(nll_r).double().cpu()
                    _got["cnt"] = keep.sum(1).double().cpu()
                else:  # v at the readout layer: [B, T, kv, d] -> final token, heads concatenated
                    v = act.value[b, fi]
                    _got[f"v{act.layer}"] = v.reshape(v.shape[0], -1).double().cpu()

            handle.run(tokens, mask, sites=["v", "logits"], layers=sorted({last, *also}), reducer=reducer)
            for j, i in enumerate(chunk):
                vals[i] = got[f"v{last}"][j]
                ent[i], nll[i], cnt[i] = got["ent"][j], got["nll"][j], got["cnt"][j]
                for layer in also:
                    extra[layer][i] = got[f"v{layer}"][j]
    for op in ops:
        op.rows = None
    return RowReadout(torch.stack(vals), ent, nll, cnt,  # type: ignore[arg-type]
                      {layer: torch.stack(v) for layer, v in extra.items()})  # type: ignore[arg-type]


def _spearman_rows(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Spearman rho along the last axis of [..., n] pairs (average ranks)."""
    from geoprobe.stats import spearman_rho

    return spearman_rho(x, y, dim=-1)


def metric_values(proj: torch.Tensor, h_ref: torch.Tensor, ent: torch.Tensor, nll: torch.Tensor,
                  cnt: torch.Tensor) -> dict[str, float]:
    """The four metrics (module docstring) of one condition from its per-prompt readouts."""
    return {"axis_entropy_corr": float(_spearman_rows(proj, h_ref)),
            "nll_bits": float(nll.sum() / cnt.sum()),
            "final_entropy_bits": float(ent.mean()),
            "output_entropy_corr": float(_spearman_rows(ent, h_ref))}


def paired_change_ci(base: dict[str, torch.Tensor], after: dict[str, torch.Tensor], h_ref: torch.Tensor, *,
                     n_boot: int, seed: int, level: float = 0.95) -> dict[str, list[float] | None]:
    """Percentile bootstrap CI (prompts resampled, both runs paired) of each metric's change."""
    from geoprobe.stats import make_generator, percentile_interval

    n = h_ref.numel()
    g = make_generator(seed)
    idx = torch.randint(0, n, (int(n_boot), n), generator=g)
    hr = h_ref[idx]

    def stats(d: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"axis_entropy_corr": _spearman_rows(d["proj"][idx], hr),
                "nll_bits": d["nll"][idx].sum(1) / d["cnt"][idx].sum(1),
                "final_entropy_bits": d["ent"][idx].mean(1),
                "output_entropy_corr": _spearman_rows(d["ent"][idx], hr)}

    sb, sa = stats(base), stats(after)
    out: dict[str, list[float] | None] = {}
    for k in METRICS:
        lo, hi = percentile_interval(sa[k] - sb[k], level)  # over the finite resamples; NaN when none is
        out[k] = None if math.isnan(lo) else [lo, hi]
    return out


def _exact_p(axis_change: float, control_changes: Sequence[float]) -> float:
    """(1 + #{c: |change_c| >= |axis change|}) / (1 + n) in double precision over the finite controls."""
    fin = [c for c in control_changes if math.isfinite(c)]
    if not fin or not math.isfinite(axis_change):
        return math.nan
    return (1 + sum(abs(c) >= abs(axis_change) for c in fin)) / (1 + len(fin))


def run_causal(handle: Any, texts: Sequence[str], *, n_controls: int = DEFAULT_CONTROLS,
               depths: Sequence[float] = DEFAULT_DEPTHS, layers: Sequence[int] | None = None, n_boot: int = 1000,
               seed: int = 0, batch_size: int = 16, max_tokens: int | None = None) -> dict[str, Any]:
    """The causal test on ``texts`` (module docstring); returns the JSON-ready summary.

    Two passes over the prompts: an unedited one that fits the axes and gives the baseline (``batch_size``
    prompts per forward pass), then every condition's rows mixed, ``batch_size`` rows per forward pass.
    """
    from geoprobe.probes.entropy_axis import control_distribution
    from geoprobe.scan.readout import tokenize_prompts

    why = not_applicable(handle)
    if why is not None:
        return {"applicable": False, "reason": why}
    n_layers = int(handle.info.n_layers)
    last = n_layers - 1
    cut = sorted({int(x) % n_layers for x in layers}) if layers is not None else cut_layers(n_layers, depths)
    if not cut or max(cut) >= last:
        raise ConfigError(f"causal cut layers must lie below the readout layer {last}, got {cut}")
    if int(n_controls) < 1:
        raise ConfigError(f"the causal test needs at least 1 control direction, got {n_controls}")
    texts = list(texts)
    if len(texts) < 3:
        raise ConfigError(f"the causal test needs at least 3 prompts, got {len(texts)}")
    ids = tokenize_prompts(handle, texts, max_tokens=max_tokens)
    n = len(ids)

    # pass 1: unedited; fit the axes at the cut layers and the readout layer
    base = read_rows(handle, ids, [(i, 0) for i in range(n)], [], batch_size, also=cut)
    acts = base.extra
    h_ref = base.entropy_bits
    axes = {layer: fit_axis(layer, acts[layer]) for layer in cut}
    ref = fit_axis(last, base.values)
    proj0 = ref.project(base.values)
    if float(_spearman_rows(proj0, h_ref)) < 0:  # PC sign is arbitrary: fix rho >= 0
        ref.u = -ref.u
        proj0 = -proj0

    # pass 2: every condition, rows mixed in the same forward passes
    conds = plan_conditions(axes, acts, int(n_controls), int(seed))
    ops = [RowwiseCut(axes[layer], conds) for layer in cut]
    pairs = [(i, c + 1) for c in range(len(conds)) for i in range(n)]
    rr = read_rows(handle, ids, pairs, ops, batch_size)

    def block(c: int) -> dict[str, torch.Tensor]:
        sl = slice(c * n, (c + 1) * n)
        return {"proj": ref.project(rr.values[sl]), "ent": rr.entropy_bits[sl], "nll": rr.nll_sum_bits[sl],
                "cnt": rr.n_tokens[sl]}

    b0 = {"proj": proj0, "ent": base.entropy_bits, "nll": base.nll_sum_bits, "cnt": base.n_tokens}
    baseline = metric_values(b0["proj"], h_ref, b0["ent"], b0["nll"], b0["cnt"])
    cut_sets: dict[str, Any] = {}
    for label in dict.fromkeys(c.cut_set for c in conds):
        members = [i for i, c in enumerate(conds) if c.cut_set == label]
        ax = [i for i in members if conds[i].direction == "axis"][0]
        ctl = [i for i in members if conds[i].direction == "control"]
        da = block(ax)
        after = metric_values(da["proj"], h_ref, da["ent"], da["nll"], da["cnt"])
        ctl_after = [metric_values(d["proj"], h_ref, d["ent"], d["nll"], d["cnt"]) for d in map(block, ctl)]
        cis = paired_change_ci(b0, da, h_ref, n_boot=n_boot, seed=seed)
        entry: dict[str, Any] = {"layers": sorted(conds[ax].cuts)}
        for m in METRICS:
            dist = control_distribution(baseline[m], after[m], [x[m] for x in ctl_after])
            dist["p_empirical"] = _exact_p(dist["axis_change"], [x[m] - baseline[m] for x in ctl_after])
            entry[m] = {"baseline": baseline[m], "after": after[m], "change": dist["axis_change"],
                        "change_ci": cis[m], "control_change_mean": dist["control_change_mean"],
                        "control_change_q05": dist["control_change_q05"],
                        "control_change_q95": dist["control_change_q95"], "p_empirical": dist["p_empirical"],
                        "control_changes": [x[m] - baseline[m] for x in ctl_after]}
        b = baseline["nll_bits"]
        entry["calibration_change_percent"] = 100.0 * (after["nll_bits"] - b) / b if b else None
        # the empirical p-value (1 + hits) / (1 + n) is valid at p <= alpha: with 19 controls, beating all gives 0.05
        entry["axis_effect_beyond_controls"] = bool(entry["axis_entropy_corr"]["p_empirical"] <= ALPHA)
        cut_sets[label] = entry
    return {"applicable": True, "cut_layers": cut, "readout_layer": last, "n": n, "n_controls": int(n_controls),
            "n_boot": int(n_boot), "depths": None if layers is not None else list(depths),
            "axes_pc1_share": {str(k): a.pc1_share for k, a in axes.items()}, "readout_pc1_share": ref.pc1_share,
            "baseline": baseline, "cut_sets": cut_sets,
            "operator": "cut v' = mean + scale (z - (z.w) w) at every position, standardised value space",
            "controls": "r orthogonal to the axis (seeded Gaussian), lam = sigma(z.u) / sigma(z.r)",
            "p_value": "(1 + #{|control change| >= |axis change|}) / (1 + n_controls)",
            "forward_rows": n * (len(conds) + 1)}


# ------------------------------------------------------------------------------------------------ outputs


def causal_rows(summary: dict[str, Any], set_name: str) -> Any:
    """Tidy rows (``set`` = the prompt set; probe ``entropy_axis_causal``; layer = the single cut layer, or
    empty for the several-layer cut with ``variant`` ``cut/axis`` or ``cut/controls``)."""
    import pandas as pd

    from geoprobe.results import typed_frame

    recs = []
    for label, e in summary.get("cut_sets", {}).items():
        layer = None if label == "all" else int(label)
        for m in METRICS:
            d = e[m]
            ci = d["change_ci"] or [None, None]
            recs.append({"set": set_name, "probe": PROBE, "layer": layer, "head": None, "position": None,
                         "statistic": f"{m}_change", "value": d["change"], "ci_low": ci[0], "ci_high": ci[1],
                         "variant": "cut/axis", "hook": None,
                         "meta": {"layers": e["layers"], "baseline": d["baseline"], "after": d["after"],
                                  "p_empirical": d["p_empirical"]}})
            recs.append({"set": set_name, "probe": PROBE, "layer": layer, "head": None, "position": None,
                         "statistic": f"{m}_change", "value": d["control_change_mean"],
                         "ci_low": d["control_change_q05"], "ci_high": d["control_change_q95"],
                         "variant": "cut/controls", "hook": None,
                         "meta": {"layers": e["layers"], "n_controls": summary["n_controls"],
                                  "interval": "5-95% of the controls"}})
    df = pd.DataFrame.from_records(recs)
    return df if df.empty else typed_frame(df)


def causal_sentence(summary: dict[str, Any]) -> str:
    """One line: the several-layer cut's change in axis-entropy correlation and calibration vs the controls."""
    if not summary.get("applicable"):
        return f"Causal entropy-axis cut: {summary.get('reason')}."
    e = summary["cut_sets"].get("all") or next(iter(summary["cut_sets"].values()))
    a, c = e["axis_entropy_corr"], e["nll_bits"]
    from geoprobe.report_text import fmt_fixed

    return (f"Causal entropy-axis cut at layers {e['layers']} (set {summary.get('set', '?')}, n={summary['n']}): "
            f"corr(axis, entropy) {fmt_fixed(a['baseline'], 2, True)} -> {fmt_fixed(a['after'], 2, True)} (change "
            f"{fmt_fixed(a['change'], 2, True)}; {summary['n_controls']} matched random controls "
            f"{fmt_fixed(a['control_change_q05'], 2, True)} to {fmt_fixed(a['control_change_q95'], 2, True)}, p = "
            f"{a['p_empirical']:.2f}); NLL {c['baseline']:.3f} -> {c['after']:.3f} bits/token "
            f"({fmt_fixed(e['calibration_change_percent'], 1, True)}%; controls p = {c['p_empirical']:.2f}).")


def causal_figure(summary: dict[str, Any]) -> Any:
    """Per cut set: the axis cut's change in corr(axis, entropy) and in NLL, beside the controls' 5-95% range."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=("change in corr(axis, entropy)",
                                                        "change in NLL (bits/token)"))
    labels = [f"layer {k}" if k != "all" else "all cut layers" for k in summary["cut_sets"]]
    for col, m in ((1, "axis_entropy_corr"), (2, "nll_bits")):
        es = [e[m] for e in summary["cut_sets"].values()]
        fig.add_trace(go.Bar(x=labels, y=[e["change"] for e in es], name="axis cut", marker_color="#d62728",
                             showlegend=col == 1), row=1, col=col)
        fig.add_trace(go.Scatter(
            x=labels, y=[e["control_change_mean"] for e in es], mode="markers", name="controls (mean, 5-95%)",
            marker={"color": "black"}, showlegend=col == 1,
            error_y={"type": "data", "symmetric": False,
                     "array": [e["control_change_q95"] - e["control_change_mean"] for e in es],
                     "arrayminus": [e["control_change_mean"] - e["control_change_q05"] for e in es]}),
            row=1, col=col)
    fig.add_hline(y=0.0, line={"color": "grey", "width": 1})
    fig.update_yaxes(title="after - before (correlation)", exponentformat="e", row=1, col=1)
    fig.update_yaxes(title="after - before (bits/token)", exponentformat="e", row=1, col=2)
    fig.update_xaxes(title="cut at")
    fig.update_layout(template="plotly_white", height=400, legend={"orientation": "h", "y": -0.25})
    return fig


# ------------------------------------------------------------------------------------------------ scan stage


def causal_set(sets: Sequence[str]) -> str:
    """The prompt set the scan cuts on: the domain set when the scan has one, else the mixed set."""
    return "domain" if "domain" in sets else "mixed"


def causal_stage(handle: Any, set_name: str, texts: list[str], opts: Any, sizer: Any, stages: Any
                 ) -> dict[str, Any]:
    """The scan stage ``causal-<set>``: :func:`run_causal` on the set's selected prompts, saved as
    ``causal.json`` in the stage folder (a resumed scan reads it back instead of running it again)."""
    import json

    from geoprobe.io import write_json

    key = f"causal-{set_name}"
    p = stages.path(key)
    if stages.done(key):
        stages.resumed.append(key)
        return json.loads((p / "causal.json").read_text())
    out = sizer.run(lambda bs: run_causal(handle, texts, n_controls=int(opts.causal_controls),
                                          n_boot=int(opts.n_boot), seed=int(opts.seed), batch_size=bs), key)
    out["set"] = set_name
    out["sentence"] = causal_sentence(out)
    if p is not None:
        p.mkdir(parents=True, exist_ok=True)
        write_json(p / "causal.json", out)
        stages.finish(key)
    return out
