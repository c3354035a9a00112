"""A probe Report end to end: saved, read back with identical figures, and drawn by a real browser."""

from __future__ import annotations

import json

import pytest

from geoprobe.models import get_preset
from geoprobe.models.run import train_tunnel
from geoprobe.probes.suite import DEFAULT_PROBES, ProbeOptions, run_probes
from geoprobe.probes.targets import tunnel_target
from geoprobe.report import Report


@pytest.fixture(scope="module")
def saved_report(tmp_path_factory):
    from geoprobe.backends import load_model

    run = tmp_path_factory.mktemp("report_run") / "bij"
    train_tunnel(run, "bijection", get_preset("bijection", "smoke", steps=30), device="cpu", progress=False)
    init = load_model(run / "checkpoints" / "step_0000000", device="cpu")
    report = run_probes(tunnel_target(run, n=48, device="cpu"), None, ProbeOptions(n_boot=30, max_samples=300),
                        init_handle=init)
    out = report.save(tmp_path_factory.mktemp("saved") / "report")
    return report, out


def _data(fig):
    return json.loads(fig.to_json())


def test_every_probe_has_a_figure(saved_report):
    report, _ = saved_report
    expected = {"Key orthogonality per layer", "Query-key alignment (final query vs keys)",
                "Attention entropy vs depth", "Value manifold across depth",
                "Value manifold (PCA coloured by entropy)", "Ablations (ratio to baseline)",
                "Entropy-axis interventions", "Frame-precision dissociation"}
    assert set(report.figures) == expected
    assert set(report.summary) - {"verdict"} == set(DEFAULT_PROBES["tunnel"])


def test_saved_report_rebuilds_identical_figures(saved_report):
    report, out = saved_report
    back = Report.load(out)
    assert list(back.figures) == list(report.figures)
    for title, fig in report.figures.items():
        assert _data(back.figures[title]) == _data(fig), title
    # the meta column survives: checkpoint steps of the dynamics rows, baselines of the orthogonality rows
    dyn = back.rows[(back.rows.probe == "dynamics") & (back.rows.statistic == "mae")]
    assert [m["step"] for m in dyn["meta"]] == [m["step"] for m in
                                               report.rows[(report.rows.probe == "dynamics")
                                                           & (report.rows.statistic == "mae")]["meta"]]
    ko = back.rows[(back.rows.probe == "key_orthogonality") & back.rows["head"].isna()]
    assert all(isinstance(m["baseline_random"], float) for m in ko["meta"])
    assert back.rows["layer"].dtype == report.rows["layer"].dtype
    assert back.rows[["value", "ci_low", "ci_high"]].equals(report.rows[["value", "ci_low", "ci_high"]])


def test_a_users_own_figure_survives_save_and_load(saved_report, tmp_path):
    import plotly.graph_objects as go

    report, _ = saved_report
    mine = go.Figure(go.Scatter(x=[1, 2, 3], y=[3.5, 1.25, 2.0], name="mine"))
    report2 = Report(report.title, report.rows, report.summary, {**report.figures, "Mine": mine},
                     report.manifest, tables=report.tables)
    back = Report.load(report2.save(tmp_path / "r"))
    assert list(back.figures)[-1] == "Mine"
    assert _data(back.figures["Mine"])["data"] == _data(mine)["data"]


def test_html_embeds_plotly_once_and_opens_with_the_summary(saved_report):
    _, out = saved_report
    page = (out / "report.html").read_text()
    assert page.count("* plotly.js v") == 1
    body = page[page.index("<body>"):]
    # the one-sentence summaries come before the first figure, the tables after the last
    first_fig = body.index("plotly-graph-div")
    assert body.index("class='gp-summary'") < first_fig
    assert body.index("<details><summary>Summary numbers") > body.rindex("plotly-graph-div")
    assert "Attention focusing: the final query" in body


def test_report_draws_in_headless_chromium(saved_report, tmp_path):
    import _chromium

    if _chromium.chromium() is None:
        pytest.skip("Chromium is not installed (Debian: apt-get install -y chromium; .ci/run installs it)")
    report, out = saved_report
    dom, errors = _chromium.render(out / "report.html")
    assert errors == []
    marks = _chromium.figure_marks(dom)
    assert len(marks) == len(report.figures)
    for title, m in zip(report.figures, marks, strict=True):
        assert m["main_svg"] >= 1, title
        assert m["points"] + m["lines"] + m["bars"] + m["images"] > 0, (title, m)
    png = _chromium.screenshot(out / "report.html", tmp_path / "top.png", 900, 700)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_chromium_trap_catches_a_broken_figure(tmp_path):
    """The browser check can fail: a page whose figure script throws reports the error and draws nothing."""
    import _chromium

    if _chromium.chromium() is None:
        pytest.skip("Chromium is not installed")
    page = tmp_path / "broken.html"
    page.write_text("<html><head></head><body><div id='x' class=\"plotly-graph-div\"></div>"
                    "<script>Plotly.newPlot('x', [])</script></body></html>")
    dom, errors = _chromium.render(page)
    assert errors and "Plotly" in errors[0]
    assert _chromium.figure_marks(dom)[0]["main_svg"] == 0
