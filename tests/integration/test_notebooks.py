"""Every notebook in notebooks/ executes top to bottom in smoke mode (GEOPROBE_SMOKE=1: smoke presets), stays
small once executed (figures go through plotly's renderer as JSON, never a copy of plotly.js per display) and
shows what it is about."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
SMOLLM2 = ROOT.parent / "shared" / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
MAX_BYTES = 1_000_000
PLOTLY_JSON = "application/vnd.plotly.v1+json"


def test_one_notebook_per_paper_and_the_quickstart():
    assert [p.name for p in NOTEBOOKS] == ["paper1_tunnels.ipynb", "paper2_gradients.ipynb", "paper3_llm.ipynb",
                                           "quickstart.ipynb"]


def _execute(path: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("GEOPROBE_SMOKE", "1")
    monkeypatch.setenv("GEOPROBE_NOTEBOOK_OUT", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("GEOPROBE_CACHE_DIR", os.environ.get("GEOPROBE_CACHE_DIR") or str(
        Path(tempfile.gettempdir()) / "geoprobe-test-cache"))  # the GGUF conversion cache the real tests use
    nb = nbformat.read(path, as_version=4)
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}},
                            env=dict(os.environ)).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    size = len(nbformat.writes(nb).encode())
    assert size < MAX_BYTES, f"{path.name} is {size} bytes executed"
    assert not any("plotly.js v" in json.dumps(o) for o in outputs)  # never a copy of plotly.js
    return outputs


def _figures(outputs) -> list[dict]:
    return [o["data"][PLOTLY_JSON] for o in outputs if PLOTLY_JSON in o.get("data", {})]


def _html(outputs) -> str:
    return "".join(o["data"]["text/html"] if isinstance(o["data"]["text/html"], str) else
                   "".join(o["data"]["text/html"]) for o in outputs if "text/html" in o.get("data", {}))


def test_quickstart(tmp_path, monkeypatch):
    outputs = _execute(ROOT / "notebooks" / "quickstart.ipynb", tmp_path, monkeypatch)
    assert (tmp_path / "bijection" / "metrics.json").exists()
    assert "Attention focusing: the final query" in _html(outputs)  # the Report's summary, inline
    titles = [f["layout"]["yaxis"]["title"]["text"] for f in _figures(outputs)]
    assert "attention entropy at the final query (bits)" in titles
    assert any("widget-view+json" in json.dumps(o.get("data", {})) for o in outputs)  # tqdm progress widget


def test_paper1(tmp_path, monkeypatch):
    outputs = _execute(ROOT / "notebooks" / "paper1_tunnels.ipynb", tmp_path, monkeypatch)
    html = _html(outputs)
    assert "bijection" in html and "hmm" in html  # the tunnel table
    assert (tmp_path / "compare" / "table.csv").exists()
    assert {"transformer", "lstm"} <= set((tmp_path / "compare" / "table.csv").read_text().replace(",", " ").split())
    assert (tmp_path / "paper1-report" / "results.csv").exists()
    names = {t.get("name") for f in _figures(outputs) for t in f["data"]}
    assert {"model", "Bayes posterior"} <= names  # the calibration curve


def test_paper2(tmp_path, monkeypatch):
    outputs = _execute(ROOT / "notebooks" / "paper2_gradients.ipynb", tmp_path, monkeypatch)
    html = _html(outputs)
    assert "Routing law on 4 heads" in html and "(holds: yes)" in html
    assert len(_figures(outputs)) == 4


def test_paper3(tmp_path, monkeypatch):
    outputs = _execute(ROOT / "notebooks" / "paper3_llm.ipynb", tmp_path, monkeypatch)
    text = json.dumps(outputs)
    if not SMOLLM2.is_file():
        assert "is absent: skipping the Paper III measurements" in text
        return
    assert "Verdict:" in _html(outputs)
    summary = json.loads((tmp_path / "paper3-report" / "summary.json").read_text())["summary"]
    assert summary["verdict"]["of"] == 3 and summary["value_manifold"]["n"] == 12
