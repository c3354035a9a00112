"""Multi-model scans: several models scanned the same way, then their cross-model table and scorecard.

``geoprobe scan M1 M2 ... --out DIR`` (:func:`scan_models`). Each model (a hub id, a local HF folder or a
``.gguf`` file) gets an ordinary scan folder ``DIR/models/<label>/``, exactly what ``geoprobe scan M --out F``
writes (written complete or not at all; an interrupted one resumes its finished stages). The candidate pools
are built once here and every model scores the same candidates (each model then draws its own entropy-
stratified prompts, as a single scan does). ``<label>`` is the folder's or file's name for a local model and
the hub id with ``/`` written ``--`` otherwise, reduced to letters, digits and ``._-``; a label already taken
gets ``-2``, ``-3``, ... in the order given.

The scans are jobs of an executor (:mod:`geoprobe.sweep.executors`): one after another here, or Ray tasks;
failed ones are retried (bounded) and reported. A rerun of the same command skips finished models; more
models can be added to a folder later (same settings). ``sweep.json`` lists every job with its status and
attempts. Finally ``table.csv`` / ``table.md`` (the cross-model table with the prediction scorecard, as
``geoprobe scan-table`` writes them: :mod:`geoprobe.scan.table`) and ``scorecard.csv`` (prediction x model) are
written for the models of the call, in the order given, with ``manifest.json``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd

from geoprobe.errors import ConfigError
from geoprobe.interrupts import finishing, reporting
from geoprobe.io import write_json, write_text

MODELS_DIR = "models"


@dataclass(frozen=True)
class ModelEntry:
    """One model of the call: ``name`` as given and its folder ``label`` under ``models/``."""

    name: str
    label: str


def resolve_models(models: list[str]) -> list[ModelEntry]:
    """Labels for the models (module docstring); the same model twice is refused."""
    from geoprobe.scan.revisions import _slug

    models = [str(m) for m in models]
    if len(models) < 2:
        raise ConfigError("a multi-model scan needs at least two models")
    if len(set(models)) != len(models):
        dup = sorted({m for m in models if models.count(m) > 1})
        raise ConfigError(f"the models list {', '.join(dup)} more than once")
    out, labels = [], set()
    for m in models:
        p = Path(m).expanduser()
        base = _slug(p.name if p.exists() else m.replace("/", "--"))
        label, k = base, 2
        while label in labels:
            label, k = f"{base}-{k}", k + 1
        labels.add(label)
        out.append(ModelEntry(m, label))
    return out


@dataclass(frozen=True)
class ModelSpec:
    """One model's scan into ``folder`` on the given candidates (picklable: paths, options, candidates)."""

    folder: str
    source: str
    domain: str | None
    n: int
    options: Any
    candidates: dict[str, list[Any]]
    progress: bool = False


def model_job(spec: ModelSpec) -> str:
    """Scan one model into ``spec.folder`` (resuming an interrupted one); a finished one is left as is."""
    from geoprobe.io import pending_replacement
    from geoprobe.scan.driver import run_scan
    from geoprobe.scan.revisions import is_finished_scan

    folder = Path(spec.folder)
    if is_finished_scan(folder):
        return "reused"
    run_scan(spec.source, domain=spec.domain, n=spec.n, out=folder, resume=pending_replacement(folder) is not None,
             options=spec.options, candidates=spec.candidates, progress=spec.progress)
    return "scanned"


def _config(domain: str | None, n: int, opts: Any) -> dict[str, Any]:
    d = dataclasses.asdict(opts)
    d.pop("batch_size")  # a speed setting: results do not depend on it
    return json.loads(json.dumps({"domain": domain, "n": int(n), "options": d}))


def models_interruption(exc: Any, models: list[str], *args: Any, out: str | Path, **kwargs: Any) -> Any:
    """The one line of a multi-model scan (:func:`scan_models`'s arguments) stopped by a signal: what the scan in
    progress kept, how many models are finished and kept; the same command continues."""
    from geoprobe.interrupts import restate
    from geoprobe.scan.revisions import is_finished_scan

    try:
        folders = [Path(out) / MODELS_DIR / e.label for e in resolve_models(list(models))]
    except ConfigError:  # stopped before the models were checked
        folders = []
    done = sum(is_finished_scan(f) for f in folders)
    what = exc.body if exc.continue_with == "resume" else "multi-model scan stopped"  # a scan's own line
    return restate(exc, f"{what}; {done} of {len(folders)} models finished and kept in {Path(out) / MODELS_DIR} "
                        "(table.csv, scorecard.csv and manifest.json are written when all are)", "same")


@reporting(models_interruption)
def scan_models(models: list[str], *, out: str | Path, domain: str | None = "math", n: int = 75,
                options: Any = None, executor: str = "local", ray_address: str | None = None,
                max_retries: int = 2, progress: bool = False, **kwargs: Any) -> pd.DataFrame:
    """Scan every model into ``out/models/<label>/`` and write the cross-model table (module docstring).

    Returns the table (:func:`geoprobe.scan.table.table_frame`, one row per model in the order given). Failed
    models (after ``max_retries`` more attempts each) are reported as one error once the others are finished.
    """
    from geoprobe.io import check_output, open_output
    from geoprobe.models.checkpoint import versions
    from geoprobe.scan.driver import ScanOptions, candidate_sets
    from geoprobe.scan.revisions import is_finished_scan
    from geoprobe.scan.table import csv_text, load_scan, markdown, scorecard_frame, table_frame
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
    entries = resolve_models(list(models))
    opts = replace(options or ScanOptions(), domain=domain, n=int(n), **kwargs)
    opts.check()
    from geoprobe.backends.sources import resolve_source

    for e in entries:  # a missing model: one line before anything is written (hub ones offline: also here)
        resolve_source(e.name, revision=opts.revision)
    sets = candidate_sets(opts)  # once, here: every model (and worker) scores exactly these candidates
    if executor == "ray":
        require_ray()
    config = _config(domain, n, opts)
    inputs = [e.name for e in entries if Path(e.name).expanduser().exists()] + \
        [x for x in (opts.prompts,) if x is not None]
    check_output(out, inputs=inputs, accumulate=True)  # before connecting to a cluster
    with make_executor(executor, ray_address=ray_address) as ex, \
            open_output(out, kind="scan-models", inputs=inputs, accumulate=True) as output:
        work = output.work
        cfg_path = work / "sweep_config.json"
        if cfg_path.is_file() and (work / MODELS_DIR).exists():  # (a call that scanned nothing leaves nothing)
            old = json.loads(cfg_path.read_text())
            if old != config:
                diff = sorted(k for k in set(old) | set(config) if old.get(k) != config.get(k))
                raise ConfigError(f"{out} holds models scanned with different settings ({', '.join(diff)}); "
                                  "rerun with the same settings, or choose another --out")
        else:
            write_json(cfg_path, config)
        folders = {e.name: work / MODELS_DIR / e.label for e in entries}
        reused = [e.name for e in entries if is_finished_scan(folders[e.name])]
        jobs = [Job(e.name, model_job, ModelSpec(str(folders[e.name]), e.name, domain, int(n), opts, sets,
                                                 progress=progress and executor == "local"), device=opts.device)
                for e in entries if e.name not in reused]
        outcomes = ex.run(jobs, max_retries=max_retries, progress=stderr_progress if progress else None)
        sweep = sweep_manifest(ex, outcomes, max_retries=max_retries, reused=reused)
        write_json(work / "sweep.json", sweep)
        raise_failures(outcomes, "models", rerun="rerun the same command to retry them")
        with finishing():  # the tables appear together: a signal now waits
            summaries = [load_scan(folders[e.name]) for e in entries]
            write_text(work / "table.csv", csv_text(summaries))
            write_text(work / "table.md", markdown(summaries))
            write_text(work / "scorecard.csv", scorecard_frame(summaries).to_csv(index=False))
            write_json(work / "manifest.json", {
                "kind": "geoprobe-scan-models",
                "models": [{"model": e.name, "folder": f"{MODELS_DIR}/{e.label}"} for e in entries],
                "candidates": "built once and scored by every model; each model draws its own prompts",
                "options": config["options"], "domain": domain, "n": int(n),
                "sweep": {k: v for k, v in sweep.items() if k != "cells"}, "versions": versions()})
        return table_frame(summaries)
