"""Every script in examples/ runs with --smoke (in-process, so the imports are shared) and prints its result."""

from __future__ import annotations

import re
import runpy
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run_example(name: str, monkeypatch, capsys, *args: str) -> str:
    monkeypatch.setattr(sys, "argv", [str(EXAMPLES / name), *args])
    runpy.run_path(str(EXAMPLES / name), run_name="__main__")
    return capsys.readouterr().out


def test_examples_folder_is_covered():
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(
        ["probe_model_object.py", "report_to_pandas.py", "routing_law_on_tunnel.py", "register_wind_tunnel.py"])


def test_probe_model_object(monkeypatch, capsys):
    out = run_example("probe_model_object.py", monkeypatch, capsys, "--smoke")
    assert re.search(r"key_orthogonality\s+20", out)  # 2 layers x (4 heads + 1 mean) x weights/runtime keys
    assert re.search(r"^\s+n\s+24$", out, re.M)  # the 24 prompts of the held model's probe


def test_report_to_pandas(monkeypatch, capsys):
    out = run_example("report_to_pandas.py", monkeypatch, capsys, "--smoke")
    assert "probes: ['attention_focusing', 'key_orthogonality']" in out
    lines = [ln.split() for ln in out.splitlines() if ln.strip().startswith(("0 ", "1 "))]
    assert [ln[:3] for ln in lines] == [["0", "block", "0"], ["1", "block", "1"]]


def test_routing_law_on_tunnel(monkeypatch, capsys):
    out = run_example("routing_law_on_tunnel.py", monkeypatch, capsys, "--smoke")
    assert "routing law holds on all 4 heads" in out
    ratios = [float(x) for x in re.findall(r"actual/predicted loss change = ([0-9.]+)", out)]
    assert len(ratios) == 3 and abs(ratios[-1] - 1) < 1e-3


def test_register_wind_tunnel(monkeypatch, capsys):
    from geoprobe.tasks import TASKS

    if "dirichlet_die" in TASKS.names():
        pytest.skip("already registered in this process")
    try:
        out = run_example("register_wind_tunnel.py", monkeypatch, capsys, "--smoke")
        assert "dirichlet_die" in TASKS.names()
    finally:  # leave the registry as other tests expect it
        TASKS._items.pop("dirichlet_die", None)
    mae = float(re.search(r"entropy MAE vs the exact posterior ([0-9.]+) bits", out).group(1))
    assert 0 <= mae < 0.5
