"""SIGTERM and SIGINT in the middle of real ``geoprobe`` children (scan, tunnel compare, a multi-model sweep, a
one-shot paper2 run): exit code 128 + signal, exactly one line on stderr naming what was kept and the command
that continues (no traceback), nothing that looks finished, and the printed command completes the job to the
same files as an uninterrupted run (results.csv, prompts.jsonl, tables byte for byte; summaries equal up to
their timings). The reference and the last continuation run in this process on one torch thread, as the
children do (OMP_NUM_THREADS=1), so the stages the children saved are checked across processes too.

The moment of each signal is a file the job writes when a known stage has finished (a scan's
``stages/<stage>/DONE``, a cell's ``checkpoints/step_0000001``), so the signal lands in the next stage.
The scans run on a tiny GPT-2 with a byte-level tokenizer (the built-in English prompt pools tokenize to
distinct byte sequences, so next-token entropies are not tied) and ``--max-tokens 48``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

pytestmark = pytest.mark.slow

SIGNALS = {signal.SIGINT: 130, signal.SIGTERM: 143}
SCAN = ["--domain", "math", "--n", "10", "--pool-size", "40", "--max-tokens", "48", "--no-sula", "--n-boot", "500",
        "--backend", "torch", "--device", "cpu", "--quiet"]


def build_byte_model(folder: Path, seed: int = 0) -> Path:
    """A tiny random GPT-2 (2 layers, context 64) with a byte-level tokenizer: every UTF-8 byte one token."""
    import torch
    import transformers as tf
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    names = ["<pad>", "<unk>", "<bos>"] + sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={n: i for i, n in enumerate(names)}, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    torch.manual_seed(seed)
    cfg = tf.GPT2Config(vocab_size=len(names), n_embd=32, n_layer=2, n_head=4, n_inner=64, n_positions=64,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=2, eos_token_id=2,
                        pad_token_id=0)
    folder.mkdir(parents=True, exist_ok=True)
    tf.GPT2LMHeadModel(cfg).save_pretrained(folder, safe_serialization=True)
    tf.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>",
                               bos_token="<bos>").save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def byte_models(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("byte_models")
    return [build_byte_model(root / f"b{seed}", seed=seed) for seed in (0, 1)]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


@pytest.fixture
def one_thread():
    """In-process runs on one torch thread, as the children (OMP_NUM_THREADS=1): the same float sums."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _run(argv: list[str]) -> None:
    """``geoprobe argv`` in this process (the reference, and the last, uninterrupted continuation)."""
    from geoprobe.cli import main

    assert main(argv) == 0


def _stop_when(argv: list[str], ready: Path, signum: int, after: Path | None = None,
               settle: float = 0.0) -> subprocess.CompletedProcess:
    """Start ``geoprobe argv``, wait until ``after`` (if given) and then ``ready`` exist (and ``settle`` seconds),
    send ``signum``."""
    child = subprocess.Popen([sys.executable, "-m", "geoprobe", *argv], env=_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    t0 = time.monotonic()
    for path in [p for p in (after, ready) if p is not None]:
        while not path.exists():
            assert child.poll() is None, f"ended before {path} appeared: {child.communicate()}"
            assert time.monotonic() - t0 < 300, f"{path} did not appear"
            time.sleep(0.005)
    time.sleep(settle)
    child.send_signal(signum)
    stdout, stderr = child.communicate(timeout=300)
    return subprocess.CompletedProcess(child.args, child.returncode, stdout, stderr)


def _one_line(res: subprocess.CompletedProcess, signum: int) -> str:
    """The single stderr line of a cleanly stopped child (exit code 128 + signum, no traceback)."""
    assert res.returncode == SIGNALS[signum], res.stderr
    assert "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith(f"geoprobe: {signal.Signals(signum).name} received: ")
    return lines[0]


def _continue_argv(line: str) -> list[str]:
    words = shlex.split(line.split("; continue with: ", 1)[1])
    assert words[0] == "geoprobe"
    return words[1:]


def _stages_named(line: str) -> list[str]:
    m = re.search(r"finished stage\(s\) \(([^)]*)\) kept in", line)
    return m.group(1).split(", ") if m else []


def _done_stages(staging: Path) -> set[str]:
    return {p.parent.name for p in (staging / "stages").glob("*/DONE")}


def _same_scan(a: Path, b: Path) -> None:
    """Two scan folders hold the same result: files byte for byte, summaries up to timings and resumed stages."""
    for name in ("results.csv", "prompts.jsonl"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    sa, sb = (json.loads((x / "summary.json").read_text()) for x in (a, b))
    assert sa["summary"] == sb["summary"]
    ma, mb = (json.loads((x / "manifest.json").read_text()) for x in (a, b))
    for m in (ma, mb, sa["manifest"], sb["manifest"]):
        m.pop("timings_s"), m.pop("resumed_stages")
    assert ma == mb and sa["manifest"] == sb["manifest"]


def test_scan_stopped_by_sigterm_then_sigint_continues_to_the_same_result(byte_models, tmp_path, one_thread):
    model = str(byte_models[0])
    _run(["scan", model, *SCAN, "--out", str(tmp_path / "ref")])
    out, staging = tmp_path / "scan", tmp_path / ".scan.geoprobe-new"
    argv = ["scan", model, *SCAN, "--out", str(out)]

    first = _stop_when(argv, staging / "stages" / "selection-mixed" / "DONE", signal.SIGTERM)
    line = _one_line(first, signal.SIGTERM)
    assert f"scan of {model} stopped; " in line and f"kept in {staging}; {out} appears when the scan completes" in line
    assert set(_stages_named(line)) == _done_stages(staging) and "selection-mixed" in _stages_named(line)
    assert not out.exists() and not (tmp_path / ".scan.geoprobe-lock").exists()  # nothing looks finished
    resume = _continue_argv(line)
    assert resume == argv + ["--resume"]

    second = _stop_when(resume, staging / "stages" / "probes-mixed" / "DONE", signal.SIGINT)
    line = _one_line(second, signal.SIGINT)
    assert {"selection-mixed", "probes-mixed"} <= set(_stages_named(line)) == _done_stages(staging)
    assert not out.exists() and _continue_argv(line) == resume

    _run(resume)
    assert not staging.exists()
    resumed = json.loads((out / "manifest.json").read_text())["resumed_stages"]
    assert {"selection-mixed", "probes-mixed"} <= set(resumed)
    _same_scan(out, tmp_path / "ref")


CMP = ["tunnel", "compare", "--tasks", "bijection", "--archs", "mlp", "transformer", "--preset", "smoke",
       "--device", "cpu", "--quiet"]
TIMING = ["train_wall_time_s", "cell_wall_time_s", "run"]


def test_compare_stopped_by_sigint_then_sigterm_continues_to_the_same_tables(tmp_path, one_thread):
    ref, out = tmp_path / "ref", tmp_path / "grid"
    _run([*CMP, "--out", str(ref)])
    argv = [*CMP, "--out", str(out)]
    mlp, transformer = (out / "bijection" / a / "seed0" for a in ("mlp", "transformer"))

    first = _stop_when(argv, mlp / "checkpoints" / "step_0000001", signal.SIGINT)
    line = _one_line(first, signal.SIGINT)
    assert re.search(f"training stopped at step \\d+ of 40 with its trainer state saved in {mlp}; 0 of 2 grid "
                     f"cells finished and kept in {out} ", line), line
    assert _continue_argv(line) == argv  # the same command continues (finished cells are reused)

    second = _stop_when(argv, transformer / "checkpoints" / "step_0000001", signal.SIGTERM)
    line = _one_line(second, signal.SIGTERM)
    assert f"saved in {transformer}; 1 of 2 grid cells finished and kept in {out} " in line
    assert _continue_argv(line) == argv
    for name in ("table.csv", "table.md", "verdicts.json", "report.html"):
        assert not (out / name).exists()  # written only when the grid is complete
    assert list(pd.read_csv(out / "cells.csv")["arch"]) == ["mlp"]

    _run(argv)
    for cell in ("mlp", "transformer"):  # resumed training is bit-identical
        path = Path("bijection") / cell / "seed0" / "model" / "model.safetensors"
        assert (out / path).read_bytes() == (ref / path).read_bytes()
    cells = [pd.read_csv(x / "cells.csv").drop(columns=TIMING) for x in (out, ref)]
    pd.testing.assert_frame_equal(*cells, check_exact=True)
    tables = [pd.read_csv(x / "table.csv").drop(columns=["train_wall_time_s_mean", "cell_wall_time_s_mean"])
              for x in (out, ref)]
    pd.testing.assert_frame_equal(*tables, check_exact=True)
    assert (out / "verdicts.json").read_text() == (ref / "verdicts.json").read_text()


def test_multi_model_scan_stopped_by_sigterm_then_sigint_continues_to_the_same_tables(byte_models, tmp_path,
                                                                                      one_thread):
    models = [str(m) for m in byte_models]
    ref, out = tmp_path / "ref", tmp_path / "many"
    argv = ["scan", *models, *SCAN, "--no-causal", "--out", str(out)]
    _run(["scan", *models, *SCAN, "--no-causal", "--out", str(ref)])
    b0, b1 = (out / "models" / m.name for m in byte_models)
    staged0, staged1 = (out / "models" / f".{m.name}.geoprobe-new" for m in byte_models)

    first = _stop_when(argv, staged0 / "stages" / "selection-mixed" / "DONE", signal.SIGTERM)
    line = _one_line(first, signal.SIGTERM)
    assert f"scan of {models[0]} stopped; " in line and f"kept in {staged0}; " in line
    assert f"0 of 2 models finished and kept in {out / 'models'} " in line
    assert _continue_argv(line) == argv  # several models: the same command continues (no --resume)

    second = _stop_when(argv, staged1 / "stages" / "selection-mixed" / "DONE", signal.SIGINT,
                        after=b0 / "summary.json")
    line = _one_line(second, signal.SIGINT)
    assert f"scan of {models[1]} stopped; " in line and f"kept in {staged1}; " in line
    assert f"1 of 2 models finished and kept in {out / 'models'} " in line
    assert not b1.exists() and not (out / "manifest.json").exists() and not (out / "table.csv").exists()

    _run(argv)
    for name in ("table.csv", "table.md", "scorecard.csv"):
        assert (out / name).read_bytes() == (ref / name).read_bytes(), name
    for m in byte_models:
        _same_scan(out / "models" / m.name, ref / "models" / m.name)


def test_one_shot_job_stopped_leaves_nothing_and_says_so(tmp_path):
    out = tmp_path / "em"
    argv = ["paper2", "em-vs-sgd", "--seeds", "1", "2", "3", "--steps", "400", "--T", "400", "--n-boot", "50",
            "--out", str(out)]
    res = _stop_when(argv, tmp_path / ".em.geoprobe-new" / ".geoprobe", signal.SIGTERM, settle=0.3)  # training
    line = _one_line(res, signal.SIGTERM)
    assert line == (f"geoprobe: SIGTERM received: geoprobe paper2 em-vs-sgd stopped; nothing was written to {out} "
                    f"(its results appear complete or not at all); start it again with: geoprobe "
                    f"{shlex.join(argv)}")
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no staging folder, no lock file


def test_scan_does_not_cut_the_callers_candidates(byte_models):
    """``--max-tokens`` cuts the candidates of this scan only: a multi-model scan hands every model the same
    candidate lists, so the second model must not receive the first one's cut texts."""
    from geoprobe.scan.driver import ScanOptions, candidate_sets, run_scan

    opts = ScanOptions(domain="math", n=10, pool_size=40, max_tokens=8, sula=False, causal=False, n_boot=20,
                       backend="torch", device="cpu")
    sets = candidate_sets(opts)
    before = {k: [c.text for c in v] for k, v in sets.items()}
    res = run_scan(str(byte_models[0]), domain="math", n=10, options=opts, candidates=sets)
    assert {k: [c.text for c in v] for k, v in sets.items()} == before
    cut = res.report.manifest["choices"]["prompt_truncation"]["cut"]
    assert set(cut) == {"mixed", "domain"} and all(len(v) > 0 for v in cut.values())


def test_ray_grid_stopped_by_sigterm_leaves_no_ray_process(tmp_path):
    """A Ray sweep (local instance): SIGTERM stops the driver cleanly (before: Ray's own SIGTERM handler made the
    driver abort with exit -6 and a C++ stack dump), its tasks are cancelled and every Ray process ends."""
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'geoprobe[ray]')")
    psutil = pytest.importorskip("psutil", reason="psutil is needed to check that no Ray process is left")
    out = tmp_path / "grid"
    argv = [*CMP, "--executor", "ray", "--out", str(out)]
    child = subprocess.Popen([sys.executable, "-m", "geoprobe", *argv], env=_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    t0 = time.monotonic()
    while not list(out.glob("bijection/*/seed0/checkpoints/step_0000001")):  # a cell trains on a Ray worker
        assert child.poll() is None, child.communicate()
        assert time.monotonic() - t0 < 300
        time.sleep(0.02)
    started = psutil.Process(child.pid).children(recursive=True)
    assert any(p.name() == "raylet" for p in started)
    child.send_signal(signal.SIGTERM)
    _, stderr = child.communicate(timeout=120)
    assert child.returncode == 143 and "Traceback" not in stderr, stderr
    lines = [x for x in stderr.strip().splitlines() if x.startswith("geoprobe")]
    # both cells run at once on the two Ray workers: a fast machine may finish the MLP cell before the signal
    from geoprobe.models.checkpoint import is_finished_run

    finished = sum(is_finished_run(out / "bijection" / a / "seed0") for a in ("mlp", "transformer"))
    assert finished < 2
    assert len(lines) == 1 and lines[0].startswith(f"geoprobe: SIGTERM received: tunnel compare stopped; {finished} "
                                                   f"of 2 grid cells finished and kept in {out} ")
    assert _continue_argv(lines[0]) == argv
    _, alive = psutil.wait_procs(started, timeout=30)
    assert alive == []
    assert not (out / "verdicts.json").exists()
