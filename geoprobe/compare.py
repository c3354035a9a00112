"""Architecture comparison (Paper I's primitives table): train every (task, architecture, seed) cell that is
missing, evaluate it against the exact posterior, and tabulate.

Cells live in ``OUT/<task>/<arch>/seed<k>/`` as ordinary run folders: finished cells are reused, interrupted
ones resumed, so a crash mid-grid loses no finished cell. One comparison writes to ``OUT`` at a time (a lock
naming the holder), and ``OUT`` must be empty or a folder geoprobe wrote. Outputs (each written atomically): ``cells.csv`` (one
row per run), ``table.csv`` / ``table.md`` / ``report.html`` (mean ± sd over seeds per task x architecture,
with the published values beside ours) and ``verdicts.json``. Cells run one after another here or as Ray tasks
(``executor="ray"``, :mod:`geoprobe.sweep.executors`); ``sweep.json`` lists every cell with its status and attempts.

A cell *passes* its primitive when its mean entropy MAE is <= ``mae_threshold`` bits (accumulation = bijection,
transport = hmm) or its accuracy at the deterministic query positions is >= ``acc_threshold`` (binding = recall).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from geoprobe.errors import ConfigError
from geoprobe.io import write_json, write_text

PRIMITIVE = {"bijection": "accumulation", "hmm": "transport", "recall": "binding", "linreg": "regression"}
#: Paper I: entropy MAE in bits, accuracy for recall
PUBLISHED = {
    ("bijection", "transformer"): "0.007", ("bijection", "mamba"): "0.010", ("bijection", "lstm"): "0.009",
    ("bijection", "mlp"): "1.85",
    ("hmm", "transformer"): "7.5e-5 (0.049 in the later table)", ("hmm", "mamba"): "0.024",
    ("hmm", "lstm"): "0.411", ("hmm", "mlp"): "~0.41",
    ("recall", "transformer"): "100%", ("recall", "mamba"): "97.8%", ("recall", "lstm"): "0.5%",
}


def cell_dir(out: Path, task: str, arch: str, seed: int) -> Path:
    return Path(out) / task / arch / f"seed{seed}"


def _skipped(record: dict[str, Any], reason: str, seconds: float) -> dict[str, Any]:
    return {**record, "entropy_mae_bits": math.nan, "kl_bits": math.nan, "accuracy": math.nan, "params": None,
            "steps": 0, "budget_limited": True, "skipped": reason, "train_wall_time_s": math.nan,
            "cell_wall_time_s": seconds, "run": ""}


#: a sibling seed's schedule is reused when that seed's cell took at most this multiple of the current share
SIBLING_PLAN_SLACK = 1.25


def sibling_plan(folder: Path, budget_s: float) -> dict[str, Any] | None:
    """The budget plan of another seed of the same (task, arch) cell, so that all seeds of a cell train the same
    schedule and their spread measures seed variance, not budget noise.

    Taken from the lowest-numbered sibling ``seed*/`` folder that finished with a recorded plan, and only when
    that sibling's whole cell took at most :data:`SIBLING_PLAN_SLACK` x ``budget_s``; otherwise None (plan
    afresh). The returned plan says which seed it came from (``shared_from``).
    """
    from geoprobe.models.checkpoint import is_finished_run, read_manifest

    siblings = sorted((p for p in folder.parent.glob("seed*") if p != folder and p.name[4:].isdigit()),
                      key=lambda p: int(p.name[4:]))
    for sib in siblings:
        if not is_finished_run(sib):
            continue
        manifest = read_manifest(sib)
        plan = manifest.get("budget")
        if plan is None:
            continue
        if manifest.get("cell_wall_time_s", math.inf) > SIBLING_PLAN_SLACK * budget_s:
            return None
        return {**plan, "shared_from": plan.get("shared_from", sib.name)}
    return None


def run_cell(folder: Path, task: str, arch: str, preset_name: str, seed: int, device: str,
             progress: bool, budget_s: float | None = None) -> dict[str, Any]:
    """Train (or resume, or reuse) one cell and return its record.

    With ``budget_s`` a new cell's steps are fitted to that many seconds of wall time
    (:func:`geoprobe.models.budget.plan_budget`), or copied from another seed of the same cell when that fits
    (:func:`sibling_plan`); the plan is recorded in the cell's manifest and reused when an interrupted cell is
    resumed, so resuming never changes the schedule. A cell whose share cannot buy
    ``min_budget_steps`` steps (after its evaluation cost) is not trained: its record says ``skipped`` and
    why, and a later call with a larger budget trains it.
    """
    import json

    from geoprobe.models.budget import PLANNED_FIELDS, min_budget_steps, plan_budget
    from geoprobe.models.checkpoint import MANIFEST, is_finished_run, read_manifest, write_manifest
    from geoprobe.models.presets import get_preset
    from geoprobe.models.run import evaluate_run, resolve_device, train_tunnel
    from geoprobe.models.training import timer

    record: dict[str, Any] = {"task": task, "arch": arch, "seed": seed, "primitive": PRIMITIVE.get(task, task)}
    old = read_manifest(folder) if (folder / MANIFEST).exists() else {}
    if is_finished_run(folder):
        metrics_path = folder / "metrics.json"
        metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else evaluate_run(folder,
                                                                                                    device=device)
    else:
        t0 = timer()
        preset = get_preset(task, preset_name)
        extra: dict[str, Any] = {}
        plan = old.get("budget")
        if plan is None and budget_s is not None:
            if budget_s <= 0:
                return _skipped(record, "skipped: the time budget is spent", timer() - t0)
            plan = sibling_plan(folder, budget_s)
            if plan is None:
                from geoprobe.models import ARCHS
                from geoprobe.tasks import make_task

                plan = plan_budget(ARCHS.get(arch), make_task(task, **preset.task_params), preset, budget_s,
                                   device=resolve_device(device)).to_dict()
                if plan["steps"] < min_budget_steps(preset.train.steps):
                    reason = (f"skipped: a {budget_s:.0f} s share buys {plan['steps']} steps "
                              f"(< {min_budget_steps(preset.train.steps)}; training "
                              f"{plan['train_seqs_per_s']:.0f} seq/s, evaluation alone "
                              f"~{plan['eval_seconds_estimate']:.0f} s)")
                    return _skipped(record, reason, timer() - t0)
        if plan is not None:
            extra["budget"] = plan
            preset = get_preset(task, preset_name, **{k: plan[k] for k in PLANNED_FIELDS})
        from geoprobe.io import is_empty_output

        metrics = train_tunnel(folder, task, preset, arch_name=arch, seed=seed, device=device,
                               resume=not is_empty_output(folder), progress=progress, manifest_extra=extra)
        # wall time of this call: budget measurement + training (since a resume) + final evaluation
        write_manifest(folder, {**read_manifest(folder), "cell_wall_time_s": timer() - t0})
    manifest = read_manifest(folder)
    budget = manifest.get("budget") or {}
    return {
        **record, "entropy_mae_bits": metrics["entropy_mae_bits"], "kl_bits": metrics["kl_bits"],
        "accuracy": metrics.get("deterministic_accuracy"), "params": manifest.get("n_params"),
        "steps": manifest.get("step"), "budget_limited": bool(budget.get("limited", False)), "skipped": "",
        "train_wall_time_s": manifest.get("train_wall_time_s"),
        "cell_wall_time_s": manifest.get("cell_wall_time_s", math.nan), "run": str(folder),
    }


def summarise(cells: pd.DataFrame, mae_threshold: float, acc_threshold: float) -> pd.DataFrame:
    """Mean ± sd over seeds per (task, arch), the pass flag and the published value."""
    rows = []
    for (task, arch), cell in cells.groupby(["task", "arch"], sort=False):
        g = cell[cell["skipped"].fillna("") == ""]  # seeds that were trained
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
            "params": int(g["params"].iloc[0]) if len(g) and g["params"].notna().all() else None,
            "steps_mean": float(g["steps"].mean()), "budget_limited": bool(cell["budget_limited"].any()),
            "train_wall_time_s_mean": float(g["train_wall_time_s"].mean()),
            "cell_wall_time_s_mean": float(g["cell_wall_time_s"].mean()),
            "skipped": len(g) == 0, "passes": bool(passes) and len(g) > 0,
            "published": PUBLISHED.get((task, arch), "n/a"),
        })
    return pd.DataFrame(rows)


def verdicts(table: pd.DataFrame) -> dict[str, Any]:
    """Per architecture: the primitives it realises (cells that pass), those it does not, and those not
    trained (every seed skipped by a time budget)."""
    out = {}
    for arch, g in table.groupby("arch", sort=False):
        tested = g[~g["skipped"]]
        out[arch] = {"realises": sorted(tested.loc[tested["passes"], "primitive"]),
                     "fails": sorted(tested.loc[~tested["passes"], "primitive"]),
                     "untested": sorted(g.loc[g["skipped"], "primitive"])}
    return out


def markdown_table(table: pd.DataFrame) -> str:
    def pm(m: float, s: float, fmt: str) -> str:
        if m != m:
            return "–"
        return format(m, fmt) + ("" if s != s else " ± " + format(s, fmt))

    lines = ["| task (primitive) | arch | seeds | entropy MAE (bits) | accuracy | params | steps | train s | "
             "cell s | pass | published |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in table.to_dict("records"):
        lines.append(
            f"| {r['task']} ({r['primitive']}) | {r['arch']} | {r['seeds']} | "
            f"{pm(r['entropy_mae_bits_mean'], r['entropy_mae_bits_sd'], '.4f')} | "
            f"{pm(r['accuracy_mean'], r['accuracy_sd'], '.3f')} | {pm(r['params'] or math.nan, math.nan, ',.0f')} | "
            f"{pm(r['steps_mean'], math.nan, '.0f')}{' (budget)' if r['budget_limited'] else ''} | "
            f"{pm(r['train_wall_time_s_mean'], math.nan, '.0f')} | {pm(r['cell_wall_time_s_mean'], math.nan, '.0f')} | "
            f"{'skipped' if r['skipped'] else 'yes' if r['passes'] else 'no'} | {r['published']} |")
    return "\n".join(lines) + "\n"


def run_comparison(out: str | Path, tasks: list[str], archs: list[str], *, preset: str = "cpu", seeds: int = 1,
                   device: str = "auto", mae_threshold: float = 0.05, acc_threshold: float = 0.9,
                   progress: bool = True, budget_minutes: float | None = None, executor: str = "local",
                   ray_address: str | None = None, max_retries: int = 2) -> dict[str, Any]:
    """Fill the grid (see the module docstring) and write the tables; returns table + verdicts.

    ``budget_minutes`` bounds this call's wall time: when a cell starts, the time left is shared equally among
    the cells still to be trained (so time a cell does not use passes to the later ones), and the cell's steps
    are fitted to its share (:mod:`geoprobe.models.budget`). Cells whose steps were cut by the budget are
    marked ``(budget)`` in the table; cells whose share buys too few steps are skipped (see :func:`run_cell`).

    ``executor`` runs the missing cells one after another here (``local``) or as Ray tasks (``ray``, on the
    cluster at ``ray_address`` / ``RAY_ADDRESS``, else a local Ray instance): :mod:`geoprobe.sweep.executors`.
    A cell that fails is retried up to ``max_retries`` times; ``sweep.json`` lists every cell with its status
    and attempts, and failed cells are reported as one error after the others have finished.
    """
    from geoprobe.models import ARCHS
    from geoprobe.models.presets import get_preset
    from geoprobe.sweep.executors import check_executor
    from geoprobe.tasks import TASKS

    for t in tasks:
        TASKS.get(t)
        get_preset(t, preset)  # every task needs a preset; errors list the valid names
    for a in archs:
        ARCHS.get(a)
    if seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {seeds}")
    if budget_minutes is not None and budget_minutes <= 0:
        raise ConfigError(f"--budget-minutes must be positive, got {budget_minutes}")
    check_executor(executor, ray_address)
    if executor != "local" and budget_minutes is not None:
        raise ConfigError("--budget-minutes shares one machine's time between cells trained one after another; "
                          "it applies to --executor local only")
    if max_retries < 0:
        raise ConfigError(f"--max-retries must be >= 0, got {max_retries}")
    if executor == "ray":
        from geoprobe.sweep.executors import require_ray

        require_ray()  # without Ray: how to install it, before the output folder is touched
    from geoprobe.errors import TrainingInterrupted
    from geoprobe.io import check_output, open_output
    from geoprobe.sweep.executors import make_executor

    check_output(out, accumulate=True)  # before connecting to a cluster
    with make_executor(executor, ray_address=ray_address) as ex, \
            open_output(out, kind="compare", accumulate=True) as output:  # one comparison per folder at a time
        try:
            return _fill_grid(output.work, tasks, archs, preset, seeds, device, mae_threshold, acc_threshold,
                              progress, budget_minutes, ex, max_retries)
        except TrainingInterrupted as exc:
            raise TrainingInterrupted(exc.signum, f"{exc}; for the grid, rerun the same 'tunnel compare' "
                                                  "command: finished cells are kept, this one resumes") from None


@dataclass(frozen=True)
class CellSpec:
    """What one grid cell needs (picklable; a Ray task receives this, never a model).

    ``deadline`` (a :func:`geoprobe.models.training.timer` value of this process) and ``todo_from_here`` (cells
    still to train from this one on) give the cell's budget share when it starts; local executor only.
    """

    folder: str
    task: str
    arch: str
    preset: str
    seed: int
    device: str
    progress: bool = False
    deadline: float | None = None
    todo_from_here: int = 1


def compare_cell_job(spec: CellSpec) -> dict[str, Any]:
    """Train (or resume, or reuse) one cell in ``spec.folder`` and return its record (:func:`run_cell`)."""
    from geoprobe.models.training import timer

    share = None if spec.deadline is None else (spec.deadline - timer()) / spec.todo_from_here
    return run_cell(Path(spec.folder), spec.task, spec.arch, spec.preset, spec.seed, spec.device, spec.progress,
                    share)


def _cell_key(task: str, arch: str, seed: int) -> str:
    return f"{task}/{arch}/seed{seed}"


def _fill_grid(out: Path, tasks: list[str], archs: list[str], preset: str, seeds: int, device: str,
               mae_threshold: float, acc_threshold: float, progress: bool,
               budget_minutes: float | None, executor: Any = None, max_retries: int = 2) -> dict[str, Any]:
    """The body of :func:`run_comparison` (``out`` validated and locked)."""
    from geoprobe.models.checkpoint import is_finished_run
    from geoprobe.models.training import timer
    from geoprobe.sweep.executors import Job, LocalExecutor, raise_failures, stderr_progress, sweep_manifest

    executor = executor or LocalExecutor()
    local = executor.name == "local"
    grid = [(task, arch, seed) for task in tasks for arch in archs for seed in range(seeds)]
    deadline = None if budget_minutes is None else timer() + budget_minutes * 60
    todo = [not is_finished_run(cell_dir(out, *cell)) for cell in grid]
    jobs = []
    for i, (task, arch, seed) in enumerate(grid):
        spec = CellSpec(str(cell_dir(out, task, arch, seed)), task, arch, preset, seed, device,
                        progress=progress and local, deadline=deadline if todo[i] else None,
                        todo_from_here=max(1, sum(todo[i:])))
        jobs.append(Job(_cell_key(task, arch, seed), compare_cell_job, spec, device=device))
    records: dict[str, dict[str, Any]] = {}

    def record(outcome: Any) -> None:  # progress so far, in grid order
        if outcome.status == "done":
            records[outcome.key] = outcome.result
            write_text(out / "cells.csv", pd.DataFrame([records[j.key] for j in jobs if j.key in records])
                       .to_csv(index=False))

    reused = [j.key for j, t in zip(jobs, todo, strict=True) if not t]
    outcomes = executor.run(jobs, max_retries=max_retries, on_result=record,
                            progress=stderr_progress if progress else None)
    write_json(out / "sweep.json", sweep_manifest(executor, [o for o in outcomes if o.key not in reused],
                                                  max_retries=max_retries, reused=reused, preset=preset,
                                                  seeds=seeds, device=device))
    raise_failures(outcomes, "grid cells", rerun="rerun the same 'tunnel compare' command to retry them")
    cells = pd.DataFrame([records[j.key] for j in jobs])
    table = summarise(cells, mae_threshold, acc_threshold)
    verdict = verdicts(table)
    criteria = (f"pass: entropy MAE <= {mae_threshold} bits (accumulation, transport); accuracy >= "
                f"{acc_threshold} (binding)")
    write_text(out / "table.csv", table.to_csv(index=False))
    budget_note = (f"; time budget {budget_minutes:g} min shared equally by the cells trained in that call"
                   if budget_minutes is not None else "")
    write_text(out / "table.md", f"Preset `{preset}`, seeds 0..{seeds - 1}{budget_note}; {criteria}.\n\n"
               + markdown_table(table))
    write_json(out / "verdicts.json", {"preset": preset, "seeds": seeds, "criteria": criteria,
                                       "budget_minutes": budget_minutes, "verdicts": verdict})
    from geoprobe.report import Report

    report = Report(title=f"geoprobe architecture comparison ({preset} preset, {seeds} seed(s))",
                    rows=table, summary={"criteria": criteria, **{a: v for a, v in verdict.items()}},
                    notes=["Published values: Paper I."])
    write_text(out / "report.html", report.to_html())
    return {"table": table, "verdicts": verdict, "criteria": criteria}
