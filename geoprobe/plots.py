"""Plotly figures built from result tables and metric dictionaries (never from models)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots


def calibration_curve_figure(per_position: dict[str, list[float]], title: str = "") -> go.Figure:
    """Per-position mean entropy of the model vs the exact Bayes posterior (bits), with the mean |error|."""
    x = [s + 1 for s in per_position["step"]]
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=x, y=per_position["model_entropy_bits"], name="model",
                             mode="lines+markers", line={"color": "#d62728", "width": 4}, opacity=0.7))
    fig.add_trace(go.Scatter(x=x, y=per_position["bayes_entropy_bits"], name="Bayes posterior",
                             mode="lines+markers", line={"color": "black", "dash": "dash"}))
    fig.add_trace(go.Bar(x=x, y=per_position["entropy_abs_error_bits"], name="mean |H_model − H_Bayes|",
                         yaxis="y2", marker={"color": "rgba(31,119,180,0.35)"}))
    fig.update_layout(
        title=title, xaxis_title="supervised position (1-based)",
        yaxis={"title": "entropy (bits)", "rangemode": "tozero"},
        # tickmode auto: plotly >= 6 otherwise syncs an overlaying axis's ticks to the left grid (0.257, 0.513 ...)
        yaxis2={"title": "absolute error (bits)", "overlaying": "y", "side": "right", "rangemode": "tozero",
                "tickmode": "auto", "showgrid": False},
        legend={"orientation": "h", "y": -0.2}, template="plotly_white", height=460,
    )
    return fig


def length_generalisation_figure(results: dict[str, Any], param: str) -> go.Figure:
    """Entropy MAE (bits) vs evaluated length (e.g. HMM K)."""
    xs, ys = [], []
    for length, res in sorted(results.items(), key=lambda kv: int(kv[0])):
        if "entropy_mae_bits" in res:
            xs.append(int(length))
            ys.append(res["entropy_mae_bits"])
    fig = go.Figure(go.Scatter(x=xs, y=ys, mode="lines+markers", name="entropy MAE"))
    fig.update_layout(title=f"Length generalisation: entropy MAE vs {param}", xaxis_title=param,
                      yaxis_title="entropy MAE (bits)", template="plotly_white", height=360)
    return fig


def training_curve_figure(log: list[dict[str, Any]]) -> go.Figure:
    """Evaluation entropy MAE along training (log scale), from the run's log.jsonl records."""
    pts = [r for r in log if "entropy_mae_bits" in r]
    fig = go.Figure(go.Scatter(x=[r["step"] for r in pts], y=[r["entropy_mae_bits"] for r in pts],
                               mode="lines+markers", name="entropy MAE (eval stream)"))
    fig.update_layout(title="Calibration during training", xaxis_title="step", yaxis_title="entropy MAE (bits)",
                      yaxis_type="log", template="plotly_white", height=360)
    return fig


# ---------------------------------------------------------------------------------------------- probe figures
#
# Every probe figure is built from the tidy result frame (``rows_to_frame(rows, include_meta=True)``, or the same
# frame read back from ``results.csv``) plus, where a figure shows samples rather than statistics, a named table
# (``Report.tables``). So a saved Report rebuilds the same figures (see :func:`probe_figures`).


def _frame(rows: Any) -> pd.DataFrame:
    from geoprobe.results import rows_to_frame

    if isinstance(rows, pd.DataFrame):
        return rows
    return rows_to_frame(list(rows), include_meta=True)


def _num(values: Any) -> list[float | None]:
    """Plain Python floats (None for missing) so a figure's data does not depend on the column dtype."""
    out = []
    for v in values:
        out.append(None if v is None or pd.isna(v) else float(v))
    return out


def _ints(values: Any) -> list[int | None]:
    return [None if v is None or pd.isna(v) else int(v) for v in values]


def _meta(df: pd.DataFrame, key: str) -> list[Any]:
    if "meta" not in df:
        return [None] * len(df)
    return [(m or {}).get(key) if isinstance(m, dict) else None for m in df["meta"]]


def _layer_axis(layers: list[int], max_ticks: int = 16) -> dict[str, Any]:
    """An axis with integer layer ticks (never -0.5 / 1.5): every layer, or every 2nd / 5th / 10th ... layer
    when there are more than ``max_ticks`` (so the labels of a 30-layer model do not collide)."""
    layers = sorted(layers)
    step = next((s for s in (1, 2, 5, 10, 20, 50, 100) if len(layers) <= max_ticks * s), 200)
    ticks = layers if step == 1 else [x for x in layers if x % step == 0]
    return {"title": "layer", "tickmode": "array", "tickvals": ticks, "ticktext": [str(x) for x in ticks]}


def orthogonality_figure(rows: Any) -> go.Figure:
    """Mean |off-diagonal cos| of keys per layer for every definition, with the random (and init) baselines."""
    df = _frame(rows)
    df = df[(df["probe"] == "key_orthogonality") & df["head"].isna()]
    fig = go.Figure()
    for i, (variant, g) in enumerate(df.groupby("variant", sort=True)):
        g = g.sort_values("layer")
        color = _PALETTE[i % len(_PALETTE)]
        x = _ints(g["layer"])
        fig.add_trace(go.Scatter(x=x, y=_num(g["value"]), mode="lines+markers", name=str(variant),
                                 line={"color": color}))
        fig.add_trace(go.Scatter(x=x, y=_num(_meta(g, "baseline_random")), mode="lines",
                                 name=f"{variant}: random baseline", line={"dash": "dot", "color": color}))
        init = _meta(g, "baseline_init")
        if any(v is not None for v in init):
            fig.add_trace(go.Scatter(x=x, y=_num(init), mode="lines", name=f"{variant}: at initialisation",
                                     line={"dash": "dash", "color": color}))
    layers = sorted({int(v) for v in df["layer"].dropna()})
    fig.update_layout(xaxis=_layer_axis(layers), yaxis_title="mean |off-diagonal cos| (lower = more orthogonal)",
                      template="plotly_white", height=420)
    return fig


_FOCUSING_NULL_LABELS = {"init": "fresh weights", "shuffled": "shuffled context"}


def _focusing_points(frame: pd.DataFrame) -> list[tuple[str, float, float | None, float | None]]:
    """(label, focusing %, CI low, CI high) of the model and of each null the probe measured (the nulls'
    focusing is in the ``focusing_minus_null`` rows' meta); empty when the rows have no focusing."""
    own = frame[frame["statistic"] == "focusing_percent"]
    if not len(own) or pd.isna(own["value"].iloc[0]):
        return []
    r = own.iloc[0]
    out = [("this model", float(r["value"]), *_num([r["ci_low"], r["ci_high"]]))]
    nulls = frame[frame["statistic"] == "focusing_minus_null"]
    for variant, pct, ci in zip(nulls["variant"], _meta(nulls, "null_focusing_percent"),
                                _meta(nulls, "null_focusing_ci"), strict=True):
        if pct is not None:
            out.append((_FOCUSING_NULL_LABELS.get(str(variant), str(variant)), float(pct), *_num(ci or [None, None])))
    return out


def attention_entropy_figure(rows: Any) -> go.Figure:
    """Final-row attention entropy (mean over heads and prompts) per layer with bootstrap 95% CIs (left) and,
    where the probe measured it, the focusing 100 (H_first - H_last) / H_first of the model beside its nulls
    (fresh weights, shuffled context) with their 95% CIs (right)."""
    frame = _frame(rows)
    df = frame[(frame["statistic"] == "attention_entropy_bits") & frame["head"].isna()].sort_values("layer")
    value, lo, hi = _num(df["value"]), _num(df["ci_low"]), _num(df["ci_high"])
    err = {"type": "data", "symmetric": False,
           "array": [None if h is None else h - v for v, h in zip(value, hi, strict=True)],
           "arrayminus": [None if lo_ is None else v - lo_ for v, lo_ in zip(value, lo, strict=True)]}
    points = _focusing_points(frame[frame["probe"] == "attention_focusing"]) if "probe" in frame else []
    if points:
        fig = make_subplots(rows=1, cols=2, column_widths=[0.7, 0.3], horizontal_spacing=0.12,
                            subplot_titles=("attention entropy per layer", "focusing vs nulls"))
    else:
        fig = go.Figure()
    trace = go.Scatter(x=_ints(df["layer"]), y=value, error_y=err, mode="lines+markers", name="attention entropy",
                       showlegend=False)
    fig.add_trace(trace, **({"row": 1, "col": 1} if points else {}))
    fig.update_xaxes(**_layer_axis(_ints(df["layer"])), **({"row": 1, "col": 1} if points else {}))
    fig.update_yaxes(title="attention entropy at the final query (bits)", **({"row": 1, "col": 1} if points else {}))
    if points:
        labels, ys = [p[0] for p in points], [p[1] for p in points]
        fig.add_trace(go.Scatter(
            x=labels, y=ys, mode="markers", showlegend=False, name="focusing",
            marker={"size": 10, "color": ["#d62728"] + ["#7f7f7f"] * (len(points) - 1)},
            error_y={"type": "data", "symmetric": False,
                     "array": [None if p[3] is None else p[3] - p[1] for p in points],
                     "arrayminus": [None if p[2] is None else p[1] - p[2] for p in points]},
            hovertemplate="%{x}: %{y:.1f}%<extra></extra>"), row=1, col=2)
        fig.add_hline(y=0.0, line={"color": "grey", "width": 1}, row=1, col=2)
        fig.update_yaxes(title="focusing (%), 95% CI", ticksuffix="%", row=1, col=2)
    fig.update_layout(template="plotly_white", height=380)
    return fig


def value_manifold_depth_figure(rows: Any) -> go.Figure:
    """Per layer: PC1 and PC1+PC2 shares of the value vectors (left) and Spearman rho(PC1, entropy) (right),
    with bootstrap 95% CIs; the dotted line is the 30% criterion."""
    df = _frame(rows)
    df = df[df["probe"] == "value_manifold"]
    fig = make_subplots(rows=1, cols=2, subplot_titles=("variance share", "rho(PC1, entropy)"),
                        horizontal_spacing=0.12)
    colors = {"pc1_share": _PALETTE[0], "pc12_share": _PALETTE[1], "spearman_rho_pc1_entropy": _PALETTE[2]}
    for col, stat, name in ((1, "pc1_share", "PC1 share"), (1, "pc12_share", "PC1+PC2 share"),
                            (2, "spearman_rho_pc1_entropy", "Spearman rho")):
        g = df[df["statistic"] == stat].sort_values("layer")
        v, lo, hi = _num(g["value"]), _num(g["ci_low"]), _num(g["ci_high"])
        err = {"type": "data", "symmetric": False,
               "array": [None if h is None else h - x for x, h in zip(v, hi, strict=True)],
               "arrayminus": [None if lo_ is None else x - lo_ for x, lo_ in zip(v, lo, strict=True)]}
        fig.add_trace(go.Scatter(x=_ints(g["layer"]), y=v, error_y=err, mode="lines+markers", name=name,
                                 line={"color": colors[stat]}), row=1, col=col)
        null = _num(_meta(g, "null_mean"))
        if col == 1 and any(x is not None for x in null):  # the same statistic of isotropic Gaussian data
            fig.add_trace(go.Scatter(x=_ints(g["layer"]), y=null, mode="lines", name=f"{name}: isotropic null",
                                     line={"color": colors[stat], "dash": "dot", "width": 1.5}), row=1, col=col)
    fig.add_hline(y=0.30, line={"dash": "dash", "color": "grey"}, row=1, col=1, annotation_text="30% criterion",
                  annotation_position="top left", annotation_font_size=10)
    fig.add_hline(y=0.0, line={"color": "grey", "width": 1}, row=1, col=2)
    layers = sorted({int(x) for x in df["layer"].dropna()})
    fig.update_xaxes(**_layer_axis(layers, max_ticks=12))
    fig.update_yaxes(range=[0, 1.02], title="share of variance", tickformat=".0%", row=1, col=1)
    fig.update_yaxes(range=[-1.02, 1.02], title="rho", row=1, col=2)
    fig.update_layout(template="plotly_white", height=380, legend={"orientation": "h", "y": -0.25})
    return fig


def pca_scatter_figure(table: pd.DataFrame, title: str = "") -> go.Figure:
    """PC1/PC2 coordinates of the samples coloured by their reference entropy (bits).

    ``table`` has columns ``pc1``, ``pc2`` and ``entropy_bits`` (one row per sample; see
    :func:`pca_table`). Drawn as SVG points (no WebGL needed)."""
    fig = go.Figure(go.Scatter(x=_num(table["pc1"]), y=_num(table["pc2"]), mode="markers",
                               marker={"color": _num(table["entropy_bits"]), "colorscale": "Viridis", "size": 5,
                                       "colorbar": {"title": "entropy (bits)"}}, name="samples"))
    fig.update_layout(title=title, xaxis_title="PC1", yaxis_title="PC2", template="plotly_white", height=460)
    return fig


def pca_table(scores: Any, entropy: Any, layer: int, max_points: int = 1500) -> pd.DataFrame:
    """The first ``max_points`` samples' PC1/PC2 coordinates and reference entropies as a table (float64)."""
    s = scores.detach().cpu().double().numpy() if hasattr(scores, "detach") else np.asarray(scores, float)
    e = entropy.detach().cpu().double().numpy() if hasattr(entropy, "detach") else np.asarray(entropy, float)
    n = min(len(s), max_points)
    pc2 = s[:n, 1] if s.shape[1] > 1 else np.zeros(n)
    return pd.DataFrame({"layer": [int(layer)] * n, "pc1": s[:n, 0].astype(float), "pc2": pc2.astype(float),
                         "entropy_bits": e[:n].astype(float)})


def qk_heatmap_figure(rows: Any) -> go.Figure:
    """Mean cos(final query, key) per layer and key position (relative to the final token)."""
    df = _frame(rows)
    hm = df[(df["probe"] == "qk_alignment") & (df["statistic"] == "mean_cos")].copy()
    hm["layer"] = hm["layer"].astype(int)
    hm["position"] = hm["position"].astype(int)
    pivot = hm.pivot_table(index="layer", columns="position", values="value").sort_index().sort_index(axis=1)
    layers = [int(x) for x in pivot.index]
    positions = [int(x) for x in pivot.columns]
    z = [[None if pd.isna(v) else float(v) for v in row] for row in pivot.to_numpy()]
    fig = go.Figure(go.Heatmap(z=z, x=positions, y=layers, colorscale="RdBu", zmid=0,
                               colorbar={"title": "cos"}))
    step = 1 if len(positions) <= 24 else 5
    fig.update_layout(xaxis={"title": "key position (0 = final token, -1 = the one before, ...)", "dtick": step,
                             "tickformat": "d"},
                      yaxis=_layer_axis(layers), template="plotly_white", height=min(720, 160 + 60 * len(layers)))
    return fig


def _ablation_label(layer: int, head: int | None, kind: str) -> str:
    return f"L{layer} H{head}" if head is not None else f"L{layer} {kind}"


def ablation_figure(rows: Any, top: int = 40) -> go.Figure:
    """Ablation effects as ratio ablated / baseline of the run's metric, largest first, on a linear axis.

    Bars start at 1 (no effect) and end at the ratio, so harmful ablations point up and helpful ones down;
    the dashed line marks ratio 1."""
    df = _frame(rows)
    t = df[(df["probe"] == "ablation") & (df["statistic"] == "ratio")].copy()
    t = t.sort_values("value", ascending=False, kind="stable").head(top)
    metric = next((m for m in _meta(t, "metric") if m), "metric")
    fig = go.Figure()
    kinds = list(dict.fromkeys(t["variant"]))
    for i, kind in enumerate(kinds):
        g = t[t["variant"] == kind]
        labels = [_ablation_label(int(r.layer), None if pd.isna(r.head) else int(r.head), kind)
                  for r in g.itertuples()]
        ratio = _num(g["value"])
        fig.add_trace(go.Bar(x=labels, y=[r - 1.0 for r in ratio], base=[1.0] * len(ratio), name=str(kind),
                             customdata=ratio, marker={"color": _PALETTE[i % len(_PALETTE)]},
                             hovertemplate="%{x}: ratio %{customdata:.4g}<extra></extra>"))
    order = [_ablation_label(int(r.layer), None if pd.isna(r.head) else int(r.head), r.variant)
             for r in t.itertuples()]
    fig.add_hline(y=1.0, line={"dash": "dash", "color": "black"}, annotation_text="no effect (ratio 1)",
                  annotation_position="top right")
    fig.update_layout(yaxis_title=f"{metric}: ablated / baseline", template="plotly_white", height=420,
                      xaxis={"categoryorder": "array", "categoryarray": order, "title": "ablated unit"},
                      barmode="overlay", legend={"title": "ablation"})
    return fig


def _calibration_statistic(stats: list[str]) -> str:
    for s in stats:
        if not s.startswith("axis_entropy_corr"):
            return s
    return stats[0]


def entropy_axis_figure(rows: Any) -> go.Figure:
    """Entropy-axis interventions: relative change of the calibration metric (left) and the axis-entropy
    correlation at the last layer after each intervention (right), along the axis vs an orthogonal random
    control direction."""
    df = _frame(rows)
    df = df[df["probe"] == "entropy_axis"].copy()
    df["op"] = [v.split("/")[0] for v in df["variant"]]
    df["direction"] = [v.split("/")[1] if "/" in v else "axis" for v in df["variant"]]
    df["where"] = ["all layers" if pd.isna(x) else f"L{int(x)}" for x in df["layer"]]
    df["label"] = df["op"] + " @ " + df["where"]
    order = list(dict.fromkeys(df["label"]))
    cal = _calibration_statistic(list(dict.fromkeys(df["statistic"])))
    corr = [s for s in dict.fromkeys(df["statistic"]) if s.startswith("axis_entropy_corr")]
    cols = 2 if corr else 1
    titles = [f"{cal}: relative change (%)"] + ([f"{corr[0]} after the intervention"] if corr else [])
    fig = make_subplots(rows=1, cols=cols, subplot_titles=titles, horizontal_spacing=0.1)
    colors = {"axis": "#d62728", "control": "#7f7f7f"}
    for direction in ("axis", "control"):
        g = df[(df["statistic"] == cal) & (df["direction"] == direction)]
        rel = [None if v is None else 100.0 * v for v in _num(_meta(g, "relative_change"))]
        fig.add_trace(go.Bar(x=list(g["label"]), y=rel, name=f"along the {direction}" if direction == "axis"
                             else "orthogonal control", marker={"color": colors[direction]},
                             legendgroup=direction), row=1, col=1)
        if corr:
            h = df[(df["statistic"] == corr[0]) & (df["direction"] == direction)]
            fig.add_trace(go.Bar(x=list(h["label"]), y=_num(h["value"]), marker={"color": colors[direction]},
                                 legendgroup=direction, showlegend=False), row=1, col=2)
    fig.add_hline(y=0.0, line={"color": "black", "width": 1}, row=1, col=1)
    if corr:
        base = next((b for b in _meta(df[df["statistic"] == corr[0]], "baseline") if b is not None), None)
        if base is not None:
            fig.add_hline(y=float(base), line={"dash": "dash", "color": "black"}, row=1, col=2,
                          annotation_text="before", annotation_position="top right")
    fig.update_xaxes(categoryorder="array", categoryarray=order, tickangle=-40)
    fig.update_layout(barmode="group", template="plotly_white", height=480, margin={"t": 110},
                      legend={"orientation": "h", "x": 0, "y": 1.0, "yanchor": "top", "yref": "container"})
    return fig


def _step_axis(steps: list[int]) -> tuple[list[float], dict[str, Any]]:
    """Log-axis positions for training steps; step 0 (initialisation) sits half a decade-step left of the
    first positive step and is labelled "0 (init)"."""
    positive = sorted(s for s in steps if s > 0)
    if not positive:
        return [float(s) for s in steps], {"title": "training step", "type": "linear"}
    zero_at = positive[0] / 2.0
    xs = [zero_at if s == 0 else float(s) for s in steps]
    lo, hi = int(np.floor(np.log10(positive[0]))), int(np.ceil(np.log10(positive[-1])))
    ticks = [10.0 ** k for k in range(lo, hi + 1) if positive[0] <= 10.0 ** k <= positive[-1]]
    if len(ticks) < 2:
        ticks = [float(s) for s in positive]
    labels = [f"{int(t):,}" for t in ticks]
    if 0 in steps:
        ticks, labels = [zero_at] + ticks, ["0 (init)"] + labels
    return xs, {"title": "training step (log scale; step 0 = initialisation)", "type": "log",
                "tickmode": "array", "tickvals": ticks, "ticktext": labels}


def dynamics_figure(rows: Any) -> go.Figure:
    """Per checkpoint: attention distance to the final checkpoint (JS, bits; top, log axis) and the entropy
    MAE (bits; bottom, log axis) with the key-frame overlap with the final checkpoint (bottom, right axis).

    The final checkpoint is the reference, so its JS is 0 and is not drawn on the log axis; the dotted line is
    the stabilisation threshold and the vertical line the step the frame stabilised."""
    df = _frame(rows)
    df = df[df["probe"] == "dynamics"].copy()
    per = df[df["statistic"].isin(["attn_js_bits", "key_frame_overlap", "mae", "rho"])].copy()
    per["step"] = [int(m["step"]) for m in per["meta"]]
    steps = sorted(set(per["step"]))
    xs, xaxis = _step_axis(steps)
    pos = dict(zip(steps, xs, strict=True))
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08,
                        specs=[[{}], [{"secondary_y": True}]],
                        subplot_titles=("attention JS divergence to the final checkpoint (bits)",
                                        "calibration and key frame"))

    def series(stat: str) -> tuple[list[float], list[float | None]]:
        g = per[per["statistic"] == stat].sort_values("step")
        return [pos[s] for s in g["step"]], _num(g["value"])

    x, y = series("attn_js_bits")
    keep = [(a, b) for a, b in zip(x, y, strict=True) if b is not None and b > 0]
    fig.add_trace(go.Scatter(x=[a for a, _ in keep], y=[b for _, b in keep], mode="lines+markers",
                             name="attention JS to final (bits)", line={"color": "#1f77b4"}), row=1, col=1)
    x, y = series("mae")
    fig.add_trace(go.Scatter(x=x, y=y, mode="lines+markers", name="entropy MAE (bits)",
                             line={"color": "#d62728"}), row=2, col=1, secondary_y=False)
    x, y = series("key_frame_overlap")
    if x:
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines+markers", name="key-frame overlap with final",
                                 line={"color": "#2ca02c", "dash": "dot"}), row=2, col=1, secondary_y=True)
    stable = df[df["statistic"] == "frame_stable_step"]
    if len(stable):
        thr = _meta(stable, "threshold_bits")[0]
        if thr is not None and float(thr) > 0:
            fig.add_hline(y=float(thr), line={"dash": "dot", "color": "grey"}, row=1, col=1)
            # the label placed by hand: on a log axis an annotation's y is log10(value), which add_hline's own
            # annotation does not apply (its label would sit far from the line)
            fig.add_annotation(x=0, xref="x domain", y=float(np.log10(float(thr))), yref="y", showarrow=False,
                               text=f"threshold {float(thr):g} bits", xanchor="left", yanchor="top",
                               font={"size": 11, "color": "grey"})
        s = stable["value"].iloc[0]
        if not pd.isna(s) and int(s) in pos:
            fig.add_vline(x=pos[int(s)], line={"dash": "dash", "color": "black"})
    fig.update_xaxes(**xaxis, row=2, col=1)
    fig.update_xaxes(type=xaxis["type"], tickmode=xaxis.get("tickmode"), tickvals=xaxis.get("tickvals"),
                     ticktext=xaxis.get("ticktext"), row=1, col=1)
    fig.update_yaxes(type="log", title="JS (bits)", exponentformat="power", row=1, col=1)
    fig.update_yaxes(type="log", title="entropy MAE (bits)", exponentformat="power", row=2, col=1, secondary_y=False)
    fig.update_yaxes(range=[0, 1.05], title="overlap", tickmode="array", tickvals=[0, 0.25, 0.5, 0.75, 1.0],
                     showgrid=False, row=2, col=1, secondary_y=True)
    fig.update_layout(template="plotly_white", height=560, legend={"orientation": "h", "y": -0.12})
    return fig


def routing_scatter_figure(table: pd.DataFrame) -> go.Figure:
    """dL/ds from autograd (x) vs the routing law a_ij (b_ij - E_a[b]) (y) at sampled entries; the known
    answer is the diagonal."""
    x, y = _num(table["autograd"]), _num(table["routing_law"])
    lim = max([abs(v) for v in x + y if v is not None] + [1e-12])
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[-lim, lim], y=[-lim, lim], mode="lines", name="y = x",
                             line={"dash": "dash", "color": "grey"}))
    for i, (layer, g) in enumerate(table.groupby("layer", sort=True)):
        fig.add_trace(go.Scatter(x=_num(g["autograd"]), y=_num(g["routing_law"]), mode="markers",
                                 name=f"layer {int(layer)}", marker={"size": 4, "color": _PALETTE[i % len(_PALETTE)]}))
    fig.update_layout(xaxis_title="dL/ds by autograd through the model", yaxis_title="routing law a(b - E_a[b])",
                      template="plotly_white", height=420)
    return fig


def routing_error_figure(rows: Any) -> go.Figure:
    """Per head: max |formula - autograd| / max |autograd| for dL/ds and dL/dv (log axis; an exact 0 is drawn
    at the axis floor 1e-18)."""
    df = _frame(rows)
    df = df[df["probe"] == "routing_law"]
    fig = go.Figure()
    for i, stat in enumerate(("relative_error_scores", "relative_error_values")):
        g = df[df["statistic"] == stat].sort_values(["layer", "head"])
        labels = [f"L{int(a)} H{int(b)}" for a, b in zip(g["layer"], g["head"], strict=True)]
        vals = [max(v, 1e-18) for v in _num(g["value"])]
        fig.add_trace(go.Bar(x=labels, y=vals, name="dL/ds (routing law)" if i == 0 else "dL/dv (value gradient)",
                             marker={"color": _PALETTE[i]}))
    fig.update_layout(barmode="group", yaxis={"type": "log", "title": "relative error (float64)"},
                      xaxis_title="head", template="plotly_white", height=380)
    return fig


def value_step_figure(rows: Any) -> go.Figure:
    """Actual loss change of a value step over its first-order prediction -lr ||dL/dv||^2, per lr; the
    known answer is 1 as lr -> 0."""
    df = _frame(rows)
    df = df[df["probe"] == "value_step"]
    lrs = _num(_meta(df, "lr"))
    fig = go.Figure(go.Scatter(x=lrs, y=_num(df["value"]), mode="lines+markers", name="actual / predicted"))
    fig.add_hline(y=1.0, line={"dash": "dash", "color": "black"}, annotation_text="first order (1)")
    fig.update_layout(xaxis={"type": "log", "title": "value step size lr"},
                      yaxis_title="actual / predicted loss change", template="plotly_white", height=360)
    return fig


def em_schedule_figure(rows: Any) -> go.Figure:
    """Training loss (left) and held-out entropy MAE (right, log axis) per step for each value-lr multiplier."""
    df = _frame(rows)
    df = df[df["probe"] == "em_schedule"].copy()
    df["step"] = [int(m["step"]) for m in df["meta"]]
    fig = make_subplots(rows=1, cols=2, subplot_titles=("training loss (nats)", "held-out entropy MAE (bits)"))
    for i, (variant, g) in enumerate(df.groupby("variant", sort=False)):
        color = _PALETTE[i % len(_PALETTE)]
        for col, stat in ((1, "loss"), (2, "entropy_mae_bits")):
            h = g[g["statistic"] == stat]
            fig.add_trace(go.Scatter(x=list(h["step"]), y=_num(h["value"]), mode="lines", name=str(variant),
                                     line={"color": color}, legendgroup=str(variant), showlegend=col == 1),
                          row=1, col=col)
    fig.update_xaxes(title="step")
    fig.update_yaxes(type="log", row=1, col=2)
    fig.update_layout(template="plotly_white", height=380)
    return fig


def em_vs_sgd_figure(frame: pd.DataFrame, tables: dict[str, pd.DataFrame]) -> go.Figure | None:
    """Training loss per step for each arm (seed mean bold, seeds thin) with the target (the SGD arm's mean final
    loss) as a dashed line (left), and the held-out entropy MAE to the Bayes predictive per arm (right)."""
    curves, calib = tables.get(EM_CURVES_TABLE), tables.get(EM_CALIBRATION_TABLE)
    if curves is None or not len(curves):
        return None
    fig = make_subplots(rows=1, cols=2, subplot_titles=("training loss (nats)",
                                                        "held-out entropy MAE to the Bayes predictive (bits)"))
    arms = list(dict.fromkeys(curves["arm"]))
    for i, arm in enumerate(arms):
        color = _PALETTE[i % len(_PALETTE)]
        g = curves[curves["arm"] == arm]
        for seed, h in g.groupby("seed", sort=False):
            fig.add_trace(go.Scatter(x=list(h["step"]), y=_num(h["loss"]), mode="lines", opacity=0.25,
                                     line={"color": color, "width": 1}, showlegend=False, legendgroup=arm,
                                     name=f"{arm} seed {seed}"), row=1, col=1)
        mean = g.groupby("step", sort=True)["loss"].mean()
        fig.add_trace(go.Scatter(x=list(mean.index), y=_num(mean.values), mode="lines", name=arm,
                                 line={"color": color, "width": 3, "dash": "dot" if arm == "control" else None},
                                 legendgroup=arm), row=1, col=1)
        if calib is not None and len(calib):
            c = calib[calib["arm"] == arm].groupby("step", sort=True)["entropy_mae_bits"].mean()
            fig.add_trace(go.Scatter(x=list(c.index), y=_num(c.values), mode="lines+markers", name=arm,
                                     line={"color": color, "dash": "dot" if arm == "control" else None},
                                     legendgroup=arm, showlegend=False), row=1, col=2)
    ref = curves[curves["arm"] == arms[0]]
    target = float(ref[ref["step"] == ref["step"].max()]["loss"].mean())
    steps = [int(curves["step"].min()), int(curves["step"].max())]
    fig.add_trace(go.Scatter(x=steps, y=[target, target], mode="lines", line={"dash": "dash", "color": "#444"},
                             name=f"target: {arms[0]} mean final loss ({target:.4f} nats)"), row=1, col=1)
    fig.update_xaxes(title="step")
    fig.update_yaxes(title="loss (nats)", row=1, col=1)
    fig.update_yaxes(title="entropy MAE (bits)", row=1, col=2)
    fig.update_layout(template="plotly_white", height=420, legend={"orientation": "h", "y": -0.22})
    return fig


def routing_dynamics_figure(rows: Any, probe: str = "routing_dynamics") -> go.Figure:
    """Per training step: agreement between the actual update and the routing law's prediction (solid; mean over
    heads where there are several), and the same statistic with a shuffled pairing (dashed, the null)."""
    df = _frame(rows)
    df = df[df["probe"] == probe].copy()
    df["step"] = _meta(df, "step")
    fig = go.Figure()
    for i, (stat, g) in enumerate(df.groupby("statistic", sort=False)):
        color = _PALETTE[i % len(_PALETTE)]
        for variant, h in g.groupby("variant", sort=False):
            h = h.groupby("step", sort=True, as_index=False)["value"].mean()
            xs, axis = _step_axis([int(v) for v in h["step"]])
            shown = str(stat).replace("_", " ") + (" (shuffled pairing: null)" if variant == "shuffled" else "")
            fig.add_trace(go.Scatter(x=xs, y=_num(h["value"]), mode="lines+markers",
                                     name=shown, legendgroup=stat,
                                     line={"color": color, "dash": "dash" if variant == "shuffled" else None},
                                     # a statistic that sits on another (two cosines of 1) stays visible
                                     marker={"symbol": _SYMBOLS[i % len(_SYMBOLS)], "size": max(5, 11 - 2 * i)}))
            fig.update_xaxes(**axis)
    fig.update_yaxes(title="cosine / correlation (actual vs predicted update)", range=[-0.2, 1.05])
    fig.update_layout(template="plotly_white", height=420)
    return fig


#: tables of the SGD-vs-EM comparison (geoprobe.gradients.em_vs_sgd)
EM_CURVES_TABLE = "em_vs_sgd_curves"
EM_CALIBRATION_TABLE = "em_vs_sgd_calibration"


def _routing_scatter_from_tables(frame: pd.DataFrame, tables: dict[str, pd.DataFrame]) -> go.Figure | None:
    table = tables.get(ROUTING_TABLE)
    return None if table is None or not len(table) else routing_scatter_figure(table)


ROUTING_TABLE = "routing_law_sample"

_SYMBOLS = ["circle", "square", "diamond", "cross", "triangle-up", "x"]
_PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]

#: table names (in ``Report.tables``) that figures read
PCA_TABLE = "value_manifold_pca"


def _pca_from_tables(frame: pd.DataFrame, tables: dict[str, pd.DataFrame]) -> go.Figure | None:
    table = tables.get(PCA_TABLE)
    if table is None or not len(table):
        return None
    return pca_scatter_figure(table, title=f"Layer {int(table['layer'].iloc[0])} values: PC1 vs PC2")


#: probe -> [(figure title, builder(frame, tables) -> Figure or None)]; titles are the Report's section names
PROBE_FIGURES: dict[str, list[tuple[str, Callable[[pd.DataFrame, dict[str, pd.DataFrame]], Any]]]] = {
    "key_orthogonality": [("Key orthogonality per layer", lambda f, t: orthogonality_figure(f))],
    "qk_alignment": [("Query-key alignment (final query vs keys)", lambda f, t: qk_heatmap_figure(f))],
    "attention_focusing": [("Attention entropy vs depth", lambda f, t: attention_entropy_figure(f))],
    "value_manifold": [("Value manifold across depth", lambda f, t: value_manifold_depth_figure(f)),
                       ("Value manifold (PCA coloured by entropy)", _pca_from_tables)],
    "ablation": [("Ablations (ratio to baseline)", lambda f, t: ablation_figure(f))],
    "entropy_axis": [("Entropy-axis interventions", lambda f, t: entropy_axis_figure(f))],
    "dynamics": [("Frame-precision dissociation", lambda f, t: dynamics_figure(f))],
    "routing_law": [("Routing law: autograd vs formula", _routing_scatter_from_tables),
                    ("Routing law: relative error per head", lambda f, t: routing_error_figure(f))],
    "value_step": [("Value step: actual vs first-order loss change", lambda f, t: value_step_figure(f))],
    "em_schedule": [("EM-like schedule: value learning rate x m", lambda f, t: em_schedule_figure(f))],
    "em_vs_sgd": [("SGD vs EM-like: loss per step and held-out calibration", em_vs_sgd_figure)],
    "routing_dynamics": [("Routing law during training: actual vs predicted updates",
                          lambda f, t: routing_dynamics_figure(f))],
    "routing_checkpoints": [("Routing law over checkpoints: actual change vs the law's direction (mean over heads)",
                             lambda f, t: routing_dynamics_figure(f, "routing_checkpoints"))],
}


def probe_figures(rows: Any, tables: dict[str, pd.DataFrame] | None = None,
                  probes: list[str] | None = None) -> dict[str, go.Figure]:
    """The figures of every probe present in ``rows`` (or of ``probes``), in the order of ``PROBE_FIGURES``,
    built only from the result frame and ``tables``."""
    frame = _frame(rows)
    present = set(frame["probe"]) if len(frame) else set()
    wanted = [p for p in PROBE_FIGURES if p in present and (probes is None or p in probes)]
    out: dict[str, go.Figure] = {}
    for probe in wanted:
        for title, build in PROBE_FIGURES[probe]:
            try:
                fig = build(frame, tables or {})
            except (KeyError, TypeError, ValueError) as exc:  # rows without the fields (an older results.csv)
                logging.getLogger("geoprobe").warning("figure %r cannot be drawn from these rows: %s", title, exc)
                continue
            if fig is not None:
                out[title] = fig
    return out


def comparison_figure(table: pd.DataFrame, mae_threshold: float, acc_threshold: float) -> go.Figure:
    """The architecture comparison (``geoprobe tunnel compare``), one panel per task: per architecture the
    trained models' mean over seeds with its 95% Student-t interval (filled markers, error bars; no bar with one
    seed), the untrained step-0 model's mean (open grey markers: the null) and the pass threshold (dashed).
    Entropy MAE in bits on a log axis; recall: accuracy in % on a linear axis."""
    tasks = list(dict.fromkeys(table["task"]))
    fig = make_subplots(rows=1, cols=max(1, len(tasks)), horizontal_spacing=0.08,
                        subplot_titles=[f"{t} ({table.loc[table['task'] == t, 'primitive'].iloc[0]})" for t in tasks])
    for col, task in enumerate(tasks, start=1):
        g = table[table["task"] == task]
        recall = task == "recall"
        key = "accuracy" if recall else "entropy_mae_bits"
        scale = 100.0 if recall else 1.0
        mean, lo, hi, null = ([None if x is None else scale * x for x in _num(g[c])] for c in (
            f"{key}_mean", f"{key}_ci_low", f"{key}_ci_high",
            "untrained_accuracy_mean" if recall else "untrained_entropy_mae_bits_mean"))
        archs = [str(a) for a in g["arch"]]
        fig.add_trace(go.Scatter(
            x=archs, y=mean, mode="markers", name="trained: mean, 95% t-interval over seeds",
            legendgroup="trained", showlegend=col == 1, marker={"size": 11, "color": _PALETTE[0]},
            error_y={"type": "data", "symmetric": False,
                     "array": [None if h is None or m is None else h - m for m, h in zip(mean, hi, strict=True)],
                     "arrayminus": [None if x is None or m is None else m - x for m, x in zip(mean, lo, strict=True)]}),
            row=1, col=col)
        fig.add_trace(go.Scatter(
            x=archs, y=null, mode="markers", name="untrained (step 0): the null", legendgroup="null",
            showlegend=col == 1, marker={"size": 11, "color": "#7f7f7f", "symbol": "circle-open",
                                         "line": {"width": 2}}), row=1, col=col)
        thr = scale * (acc_threshold if recall else mae_threshold)
        fig.add_trace(go.Scatter(  # a trace, not add_hline: an hline's label lands off the line on a log axis
            x=archs, y=[thr] * len(archs), mode="lines", line={"dash": "dash", "color": _PALETTE[1]},
            name=f"pass threshold ({'>=' if recall else '<='} {thr:g}{'%' if recall else ' bits'})",
            legendgroup=f"thr-{task}", showlegend=recall or not any(t != "recall" for t in tasks[:col - 1])),
            row=1, col=col)
        if recall:
            fig.update_yaxes(title="accuracy (%)", range=[0, 102], row=1, col=col)
        else:
            ticks = [m * 10.0 ** e for e in range(-6, 3) for m in (1, 2, 5)]
            fig.update_yaxes(title="entropy MAE (bits, log)", type="log", tickmode="array", tickvals=ticks,
                             ticktext=[f"{x:g}" for x in ticks], row=1, col=col)
        fig.update_xaxes(title="architecture", row=1, col=col)
    fig.update_layout(template="plotly_white", height=400, legend={"orientation": "h", "y": -0.3})
    return fig
