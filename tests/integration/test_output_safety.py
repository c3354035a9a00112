"""Nothing lost: output folders are validated before anything is written, locked against a second writer,
replaced only when the new result is complete, and never deleted when geoprobe did not write them; resume
refuses a changed schedule; a planted pickle is refused; non-finite training and allocation failures stop with
one line and leave nothing half-made.

Each row of the table is one command with its exit code, a phrase of its one-line error, the folders that must
be byte-for-byte unchanged afterwards and the paths that must not exist.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from geoprobe.cli import main
from geoprobe.models import get_preset
from geoprobe.models.run import train_tunnel

STEPS = ["--steps", "8"]
TRAIN = ["tunnel", "train", "bijection", "--preset", "smoke", "--device", "cpu", "--quiet"]
PROBE = ["--probes", "key_orthogonality", "--n", "16", "--n-boot", "10", "--backend", "torch", "--device", "cpu",
         "--quiet"]


def digest(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` (hidden ones included), by relative path."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("safety")
    preset = get_preset("bijection", "smoke", steps=8)
    train_tunnel(root / "run", "bijection", preset, device="cpu", progress=False, eval_sequences_final=256)
    assert train_tunnel(root / "paused", "bijection", preset, device="cpu", progress=False,
                        stop_after=3) == {"status": "paused", "step": 3}
    assert main(["probe", str(root / "run"), "--out", str(root / "probe"), *PROBE]) == 0
    (root / "listman").mkdir()
    (root / "listman" / "manifest.json").write_text("[]")
    (root / "noname").mkdir()
    manifest = json.loads((root / "paused" / "manifest.json").read_text())
    manifest["task"] = {"config": manifest["task"]["config"]}
    (root / "noname" / "manifest.json").write_text(json.dumps(manifest))
    return {"run": root / "run", "paused": root / "paused", "probe": root / "probe",
            "listman": root / "listman", "noname": root / "noname"}


ROWS = [
    # --out is, lies inside or contains the input
    (["probe", "{run}", "--out", "{run}", "--overwrite", *PROBE], "is the input", ["run"], []),
    (["probe", "{run}", "--out", "{run}/probes", *PROBE], "lies inside the input", ["run"], ["{run}/probes"]),
    (["probe", "{run}/checkpoints/step_0000000", "--out", "{run}", "--overwrite", *PROBE], "contains the input",
     ["run"], []),
    # a failing job never touches the old result
    (["probe", "{tmp}/nonexistent", "--out", "{probe}", "--overwrite", *PROBE], "no such file", ["probe"], []),
    # --overwrite / compare refuse folders geoprobe did not write
    ([*TRAIN, "--out", "{mine}", "--overwrite"], "geoprobe did not write", ["mine"], []),
    (["probe", "{run}", "--out", "{mine}", "--overwrite", *PROBE], "geoprobe did not write", ["mine"], []),
    (["tunnel", "compare", "--tasks", "bijection", "--archs", "mlp", "--preset", "smoke", "--out", "{mine}",
      "--quiet"], "geoprobe did not write", ["mine"], []),
    # probe has no --resume: its message must not suggest it
    (["probe", "{run}", "--out", "{probe}", *PROBE], "already holds results; pass --overwrite", ["probe"], []),
    # non-finite or impossible schedules: nothing written
    ([*TRAIN, "--lr", "inf", "--out", "{tmp}/new"], "learning rate must be a finite number > 0", [], ["{tmp}/new"]),
    ([*TRAIN, "--lr", "nan", "--out", "{tmp}/new"], "learning rate must be a finite number > 0", [], ["{tmp}/new"]),
    ([*TRAIN, "--lr", "-1", "--out", "{tmp}/new"], "learning rate must be a finite number > 0", [], ["{tmp}/new"]),
    # allocation failures: one line with the size, no half-made run folder
    ([*TRAIN, "--set", "V=100000000000", "--out", "{tmp}/new"], "of memory", [],
     ["{tmp}/new"]),
    ([*TRAIN, "--batch-size", "1000000000000", "--out", "{tmp}/new"], "GiB", [], ["{tmp}/new"]),
    # resume: nothing there, finished, or a changed setting
    ([*TRAIN, *STEPS, "--resume", "--out", "{tmp}/new"], "nothing to resume", [], ["{tmp}/new"]),
    ([*TRAIN, *STEPS, "--resume", "--out", "{run}"], "is a finished run", ["run"], []),
    ([*TRAIN, "--steps", "60", "--resume", "--out", "{paused}"], "train.steps is 8 in the run but 60",
     ["paused"], []),
    ([*TRAIN, *STEPS, "--lr", "0.01", "--resume", "--out", "{paused}"], "train.lr is 0.003 in the run but 0.01",
     ["paused"], []),
    ([*TRAIN, *STEPS, "--batch-size", "16", "--resume", "--out", "{paused}"], "train.batch_size is 32", ["paused"],
     []),
    ([*TRAIN, *STEPS, "--target", "hard", "--resume", "--out", "{paused}"], "train.target is 'soft'", ["paused"],
     []),
    ([*TRAIN, *STEPS, "--seed", "1", "--resume", "--out", "{paused}"], "seed is 0 in the run but 1", ["paused"], []),
    ([*TRAIN, *STEPS, "--set", "V=5", "--resume", "--out", "{paused}"], "task.config.V is 6 in the run but 5",
     ["paused"], []),
    ([*TRAIN, *STEPS, "--arch", "mlp", "--resume", "--out", "{paused}"], "arch is 'transformer' in the run but 'mlp'",
     ["paused"], []),
    # malformed manifests
    ([*TRAIN, *STEPS, "--resume", "--out", "{listman}"], "a JSON list, not an object", ["listman"], []),
    (["tunnel", "eval", "{listman}", "--quiet"], "a JSON list, not an object", ["listman"], []),
    (["probe", "{listman}", "--out", "{tmp}/p", *PROBE], "a JSON list, not an object", ["listman"], ["{tmp}/p"]),
    ([*TRAIN, *STEPS, "--resume", "--out", "{noname}"], "lacks the task name", ["noname"], []),
]


@pytest.mark.parametrize("argv,phrase,unchanged,absent", ROWS, ids=[f"{i:02d}-{r[1][:28]}" for i, r in
                                                                    enumerate(ROWS)])
def test_refused_commands_change_nothing(folders, tmp_path, capsys, argv, phrase, unchanged, absent):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "data.txt").write_text("a week of someone's work")
    places = {**{k: str(v) for k, v in folders.items()}, "tmp": str(tmp_path), "mine": str(mine)}
    paths = {"mine": mine, **folders}
    before = {name: digest(paths[name]) for name in unchanged}
    argv = [a.format(**places) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("geoprobe: error: ") and phrase in err[0], err
    if argv[0] == "probe":
        assert "--resume" not in err[0]
    for name in unchanged:
        assert digest(paths[name]) == before[name], f"{name} was changed"
    for path in absent:
        assert not Path(path.format(**places)).exists()
    leftovers = [p.name for p in Path(folders["run"]).parent.iterdir() if ".geoprobe-" in p.name]
    leftovers += [p.name for p in tmp_path.iterdir() if ".geoprobe-" in p.name]
    assert leftovers == []  # no lock file, no staging folder left behind


def test_read_only_out_is_one_line(tmp_path, capsys, tunnel_run_dir):
    parent = tmp_path / "ro"
    parent.mkdir()
    if os.geteuid() == 0:
        if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(parent)]).returncode != 0:
            pytest.skip("root without chattr: no way to make a folder read-only")
    else:
        parent.chmod(0o555)
    try:
        for argv in ([*TRAIN, *STEPS, "--out", str(parent / "run")],
                     ["probe", str(tunnel_run_dir), "--out", str(parent / "p"), *PROBE]):
            assert main(argv) == 2
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and "cannot write to" in err[0] and "ro" in err[0], err
        assert list(parent.iterdir()) == []
    finally:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(parent)])
        parent.chmod(0o755)


# ---------------------------------------------------------------------------------------------- locking


def _hold_lock(path: Path) -> subprocess.Popen:
    """A separate process that takes the output lock of ``path`` and waits (for kill)."""
    code = ("import sys, time; from geoprobe.io import OutputLock; OutputLock(sys.argv[1]).acquire(); "
            "print('locked', flush=True); time.sleep(600)")
    child = subprocess.Popen([sys.executable, "-c", code, str(path)], env=_env(), stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "locked"
    return child


def test_second_writer_is_refused_naming_the_holder_and_kill_9_frees_the_lock(tmp_path, capsys, tunnel_run_dir):
    import socket

    out = tmp_path / "run"
    holder = _hold_lock(out)
    try:
        assert main([*TRAIN, *STEPS, "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"in use by another geoprobe job (pid {holder.pid} on {socket.gethostname()}" \
            in err[0]
        for argv in (["probe", str(tunnel_run_dir), *PROBE], ["demo", "--preset", "smoke"],
                     ["tunnel", "compare", "--preset", "smoke", "--quiet"]):
            assert main([*argv, "--out", str(out)]) == 2
            assert f"in use by another geoprobe job (pid {holder.pid}" in capsys.readouterr().err
        assert not out.exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    lock = tmp_path / ".run.geoprobe-lock"
    assert json.loads(lock.read_text())["pid"] == holder.pid  # the dead holder's file is still there ...
    assert main([*TRAIN, *STEPS, "--out", str(out)]) == 0  # ... and blocks nobody
    assert json.loads((out / "manifest.json").read_text())["status"] == "finished"
    assert not lock.exists()


def test_two_concurrent_train_processes_on_one_out(tmp_path):
    """The issue's case: seeds 0 and 1 on one --out. The second gets one line naming the first's pid and writes
    nothing; the folder holds one consistent run (seed 0's manifest, model and trainer state)."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "geoprobe", *TRAIN, "--steps", "100000", "--out", str(out)]
    first = subprocess.Popen(cmd + ["--seed", "0"], env=_env(), stderr=subprocess.PIPE, text=True)
    t0 = time.monotonic()
    while not (out / "checkpoints" / "step_0000001").exists():
        assert first.poll() is None and time.monotonic() - t0 < 120
        time.sleep(0.01)
    for extra in (["--seed", "1"], ["--seed", "1", "--overwrite"]):
        second = subprocess.run(cmd + extra, env=_env(), capture_output=True, text=True, timeout=120)
        assert second.returncode == 2
        err = second.stderr.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"geoprobe: error: output folder {out} is in use by another "
                                                   f"geoprobe job (pid {first.pid} on "), err
    first.send_signal(signal.SIGINT)
    assert first.wait(timeout=120) == 130
    assert json.loads((out / "manifest.json").read_text())["seed"] == 0
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # no staging of the refused --overwrite
    # the model is seed 0's: its initialisation checkpoint equals a fresh seed-0 run's
    preset = get_preset("bijection", "smoke", steps=100000)
    train_tunnel(tmp_path / "again", "bijection", preset, device="cpu", progress=False, stop_after=0)
    name = "checkpoints/step_0000000/model.safetensors"
    assert digest(out)[name] == digest(tmp_path / "again")[name]


# ---------------------------------------------------------------------------------------- replacement


def test_interrupted_overwrite_keeps_the_old_run_and_resume_finishes_the_replacement(folders, tmp_path):
    old = tmp_path / "run"
    shutil.copytree(folders["run"], old)
    before = digest(old)
    cmd = [sys.executable, "-m", "geoprobe", *TRAIN, "--steps", "150", "--seed", "1", "--out", str(old)]
    child = subprocess.Popen(cmd + ["--overwrite"], env=_env(), stderr=subprocess.PIPE, text=True)
    staging = tmp_path / ".run.geoprobe-new"
    t0 = time.monotonic()
    while not (staging / "checkpoints" / "step_0000001").exists():
        assert child.poll() is None and time.monotonic() - t0 < 120
        time.sleep(0.01)
    child.send_signal(signal.SIGTERM)
    assert child.wait(timeout=120) == 143
    assert "continue with --resume" in child.stderr.read()
    assert digest(old) == before  # the old run is intact while its replacement waits beside it
    assert json.loads((staging / "manifest.json").read_text())["seed"] == 1
    done = subprocess.run(cmd + ["--resume"], env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    manifest = json.loads((old / "manifest.json").read_text())
    assert (manifest["seed"], manifest["step"], manifest["status"]) == (1, 150, "finished")
    assert not staging.exists() and not (tmp_path / ".run.geoprobe-old").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


def test_probe_report_failure_leaves_no_finished_looking_folder(folders, tmp_path, capsys, monkeypatch):
    from geoprobe.report import Report

    def disk_full(self):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Report, "to_html", disk_full)
    fresh = tmp_path / "fresh"
    assert main(["probe", str(folders["run"]), "--out", str(fresh), *PROBE]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "No space left on device; nothing was replaced" in err[0]
    assert not fresh.exists()
    old = tmp_path / "old"
    shutil.copytree(folders["probe"], old)
    before = digest(old)
    assert main(["probe", str(folders["run"]), "--out", str(old), "--overwrite", *PROBE]) == 2
    assert digest(old) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old"]


# ------------------------------------------------------------------------------------------- security


def test_planted_pickle_in_trainer_state_is_refused_and_never_runs(folders, tmp_path, capsys):
    run = tmp_path / "paused"
    shutil.copytree(folders["paused"], run)
    witness = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {witness}",))

    import torch

    torch.save({"model": Payload(), "step": 3}, run / "state" / "trainer.pt")
    before = digest(run)
    assert main([*TRAIN, *STEPS, "--resume", "--out", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "refused to load it" in err[0] and "trainer.pt" in err[0]
    assert not witness.exists()
    assert digest(run) == before


# ------------------------------------------------------------------------------------------ divergence


def test_non_finite_training_stops_keeps_the_last_good_state_and_marks_the_run_failed(tmp_path, capsys):
    out = tmp_path / "run"
    # a finite but absurd learning rate: step 1 is finite, its update blows the weights up, step 2 is NaN
    assert main([*TRAIN, *STEPS, "--lr", "1e30", "--save-every", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "training diverged" in err[0] and "at step 2" in err[0]
    assert "trainer state of step 1" in err[0] and "smaller --lr" in err[0]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "failed" and "non-finite" in manifest["failure"]
    assert not (out / "metrics.json").exists() and not (out / "model").exists()
    from geoprobe.models.training import load_trainer_state

    state = load_trainer_state(out / "state" / "trainer.pt")
    assert state["step"] == 1
    import torch

    assert all(bool(torch.isfinite(v).all()) for v in state["model"].values())
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_0000000", "step_0000001"]


# ---------------------------------------------------------------------------------------------- disk errors, eval lock


def test_disk_full_during_training_is_one_line_and_resume_finishes(tmp_path, capsys, monkeypatch):
    """A write that fails mid-training (ENOSPC while saving a checkpoint) stops with one line that says what was
    kept; --resume then finishes the run, identical to an undisturbed one."""
    import geoprobe.models.run as run_mod

    real = run_mod.save_model_folder
    calls = {"n": 0}

    def full_disk(folder, *a, **kw):
        if folder.name == "step_0000005":
            calls["n"] += 1
            raise OSError(errno.ENOSPC, "No space left on device", str(folder))
        return real(folder, *a, **kw)

    out, ref = tmp_path / "run", tmp_path / "ref"
    argv = [*TRAIN, *STEPS, "--save-every", "2"]
    monkeypatch.setattr(run_mod, "save_model_folder", full_disk)
    assert main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert calls["n"] == 1 and len(err) == 1, err
    assert "No space left on device" in err[0] and "trainer state of step 4 is kept" in err[0]
    assert "--resume" in err[0]
    monkeypatch.setattr(run_mod, "save_model_folder", real)
    assert main([*argv, "--out", str(out), "--resume"]) == 0
    assert main([*argv, "--out", str(ref)]) == 0
    for name in ("model/model.safetensors", "checkpoints/step_0000005/model.safetensors"):
        assert (out / name).read_bytes() == (ref / name).read_bytes()
    assert json.loads((out / "manifest.json").read_text())["status"] == "finished"


def test_tunnel_eval_is_refused_while_a_job_holds_the_run(folders, capsys):
    """Evaluation rewrites metrics.json, report.html and the manifest: refused while another process (a training
    job) holds the run's lock, naming it; nothing in the run changes."""
    run = folders["run"]
    before = digest(run)
    holder = _hold_lock(run)
    try:
        assert main(["tunnel", "eval", str(run), "--n", "64", "--device", "cpu", "--quiet"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"in use by another geoprobe job (pid {holder.pid}" in err[0]
        assert "before evaluating" in err[0]
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert digest(run) == before


def test_read_manifest_names_a_file_as_a_file(tmp_path):
    from geoprobe.errors import CheckpointError
    from geoprobe.models.checkpoint import read_manifest

    f = tmp_path / "notes.txt"
    f.write_text("x")
    with pytest.raises(CheckpointError, match="is a file, not a run folder"):
        read_manifest(f)
    with pytest.raises(CheckpointError, match="does not exist"):
        read_manifest(tmp_path / "missing")
