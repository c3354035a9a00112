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
