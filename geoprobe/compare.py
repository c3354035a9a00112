"""Architecture comparison (Paper I's primitives table): train every (task, architecture, seed) cell that is
missing, evaluate it against the exact posterior, and tabulate.

Cells live in ``OUT/<task>/<arch>/seed<k>/`` as ordinary run folders: finished cells are reused, interrupted
ones resumed, so a crash mid-grid loses no finished cell. Outputs (each written atomically): ``cells.csv`` (one
row per run), ``table.csv`` / ``table.md`` / ``report.html`` (mean ± sd over seeds per task x architecture,
with the published values beside ours) and ``verdicts.json``.

A cell *passes* its primitive when its mean entropy MAE is <= ``mae_threshold`` bits (accumulation = bijection,
transport = hmm) or its accuracy at the deterministic query positions is >= ``acc_threshold`` (binding = recall).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from geoprobe.errors import ConfigError
from geoprobe.io import write_json, write_text

PRIMITIVE = {"bijection": "accumulation", "hmm": "transport", "recall": "binding", "linreg": "regression"}
#: Paper I (SCIENCE.md section 3): entropy MAE in bits, accuracy for recall
PUBLISHED = {
    ("bijection", "transformer"): "0.007", ("bijection", "mamba"): "0.010", ("bijection", "lstm"): "0.009",
    ("bijection", "mlp"): "1.85",
    ("hmm", "transformer"): "7.5e-5 (0.049 in the later table)", ("hmm", "mamba"): "0.024",
    ("hmm", "lstm"): "0.411", ("hmm", "mlp"): "~0.41",
    ("recall", "transformer"): "100%", ("recall", "mamba"): "97.8%", ("recall", "lstm"): "0.5%",
}


def cell_dir(out: Path, task: str, arch: str, seed: int) -> Path:
    return Path(out) / task / arch / f"seed{seed}"


def run_cell(folder: Path, task: str, arch: str, preset_name: str, seed: int, device: str,
             progress: bool) -> dict[str, Any]:
    """Train (or resume, or reuse) one cell and return its record."""
    import json

    from geoprobe.models.checkpoint import MANIFEST, read_manifest
    from geoprobe.models.presets import get_preset
    from geoprobe.models.run import evaluate_run, train_tunnel

    finished = (folder / MANIFEST).exists() and read_manifest(folder).get("status") in ("trained", "finished")
    if finished:
        metrics_path = folder / "metrics.json"
        metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else evaluate_run(folder,
                                                                                                    device=device)
    else:
        metrics = train_tunnel(folder, task, get_preset(task, preset_name), arch_name=arch, seed=seed,
                               device=device, resume=folder.exists() and any(folder.iterdir()),
                               progress=progress)
    manifest = read_manifest(folder)
    return {
        "task": task, "arch": arch, "seed": seed, "primitive": PRIMITIVE.get(task, task),
        "entropy_mae_bits": metrics["entropy_mae_bits"], "kl_bits": metrics["kl_bits"],
        "accuracy": metrics.get("deterministic_accuracy"), "params": manifest.get("n_params"),
        "train_wall_time_s": manifest.get("train_wall_time_s"), "run": str(folder),
    }


def summarise(cells: pd.DataFrame, mae_threshold: float, acc_threshold: float) -> pd.DataFrame:
    """Mean ± sd over seeds per (task, arch), the pass flag and the published value."""
    rows = []
    for (task, arch), g in cells.groupby(["task", "arch"], sort=False):
        acc = g["accuracy"].dropna()
        mae_mean = float(g["entropy_mae_bits"].mean())
        acc_mean = float(acc.mean()) if len(acc) else math.nan
        passes = acc_mean >= acc_threshold if task == "recall" else mae_mean <= mae_threshold
        rows.append({
            "task": task, "primitive": PRIMITIVE.get(task, task), "arch": arch, "seeds": len(g),
            "entropy_mae_bits_mean": mae_mean,
            "entropy_mae_bits_sd": float(g["entropy_mae_bits"].std(ddof=1)) if len(g) > 1 else math.nan,
            "accuracy_mean": acc_mean,
            "accuracy_sd": float(acc.std(ddof=1)) if len(acc) > 1 else math.nan,
            "params": int(g["params"].iloc[0]) if g["params"].notna().all() else None,
            "train_wall_time_s_mean": float(g["train_wall_time_s"].mean()),
            "passes": bool(passes), "published": PUBLISHED.get((task, arch), "n/a"),
        })
    return pd.DataFrame(rows)


def verdicts(table: pd.DataFrame) -> dict[str, Any]:
    """Per architecture: the primitives it realises (cells that pass) and those it does not."""
    out = {}
    for arch, g in table.groupby("arch", sort=False):
        out[arch] = {"realises": sorted(g.loc[g["passes"], "primitive"]),
                     "fails": sorted(g.loc[~g["passes"], "primitive"])}
    return out


def markdown_table(table: pd.DataFrame) -> str:
    def pm(m: float, s: float, fmt: str) -> str:
        if m != m:
            return "–"
        return format(m, fmt) + ("" if s != s else " ± " + format(s, fmt))

    lines = ["| task (primitive) | arch | seeds | entropy MAE (bits) | accuracy | params | train s | pass | "
             "published |", "|---|---|---|---|---|---|---|---|---|"]
    for r in table.to_dict("records"):
        lines.append(
            f"| {r['task']} ({r['primitive']}) | {r['arch']} | {r['seeds']} | "
            f"{pm(r['entropy_mae_bits_mean'], r['entropy_mae_bits_sd'], '.4f')} | "
            f"{pm(r['accuracy_mean'], r['accuracy_sd'], '.3f')} | {r['params']} | "
            f"{r['train_wall_time_s_mean']:.0f} | {'yes' if r['passes'] else 'no'} | {r['published']} |")
    return "\n".join(lines) + "\n"


def run_comparison(out: str | Path, tasks: list[str], archs: list[str], *, preset: str = "cpu", seeds: int = 1,
                   device: str = "auto", mae_threshold: float = 0.05, acc_threshold: float = 0.9,
                   progress: bool = True) -> dict[str, Any]:
    """Fill the grid (see the module docstring) and write the tables; returns table + verdicts."""
    from geoprobe.models import ARCHS
    from geoprobe.models.presets import get_preset
    from geoprobe.tasks import TASKS

    for t in tasks:
        TASKS.get(t)
        get_preset(t, preset)  # every task needs a preset; errors list the valid names
    for a in archs:
        ARCHS.get(a)
    if seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {seeds}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for task in tasks:
        for arch in archs:
            for seed in range(seeds):
                records.append(run_cell(cell_dir(out, task, arch, seed), task, arch, preset, seed, device,
                                        progress))
                write_text(out / "cells.csv", pd.DataFrame(records).to_csv(index=False))  # progress so far
    cells = pd.DataFrame(records)
    table = summarise(cells, mae_threshold, acc_threshold)
    verdict = verdicts(table)
    criteria = (f"pass: entropy MAE <= {mae_threshold} bits (accumulation, transport); accuracy >= "
                f"{acc_threshold} (binding)")
    write_text(out / "table.csv", table.to_csv(index=False))
    write_text(out / "table.md", f"Preset `{preset}`, seeds 0..{seeds - 1}; {criteria}.\n\n" + markdown_table(table))
    write_json(out / "verdicts.json", {"preset": preset, "seeds": seeds, "criteria": criteria,
                                       "verdicts": verdict})
    from geoprobe.report import Report

    report = Report(title=f"geoprobe architecture comparison ({preset} preset, {seeds} seed(s))",
                    rows=table, summary={"criteria": criteria, **{a: v for a, v in verdict.items()}},
                    notes=["Published values: Paper I (SCIENCE.md section 3)."])
    write_text(out / "report.html", report.to_html())
    return {"table": table, "verdicts": verdict, "criteria": criteria}
