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


# ---- pass rules: t-interval over seeds, the paper's bare rule as passes_naive, the untrained null ----

T_975 = {1: 12.706204736174698, 2: 4.302652729749464}  # Student-t 0.975 quantiles (tables), df = seeds - 1


def _planted(task, arch, maes, accs=None, null_maes=None, null_accs=None):
    n = len(maes)
    return [{"task": task, "arch": arch, "seed": k, "primitive": "p-" + task, "entropy_mae_bits": maes[k],
             "kl_bits": 0.0, "accuracy": None if accs is None else accs[k],
             "untrained_entropy_mae_bits": float("nan") if null_maes is None else null_maes[k],
             "untrained_accuracy": float("nan") if null_accs is None else null_accs[k], "params": 10, "steps": 40,
             "budget_limited": False, "skipped": "", "train_wall_time_s": 1.0, "cell_wall_time_s": 1.0,
             "run": ""} for k in range(n)]


def test_seed_ci_is_the_student_t_interval_and_undefined_for_one_seed():
    import math

    from geoprobe.compare import seed_ci

    lo, hi = seed_ci([0.01, 0.03, 0.02])  # mean 0.02, sd 0.01
    half = T_975[2] * 0.01 / math.sqrt(3)
    assert (lo, hi) == pytest.approx((0.02 - half, 0.02 + half), rel=1e-9)
    lo, hi = seed_ci([0.0, 0.1])  # mean 0.05, sd 0.1/sqrt(2)
    assert hi == pytest.approx(0.05 + T_975[1] * (0.1 / math.sqrt(2)) / math.sqrt(2), rel=1e-9)
    assert all(math.isnan(v) for v in seed_ci([0.01]))
    assert all(math.isnan(v) for v in seed_ci([0.01, float("nan")]))  # one finite seed


def test_ci_rule_naive_rule_and_vacuous_flag_on_planted_seeds():
    from geoprobe.compare import markdown_table, summarise, verdicts

    cells = pd.DataFrame(
        _planted("bijection", "tight", [0.010, 0.012, 0.011], null_maes=[0.9, 1.0, 1.1])  # CI [0.0085, 0.0135]
        + _planted("bijection", "wide", [0.010, 0.080], null_maes=[1.0, 1.0])  # mean 0.045, CI up to 0.49
        + _planted("bijection", "single", [0.010], null_maes=[1.0])  # one seed: no interval
        + _planted("bijection", "lazy", [0.010, 0.012, 0.011], null_maes=[0.02, 0.03, 0.025])  # random passes
        + _planted("recall", "tight", [3.0, 3.0, 3.0], accs=[0.95, 0.97, 0.96], null_accs=[0.1, 0.2, 0.15])
        + _planted("recall", "wide", [3.0, 3.0], accs=[0.99, 0.85], null_accs=[0.1, 0.1]))
    table = summarise(cells, 0.05, 0.9).set_index(["task", "arch"])
    t = table.loc[("bijection", "tight")]
    assert t["entropy_mae_bits_ci_high"] == pytest.approx(0.011 + T_975[2] * 0.001 / 3 ** 0.5, rel=1e-9)
    assert t["passes"] and t["passes_naive"] and not t["vacuous"]
    assert t["untrained_entropy_mae_bits_mean"] == pytest.approx(1.0)
    w = table.loc[("bijection", "wide")]
    assert w["passes_naive"] and not w["passes"]  # the mean clears 0.05, the interval does not
    assert w["entropy_mae_bits_ci_high"] == pytest.approx(0.045 + T_975[1] * 0.035, rel=1e-9)
    s = table.loc[("bijection", "single")]
    assert s["passes_naive"] and not s["passes"] and not s["ci_defined"]
    lazy = table.loc[("bijection", "lazy")]
    assert lazy["passes"] and lazy["untrained_passes"] and lazy["vacuous"]
    r = table.loc[("recall", "tight")]
    assert r["accuracy_ci_low"] == pytest.approx(0.96 - T_975[2] * 0.01 / 3 ** 0.5, rel=1e-9) and r["passes"]
    assert r["untrained_accuracy_mean"] == pytest.approx(0.15) and not r["vacuous"]
    rw = table.loc[("recall", "wide")]
    assert rw["passes_naive"] and not rw["passes"]  # mean 0.92 >= 0.9, lower end 0.92 - 12.7 * 0.07 < 0.9

    v = verdicts(table.reset_index())
    assert v["tight"] == {"realises": ["accumulation", "binding"], "fails": [], "vacuous": [], "undetermined": [],
                          "untested": [], "naive_realises": ["accumulation", "binding"]}
    assert v["wide"]["fails"] == ["accumulation", "binding"] and v["wide"]["naive_realises"] == ["accumulation",
                                                                                                  "binding"]
    assert v["single"]["undetermined"] == ["accumulation"] and v["single"]["realises"] == []
    assert v["lazy"]["vacuous"] == ["accumulation"] and v["lazy"]["realises"] == []
    md = markdown_table(table.reset_index())
    assert ("| bijection (accumulation) | single | 1 | 0.0100 | – | 10 | 40 | 1 | 1 | undefined (1 seed) | – | "
            "1.0000 | no CI | yes | no | undetermined | n/a |") in md
    assert "| [0.935, 0.985] | 0.150 | yes | yes | no | realises |" in md  # recall/tight: accuracy CI, null
    assert "| [0.0085, 0.0135] |" in md
    assert "| yes | yes | yes | vacuous |" in md  # lazy: both rules pass, and so does the untrained model


def test_smoke_grid_reports_the_untrained_null_and_flags_a_lenient_threshold_vacuous(tmp_path, capsys):
    """Two mlp seeds on bijection: the untrained model is the step-0 checkpoint evaluated like the trained one;
    at a 5-bit threshold both pass, so the pass is vacuous, while the paper's bare rule still says pass."""
    from geoprobe.models import ARCHS
    from geoprobe.models.checkpoint import load_run
    from geoprobe.models.evaluate import evaluate_model

    out = tmp_path / "cmp"
    argv = ["tunnel", "compare", "--tasks", "bijection", "--archs", "mlp", "--preset", "smoke", "--seeds", "2",
            "--out", str(out), "--quiet", "--device", "cpu", "--mae-threshold", "5"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "mlp: realises none; fails none; vacuous accumulation" in printed
    cells = pd.read_csv(out / "cells.csv")
    for seed in (0, 1):
        run = out / "bijection" / "mlp" / f"seed{seed}"
        trained = json.loads((run / "metrics.json").read_text())
        model, task, _ = load_run(run, step=0)
        ref = evaluate_model(model, ARCHS.get("mlp"), task, n_sequences=trained["n_sequences"], seed=seed)
        assert cells.loc[seed, "untrained_entropy_mae_bits"] == pytest.approx(ref.entropy_mae_bits, rel=1e-9)
        assert cells.loc[seed, "untrained_entropy_mae_bits"] != pytest.approx(cells.loc[seed, "entropy_mae_bits"])
    table = pd.read_csv(out / "table.csv")
    row = table.iloc[0]
    assert row["passes_naive"] and row["passes"] and row["untrained_passes"] and row["vacuous"]
    assert row["untrained_entropy_mae_bits_mean"] == pytest.approx(cells["untrained_entropy_mae_bits"].mean())
    assert row["entropy_mae_bits_ci_low"] < row["entropy_mae_bits_mean"] < row["entropy_mae_bits_ci_high"]
    verdict = json.loads((out / "verdicts.json").read_text())["verdicts"]["mlp"]
    assert verdict["vacuous"] == ["accumulation"] and verdict["naive_realises"] == ["accumulation"]
    assert "| yes | yes | yes | vacuous |" in (out / "table.md").read_text()
    assert "vacuous" in (out / "report.html").read_text()
