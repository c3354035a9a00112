"""Sweeps without Ray: the local executor's retry contract, the sweep manifest, the one-line errors of the
executor options (also without Ray installed), and multi-revision scans of three tiny local "revisions":
same prompts for every revision, the final revision equal to a plain scan, the trajectory and frame-precision
table checked against the settling definition written out here, resumption and setting changes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import word_pool

from geoprobe.cli import main
from geoprobe.errors import ConfigError, GeoprobeError
from geoprobe.scan import driver
from geoprobe.sweep.executors import Job, LocalExecutor, SweepError, raise_failures, sweep_manifest

# ------------------------------------------------------------------------------------------------ executor


def _count(spec):
    """Append one line per call; fail while the file has fewer than ``spec['fail']`` lines."""
    log = Path(spec["log"])
    with log.open("a") as f:
        f.write("x\n")
    calls = len(log.read_text().splitlines())
    if spec.get("user_error"):
        raise ConfigError("bad setting x; valid choices: a, b")
    if calls <= spec["fail"]:
        raise RuntimeError(f"transient failure {calls}")
    return {"value": spec["value"], "calls": calls}


def test_local_executor_retries_bounded_and_reports_every_job(tmp_path):
    jobs = [Job("ok", _count, {"log": str(tmp_path / "a"), "fail": 0, "value": 1}),
            Job("flaky", _count, {"log": str(tmp_path / "b"), "fail": 2, "value": 2}),
            Job("broken", _count, {"log": str(tmp_path / "c"), "fail": 99, "value": 3}),
            Job("user", _count, {"log": str(tmp_path / "d"), "fail": 0, "value": 4, "user_error": True})]
    lines, seen = [], []
    out = LocalExecutor().run(jobs, max_retries=2, on_result=lambda o: seen.append(o.key), progress=lines.append)
    assert [o.key for o in out] == seen == ["ok", "flaky", "broken", "user"]
    by = {o.key: o for o in out}
    assert (by["ok"].status, by["ok"].attempts, by["ok"].result) == ("done", 1, {"value": 1, "calls": 1})
    assert (by["flaky"].status, by["flaky"].attempts, by["flaky"].result["calls"]) == ("done", 3, 3)
    assert by["flaky"].errors == ["RuntimeError: transient failure 1", "RuntimeError: transient failure 2"]
    assert (by["broken"].status, by["broken"].attempts) == ("failed", 3)  # 1 + max_retries, then reported
    assert by["broken"].error == "RuntimeError: transient failure 3"
    assert "in _count" in by["broken"].detail and by["broken"].detail.endswith("RuntimeError: transient failure 3")
    assert (by["user"].status, by["user"].attempts) == ("failed", 1)  # the user's to fix: not retried
    assert len((tmp_path / "d").read_text().splitlines()) == 1
    assert any(line.endswith("flaky attempt 1 failed (RuntimeError: transient failure 1); retrying")
               for line in lines)
    assert "4/4 done" not in "".join(lines) and "2/4 done, 0 running, 2 failed" in lines[-1]

    man = sweep_manifest(LocalExecutor(), out, max_retries=2, reused=["old"])
    assert man["counts"] == {"done": 3, "failed": 2}
    assert [(c["key"], c["status"], c["attempts"], c["reused"]) for c in man["cells"]] == [
        ("old", "done", 0, True), ("ok", "done", 1, False), ("flaky", "done", 3, False),
        ("broken", "failed", 3, False), ("user", "failed", 1, False)]
    with pytest.raises(SweepError, match=r"^2 of 4 cells failed: broken \(3 attempt\(s\)\): RuntimeError: "
                                         r"transient failure 3; user \(1 attempt\(s\)\): bad setting x"):
        raise_failures(out, "cells", rerun="rerun")
    with pytest.raises(ConfigError, match="distinct keys; repeated: ok"):
        LocalExecutor().run([jobs[0], jobs[0]])
    with pytest.raises(ConfigError, match="max-retries must be >= 0"):
        LocalExecutor().run(jobs[:1], max_retries=-1)


def test_executor_ray_without_ray_says_how_to_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError, as when it is not installed
    out = tmp_path / "cmp"
    rc = main(["tunnel", "compare", "--tasks", "bijection", "--archs", "mlp", "--preset", "smoke", "--out",
               str(out), "--executor", "ray", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1
    assert err == ("geoprobe: error: --executor ray needs Ray, which is not installed; install it with: "
                   "pip install 'geoprobe[ray]'\n")
    assert not out.exists()


@pytest.mark.parametrize("argv,message", [
    (["tunnel", "compare", "--executor", "dask"], "--executor invalid choice: 'dask' (choose from 'local', 'ray')"),
    (["tunnel", "compare", "--max-retries", "-1"], "--max-retries must be >= 0, got -1"),
    (["tunnel", "compare", "--budget-minutes", "5", "--executor", "ray"], "applies to --executor local only"),
    (["tunnel", "compare", "--ray-address", "x:6379"], "--ray-address applies to --executor ray"),
    (["scan", "m", "--executor", "ray", "--out", "{out}"], "apply to multi-revision scans (--revisions)"),
    (["scan", "m", "--revisions", "a", "b"], "--revisions needs --out"),
    (["scan", "m", "--revisions", "a", "a", "--out", "{out}"], "--revisions lists a more than once"),
    (["scan", "m", "--revisions", "a", "--revision", "b", "--out", "{out}"], "either --revision (one scan) or"),
    (["scan", "m", "--revisions", "a", "--resume", "--out", "{out}"], "do not apply with --revisions"),
    (["scan", "m", "--revisions", "./nowhere/step_1", "--out", "{out}"], "revision ./nowhere/step_1: no such"),
    (["scan", "m", "--revisions", "{tmp}", "--out", "{out}"], "is neither a geoprobe run (manifest.json) nor"),
    (["scan", "m1", "m2", "m1", "--out", "{out}"], "the models list m1 more than once"),
    (["scan", "m1", "m2", "--revisions", "a", "b", "--out", "{out}"], "--revisions takes one model, got 2"),
    (["scan", "m1", "m2"], "several models need --out"),
    (["scan", "m1", "m2", "--overwrite", "--out", "{out}"], "do not apply to several models"),
    (["scan", "m1", "m2", "--ray-address", "x:6379", "--out", "{out}"], "--ray-address applies to --executor ray"),
    (["scan", "./nowhere/m1", "{tmp}", "--out", "{out}"], "no such file or folder: nowhere/m1"),
])
def test_sweep_options_bad_input_is_one_line(tmp_path, capsys, argv, message):
    out = tmp_path / "out"
    (tmp_path / "empty").mkdir()
    argv = [a.replace("{out}", str(out)).replace("{tmp}", str(tmp_path / "empty")) for a in argv]
    if argv[:2] == ["tunnel", "compare"]:
        argv += ["--tasks", "bijection", "--archs", "mlp", "--preset", "smoke", "--out", str(out), "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("geoprobe: error: ") and err.count("\n") == 1 and message in err
    assert not out.exists()


# ------------------------------------------------------------------------------------------------ revisions

N, POOL = 10, 40


@pytest.fixture
def words(monkeypatch):
    monkeypatch.setattr(driver, "build_pool", word_pool)


@pytest.fixture(scope="module")
def revision_dirs(tmp_path_factory) -> list[Path]:
    """Three tiny GPT-NeoX "training revisions" (different seeds): ``ckpt/step_100``, ``step_200``, ``step_300``."""
    from conftest import build_tiny_model

    root = tmp_path_factory.mktemp("revisions")
    return [build_tiny_model("neox", root / f"step_{100 * (i + 1)}", seed=i) for i in range(3)]


SCAN_KW = dict(domain="code", n=N, pool_size=POOL, sula=False, n_boot=30, backend="torch", device="cpu")


def settle_by_hand(steps, values, remaining=0.1):
    """The settling definition, written out: the earliest step from which every later |v - v_final| is within
    ``remaining`` of |v_first - v_final|."""
    total = abs(values[0] - values[-1])
    for i in range(len(values)):
        if all(abs(v - values[-1]) <= remaining * total + 1e-15 for v in values[i:]):
            return steps[i]


def test_revision_scan_same_prompts_final_equals_plain_scan_and_trajectory(words, revision_dirs, tmp_path, capsys):
    from geoprobe.scan.revisions import scan_revisions

    out = tmp_path / "traj"
    res = scan_revisions("tiny-neox", [str(p) for p in revision_dirs], out=out, **SCAN_KW)
    assert res["steps"] == [100, 200, 300] and res["step_axis"].startswith("training step")
    folders = [out / "revisions" / p.name for p in revision_dirs]
    texts = {f: (f / "prompts.jsonl").read_text() for f in folders}
    assert len(set(texts.values())) == 1  # the same prompts (and records) for every revision

    # the final revision chose the prompts: its scan is exactly the ordinary scan of that model
    plain = driver.run_scan(revision_dirs[-1], **SCAN_KW)
    final = json.loads((folders[-1] / "summary.json").read_text())["summary"]
    for s in ("mixed", "domain"):
        a, b = final["sets"][s], plain.report.summary["sets"][s]
        for key in ("value", "ci"):
            assert a["value_manifold"]["pc12_share"][key] == pytest.approx(b["value_manifold"]["pc12_share"][key])
        assert a["attention_focusing"]["focusing_percent"] == pytest.approx(
            b["attention_focusing"]["focusing_percent"])
        assert a["quintiles"] == b["quintiles"]
    plain_sel = [r.text for r in plain.records if r.selected]
    assert sorted(plain_sel) == sorted(json.loads(line)["text"] for line in texts[folders[0]].splitlines()
                                       if json.loads(line)["selected"])
    man = json.loads((folders[0] / "manifest.json").read_text())
    assert "final revision of a multi-revision scan" in man["choices"]["preselected"]

    # trajectory: every result row of every revision; headline signatures; settling by the definition
    every = pd.read_csv(out / "trajectory.csv")
    assert len(every) == sum(len(pd.read_csv(f / "results.csv")) for f in folders)
    assert list(every.groupby("revision", sort=False).size().index) == [str(p) for p in revision_dirs]
    sig = pd.read_csv(out / "signatures.csv")
    fp = pd.read_csv(out / "frame_precision.csv")
    summaries = [json.loads((f / "summary.json").read_text())["summary"] for f in folders]
    for set_name in ("mixed", "domain"):
        pc12 = [s["sets"][set_name]["value_manifold"]["pc12_share"]["value"] for s in summaries]
        got = sig[(sig["set"] == set_name) & (sig["signature"] == "value_pc12_share")]
        assert got["value"].tolist() == pytest.approx(pc12)
        assert got["normalised_excess"].tolist() == pytest.approx(
            [(v - pc12[-1]) / (pc12[0] - pc12[-1]) for v in pc12])
        ko = [float(np.mean(s["sets"][set_name]["key_orthogonality"]["layer_mean_abs_cos"])) for s in summaries]
        row = fp[(fp["set"] == set_name) & (fp["signature"] == "key_orthogonality_mean_abs_cos")].iloc[0]
        assert row["group"] == "frame" and row["settling_step"] == settle_by_hand([100, 200, 300], ko)
        t = fp[fp["set"] == set_name]
        want = {g: int(t.loc[t["group"] == g, "settling_step"].max()) for g in ("frame", "precision")}
        got_set = res["by_set"][set_name]
        assert (got_set["frame_settles_at"], got_set["precision_settles_at"]) == (want["frame"], want["precision"])
        assert got_set["precision_settles_after_frame"] == (want["precision"] > want["frame"])
    sweep = json.loads((out / "sweep.json").read_text())
    assert [(c["key"], c["status"], c["attempts"]) for c in sweep["cells"]] == [
        (f"selection ({revision_dirs[-1]})", "done", 1)] + [(str(p), "done", 1) for p in revision_dirs]
    assert "Normalised excess per signature" in (out / "report.html").read_text()

    # a rerun (here from the command line) keeps every finished revision and rewrites the same trajectory
    before = {f: (f / "summary.json").stat().st_mtime_ns for f in folders}
    traj = (out / "signatures.csv").read_text()
    capsys.readouterr()
    assert main(["scan", "tiny-neox", "--revisions", *map(str, revision_dirs), "--out", str(out), "--domain", "code",
                 "--n", str(N), "--pool-size", str(POOL), "--no-sula", "--n-boot", "30", "--backend", "torch",
                 "--device", "cpu", "--quiet"]) == 0
    printed = capsys.readouterr().out.splitlines()
    m = res["by_set"]["mixed"]
    assert printed[0] == (f"mixed: frame settles at {m['frame_settles_at']}, precision at "
                          f"{m['precision_settles_at']} (training step): precision "
                          f"{'settles' if m['precision_settles_after_frame'] else 'does not settle'} after the frame")
    assert {f: (f / "summary.json").stat().st_mtime_ns for f in folders} == before
    assert (out / "signatures.csv").read_text() == traj
    sweep = json.loads((out / "sweep.json").read_text())
    assert all(c["reused"] and c["attempts"] == 0 for c in sweep["cells"]) and len(sweep["cells"]) == 4
    # other settings are refused (they would mix two experiments in one trajectory)
    with pytest.raises(ConfigError, match="different settings \\(options\\)"):
        scan_revisions("tiny-neox", [str(p) for p in revision_dirs], out=out, **{**SCAN_KW, "n_boot": 20})
    with pytest.raises(ConfigError, match="different settings \\(final_revision\\)"):
        scan_revisions("tiny-neox", [str(p) for p in revision_dirs[:2]], out=out, **SCAN_KW)


def test_frame_precision_on_planted_trajectories():
    """Frame signatures settle by step 20, precision ones by step 40 (planted); one signature never changes."""
    from geoprobe.scan.revisions import frame_precision

    steps = [0, 10, 20, 30, 40]
    curves = {("frame", "key_orthogonality_mean_abs_cos"): [1.0, 0.5, 0.09, 0.05, 0.0],
              ("frame", "focusing_percent"): [0.0, 20.0, 29.5, 30.0, 30.0],
              ("precision", "value_pc12_share"): [0.2, 0.3, 0.4, 0.5, 0.6],
              ("precision", "rho_pc1_entropy"): [0.0, 0.1, 0.2, 0.85, 0.9],
              ("precision", "value_participation_ratio"): [3.0, 3.0, 3.0, 3.0, 3.0]}
    sig = pd.DataFrame([{"set": "mixed", "group": g, "signature": s, "step": st, "value": v}
                        for (g, s), vs in curves.items() for st, v in zip(steps, vs, strict=True)])
    table, summary = frame_precision(sig, steps)
    by = table.set_index("signature")
    for (_, s), vs in curves.items():
        want = settle_by_hand(steps, vs) if vs[0] != vs[-1] else None
        got = by.loc[s, "settling_step"]
        assert (None if pd.isna(got) else int(got)) == want
    assert int(by.loc["focusing_percent", "settling_step"]) == 20  # 0.5 left of 30 = 1.7% < 10%
    assert int(by.loc["rho_pc1_entropy", "settling_step"]) == 30  # 0.05 of a 0.9 change left at step 30
    assert int(by.loc["value_pc12_share", "settling_step"]) == 40  # linear: 25% left at step 30
    assert summary["mixed"]["frame_settles_at"] == 20 and summary["mixed"]["precision_settles_at"] == 40
    assert summary["mixed"]["precision_settles_after_frame"] is True
    assert summary["mixed"]["precision_signatures"]["value_participation_ratio"] is None


def test_resolve_revisions_paths_hub_names_and_steps(tmp_path):
    from geoprobe.scan.revisions import resolve_revisions, step_axis

    (tmp_path / "ck" / "step_0002000").mkdir(parents=True)
    revs = resolve_revisions("EleutherAI/pythia-410m", ["step1000", str(tmp_path / "ck" / "step_0002000"), "main"])
    assert [(r.source, r.revision, r.step, r.label) for r in revs] == [
        ("EleutherAI/pythia-410m", "step1000", 1000, "step1000"),
        (str(tmp_path / "ck" / "step_0002000"), None, 2000, "step_0002000"),
        ("EleutherAI/pythia-410m", "main", None, "main")]
    assert step_axis(revs)[0] == [0, 1, 2]  # "main" has no step: positions
    assert step_axis(revs[:2])[0] == [1000, 2000]
    assert step_axis(list(reversed(revs[:2])))[0] == [0, 1]  # not increasing: positions
    # a wind-tunnel run's own checkpoints: labelled by run and step, steps from the folder names
    from conftest import write_tunnel_run

    run = write_tunnel_run(tmp_path / "run7", lambda f: f.mkdir(parents=True))
    for step in (5, 40):
        (run / "checkpoints" / f"step_{step:07d}").mkdir(parents=True)
    revs = resolve_revisions("ignored", [str(run / "checkpoints" / "step_0000005"),
                                         str(run / "checkpoints" / "step_0000040")])
    assert [(r.label, r.step, r.revision) for r in revs] == [("run7-step_0000005", 5, None),
                                                             ("run7-step_0000040", 40, None)]
    assert step_axis(revs) == ([5, 40], "training step (parsed from the revision names)")
    (tmp_path / "f").write_text("x")
    with pytest.raises(GeoprobeError, match="is a file"):
        resolve_revisions("m", [str(tmp_path / "f")])


# ------------------------------------------------------------------------------------------------ several models


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory) -> list[Path]:
    """Two different tiny local HF models (GPT-NeoX and GPT-2 families)."""
    from conftest import build_tiny_model

    root = tmp_path_factory.mktemp("models")
    return [build_tiny_model("neox", root / "tiny-neox", seed=0), build_tiny_model("gpt2", root / "tiny-gpt2", seed=1)]


def test_two_model_scan_equals_two_single_scans_and_rerun_reuses(words, model_dirs, tmp_path, capsys):
    from geoprobe.scan.models import scan_models

    out = tmp_path / "many"
    table = scan_models([str(p) for p in model_dirs], out=out, **SCAN_KW)
    folders = [out / "models" / p.name for p in model_dirs]
    singles = []
    for p in model_dirs:  # the ordinary single scans, each on its own
        single = tmp_path / "single" / p.name
        driver.run_scan(p, out=single, **SCAN_KW)
        singles.append(single)
    for f, single in zip(folders, singles, strict=True):
        got, want = (json.loads((x / "summary.json").read_text()) for x in (f, single))
        assert got["summary"] == want["summary"]  # every number, exactly
        for name in ("results.csv", "prompts.jsonl"):
            assert (f / name).read_bytes() == (single / name).read_bytes(), name
    # the table is scan-table's, of the two single scans
    assert main(["scan-table", *map(str, singles), "--out", str(tmp_path / "t.csv")]) == 0
    assert main(["scan-table", *map(str, singles), "--out", str(tmp_path / "t.md")]) == 0
    assert (out / "table.csv").read_text() == (tmp_path / "t.csv").read_text()
    assert (out / "table.md").read_text() == (tmp_path / "t.md").read_text()
    assert table["model"].tolist() == [str(p) for p in model_dirs]
    want_pc12 = [json.loads((s / "summary.json").read_text())["summary"]["sets"]["mixed"]["value_manifold"]
                 ["pc12_share"]["value"] for s in singles]
    assert table["pc12_mixed"].tolist() == want_pc12
    card = pd.read_csv(out / "scorecard.csv")
    from geoprobe.scan.table import PREDICTIONS

    assert list(card.columns) == ["prediction", *map(str, model_dirs)] and len(card) == len(PREDICTIONS)  # every prediction of the scorecard, causal ones included
    sweep = json.loads((out / "sweep.json").read_text())
    assert sweep["executor"] == "local" and [(c["key"], c["status"], c["attempts"], c["reused"])
                                             for c in sweep["cells"]] == [(str(p), "done", 1, False)
                                                                          for p in model_dirs]
    man = json.loads((out / "manifest.json").read_text())
    assert man["models"] == [{"model": str(p), "folder": f"models/{p.name}"} for p in model_dirs]

    # a rerun from the command line keeps both scans and writes the same table
    before = {f: (f / "summary.json").stat().st_mtime_ns for f in folders}
    text = (out / "table.csv").read_text()
    capsys.readouterr()
    assert main(["scan", *map(str, model_dirs), "--out", str(out), "--domain", "code", "--n", str(N),
                 "--pool-size", str(POOL), "--no-sula", "--n-boot", "30", "--backend", "torch", "--device", "cpu",
                 "--quiet"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == f"{model_dirs[0]}: PC1+PC2 {100 * want_pc12[0]:.1f}% (mixed), verdict {table['verdict'][0]}"
    assert {f: (f / "summary.json").stat().st_mtime_ns for f in folders} == before
    assert (out / "table.csv").read_text() == text
    sweep = json.loads((out / "sweep.json").read_text())
    assert [(c["key"], c["reused"], c["attempts"]) for c in sweep["cells"]] == [(str(p), True, 0) for p in model_dirs]
    with pytest.raises(ConfigError, match="different settings \\(options\\)"):
        scan_models([str(p) for p in model_dirs], out=out, **{**SCAN_KW, "n_boot": 20})


def test_model_labels_unique_and_safe(tmp_path):
    from geoprobe.scan.models import resolve_models

    (tmp_path / "a" / "pythia").mkdir(parents=True)
    (tmp_path / "b" / "pythia").mkdir(parents=True)
    got = resolve_models(["EleutherAI/pythia-70m", str(tmp_path / "a" / "pythia"), str(tmp_path / "b" / "pythia"),
                          "org/we ird:name"])
    assert [e.label for e in got] == ["EleutherAI--pythia-70m", "pythia", "pythia-2", "org--we-ird-name"]
    with pytest.raises(ConfigError, match="at least two models"):
        resolve_models(["x"])


def test_failed_model_is_reported_others_kept_and_rerun_finishes(words, model_dirs, tmp_path):
    """A model whose weights are missing fails (a user error: not retried) and is named; the other model's scan
    is kept, no table is written; once the weights are back, a rerun scans only that model."""
    import shutil

    from geoprobe.scan.models import scan_models
    from geoprobe.sweep.executors import SweepError

    broken = tmp_path / "tiny-gpt2"
    shutil.copytree(model_dirs[1], broken, ignore=shutil.ignore_patterns("*.safetensors"))
    models = [str(model_dirs[0]), str(broken)]
    out = tmp_path / "many"
    with pytest.raises(SweepError, match=rf"^1 of 2 models failed: {broken} \(1 attempt\(s\)\): cannot load"):
        scan_models(models, out=out, **SCAN_KW)
    sweep = json.loads((out / "sweep.json").read_text())
    assert [(c["key"], c["status"], c["attempts"]) for c in sweep["cells"]] == [
        (models[0], "done", 1), (models[1], "failed", 1)]
    assert not (out / "table.csv").exists() and not (out / "models" / "tiny-gpt2").exists()
    kept = (out / "models" / "tiny-neox" / "summary.json").stat().st_mtime_ns
    shutil.copy(model_dirs[1] / "model.safetensors", broken / "model.safetensors")
    table = scan_models(models, out=out, **SCAN_KW)
    assert (out / "models" / "tiny-neox" / "summary.json").stat().st_mtime_ns == kept
    sweep = json.loads((out / "sweep.json").read_text())
    assert [(c["key"], c["status"], c["attempts"], c["reused"]) for c in sweep["cells"]] == [
        (models[0], "done", 0, True), (models[1], "done", 1, False)]
    single = driver.run_scan(model_dirs[1], **SCAN_KW).report.summary  # same weights: the same numbers
    assert table["pc12_mixed"].tolist()[1] == single["sets"]["mixed"]["value_manifold"]["pc12_share"]["value"]


def test_revision_scan_cuts_the_selection_with_max_tokens(words, revision_dirs, tmp_path):
    """``--max-tokens`` applies to the shared selection too: the prompts every revision is measured on are the cut
    ones, exactly those an ordinary ``--max-tokens`` scan of the final revision selects."""
    from geoprobe.scan.revisions import scan_revisions

    kw = {**SCAN_KW, "max_tokens": 5, "causal": False}
    out = tmp_path / "traj"
    scan_revisions("tiny-neox", [str(p) for p in revision_dirs[1:]], out=out, **kw)
    plain = driver.run_scan(revision_dirs[-1], **kw)
    want = sorted(r.text for r in plain.records if r.selected)
    for p in revision_dirs[1:]:
        got = sorted(json.loads(line)["text"] for line in (out / "revisions" / p.name / "prompts.jsonl")
                     .read_text().splitlines() if json.loads(line)["selected"])
        assert got == want
    # the cut really happened: every selected prompt has at most 5 tokens
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(revision_dirs[-1])
    assert max(len(tok(t)["input_ids"]) for t in want) <= 5
