"""Multi-revision scans: one model's training checkpoints scanned on the same prompts, and their trajectory.

``geoprobe scan MODEL --revisions R1 R2 ... --out DIR`` (:func:`scan_revisions`). Each revision is a hub
revision of ``MODEL`` (``step1000``), or an existing folder (a local checkpoint), given in training order; the last
one is the *final* revision. A wind-tunnel run's own checkpoints (``scan RUN --revisions 0 5 40``) are measured on
the run's held-out sequences instead of text prompts: :mod:`geoprobe.scan.tunnel_revisions`.

1. **selection** (once): the final revision scores the candidates and draws the entropy-stratified prompts, as a
   single scan would (:func:`geoprobe.scan.driver.preselect`); saved in ``DIR/selection/`` (``prompts.jsonl``,
   ``bins.json``) and reused unchanged for every revision, so revisions differ only in their weights.
2. **revisions**: every revision is an ordinary scan folder ``DIR/revisions/<label>/`` made with those prompts
   (written complete or not at all; an interrupted one resumes its finished stages). Revisions are jobs of an
   executor (:mod:`geoprobe.sweep.executors`): one after another here, or Ray tasks. A rerun of the same
   command skips finished revisions; more revisions can be added to a folder later (same settings and final
   revision).
3. **trajectory**: ``trajectory.csv`` (every result row of every revision, with ``revision``/``step`` columns),
   ``signatures.csv`` (the headline signatures per revision, each with its normalised excess),
   ``frame_precision.csv`` / ``frame_precision.json`` and the figure in ``report.html``.

Frame vs precision. Each signature's trajectory is measured against its own range with the settling step of
:func:`geoprobe.stats.settling_step`: the first revision after which the remaining excess
|x(s) - x(final)| stays within 10% of the initial excess |x(s_0) - x(final)| (90% of the total change covered
and kept); :func:`geoprobe.stats.normalised_excess` gives (x(s) - x(final)) / (x(s_0) - x(final)). The *frame*
signatures are the key frame and the attention pattern: key orthogonality (early-layer and all-layer mean
|cos| of the key weights), the mean final-token attention entropy over layers and the focusing percentage. The
*precision* signatures are the value manifold (PC1 and PC1+PC2 shares, participation ratio, rho(PC1, entropy)
at the last layer) and calibration (the in-context MAE to the Bayes entropy of the SULA experiment, and
rho(PC1, H_Bayes); measured only when SULA runs). A group has settled at the latest settling step of its
signatures (signatures that do not change at all are left out); the frame-precision dissociation claim is
``precision settles after frame``.

The step axis is the training step parsed from each revision's name (``step1000``, ``step_0001000``) when every
revision has one and they increase; otherwise the revision's position in the list (recorded as ``step_axis``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd

from geoprobe.errors import ConfigError
from geoprobe.io import atomic_dir, write_json, write_text

SELECTION_DIR = "selection"
REVISIONS_DIR = "revisions"
_STEP_RE = re.compile(r"step[_-]?0*(\d+)", re.IGNORECASE)

#: (group, set-level signature, how it is read from a scan summary's set block)
FRAME, PRECISION = "frame", "precision"
SET_SIGNATURES: tuple[tuple[str, str], ...] = (
    (FRAME, "key_orthogonality_early_mean_abs_cos"),
    (FRAME, "key_orthogonality_mean_abs_cos"),
    (FRAME, "attention_entropy_mean_bits"),
    (FRAME, "focusing_percent"),
    (PRECISION, "value_pc1_share"),
    (PRECISION, "value_pc12_share"),
    (PRECISION, "value_participation_ratio"),
    (PRECISION, "rho_pc1_entropy"),
)
SULA_SIGNATURES: tuple[tuple[str, str], ...] = ((PRECISION, "sula_mae_bits"), (PRECISION, "sula_rho_pc1_h_bayes"))


@dataclass(frozen=True)
class Revision:
    """One revision: ``name`` as given, what to load (``source`` + hub ``revision``), its folder ``label``
    and the training ``step`` parsed from its name (None when it has none)."""

    name: str
    source: str
    revision: str | None
    label: str
    step: int | None


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "revision"


def resolve_revisions(model: str, revisions: list[str]) -> list[Revision]:
    """Each entry: an existing folder (loaded from there) or a hub revision of ``model`` (module docstring)."""
    if not revisions:
        raise ConfigError("--revisions needs at least one revision")
    if len(set(revisions)) != len(revisions):
        dup = sorted({r for r in revisions if revisions.count(r) > 1})
        raise ConfigError(f"--revisions lists {', '.join(dup)} more than once")
    out, labels = [], set()
    for r in revisions:
        p = Path(r).expanduser()
        if p.exists():
            if not p.is_dir():
                raise ConfigError(f"revision {r} is a file; give a checkpoint folder or a hub revision name")
            from geoprobe.backends.sources import run_of_folder

            run = run_of_folder(p)
            step = run[1] if run is not None and run[1] is not None else _parse_step(p.name)
            label = _slug(p.name if run is None or run[1] is None else f"{run[0].name}-{p.name}")
            source, rev = str(p), None
        elif r.startswith(("/", "./", "../", "~")):
            raise ConfigError(f"revision {r}: no such checkpoint folder (a hub revision is a name such as "
                              "step1000)")
        else:
            step, label, source, rev = _parse_step(r), _slug(r), str(model), r
        base, k = label, 2
        while label in labels:
            label, k = f"{base}-{k}", k + 1
        labels.add(label)
        out.append(Revision(r, source, rev, label, step))
    return out


def _parse_step(name: str) -> int | None:
    m = _STEP_RE.search(name)
    return None if m is None else int(m.group(1))


def step_axis(revs: list[Revision]) -> tuple[list[int], str]:
    """Training steps when every revision has one and they increase, else positions 0..n-1."""
    steps = [r.step for r in revs]
    if all(s is not None for s in steps) and all(b > a for a, b in zip(steps, steps[1:], strict=False)):
        return [int(s) for s in steps], "training step (parsed from the revision names)"
    return list(range(len(revs))), "revision index (the names give no increasing training steps)"


# ------------------------------------------------------------------------------------------------ jobs


@dataclass(frozen=True)
class SelectionSpec:
    """The selection job: score ``sets`` with the final revision and save the choice in ``folder``."""

    folder: str
    source: str
    revision: str | None
    domain: str | None
    n: int
    options: Any
    sets: dict[str, list[Any]]


@dataclass(frozen=True)
class RevisionSpec:
    """One revision's scan into ``folder`` with the saved prompts (picklable: paths, options, records)."""

    folder: str
    source: str
    revision: str | None
    domain: str | None
    n: int
    options: Any
    preselected: dict[str, Any]
    progress: bool = False


def selection_job(spec: SelectionSpec) -> str:
    """Run the selection unless ``spec.folder`` holds it; the folder appears complete or not at all."""
    folder = Path(spec.folder)
    if (folder / "bins.json").is_file():
        return "reused"
    from geoprobe.scan.driver import preselect
    from geoprobe.scan.records import write_prompts_jsonl

    chosen = preselect(spec.source, domain=spec.domain, n=spec.n, options=replace(spec.options,
                                                                                 revision=spec.revision),
                       sets=spec.sets)

    def write(tmp: Path) -> None:
        write_prompts_jsonl(tmp / "prompts.jsonl", [r for recs, _ in chosen.values() for r in recs])
        write_json(tmp / "bins.json", {name: bins for name, (_, bins) in chosen.items()})

    atomic_dir(folder, write)
    return "selected"


def read_selection(folder: str | Path) -> dict[str, tuple[list[Any], list[dict[str, Any]]]]:
    """``{set: (records, bins)}`` saved by :func:`selection_job` (records in input order per set)."""
    from geoprobe.scan.records import read_prompts_jsonl

    folder = Path(folder)
    bins = json.loads((folder / "bins.json").read_text())
    recs = read_prompts_jsonl(folder / "prompts.jsonl")
    return {name: ([r for r in recs if r.extra.get("set") == name], b) for name, b in bins.items()}


def is_finished_scan(folder: str | Path) -> bool:
    from geoprobe.io import pending_replacement

    folder = Path(folder)
    return (folder / "summary.json").is_file() and (folder / "manifest.json").is_file() \
        and pending_replacement(folder) is None


def revision_job(spec: RevisionSpec) -> str:
    """Scan one revision into ``spec.folder`` (resuming an interrupted one); a finished one is left as is."""
    from geoprobe.io import pending_replacement
    from geoprobe.scan.driver import run_scan

    folder = Path(spec.folder)
    if is_finished_scan(folder):
        return "reused"
    run_scan(spec.source, domain=spec.domain, n=spec.n, out=folder, resume=pending_replacement(folder) is not None,
             options=replace(spec.options, revision=spec.revision), preselected=spec.preselected,
             progress=spec.progress)
    return "scanned"


# ------------------------------------------------------------------------------------------------ trajectory


def _mean(xs: Any) -> float | None:
    v = [float(x) for x in xs or [] if x is not None and math.isfinite(float(x))]
    return sum(v) / len(v) if v else None


def set_signatures(block: dict[str, Any]) -> dict[str, tuple[float | None, list[float] | None]]:
    """The headline signatures of one set of a scan summary: ``{name: (value, ci)}``."""
    vm, ko, af = block["value_manifold"], block["key_orthogonality"], block["attention_focusing"]
    return {
        "key_orthogonality_early_mean_abs_cos": (ko.get("early_layers_mean_abs_cos"), None),
        "key_orthogonality_mean_abs_cos": (_mean(ko.get("layer_mean_abs_cos")), None),
        "attention_entropy_mean_bits": (_mean(af.get("entropy_bits_by_layer")), None),
        "focusing_percent": (af.get("focusing_percent"), af.get("ci")),
        "value_pc1_share": (vm["pc1_share"]["value"], vm["pc1_share"]["ci"]),
        "value_pc12_share": (vm["pc12_share"]["value"], vm["pc12_share"]["ci"]),
        "value_participation_ratio": (vm["participation_ratio"]["value"], vm["participation_ratio"]["ci"]),
        "rho_pc1_entropy": (vm["rho_pc1_entropy"]["value"], vm["rho_pc1_entropy"]["ci"]),
    }


def signature_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Tidy rows (set, group, signature, value, ci_low, ci_high) of one scan summary."""
    rows = []
    groups = dict((name, g) for g, name in SET_SIGNATURES + SULA_SIGNATURES)
    for set_name, block in summary["sets"].items():
        for name, (value, ci) in set_signatures(block).items():
            rows.append({"set": set_name, "group": groups[name], "signature": name, "value": value,
                         "ci_low": ci[0] if ci else None, "ci_high": ci[1] if ci else None})
    sula = summary.get("sula")
    if sula:
        ci = sula.get("rho_ci")
        rows.append({"set": "sula", "group": PRECISION, "signature": "sula_mae_bits", "value": sula.get("mae_bits"),
                     "ci_low": None, "ci_high": None})
        rows.append({"set": "sula", "group": PRECISION, "signature": "sula_rho_pc1_h_bayes",
                     "value": sula.get("rho_pc1_h_bayes"), "ci_low": ci[0] if ci else None,
                     "ci_high": ci[1] if ci else None})
    return rows


def frame_precision(signatures: pd.DataFrame, steps: list[int]) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Settling step of every (set, signature) trajectory, and per set when the frame and the precision
    groups have settled (module docstring)."""
    from geoprobe.stats import settling_step

    index = {s: i for i, s in enumerate(steps)}
    rows = []
    for (set_name, sig), g in signatures.groupby(["set", "signature"], sort=False):
        g = g.set_index("step").reindex(steps)
        values = g["value"].astype(float).tolist()
        complete = all(math.isfinite(v) for v in values)
        settle = settling_step(steps, values) if complete else None
        rows.append({"set": set_name, "group": g["group"].dropna().iloc[0], "signature": sig,
                     "first": values[0], "final": values[-1], "total_change": values[-1] - values[0],
                     "settling_step": settle, "settling_index": None if settle is None else index[settle],
                     "changes": bool(complete and values[0] != values[-1]), "complete": complete})
    table = pd.DataFrame(rows)
    summary: dict[str, Any] = {}
    for set_name in dict.fromkeys(table["set"]) if len(table) else []:
        t = table[table["set"] == set_name]
        out: dict[str, Any] = {}
        for group in (FRAME, PRECISION):
            settled = t[(t["group"] == group) & t["settling_step"].notna()]
            last = None if settled.empty else int(settled["settling_step"].max())
            out[f"{group}_settles_at"] = last
            out[f"{group}_signatures"] = {r["signature"]: None if pd.isna(r["settling_step"])
                                          else int(r["settling_step"])
                                          for r in t[t["group"] == group].to_dict("records")}
        f, p = out[f"{FRAME}_settles_at"], out[f"{PRECISION}_settles_at"]
        out["precision_settles_after_frame"] = None if f is None or p is None else bool(p > f)
        summary[set_name] = out
    return table, summary


def _with_normalised_excess(signatures: pd.DataFrame, steps: list[int]) -> pd.DataFrame:
    from geoprobe.stats import normalised_excess

    parts = []
    for _, g in signatures.groupby(["set", "signature"], sort=False):
        g = g.copy()
        values = g["value"].astype(float).tolist()
        g["normalised_excess"] = normalised_excess(values) if len(values) == len(steps) and all(
            math.isfinite(v) for v in values) else math.nan
        parts.append(g)
    return pd.concat(parts, ignore_index=True) if parts else signatures


def _figure(signatures: pd.DataFrame, axis: str) -> Any:
    import plotly.graph_objects as go

    fig = go.Figure()
    for (set_name, sig), g in signatures.groupby(["set", "signature"], sort=False):
        if g["normalised_excess"].isna().all():
            continue
        group = g["group"].iloc[0]
        fig.add_trace(go.Scatter(x=g["step"], y=g["normalised_excess"], mode="lines+markers",
                                 name=f"{group}: {set_name} {sig}",
                                 line={"dash": "solid" if group == FRAME else "dash"}))
    fig.add_hline(y=0.1, line_dash="dot", annotation_text="settled: 10% of the change left")
    fig.add_hline(y=-0.1, line_dash="dot")
    fig.update_layout(xaxis_title=axis, yaxis_title="(x(s) - x(final)) / (x(first) - x(final))",
                      template="plotly_white")
    return fig


def write_trajectory(out: Path, revs: list[Revision], steps: list[int], axis: str) -> dict[str, Any]:
    """Read every revision's saved scan and write the trajectory files (module docstring); returns the
    frame-precision summary."""
    from geoprobe.scan.table import load_scan

    every, sigs = [], []
    for rev, step in zip(revs, steps, strict=True):
        folder = out / REVISIONS_DIR / rev.label
        rows = pd.read_csv(folder / "results.csv")
        rows.insert(0, "step", step)
        rows.insert(0, "revision", rev.name)
        every.append(rows)
        for r in signature_rows(load_scan(folder)):
            sigs.append({"revision": rev.name, "step": step, **r})
    write_text(out / "trajectory.csv", pd.concat(every, ignore_index=True).to_csv(index=False))
    signatures = _with_normalised_excess(pd.DataFrame(sigs), steps)
    write_text(out / "signatures.csv", signatures.to_csv(index=False))
    table, summary = frame_precision(signatures, steps)
    write_text(out / "frame_precision.csv", table.to_csv(index=False))
    result = {"step_axis": axis, "steps": steps, "revisions": [r.name for r in revs],
              "definition": "settling step: first revision after which |x(s) - x(final)| stays <= 0.1 x "
                            "|x(first) - x(final)| (geoprobe.stats.settling_step); a group settles at the latest "
                            "settling step of its signatures",
              "by_set": summary}
    write_json(out / "frame_precision.json", result)
    from geoprobe.report import Report

    report = Report(title=f"geoprobe multi-revision scan: {len(revs)} revisions", rows=table,
                    summary={"frame_precision": summary, "step_axis": axis},
                    figures={"Normalised excess per signature (frame solid, precision dashed)":
                             _figure(signatures, axis)})
    write_text(out / "report.html", report.to_html())
    return result


# ------------------------------------------------------------------------------------------------ the sweep


def _config(model: str, final: Revision, domain: str | None, n: int, opts: Any) -> dict[str, Any]:
    d = dataclasses.asdict(opts)
    d.pop("batch_size")
    d.pop("revision")
    return {"model": str(model), "final_revision": final.name, "domain": domain, "n": int(n), "options": d}


def scan_revisions(model: str, revisions: list[str], *, out: str | Path, domain: str | None = "math", n: int = 75,
                   options: Any = None, executor: str = "local", ray_address: str | None = None,
                   max_retries: int = 2, progress: bool = False, **kwargs: Any) -> dict[str, Any]:
    """Scan every revision on the final revision's prompts and write the trajectory (module docstring).

    Returns the frame-precision summary (also in ``frame_precision.json``). Failed revisions (after
    ``max_retries`` more attempts each) are reported as one error once the others are finished; ``sweep.json``
    lists every job with its status and attempts.

    A wind-tunnel run (``model``, or the folders in ``revisions``) goes to
    :func:`geoprobe.scan.tunnel_revisions.scan_tunnel_revisions` (its checkpoints on its own held-out sequences;
    ``domain`` other than the default and prompt options are refused there).
    """
    from geoprobe.scan.tunnel_revisions import options_from_scan, scan_tunnel_revisions, tunnel_run_of

    if tunnel_run_of(model, list(revisions)) is not None:
        from geoprobe.scan.driver import ScanOptions

        topts = options_from_scan(replace(options or ScanOptions(), n=int(n), **kwargs),
                                  domain=None if domain == "math" else domain)
        return scan_tunnel_revisions(model, list(revisions), out=out, options=topts, executor=executor,
                                     ray_address=ray_address, max_retries=max_retries, progress=progress)
    from geoprobe.io import check_output, open_output
    from geoprobe.models.checkpoint import versions
    from geoprobe.scan.driver import ScanOptions, candidate_sets
    from geoprobe.sweep.executors import (
        Job,
        check_executor,
        make_executor,
        raise_failures,
        require_ray,
        stderr_progress,
        sweep_manifest,
    )

    check_executor(executor, ray_address)
    opts = replace(options or ScanOptions(), domain=domain, n=int(n), **kwargs)
    if opts.revision is not None:
        raise ConfigError("give either --revision (one scan) or --revisions (a trajectory), not both")
    opts.check()
    revs = resolve_revisions(str(model), list(revisions))
    from geoprobe.backends.sources import resolve_source

    for r in revs:  # local folders: not a model -> one line before anything is written (hub ones: in their job)
        if r.revision is None:
            resolve_source(r.source)
    steps, axis = step_axis(revs)
    sets = candidate_sets(opts)  # here, so that every job (and worker) measures exactly these candidates
    if executor == "ray":
        require_ray()
    config = _config(model, revs[-1], domain, n, opts)
    inputs = [r.source for r in revs if r.revision is None] + [x for x in (opts.prompts,) if x is not None]
    check_output(out, inputs=inputs, accumulate=True)  # before connecting to a cluster
    with make_executor(executor, ray_address=ray_address) as ex, \
            open_output(out, kind="scan-revisions", inputs=inputs, accumulate=True) as output:
        work = output.work
        cfg_path = work / "sweep_config.json"
        started = (work / SELECTION_DIR).exists() or (work / REVISIONS_DIR).exists()
        if cfg_path.is_file() and started:  # (a call that stopped before any job wrote nothing to keep)
            old = json.loads(cfg_path.read_text())
            if old != json.loads(json.dumps(config)):
                diff = sorted(k for k in set(old) | set(config) if old.get(k) != json.loads(json.dumps(config)).get(k))
                raise ConfigError(f"{out} holds revisions scanned with different settings ({', '.join(diff)}); "
                                  "rerun with the same settings and final revision, or choose another --out")
        else:
            write_json(cfg_path, config)
        final = revs[-1]
        sel_spec = SelectionSpec(str(work / SELECTION_DIR), final.source, final.revision, domain, int(n), opts, sets)
        sink = stderr_progress if progress else None
        sel_key = f"selection ({final.name})"
        reused = [sel_key] if (work / SELECTION_DIR / "bins.json").is_file() else []
        reused += [r.name for r in revs if is_finished_scan(work / REVISIONS_DIR / r.label)]
        outcomes = []
        if sel_key not in reused:
            outcomes += ex.run([Job(sel_key, selection_job, sel_spec, device=opts.device)],
                               max_retries=max_retries, progress=sink)
        if all(o.status == "done" for o in outcomes):
            chosen = read_selection(work / SELECTION_DIR)
            jobs = [Job(r.name, revision_job,
                        RevisionSpec(str(work / REVISIONS_DIR / r.label), r.source, r.revision, domain, int(n),
                                     opts, chosen, progress=progress and executor == "local"),
                        device=opts.device) for r in revs if r.name not in reused]
            outcomes += ex.run(jobs, max_retries=max_retries, progress=sink)
        sweep = sweep_manifest(ex, outcomes, max_retries=max_retries, reused=reused)
        write_json(work / "sweep.json", sweep)
        raise_failures(outcomes, "jobs", rerun="rerun the same command to retry them")
        result = write_trajectory(work, revs, steps, axis)
        write_json(work / "manifest.json", {
            "kind": "geoprobe-scan-revisions", "model": str(model), "final_revision": final.name,
            "revisions": [{**dataclasses.asdict(r), "folder": f"{REVISIONS_DIR}/{r.label}", "axis_step": s}
                          for r, s in zip(revs, steps, strict=True)],
            "step_axis": axis, "selection": "once, by the final revision's next-token entropies; saved in "
                                            f"{SELECTION_DIR}/ and reused for every revision",
            "options": config["options"], "domain": domain, "n": int(n),
            "sweep": {k: v for k, v in sweep.items() if k != "cells"}, "versions": versions()})
        return {**result, "out": str(output.final)}
