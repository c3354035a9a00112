"""Sweeps on a real local Ray instance (2 CPUs, no mocks): the smoke ``tunnel compare`` grid and a
three-revision scan give exactly the local executor's results; a worker killed on its first attempt and a task
that raises once are retried and end identical to an undisturbed run; an executor that starts its own Ray
instance stops it again, and no Ray process outlives the tests.

Skipped (with the reason) where Ray is not installed: ``pip install 'geoprobe[ray]'``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'geoprobe[ray]')")
psutil = pytest.importorskip("psutil", reason="psutil is needed to check that no Ray process is left")

from geoprobe import compare  # noqa: E402
from geoprobe.cli import main  # noqa: E402

TASKS, ARCHS = ["bijection"], ["transformer", "mlp"]  # a 1 x 2 smoke grid: seconds per cell
RAY_NAMES = ("raylet", "gcs_server")


def grid_argv(out: Path, *extra: str, tasks=TASKS, archs=ARCHS) -> list[str]:
    return ["tunnel", "compare", "--tasks", *tasks, "--archs", *archs, "--preset", "smoke", "--seeds", "1",
            "--out", str(out), "--device", "cpu", "--quiet", *extra]


def _ray_processes(since: float) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["name", "create_time", "cmdline"]):
        name, cmd = p.info["name"] or "", " ".join(p.info["cmdline"] or [])
        if p.info["create_time"] >= since - 1 and (name in RAY_NAMES or name.startswith("ray::")
                                                   or "ray/_private" in cmd or "ray/dashboard" in cmd):
            found.append(p)
    return found


def _cell_numbers(out: Path, cells: list[str]) -> dict[str, tuple[bytes, dict]]:
    """Each cell's trained weights (bytes) and evaluation (metrics.json)."""
    return {c: ((out / c / "model" / "model.safetensors").read_bytes(),
                json.loads((out / c / "metrics.json").read_text())) for c in cells}


CELLS = [f"{t}/{a}/seed0" for t in TASKS for a in ARCHS]
TIMING = ["train_wall_time_s", "cell_wall_time_s", "run"]


@pytest.fixture(scope="module")
def local_grid(tmp_path_factory) -> Path:
    """The smoke grid through the local executor, on one torch thread as a Ray task with 1 CPU runs."""
    import torch

    out = tmp_path_factory.mktemp("grid") / "local"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(grid_argv(out)) == 0
    finally:
        torch.set_num_threads(threads)
    return out


def test_executor_starts_and_stops_its_own_ray_instance():
    """No address and no connection: the executor starts a local Ray instance, runs the jobs there (here with
    the package shipped as for a remote cluster), and :meth:`close` stops every process it started."""
    import math

    import geoprobe
    from geoprobe.errors import ConfigError
    from geoprobe.sweep.executors import Job, RayExecutor, worker_info

    assert not ray.is_initialized()
    t0 = time.time()
    ex = RayExecutor(num_cpus=2, object_store_mb=80, ship_package=True)
    try:
        assert (ex.mode, ex.started_local, ex.cluster_cpus, ex.cluster_gpus) == ("local instance", True, 2.0, 0.0)
        lines = []
        out = ex.run([Job("sqrt", math.sqrt, 6.25), Job("factorial", math.factorial, 5),
                      Job("info", worker_info, None)], progress=lines.append)
        assert [(o.key, o.status, o.attempts) for o in out] == [("sqrt", "done", 1), ("factorial", "done", 1),
                                                                ("info", "done", 1)]
        assert (out[0].result, out[1].result) == (2.5, 120)
        info = out[2].result
        assert info["pid"] != os.getpid() and info["omp_num_threads"] == "1"  # 1 CPU per task
        shipped = info["pythonpath"].split(os.pathsep)[0]  # the shipped copy comes first on the workers' path
        assert "py_modules_files" in shipped and (Path(shipped) / "geoprobe" / "sweep" / "executors.py").read_bytes() \
            == (Path(geoprobe.__file__).parent / "sweep" / "executors.py").read_bytes()
        assert "0/3 done, 2 running, 1 queued, 0 failed | submitted 3 job(s)" in lines[0]
        assert "3/3 done, 0 running, 0 failed" in lines[-1]
        with pytest.raises(ConfigError, match="job gpu asks for a GPU \\(device cuda\\) but the Ray cluster has none"):
            ex.run([Job("gpu", worker_info, None, device="cuda")])
        started = psutil.Process().children(recursive=True)
        assert any(p.name() == "raylet" for p in started)
    finally:
        ex.close()
    assert not ray.is_initialized()
    _, alive = psutil.wait_procs(started, timeout=20)
    assert alive == [] and _ray_processes(t0) == []


def test_unreachable_cluster_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "auto")  # "the cluster running on this machine": there is none
    assert main(grid_argv(tmp_path / "out", "--executor", "ray")) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("geoprobe: error: cannot connect to the Ray cluster at 'auto' (--ray-address or "
                          "RAY_ADDRESS): Could not find any running Ray instance.")
    assert not ray.is_initialized() and not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def ray_instance():
    """One local Ray instance (2 CPUs, no dashboard, small object store) for the tests below; after them, every
    process it started must be gone. It declares one GPU resource (Ray schedules by declared resources; no job
    here computes on it) so that the GPU request of CUDA jobs can be checked."""
    t0 = time.time()
    ray.init(address="local", num_cpus=2, num_gpus=1, include_dashboard=False, object_store_memory=80 * 1024 * 1024,
             log_to_driver=False, configure_logging=False)
    yield
    started = psutil.Process().children(recursive=True)
    ray.shutdown()
    _, alive = psutil.wait_procs(started, timeout=20)
    assert alive == [], f"Ray processes left after shutdown: {alive}"
    assert _ray_processes(t0) == []


def test_resource_requests_follow_the_device(ray_instance):
    """cpu: no GPU; cuda: one GPU (Ray assigns it: CUDA_VISIBLE_DEVICES=0); auto: one GPU on a cluster with
    GPUs. An executor on an existing connection leaves it open."""
    from geoprobe.sweep.executors import Job, RayExecutor, worker_info

    with RayExecutor() as ex:
        assert (ex.mode, ex.cluster_cpus, ex.cluster_gpus) == ("existing connection", 2.0, 1.0)
        jobs = [Job(d, worker_info, None, device=d) for d in ("cpu", "cuda", "auto")]
        assert [ex.gpus_for(j) for j in jobs] == [0, 1, 1]
        out = {o.key: o.result["cuda_visible_devices"] for o in ex.run(jobs)}
    assert out["cpu"] in (None, "") and out["cuda"] == "0" and out["auto"] == "0"
    assert ray.is_initialized()


def test_smoke_grid_on_ray_equals_local(ray_instance, local_grid, tmp_path):
    out = tmp_path / "ray"
    assert main(grid_argv(out, "--executor", "ray")) == 0
    assert _cell_numbers(out, CELLS) == _cell_numbers(local_grid, CELLS)
    a, b = pd.read_csv(local_grid / "cells.csv"), pd.read_csv(out / "cells.csv")
    pd.testing.assert_frame_equal(a.drop(columns=TIMING), b.drop(columns=TIMING))
    for f in ("table.md", "verdicts.json"):
        if f == "table.md":  # wall-time columns differ; every number of the results is equal
            drop = lambda t: [r.split("|")[:7] + r.split("|")[10:] for r in t.splitlines()]  # noqa: E731
            assert drop((out / f).read_text()) == drop((local_grid / f).read_text())
        else:
            assert (out / f).read_text() == (local_grid / f).read_text()
    sweep = json.loads((out / "sweep.json").read_text())
    assert sweep["executor"] == "ray" and sweep["mode"] == "existing connection"
    assert [(c["key"], c["status"], c["attempts"]) for c in sweep["cells"]] == [(c, "done", 1) for c in CELLS]
    # a rerun reuses every finished cell (nothing submitted)
    assert main(grid_argv(out, "--executor", "ray")) == 0
    assert all(c["reused"] for c in json.loads((out / "sweep.json").read_text())["cells"])


#: set by the test before the job is pickled (by value, with this dict's content at that moment)
FAULTS: dict[str, str] = {}


def flaky_cell_job(spec):
    """The grid's cell job, except that on its first attempt one cell's worker process dies in the middle of
    training (right after it saved the step-11 checkpoint of 40 steps) and another cell raises before it starts
    (markers in FAULTS['dir'] remember the first attempts)."""
    key = f"{spec.task}/{spec.arch}"
    marker = Path(FAULTS["dir"]) / key.replace("/", "-")
    if key in (FAULTS["crash"], FAULTS["raise"]) and not marker.exists():
        marker.write_text(str(os.getpid()))
        if key == FAULTS["raise"]:
            raise RuntimeError("injected failure on the first attempt")
        import geoprobe.models.run as run  # patched in this worker only, which dies with it

        save = run.save_model_folder

        def die_mid_training(path, *a, **k):
            save(path, *a, **k)
            if path.name == "step_0000011":
                Path(FAULTS["dir"], "partial").write_text("\n".join(sorted(p.name for p in path.parent.iterdir())))
                os._exit(1)  # the worker dies mid-task, as on a lost node or an OOM kill

        run.save_model_folder = die_mid_training
    return compare.compare_cell_job(spec)


def test_failed_and_killed_tasks_are_retried_to_the_undisturbed_result(ray_instance, local_grid, tmp_path,
                                                                       monkeypatch):
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    FAULTS.update({"dir": str(tmp_path), "crash": "bijection/transformer", "raise": "bijection/mlp"})
    monkeypatch.setattr(compare, "compare_cell_job", flaky_cell_job)
    out = tmp_path / "ray"
    assert main(grid_argv(out, "--executor", "ray", "--max-retries", "1")) == 0
    cells = ["bijection/transformer/seed0", "bijection/mlp/seed0"]
    assert _cell_numbers(out, cells) == _cell_numbers(local_grid, cells)
    sweep = json.loads((out / "sweep.json").read_text())
    got = {c["key"]: c for c in sweep["cells"]}
    assert got["bijection/transformer/seed0"]["attempts"] == 2 and got["bijection/mlp/seed0"]["attempts"] == 2
    assert all(c["status"] == "done" for c in got.values())
    assert "RuntimeError: injected failure on the first attempt" in got["bijection/mlp/seed0"]["attempt_errors"]
    assert got["bijection/transformer/seed0"]["attempt_errors"][0].startswith("WorkerCrashedError")
    assert (tmp_path / "partial").read_text().splitlines()[-1] == "step_0000011"  # it died mid-training
    # with no retries left a failure is reported (one line, exit 2) and recorded, never dropped
    for f in [*tmp_path.glob("bijection-*"), tmp_path / "partial"]:
        f.unlink()
    out2 = tmp_path / "ray2"
    assert main(grid_argv(out2, "--executor", "ray", "--max-retries", "0")) == 2
    sweep = json.loads((out2 / "sweep.json").read_text())
    assert sweep["counts"] == {"done": 0, "failed": 2}
    assert {c["key"]: (c["status"], c["attempts"]) for c in sweep["cells"]} == {
        "bijection/transformer/seed0": ("failed", 1), "bijection/mlp/seed0": ("failed", 1)}
    assert not (out2 / "table.csv").exists()
    assert "in flaky_cell_job" in {c["key"]: c for c in sweep["cells"]}["bijection/mlp/seed0"]["traceback"]


def test_three_revision_scan_on_ray_equals_local(ray_instance, tmp_path, monkeypatch):
    from conftest import build_tiny_model, word_pool

    from geoprobe.scan import driver
    from geoprobe.scan.revisions import scan_revisions

    monkeypatch.setattr(driver, "build_pool", word_pool)  # candidates are built here and shipped in the specs
    revs = [str(build_tiny_model("neox", tmp_path / "ckpt" / f"step_{100 * (i + 1)}", seed=i)) for i in range(3)]
    kw = dict(domain="code", n=10, pool_size=40, sula=False, n_boot=30, backend="torch", device="cpu")
    scan_revisions("tiny-neox", revs, out=tmp_path / "local", **kw)
    scan_revisions("tiny-neox", revs, out=tmp_path / "ray", executor="ray", **kw)
    for f in ("trajectory.csv", "signatures.csv", "frame_precision.csv", "frame_precision.json",
              "key_frame_overlap.csv", "selection/prompts.jsonl"):
        assert (tmp_path / "ray" / f).read_text() == (tmp_path / "local" / f).read_text(), f
    for r in revs:
        a, b = (json.loads((tmp_path / x / "revisions" / Path(r).name / "summary.json").read_text())["summary"]
                for x in ("local", "ray"))
        assert a["sets"] == b["sets"]
    sweep = json.loads((tmp_path / "ray" / "sweep.json").read_text())
    assert sweep["executor"] == "ray" and [c["status"] for c in sweep["cells"]] == ["done"] * 4


def test_two_model_scan_on_ray_equals_local(ray_instance, tmp_path, monkeypatch):
    """Each model a Ray task (candidates built here and shipped in the specs): the same scans and table."""
    from conftest import build_tiny_model, word_pool

    from geoprobe.scan import driver
    from geoprobe.scan.models import scan_models

    monkeypatch.setattr(driver, "build_pool", word_pool)
    models = [str(build_tiny_model("neox", tmp_path / "m" / "tiny-neox", seed=0)),
              str(build_tiny_model("gpt2", tmp_path / "m" / "tiny-gpt2", seed=1))]
    kw = dict(domain="code", n=10, pool_size=40, sula=False, n_boot=30, backend="torch", device="cpu")
    local = scan_models(models, out=tmp_path / "local", **kw)
    on_ray = scan_models(models, out=tmp_path / "ray", executor="ray", **kw)
    assert on_ray.equals(local)
    for f in ("table.csv", "table.md", "scorecard.csv"):
        assert (tmp_path / "ray" / f).read_text() == (tmp_path / "local" / f).read_text(), f
    for m in models:
        a, b = (json.loads((tmp_path / x / "models" / Path(m).name / "summary.json").read_text())["summary"]
                for x in ("local", "ray"))
        assert a == b
        assert (tmp_path / "ray" / "models" / Path(m).name / "prompts.jsonl").read_bytes() == \
            (tmp_path / "local" / "models" / Path(m).name / "prompts.jsonl").read_bytes()
    sweep = json.loads((tmp_path / "ray" / "sweep.json").read_text())
    assert sweep["executor"] == "ray" and [(c["key"], c["status"]) for c in sweep["cells"]] == [
        (m, "done") for m in models]
    # a rerun on Ray submits nothing: both models are reused
    scan_models(models, out=tmp_path / "ray", executor="ray", **kw)
    sweep = json.loads((tmp_path / "ray" / "sweep.json").read_text())
    assert [(c["key"], c["reused"], c["attempts"]) for c in sweep["cells"]] == [(m, True, 0) for m in models]


def test_tunnel_checkpoint_scan_on_ray_equals_local(ray_instance, tmp_path):
    """A wind-tunnel run's own checkpoints as revisions: each checkpoint a Ray task, the same trajectory."""
    import torch

    from geoprobe.scan.tunnel_revisions import TunnelScanOptions, scan_tunnel_revisions

    run = tmp_path / "run"
    assert main(["tunnel", "train", "bijection", "--preset", "smoke", "--out", str(run), "--quiet",
                 "--device", "cpu"]) == 0
    o = TunnelScanOptions(n=16, n_boot=20, device="cpu")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as a Ray task with 1 CPU runs
    try:
        scan_tunnel_revisions(run, ["0", "11", "40"], out=tmp_path / "local", options=o)
    finally:
        torch.set_num_threads(threads)
    scan_tunnel_revisions(run, ["0", "11", "40"], out=tmp_path / "ray", options=o, executor="ray")
    for f in ("trajectory.csv", "signatures.csv", "frame_precision.csv", "frame_precision.json",
              "sequences/tokens.npy", "revisions/step_0000011/per_sequence.csv"):
        assert (tmp_path / "ray" / f).read_bytes() == (tmp_path / "local" / f).read_bytes(), f
    sweep = json.loads((tmp_path / "ray" / "sweep.json").read_text())
    assert sweep["executor"] == "ray" and [(c["key"], c["status"]) for c in sweep["cells"]] == [
        ("sequences (n=16, seed=0)", "done"), ("0", "done"), ("11", "done"), ("40", "done")]
