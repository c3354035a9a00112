"""``Report.load`` of a saved scan folder gives back the scan's own report: the mixed and domain sets stay apart
(no figure drawn from both sets' rows pooled), the rows, summary and every figure's data are the same."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from test_scan_causal import word_pool

from geoprobe.report import Report
from geoprobe.scan import driver


def _trace_data(fig) -> list[tuple]:
    out = []
    for t in fig.data:
        xs = [None if getattr(t, k, None) is None else np.asarray(getattr(t, k), dtype=object).tolist()
              for k in ("x", "y")]
        out.append((t.type, t.name, json.dumps(xs, default=str)))
    return out


def test_loaded_scan_keeps_the_sets_apart(tiny_model_dirs, tmp_path, monkeypatch):
    monkeypatch.setattr(driver, "build_pool", word_pool)
    res = driver.run_scan(tiny_model_dirs["llama"], domain="math", n=10, pool_size=40, sula=False, n_boot=20,
                          causal_controls=2, backend="torch", device="cpu", out=tmp_path / "scan")
    mem, loaded = res.report, Report.load(res.out)
    assert list(loaded.figures) == list(mem.figures)  # before the fix: 4 more, drawn from both sets pooled
    assert not [t for t in loaded.figures if not t.startswith(("mixed: ", "domain (math): ", "Layer sweep",
                                                                "Causal test"))]
    for title, fig in mem.figures.items():
        assert _trace_data(loaded.figures[title]) == _trace_data(fig), title
    # per-set figures show one set's numbers: the domain key-orthogonality trace is the domain rows' alone
    ko = mem.rows[(mem.rows["probe"] == "key_orthogonality") & (mem.rows["set"] == "domain")]
    assert len(ko) and set(loaded.rows["set"]) == {"mixed", "domain"}
    pd.testing.assert_frame_equal(loaded.rows.drop(columns=["meta"]).reset_index(drop=True),
                                  mem.rows.drop(columns=["meta"]).reset_index(drop=True), check_dtype=False)
    assert list(loaded.rows["meta"]) == [json.loads(json.dumps(m)) for m in mem.rows["meta"]]
    assert loaded.summary == json.loads(json.dumps(mem.summary))
    for name in ("mixed", "domain"):
        t_mem = mem.rows[mem.rows["set"] == name].drop(columns=["meta"]).reset_index(drop=True)
        t_load = loaded.rows[loaded.rows["set"] == name].drop(columns=["meta"]).reset_index(drop=True)
        pd.testing.assert_frame_equal(t_load, t_mem, check_dtype=False)
        assert loaded.summary["sets"][name]["value_manifold"]["pc12_share"]["value"] == pytest.approx(
            mem.summary["sets"][name]["value_manifold"]["pc12_share"]["value"])
