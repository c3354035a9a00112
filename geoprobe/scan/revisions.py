"""Multi-revision scans: one model's training checkpoints scanned on the same prompts, and their trajectory.

``geoprobe scan MODEL --revisions R1 R2 ... --out DIR`` (:func:`scan_revisions`). Each revision is a hub
revision of ``MODEL`` (``step1000``), or an existing folder (a local checkpoint), given in training order; the last
one is the *final* revision. A wind-tunnel run's own checkpoints (``scan RUN --revisions 0 5 40``) are measured on
the run's held-out sequences instead of text prompts: :mod:`geoprobe.scan.tunnel_revisions`.

1. **selection** (once): the final revision scores the candidates and draws the entropy-stratified prompts, as a
   single scan would (:func:`geoprobe.scan.driver.preselect`); saved in ``DIR/selection/`` (``prompts.jsonl``,
   ``bins.json``) and reused unchanged for every revision, so revisions differ only in their weights.
2. **revisions**: every revision is an ordinary scan folder ``DIR/revisions/<label>/`` made with those prompts
   (written complete or not at all; an interrupted one resumes its finished stages), plus its key frames
   (``key_frames.safetensors``; the final one also ``key_frames_init.safetensors``, :mod:`geoprobe.scan.key_frames`)
   written in the same commit. Revisions are jobs of an
   executor (:mod:`geoprobe.sweep.executors`): one after another here, or Ray tasks. A rerun of the same
   command skips finished revisions; more revisions can be added to a folder later (same settings and final
   revision).
3. **trajectory**: ``trajectory.csv`` (every result row of every revision, with ``revision``/``step`` columns),
   ``signatures.csv`` (the headline signatures per revision, each with its normalised excess),
   ``key_frame_overlap.csv`` (per revision, layer and key head: the overlap with the final key frame and its
   nulls), ``frame_precision.csv`` / ``frame_precision.json`` and the figures in ``report.html``.

Frame vs precision. Each signature's trajectory is measured against its own range with the settling step of
:func:`geoprobe.stats.settling_step`: the first revision after which the remaining excess
|x(s) - x(final)| stays within 10% of the initial excess |x(s_0) - x(final)| (90% of the total change covered
and kept); :func:`geoprobe.stats.normalised_excess` gives (x(s) - x(final)) / (x(s_0) - x(final)). The *frame*
signatures are the key frame and the attention pattern: the key-frame overlap (the mean over layers and key
heads of ||U_s^T U_final||_F^2 / r, the mean squared cosine of the principal angles between the rank-r key frame
of W_K at revision s and at the final revision; 1 at the final revision, r / d_model for an unrelated random
subspace, reported beside the value of a fresh initialisation), key orthogonality (early-layer and all-layer
mean |cos| of the key weights), the mean final-token attention entropy over layers and the focusing percentage.
The *precision* signatures are the value manifold (PC1 and PC1+PC2 shares, participation ratio, rho(PC1, entropy)
at the last layer) and calibration (the in-context MAE to the Bayes entropy of the SULA experiment, and
rho(PC1, H_Bayes); measured only when SULA runs). A group has settled at the latest settling step of its
signatures (signatures that do not change at all are left out); the frame-precision dissociation claim is
``precision settles after frame``. Its uncertainty (:func:`settling_order`): D = precision minus frame settling
index (in revisions) with a bootstrap over the signatures of each group (and over the layers and key heads of the
key-frame overlap) and an exact permutation test of the group labels; the claim is ``supported`` only when D > 0
and its 95% interval lies above 0.

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
from geoprobe.interrupts import finishing, reporting
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
class JobSpec:
    """What every job of the sweep shares: its ``folder``, the model to load (``source`` + hub ``revision``),
    the scan's ``domain``, ``n`` and ``options`` (picklable: paths, options, records)."""

    folder: str
    source: str
    revision: str | None
    domain: str | None
    n: int
    options: Any


@dataclass(frozen=True)
class SelectionSpec(JobSpec):
    """The selection job: score ``sets`` with the final revision and save the choice in ``folder``."""

    sets: dict[str, list[Any]]


@dataclass(frozen=True)
class RevisionSpec(JobSpec):
    """One revision's scan into ``folder`` with the saved prompts; ``final``: also save the key frames of a
    freshly initialised model (the overlap's initial-weights floor)."""

    preselected: dict[str, Any]
    progress: bool = False
    final: bool = False


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


def _frames_writer(spec: RevisionSpec) -> Any:
    from functools import partial

    from geoprobe.scan.key_frames import save_key_frames

    return partial(save_key_frames, init=spec.final, seed=int(spec.options.seed))


def has_key_frames(folder: str | Path, final: bool = False) -> bool:
    """Whether a finished revision folder holds its key frames (the final one also the initial-weights frames,
    unless its model has no config to re-initialise), or is of an attention-free model, which has none."""
    from geoprobe.scan.key_frames import FILE, INIT_FILE, file_metadata

    folder = Path(folder)
    if (folder / FILE).is_file():
        return not final or (folder / INIT_FILE).is_file() or \
            file_metadata(folder / FILE).get("init_file", "").startswith("none")
    return not json.loads((folder / "manifest.json").read_text()).get("model_info", {}).get("has_attention", True)


def revision_job(spec: RevisionSpec) -> str:
    """Scan one revision into ``spec.folder`` (resuming an interrupted one) with its key frames; a finished one
    is left as is (a finished folder from before key frames were saved gets them, from the weights alone)."""
    from geoprobe.io import pending_replacement
    from geoprobe.scan.driver import run_scan

    folder = Path(spec.folder)
    opts = replace(spec.options, revision=spec.revision)
    if is_finished_scan(folder):
        if has_key_frames(folder, spec.final):
            return "reused"
        from geoprobe.backends import load_model
        from geoprobe.scan.driver import choose_backend

        handle = load_model(spec.source, backend=choose_backend(opts)[0], device=opts.device, dtype=opts.dtype,
                            revision=opts.revision, trust_remote_code=opts.trust_remote_code)
        _frames_writer(spec)(handle, folder)
        return "key frames added"
    run_scan(spec.source, domain=spec.domain, n=spec.n, out=folder, resume=pending_replacement(folder) is not None,
             options=opts, preselected=spec.preselected, progress=spec.progress, extra_outputs=_frames_writer(spec))
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


def frame_precision(signatures: pd.DataFrame, steps: list[int], *,
                    units: dict[tuple[str, str], Any] | None = None, n_boot: int = 1000, seed: int = 0,
                    ) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Settling step of every (set, signature) trajectory, and per set when the frame and the precision
    groups have settled, with the uncertainty of their order (module docstring, :func:`settling_order`).

    ``units``: ``{(set, signature): [n_units, n_steps]}`` for signatures that are a mean over units (the
    key-frame overlap: one curve per layer and key head); their settling step gets a bootstrap interval over
    the units (``settling_index_ci_low/high``, in revisions) and the order test redraws them.
    """
    from geoprobe.stats import settling_step

    units = units or {}
    index = {s: i for i, s in enumerate(steps)}
    rows = []
    for (set_name, sig), g in signatures.groupby(["set", "signature"], sort=False):
        g = g.set_index("step").reindex(steps)
        values = g["value"].astype(float).tolist()
        complete = all(math.isfinite(v) for v in values)
        settle = settling_step(steps, values) if complete else None
        ci = _unit_settling_ci(units[(set_name, sig)], n_boot, seed) if (set_name, sig) in units and complete \
            else (math.nan, math.nan)
        rows.append({"set": set_name, "group": g["group"].dropna().iloc[0], "signature": sig,
                     "first": values[0], "final": values[-1], "total_change": values[-1] - values[0],
                     "settling_step": settle, "settling_index": None if settle is None else index[settle],
                     "settling_index_ci_low": ci[0], "settling_index_ci_high": ci[1],
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
        settled = t[t["settling_index"].notna()]
        order = settling_order(
            [(r["group"], int(r["settling_index"]), units.get((set_name, r["signature"])))
             for r in settled.to_dict("records")], n_boot=n_boot, seed=seed)
        out["settling_order"] = order
        out["precision_settles_after_frame_supported"] = order["supported"]
        summary[set_name] = out
    return table, summary


def _settle_index(curve: Any) -> int | None:
    from geoprobe.stats import settling_step

    values = [float(x) for x in curve]
    return settling_step(list(range(len(values))), values)


def _unit_settling_ci(curves: Any, n_boot: int, seed: int) -> tuple[float, float]:
    """95% percentile interval of the settling index of the mean curve, bootstrapping the units (rows)."""
    import torch

    from geoprobe.stats import make_generator, percentile_interval

    c = torch.as_tensor(curves, dtype=torch.float64)
    gen = make_generator(seed)
    draws = []
    for _ in range(n_boot):
        s = _settle_index(c[torch.randint(0, c.shape[0], (c.shape[0],), generator=gen)].mean(0))
        draws.append(math.nan if s is None else float(s))
    return percentile_interval(torch.tensor(draws, dtype=torch.float64)) if draws else (math.nan, math.nan)


#: above this many relabellings the permutation test draws ``n_boot`` of them at random instead of all
MAX_EXACT_PERMUTATIONS = 20_000


def settling_order(items: list[tuple[str, int, Any]], *, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """How sure is "precision settles after the frame"? ``items``: (group, settling index, unit curves or None)
    per changing signature of one set.

    Statistic: D = (latest settling index of the precision signatures) - (latest of the frame signatures), in
    revisions (> 0: precision settles after the frame, the point claim).

    - bootstrap: resample the signatures of each group with replacement (a signature with unit curves is
      also redrawn over its units: its settling index recomputed from the resampled mean curve); ``ci`` = the
      95% percentile interval of D, ``p_not_after`` = the fraction of resamples with D <= 0;
    - permutation: reassign the group labels (same group sizes) in every possible way (at most
      ``MAX_EXACT_PERMUTATIONS``, else ``n_boot`` random ones); ``permutation_p`` = the fraction of labellings
      with D >= the observed D (the observed one included), small when the latest-settling signatures are
      precision ones more than chance would make them.

    ``supported`` = D > 0 and the CI lies above 0; None when a group has no changing signature.
    """
    import itertools

    import torch

    from geoprobe.stats import make_generator, percentile_interval

    groups = [g for g, _, _ in items]
    idx = [int(i) for _, i, _ in items]
    n_f, n_p = groups.count(FRAME), groups.count(PRECISION)
    base = {"statistic": "latest precision settling index - latest frame settling index (revisions)",
            "n_frame_signatures": n_f, "n_precision_signatures": n_p, "n_boot": n_boot, "seed": seed}
    if n_f == 0 or n_p == 0:
        return {**base, "index_difference": None, "ci": [None, None], "p_not_after": None,
                "permutation_p": None, "n_permutations": 0, "exact_permutation": None, "supported": None}
    fr = [k for k, g in enumerate(groups) if g == FRAME]
    pr = [k for k, g in enumerate(groups) if g == PRECISION]
    observed = max(idx[k] for k in pr) - max(idx[k] for k in fr)
    gen = make_generator(seed)
    curves = [None if c is None else torch.as_tensor(c, dtype=torch.float64) for _, _, c in items]

    def redraw(k: int) -> int | None:
        c = curves[k]
        if c is None:
            return idx[k]
        return _settle_index(c[torch.randint(0, c.shape[0], (c.shape[0],), generator=gen)].mean(0))

    diffs = []
    for _ in range(n_boot):
        f = [redraw(fr[int(j)]) for j in torch.randint(0, n_f, (n_f,), generator=gen)]
        p = [redraw(pr[int(j)]) for j in torch.randint(0, n_p, (n_p,), generator=gen)]
        f, p = [x for x in f if x is not None], [x for x in p if x is not None]
        diffs.append(float(max(p) - max(f)) if f and p else math.nan)
    d = torch.tensor(diffs, dtype=torch.float64)
    lo, hi = percentile_interval(d) if n_boot > 0 else (math.nan, math.nan)
    fin = d[torch.isfinite(d)]
    p_not = float((fin <= 0).double().mean()) if fin.numel() else math.nan

    n = len(items)
    exact = math.comb(n, n_p) <= MAX_EXACT_PERMUTATIONS
    if exact:
        labellings = [set(c) for c in itertools.combinations(range(n), n_p)]
    else:
        labellings = [set(torch.randperm(n, generator=gen)[:n_p].tolist()) for _ in range(n_boot)]
    hits = sum(max(idx[k] for k in lab) - max(idx[k] for k in range(n) if k not in lab) >= observed
               for lab in labellings)
    perm_p = (hits / len(labellings)) if exact else (hits + 1) / (len(labellings) + 1)
    ci = [x if math.isfinite(x) else None for x in (lo, hi)]
    return {**base, "index_difference": int(observed), "ci": ci,
            "p_not_after": p_not if math.isfinite(p_not) else None,
            "permutation_p": perm_p, "n_permutations": len(labellings), "exact_permutation": exact,
            "supported": bool(observed > 0 and math.isfinite(lo) and lo > 0)}


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
    """One panel per prompt set: each signature's normalised excess per step (frame solid, precision dashed; one
    colour per signature in every panel) and the +-0.1 settling band."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from geoprobe.plots import _PALETTE

    sets = list(dict.fromkeys(signatures["set"]))
    fig = make_subplots(rows=1, cols=max(1, len(sets)), shared_yaxes=True, horizontal_spacing=0.06,
                        subplot_titles=[f"{s} prompts" for s in sets])
    colours = {sig: _PALETTE[i % len(_PALETTE)] for i, sig in enumerate(dict.fromkeys(signatures["signature"]))}
    for col, set_name in enumerate(sets, start=1):
        for sig, g in signatures[signatures["set"] == set_name].groupby("signature", sort=False):
            if g["normalised_excess"].isna().all():
                continue
            group = g["group"].iloc[0]
            fig.add_trace(go.Scatter(x=g["step"], y=g["normalised_excess"], mode="lines+markers",
                                     name=f"{group}: {str(sig).replace('_', ' ')}", legendgroup=str(sig),
                                     showlegend=col == 1, line={"color": colours[sig],
                                                                "dash": "solid" if group == FRAME else "dash"}),
                          row=1, col=col)
        fig.add_hrect(y0=-0.1, y1=0.1, fillcolor="grey", opacity=0.15, line_width=0, row=1, col=col)
    fig.update_xaxes(title=axis)
    fig.update_yaxes(title="normalised excess<br>(x(s) - x(final)) / (x(first) - x(final))", row=1, col=1)
    fig.update_layout(template="plotly_white", height=460,
                      legend={"orientation": "h", "y": -0.25, "title": {
                          "text": "grey band: settled (at most 10% of the change left)<br>", "side": "top"}})
    return fig


KEY_FRAME_SIGNATURE = "key_frame_overlap"
KEY_FRAME_FILE = "key_frame_overlap.csv"


def key_frame_trajectory(out: Path, revs: list[Revision], steps: list[int]) -> tuple[pd.DataFrame | None, str]:
    """The per (revision, layer, key head) overlap table (:func:`geoprobe.scan.key_frames.overlap_table`) from
    the key frames saved in every revision's folder, or (None, why not)."""
    from geoprobe.scan.key_frames import FILE, INIT_FILE, load_key_frames, overlap_table

    folders = [out / REVISIONS_DIR / r.label for r in revs]
    missing = [r.name for r, f in zip(revs, folders, strict=True) if not (f / FILE).is_file()]
    if missing:
        info = json.loads((folders[-1] / "manifest.json").read_text()).get("model_info", {})
        if not info.get("has_attention", True):
            return None, "an attention-free model: no key frames"
        return None, f"no key frames saved for {', '.join(missing)}"
    frames = [load_key_frames(f / FILE)[0] for f in folders]
    shapes = {tuple(f.shape) for f in frames}
    if len(shapes) > 1:
        return None, f"key frames of different shapes {sorted(shapes)}: the revisions are not one architecture"
    init = load_key_frames(folders[-1] / INIT_FILE)[0] if (folders[-1] / INIT_FILE).is_file() else None
    return overlap_table(frames, [r.name for r in revs], steps, init), "saved key frames"


def key_frame_signature_rows(table: pd.DataFrame, sets: list[str], n_boot: int = 1000, seed: int = 0
                             ) -> list[dict[str, Any]]:
    """One ``key_frame_overlap`` signature row per (set, revision): the mean overlap over layers and key heads
    with a percentile-bootstrap CI over those units. The weights do not depend on the prompts, so every set
    gets the same values (its frame group includes them)."""
    import torch

    from geoprobe.stats import bootstrap_ci

    rows = []
    for (name, step), g in table.groupby(["revision", "step"], sort=False):
        v = g["overlap"].to_numpy(dtype=float)
        ci = bootstrap_ci(torch.tensor(v), n_boot=n_boot, seed=seed) if len(v) > 1 and n_boot > 0 else None
        for set_name in sets:
            rows.append({"revision": name, "step": step, "set": set_name, "group": FRAME,
                         "signature": KEY_FRAME_SIGNATURE, "value": float(v.mean()),
                         "ci_low": None if ci is None else ci.low, "ci_high": None if ci is None else ci.high})
    return rows


def _layer_settling(table: pd.DataFrame, steps: list[int]) -> list[dict[str, Any]]:
    """Per layer: the overlap with the final frame (mean over key heads) per revision and its settling step."""
    from geoprobe.stats import settling_step

    wide = table.groupby(["layer", "step"])["overlap"].mean().unstack("step")[steps]
    return [{"layer": int(layer), "overlap": [float(x) for x in row], "settling_step": settling_step(steps, row.tolist())}
            for layer, row in wide.iterrows()]


def _key_frame_figure(table: pd.DataFrame, axis: str) -> Any:
    import plotly.graph_objects as go

    fig = go.Figure()
    for layer, g in table.groupby("layer"):
        m = g.groupby("step", sort=True)["overlap"].mean()
        fig.add_trace(go.Scatter(x=m.index.tolist(), y=m.tolist(), mode="lines+markers", name=f"layer {layer}"))
    r, d = int(table["rank"].iloc[0]), int(table["d_model"].iloc[0])
    fig.add_hline(y=r / d, line_dash="dot", annotation_text=f"random subspaces: r/d = {r}/{d} = {r / d:.3f}")
    if table["init_overlap"].notna().all():
        init = float(table["init_overlap"].mean())
        fig.add_hline(y=init, line_dash="dash", annotation_text=f"fresh initialisation: {init:.3f}",
                      annotation_position="bottom right")
    fig.update_layout(xaxis_title=axis, yaxis_title="overlap with the final key frame, mean over key heads",
                      yaxis_range=[0, 1.05], template="plotly_white")
    return fig


def _settling_figure(table: pd.DataFrame, summary: dict[str, Any], axis_steps: list[int]) -> Any:
    """Settling index per signature (error bars: bootstrap over layers and key heads), one row per set, with
    each set's order test in its label."""
    import plotly.graph_objects as go

    fig = go.Figure()
    t = table[table["settling_index"].notna()]
    for group, symbol in ((FRAME, "circle"), (PRECISION, "diamond")):
        g = t[t["group"] == group]
        if g.empty:
            continue
        lo = (g["settling_index"] - g["settling_index_ci_low"]).fillna(0).tolist()
        hi = (g["settling_index_ci_high"] - g["settling_index"]).fillna(0).tolist()
        fig.add_trace(go.Scatter(x=g["settling_index"].tolist(), y=[f"{a}: {b}" for a, b in zip(g["set"],
                                 g["signature"], strict=True)], mode="markers", name=group,
                                 marker={"symbol": symbol, "size": 10},
                                 error_x={"type": "data", "symmetric": False, "array": hi, "arrayminus": lo}))
    lines = []
    for set_name, s in summary.items():
        o = s["settling_order"]
        if o["index_difference"] is None:
            continue
        lines.append(f"{set_name}: D = {o['index_difference']} (95% CI {o['ci'][0]}..{o['ci'][1]}, "
                     f"permutation p = {o['permutation_p']:.3g}): "
                     f"{'supported' if o['supported'] else 'not supported'}")
    n = len(axis_steps)
    fig.update_layout(xaxis={"title": "settles at (revision; error bars: bootstrap over layers x key heads)",
                             "tickvals": list(range(n)), "ticktext": [str(x) for x in axis_steps],
                             "range": [-0.3, n - 0.7]},
                      template="plotly_white", title={"text": "<br>".join(lines), "font": {"size": 12}},
                      margin={"t": 40 + 18 * len(lines)})
    return fig


def write_trajectory(out: Path, revs: list[Revision], steps: list[int], axis: str, *, n_boot: int = 1000,
                     seed: int = 0) -> dict[str, Any]:
    """Read every revision's saved scan and key frames and write the trajectory files (module docstring);
    returns the frame-precision summary."""
    from geoprobe.scan.key_frames import unit_curves
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
    kf, kf_why = key_frame_trajectory(out, revs, steps)
    units: dict[tuple[str, str], Any] = {}
    kf_block: dict[str, Any] = {"available": kf is not None, "source": kf_why}
    if kf is not None:
        write_text(out / KEY_FRAME_FILE, kf.to_csv(index=False))
        prompt_sets = [x for x in dict.fromkeys(r["set"] for r in sigs) if x != "sula"]
        sigs += key_frame_signature_rows(kf, prompt_sets, n_boot=n_boot, seed=seed)
        curves = unit_curves(kf, steps)
        units = {(x, KEY_FRAME_SIGNATURE): curves for x in prompt_sets}
        from geoprobe.scan.key_frames import DEFINITION

        r, d = int(kf["rank"].iloc[0]), int(kf["d_model"].iloc[0])
        kf_block.update({
            "definition": DEFINITION, "overlap": "||U_s^T U_final||_F^2 / r (mean squared cosine of the principal "
                                                 "angles), mean over layers and key heads",
            "rank": r, "d_model": d, "random_null": r / d,
            "init_overlap": None if kf["init_overlap"].isna().any() else float(kf["init_overlap"].mean()),
            "by_revision": kf.groupby("step", sort=False)["overlap"].mean().tolist(),
            "n_units": int(curves.shape[0]), "file": KEY_FRAME_FILE,
            "by_layer": _layer_settling(kf, steps)})
    signatures = _with_normalised_excess(pd.DataFrame(sigs), steps)
    write_text(out / "signatures.csv", signatures.to_csv(index=False))
    table, summary = frame_precision(signatures, steps, units=units, n_boot=n_boot, seed=seed)
    write_text(out / "frame_precision.csv", table.to_csv(index=False))
    result = {"step_axis": axis, "steps": steps, "revisions": [r.name for r in revs],
              "definition": "settling step: first revision after which |x(s) - x(final)| stays <= 0.1 x "
                            "|x(first) - x(final)| (geoprobe.stats.settling_step); a group settles at the latest "
                            "settling step of its signatures",
              "order_test": "settling_order per set: bootstrap over signatures (and over layers x key heads "
                            "for the key-frame overlap) of D = latest precision - latest frame settling index, "
                            "and an exact permutation test of the group labels; supported = D > 0 and the 95% "
                            "CI above 0 (geoprobe.scan.revisions.settling_order)",
              "key_frame": kf_block, "by_set": summary}
    write_json(out / "frame_precision.json", result)
    from geoprobe.report import Report

    figures = {"Normalised excess per signature (frame solid, precision dashed)": _figure(signatures, axis),
               "Settling step per signature and the settling-order test per set": _settling_figure(table, summary,
                                                                                                   steps)}
    if kf is not None:
        figures["Key-frame overlap with the final revision per layer (dotted: random subspaces)"] = \
            _key_frame_figure(kf, axis)
    report = Report(title=f"geoprobe multi-revision scan: {len(revs)} revisions", rows=table,
                    summary={"frame_precision": summary, "key_frame": kf_block, "step_axis": axis},
                    figures=figures)
    write_text(out / "report.html", report.to_html())
    return result


# ------------------------------------------------------------------------------------------------ the sweep


def _config(model: str, final: Revision, domain: str | None, n: int, opts: Any) -> dict[str, Any]:
    d = dataclasses.asdict(opts)
    d.pop("batch_size")
    d.pop("revision")
    return {"model": str(model), "final_revision": final.name, "domain": domain, "n": int(n), "options": d}


def revisions_interruption(exc: Any, model: str, revisions: list[str], *args: Any, out: str | Path,
                           **kwargs: Any) -> Any:
    """The one line of a multi-revision scan (:func:`scan_revisions`'s arguments) stopped by a signal: what the
    scan in progress kept, whether the selection is saved, how many revisions are finished; the same command
    continues."""
    from geoprobe.interrupts import restate

    try:
        folders = [Path(out) / REVISIONS_DIR / r.label for r in resolve_revisions(str(model), list(revisions))]
    except ConfigError:  # stopped before the revisions were checked
        folders = []
    done = sum(is_finished_scan(f) for f in folders)
    selected = "the prompt selection and " if (Path(out) / SELECTION_DIR / "bins.json").is_file() else ""
    what = exc.body if exc.continue_with == "resume" else "multi-revision scan stopped"  # a scan's own line
    return restate(exc, f"{what}; {selected}{done} of {len(folders)} revisions finished and kept in {out} "
                        "(the trajectory files are written when all are)", "same")


@reporting(revisions_interruption)
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
        reused += [r.name for r in revs if is_finished_scan(work / REVISIONS_DIR / r.label)
                   and has_key_frames(work / REVISIONS_DIR / r.label, final=r is revs[-1])]
        outcomes = []
        if sel_key not in reused:
            outcomes += ex.run([Job(sel_key, selection_job, sel_spec, device=opts.device)],
                               max_retries=max_retries, progress=sink)
        if all(o.status == "done" for o in outcomes):
            chosen = read_selection(work / SELECTION_DIR)
            jobs = [Job(r.name, revision_job,
                        RevisionSpec(str(work / REVISIONS_DIR / r.label), r.source, r.revision, domain, int(n),
                                     opts, chosen, progress=progress and executor == "local",
                                     final=r is revs[-1]),
                        device=opts.device) for r in revs if r.name not in reused]
            outcomes += ex.run(jobs, max_retries=max_retries, progress=sink)
        sweep = sweep_manifest(ex, outcomes, max_retries=max_retries, reused=reused)
        write_json(work / "sweep.json", sweep)
        raise_failures(outcomes, "jobs", rerun="rerun the same command to retry them")
        with finishing():  # the trajectory files appear together: a signal now waits
            result = write_trajectory(work, revs, steps, axis, n_boot=int(opts.n_boot), seed=int(opts.seed))
            write_json(work / "manifest.json", {
                "kind": "geoprobe-scan-revisions", "model": str(model), "final_revision": final.name,
                "revisions": [{**dataclasses.asdict(r), "folder": f"{REVISIONS_DIR}/{r.label}", "axis_step": s}
                              for r, s in zip(revs, steps, strict=True)],
                "key_frames": "key_frames.safetensors in every revision folder (rank-r key frames of W_K per layer "
                              "and key head); key_frames_init.safetensors in the final one (fresh weights, seed "
                              f"{opts.seed})",
                "step_axis": axis, "selection": "once, by the final revision's next-token entropies; saved in "
                                                f"{SELECTION_DIR}/ and reused for every revision",
                "options": config["options"], "domain": domain, "n": int(n),
                "sweep": {k: v for k, v in sweep.items() if k != "cells"}, "versions": versions()})
        return {**result, "out": str(output.final)}
