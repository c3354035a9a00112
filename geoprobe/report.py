"""The Report object: tidy result rows + summary + figures + manifest; saved as JSON, CSV and standalone HTML,
rendered inline in Jupyter."""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from geoprobe.io import write_json, write_text

ROW_COLUMNS = ["probe", "layer", "head", "statistic", "value", "ci_low", "ci_high", "variant"]


@dataclass
class Report:
    """Results of a probe run or an evaluation.

    Attributes:
        title: heading of the HTML page.
        rows: tidy table (columns at least ``ROW_COLUMNS``).
        summary: JSON-serialisable headline numbers and verdicts.
        figures: plotly figures by section title.
        manifest: provenance (versions, model, config, seed, device, dtype, timings).
        notes: free-text paragraphs shown under the summary (e.g. the paper's claim beside our number).
    """

    title: str
    rows: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=ROW_COLUMNS))
    summary: dict[str, Any] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)
    manifest: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def save(self, out_dir: str | Path) -> Path:
        """Write ``summary.json``, ``results.csv`` and ``report.html`` (each atomically) into ``out_dir``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "summary.json", {"title": self.title, "summary": self.summary,
                                          "manifest": self.manifest, "notes": self.notes})
        write_text(out / "results.csv", self.rows.to_csv(index=False))
        write_text(out / "report.html", self.to_html())
        return out

    @classmethod
    def load(cls, out_dir: str | Path) -> Report:
        """Read a saved report back (figures are not restored; rebuild them from ``rows``)."""
        out = Path(out_dir)
        meta = json.loads((out / "summary.json").read_text())
        rows = pd.read_csv(out / "results.csv") if (out / "results.csv").exists() else pd.DataFrame()
        return cls(title=meta["title"], rows=rows, summary=meta["summary"], manifest=meta["manifest"],
                   notes=meta.get("notes", []))

    def _body(self, full_plotly: bool) -> str:
        parts = [f"<h1>{html.escape(self.title)}</h1>"]
        if self.summary:
            parts.append(_summary_table(self.summary))
        parts += [f"<p>{html.escape(n)}</p>" for n in self.notes]
        first = True
        for name, fig in self.figures.items():
            include = ("inline" if first else False) if full_plotly else "require"
            parts.append(f"<h2>{html.escape(name)}</h2>")
            parts.append(fig.to_html(full_html=False, include_plotlyjs=include))
            first = False
        if len(self.rows):
            parts.append("<h2>Result rows</h2>")
            parts.append(self.rows.head(500).to_html(index=False, float_format=lambda v: f"{v:.4g}"))
        if self.manifest:
            parts.append("<h2>Manifest</h2><pre>" + html.escape(json.dumps(self.manifest, indent=2,
                                                                             default=str)) + "</pre>")
        return "\n".join(parts)

    def to_html(self) -> str:
        """A standalone page (plotly.js embedded once, so it opens offline)."""
        return (
            "<!doctype html><html><head><meta charset='utf-8'>"
            f"<title>{html.escape(self.title)}</title><style>{_CSS}</style></head><body>"
            + self._body(full_plotly=True) + "</body></html>"
        )

    def _repr_html_(self) -> str:
        return self._body(full_plotly=False)


_CSS = (
    "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}"
    "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ddd;padding:3px 8px;"
    "vertical-align:top;text-align:left}"
    "pre{background:#f6f6f6;padding:1em;overflow:auto;font-size:12px}"
)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (dict, list)):
        text = json.dumps(v, default=str)
        return html.escape(text if len(text) <= 300 else text[:300] + " ...")
    return html.escape(str(v))


def _cell(v: Any, depth: int) -> str:
    if isinstance(v, dict) and depth < 2 and v:
        return _summary_table(v, depth + 1)
    if isinstance(v, list) and v and all(isinstance(x, (int, float)) for x in v) and len(v) <= 64:
        return html.escape(", ".join(f"{x:.4g}" if isinstance(x, float) else str(x) for x in v))
    return _fmt(v)


def _summary_table(summary: dict[str, Any], depth: int = 0) -> str:
    """Key/value table; nested dicts (one per probe) become nested tables, numbers get 4 significant digits."""
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{_cell(v, depth)}</td></tr>"
                   for k, v in summary.items())
    return f"<table>{rows}</table>"
