"""benchmarks/gpu_check.sh has never met a GPU; its CPU smoke run drives every section through the same code.

The smoke run (tiny GPT-NeoX / Llama-GQA / Mistral-sliding-window shapes, bfloat16 weights on CPU) must exit 0 and
write gpu_check.json / gpu_check.md whose numbers are checked here: six correctness checks (every row and the
final row, three families) with the streaming entropy within 1e-5 bits of the eager pattern's; a timing row with
time and memory for every mode at every length; the scan section's table and an end-to-end scan whose
statistics came back in float32 from bfloat16 weights. The orchestrator isolates sections: one that fails or
outlives its limit is reported, the next still runs, and the exit status says so.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODES = ["plain", "plain-body", "scan-pass", "stream", "stream-blocks", "eager", "tl-cache"]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    env = dict(os.environ, PYTHON=sys.executable)
    r = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--cpu-smoke", "--out", str(out)],
                       capture_output=True, text=True, env=env, timeout=900)
    return r, out


def test_gpu_check_cpu_smoke_runs_every_section_and_checks_equality(smoke):
    r, out = smoke
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:] + (out / "gpu_check.log").read_text()[-4000:]
    rec = json.loads((out / "gpu_check.json").read_text())
    assert rec["smoke"] is True and rec["total_s"] > 0
    assert [(s["name"], s["status"]) for s in rec["sections"]] == [
        ("correctness", "ok"), ("t2048", "ok"), ("t8192", "ok"), ("scan", "ok")]
    checks = {(c["shape"], c["check"]): c for c in rec["checks"]}
    assert len(checks) == 6
    for shape in ("tiny-neox", "tiny-llama", "tiny-mistral"):
        for rows in ("all", "final"):
            c = checks[(shape, f"{rows} rows vs eager pattern (float32)")]
            assert c["method"] == "stream" and c["pass"] is True and 0 <= c["max_abs_err_bits"] < 1e-5
    assert checks[("tiny-mistral", "all rows vs eager pattern (float32)")]["window"] == 16  # 48 // 3: cuts rows
    rows = {(x["shape"], x["T"], x["mode"]): x for x in rec["rows"]}
    want = [(s, t, m) for s in ("tiny-neox", "tiny-llama", "tiny-mistral") for t in (32, 16) for m in MODES]
    want += [("tiny-mistral", 64, m) for m in MODES]
    assert sorted(rows) == sorted(want)
    for key, x in rows.items():
        assert "error" not in x and "skipped" not in x, (key, x)
        assert x["seconds"] > 0 and x["peak_mib"] >= 0 and x["repeats"] == 1, key
    md = (out / "gpu_check.md").read_text()
    assert "| shape | T | mode | time s | x plain | peak MiB | x plain |" in md
    assert "| tiny-llama | 32 | plain | " in md and "| tiny-mistral | 64 | tl-cache | " in md
    assert "| tiny-llama | 32 | plain | " in md.split("| tiny-llama | 32 | plain-body")[0]  # plain first
    scan = json.loads((out / "scan.json").read_text())
    assert set(scan["time"]["median_s"]) == {"plain", "plain-body", "scan-pass", "scan-stage", "tl-cache"}
    ex = scan["full_scan"]["execution"]
    assert ex["weights_dtype"] == "bfloat16" and ex["statistics_dtype"] == "float32"
    assert ex["backend"] == "torch" and ex["attention_implementation"] == "sdpa"
    assert "End-to-end scan: backend torch, attention sdpa, weights bfloat16, statistics float32" in md
    assert r.stdout.strip().splitlines()[-1].startswith("gpu_check: ok; total ")


def test_gpu_check_without_a_gpu_says_so_and_fails(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("on a GPU machine the real check is what runs")
    env = dict(os.environ, PYTHON=sys.executable)
    r = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--out", str(tmp_path)],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2
    assert "gpu_check: error: no CUDA GPU visible (use --smoke on CPU)" in r.stderr
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_a_failed_or_overlong_section_is_reported_and_the_rest_still_runs(tmp_path, monkeypatch, capsys):
    """Sections: one sleeps past its 2 s limit (killed), one exits 3, one writes a passing check row; the
    run goes on after each, records every status, keeps the third section's row and exits 1."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import gpu_check

    row = json.dumps({"kind": "check", "shape": "s", "check": "c", "method": "stream", "max_abs_err_bits": 0.0,
                      "pass": True})
    py = sys.executable

    def plan(smoke, jsonl, scan_json):
        return [("slow", [py, "-c", "import time; time.sleep(60)"], 2),
                ("correctness", [py, "-c", "import sys; sys.exit(3)"], 20),
                ("last", [py, "-c", f"open({str(jsonl)!r}, 'a').write({row!r} + '\\n')"], 20)]

    monkeypatch.setattr(gpu_check, "sections", plan)
    monkeypatch.setattr(gpu_check, "environment", lambda: {"cuda": True, "gpu": "stand-in"})
    rc = gpu_check.main(["--out", str(tmp_path), "--budget", "40"])
    assert rc == 1
    rec = json.loads((tmp_path / "gpu_check.json").read_text())
    assert [(s["name"], s["status"]) for s in rec["sections"]] == [
        ("slow", "timed out"), ("correctness", "failed"), ("last", "ok")]
    assert rec["sections"][0]["seconds"] < 15 and rec["sections"][1]["returncode"] == 3
    assert rec["sections"][2]["limit_s"] > 20  # the time the failed section did not use passed on
    assert rec["checks"] == [{"shape": "s", "check": "c", "method": "stream", "max_abs_err_bits": 0.0,
                              "pass": True}]
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("gpu_check: FAILED: section slow timed out; section correctness failed; total ")


def test_the_real_plan_fits_eight_minutes_most_important_first(tmp_path):
    """The GPU plan: correctness first, every shape at T = 2048 (then 512) before any T = 8192, the scan last;
    each section on CUDA in bfloat16 (correctness in float32); the section limits sum to <= 7.5 minutes."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import gpu_check

    plan = gpu_check.sections(False, tmp_path / "rows.jsonl", tmp_path / "scan.json")
    names = [n for n, _, _ in plan]
    assert names == ["correctness", "t2048-pythia-410m", "t2048-llama-3.2-1b", "t2048-mistral-7b",
                     "t8192-pythia-410m", "t8192-llama-3.2-1b", "t8192-mistral-7b", "scan"]
    assert sum(c for _, _, c in plan) <= 450
    for name, cmd, _ in plan:
        assert cmd[0] == sys.executable and cmd[cmd.index("--device") + 1] == "cuda", name
        if name.startswith("t"):
            assert cmd[cmd.index("--dtype") + 1] == "bfloat16"
            assert cmd[cmd.index("--lengths") + 1] == name[1:5]
            assert cmd[cmd.index("--modes") + 1:] == gpu_check.MODES
    assert "--check-only" in plan[0][1] and "--dtype" not in plan[0][1]  # float32 equality checks
