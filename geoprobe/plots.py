"""Plotly figures built from result tables and metric dictionaries (never from models)."""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go


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
        title=title, xaxis_title="supervised position (1-based)", yaxis_title="entropy (bits)",
        yaxis2={"title": "absolute error (bits)", "overlaying": "y", "side": "right", "rangemode": "tozero"},
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


def _frame(rows: Any):
    from geoprobe.results import rows_to_frame

    return rows_to_frame(rows, include_meta=True) if isinstance(rows, list) else rows


def orthogonality_figure(rows: Any) -> go.Figure:
    """Mean |off-diagonal cos| of keys per layer for every definition, with the random (and init) baselines."""
    df = _frame(rows)
    df = df[(df["probe"] == "key_orthogonality") & df["head"].isna()]
    fig = go.Figure()
    for variant, g in df.groupby("variant"):
        g = g.sort_values("layer")
        fig.add_trace(go.Scatter(x=g["layer"], y=g["value"], mode="lines+markers", name=f"{variant}"))
        base = [m.get("baseline_random") for m in g["meta"]]
        fig.add_trace(go.Scatter(x=g["layer"], y=base, mode="lines", name=f"{variant}: random baseline",
                                 line={"dash": "dot"}))
        init = [m.get("baseline_init") for m in g["meta"]]
        if any(v is not None for v in init):
            fig.add_trace(go.Scatter(x=g["layer"], y=init, mode="lines", name=f"{variant}: at initialisation",
                                     line={"dash": "dash"}))
    fig.update_layout(xaxis_title="layer", yaxis_title="mean |off-diagonal cos| (lower = more orthogonal)",
                      template="plotly_white", height=420, xaxis={"dtick": 1})
    return fig


def attention_entropy_figure(rows: Any) -> go.Figure:
    """Final-row attention entropy (mean over heads and prompts) per layer with bootstrap 95% CIs."""
    df = _frame(rows)
    df = df[(df["statistic"] == "attention_entropy_bits") & df["head"].isna()].sort_values("layer")
    err = {"type": "data", "symmetric": False, "array": (df["ci_high"] - df["value"]).tolist(),
           "arrayminus": (df["value"] - df["ci_low"]).tolist()}
    fig = go.Figure(go.Scatter(x=df["layer"], y=df["value"], error_y=err, mode="lines+markers",
                               name="attention entropy"))
    fig.update_layout(xaxis_title="layer", yaxis_title="attention entropy at the final query (bits)",
                      template="plotly_white", height=380, xaxis={"dtick": 1})
    return fig


def pca_scatter_figure(scores: Any, entropy: Any, title: str = "") -> go.Figure:
    """PC1/PC2 coordinates of the samples coloured by their reference entropy (bits)."""
    s = scores.detach().cpu().numpy() if hasattr(scores, "detach") else scores
    e = entropy.detach().cpu().numpy() if hasattr(entropy, "detach") else entropy
    fig = go.Figure(go.Scattergl(x=s[:, 0], y=s[:, 1] if s.shape[1] > 1 else [0] * len(s), mode="markers",
                                 marker={"color": e, "colorscale": "Viridis", "size": 5,
                                         "colorbar": {"title": "entropy (bits)"}}))
    fig.update_layout(title=title, xaxis_title="PC1", yaxis_title="PC2", template="plotly_white", height=460)
    return fig


def qk_heatmap_figure(rows: Any) -> go.Figure:
    """Mean cos(final query, key) per layer and key position (relative to the final token)."""
    df = _frame(rows)
    hm = df[(df["probe"] == "qk_alignment") & (df["statistic"] == "mean_cos")]
    pivot = hm.pivot_table(index="layer", columns="position", values="value")
    fig = go.Figure(go.Heatmap(z=pivot.values, x=list(pivot.columns), y=list(pivot.index), colorscale="RdBu",
                               zmid=0, colorbar={"title": "cos"}))
    fig.update_layout(xaxis_title="key position (0 = final token)", yaxis_title="layer",
                      template="plotly_white", height=420)
    return fig


def ablation_figure(table: Any, metric: str) -> go.Figure:
    """Ablation effects (ratio ablated / baseline of ``metric``), largest first."""
    t = table.sort_values("ratio", ascending=False).head(40)
    import pandas as pd

    labels = [f"L{int(r.layer)}" + (f" {r.kind}" if pd.isna(r.head) else f"H{int(r.head)}") for r in t.itertuples()]
    fig = go.Figure(go.Bar(x=labels, y=t["ratio"]))
    fig.update_layout(yaxis_title=f"{metric}: ablated / baseline", yaxis_type="log", template="plotly_white",
                      height=420)
    return fig


def dynamics_figure(table: Any) -> go.Figure:
    """Per checkpoint: attention distance to the final checkpoint (JS, bits), key-frame overlap and MAE."""
    fig = go.Figure()
    x = [max(s, 1) for s in table["step"]]
    fig.add_trace(go.Scatter(x=x, y=table["attn_js_bits"], name="attention JS to final (bits)",
                             mode="lines+markers"))
    fig.add_trace(go.Scatter(x=x, y=table["mae"], name="entropy MAE (bits)", mode="lines+markers"))
    fig.add_trace(go.Scatter(x=x, y=table["key_frame_overlap"], name="key-frame overlap with final",
                             mode="lines+markers", yaxis="y2"))
    fig.update_layout(xaxis_title="training step", xaxis_type="log", yaxis_type="log",
                      yaxis2={"overlaying": "y", "side": "right", "range": [0, 1.05], "title": "overlap"},
                      template="plotly_white", height=420)
    return fig
