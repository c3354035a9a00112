"""Probe figures from planted result rows: the axes, reference lines and numbers each figure must show."""

from __future__ import annotations

import math

import pytest

from geoprobe.plots import (
    ablation_figure,
    dynamics_figure,
    entropy_axis_figure,
    probe_figures,
    qk_heatmap_figure,
)
from geoprobe.results import ResultRow, frame_from_csv, frame_to_csv, rows_to_frame


def test_qk_heatmap_has_integer_layer_ticks():
    rows = [ResultRow("qk_alignment", "mean_cos", 0.1 * layer - 0.01 * pos, layer=layer, position=pos)
            for layer in range(2) for pos in range(-3, 1)]
    fig = qk_heatmap_figure(rows)
    assert list(fig.layout.yaxis.tickvals) == [0, 1]
    assert list(fig.layout.yaxis.ticktext) == ["0", "1"]
    hm = fig.data[0]
    assert list(hm.y) == [0, 1] and list(hm.x) == [-3, -2, -1, 0]
    assert hm.z[1][0] == pytest.approx(0.1 + 0.03)


def test_ablation_is_linear_with_bars_from_one_and_a_line_at_one():
    ratios = {(0, 0): 1.04, (0, 1): 0.97, (1, 0): 1.01}
    rows = [ResultRow("ablation", "ratio", r, layer=layer, head=head, variant="zero",
                      meta={"metric": "entropy_mae_bits"}) for (layer, head), r in ratios.items()]
    rows.append(ResultRow("ablation", "ratio", 12.5, layer=1, variant="bypass_block",
                          meta={"metric": "entropy_mae_bits"}))
    fig = ablation_figure(rows)
    assert fig.layout.yaxis.type in (None, "linear")
    lines = [s for s in fig.layout.shapes if s.type == "line"]
    assert [(s.y0, s.y1) for s in lines] == [(1.0, 1.0)]
    ends = {}
    for tr in fig.data:
        for x, base, y in zip(tr.x, tr.base, tr.y, strict=True):
            ends[x] = base + y
    assert ends == pytest.approx({"L0 H0": 1.04, "L0 H1": 0.97, "L1 H0": 1.01, "L1 bypass_block": 12.5})
    assert list(fig.layout.xaxis.categoryarray) == ["L1 bypass_block", "L0 H0", "L1 H0", "L0 H1"]
    assert "entropy_mae_bits" in fig.layout.yaxis.title.text


def _dynamics_rows():
    steps = [0, 10, 100, 1000]
    js = [0.3, 0.01, 1e-5, 0.0]
    mae = [0.9, 0.5, 0.05, 0.01]
    rows = []
    for s, j, m in zip(steps, js, mae, strict=True):
        rows += [ResultRow("dynamics", "attn_js_bits", j, meta={"step": s}),
                 ResultRow("dynamics", "mae", m, meta={"step": s}),
                 ResultRow("dynamics", "key_frame_overlap", 0.5 + s / 2000, meta={"step": s})]
    rows.append(ResultRow("dynamics", "frame_stable_step", 100, meta={"threshold_bits": 0.05}))
    return rows


def test_dynamics_shows_step_zero_left_of_step_one_and_separate_axes():
    fig = dynamics_figure(_dynamics_rows())
    js, mae, overlap = fig.data
    # step 0 is drawn at half the first positive step, labelled as initialisation, on a log axis
    assert list(mae.x) == [5.0, 10.0, 100.0, 1000.0]
    x2 = fig.layout.xaxis2
    assert x2.type == "log" and x2.tickvals[0] == 5.0 and x2.ticktext[0] == "0 (init)"
    # JS (~1e-5) and MAE (~0.5) never share an axis; the reference checkpoint's JS of 0 is not drawn on log
    assert js.yaxis != mae.yaxis and mae.yaxis != overlap.yaxis
    assert list(js.y) == [0.3, 0.01, 1e-5]
    assert fig.layout.yaxis.type == "log" and fig.layout.yaxis2.type == "log"
    # stabilisation: threshold line in the JS panel and a vertical line at step 100
    assert any(s.y0 == 0.05 and s.y1 == 0.05 for s in fig.layout.shapes)
    assert any(s.x0 == 100.0 and s.x1 == 100.0 for s in fig.layout.shapes)


def test_entropy_axis_figure_shows_relative_change_for_axis_and_control():
    rows = []
    for layer in (0, None):
        for op in ("cut", "keep_only"):
            for direction, rel in (("axis", 0.25), ("control", -0.01)):
                rows.append(ResultRow("entropy_axis", "entropy_mae_bits", 1.0 + rel, layer=layer,
                                      variant=f"{op}/{direction}", meta={"baseline": 1.0, "relative_change": rel}))
                rows.append(ResultRow("entropy_axis", "axis_entropy_corr_last_layer", 0.1, layer=layer,
                                      variant=f"{op}/{direction}", meta={"baseline": 0.6, "relative_change": -0.8}))
    fig = entropy_axis_figure(rows)
    axis = next(t for t in fig.data if t.name == "along the axis")
    assert list(axis.x) == ["cut @ L0", "keep_only @ L0", "cut @ all layers", "keep_only @ all layers"]
    assert list(axis.y) == pytest.approx([25.0] * 4)
    control = next(t for t in fig.data if t.name == "orthogonal control")
    assert list(control.y) == pytest.approx([-1.0] * 4)
    assert any(s.y0 == 0.6 for s in fig.layout.shapes)  # the correlation before any intervention


def test_result_frame_csv_round_trip_keeps_meta_and_dtypes(tmp_path):
    rows = _dynamics_rows() + [ResultRow("x", "s", math.nan, layer=3, head=None, ci_low=0.1,
                                         meta={"a": [1, 2], "b": None, "c": "text"})]
    df = rows_to_frame(rows, include_meta=True)
    path = tmp_path / "r.csv"
    path.write_text(frame_to_csv(df))
    back = frame_from_csv(path)
    assert list(back["meta"]) == list(df["meta"])
    assert back.dtypes.to_dict() == df.dtypes.to_dict()
    assert back.drop(columns="meta").equals(df.drop(columns="meta"))


def test_probe_figures_only_for_probes_present():
    figs = probe_figures(_dynamics_rows())
    assert list(figs) == ["Frame-precision dissociation"]
    assert probe_figures(_dynamics_rows(), probes=["ablation"]) == {}


def test_rows_without_meta_skip_the_figure_with_a_warning(caplog):
    import logging

    df = rows_to_frame(_dynamics_rows())  # no meta column: the checkpoint steps are gone
    with caplog.at_level(logging.WARNING, logger="geoprobe"):
        assert probe_figures(df) == {}
    assert "Frame-precision dissociation" in caplog.text
