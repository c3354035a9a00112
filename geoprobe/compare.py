"""Architecture comparison (Paper I's primitives table): train every (task, architecture, seed) cell that is
missing, evaluate it against the exact posterior, and tabulate.

Cells live in ``OUT/<task>/<arch>/seed<k>/`` as ordinary run folders: finished cells are reused, interrupted
ones resumed, so a crash mid-grid loses no finished cell. One comparison writes to ``OUT`` at a time (a lock
naming the holder), and ``OUT`` must be empty or a folder geoprobe wrote. Outputs (each written atomically): ``cells.csv`` (one
row per run), ``table.csv`` / ``table.md`` / ``report.html`` (mean ± sd over seeds per task x architecture,
with the published values beside ours) and ``verdicts.json``; each cell folder also keeps ``untrained_metrics.json`` (the null below). Cells run one after another here or as Ray tasks
(``executor="ray"``, :mod:`geoprobe.sweep.executors`); ``sweep.json`` lists every cell with its status and attempts.

Pass rules. The cell's metric is its entropy MAE in bits (accumulation = bijection, transport = hmm) or its
accuracy at the deterministic query positions (binding = recall), one value per seed.

* ``passes_naive`` is Paper I's bare rule: the mean over seeds is <= ``mae_threshold`` (>= ``acc_threshold``).
* ``passes`` asks the same of the whole 95% Student-t interval over seeds, mean ± t(0.975, n-1)·sd/√n (sd with
  n-1): its upper end <= ``mae_threshold`` (its lower end >= ``acc_threshold``). With one seed the interval is
  undefined and ``passes`` is False: one seed cannot establish a pass.
* ``untrained_*`` is the same metric of each seed's untrained initialisation (the run's step-0 checkpoint,
  measured by the same evaluation as the trained model), averaged over seeds; a pass is ``vacuous`` when the
  untrained mean passes the bare rule too (the threshold does not separate a trained model from a random one).

An architecture *realises* a primitive (``verdicts.json``) when the cell passes, the untrained model was measured
and it is not vacuous; single-seed cells whose bare rule would pass are ``undetermined``.
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


#: level of the Student-t interval over seeds behind ``passes``
CI_LEVEL = 0.95
#: the checkpoint whose metrics are the untrained null (the initialisation every run saves before training)
UNTRAINED_STEP = 0
#: cache of the untrained checkpoint's metrics inside a cell folder
UNTRAINED_FILE = "untrained_metrics.json"


def seed_ci(values: Any, level: float = CI_LEVEL) -> tuple[float, float]:
    """Student-t interval over seeds (:func:`geoprobe.stats.t_interval`): mean ± t((1+level)/2, n-1)·sd/√n with
    sd over n-1, from the finite values; (nan, nan) when fewer than two are finite (undefined)."""
    from geoprobe.stats import t_interval

    return t_interval(values, level)


def untrained_metrics(folder: Path, n_sequences: int, device: str) -> dict[str, Any] | None:
    """Metrics of the cell's untrained initialisation (checkpoint ``UNTRAINED_STEP``), evaluated by
    :func:`geoprobe.models.run.evaluate_checkpoint` on ``n_sequences`` held-out sequences (as many as the trained
    model's evaluation used); cached in ``UNTRAINED_FILE`` and reused when the count matches. None when the run
    has no step-0 checkpoint."""
    from geoprobe.models.checkpoint import checkpoint_dir
    from geoprobe.models.run import evaluate_checkpoint

    path = Path(folder) / UNTRAINED_FILE
    if path.exists():
        import json

        try:
            cached = json.loads(path.read_text())
        except (OSError, ValueError):
            cached = None  # unreadable cache: measured again below
        if isinstance(cached, dict) and cached.get("n_sequences") == n_sequences:
            return cached
    if not checkpoint_dir(Path(folder), UNTRAINED_STEP).is_dir():
        return None
    metrics = evaluate_checkpoint(folder, UNTRAINED_STEP, device=device, n_sequences=n_sequences)
    metrics.pop("per_position", None)
    write_json(path, metrics)
    return metrics


def cell_dir(out: Path, task: str, arch: str, seed: int) -> Path:
    return Path(out) / task / arch / f"seed{seed}"


def _skipped(record: dict[str, Any], reason: str, seconds: float) -> dict[str, Any]:
    return {**record, "entropy_mae_bits": math.nan, "kl_bits": math.nan, "accuracy": math.nan, "params": None,
            "untrained_entropy_mae_bits": math.nan, "untrained_accuracy": math.nan,
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
    null = untrained_metrics(folder, int(metrics.get("n_sequences") or 2048), device) or {}
    return {
        **record, "entropy_mae_bits": metrics["entropy_mae_bits"], "kl_bits": metrics["kl_bits"],
        "accuracy": metrics.get("deterministic_accuracy"),
        "untrained_entropy_mae_bits": null.get("entropy_mae_bits", math.nan),
        "untrained_accuracy": null.get("deterministic_accuracy", math.nan) if null else math.nan,
        "params": manifest.get("n_params"),
        "steps": manifest.get("step"), "budget_limited": bool(budget.get("limited", False)), "skipped": "",
        "train_wall_time_s": manifest.get("train_wall_time_s"),
        "cell_wall_time_s": manifest.get("cell_wall_time_s", math.nan), "run": str(folder),
    }


def _bare_pass(task: str, value: float, mae_threshold: float, acc_threshold: float) -> bool:
    """Paper I's rule on one number: accuracy >= ``acc_threshold`` (recall), else MAE <= ``mae_threshold``."""
    return bool(value >= acc_threshold) if task == "recall" else bool(value <= mae_threshold)


def summarise(cells: pd.DataFrame, mae_threshold: float, acc_threshold: float) -> pd.DataFrame:
    """Per (task, arch): mean ± sd and the t-interval over seeds, the untrained model's mean, the pass flags
    (``passes`` on the interval, ``passes_naive`` on the mean, ``vacuous``; module docstring) and the published
    value."""
    rows = []
    for (task, arch), cell in cells.groupby(["task", "arch"], sort=False):
        g = cell[cell["skipped"].fillna("") == ""]  # seeds that were trained
        acc = g["accuracy"].dropna()
        mae_mean = float(g["entropy_mae_bits"].mean())
        acc_mean = float(acc.mean()) if len(acc) else math.nan
        mae_lo, mae_hi = seed_ci(g["entropy_mae_bits"])
        acc_lo, acc_hi = seed_ci(acc)
        recall = task == "recall"
        trained = len(g) > 0
        passes_naive = trained and _bare_pass(task, acc_mean if recall else mae_mean, mae_threshold, acc_threshold)
        passes = trained and (acc_lo >= acc_threshold if recall else mae_hi <= mae_threshold)  # False on nan
        col = "untrained_accuracy" if recall else "untrained_entropy_mae_bits"
        null_vals = g[col].dropna() if col in g else pd.Series(dtype=float)
        null_mean = float(null_vals.mean()) if len(null_vals) else math.nan
        untrained_passes = bool(len(null_vals)) and _bare_pass(task, null_mean, mae_threshold, acc_threshold)
        rows.append({
            "task": task, "primitive": PRIMITIVE.get(task, task), "arch": arch, "seeds": len(g),
            "entropy_mae_bits_mean": mae_mean,
            "entropy_mae_bits_sd": float(g["entropy_mae_bits"].std(ddof=1)) if len(g) > 1 else math.nan,
            "entropy_mae_bits_ci_low": mae_lo, "entropy_mae_bits_ci_high": mae_hi,
            "accuracy_mean": acc_mean,
            "accuracy_sd": float(acc.std(ddof=1)) if len(acc) > 1 else math.nan,
            "accuracy_ci_low": acc_lo, "accuracy_ci_high": acc_hi,
            "untrained_entropy_mae_bits_mean": float(g["untrained_entropy_mae_bits"].mean())
            if "untrained_entropy_mae_bits" in g and trained else math.nan,
            "untrained_accuracy_mean": float(g["untrained_accuracy"].mean())
            if "untrained_accuracy" in g and trained else math.nan,
            "params": int(g["params"].iloc[0]) if len(g) and g["params"].notna().all() else None,
            "steps_mean": float(g["steps"].mean()), "budget_limited": bool(cell["budget_limited"].any()),
            "train_wall_time_s_mean": float(g["train_wall_time_s"].mean()),
            "cell_wall_time_s_mean": float(g["cell_wall_time_s"].mean()),
            "skipped": not trained, "passes": bool(passes), "passes_naive": bool(passes_naive),
            "ci_defined": len(acc if recall else g) > 1, "untrained_measured": bool(len(null_vals)),
            "untrained_passes": bool(untrained_passes),
            "vacuous": bool(untrained_passes and (passes or passes_naive)),
            "published": PUBLISHED.get((task, arch), "n/a"),
        })
    return pd.DataFrame(rows)


def cell_verdict(row: dict[str, Any]) -> str:
    """One cell's verdict: ``untested`` (every seed skipped), ``vacuous`` (the untrained model passes too),
    ``realises`` (the interval passes and the untrained model was measured and fails), ``undetermined`` (the bare
    rule passes but there is no interval (one seed) or no untrained measurement), else ``fails``."""
    if row["skipped"]:
        return "untested"
    if row["vacuous"]:
        return "vacuous"
    if row["passes"] and row["untrained_measured"]:
        return "realises"
    if row["passes_naive"] and (not row["ci_defined"] or not row["untrained_measured"]):
        return "undetermined"
    return "fails"


def verdicts(table: pd.DataFrame) -> dict[str, Any]:
    """Per architecture: the primitives of each :func:`cell_verdict` (``realises``, ``fails``, ``vacuous``,
    ``undetermined``, ``untested``), and ``naive_realises``: those Paper I's bare rule on the mean would pass."""
    out = {}
    for arch, g in table.groupby("arch", sort=False):
        rows = g.to_dict("records")
        v: dict[str, list[str]] = {k: sorted(r["primitive"] for r in rows if cell_verdict(r) == k)
                                   for k in ("realises", "fails", "vacuous", "undetermined", "untested")}
        v["naive_realises"] = sorted(r["primitive"] for r in rows if r["passes_naive"])
        out[arch] = v
    return out


def markdown_table(table: pd.DataFrame) -> str:
    def pm(m: float, s: float, fmt: str) -> str:
        if m != m:
            return "–"
        return format(m, fmt) + ("" if s != s else " ± " + format(s, fmt))

    def ci(lo: float, hi: float, fmt: str, seeds: int) -> str:
        if lo != lo:
            return "undefined (1 seed)" if seeds == 1 else "–"
        return f"[{format(lo, fmt)}, {format(hi, fmt)}]"

    def flag(r: dict[str, Any], key: str) -> str:
        if r["skipped"]:
            return "skipped"
        if key == "passes" and not r["ci_defined"]:
            return "no CI"
        return "yes" if r[key] else "no"

    lines = ["| task (primitive) | arch | seeds | entropy MAE (bits) | accuracy | params | steps | train s | cell s | "
             "MAE 95% CI | accuracy 95% CI | untrained | pass (CI) | pass (naive) | vacuous | verdict | published |",
             "|" + "---|" * 17]
    for r in table.to_dict("records"):
        recall = r["task"] == "recall"
        null = pm(r["untrained_accuracy_mean" if recall else "untrained_entropy_mae_bits_mean"], math.nan,
                  ".3f" if recall else ".4f")
        lines.append(
            f"| {r['task']} ({r['primitive']}) | {r['arch']} | {r['seeds']} | "
            f"{pm(r['entropy_mae_bits_mean'], r['entropy_mae_bits_sd'], '.4f')} | "
            f"{pm(r['accuracy_mean'], r['accuracy_sd'], '.3f')} | {pm(r['params'] or math.nan, math.nan, ',.0f')} | "
            f"{pm(r['steps_mean'], math.nan, '.0f')}{' (budget)' if r['budget_limited'] else ''} | "
            f"{pm(r['train_wall_time_s_mean'], math.nan, '.0f')} | {pm(r['cell_wall_time_s_mean'], math.nan, '.0f')} | "
            f"{ci(r['entropy_mae_bits_ci_low'], r['entropy_mae_bits_ci_high'], '.4f', r['seeds'])} | "
            f"{ci(r['accuracy_ci_low'], r['accuracy_ci_high'], '.3f', r['seeds']) if recall else '–'} | {null} | "
            f"{flag(r, 'passes')} | {flag(r, 'passes_naive')} | "
            f"{'–' if r['skipped'] else 'yes' if r['vacuous'] else 'no'} | {cell_verdict(r)} | {r['published']} |")
    return "\n".join(lines) + "\n"


def verdict_line(arch: str, v: dict[str, list[str]]) -> str:
    """One architecture's verdict as printed by ``geoprobe tunnel compare``: the primitives it realises and
    fails, then the vacuous, undetermined and untested ones where there are any."""
    untested = f"; untested (time budget) {', '.join(v['untested'])}" if v.get("untested") else ""
    extra = "".join(f"; {k} {', '.join(v[k])}" for k in ("vacuous", "undetermined") if v.get(k))
    return (f"{arch}: realises {', '.join(v['realises']) or 'none'}; fails {', '.join(v['fails']) or 'none'}"
            f"{extra}{untested}")


def display_frame(table: pd.DataFrame) -> pd.DataFrame:
    """The comparison table as shown in ``table.md`` (formatted strings, one row per task x architecture)."""
    def cells(line: str) -> list[str]:
        return [c.strip() for c in line.strip().strip("|").split(" | ")]

    lines = markdown_table(table).splitlines()
    return pd.DataFrame([cells(x) for x in lines[2:]], columns=cells(lines[0]))


def comparison_report(table: pd.DataFrame, verdict: dict[str, Any], criteria: str, preset: str, seeds: int,
                      mae_threshold: float, acc_threshold: float) -> Any:
    """``report.html``'s Report: each architecture's verdict first, the figure (per task: the trained models'
    mean with the t-interval over seeds beside the untrained step-0 null and the threshold), the criteria, and
    the table of ``table.md``."""
    from geoprobe.plots import comparison_figure
    from geoprobe.report import Report

    lines = [verdict_line(arch, v) for arch, v in verdict.items()]
    return Report(title=f"geoprobe architecture comparison ({preset} preset, {seeds} seed(s))",
                  rows=display_frame(table), headline=" | ".join(lines),
                  figures={"Per task: trained models (mean, 95% t-interval over seeds) vs untrained (step 0)":
                           comparison_figure(table, mae_threshold, acc_threshold)},
                  notes=[f"Criteria: {criteria}.", "Published values (column 'published'): Paper I."])


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
    from geoprobe.errors import JobInterrupted
    from geoprobe.io import check_output, open_output
    from geoprobe.sweep.executors import make_executor

    check_output(out, accumulate=True)  # before connecting to a cluster
    try:
        with make_executor(executor, ray_address=ray_address) as ex, \
                open_output(out, kind="compare", accumulate=True) as output:  # one comparison per folder at a time
            return _fill_grid(output.work, tasks, archs, preset, seeds, device, mae_threshold, acc_threshold,
                              progress, budget_minutes, ex, max_retries)
    except JobInterrupted as exc:
        raise grid_interruption(exc, Path(out), tasks, archs, seeds) from None


def grid_interruption(exc: Any, out: Path, tasks: list[str], archs: list[str], seeds: int) -> Any:
    """The one line of a grid stopped by a signal: what the cell in progress kept (its trainer state), how many
    cells are finished and kept; the same command continues (finished cells are reused, the stopped one
    resumes). The tables are written only when every cell is finished."""
    from geoprobe.interrupts import restate
    from geoprobe.models.checkpoint import is_finished_run

    grid = [cell_dir(out, t, a, s) for t in tasks for a in archs for s in range(seeds)]
    done = sum(is_finished_run(c) for c in grid)
    what = exc.body.split("; continue with --resume")[0] if exc.says_how_to_continue else "tunnel compare stopped"
    return restate(exc, f"{what}; {done} of {len(grid)} grid cells finished and kept in {out} (the tables are "
                        "written when all are)", "same")


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
    criteria = (f"pass (naive, Paper I): mean entropy MAE <= {mae_threshold} bits (accumulation, transport), "
                f"mean accuracy >= {acc_threshold} (binding); pass (CI): the whole 95% t-interval over seeds on "
                f"that side (undefined with one seed); vacuous: the untrained model (step-0 checkpoint, same "
                f"evaluation) passes the naive rule too")
    from geoprobe.interrupts import finishing

    with finishing():  # the tables appear together: a signal now waits until they are written
        write_text(out / "table.csv", table.to_csv(index=False))
        budget_note = (f"; time budget {budget_minutes:g} min shared equally by the cells trained in that call"
                       if budget_minutes is not None else "")
        write_text(out / "table.md", f"Preset `{preset}`, seeds 0..{seeds - 1}{budget_note}; {criteria}.\n\n"
                   + markdown_table(table))
        write_json(out / "verdicts.json", {"preset": preset, "seeds": seeds, "criteria": criteria,
                                           "budget_minutes": budget_minutes, "verdicts": verdict})
        report = comparison_report(table, verdict, criteria, preset, seeds, mae_threshold, acc_threshold)
        write_text(out / "report.html", report.to_html())
    return {"table": table, "verdicts": verdict, "criteria": criteria}
