"""The architecture comparison grid on the smoke preset: tables, reuse of finished cells, bad input."""

import json

import pandas as pd
import pytest

from geoprobe.cli import main


def test_smoke_grid_writes_tables_and_reuses_finished_cells(tmp_path, capsys):
    out = tmp_path / "cmp"
    argv = ["tunnel", "compare", "--tasks", "bijection", "recall", "--archs", "transformer", "mlp",
            "--preset", "smoke", "--seeds", "1", "--out", str(out), "--quiet", "--device", "cpu"]
    assert main(argv) == 0
    table = pd.read_csv(out / "table.csv")
    assert len(table) == 4 and set(table["arch"]) == {"transformer", "mlp"}
    assert table.loc[table.task == "recall", "accuracy_mean"].between(0, 1).all()
    assert table.loc[table.task == "bijection", "accuracy_mean"].isna().all()  # no deterministic positions
    published = {(r.task, r.arch): r.published for r in table.itertuples()}
    assert published[("bijection", "transformer")] == "0.007" and published[("bijection", "mlp")] == "1.85"
    assert published[("recall", "transformer")] == "100%"
    verdict = json.loads((out / "verdicts.json").read_text())
    assert set(verdict["verdicts"]) == {"transformer", "mlp"} and "MAE <=" in verdict["criteria"]
    md = (out / "table.md").read_text()
    assert "| bijection (accumulation) | transformer |" in md
    cells = pd.read_csv(out / "cells.csv")
    mtimes = {p: p.stat().st_mtime for p in out.glob("*/*/seed0/model/*")}
    capsys.readouterr()
    assert main(argv) == 0  # second run reuses every finished cell
    assert {p: p.stat().st_mtime for p in out.glob("*/*/seed0/model/*")} == mtimes
    assert pd.read_csv(out / "cells.csv")["entropy_mae_bits"].tolist() == pytest.approx(
        cells["entropy_mae_bits"].tolist())


def test_budgeted_grid_records_plans_and_skips_cells_it_cannot_afford(tmp_path, capsys):
    out = tmp_path / "cmp"
    base = ["tunnel", "compare", "--tasks", "bijection", "--archs", "lstm", "mlp", "--preset", "smoke",
            "--out", str(out), "--quiet", "--device", "cpu"]
    assert main([*base, "--budget-minutes", "0.0005"]) == 0  # 0.03 s: no cell can be afforded
    printed = capsys.readouterr().out
    assert "untested (time budget) accumulation" in printed
    table = pd.read_csv(out / "table.csv")
    assert table["skipped"].all() and not table["passes"].any()
    assert "| skipped |" in (out / "table.md").read_text()
    cells = pd.read_csv(out / "cells.csv")
    assert cells["skipped"].str.startswith("skipped: ").all()
    assert cells["skipped"].str.contains("share buys 1 steps|budget is spent").all()
    assert not (out / "bijection" / "lstm" / "seed0").exists()  # nothing written for a skipped cell

    assert main([*base, "--budget-minutes", "30"]) == 0  # ample: the preset's own schedule
    cells = pd.read_csv(out / "cells.csv")
    assert (cells["steps"] == 40).all() and not cells["budget_limited"].any()
    manifest = json.loads((out / "bijection" / "mlp" / "seed0" / "manifest.json").read_text())
    assert manifest["budget"]["steps"] == 40 and 0 < manifest["budget"]["seconds"] <= 30 * 60
    assert manifest["train"]["eval_sequences"] == manifest["budget"]["eval_sequences"]
    assert 0 < manifest["cell_wall_time_s"] < 30 * 60
    verdict = json.loads((out / "verdicts.json").read_text())
    assert verdict["budget_minutes"] == 30 and verdict["verdicts"]["lstm"]["untested"] == []


@pytest.mark.parametrize("extra,needle", [
    (["--budget-minutes", "-1"], "--budget-minutes must be positive"),
    (["--archs", "rnn9"], "unknown architecture 'rnn9'"),
    (["--tasks", "telepathy"], "unknown task 'telepathy'"),
    (["--seeds", "0"], "--seeds must be >= 1"),
])
def test_compare_bad_input(tmp_path, capsys, extra, needle):
    argv = ["tunnel", "compare", "--preset", "smoke", "--out", str(tmp_path / "c"), "--quiet", *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0]


def test_resumed_budgeted_cell_keeps_its_recorded_plan(tmp_path):
    from geoprobe.compare import run_cell
    from geoprobe.models import get_preset
    from geoprobe.models.run import train_tunnel

    folder = tmp_path / "bijection" / "mlp" / "seed0"
    plan = {"seconds": 9.0, "steps": 17, "warmup": 2, "eval_every": 5, "eval_sequences": 64, "limited": True}
    preset = get_preset("bijection", "smoke", steps=17, warmup=2, eval_every=5, eval_sequences=64)
    paused = train_tunnel(folder, "bijection", preset, arch_name="mlp", device="cpu", progress=False,
                          stop_after=6, manifest_extra={"budget": plan})
    assert paused == {"status": "paused", "step": 6}
    # resumed without a budget: the recorded plan, not the preset's 40 steps, sets the schedule
    record = run_cell(folder, "bijection", "mlp", "smoke", 0, "cpu", progress=False, budget_s=None)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert record["steps"] == 17 and manifest["step"] == 17 and manifest["budget"] == plan
    assert manifest["train"]["eval_every"] == 5 and record["budget_limited"] and record["skipped"] == ""


def test_seeds_of_a_budgeted_cell_share_the_first_seeds_schedule(tmp_path):
    """Seed 1 copies seed 0's recorded plan (same steps/warm-up/evaluation), so the spread over seeds is seed
    variance; a share far smaller than what seed 0 took is planned afresh instead."""
    from geoprobe.compare import SIBLING_PLAN_SLACK, run_cell, sibling_plan
    from geoprobe.models import get_preset
    from geoprobe.models.checkpoint import read_manifest, write_manifest
    from geoprobe.models.run import train_tunnel

    cell = tmp_path / "bijection" / "mlp"
    plan = {"seconds": 9.0, "steps": 13, "warmup": 2, "eval_every": 5, "eval_sequences": 64, "limited": True}
    assert sibling_plan(cell / "seed1", 100.0) is None  # no sibling yet
    train_tunnel(cell / "seed0", "bijection", get_preset("bijection", "smoke", steps=13, warmup=2, eval_every=5,
                                                          eval_sequences=64),
                 arch_name="mlp", device="cpu", progress=False, manifest_extra={"budget": plan})
    write_manifest(cell / "seed0", {**read_manifest(cell / "seed0"), "cell_wall_time_s": 8.0})
    record = run_cell(cell / "seed1", "bijection", "mlp", "smoke", 1, "cpu", progress=False, budget_s=7.0)
    manifest = read_manifest(cell / "seed1")
    assert record["steps"] == 13 and manifest["train"]["eval_every"] == 5 and manifest["seed"] == 1
    assert manifest["budget"] == {**plan, "shared_from": "seed0"}
    # seed 2 finds seed 0 first (lowest number) and keeps naming the original source
    assert sibling_plan(cell / "seed2", 7.0)["shared_from"] == "seed0"
    # a share well below seed 0's cell time: no copy (the caller plans afresh)
    assert sibling_plan(cell / "seed2", 8.0 / SIBLING_PLAN_SLACK - 0.1) is None
