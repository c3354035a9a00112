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


@pytest.mark.parametrize("extra,needle", [
    (["--archs", "rnn9"], "unknown architecture 'rnn9'"),
    (["--tasks", "telepathy"], "unknown task 'telepathy'"),
    (["--seeds", "0"], "--seeds must be >= 1"),
])
def test_compare_bad_input(tmp_path, capsys, extra, needle):
    argv = ["tunnel", "compare", "--preset", "smoke", "--out", str(tmp_path / "c"), "--quiet", *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0]
