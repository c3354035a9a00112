"""``geoprobe scan``: Paper III's protocol on a pretrained language model, end to end.

Steps (each one a *stage*; with an output folder, every finished stage is saved in the staging folder, so an
interrupted scan continues with ``resume=True`` / ``--resume`` and skips what is done):

1. **selection** per prompt set: score every candidate of the set's pool (a few hundred) by the model's
   next-token entropy at its final token, split into ``n_bins`` entropy quantile bins (quintiles) and draw
   ``n / n_bins`` per bin with ``seed`` (:func:`geoprobe.scan.select.select_prompts`). The sets are ``mixed``
   (the built-in mixed pool, always) and ``domain`` (the domain-restricted pool of ``domain``, or the user's
   prompts from a file / dataset), measured side by side.
2. **probes** per set: the ``paper3-llm`` suite through :func:`geoprobe.probes.suite.run_probes` (one shared
   forward pass): key orthogonality (weights, random baseline sqrt(2/(pi d))), final-token attention entropy per
   layer and focusing with a bootstrap CI, query-key alignment per layer, and the value manifold (PC1,
   PC1+PC2, participation ratio, rho(PC1, entropy), CIs, isotropic null) at EVERY layer: the last layer is the
   headline (the protocol's site), the others are the layer sweep that shows where the manifold forms.
3. **sula** (optional): the in-context noisy-label experiment (:mod:`geoprobe.scan.sula`) with its three
   controls; MAE to the Bayes entropy in bits, discarded label-pair mass, and rho(PC1, H_Bayes) from the
   last-layer final-token values of the main prompts.

The verdict per set applies the suite's three criteria (value manifold PC1 or PC1+PC2 > 0.30; key
orthogonality < 0.20 in >= 50% of layers; focusing > 30%): 3/3 = ``full``, 2/3 = ``partial``, else ``none``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from geoprobe.errors import ConfigError, OutputExistsError
from geoprobe.scan.batching import BatchSizer
from geoprobe.scan.pools import build_pool, check_domain
from geoprobe.scan.pools.base import Candidate
from geoprobe.scan.records import PromptRecord, read_prompts_jsonl, write_prompts_jsonl
from geoprobe.scan.stratify import DEFAULT_BINS, check_candidate_count

SUITE = "paper3-llm"
SETS = ("mixed", "domain")
GRADES = {3: "full", 2: "partial"}
STAGE_DIR = "stages"


@dataclass
class ScanOptions:
    """Every choice a scan makes (all recorded in the manifest).

    Attributes:
        domain: the domain-restricted set (``math``, ``code``, ``prose``, ``knowledge``, ``mixed``) or None.
        n: prompts per set (``n_bins`` equal bins; default 15 x 5 = 75).
        n_bins: entropy bins (quintiles).
        pool_size: candidates drawn from each built-in pool.
        seed: seed of the pools, the selection draw, the bootstraps and the SULA prompts.
        prompts: a prompt file (text or JSONL) for the domain set, instead of a built-in pool.
        prompts_field: JSONL field of ``prompts``.
        dataset: a ``datasets`` spec ``NAME_OR_PATH[:config:split:field]`` for the domain set.
        dataset_limit: rows read from ``dataset``.
        sula: run the in-context experiment.
        sula_per_k: SULA prompts per k (k in 0, 1, 2, 4, 8).
        n_boot: bootstrap resamples of every CI.
        batch_size: rows per forward pass, or ``"auto"`` (halve on out-of-memory).
        backend, device, dtype, revision, trust_remote_code: model loading (:func:`geoprobe.backends.load_model`).
    """

    domain: str | None = None
    n: int = 75
    n_bins: int = DEFAULT_BINS
    pool_size: int = 300
    seed: int = 0
    prompts: str | None = None
    prompts_field: str | None = None
    dataset: str | None = None
    dataset_limit: int | None = None
    sula: bool = True
    sula_per_k: int = 50
    n_boot: int = 1000
    batch_size: int | str = 16
    backend: str | None = None
    device: str = "auto"
    dtype: str | None = None
    revision: str | None = None
    trust_remote_code: bool = False

    def check(self) -> None:
        """Validate the options (one line each) before anything is loaded or written."""
        if self.domain is not None:
            check_domain(self.domain)
        if self.prompts is not None and self.dataset is not None:
            raise ConfigError("give either --prompts or --dataset, not both")
        if int(self.n_bins) < 1 or int(self.n) < int(self.n_bins) or int(self.n) % int(self.n_bins):
            raise ConfigError(f"--n must be a positive multiple of {self.n_bins} (an equal number of prompts per "
                              f"entropy bin), got {self.n}")
        if self.sula and int(self.sula_per_k) < 2:
            raise ConfigError(f"SULA needs at least 2 prompts per k (the shuffled control), got {self.sula_per_k}")
        if int(self.n_boot) < 1:
            raise ConfigError(f"n_boot must be >= 1, got {self.n_boot}")
        if self.batch_size != "auto" and int(self.batch_size) < 1:
            raise ConfigError(f"batch size must be >= 1 or 'auto', got {self.batch_size}")

    @property
    def per_bin(self) -> int:
        return int(self.n) // int(self.n_bins)


@dataclass
class ScanResult:
    """A finished scan: the Report plus the prompt records (what ``prompts.jsonl`` holds)."""

    report: Any
    records: list[PromptRecord] = field(default_factory=list)
    out: Path | None = None


# ------------------------------------------------------------------------------------------------ candidates


def candidate_sets(opts: ScanOptions) -> dict[str, list[Candidate]]:
    """The candidates of each set (``mixed`` always; ``domain`` with a domain, a prompt file or a dataset)."""
    from geoprobe.scan.sources import load_dataset_prompts, read_prompt_file

    sets = {"mixed": build_pool("mixed", opts.pool_size, seed=opts.seed)}
    if opts.prompts is not None:
        sets["domain"] = read_prompt_file(opts.prompts, field=opts.prompts_field,
                                          domain=opts.domain or "custom").candidates
    elif opts.dataset is not None:
        sets["domain"] = load_dataset_prompts(opts.dataset, domain=opts.domain or "custom",
                                              limit=opts.dataset_limit).candidates
    elif opts.domain is not None and opts.domain != "mixed":
        sets["domain"] = build_pool(opts.domain, opts.pool_size, seed=opts.seed)
    for name, cands in sets.items():
        try:
            check_candidate_count(len(cands), n_per_bin=opts.per_bin, n_bins=opts.n_bins)
        except ConfigError as e:
            raise ConfigError(f"{name} set: {e}") from None
    return sets


def _fingerprint(target: str, opts: ScanOptions, sets: dict[str, list[Candidate]]) -> dict[str, Any]:
    h = hashlib.sha256()
    for name in sorted(sets):
        for c in sets[name]:
            h.update(f"{name}\x00{c.id}\x00{c.text}\x01".encode())
    d = dataclasses.asdict(opts)
    d.pop("batch_size")  # a different batch size gives the same numbers
    return {"target": target, "options": d, "candidates_sha256": h.hexdigest()}


# ------------------------------------------------------------------------------------------------ stages


class Stages:
    """Finished stages saved under ``<work>/stages`` (or kept in memory only, without an output folder)."""

    def __init__(self, work: Path | None) -> None:
        self.dir = None if work is None else work / STAGE_DIR
        self.resumed: list[str] = []

    def path(self, name: str) -> Path | None:
        return None if self.dir is None else self.dir / name

    def done(self, name: str) -> bool:
        p = self.path(name)
        return p is not None and (p / "DONE").is_file()

    def finish(self, name: str) -> None:
        p = self.path(name)
        if p is not None:
            (p / "DONE").write_text("finished\n")


def _start_stages(work: Path | None, created: bool, fingerprint: dict[str, Any]) -> Stages:
    st = Stages(work)
    if st.dir is None:
        return st
    cfg = st.dir / "config.json"
    if not created and cfg.is_file():
        old = json.loads(cfg.read_text())
        if old != json.loads(json.dumps(fingerprint)):
            diff = sorted(k for k in set(old.get("options", {})) | set(fingerprint["options"])
                          if old.get("options", {}).get(k) != fingerprint["options"].get(k))
            what = ", ".join(diff) or ("target" if old.get("target") != fingerprint["target"] else "prompts")
            raise ConfigError(f"the interrupted scan was started with different settings ({what}); rerun with "
                              "the same settings, or pass --overwrite to start again")
        return st
    st.dir.mkdir(parents=True, exist_ok=True)
    from geoprobe.io import write_json

    write_json(cfg, fingerprint)
    return st


def _selection_stage(handle: Any, name: str, cands: list[Candidate], opts: ScanOptions, sizer: BatchSizer,
                     stages: Stages) -> tuple[list[PromptRecord], list[dict[str, Any]]]:
    """Selected records (bin by bin, input order within a bin) + every candidate's record + bin summaries."""
    from geoprobe.io import write_json
    from geoprobe.scan.select import select_prompts

    key = f"selection-{name}"
    p = stages.path(key)
    if stages.done(key):
        stages.resumed.append(key)
        return read_prompts_jsonl(p / "candidates.jsonl"), json.loads((p / "bins.json").read_text())
    sel = sizer.run(lambda bs: select_prompts(handle, cands, n_per_bin=opts.per_bin, n_bins=opts.n_bins,
                                              seed=opts.seed, batch_size=bs), key)
    recs = [dataclasses.replace(r, extra={**r.extra, "set": name}) for r in sel.records]
    bins = sel.strata.summary()
    if p is not None:
        p.mkdir(parents=True, exist_ok=True)
        write_prompts_jsonl(p / "candidates.jsonl", recs)
        write_json(p / "bins.json", bins)
        stages.finish(key)
    return recs, bins


def selected_texts(records: Sequence[PromptRecord]) -> list[str]:
    """The selected prompts in selection order: bin by bin, input order within a bin."""
    chosen = [(r.quintile, i, r.text) for i, r in enumerate(records) if r.selected]
    return [t for _, _, t in sorted(chosen)]


def _probe_options(handle: Any, opts: ScanOptions, layers: Sequence[int] | None = None) -> Any:
    from geoprobe.probes.suites import load_suite

    su = load_suite(SUITE)
    n_layers = int(handle.info.n_layers)
    return su, replace(su.options, n_boot=int(opts.n_boot), seed=int(opts.seed),
                       layers=tuple(layers) if layers is not None else tuple(range(n_layers)))


def _context(handle: Any) -> int:
    return int(getattr(handle.info, "max_positions", None) or 1_000_000)


def _probe_stage(handle: Any, name: str, texts: list[str], opts: ScanOptions, sizer: BatchSizer,
                 stages: Stages) -> Any:
    from geoprobe.probes.suite import run_probes
    from geoprobe.probes.targets import llm_target
    from geoprobe.report import Report

    key = f"probes-{name}"
    p = stages.path(key)
    if stages.done(key):
        stages.resumed.append(key)
        return Report.load(p)
    su, popts = _probe_options(handle, opts)

    def go(bs: int) -> Any:
        target = llm_target(handle, prompts=texts, max_tokens=_context(handle), seed=opts.seed, batch_size=bs)
        return run_probes(target, list(su.probes), popts, suite=su)

    rep = sizer.run(go, key)
    if p is not None:
        rep.save(p)
        stages.finish(key)
    return rep


def _sula_stage(handle: Any, opts: ScanOptions, sizer: BatchSizer, stages: Stages) -> dict[str, Any]:
    from geoprobe.io import write_json
    from geoprobe.scan import sula

    key = "sula"
    p = stages.path(key)
    if stages.done(key):
        stages.resumed.append(key)
        return json.loads((p / "sula.json").read_text())
    pairs = sula.choose_label_pairs(handle.tokenizer)
    prompts = sula.all_conditions(seed=opts.seed, n_per_k=opts.sula_per_k, labels=pairs[0], remap_labels=pairs[1])
    readout = sizer.run(lambda bs: sula.read_model(handle, prompts, batch_size=bs), key)
    rows = sula.summarize(prompts, readout)
    main = [i for i, q in enumerate(prompts) if q.condition == "main"]
    by_cond = {}
    for cond in sula.CONDITIONS:
        idx = [i for i, q in enumerate(prompts) if q.condition == cond]
        hb = np.array([prompts[i].h_bayes_bits for i in idx])
        by_cond[cond] = {"mae_bits": sula.mae_bits(readout.h_model_bits[idx], hb),
                         "discarded_mass": float(readout.discarded_mass[idx].mean()), "n": len(idx)}
    rho = _sula_rho(handle, [prompts[i].text for i in main],
                    np.array([prompts[i].h_bayes_bits for i in main]), opts, sizer)
    out = {"labels": list(pairs[0]), "remap_labels": list(pairs[1]), "eps": sula.DEFAULT_EPS,
           "ks": list(sula.SULA_KS), "n_per_k": int(opts.sula_per_k), "ablation": "remove",
           "mae_bits": by_cond["main"]["mae_bits"], "discarded_mass": by_cond["main"]["discarded_mass"],
           "by_condition": by_cond, "by_condition_k": rows, **rho,
           "records": [r.to_dict() for r in sula.to_records(prompts, readout)]}
    if p is not None:
        p.mkdir(parents=True, exist_ok=True)
        write_json(p / "sula.json", out)
        stages.finish(key)
    return out


def _sula_rho(handle: Any, texts: list[str], h_bayes: np.ndarray, opts: ScanOptions, sizer: BatchSizer
              ) -> dict[str, Any]:
    """rho(PC1, H_Bayes) of the last-layer final-token values of the main SULA prompts (sign fixed >= 0)."""
    import torch

    from geoprobe.probes.suite import run_probes
    from geoprobe.probes.targets import llm_target

    if np.ptp(h_bayes) == 0:
        return {"rho_pc1_h_bayes": None, "rho_ci": None}
    su, popts = _probe_options(handle, opts, layers=[int(handle.info.n_layers) - 1])

    def go(bs: int) -> Any:
        target = llm_target(handle, prompts=texts, max_tokens=_context(handle), seed=opts.seed, batch_size=bs)
        target.final_entropy = torch.as_tensor(h_bayes, dtype=torch.float32)
        return run_probes(target, ["value_manifold"], popts, suite=su)

    s = sizer.run(go, "sula-rho").summary["value_manifold"]
    return {"rho_pc1_h_bayes": s["spearman_rho_pc1_entropy"], "rho_ci": s["rho_ci"],
            "rho_layer": s["layer"], "rho_pc1_share": s["pc1_share"]}


# ------------------------------------------------------------------------------------------------ summaries


def _num(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _row(rows: pd.DataFrame, probe: str, stat: str, layer: int | None = None) -> pd.Series | None:
    sel = rows[(rows["probe"] == probe) & (rows["statistic"] == stat)]
    if layer is not None:
        sel = sel[sel["layer"] == layer]
    return None if sel.empty else sel.iloc[-1]


def _with_ci(r: pd.Series | None, meta_keys: Sequence[str] = ()) -> dict[str, Any]:
    if r is None:
        return {"value": None, "ci": None}
    meta = r.get("meta") if isinstance(r.get("meta"), dict) else {}
    lo, hi = _num(r["ci_low"]), _num(r["ci_high"])
    out = {"value": _num(r["value"]), "ci": None if lo is None or hi is None else [lo, hi]}
    out.update({k: meta[k] for k in meta_keys if k in meta})
    return out


def layer_sweep(rows: pd.DataFrame) -> list[dict[str, Any]]:
    """PC1 and PC1+PC2 shares (with CIs and the isotropic null mean) and rho at every measured layer."""
    out = []
    vm = rows[rows["probe"] == "value_manifold"]
    for layer in sorted(int(x) for x in vm["layer"].dropna().unique()):
        pc1, pc12 = _with_ci(_row(vm, "value_manifold", "pc1_share", layer), ("null_mean",)), \
            _with_ci(_row(vm, "value_manifold", "pc12_share", layer), ("null_mean",))
        rho = _with_ci(_row(vm, "value_manifold", "spearman_rho_pc1_entropy", layer))
        pr = _row(vm, "value_manifold", "participation_ratio", layer)
        out.append({"layer": layer, "pc1_share": pc1["value"], "pc1_ci": pc1["ci"], "pc12_share": pc12["value"],
                    "pc12_ci": pc12["ci"], "null_pc1": pc1.get("null_mean"), "null_pc12": pc12.get("null_mean"),
                    "participation_ratio": None if pr is None else _num(pr["value"]), "rho": rho["value"]})
    return out


def _per_layer_mean(rows: pd.DataFrame, probe: str, stat: str) -> list[float | None]:
    sel = rows[(rows["probe"] == probe) & (rows["statistic"] == stat) & rows["layer"].notna()]
    if sel.empty:
        return []
    if sel["head"].isna().any():  # rows already averaged over heads: take those
        sel = sel[sel["head"].isna()]
    means = sel.groupby("layer")["value"].mean()
    return [_num(means.get(layer)) for layer in range(int(means.index.max()) + 1)]


def verdict_with_thresholds(probe_summary: dict[str, Any], set_summary: dict[str, Any]) -> dict[str, Any]:
    """The suite's verdict with each criterion's number, rule, threshold and the baseline beside it."""
    from geoprobe.probes.suites import load_suite

    su = load_suite(SUITE)
    v = su.verdict(probe_summary)
    if v is None:
        return {"grade": "not measured"}
    baselines = {
        "value_manifold": {"isotropic_null_pc1": set_summary["value_manifold"]["pc1_share"].get("null_mean"),
                           "isotropic_null_pc12": set_summary["value_manifold"]["pc12_share"].get("null_mean")},
        "key_orthogonality": {"random_baseline": set_summary["key_orthogonality"]["random_baseline"]},
        "attention_focusing": {"ci": set_summary["attention_focusing"]["ci"], "null": None},
    }
    passed = {**v["by_criterion"], **(v.get("calibrated") or {}).get("by_criterion", {})}
    crit = {}
    for c in su.criteria:  # the paper's criteria give the grade; null-calibrated ones are reported beside them
        d = v["details"][c.name]
        crit[c.name] = {"role": c.role, "passed": passed[c.name], "rule": d["rule"], "op": c.op,
                        "threshold": c.threshold, "min_fraction": c.min_fraction, "observed": d["observed"],
                        "baseline": baselines.get(c.probe), "nulls": d.get("nulls"), "vacuous": d.get("vacuous")}
    n = v["criteria_passed"]
    return {"grade": GRADES.get(n, "none"), "label": v["label"], "criteria_passed": n, "of": v["of"],
            "suite": v["suite"], "by_criterion": v["by_criterion"], "criteria": crit,
            "vacuous": v.get("vacuous", []), "calibrated": v.get("calibrated")}


def set_summary(rep: Any, bins: list[dict[str, Any]], name: str, domain: str | None) -> dict[str, Any]:
    """The headline numbers of one prompt set (with CIs and baselines)."""
    s, rows = rep.summary, rep.rows
    vm = s["value_manifold"]
    last = int(vm["layer"])
    ko = s["key_orthogonality"]
    per_layer_ko = list(ko.get("weights_layer_mean_abs_cos") or [])
    finite_ko = [x for x in per_layer_ko if x is not None]
    af = s["attention_focusing"]
    out = {
        "set": name, "domain": domain, "n": int(vm["n"]), "quintiles": bins,
        "value_manifold": {
            "layer": last, "site": vm.get("site"), "positions": vm.get("positions"), "d": vm.get("d"),
            "pc1_share": _with_ci(_row(rows, "value_manifold", "pc1_share", last), ("null_mean", "null_q95",
                                                                                     "share_ci")),
            "pc12_share": _with_ci(_row(rows, "value_manifold", "pc12_share", last), ("null_mean", "null_q95",
                                                                                       "share_ci")),
            "participation_ratio": _with_ci(_row(rows, "value_manifold", "participation_ratio", last),
                                            ("null_mean",)),
            "rho_pc1_entropy": _with_ci(_row(rows, "value_manifold", "spearman_rho_pc1_entropy", last),
                                        ("sign_flipped",)),
        },
        "layer_sweep": layer_sweep(rows),
        "key_orthogonality": {
            "definition": ko.get("default_definition"), "layer_mean_abs_cos": per_layer_ko,
            "fraction_of_layers_below_0.20": (sum(x < 0.20 for x in finite_ko) / len(finite_ko)) if finite_ko else None,
            "early_layers_mean_abs_cos": float(np.mean(finite_ko[:3])) if finite_ko else None,
            "random_baseline": ko.get("layer0_random_baseline"),
        },
        "attention_focusing": {
            "focusing_percent": af.get("focusing_percent"), "ci": af.get("ci"),
            "first_layer_entropy_bits": af.get("first_layer_entropy_bits"),
            "last_layer_entropy_bits": af.get("last_layer_entropy_bits"),
            "monotone_decrease": af.get("monotone_decrease"),
            "entropy_bits_by_layer": _per_layer_mean(rows, "attention_focusing", "attention_entropy_bits"),
        },
        "qk_alignment": {"mean_cos_by_layer": _per_layer_mean(rows, "qk_alignment", "mean_cos"),
                         "note": s.get("qk_alignment", {}).get("scalar")},
    }
    out["verdict"] = verdict_with_thresholds(s, out)
    return out


def _published_block(name: str, sets: dict[str, dict[str, Any]], sula_s: dict[str, Any] | None
                     ) -> dict[str, Any] | None:
    from geoprobe.scan.published import published_for

    pub = published_for(name)
    if pub is None:
        return None
    ours = {"pc12_mixed": sets["mixed"]["value_manifold"]["pc12_share"]["value"],
            "key_orthogonality_early": sets["mixed"]["key_orthogonality"]["early_layers_mean_abs_cos"],
            "focusing_percent": sets["mixed"]["attention_focusing"]["focusing_percent"],
            "rho_mixed": sets["mixed"]["value_manifold"]["rho_pc1_entropy"]["value"]}
    if "domain" in sets:
        ours["pc12_domain"] = sets["domain"]["value_manifold"]["pc12_share"]["value"]
        ours["rho_domain"] = sets["domain"]["value_manifold"]["rho_pc1_entropy"]["value"]
    if sula_s is not None:
        ours["sula_mae_bits"] = sula_s["mae_bits"]
    return {"published": pub.to_dict(), "ours": ours,
            "note": "published math values compare with the domain set only when --domain math"}


# ------------------------------------------------------------------------------------------------ report


def _sweep_figure(sets: dict[str, dict[str, Any]]) -> Any:
    import plotly.graph_objects as go

    fig = go.Figure()
    for name, s in sets.items():
        sw = s["layer_sweep"]
        x = [r["layer"] for r in sw]
        y = [r["pc12_share"] for r in sw]
        lo = [r["pc12_ci"][0] if r["pc12_ci"] else None for r in sw]
        hi = [r["pc12_ci"][1] if r["pc12_ci"] else None for r in sw]
        label = name if name == "mixed" else f"domain ({s['domain']})"
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines+markers", name=f"{label} PC1+PC2",
                                 error_y={"type": "data", "symmetric": False,
                                          "array": [None if h is None or v is None else h - v for h, v in zip(hi, y, strict=True)],
                                          "arrayminus": [None if v2 is None or v is None else v - v2
                                                         for v2, v in zip(lo, y, strict=True)]}))
        fig.add_trace(go.Scatter(x=x, y=[r["null_pc12"] for r in sw], mode="lines", line={"dash": "dot"},
                                 name=f"{label} isotropic null"))
    fig.add_hline(y=0.30, line_dash="dash", annotation_text="criterion 0.30")
    fig.update_layout(xaxis_title="layer", yaxis_title="PC1+PC2 share of final-token value variance",
                      yaxis_range=[0, 1], template="plotly_white")
    return fig


def _sula_figure(sula_s: dict[str, Any]) -> Any:
    import plotly.graph_objects as go

    fig = go.Figure()
    rows = sula_s["by_condition_k"]
    for cond in dict.fromkeys(r["condition"] for r in rows):
        rr = [r for r in rows if r["condition"] == cond]
        fig.add_trace(go.Scatter(x=[r["k"] for r in rr], y=[r["h_model_bits"] for r in rr], mode="lines+markers",
                                 name=f"{cond}: model"))
    main = [r for r in rows if r["condition"] == "main"]
    fig.add_trace(go.Scatter(x=[r["k"] for r in main], y=[r["h_bayes_bits"] for r in main], mode="lines",
                             line={"dash": "dash", "color": "black"}, name="main: Bayes"))
    fig.update_layout(xaxis_title="in-context examples k", yaxis_title="mean entropy (bits)",
                      template="plotly_white")
    return fig


def set_sentence(s: dict[str, Any]) -> str:
    """One line per set (:func:`geoprobe.report_text.scan_set_sentence`)."""
    from geoprobe.report_text import scan_set_sentence

    return scan_set_sentence(s)


def build_report(name: str, summary: dict[str, Any], reps: dict[str, Any], manifest: dict[str, Any]) -> Any:
    """The scan Report: verdict first, one sentence per set, the sweep and SULA figures, the per-set figures."""
    from geoprobe.report import Report

    rows = []
    for set_name, rep in reps.items():
        r = rep.rows.copy()
        r.insert(0, "set", set_name)
        rows.append(r)
    sula_s = summary.get("sula")
    if sula_s is not None:
        rows.append(sula_rows(sula_s))
    frame = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()
    figures = {"Layer sweep: where the value manifold forms (PC1+PC2 per layer)": _sweep_figure(summary["sets"])}
    if sula_s is not None:
        figures["In-context noisy labels (SULA): model entropy vs k, with controls"] = _sula_figure(sula_s)
    for set_name, rep in reps.items():
        tag = "mixed" if set_name == "mixed" else f"domain ({summary['domain']})"
        figures.update({f"{tag}: {t}": f for t, f in rep.figures.items()})
    first = ("verdict", "sets", "domain_verdict", "sula", "published", "predictions")
    rep_summary = {**{k: summary[k] for k in first if k in summary},
                   **{k: v for k, v in summary.items() if k not in first}}
    return Report(title=f"geoprobe scan: {name}", rows=frame, summary=rep_summary, figures=figures,
                  manifest=manifest)


def sula_rows(sula_s: dict[str, Any]) -> pd.DataFrame:
    """Tidy rows of the SULA experiment (set ``sula``; variant = condition, position = k)."""
    recs = []
    for r in sula_s["by_condition_k"]:
        for stat in ("mae_bits", "h_model_bits", "h_bayes_bits", "discarded_mass"):
            recs.append({"set": "sula", "probe": "sula", "layer": None, "head": None, "position": r["k"],
                         "statistic": stat, "value": r[stat], "ci_low": None, "ci_high": None,
                         "variant": r["condition"], "hook": None, "meta": {"n": r["n"]}})
    df = pd.DataFrame.from_records(recs)
    for c in ("layer", "head", "position"):
        df[c] = df[c].astype("Int64")
    for c in ("value", "ci_low", "ci_high"):
        df[c] = df[c].astype("float64")
    return df


# ------------------------------------------------------------------------------------------------ the scan


def scan(model: Any, domain: str | None = "math", n: int = 75, *, out: str | Path | None = None,
         resume: bool = False, overwrite: bool = False, options: ScanOptions | None = None,
         progress: bool = False, **kwargs: Any) -> Any:
    """Run the scan (module docstring) and return its :class:`~geoprobe.report.Report`.

    Args:
        model: a hub id, a local HF folder, a ``.gguf`` file, or a model already in memory (a
            :class:`~geoprobe.backends.ModelHandle`, ``TransformerBridge``, ``transformers`` model with
            ``tokenizer=``, nnsight ``LanguageModel``).
        domain: the domain-restricted set measured beside the mixed pool (None: mixed only).
        n: prompts per set (a multiple of 5).
        out: output folder; nothing is written without it. The folder appears complete or not at all; an
            existing one is replaced only with ``overwrite``; ``resume`` continues an interrupted scan there.
        options: a :class:`ScanOptions`; ``kwargs`` set its fields (e.g. ``seed=1, sula=False``) and ``tokenizer``.

    Raises:
        GeoprobeError subclasses with one line: unknown domain, too few prompts for the bins, prompts longer
        than the model's context, a model without tokenizer, a missing model or revision, an output folder
        that holds a finished scan.
    """
    return run_scan(model, domain=domain, n=n, out=out, resume=resume, overwrite=overwrite, options=options,
                    progress=progress, **kwargs).report


def run_scan(model: Any, *, domain: str | None = "math", n: int = 75, out: str | Path | None = None,
             resume: bool = False, overwrite: bool = False, options: ScanOptions | None = None,
             progress: bool = False, **kwargs: Any) -> ScanResult:
    """:func:`scan`, returning the :class:`ScanResult` (report, prompt records, output folder).

    ``preselected=`` (from :func:`preselect` with another model) skips the selection step and measures exactly
    those prompts (multi-revision scans, :mod:`geoprobe.scan.revisions`); the manifest says so.
    ``candidates=`` (``{set: candidates}`` from :func:`candidate_sets`, built once by the caller) replaces
    building the candidate pools here (multi-model scans, :mod:`geoprobe.scan.models`: every model scores the
    same candidates, also on workers that cannot rebuild them).
    """
    from geoprobe.backends import load_model
    from geoprobe.io import check_output, is_empty_output, open_output, pending_replacement, write_json
    from geoprobe.models.checkpoint import versions
    from geoprobe.scan.readout import tokenize_prompts

    t_start = time.perf_counter()

    def say(msg: str) -> None:
        if progress:
            import sys

            print(f"[{time.perf_counter() - t_start:6.1f}s] {msg}", file=sys.stderr, flush=True)

    tokenizer = kwargs.pop("tokenizer", None)
    preselected = kwargs.pop("preselected", None)  # {set: (records, bins)} chosen by another model (revisions)
    candidates = kwargs.pop("candidates", None)  # {set: candidates} built once for several models (multi-model)
    opts = replace(options or ScanOptions(), domain=domain, n=int(n), **kwargs)
    opts.check()
    sets = preselected_candidates(preselected) if preselected is not None else \
        candidates if candidates is not None else candidate_sets(opts)
    name = str(model) if isinstance(model, (str, Path)) else None
    inputs = [x for x in (name, opts.prompts) if x is not None]
    if out is not None:
        check_output(out, inputs=inputs, resume=resume, overwrite=overwrite)
        if resume and not overwrite and not is_empty_output(out) and pending_replacement(out) is None:
            raise OutputExistsError(f"{out} holds a finished scan, there is nothing to resume; pass --overwrite "
                                    "to redo it")
    if name is not None:
        from geoprobe.backends.sources import resolve_source

        resolve_source(name, revision=opts.revision)  # missing model / revision / offline: one line, nothing written
    say(f"loading {name or 'the model'}")
    t0 = time.perf_counter()
    handle = load_model(model, backend=opts.backend, device=opts.device, dtype=opts.dtype, revision=opts.revision,
                        trust_remote_code=opts.trust_remote_code,
                        **({"tokenizer": tokenizer} if tokenizer is not None else {}))
    load_s = time.perf_counter() - t0
    label = name or handle.info.source_detail.get("name") or handle.info.family
    for set_name, cands in sets.items():  # no tokenizer, empty or too long prompts: before anything is written
        try:
            tokenize_prompts(handle, [c.text for c in cands])
        except ConfigError as e:
            raise ConfigError(f"{set_name} set: {e}") from None
    output = None
    if out is not None:
        output = open_output(out, kind="scan", inputs=inputs, resume=resume, overwrite=overwrite, staged=True,
                             resumable=True)
    try:
        fingerprint = _fingerprint(str(label), opts, sets)
        if preselected is not None:
            fingerprint["preselected_sha256"] = _preselected_hash(preselected)
        stages = _start_stages(None if output is None else output.work, output is None or output.created,
                               fingerprint)
        sizer = BatchSizer(opts.batch_size)
        timings: dict[str, float] = {"load_model": round(load_s, 2)}
        records: list[PromptRecord] = []
        reps, sums = {}, {}
        domain_name = opts.domain if "domain" in sets else None
        for set_name, cands in sets.items():
            say(f"{set_name} set: scoring {len(cands)} candidates by next-token entropy")
            t0 = time.perf_counter()
            if preselected is not None:
                recs, bins = preselected[set_name]
            else:
                recs, bins = _selection_stage(handle, set_name, cands, opts, sizer, stages)
            timings[f"selection_{set_name}"] = round(time.perf_counter() - t0, 2)
            records += recs
            say(f"{set_name} set: probes on {opts.n} selected prompts")
            t0 = time.perf_counter()
            rep = _probe_stage(handle, set_name, selected_texts(recs), opts, sizer, stages)
            timings[f"probes_{set_name}"] = round(time.perf_counter() - t0, 2)
            reps[set_name] = rep
            sums[set_name] = set_summary(rep, bins, set_name,
                                         "mixed" if set_name == "mixed" else (domain_name or "custom"))
        sula_s = None
        if opts.sula:
            say(f"in-context noisy-label experiment ({opts.sula_per_k} prompts per k, 4 conditions)")
            t0 = time.perf_counter()
            sula_s = _sula_stage(handle, opts, sizer, stages)
            timings["sula"] = round(time.perf_counter() - t0, 2)
            records += [PromptRecord(**r) for r in sula_s["records"]]
        from geoprobe.scan.table import scorecard

        summary: dict[str, Any] = {
            "model": str(label), "domain": domain_name, "verdict": sums["mixed"]["verdict"],
            "domain_verdict": sums["domain"]["verdict"] if "domain" in sums else None,
            "sets": sums,
            "sula": None if sula_s is None else {k: v for k, v in sula_s.items() if k != "records"},
        }
        summary["published"] = _published_block(str(label), sums, summary["sula"])
        summary["predictions"] = scorecard(summary)
        timings["total"] = round(time.perf_counter() - t_start, 2)
        manifest = {
            "kind": "geoprobe-scan", "model": str(label), "revision": opts.revision,
            "model_info": handle.info.to_dict(), "backend": handle.backend, "device": str(handle.device),
            "dtype": str(handle.dtype), "seed": opts.seed, "batch_size": sizer.to_dict(),
            "options": {k: v for k, v in dataclasses.asdict(opts).items()},
            "choices": {
                "suite": SUITE, "sets": list(sets), "pool_size": opts.pool_size,
                "candidates": {k: len(v) for k, v in sets.items()},
                "selection": f"{opts.per_bin} per entropy bin x {opts.n_bins} bins (numpy.quantile edges), "
                             f"drawn with seed {opts.seed}",
                "entropy": "next-token entropy (bits) of the model at each prompt's final token",
                "value_manifold": "final-token value vectors, all heads concatenated (KV heads not expanded), "
                                  "standardised; PCA at every layer (layer sweep), last layer = headline",
                "prompt_truncation": "none (prompts longer than the model's context are refused)",
                **({} if preselected is None else {"preselected": PRESELECTED_NOTE}),
                "sula": None if not opts.sula else {"ks": summary["sula"]["ks"], "n_per_k": opts.sula_per_k,
                                                    "labels": summary["sula"]["labels"],
                                                    "remap_labels": summary["sula"]["remap_labels"],
                                                    "eps": summary["sula"]["eps"], "ablation": "remove"},
            },
            "resumed_stages": list(stages.resumed), "timings_s": timings, "versions": versions(),
        }
        report = build_report(str(label), summary, reps, manifest)
        result = ScanResult(report, records)
        if output is not None:
            def write(work: Path) -> None:
                report.save(work)
                write_prompts_jsonl(work / "prompts.jsonl", records)
                write_json(work / "manifest.json", manifest)
                shutil.rmtree(work / STAGE_DIR, ignore_errors=True)

            result.out = output.commit(write)
        return result
    finally:
        if output is not None:
            output.close()


# ------------------------------------------------------------------------------------------------ preselection
#: recorded in the manifest of a scan whose prompts another model chose (multi-revision scans)
PRESELECTED_NOTE = ("prompts selected once by another model's next-token entropies (the final revision of a "
                    "multi-revision scan) and reused unchanged; entropy_bits and quintile in prompts.jsonl are "
                    "that model's")


def preselected_candidates(preselected: dict[str, Any]) -> dict[str, list[Candidate]]:
    """The candidates of each preselected set, rebuilt from its records (the input-order candidate list)."""
    return {name: [Candidate(r.id, r.text, r.pool, r.domain, str(r.extra.get("template", "")),
                             str(r.extra.get("ending", ""))) for r in recs]
            for name, (recs, _bins) in preselected.items()}


def _preselected_hash(preselected: dict[str, Any]) -> str:
    h = hashlib.sha256()
    for name in sorted(preselected):
        for r in preselected[name][0]:
            h.update(f"{name}\x00{r.id}\x00{int(bool(r.selected))}\x00{r.quintile}\x01".encode())
    return h.hexdigest()


def preselect(model: Any, *, domain: str | None = "math", n: int = 75, options: ScanOptions | None = None,
              sets: dict[str, list[Candidate]] | None = None, **kwargs: Any
              ) -> dict[str, tuple[list[PromptRecord], list[dict[str, Any]]]]:
    """Selection only: ``{set: (records, bins)}`` as the scan would choose them with ``model``.

    The result is what ``run_scan(..., preselected=...)`` takes to measure another model (e.g. an earlier
    training revision) on exactly these prompts: its selection step is skipped and its records are these.
    ``sets`` gives the candidates (default: :func:`candidate_sets` of the options).
    """
    from geoprobe.backends import load_model

    tokenizer = kwargs.pop("tokenizer", None)
    opts = replace(options or ScanOptions(), domain=domain, n=int(n), **kwargs)
    opts.check()
    sets = candidate_sets(opts) if sets is None else sets
    if isinstance(model, (str, Path)):
        from geoprobe.backends.sources import resolve_source

        resolve_source(str(model), revision=opts.revision)
    handle = load_model(model, backend=opts.backend, device=opts.device, dtype=opts.dtype, revision=opts.revision,
                        trust_remote_code=opts.trust_remote_code,
                        **({"tokenizer": tokenizer} if tokenizer is not None else {}))
    sizer, stages = BatchSizer(opts.batch_size), Stages(None)
    return {name: _selection_stage(handle, name, cands, opts, sizer, stages) for name, cands in sets.items()}
