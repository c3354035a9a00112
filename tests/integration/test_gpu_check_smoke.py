"""benchmarks/gpu_check.sh cannot run without a GPU; its --cpu-smoke mode runs the same code on tiny shapes.

The smoke run must exit 0, pass the equality check (streaming entropy vs the eager pattern's, to 1e-5) on the
three families of the GPU check (GPT-NeoX, Llama GQA, Mistral sliding window) and print a timing row for each
of plain / eager / eager-capture / stream / stream-blocks.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_check_cpu_smoke_runs_and_checks_equality():
    env = dict(os.environ, PYTHON=sys.executable)
    out = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--cpu-smoke"], capture_output=True,
                         text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    checks = re.findall(r"equality (\S+)\s+method=stream\s+max\|H_stream - H_eager\| = (\S+) bits\s+(PASS|FAIL)", text)
    assert sorted(c[0] for c in checks) == ["tiny-llama", "tiny-mistral", "tiny-neox"]
    for _, err, verdict in checks:
        assert verdict == "PASS" and float(err) < 1e-5
    for shape in ("tiny-neox", "tiny-llama", "tiny-mistral"):
        for mode in ("plain", "eager", "eager-capture", "stream", "stream-blocks"):
            assert re.search(rf"^{shape}\s+32 {mode}\s+\d+\.\d+", text, re.M), f"no {shape} {mode} row:\n{text}"
    assert "cpu smoke: 3 equality checks, 15 timings, ok" in text
    for mode in ("plain", "plain-body", "scan-pass", "scan-stage", "tl-cache"):  # the scan path's benchmark
        assert re.search(rf"^\| {mode} \| \d+\.\d+ \| \d+\.\d+x \|", text, re.M), f"no scan {mode} row:\n{text}"


def test_gpu_check_without_a_gpu_says_so_and_fails():
    import torch

    if torch.cuda.is_available():
        return  # on a GPU machine the real check is what runs; nothing to assert here
    env = dict(os.environ, PYTHON=sys.executable)
    out = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], capture_output=True, text=True,
                         env=env, timeout=120)
    assert out.returncode != 0
    assert "no CUDA GPU visible (use --cpu-smoke on CPU)" in out.stderr
