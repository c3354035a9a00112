"""What a reader sees on a report page: verdict notes that name the nulls, table cells without 17-digit floats,
'None', '<NA>' or '-0.0', integer layer ticks a deep model's labels do not crowd, nulls and CIs beside the observed
values, axis titles with units, legends instead of labels on top of the data, and compact figure margins.

Every figure test plants the numbers and checks the figure draws exactly them."""

from __future__ import annotations

import math
import re

import pandas as pd
import pytest

from geoprobe.results import ResultRow, rows_to_frame

# --------------------------------------------------------------------------------------------------- page text


def test_scan_verdict_notes_name_the_null_models_that_pass():
    from geoprobe.report_text import verdict_notes

    verdict = {"vacuous": ["key_orthogonality", "value_manifold"],
               "criteria": {  # a scan's verdict keeps the criteria under "criteria" (a probe suite's: "details")
                   "key_orthogonality": {"nulls": {"random": {"passed": True}, "init": {"passed": True}}},
                   "value_manifold": {"nulls": {"isotropic": {"passed": False}, "init": {"passed": True}}}}}
    notes = verdict_notes(verdict)
    assert notes[0] == ("vacuous: key orthogonality also passes for the null model(s) random, init under the same "
                        "rule, so it cannot tell this model from them")
    assert notes[1].startswith("vacuous: value manifold also passes for the null model(s) init under")
    assert "for a null model under" in verdict_notes({"vacuous": ["x"]})[0]  # no record of which: never "(s)  "


def test_summary_tables_round_nested_numbers_and_say_na():
    from geoprobe.report import _flat_table

    text = _flat_table({
        "criteria": {"value_manifold": {"observed": {"pc1_share": 0.3528814517659251}, "passed": True}},
        "device_map": None, "ratio": float("nan"),
        "prediction": {"state": "not measured", "value": None, "prediction": "MAE <= 0.44 bits"},
        "by_criterion": {"value_manifold": True, "key_orthogonality": False},
        "nested": {"a": [float("nan"), 0.123456789]}})
    assert "0.3529" in text and "0.35288" not in text and "0.1235" in text
    assert re.search(r"\d\.\d{6,}", text) is None
    assert "None" not in text and "nan" not in text.lower().replace("n/a", "")
    assert "<th>device map</th><td>n/a</td>" in text and "<th>ratio</th><td>n/a</td>" in text
    assert "state not measured; value n/a; prediction MAE &lt;= 0.44 bits" in text
    assert "value manifold yes; key orthogonality no" in text


def test_result_rows_show_missing_integers_as_empty_cells_in_a_scrolling_box():
    from geoprobe.report import Report

    rows = rows_to_frame([ResultRow("key_orthogonality", "mean_abs_offdiag_cos", 0.25, layer=0, head=1),
                          ResultRow("key_orthogonality", "mean_abs_offdiag_cos", 0.5, layer=0)])
    assert rows["head"].dtype.name == "Int64" and rows["head"].isna().sum() == 1
    page = Report(title="t", rows=rows).tables_html()
    assert "&lt;NA&gt;" not in page and "<NA>" not in page
    assert "<div class='gp-wide'><table" in page
    cells = re.findall(r"<td>(.*?)</td>", page)
    assert cells == ["key_orthogonality", "0", "1", "", "mean_abs_offdiag_cos", "0.25", "", "", "default", "",
                     "key_orthogonality", "0", "", "", "mean_abs_offdiag_cos", "0.5", "", "", "default", ""]


def _scan_set(focusing, ci, init, shuffled, pc12=0.1356822414789742):
    return {"set": "mixed", "domain": "mixed", "n": 75,
            "value_manifold": {"layer": 29, "pc1_share": {"value": 0.0703, "ci": [0.058, 0.082]},
                               "pc12_share": {"value": pc12, "ci": [0.11, 0.161], "null_mean": 0.0658},
                               "rho_pc1_entropy": {"value": -0.001, "ci": [-0.21, 0.30]}},
            "key_orthogonality": {"fraction_of_layers_below_0.20": 0.9667},
            "attention_focusing": {"focusing_percent": focusing, "ci": ci, "init_focusing_percent": init,
                                   "shuffled_focusing_percent": shuffled},
            "verdict": {"grade": "partial", "criteria_passed": 2, "of": 3}}


def test_scan_set_sentence_never_prints_negative_zero():
    from geoprobe.report_text import scan_set_sentence

    text = scan_set_sentence(_scan_set(-0.0070750, [-0.0088, -0.0061], -0.0013, 38.18))
    assert "-0.0" not in text
    assert "focusing 0.0% [0.0, 0.0] (fresh weights 0.0%, shuffled context 38.2%)" in text
    assert "rho(PC1, H) 0.00 [-0.21, +0.30]" in text and "PC1+PC2 13.6% [11.0%, 16.1%]" in text
    # real negatives keep their sign
    assert "focusing -3.5% [-4.0, -3.1] (fresh weights -0.7%" in scan_set_sentence(
        _scan_set(-3.49, [-4.0, -3.1], -0.747, 1.0))


def test_each_scan_set_is_its_own_line_on_the_page():
    from geoprobe.report import Report

    other = {**_scan_set(45.9, [43.9, 47.9], -0.7, 38.2), "set": "domain", "domain": "math"}
    page = Report(title="t", summary={"sets": {"mixed": _scan_set(45.9, [43.9, 47.9], -0.7, 38.2),
                                               "domain": other}}).header_html()
    item = re.search(r"<ul class='gp-summary'><li>(.*?)</li>", page).group(1)
    first, second = item.split("<br>")
    assert first.startswith("mixed (n=75)") and second.startswith("domain math (n=75)")


def test_multi_revision_summary_reads_as_a_sentence():
    from geoprobe.report import Report
    from geoprobe.report_text import describe

    s = {"mixed": {"frame_settles_at": 300, "precision_settles_at": 200, "precision_settles_after_frame": False},
         "domain": {"frame_settles_at": 100, "precision_settles_at": None, "precision_settles_after_frame": None}}
    (name, text, _), = describe({"frame_precision": s, "step_axis": "training step"})
    assert name == "frame_precision"
    assert ("mixed: frame settles at step 300, precision at step 200, so precision does not settle after the "
            "frame") in text
    assert "domain: frame settles at step 100, precision at step never, so n/a (a group never settles)" in text
    assert "frame precision: ." not in Report(title="t", summary={"frame_precision": s}).header_html()


# --------------------------------------------------------------------------------------------------- figures


def test_layer_ticks_thin_out_for_deep_models():
    from geoprobe.plots import _layer_axis

    assert _layer_axis([0, 1])["tickvals"] == [0, 1]
    assert _layer_axis(list(range(16)))["tickvals"] == list(range(16))
    deep = _layer_axis(list(range(30)))
    assert deep["tickvals"] == list(range(0, 30, 2)) and deep["ticktext"] == [str(x) for x in range(0, 30, 2)]
    assert _layer_axis(list(range(100)))["tickvals"] == list(range(0, 100, 10))


def _value_manifold_rows(layers, nulls):
    rows = []
    for layer, null in zip(layers, nulls, strict=True):
        for stat, v in (("pc1_share", 0.1 + 0.01 * layer), ("pc12_share", 0.2 + 0.01 * layer),
                        ("spearman_rho_pc1_entropy", 0.3)):
            rows.append(ResultRow("value_manifold", stat, v, layer=layer, ci_low=v - 0.05, ci_high=v + 0.05,
                                  meta={"null_mean": null[stat]} if stat in null else {}))
    return rows_to_frame(rows, include_meta=True)


def test_value_manifold_depth_draws_the_isotropic_null_and_percent_axis():
    from geoprobe.plots import value_manifold_depth_figure

    layers = list(range(24))
    nulls = [{"pc1_share": 0.033, "pc12_share": 0.066 + 0.001 * layer} for layer in layers]
    fig = value_manifold_depth_figure(_value_manifold_rows(layers, nulls))
    by = {t.name: t for t in fig.data}
    assert list(by["PC1+PC2 share: isotropic null"].y) == pytest.approx([0.066 + 0.001 * x for x in layers])
    assert list(by["PC1 share: isotropic null"].y) == pytest.approx([0.033] * 24)
    assert by["PC1+PC2 share: isotropic null"].line.color == by["PC1+PC2 share"].line.color
    assert fig.layout.yaxis.tickformat == ".0%" and fig.layout.yaxis.title.text == "share of variance"
    assert list(fig.layout.xaxis.tickvals) == list(range(0, 24, 2))  # half-width panel: every 2nd layer
    assert any(a.text == "30% criterion" for a in fig.layout.annotations)


def test_attention_entropy_figure_puts_focusing_beside_its_nulls():
    from geoprobe.plots import attention_entropy_figure

    rows = [ResultRow("attention_focusing", "attention_entropy_bits", 3.0 - 0.5 * layer, layer=layer,
                      ci_low=2.9 - 0.5 * layer, ci_high=3.1 - 0.5 * layer) for layer in range(3)]
    rows.append(ResultRow("attention_focusing", "focusing_percent", 33.3, ci_low=30.0, ci_high=36.0))
    rows.append(ResultRow("attention_focusing", "focusing_minus_null", 34.0, variant="init",
                          meta={"null_focusing_percent": -0.7, "null_focusing_ci": [-1.0, -0.5]}))
    rows.append(ResultRow("attention_focusing", "focusing_minus_null", 5.0, variant="shuffled",
                          meta={"null_focusing_percent": 28.3, "null_focusing_ci": [25.0, 31.0]}))
    fig = attention_entropy_figure(rows_to_frame(rows, include_meta=True))
    entropy, focusing = fig.data
    assert list(entropy.y) == [3.0, 2.5, 2.0] and list(entropy.x) == [0, 1, 2]
    assert list(focusing.x) == ["this model", "fresh weights", "shuffled context"]
    assert list(focusing.y) == [33.3, -0.7, 28.3]
    assert list(focusing.error_y.array) == pytest.approx([2.7, 0.2, 2.7])
    assert list(focusing.error_y.arrayminus) == pytest.approx([3.3, 0.3, 3.3])
    assert fig.layout.yaxis2.title.text == "focusing (%), 95% CI"
    assert fig.layout.yaxis.title.text == "attention entropy at the final query (bits)"
    # without focusing rows: the single entropy panel, as before
    only = attention_entropy_figure(rows_to_frame(rows[:3], include_meta=True))
    assert len(only.data) == 1 and "xaxis2" not in only.layout.to_plotly_json()


def test_em_vs_sgd_target_is_a_legend_line_not_a_label_on_the_curves():
    from geoprobe.plots import EM_CURVES_TABLE, em_vs_sgd_figure

    curves = pd.DataFrame([{"arm": arm, "seed": seed, "step": step, "loss": 2.0 - 0.001 * step * (1 + seed)
                            - (0.05 if arm == "em" else 0.0)}
                           for arm in ("sgd", "em") for seed in (0, 1) for step in (0, 50, 100)])
    fig = em_vs_sgd_figure(pd.DataFrame(), {EM_CURVES_TABLE: curves})
    target = [t for t in fig.data if (t.name or "").startswith("target")]
    assert len(target) == 1 and list(target[0].y) == pytest.approx([2.0 - 0.15, 2.0 - 0.15])
    assert list(target[0].x) == [0, 100] and target[0].name == "target: sgd mean final loss (1.8500 nats)"
    assert [a.text for a in fig.layout.annotations] == list(fig.layout.annotations and [
        "training loss (nats)", "held-out entropy MAE to the Bayes predictive (bits)"])
    assert fig.layout.yaxis.title.text == "loss (nats)" and fig.layout.yaxis2.title.text == "entropy MAE (bits)"


def test_routing_dynamics_legend_is_words_and_names_the_null():
    from geoprobe.plots import routing_dynamics_figure

    rows = [ResultRow("routing_dynamics", stat, v, variant=variant, meta={"step": step})
            for stat in ("score_update_vs_law", "value_update_vs_law")
            for step in (0, 1, 10) for variant, v in (("law", 1.0), ("shuffled", 0.01))]
    fig = routing_dynamics_figure(rows_to_frame(rows, include_meta=True))
    assert [t.name for t in fig.data] == ["score update vs law", "score update vs law (shuffled pairing: null)",
                                          "value update vs law", "value update vs law (shuffled pairing: null)"]
    # both statistics sit at 1: different marker symbols and sizes keep the first visible under the second
    assert (fig.data[0].marker.symbol, fig.data[2].marker.symbol) == ("circle", "square")
    assert fig.data[0].marker.size > fig.data[2].marker.size
    assert list(fig.data[0].y) == list(fig.data[2].y) == [1.0, 1.0, 1.0]


def test_scan_layer_sweep_has_integer_layer_ticks_and_a_percent_axis():
    from geoprobe.scan.driver import _sweep_figure

    sweep = [{"layer": layer, "pc12_share": 0.2, "pc12_ci": [0.15, 0.25], "null_pc12": 0.066} for layer in range(3)]
    fig = _sweep_figure({"mixed": {"layer_sweep": sweep, "domain": "mixed"},
                         "domain": {"layer_sweep": sweep, "domain": "math"}})
    assert list(fig.layout.xaxis.tickvals) == [0, 1, 2] and fig.layout.xaxis.title.text == "layer"
    assert [t.name for t in fig.data] == ["mixed PC1+PC2", "mixed isotropic null", "domain (math) PC1+PC2",
                                          "domain (math) isotropic null"]
    colours = [t.line.color for t in fig.data]  # each set's null in the set's colour
    assert colours[0] == colours[1] != colours[2] == colours[3]
    assert fig.layout.yaxis.tickformat == ".0%"
    assert list(fig.data[0].error_y.array) == pytest.approx([0.05] * 3)


def test_causal_figure_has_axis_titles_with_units_and_no_si_prefixes():
    from geoprobe.scan.causal import causal_figure

    entry = {"change": -0.0004, "control_change_mean": 0.0001, "control_change_q05": -0.0003,
             "control_change_q95": 0.0006}
    fig = causal_figure({"cut_sets": {"7": {"axis_entropy_corr": entry, "nll_bits": entry},
                                      "all": {"axis_entropy_corr": entry, "nll_bits": entry}}})
    assert fig.layout.yaxis.title.text == "after - before (correlation)"
    assert fig.layout.yaxis2.title.text == "after - before (bits/token)"
    assert fig.layout.yaxis.exponentformat == "e" and fig.layout.yaxis2.exponentformat == "e"
    assert list(fig.data[0].x) == ["layer 7", "all cut layers"] and list(fig.data[0].y) == [-0.0004, -0.0004]
    assert list(fig.data[1].error_y.array) == pytest.approx([0.0005, 0.0005])


def test_causal_sentence_has_no_negative_zero():
    from geoprobe.scan.causal import causal_sentence

    a = {"baseline": 0.191, "after": 0.188, "change": -0.003, "control_change_q05": -0.0102,
         "control_change_q95": 0.03, "p_empirical": 0.7}
    c = {"baseline": 5.557, "after": 5.547, "p_empirical": 0.95}
    text = causal_sentence({"applicable": True, "n": 75, "n_controls": 19, "set": "domain", "cut_sets": {
        "all": {"layers": [7, 15], "axis_entropy_corr": a, "nll_bits": c, "calibration_change_percent": -0.04}}})
    assert "change 0.00;" in text and "controls -0.01 to +0.03" in text and "(0.0%;" in text
    assert "-0.00" not in text and "-0.0%" not in text


def test_revision_figure_one_panel_per_set_one_colour_per_signature():
    from geoprobe.scan.revisions import _figure

    recs = []
    for set_name in ("mixed", "domain"):
        for sig, group in (("key_orthogonality_mean_abs_cos", "frame"), ("value_pc12_share", "precision")):
            for step, ne in ((100, 1.0), (200, 0.4), (300, 0.0)):
                recs.append({"set": set_name, "signature": sig, "group": group, "step": step,
                             "normalised_excess": ne * (2 if set_name == "domain" else 1)})
    fig = _figure(pd.DataFrame(recs), "training step")
    assert [t.xaxis for t in fig.data] == ["x", "x", "x2", "x2"]
    assert [a.text for a in fig.layout.annotations] == ["mixed prompts", "domain prompts"]
    assert fig.data[0].line.color == fig.data[2].line.color != fig.data[1].line.color
    assert [t.line.dash for t in fig.data[:2]] == ["solid", "dash"]
    assert [t.showlegend for t in fig.data] == [True, True, False, False]
    assert list(fig.data[2].y) == [2.0, 0.8, 0.0]
    assert [(s.y0, s.y1) for s in fig.layout.shapes] == [(-0.1, 0.1), (-0.1, 0.1)]


def test_comparison_figure_draws_means_intervals_untrained_null_and_threshold():
    from geoprobe.plots import comparison_figure

    table = pd.DataFrame([
        {"task": "bijection", "primitive": "accumulation", "arch": arch, "entropy_mae_bits_mean": m,
         "entropy_mae_bits_ci_low": m - d, "entropy_mae_bits_ci_high": m + d, "accuracy_mean": math.nan,
         "accuracy_ci_low": math.nan, "accuracy_ci_high": math.nan, "untrained_entropy_mae_bits_mean": u,
         "untrained_accuracy_mean": math.nan}
        for arch, m, d, u in (("transformer", 0.01, 0.004, 0.7), ("mlp", 0.6, math.nan, 0.55))] + [
        {"task": "recall", "primitive": "binding", "arch": "transformer", "entropy_mae_bits_mean": 0.2,
         "entropy_mae_bits_ci_low": 0.1, "entropy_mae_bits_ci_high": 0.3, "accuracy_mean": 0.95,
         "accuracy_ci_low": 0.9, "accuracy_ci_high": 1.0, "untrained_entropy_mae_bits_mean": 1.0,
         "untrained_accuracy_mean": 0.02}])
    fig = comparison_figure(table, 0.05, 0.9)
    trained, null, thr, r_trained, r_null, r_thr = fig.data
    assert list(trained.x) == ["transformer", "mlp"] and list(trained.y) == [0.01, 0.6]
    assert trained.error_y.array[0] == pytest.approx(0.004) and trained.error_y.array[1] is None
    assert list(null.y) == [0.7, 0.55] and null.marker.symbol == "circle-open"
    assert list(thr.y) == [0.05, 0.05] and thr.name == "pass threshold (<= 0.05 bits)"
    assert fig.layout.yaxis.type == "log" and fig.layout.yaxis.title.text == "entropy MAE (bits, log)"
    assert list(r_trained.y) == pytest.approx([95.0]) and list(r_null.y) == pytest.approx([2.0])
    assert list(r_trained.error_y.arrayminus) == pytest.approx([5.0]) and list(r_thr.y) == pytest.approx([90.0])
    assert fig.layout.yaxis2.title.text == "accuracy (%)"
    assert [a.text for a in fig.layout.annotations] == ["bijection (accumulation)", "recall (binding)"]


def test_comparison_report_leads_with_each_architectures_verdict():
    from geoprobe.compare import comparison_report, summarise

    cells = pd.DataFrame([{"task": "bijection", "arch": "mlp", "seed": s, "skipped": "", "entropy_mae_bits": v,
                           "accuracy": math.nan, "untrained_entropy_mae_bits": 0.6, "untrained_accuracy": math.nan,
                           "params": 10, "steps": 40, "budget_limited": False, "train_wall_time_s": 1.0,
                           "cell_wall_time_s": 2.0} for s, v in ((0, 0.5), (1, 0.7))])
    table = summarise(cells, 0.05, 0.9)
    verdict = {"mlp": {"realises": [], "fails": ["accumulation"], "vacuous": [], "undetermined": [],
                       "untested": [], "naive_realises": []}}
    rep = comparison_report(table, verdict, "CRITERIA", "smoke", 2, 0.05, 0.9)
    assert rep.headline == "mlp: realises none; fails accumulation"
    page = rep.to_html()
    assert "mlp: ." not in page and "Criteria: CRITERIA." in page
    assert page.index("gp-verdict") < page.index("<h2>")
    assert list(rep.rows.columns)[:4] == ["task (primitive)", "arch", "seeds", "entropy MAE (bits)"]
    assert rep.rows.iloc[0].tolist()[:4] == ["bijection (accumulation)", "mlp", "2", "0.6000 ± 0.1414"]


def test_figures_without_a_title_get_a_small_top_margin_on_the_page():
    import plotly.graph_objects as go

    from geoprobe.report import Report

    plain = go.Figure(go.Scatter(x=[0, 1], y=[1, 2]))
    titled = go.Figure(go.Scatter(x=[0, 1], y=[1, 2]), layout={"title": {"text": "T"}})
    own = go.Figure(go.Scatter(x=[0, 1], y=[1, 2]), layout={"margin": {"t": 5}})
    page = Report(title="t", figures={"a": plain, "b": titled, "c": own}).to_html()
    margins = re.findall(r'"margin":\{"t":(\d+)', page)
    assert margins == ["30", "60", "5"]
    assert plain.layout.margin.t is None  # the user's figure itself is left as it was


def test_multi_model_scan_table_has_no_negative_zero():
    from geoprobe.scan.table import markdown

    def one(focusing, rho):
        return {"value_manifold": {"pc12_share": {"value": 0.405, "ci": [0.3, 0.5]},
                                   "rho_pc1_entropy": {"value": rho, "ci": [-0.5, 0.5]}},
                "key_orthogonality": {"early_layers_mean_abs_cos": 0.1, "fraction_of_layers_below_0.20": 1.0},
                "attention_focusing": {"focusing_percent": focusing}, "verdict": {"grade": "partial"}}

    md = markdown([{"model": "tiny", "domain": "code", "sets": {"mixed": one(-0.0071, -0.001),
                                                                "domain": one(-3.21, 0.61)}}])
    assert "| tiny | 40.5% → 40.5% (code) | 0.100; 100% | 0.0% | 0.00 / +0.61 | partial (partial) |" in md
    assert "-0.0" not in md


def test_entropy_axis_legend_sits_inside_the_figure():
    from geoprobe.plots import entropy_axis_figure

    rows = [ResultRow("entropy_axis", "entropy_mae_bits", 1.25, layer=0, variant=f"cut/{d}",
                      meta={"baseline": 1.0, "relative_change": 0.25}) for d in ("axis", "control")]
    legend = entropy_axis_figure(rows).layout.legend
    # anchored by its top at the top of the container (anchored by its bottom there, it was drawn off the page)
    assert (legend.yref, legend.y, legend.yanchor) == ("container", 1.0, "top")


def test_dynamics_threshold_label_sits_on_its_line_of_the_log_axis():
    from geoprobe.plots import dynamics_figure

    rows = []
    for step, js, mae in ((0, 0.3, 0.7), (10, 0.01, 0.6), (100, 1e-5, 0.5), (1000, 0.0, 0.4)):
        rows += [ResultRow("dynamics", "attn_js_bits", js, meta={"step": step}),
                 ResultRow("dynamics", "mae", mae, meta={"step": step})]
    rows.append(ResultRow("dynamics", "frame_stable_step", 100.0, meta={"threshold_bits": 0.05}))
    fig = dynamics_figure(rows_to_frame(rows, include_meta=True))
    label = next(a for a in fig.layout.annotations if a.text == "threshold 0.05 bits")
    assert label.yref == "y" and label.y == pytest.approx(math.log10(0.05))
    assert fig.layout.yaxis.exponentformat == "power"  # 10^-4, not plotly's SI "100µ"


def test_sula_figure_draws_a_ci_over_prompts_for_every_point():
    from geoprobe.scan.driver import _sula_figure

    by = [{"condition": c, "k": k, "h_model_bits": 0.5 if c == "main" else 0.8, "h_bayes_bits": 1.0 / (1 + k)}
          for c in ("main", "shuffled") for k in (0, 8)]
    pp = {"condition": [], "k": [], "h_model_bits": [], "h_bayes_bits": []}
    for c in ("main", "shuffled"):
        for k in (0, 8):
            hs = [0.0] * 25 + [1.0] * 25 if c == "main" else [0.8] * 50
            for h in hs:
                for key, v in (("condition", c), ("k", k), ("h_model_bits", h), ("h_bayes_bits", 0.0)):
                    pp[key].append(v)
    fig = _sula_figure({"by_condition_k": by, "per_prompt": pp})
    main, shuffled, bayes = fig.data
    assert main.name == "main: model (95% CI over prompts)" and bayes.name == "main: Bayes"
    # mean of 25 zeros and 25 ones: 0.5 +- 1.96 * 0.5 / sqrt(50) = +-0.139 (normal approximation)
    assert list(main.error_y.array) == pytest.approx([0.139, 0.139], abs=0.03)
    assert list(main.error_y.arrayminus) == pytest.approx([0.139, 0.139], abs=0.03)
    assert list(shuffled.error_y.array) == pytest.approx([0.0, 0.0], abs=1e-12)  # identical prompts: no spread
    # a scan saved without per-prompt entropies: the means alone, as before
    plain = _sula_figure({"by_condition_k": by})
    assert plain.data[0].name == "main: model" and plain.data[0].error_y.array is None


def test_calibration_curve_right_axis_has_its_own_round_ticks():
    from geoprobe.plots import calibration_curve_figure

    fig = calibration_curve_figure({"step": [0, 1], "model_entropy_bits": [2.5, 2.4], "bayes_entropy_bits": [2.6, 1.0],
                                    "entropy_abs_error_bits": [0.1, 1.284]})
    # not synced to the left axis's grid (which gave ticks at 0.257, 0.513, ... bits)
    assert fig.layout.yaxis2.tickmode == "auto" and fig.layout.yaxis2.showgrid is False
    assert list(fig.data[2].y) == [0.1, 1.284] and fig.data[2].yaxis == "y2"
