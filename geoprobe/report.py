"""The Report object: tidy result rows + summary + figures + manifest; saved as JSON, CSV and standalone HTML,
rendered inline in Jupyter through plotly's own renderer.

Layout of a page: title, the verdict (highlighted, where the run has one), one sentence per probe with the
paper's claim beside it, the figures, then the numbers (collapsed tables: summary, result rows, manifest).

Saved folder (:meth:`Report.save`)::

    summary.json     title, summary, manifest, notes, figure order
    results.csv      the tidy rows; ``meta`` (baselines, checkpoint steps, metrics ...) as one JSON object per row
    tables/*.csv     sample-level tables that figures draw (e.g. the value manifold's PC1/PC2 scatter)
    figures/*.json   figures not derived from the rows (plotly JSON), e.g. a user's own figure
    report.html      standalone page; plotly.js embedded exactly once, opens offline

:meth:`Report.load` rebuilds every probe figure from ``results.csv`` and ``tables/`` with the same functions
that drew them (:func:`geoprobe.plots.probe_figures`).
"""

from __future__ import annotations

import html
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from geoprobe.io import write_json, write_text
from geoprobe.report_text import describe, humanise, verdict_line, verdict_notes

ROW_COLUMNS = ["probe", "layer", "head", "statistic", "value", "ci_low", "ci_high", "variant"]
logger = logging.getLogger("geoprobe")


@dataclass
class Report:
    """Results of a probe run or an evaluation.

    Attributes:
        title: heading of the HTML page.
        rows: tidy table (columns at least ``ROW_COLUMNS``; a ``meta`` column of dicts is kept on save).
        summary: JSON-serialisable headline numbers and verdicts (probe runs: one dict per probe, plus
            ``verdict``).
        figures: plotly figures by section title.
        manifest: provenance (versions, model, config, seed, device, dtype, timings).
        notes: free-text paragraphs shown under the summary.
        tables: named sample-level tables that figures draw (saved as ``tables/<name>.csv``).
        headline: one line shown highlighted at the top when the summary has no ``verdict`` (e.g. a
            calibration run's entropy MAE).
    """

    title: str
    rows: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=ROW_COLUMNS))
    summary: dict[str, Any] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)
    manifest: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    headline: str = ""

    # ------------------------------------------------------------------------------------------ save / load

    def save(self, out_dir: str | Path) -> Path:
        """Write the folder described in the module docstring (each file atomically) into ``out_dir``."""
        from geoprobe.plots import probe_figures
        from geoprobe.results import frame_to_csv

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        derived = set(probe_figures(self.rows, self.tables)) if _has_probe_rows(self.rows) else set()
        extra = {}
        for i, (title, fig) in enumerate(self.figures.items()):
            if title not in derived:
                name = f"figures/{i:02d}-{_slug(title)}.json"
                write_text(out / name, fig.to_json())
                extra[title] = name
        for name, table in self.tables.items():
            write_text(out / "tables" / f"{_slug(name)}.csv", table.to_csv(index=False))
        write_json(out / "summary.json", {
            "title": self.title, "headline": self.headline, "summary": self.summary, "manifest": self.manifest, "notes": self.notes,
            "figure_order": list(self.figures), "figure_files": extra,
            "tables": {name: f"tables/{_slug(name)}.csv" for name in self.tables}})
        write_text(out / "results.csv", frame_to_csv(self.rows))
        write_text(out / "report.html", self.to_html())
        logger.info("wrote report %s", out)
        return out

    @classmethod
    def load(cls, out_dir: str | Path) -> Report:
        """Read a saved report back and rebuild its figures (probe figures from the rows and tables, others
        from their plotly JSON)."""
        import plotly.io as pio

        from geoprobe.errors import ConfigError
        from geoprobe.plots import probe_figures
        from geoprobe.results import frame_from_csv

        out = Path(out_dir)
        if not (out / "summary.json").is_file():
            raise ConfigError(f"{out} is not a saved geoprobe report (no summary.json)")
        meta = json.loads((out / "summary.json").read_text())
        rows = frame_from_csv(out / "results.csv") if (out / "results.csv").exists() else pd.DataFrame(
            columns=ROW_COLUMNS)
        tables = {name: pd.read_csv(out / rel) for name, rel in meta.get("tables", {}).items()}
        built = probe_figures(rows, tables) if _has_probe_rows(rows) else {}
        for title, rel in meta.get("figure_files", {}).items():
            built[title] = pio.from_json((out / rel).read_text())
        order = meta.get("figure_order") or list(built)
        figures = {t: built[t] for t in order if t in built}
        figures.update({t: f for t, f in built.items() if t not in figures})
        return cls(title=meta["title"], rows=rows, summary=meta["summary"], manifest=meta["manifest"],
                   notes=meta.get("notes", []), tables=tables, figures=figures, headline=meta.get("headline", ""))

    # ------------------------------------------------------------------------------------------ HTML

    def header_html(self) -> str:
        """Title, highlighted verdict, one sentence per probe (with the paper's claim) and the notes."""
        parts = [f"<h1>{html.escape(self.title)}</h1>"]
        verdict = self.summary.get("verdict")
        if isinstance(verdict, dict):
            head, level = verdict_line(verdict)
            parts.append(f"<div class='gp-verdict gp-{level}'><b>Verdict:</b> {html.escape(head)}</div>")
            parts += [f"<div class='gp-claim'>{html.escape(line)}</div>" for line in verdict_notes(verdict)]
        elif self.headline:
            parts.append(f"<div class='gp-verdict gp-info'>{html.escape(self.headline)}</div>")
        sentences = describe(self.summary)
        if sentences:
            items = "".join(
                f"<li>{html.escape(text).replace(chr(10), '<br>')}" + (f"<br><span class='gp-claim'>{html.escape(claim)}</span>"
                                              if claim else "") + "</li>"
                for _, text, claim in sentences)
            parts.append(f"<ul class='gp-summary'>{items}</ul>")
        elif self.summary:  # a flat summary (e.g. a calibration run): the key numbers as a short table
            parts.append(_flat_table(self.summary))
        parts += [f"<p>{html.escape(n)}</p>" for n in self.notes]
        return "\n".join(parts)

    def tables_html(self) -> str:
        """The numbers behind the page, collapsed: per-probe summary tables, result rows, manifest."""
        parts = []
        if any(isinstance(v, dict) for v in self.summary.values()) and describe(self.summary):
            inner = "".join(f"<h3>{html.escape(humanise(k))}</h3>" + _flat_table(v)
                            for k, v in self.summary.items() if isinstance(v, dict))
            parts.append(f"<details><summary>Summary numbers</summary>{inner}</details>")
        if len(self.rows):
            shown = _blank_missing(self.rows.drop(columns=["meta"], errors="ignore").head(500))
            parts.append(f"<details><summary>Result rows ({len(self.rows)}; first {len(shown)} shown, all in "
                         "results.csv)</summary><div class='gp-wide'>"
                         + shown.to_html(index=False, float_format=lambda v: f"{v:.4g}", na_rep="")
                         + "</div></details>")
        if self.manifest:
            parts.append("<details><summary>Manifest (provenance)</summary><pre>"
                         + html.escape(json.dumps(self.manifest, indent=2, default=str)) + "</pre></details>")
        return "\n".join(parts)

    def _body(self, include_plotlyjs: Any) -> str:
        parts = [self.header_html()]
        first = True
        for name, fig in self.figures.items():
            parts.append(f"<h2>{html.escape(name)}</h2>")
            parts.append(_compact(fig).to_html(full_html=False,
                                               include_plotlyjs=include_plotlyjs if first else False,
                                               config={"displaylogo": False}))
            first = False
        parts.append(self.tables_html())
        return "\n".join(parts)

    def to_html(self) -> str:
        """A standalone page: plotly.js embedded exactly once (in the head), so it opens offline."""
        from plotly.offline import get_plotlyjs

        return ("<!doctype html><html><head><meta charset='utf-8'>"
                f"<title>{html.escape(self.title)}</title><style>{_CSS}</style>"
                f"<script type='text/javascript'>{get_plotlyjs()}</script></head><body>"
                + self._body(include_plotlyjs=False) + "</body></html>")

    def _repr_html_(self) -> str:
        """For HTML front ends other than Jupyter (plotly.js from its CDN, once)."""
        return f"<style>{_CSS}</style>" + self._body(include_plotlyjs="cdn")

    def _ipython_display_(self) -> None:
        """Jupyter: the header as HTML, each figure through plotly's own renderer (``plotly.io.renderers``:
        a small JSON bundle per figure, drawn by JupyterLab / Notebook 7 / VS Code), then the tables.

        The renderer is plotly's default for the front end; choose another with ``plotly.io.renderers.default``,
        e.g. ``"notebook"`` for the classic Notebook (< 7) offline (plotly.js embedded once per notebook) or
        ``"notebook_connected"`` (plotly.js from its CDN)."""
        from IPython.display import HTML, display

        display(HTML(f"<style>{_CSS}</style>" + self.header_html()))
        for name, fig in self.figures.items():
            display(HTML(f"<h3>{html.escape(name)}</h3>"))
            display(_compact(fig))
        tables = self.tables_html()
        if tables:
            display(HTML(tables))

    def show(self) -> None:
        """Display inline in Jupyter (same as leaving the Report as a cell's last expression)."""
        self._ipython_display_()


_CSS = (
    "body{font-family:system-ui,sans-serif;max-width:1100px;margin:1.5em auto;padding:0 1.5em;color:#222}"
    ".gp-verdict{font-size:1.15em;padding:.7em 1em;border-radius:6px;margin:.5em 0 1em 0;border-left:6px solid}"
    ".gp-pass{background:#e6f4ea;border-color:#1e8e3e}.gp-partial{background:#fef7e0;border-color:#f9ab00}"
    ".gp-fail{background:#fce8e6;border-color:#d93025}.gp-info{background:#e8f0fe;border-color:#1a73e8}"
    ".gp-summary li{margin:.35em 0;line-height:1.4}.gp-claim{color:#666;font-size:.9em}"
    "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ddd;padding:3px 8px;"
    "vertical-align:top;text-align:left}details{margin:.6em 0}summary{cursor:pointer;font-weight:600}"
    "pre{background:#f6f6f6;padding:1em;overflow:auto;font-size:12px}.gp-wide{overflow-x:auto;max-width:100%}"
)


def _compact(fig: Any) -> Any:
    """The figure as drawn on the page: plotly's default 100 px top margin (room for a title) shrunk where the
    figure has no title of its own (the page's heading names it); a copy, ``fig`` itself is left as it is."""
    if fig.layout.margin.t is not None:
        return fig
    import plotly.graph_objects as go

    has_title = bool(fig.layout.title.text)
    subplot_titles = any(a.yref == "paper" and (a.y or 0) >= 1 for a in fig.layout.annotations or ())
    return go.Figure(fig).update_layout(margin={"t": 60 if has_title or subplot_titles else 30})


def _blank_missing(frame: pd.DataFrame) -> pd.DataFrame:
    """Missing values as empty cells (pandas writes a nullable integer's missing value as ``<NA>`` and a
    missing object as ``None``; float columns are left to ``na_rep``)."""
    out = frame.copy()
    for c in out.columns:
        if out[c].dtype.kind != "f" and out[c].isna().any():
            out[c] = out[c].astype(object).where(out[c].notna(), "")
    return out


def _has_probe_rows(rows: Any) -> bool:
    """Whether probe figures can be drawn from ``rows``: probe rows of ONE prompt set (a scan's rows hold
    several sets in a ``set`` column; its figures are drawn per set and saved as figure files instead)."""
    if not (isinstance(rows, pd.DataFrame) and len(rows) > 0 and "probe" in rows):
        return False
    return "set" not in rows or rows["set"].nunique(dropna=False) <= 1


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", str(text).lower()).strip("-")[:60] or "x"


def _rounded(v: Any) -> Any:
    """``v`` with every float (also inside dicts and lists) rounded to 4 significant digits and NaN as None,
    for display."""
    if isinstance(v, float):
        if v != v:
            return None
        return v if v in (float("inf"), float("-inf")) else float(f"{v:.4g}")
    if isinstance(v, dict):
        return {k: _rounded(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_rounded(x) for x in v]
    return v


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return "n/a" if v != v else f"{v:.4g}"
    if isinstance(v, list) and v and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
        text = ", ".join(f"{x:.4g}" if isinstance(x, float) else str(x) for x in v[:32])
        return html.escape(text + (" ..." if len(v) > 32 else ""))
    if isinstance(v, dict) and all(not isinstance(x, (dict, list)) for x in v.values()):
        return html.escape("; ".join(f"{humanise(k)} {_fmt_plain(x)}" for k, x in list(v.items())[:16]))
    if isinstance(v, (dict, list)):
        text = json.dumps(_rounded(v), default=str)
        return html.escape(text if len(text) <= 200 else text[:200] + " ...")
    return html.escape(str(v))


def _fmt_plain(v: Any) -> str:
    if v is None or (isinstance(v, float) and v != v):
        return "n/a"
    if isinstance(v, bool):
        return "yes" if v else "no"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _flat_table(summary: dict[str, Any]) -> str:
    """One flat key/value table (no nesting): readable keys, 4 significant digits, short inline lists."""
    rows = "".join(f"<tr><th>{html.escape(humanise(k))}</th><td>{_fmt(v)}</td></tr>"
                   for k, v in summary.items() if k != "paper_claim")
    return f"<table>{rows}</table>"
