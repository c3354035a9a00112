"""Training trajectories of a wind-tunnel run: its own checkpoints scanned as revisions.

``geoprobe scan RUN --revisions 0 5 40 --out DIR`` (:func:`scan_tunnel_revisions`). ``RUN`` is a wind-tunnel run
folder (or its ``model/`` or one of its ``checkpoints/step_N`` folders); each revision is one of that run's
checkpoints: a step (``40``, ``step_40``, ``step_0000040``), ``final`` (the run's ``model/``), ``all`` (every
saved checkpoint), or a checkpoint folder ``RUN/checkpoints/step_N``. Revisions are given in training order (steps
increasing); the last one is the *final* revision, the reference of the frame statistics. Checkpoints of another
run, hub revisions or other model folders in the same list are refused in one line.
:func:`geoprobe.scan.revisions.scan_revisions` hands every call that names a wind-tunnel run here.

1. **sequences** (once): ``n`` held-out sequences of the run's task (its manifest's task config), drawn from the
   ``test`` stream of ``seed`` (never the training stream; the same draw ``geoprobe probe RUN --seed`` makes),
   saved with their exact posteriors in ``DIR/sequences/`` as ``.npy`` files (:mod:`geoprobe.tasks.batch_io`,
   never pickles) and reused unchanged for every revision.
2. **revisions**: every checkpoint is measured on those sequences into ``DIR/revisions/<label>/`` (written
   complete or not at all; a rerun skips finished revisions, and more can be added later with the same
   settings and final revision). Revisions are jobs of an executor (:mod:`geoprobe.sweep.executors`: one after
   another here, or Ray tasks). A revision folder holds the probe report of the key_orthogonality,
   attention_focusing and value_manifold probes (``summary.json``, ``results.csv``, ``report.html``),
   ``signatures.json`` and ``per_sequence.csv``.
3. **trajectory**: ``trajectory.csv``, ``signatures.csv`` (with the normalised excess),
   ``frame_precision.csv`` / ``frame_precision.json`` and ``report.html``, exactly as for text-model revisions
   (:func:`geoprobe.scan.revisions.frame_precision`).

Signatures per revision (one set, named after the task):

- *frame*: key orthogonality (the mean |cos| between hypothesis-token keys of layer 0, and its mean over
  layers; the key_orthogonality probe's default definition), the mean final-token attention entropy over layers
  and the focusing percentage (attention_focusing probe), the **key-frame overlap** with the final revision
  (:func:`geoprobe.probes.dynamics.key_frame_overlap` of the layer-0 hypothesis-key frames,
  :func:`~geoprobe.probes.dynamics.hypothesis_key_frames`: 1 = same subspace) and the **attention distance** to
  the final revision (mean over sequences, layers, heads and query rows of JS(A_c || A_final) in bits,
  :func:`~geoprobe.probes.dynamics.per_sequence_js`; 0 = same patterns);
- *precision*: the value manifold at the last layer (PC1 and PC1+PC2 shares, participation ratio and
  rho(PC1, H_Bayes) over supervised positions; value_manifold probe) and calibration against the exact
  posterior (per-sample entropy MAE and KL(Bayes || model) in bits, :func:`geoprobe.probes.common.calibration_metric`).

Besides the per-signature settling steps, ``frame_precision.json`` holds ``per_sequence_dissociation``: the
dynamics probe's statistic (:func:`geoprobe.probes.dynamics.settling_dissociation`) on the per-sequence
attention distance (frame) and per-sequence entropy MAE (precision) trajectories, with a bootstrap CI over
sequences of (precision - frame) settling index.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from geoprobe.errors import ConfigError
from geoprobe.interrupts import finishing
from geoprobe.io import atomic_dir, write_json, write_text
from geoprobe.scan.revisions import FRAME, PRECISION, REVISIONS_DIR, Revision

SEQUENCES_DIR = "sequences"
SIGNATURES_FILE = "signatures.json"
PER_SEQUENCE_FILE = "per_sequence.csv"
PROBES = ("key_orthogonality", "attention_focusing", "value_manifold")
#: rows per chunk when the attention patterns of a checkpoint and of the final one are compared
JS_CHUNK = 16
#: tunnel rows per forward pass when the scan's batch size is "auto"
AUTO_BATCH = 64

#: (group, signature, definition) in the order of signatures.csv
SIGNATURES: tuple[tuple[str, str, str], ...] = (
    (FRAME, "key_orthogonality_layer0_mean_abs_cos", "layer 0: mean |off-diagonal cos| of the key heads' keys "
                                                     "(key_orthogonality default definition)"),
    (FRAME, "key_orthogonality_mean_abs_cos", "the same, mean over layers"),
    (FRAME, "attention_entropy_mean_bits", "final-token attention entropy, mean over layers (bits)"),
    (FRAME, "focusing_percent", "100 (H_first layer - H_last layer) / H_first layer"),
    (FRAME, "key_frame_overlap_to_final", "subspace overlap of the layer-0 hypothesis-key frames with the final "
                                          "revision's, mean over key heads (1 = same subspace)"),
    (FRAME, "attention_js_to_final_bits", "JS(attention || final revision's attention), mean over sequences, "
                                          "layers, heads and query rows (bits)"),
    (PRECISION, "value_pc1_share", "PC1 share of the last layer's values at supervised positions"),
    (PRECISION, "value_pc12_share", "PC1+PC2 share of the same"),
    (PRECISION, "value_participation_ratio", "participation ratio of the same"),
    (PRECISION, "rho_pc1_h_bayes", "Spearman rho(PC1, Bayes entropy) over supervised positions"),
    (PRECISION, "calibration_entropy_mae_bits", "mean |H_model - H_Bayes| over supervised positions (bits)"),
    (PRECISION, "calibration_kl_bits", "mean KL(Bayes || model) over supervised positions (bits)"),
)


@dataclass(frozen=True)
class TunnelScanOptions:
    """The choices of a tunnel trajectory (all recorded in the manifest): ``n`` sequences of the ``test``
    stream of ``seed``, ``n_boot`` resamples per CI, the probes' ``attention_path`` and model loading."""

    n: int = 75
    seed: int = 0
    n_boot: int = 1000
    max_samples: int = 2000
    attention_path: str = "qk"
    backend: str = "torch"
    device: str = "auto"
    dtype: str = "float32"
    batch_size: int = AUTO_BATCH


# ------------------------------------------------------------------------------------------------ revisions


def _tunnel_run(path: str | Path) -> tuple[Path, int | None] | None:
    """``(RUN, step)`` when ``path`` is a wind-tunnel run folder, its ``model/`` (step None) or one of its
    checkpoints; None otherwise."""
    from geoprobe.backends.sources import run_of_folder
    from geoprobe.models.checkpoint import RUN_KIND

    p = Path(path).expanduser()
    if not p.is_dir():
        return None
    found = run_of_folder(p)
    if found is None:
        return None
    try:
        kind = json.loads((found[0] / "manifest.json").read_text()).get("kind")
    except (OSError, ValueError, AttributeError):
        return None
    return (found[0].resolve(), found[1]) if kind == RUN_KIND else None


def tunnel_run_of(target: str | Path, revisions: list[str]) -> Path | None:
    """The wind-tunnel run a ``scan TARGET --revisions ...`` call is about (TARGET or any revision is a folder of
    one), else None: the dispatch test of multi-revision scans."""
    for x in [target, *revisions]:
        found = _tunnel_run(x)
        if found is not None:
            return found[0]
    return None


def _parse_step(text: str) -> int | None:
    import re

    m = re.fullmatch(r"(?:step[_-]?)?0*(\d+)", text.strip(), re.IGNORECASE)
    return None if m is None else int(m.group(1))


def resolve_tunnel_revisions(target: str | Path, revisions: list[str]) -> tuple[Path, list[Revision]]:
    """``(RUN, revisions)`` for ``scan TARGET --revisions ...`` on a wind-tunnel run (module docstring); every
    problem is one :class:`~geoprobe.errors.ConfigError` line."""
    from geoprobe.models.checkpoint import checkpoint_dir, list_checkpoints, read_manifest

    if not revisions:
        raise ConfigError("--revisions needs at least one revision")
    run = tunnel_run_of(target, revisions)
    if run is None:
        raise ConfigError(f"neither {target} nor any revision is a wind-tunnel run folder or checkpoint")
    t = _tunnel_run(target)
    if t is not None and t[0] != run:
        raise ConfigError(f"--revisions mixes checkpoints of two different runs: {t[0]} (TARGET) and {run}; "
                          "scan one run's checkpoints at a time")
    if t is None:
        raise ConfigError(f"TARGET {target} is not the wind-tunnel run of the checkpoints in --revisions; give the "
                          f"run folder {run} as TARGET (hub revisions and wind-tunnel checkpoints cannot be mixed)")
    manifest = read_manifest(run)
    saved = list_checkpoints(run)
    steps_text = ", ".join(str(s) for s, _ in saved) or "none"
    def entries(r: str) -> list[tuple[str, bool, int | None]]:
        """(name, is the final model, checkpoint step) of one --revisions entry."""
        if r == "all":
            if not saved:
                raise ConfigError(f"run {run} has no saved checkpoints (checkpoints/step_N)")
            return [(f"step_{s}", False, s) for s, _ in saved]
        if r in ("final", "model"):
            return [(r, True, None)]
        step = _parse_step(r) if "/" not in r else None  # step names of the run come before folders
        if step is not None:
            if not checkpoint_dir(run, step).is_dir():
                raise ConfigError(f"run {run} has no checkpoint at step {step}; saved steps: {steps_text}")
            return [(r, False, step)]
        p = Path(r).expanduser()
        if p.exists():
            found = _tunnel_run(p)
            if found is None:
                raise ConfigError(f"revision {r} is not a checkpoint of wind-tunnel run {run} (hub revisions, "
                                  "other model folders and wind-tunnel checkpoints cannot be mixed)")
            if found[0] != run:
                raise ConfigError(f"--revisions mixes checkpoints of two different runs: {run} and {found[0]}; "
                                  "scan one run's checkpoints at a time")
            if found[1] is None and p.resolve() == run:
                raise ConfigError(f"revision {r} is the run folder itself; give a checkpoint (step_N) or 'final' "
                                  "(its model/ folder)")
            return [(r, found[1] is None, found[1])]
        if r.startswith(("/", "./", "../", "~")):
            raise ConfigError(f"revision {r}: no such checkpoint folder")
        raise ConfigError(f"revision {r} is not a checkpoint of wind-tunnel run {run}: give steps ({steps_text}), "
                          "'all', 'final' or checkpoint folders (hub revisions and wind-tunnel checkpoints cannot be "
                          "mixed)")

    out: list[Revision] = []
    for r in revisions:
        for name, final, step in entries(r):
            if final:
                folder = run / "model"
                if manifest.get("status") != "finished" or manifest.get("step") is None or not folder.is_dir():
                    raise ConfigError(f"run {run} has no finished final model; give checkpoint steps "
                                      f"({steps_text})")
                step, label = int(manifest["step"]), "final"
            else:
                folder, label = checkpoint_dir(run, step), checkpoint_dir(run, step).name
            out.append(Revision(name, str(folder), None, label, int(step)))
    labels = [r.label for r in out]
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise ConfigError(f"--revisions lists {', '.join(dup)} more than once")
    steps = [r.step for r in out]
    if any(b <= a for a, b in zip(steps, steps[1:], strict=False)):
        raise ConfigError(f"--revisions must be in training order (increasing steps), got steps {steps}")
    return run, out


# ------------------------------------------------------------------------------------------------ jobs


@dataclass(frozen=True)
class SequencesSpec:
    """The sequences job: draw ``options.n`` test sequences of ``run``'s task and save them in ``folder``."""

    folder: str
    run: str
    options: TunnelScanOptions


@dataclass(frozen=True)
class TunnelRevisionSpec:
    """One checkpoint measured on the saved ``sequences`` into ``folder``, against the ``final`` checkpoint."""

    folder: str
    checkpoint: str
    final: str
    sequences: str
    options: TunnelScanOptions


def sequences_job(spec: SequencesSpec) -> str:
    """Draw and save the sequences unless ``spec.folder`` holds them (complete or not at all)."""
    from geoprobe.models.checkpoint import read_manifest, task_from_manifest
    from geoprobe.tasks.base import make_generator
    from geoprobe.tasks.batch_io import INDEX, save_batch

    folder = Path(spec.folder)
    if (folder / INDEX).is_file():
        return "reused"
    manifest = read_manifest(spec.run)
    task = task_from_manifest(manifest)
    if task.n_features:
        raise ConfigError(f"task {task.name!r} feeds continuous features through an input projection, which the "
                          "probe backends do not pass yet; its checkpoints cannot be scanned")
    o = spec.options
    batch = task.sample(o.n, make_generator(o.seed, "test"))
    meta = {"task": task.name, "config": task.config(), "n": o.n, "seed": o.seed, "stream": "test",
            "run": spec.run, "drawn_by": "task.sample(n, make_generator(seed, 'test')), as geoprobe probe RUN"}
    atomic_dir(folder, lambda tmp: save_batch(tmp, batch, meta))
    return "drawn"


def _target(checkpoint: str, batch: Any, o: TunnelScanOptions) -> Any:
    from geoprobe.probes.targets import tunnel_target

    return tunnel_target(checkpoint, batch=batch, seed=o.seed, backend=o.backend, device=o.device, dtype=o.dtype,
                         batch_size=o.batch_size)


def _rows(t: Any, start: int, stop: int) -> Any:
    return dataclasses.replace(t, tokens=t.tokens[start:stop], attention_mask=t.attention_mask[start:stop],
                               final_entropy=t.final_entropy[start:stop], batch=t.batch.slice(start, stop))


def attention_js_to_reference(t: Any, reference: Any) -> Any:
    """Per sequence of target ``t``: JS between its attention and ``reference``'s (a handle of the same
    architecture) on the same rows, mean over layers, heads and query rows (bits), ``[n]``; computed
    ``JS_CHUNK`` rows at a time so that only a chunk's patterns are held."""
    import torch

    from geoprobe.probes.dynamics import attention_patterns, per_sequence_js

    out = []
    for start in range(0, t.n, JS_CHUNK):
        a = _rows(t, start, min(start + JS_CHUNK, t.n))
        b = dataclasses.replace(a, handle=reference)
        out.append(per_sequence_js(attention_patterns(a), attention_patterns(b), a.attention_mask.bool()))
    return torch.cat(out)


def _mean(xs: Any) -> float | None:
    v = [float(x) for x in xs if x is not None and math.isfinite(float(x))]
    return sum(v) / len(v) if v else None


def _row(rows: pd.DataFrame, probe: str, statistic: str, layer: Any = None) -> tuple[float, Any, Any]:
    r = rows[(rows["probe"] == probe) & (rows["statistic"] == statistic)]
    r = r[r["layer"] == layer] if layer is not None else r
    if len(r) != 1:
        raise RuntimeError(f"{probe}/{statistic} (layer {layer}): expected one row, found {len(r)}")
    x = r.iloc[0]
    ci = (x["ci_low"], x["ci_high"])
    return float(x["value"]), *(None if pd.isna(c) else float(c) for c in ci)


def revision_signatures(report: Any, calibration: dict[str, float], overlap: float, js: float
                        ) -> dict[str, tuple[float | None, float | None, float | None]]:
    """``{signature: (value, ci_low, ci_high)}`` of one checkpoint (module docstring) from its probe report,
    its calibration, key-frame overlap and mean attention distance to the final checkpoint."""
    s, rows = report.summary, report.rows
    ko, af, vm = s["key_orthogonality"], s["attention_focusing"], s["value_manifold"]
    layer_list = ko[f"{ko['default_definition'].replace('-', '_')}_layer_mean_abs_cos"]
    ent = rows[(rows["probe"] == "attention_focusing") & (rows["statistic"] == "attention_entropy_bits")
               & rows["head"].isna()]
    ci0 = ko.get("layer0_ci") or [None, None]
    fci = af.get("ci") or [None, None]
    last = vm["layer"]
    return {
        "key_orthogonality_layer0_mean_abs_cos": (ko["layer0_mean_abs_cos"], ci0[0], ci0[1]),
        "key_orthogonality_mean_abs_cos": (_mean(layer_list), None, None),
        "attention_entropy_mean_bits": (_mean(ent["value"].tolist()), None, None),
        "focusing_percent": (af["focusing_percent"], fci[0], fci[1]),
        "key_frame_overlap_to_final": (overlap, None, None),
        "attention_js_to_final_bits": (js, None, None),
        "value_pc1_share": _row(rows, "value_manifold", "pc1_share", last),
        "value_pc12_share": _row(rows, "value_manifold", "pc12_share", last),
        "value_participation_ratio": _row(rows, "value_manifold", "participation_ratio", last),
        "rho_pc1_h_bayes": _row(rows, "value_manifold", "spearman_rho_pc1_entropy", last),
        "calibration_entropy_mae_bits": (calibration["entropy_mae_bits"], None, None),
        "calibration_kl_bits": (calibration["kl_bits"], None, None),
    }


def is_finished_revision(folder: str | Path) -> bool:
    folder = Path(folder)
    return (folder / SIGNATURES_FILE).is_file() and (folder / "summary.json").is_file()


def tunnel_revision_job(spec: TunnelRevisionSpec) -> str:
    """Measure one checkpoint (module docstring) into ``spec.folder``, written complete or not at all; a finished
    one is left as is."""
    from geoprobe.backends import load_model
    from geoprobe.probes.common import calibration_metric
    from geoprobe.probes.contract import ProbeOptions
    from geoprobe.probes.dynamics import hypothesis_key_frames, key_frame_overlap, per_sequence_entropy_mae
    from geoprobe.probes.suite import run_probes
    from geoprobe.tasks.batch_io import load_batch

    folder = Path(spec.folder)
    if is_finished_revision(folder):
        return "reused"
    o = spec.options
    batch = load_batch(spec.sequences)
    t = _target(spec.checkpoint, batch, o)
    if not t.handle.info.has_attention:
        raise ConfigError(f"{spec.checkpoint} has no attention (arch {t.manifest.get('arch')}): the frame "
                          "signatures (key frame, attention patterns) need an attention model")
    same = Path(spec.final).resolve() == Path(spec.checkpoint).resolve()
    ref = t.handle if same else load_model(spec.final, backend=o.backend, device=o.device, dtype=o.dtype)
    opts = ProbeOptions(n_boot=o.n_boot, seed=o.seed, max_samples=o.max_samples, attention_path=o.attention_path)
    report = run_probes(t, list(PROBES), opts)
    calib = calibration_metric(t)
    mae_seq = per_sequence_entropy_mae(t)
    js_seq = attention_js_to_reference(t, ref)
    overlap = key_frame_overlap(hypothesis_key_frames(t.handle, t.hypothesis_ids),
                                hypothesis_key_frames(ref, t.hypothesis_ids))
    sigs = revision_signatures(report, calib, overlap, float(js_seq.mean()))
    per_seq = pd.DataFrame({"sequence": range(t.n), "entropy_mae_bits": mae_seq.tolist(),
                            "attention_js_to_final_bits": js_seq.tolist()})
    record = {"checkpoint": spec.checkpoint, "final": spec.final, "task": t.task.name,
              "signatures": [{"group": g, "signature": name, "value": sigs[name][0], "ci_low": sigs[name][1],
                              "ci_high": sigs[name][2], "definition": d} for g, name, d in SIGNATURES],
              "calibration": calib, "n_sequences": t.n}

    def write(tmp: Path) -> None:
        report.save(tmp)
        write_text(tmp / PER_SEQUENCE_FILE, per_seq.to_csv(index=False))
        write_json(tmp / SIGNATURES_FILE, record)

    atomic_dir(folder, write)
    return "measured"


# ------------------------------------------------------------------------------------------------ trajectory


def write_tunnel_trajectory(out: Path, revs: list[Revision], *, set_name: str, n_boot: int = 1000,
                            seed: int = 0) -> dict[str, Any]:
    """Read every revision folder and write the trajectory files (module docstring); returns the
    frame-precision summary (also in ``frame_precision.json``)."""
    import torch

    from geoprobe.probes.dynamics import settling_dissociation
    from geoprobe.report import Report
    from geoprobe.scan.revisions import _figure, _with_normalised_excess, frame_precision

    steps = [int(r.step) for r in revs]
    axis = "training step (the checkpoints' steps)"
    every, sigs, js, mae = [], [], [], []
    for rev, step in zip(revs, steps, strict=True):
        folder = out / REVISIONS_DIR / rev.label
        rows = pd.read_csv(folder / "results.csv")
        rows.insert(0, "step", step)
        rows.insert(0, "revision", rev.name)
        every.append(rows)
        for s in json.loads((folder / SIGNATURES_FILE).read_text())["signatures"]:
            sigs.append({"revision": rev.name, "step": step, "set": set_name, "group": s["group"],
                         "signature": s["signature"], "value": s["value"], "ci_low": s["ci_low"],
                         "ci_high": s["ci_high"]})
        per = pd.read_csv(folder / PER_SEQUENCE_FILE)
        js.append(per["attention_js_to_final_bits"].tolist())
        mae.append(per["entropy_mae_bits"].tolist())
    write_text(out / "trajectory.csv", pd.concat(every, ignore_index=True).to_csv(index=False))
    signatures = _with_normalised_excess(pd.DataFrame(sigs), steps)
    write_text(out / "signatures.csv", signatures.to_csv(index=False))
    table, summary = frame_precision(signatures, steps, n_boot=n_boot, seed=seed)
    write_text(out / "frame_precision.csv", table.to_csv(index=False))
    diss = None
    if len(steps) >= 2:
        diss = settling_dissociation(steps, torch.tensor(js, dtype=torch.float64).T,
                                     torch.tensor(mae, dtype=torch.float64).T, n_boot=n_boot, seed=seed)
        diss = {**diss, "frame": "per-sequence attention JS to the final revision (bits)",
                "precision": "per-sequence entropy MAE against the exact posterior (bits)"}
    result = {"step_axis": axis, "steps": steps, "revisions": [r.name for r in revs],
              "definition": "settling step: first revision after which |x(s) - x(final)| stays <= 0.1 x "
                            "|x(first) - x(final)| (geoprobe.stats.settling_step); a group settles at the latest "
                            "settling step of its signatures",
              "signatures": {name: {"group": g, "definition": d} for g, name, d in SIGNATURES},
              "by_set": summary, "per_sequence_dissociation": diss}
    write_json(out / "frame_precision.json", result)
    report = Report(title=f"geoprobe wind-tunnel trajectory: {len(revs)} checkpoints", rows=table,
                    summary={"frame_precision": summary, "per_sequence_dissociation": diss, "step_axis": axis},
                    figures={"Normalised excess per signature (frame solid, precision dashed)":
                             _figure(signatures, axis)})
    write_text(out / "report.html", report.to_html())
    return result


# ------------------------------------------------------------------------------------------------ the sweep


def scan_tunnel_revisions(target: str | Path, revisions: list[str], *, out: str | Path,
                          options: TunnelScanOptions | None = None, executor: str = "local",
                          ray_address: str | None = None, max_retries: int = 2, progress: bool = False
                          ) -> dict[str, Any]:
    """Measure every checkpoint on the same saved sequences and write the trajectory (module docstring).

    Returns the frame-precision summary (also in ``frame_precision.json``) with ``out``. Failed revisions
    (after ``max_retries`` more attempts each) are reported as one error once the others are finished;
    ``sweep.json`` lists every job with its status and attempts.
    """
    from geoprobe.io import check_output, open_output
    from geoprobe.models.checkpoint import read_manifest, versions
    from geoprobe.sweep.executors import (
        Job,
        check_executor,
        make_executor,
        raise_failures,
        require_ray,
        stderr_progress,
        sweep_manifest,
    )

    o = options or TunnelScanOptions()
    check_executor(executor, ray_address)
    run, revs = resolve_tunnel_revisions(target, list(revisions))
    manifest = read_manifest(run)
    _check_attention(run, revs[-1].source, manifest)
    if executor == "ray":
        require_ray()
    final = revs[-1]
    config = {"run": str(run), "final_revision": final.label,
              "options": {k: v for k, v in dataclasses.asdict(o).items() if k != "batch_size"}}
    check_output(out, inputs=[run], accumulate=True)  # before connecting to a cluster
    with make_executor(executor, ray_address=ray_address) as ex, \
            open_output(out, kind="scan-revisions", inputs=[run], accumulate=True) as output:
        work = output.work
        cfg_path = work / "sweep_config.json"
        started = (work / SEQUENCES_DIR).exists() or (work / REVISIONS_DIR).exists()
        if cfg_path.is_file() and started:
            old = json.loads(cfg_path.read_text())
            new = json.loads(json.dumps(config))
            if old != new:
                diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
                if "options" in diff:
                    diff = [k for k in diff if k != "options"] + sorted(
                        k for k in set(old.get("options", {})) | set(new["options"])
                        if old.get("options", {}).get(k) != new["options"].get(k))
                raise ConfigError(f"{out} holds revisions scanned with different settings ({', '.join(diff)}); "
                                  "rerun with the same settings and final revision, or choose another --out")
        else:
            write_json(cfg_path, config)
        sink = stderr_progress if progress else None
        seq_key = f"sequences (n={o.n}, seed={o.seed})"
        from geoprobe.tasks.batch_io import INDEX

        reused = [seq_key] if (work / SEQUENCES_DIR / INDEX).is_file() else []
        reused += [r.name for r in revs if is_finished_revision(work / REVISIONS_DIR / r.label)]
        outcomes = []
        if seq_key not in reused:
            outcomes += ex.run([Job(seq_key, sequences_job, SequencesSpec(str(work / SEQUENCES_DIR), str(run), o),
                                    device="cpu")], max_retries=max_retries, progress=sink)
        if all(x.status == "done" for x in outcomes):
            jobs = [Job(r.name, tunnel_revision_job,
                        TunnelRevisionSpec(str(work / REVISIONS_DIR / r.label), r.source, final.source,
                                           str(work / SEQUENCES_DIR), o), device=o.device)
                    for r in revs if r.name not in reused]
            outcomes += ex.run(jobs, max_retries=max_retries, progress=sink)
        sweep = sweep_manifest(ex, outcomes, max_retries=max_retries, reused=reused)
        write_json(work / "sweep.json", sweep)
        raise_failures(outcomes, "jobs", rerun="rerun the same command to retry them")
        with finishing():  # the trajectory files appear together: a signal now waits
            result = write_tunnel_trajectory(work, revs, set_name=manifest["task"]["name"], n_boot=o.n_boot,
                                             seed=o.seed)
            write_json(work / "manifest.json", {
                "kind": "geoprobe-scan-revisions", "model": str(run), "tunnel": True, "final_revision": final.name,
                "task": manifest["task"], "arch": manifest.get("arch"),
                "revisions": [{**dataclasses.asdict(r), "folder": f"{REVISIONS_DIR}/{r.label}"} for r in revs],
                "step_axis": result["step_axis"],
                "sequences": f"{o.n} sequences of the run's task, test stream of seed {o.seed}, drawn once and saved "
                             f"in {SEQUENCES_DIR}/ (.npy); reused for every revision",
                "probes": list(PROBES), "options": dataclasses.asdict(o),
                "sweep": {k: v for k, v in sweep.items() if k != "cells"}, "versions": versions()})
        return {**result, "out": str(output.final)}


def _check_attention(run: Path, folder: str, manifest: dict[str, Any]) -> None:
    """One line, before anything is written, when the run's model has no attention (e.g. Mamba)."""
    from transformers import AutoConfig

    from geoprobe.backends.info import info_from_hf_config

    try:
        info = info_from_hf_config(AutoConfig.from_pretrained(folder), source=folder)
    except Exception:  # noqa: BLE001 - an unreadable checkpoint is reported by its job, with the loader's message
        return
    if not info.has_attention:
        raise ConfigError(f"run {run} (arch {manifest.get('arch')}) has no attention: the frame signatures (key "
                          "frame, attention patterns) need an attention model (arch transformer or "
                          "transformer-rope)")


def options_from_scan(opts: Any, *, domain: str | None = None) -> TunnelScanOptions:
    """The tunnel options of a text-model :class:`~geoprobe.scan.driver.ScanOptions`; options that pick or cut
    text prompts, or load hub models, do not apply to a run's checkpoints and are refused (one line each)."""
    given = {"--domain": domain, "--prompts": opts.prompts, "--dataset": opts.dataset,
             "--max-tokens": opts.max_tokens, "--revision": opts.revision, "--device-map": opts.device_map}
    bad = [k for k, v in given.items() if v is not None]
    if bad:
        raise ConfigError(f"{', '.join(bad)} do(es) not apply to wind-tunnel checkpoints (the scan uses the run's "
                          "own held-out sequences); drop it")
    bs = AUTO_BATCH if opts.batch_size == "auto" else int(opts.batch_size)
    return TunnelScanOptions(n=int(opts.n), seed=int(opts.seed), n_boot=int(opts.n_boot),
                             attention_path=opts.attention_path, backend=opts.backend or "torch",
                             device=opts.device, dtype=opts.dtype or "float32", batch_size=bs)
