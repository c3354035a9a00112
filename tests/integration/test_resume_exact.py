"""Interrupting a real ``geoprobe tunnel train`` child at a random moment (SIGINT, SIGTERM or SIGKILL) and
continuing it with ``--resume`` gives a bit-identical run on CPU: same final weights (sha256 of the
safetensors), same checkpoints, same metrics.json, same log (one record per evaluation step, no duplicates).

The kill moment is drawn from a seeded generator inside the training phase (after the step-0 checkpoint
exists), so it lands mid-step, mid-checkpoint-write or mid-evaluation; ``--save-every 7`` makes a SIGKILL
resume from a periodic save several steps back.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

STEPS = 80
SAVE_EVERY = 7
ARGS = ["tunnel", "train", "bijection", "--preset", "smoke", "--steps", str(STEPS), "--device", "cpu", "--quiet"]


def _cli(out: Path, *extra: str, save_every: int = SAVE_EVERY) -> list[str]:
    return [sys.executable, "-m", "geoprobe", *ARGS, "--save-every", str(save_every), "--out", str(out), *extra]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _fingerprint(run: Path) -> dict:
    """Everything that must be identical between an uninterrupted and an interrupted + resumed run."""
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    for rec in log:
        rec.pop("wall_time_s")
    ckpts = {d.name: _sha(d / "model.safetensors") for d in sorted((run / "checkpoints").iterdir())}
    manifest = json.loads((run / "manifest.json").read_text())
    return {"model": _sha(run / "model" / "model.safetensors"), "checkpoints": ckpts,
            "metrics": json.loads((run / "metrics.json").read_text()), "log": log,
            "status": manifest["status"], "step": manifest["step"]}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("ref") / "run"
    done = subprocess.run(_cli(out), env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return _fingerprint(out)


def _interrupt(out: Path, signum: int, delay: float) -> subprocess.CompletedProcess:
    """Start training, wait until the training loop runs (step-0 checkpoint written), sleep ``delay``, signal."""
    child = subprocess.Popen(_cli(out), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t0 = time.monotonic()
    while not (out / "checkpoints" / "step_0000000").exists():
        assert child.poll() is None, child.communicate()
        assert time.monotonic() - t0 < 120, "training did not start"
        time.sleep(0.01)
    time.sleep(delay)
    child.send_signal(signum)
    stdout, stderr = child.communicate(timeout=120)
    return subprocess.CompletedProcess(child.args, child.returncode, stdout, stderr)


@pytest.mark.parametrize("signum,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGKILL, -9)])
def test_interrupt_at_a_random_moment_then_resume_is_bit_identical(reference, tmp_path, signum, code):
    out = tmp_path / "run"
    delay = random.Random(7 + signum).uniform(0.05, 1.2)  # seeded: 0.58 s, 1.15 s and 0.47 s after the start
    killed = _interrupt(out, signum, delay)
    if killed.returncode == 0:  # the machine was fast enough to finish first: nothing was interrupted
        pytest.skip(f"training finished within {delay:.2f} s")
    assert killed.returncode == code, killed.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    # "finished" only when the signal landed between the final manifest write and the clean-up: the resume
    # state is then still there and --resume completes the clean-up
    assert manifest["status"] in ("training", "trained") or (manifest["status"] == "finished"
                                                               and (out / "state").is_dir())
    from geoprobe.models.training import load_trainer_state

    saved = load_trainer_state(out / "state" / "trainer.pt")["step"] if (out / "state").exists() else 0
    print(f"{signal.Signals(signum).name} after {delay:.2f} s: trainer state at step {saved}")
    if signum != signal.SIGKILL:
        err = killed.stderr.strip().splitlines()
        assert len(err) == 1 and "continue with --resume" in err[0] and signal.Signals(signum).name in err[0]
        assert not list(out.rglob(".*.tmp"))  # a clean stop leaves no temporary files
    else:
        # leftovers a killed atomic write may leave, plus a user's file that merely looks similar
        (out / "checkpoints" / ".step_0000099.ab12cd34.tmp").mkdir()
        (out / ".log.jsonl.zz9yy8xx.tmp").write_text("torn")
        (out / ".notes.ab12cd34.tmp").write_text("mine")
    resumed = subprocess.run(_cli(out, "--resume"), env=_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    got = _fingerprint(out)
    assert got["model"] == reference["model"]
    assert got["checkpoints"] == reference["checkpoints"]
    assert got["metrics"] == reference["metrics"]
    steps = [rec["step"] for rec in got["log"]]
    assert steps == sorted(set(steps)) == [20, 40, 60, 80]
    assert got["log"] == reference["log"]
    assert (got["status"], got["step"]) == ("finished", STEPS)
    assert not (out / "state").exists()
    assert sorted(p.name for p in out.rglob(".*.tmp")) == ([".notes.ab12cd34.tmp"] if signum == signal.SIGKILL
                                                           else [])


def test_sigkill_leaves_duplicate_log_steps_that_resume_removes(tmp_path):
    """Kill -9 right after an evaluation that follows the last periodic save: the log holds a step beyond the
    saved state; --resume cuts it back and replays it, so each step appears once."""
    out = tmp_path / "run"
    # save every 50 steps, evaluate every 20: after step 40 is logged no trainer state is saved yet
    cmd = _cli(out, save_every=50)
    child = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    t0 = time.monotonic()
    log = out / "log.jsonl"
    while not (log.exists() and '"step": 40' in log.read_text()):
        assert child.poll() is None and time.monotonic() - t0 < 120
        time.sleep(0.005)
    child.kill()
    child.wait()
    from geoprobe.models.training import load_trainer_state

    state_step = load_trainer_state(out / "state" / "trainer.pt")["step"] if (out / "state").exists() else 0
    logged = [json.loads(x)["step"] for x in log.read_text().splitlines()]
    assert max(logged) > state_step  # the situation the resume must repair
    assert subprocess.run(cmd + ["--resume"], env=_env(), capture_output=True, timeout=300).returncode == 0
    steps = [json.loads(x)["step"] for x in log.read_text().splitlines()]
    assert steps == [20, 40, 60, 80]


def test_resume_after_an_interrupted_final_evaluation_only_evaluates(tmp_path, monkeypatch):
    """Training finished (status ``trained``) but the final evaluation was cut off: --resume evaluates the saved
    model (no retraining) and gives the uninterrupted run's metrics and weights."""
    import geoprobe.models.run as run
    from geoprobe.models import get_preset

    preset = get_preset("bijection", "smoke", steps=8)
    ref = run.train_tunnel(tmp_path / "ref", "bijection", preset, device="cpu", progress=False,
                           eval_sequences_final=256)
    real = run.evaluate_run

    def cut(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(run, "evaluate_run", cut)
    with pytest.raises(KeyboardInterrupt):
        run.train_tunnel(tmp_path / "cut", "bijection", preset, device="cpu", progress=False,
                         eval_sequences_final=256)
    assert json.loads((tmp_path / "cut" / "manifest.json").read_text())["status"] == "trained"
    weights = _sha(tmp_path / "cut" / "model" / "model.safetensors")
    monkeypatch.setattr(run, "evaluate_run", real)
    monkeypatch.setattr(run, "_train_loop", None)  # resuming must not train again
    got = run.train_tunnel(tmp_path / "cut", "bijection", preset, device="cpu", progress=False, resume=True,
                           eval_sequences_final=256)
    assert got == ref
    assert weights == _sha(tmp_path / "cut" / "model" / "model.safetensors") == \
        _sha(tmp_path / "ref" / "model" / "model.safetensors")
    assert json.loads((tmp_path / "cut" / "manifest.json").read_text())["status"] == "finished"
    assert not (tmp_path / "cut" / "state").exists()
