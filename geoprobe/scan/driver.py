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
4. **causal** (optional, ``--no-causal`` skips it): cut the fitted entropy axis at 25/50/75% depth (each layer
   alone and all together) against matched orthogonal random controls, every cut in the same forward passes;
   change in the downstream axis-entropy correlation and in calibration, with CIs and p-values
   (:mod:`geoprobe.scan.causal`), on the domain set (the mixed set without one).

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
from geoprobe.interrupts import reporting
from geoprobe.scan.batching import BatchSizer
from geoprobe.scan.pools import build_pool, check_domain
from geoprobe.scan.pools.base import Candidate
from geoprobe.scan.records import PromptRecord, read_prompts_jsonl, write_prompts_jsonl
from geoprobe.scan.stratify import DEFAULT_BINS, check_candidate_count

SUITE = "paper3-llm"
SETS = ("mixed", "domain")
GRADES = {3: "full", 2: "partial"}
STAGE_DIR = "stages"
#: where the scan's attention statistics come from (``ScanOptions.attention_path``)
ATTENTION_PATHS = ("qk", "pattern")


def choose_backend(opts: ScanOptions) -> tuple[str, str]:
    """The backend of a scan and why: the user's ``backend`` when given; else ``torch`` (plain forward hooks on
    the HF modules: the model keeps its SDPA/flash kernel, and every paper3-llm statistic comes from captured
    q/k/v) unless ``attention_path="pattern"`` asks for the raw eager pattern (then ``transformer_lens``)."""
    if opts.backend is not None:
        return opts.backend, "chosen by the user"
    if opts.attention_path == "pattern":
        return "transformer_lens", "the raw attention pattern was asked for (eager attention)"
    return "torch", ("the paper3-llm suite reads q/k/v only (attention statistics from post-rotary q/k), so "
                     "plain forward hooks keep the model's own attention kernel")


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
        causal: run the causal entropy-axis cut (:mod:`geoprobe.scan.causal`) on the domain set (or the mixed
            set without one).
        causal_controls: matched random control directions per cut set.
        max_tokens: cut prompts longer than this many tokens to their last ones (:mod:`geoprobe.scan.cut`;
            recorded); None: prompts are whole and an over-long one is an error.
        n_boot: bootstrap resamples of every CI.
        batch_size: rows per forward pass, or ``"auto"`` (halve on out-of-memory).
        backend, device, dtype, revision, trust_remote_code: model loading (:func:`geoprobe.backends.load_model`).
            ``backend=None`` chooses per run (:func:`choose_backend`): plain torch hooks, which keep the
            model's SDPA/flash attention, unless the raw attention pattern is asked for.
        device_map: accelerate device map (``auto``...) for models larger than one device (torch backend).
        attention_path: ``qk`` (attention statistics from captured post-rotary q/k; the model's forward keeps
            its fused kernel) or ``pattern`` (from the eager attention pattern: slower, the user's choice).
        bucket: length-bucketed batches in the measurement pass (rows sorted by length, input order restored).
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
    causal: bool = True
    causal_controls: int = 19
    max_tokens: int | None = None
    n_boot: int = 1000
    batch_size: int | str = 16
    backend: str | None = None
    device: str = "auto"
    dtype: str | None = None
    revision: str | None = None
    trust_remote_code: bool = False
    device_map: str | None = None
    attention_path: str = "qk"
    bucket: bool = True

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
        if self.causal and int(self.causal_controls) < 1:
            raise ConfigError(f"the causal test needs at least 1 control direction, got {self.causal_controls}")
        if int(self.n_boot) < 1:
            raise ConfigError(f"n_boot must be >= 1, got {self.n_boot}")
        if self.batch_size != "auto" and int(self.batch_size) < 1:
            raise ConfigError(f"batch size must be >= 1 or 'auto', got {self.batch_size}")
        if self.attention_path not in ATTENTION_PATHS:
            raise ConfigError(f"unknown attention path {self.attention_path!r}; valid choices: "
                              f"{', '.join(ATTENTION_PATHS)}")

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
    for k in ("batch_size", "device_map", "bucket"):  # placement and batching give the same numbers
        d.pop(k)
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
    popts = replace(su.options, n_boot=int(opts.n_boot), seed=int(opts.seed),
                    layers=tuple(layers) if layers is not None else tuple(range(n_layers)),
                    attention_path=opts.attention_path)
    if not handle.info.has_attention:  # no attention values: the manifold is measured on the residual stream
        popts = replace(popts, manifold_site="residual")
    return su, popts


#: what the attention signatures say on an attention-free model (Mamba)
NO_ATTENTION = "not applicable: no attention"


def _suite_probes(handle: Any, su: Any) -> list[str]:
    """The suite's probes this model can run (attention-free models: the value manifold only)."""
    from geoprobe.probes.contract import PROBES

    if handle.info.has_attention:
        return list(su.probes)
    return [p for p in su.probes if not PROBES.get(p).needs_attention]


def _long_prompt_name(handle: Any, cands: Sequence[Candidate]) -> str:
    """``"; the first is <id> '<start of text>...'"`` for the first candidate longer than the model's
    context (empty when none is, or the model has no tokenizer / declared context)."""
    limit = getattr(handle.info, "max_positions", None)
    tok = getattr(handle, "tokenizer", None)
    if not limit or tok is None:
        return ""
    for c in cands:
        if len(tok(c.text, add_special_tokens=True)["input_ids"]) > int(limit):
            start = " ".join(c.text.split())
            return (f"; the first is {c.id} {start[:40]!r}{'...' if len(start) > 40 else ''}; shorten them or "
                    "keep the last N tokens with --max-tokens N (recorded in the manifest)")
    return ""


def _context(handle: Any) -> int:
    return int(getattr(handle.info, "max_positions", None) or 1_000_000)


def _probe_stage(handle: Any, name: str, texts: list[str], opts: ScanOptions, sizer: BatchSizer,
                 stages: Stages, entropies: Sequence[float] | None = None) -> Any:
    from geoprobe.probes.suite import run_probes
    from geoprobe.report import Report

    key = f"probes-{name}"
    p = stages.path(key)
    if stages.done(key):
        stages.resumed.append(key)
        return Report.load(p)
    su, popts = _probe_options(handle, opts)

    def go(bs: int) -> Any:
        return run_probes(measurement_target(handle, texts, opts, bs, entropies), _suite_probes(handle, su),
                          popts, suite=su)

    rep = sizer.run(go, key)
    if p is not None:
        rep.save(p)
        stages.finish(key)
    return rep


def measurement_target(handle: Any, texts: list[str], opts: ScanOptions, batch_size: int,
                       entropies: Sequence[float] | None = None) -> Any:
    """The probe target of one measurement pass: ``texts`` with their next-token entropies (bits) when the
    selection already scored them (no reference pass), length-bucketed batches unless ``opts.bucket`` is off."""
    from geoprobe.probes.targets import llm_target

    target = llm_target(handle, prompts=texts, max_tokens=_context(handle), seed=opts.seed, batch_size=batch_size,
                        final_entropy=None if entropies is None else list(entropies))
    target.bucket = bool(opts.bucket)
    return target


def selected_entropies(records: Sequence[PromptRecord]) -> list[float] | None:
    """Next-token entropies (bits) of :func:`selected_texts`, in the same order (None if any is missing)."""
    chosen = [(r.quintile, i, r.entropy_bits) for i, r in enumerate(records) if r.selected]
    ent = [e for _, _, e in sorted(chosen, key=lambda x: (x[0], x[1]))]
    return None if any(e is None for e in ent) else [float(e) for e in ent]


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
           # per prompt, for the scorecard's bootstrap intervals (the records themselves go to prompts.jsonl)
           "per_prompt": {"condition": [q.condition for q in prompts], "k": [int(q.k) for q in prompts],
                          "h_model_bits": [float(x) for x in readout.h_model_bits],
                          "h_bayes_bits": [float(q.h_bayes_bits) for q in prompts]},
           "records": [r.to_dict() for r in sula.to_records(prompts, readout)]}
    if p is not None:
        p.mkdir(parents=True, exist_ok=True)
        write_json(p / "sula.json", out)
        stages.finish(key)
    return out


def _sula_rho(handle: Any, texts: list[str], h_bayes: np.ndarray, opts: ScanOptions, sizer: BatchSizer
              ) -> dict[str, Any]:
    """rho(PC1, H_Bayes) of the last-layer final-token values of the main SULA prompts (sign fixed >= 0)."""

    from geoprobe.probes.suite import run_probes

    if np.ptp(h_bayes) == 0:
        return {"rho_pc1_h_bayes": None, "rho_ci": None}
    su, popts = _probe_options(handle, opts, layers=[int(handle.info.n_layers) - 1])

    def go(bs: int) -> Any:
        target = measurement_target(handle, texts, opts, bs, entropies=[float(x) for x in h_bayes])
        return run_probes(target, ["value_manifold"], popts, suite=su)

    s = sizer.run(go, "sula-rho").summary["value_manifold"]
    return {"rho_pc1_h_bayes": s["spearman_rho_pc1_entropy"], "rho_ci": s["rho_ci"],
            "rho_layer": s["layer"], "rho_pc1_share": s["pc1_share"]}


def execution_record(handle: Any, opts: ScanOptions, backend_why: str) -> dict[str, Any]:
    """How the scan ran, for the manifest and summary: backend (and why), the model's attention kernel, where
    the attention statistics came from, weight and statistic dtypes, device map, batching."""
    return {
        "backend": handle.backend, "backend_choice": backend_why,
        "attention_implementation": handle.attention_implementation,
        "attention_statistics": ("post-rotary q/k captured from the model's own forward, entropies by "
                                 "geoprobe.attention_stats (streaming log-sum-exp, float32)"
                                 if opts.attention_path == "qk" else "the eager attention pattern"),
        "weights_dtype": str(handle.dtype).replace("torch.", ""), "statistics_dtype": "float32",
        "device": str(handle.device), "device_map": getattr(handle, "device_map", None),
        "batches": "length-bucketed (rows sorted by token count, input order restored)" if opts.bucket
        else "input order, padded to the longest prompt",
        "final_entropy": "from the selection pass (final-position logits only); no second reference pass",
    }


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
        "attention_focusing": {"ci": set_summary["attention_focusing"]["ci"],
                               "null": {k: probe_summary["attention_focusing"].get(f"{k}_focusing_percent")
                                        for k in ("init", "shuffled")}},
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
    ko = s.get("key_orthogonality") or {}
    per_layer_ko = list(ko.get("weights_layer_mean_abs_cos") or [])
    finite_ko = [x for x in per_layer_ko if x is not None]
    af = s.get("attention_focusing") or {}
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
            "init_focusing_percent": af.get("init_focusing_percent"),
            "shuffled_focusing_percent": af.get("shuffled_focusing_percent"),
            "focusing_above_null": af.get("focusing_above_null"),
            "entropy_bits_by_layer": _per_layer_mean(rows, "attention_focusing", "attention_entropy_bits"),
        },
        "qk_alignment": {"mean_cos_by_layer": _per_layer_mean(rows, "qk_alignment", "mean_cos"),
                         "note": s.get("qk_alignment", {}).get("scalar")},
    }
    if "key_orthogonality" not in s and "attention_focusing" not in s:  # an attention-free model
        for k in ("key_orthogonality", "attention_focusing", "qk_alignment"):
            out[k]["not_applicable"] = NO_ATTENTION
        why = f"{NO_ATTENTION} (the key orthogonality and focusing criteria need attention heads)"
        out["verdict"] = {"grade": "not measured", "reason": why, "label": f"not measured: {why}"}
        return out
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

    from geoprobe.plots import _PALETTE, _layer_axis

    fig = go.Figure()
    for i, (name, s) in enumerate(sets.items()):
        colour = _PALETTE[i % len(_PALETTE)]  # a set's null in its own colour
        sw = s["layer_sweep"]
        x = [r["layer"] for r in sw]
        y = [r["pc12_share"] for r in sw]
        lo = [r["pc12_ci"][0] if r["pc12_ci"] else None for r in sw]
        hi = [r["pc12_ci"][1] if r["pc12_ci"] else None for r in sw]
        label = name if name == "mixed" else f"domain ({s['domain']})"
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines+markers", name=f"{label} PC1+PC2", line={"color": colour},
                                 error_y={"type": "data", "symmetric": False,
                                          "array": [None if h is None or v is None else h - v for h, v in zip(hi, y, strict=True)],
                                          "arrayminus": [None if v2 is None or v is None else v - v2
                                                         for v2, v in zip(lo, y, strict=True)]}))
        fig.add_trace(go.Scatter(x=x, y=[r["null_pc12"] for r in sw], mode="lines",
                                 line={"dash": "dot", "color": colour}, name=f"{label} isotropic null"))

    fig.add_hline(y=0.30, line_dash="dash", annotation_text="30% criterion", annotation_position="top left")
    layers = sorted({int(r["layer"]) for s in sets.values() for r in s["layer_sweep"]})
    fig.update_layout(xaxis=_layer_axis(layers, max_ticks=24), yaxis_title="PC1+PC2 share of final-token value variance",
                      yaxis_range=[0, 1], yaxis_tickformat=".0%", template="plotly_white", height=400)
    return fig


def _sula_figure(sula_s: dict[str, Any]) -> Any:
    import plotly.graph_objects as go

    fig = go.Figure()
    rows = sula_s["by_condition_k"]
    cis = _sula_cis(sula_s)
    for cond in dict.fromkeys(r["condition"] for r in rows):
        rr = [r for r in rows if r["condition"] == cond]
        ci = [cis.get((cond, int(r["k"]))) for r in rr]
        err = None if not any(ci) else {
            "type": "data", "symmetric": False,
            "array": [None if c is None else c[1] - r["h_model_bits"] for c, r in zip(ci, rr, strict=True)],
            "arrayminus": [None if c is None else r["h_model_bits"] - c[0] for c, r in zip(ci, rr, strict=True)]}
        fig.add_trace(go.Scatter(x=[r["k"] for r in rr], y=[r["h_model_bits"] for r in rr], mode="lines+markers",
                                 name=f"{cond}: model" + (" (95% CI over prompts)" if err else ""), error_y=err))
    main = [r for r in rows if r["condition"] == "main"]
    fig.add_trace(go.Scatter(x=[r["k"] for r in main], y=[r["h_bayes_bits"] for r in main], mode="lines",
                             line={"dash": "dash", "color": "black"}, name="main: Bayes"))
    fig.update_layout(xaxis_title="in-context examples k", yaxis_title="mean entropy (bits)",
                      template="plotly_white", height=400)
    return fig


def _sula_cis(sula_s: dict[str, Any]) -> dict[tuple[str, int], tuple[float, float]]:
    """Per (condition, k): the percentile bootstrap 95% CI of the mean model entropy over the saved per-prompt
    entropies (``sula.per_prompt``; empty for a scan saved without them)."""
    from geoprobe.stats import bootstrap_ci

    pp = sula_s.get("per_prompt") or {}
    cols = [pp.get(c) for c in ("condition", "k", "h_model_bits")]
    if any(c is None for c in cols) or len({len(c) for c in cols}) != 1:
        return {}
    groups: dict[tuple[str, int], list[float]] = {}
    for cond, k, h in zip(*cols, strict=True):
        groups.setdefault((str(cond), int(k)), []).append(float(h))
    out = {}
    for key, hs in groups.items():
        if len(hs) > 1:
            ci = bootstrap_ci(np.asarray(hs, dtype=np.float64), n_boot=1000, seed=0)
            out[key] = (float(ci.low), float(ci.high))
    return out


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
    causal_s = summary.get("causal")
    if causal_s and causal_s.get("applicable"):
        from geoprobe.scan.causal import causal_rows

        rows.append(causal_rows(causal_s, causal_s["set"]))
    frame = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()
    figures = {"Layer sweep: where the value manifold forms (PC1+PC2 per layer)": _sweep_figure(summary["sets"])}
    if sula_s is not None:
        figures["In-context noisy labels (SULA): model entropy vs k, with controls"] = _sula_figure(sula_s)
    if causal_s and causal_s.get("applicable"):
        from geoprobe.scan.causal import causal_figure

        figures["Causal test: cutting the entropy axis vs matched random controls"] = causal_figure(causal_s)
    for set_name, rep in reps.items():
        tag = "mixed" if set_name == "mixed" else f"domain ({summary['domain']})"
        figures.update({f"{tag}: {t}": f for t, f in rep.figures.items()})
    first = ("verdict", "sets", "domain_verdict", "sula", "causal", "published", "predictions")
    rep_summary = {**{k: summary[k] for k in first if k in summary},
                   **{k: v for k, v in summary.items() if k not in first}}
    return Report(title=f"geoprobe scan: {name}", rows=frame, summary=rep_summary, figures=figures,
                  manifest=manifest)


def sula_rows(sula_s: dict[str, Any]) -> pd.DataFrame:
    """Tidy rows of the SULA experiment (set ``sula``; variant = condition, position = k)."""
    from geoprobe.results import typed_frame

    recs = []
    for r in sula_s["by_condition_k"]:
        for stat in ("mae_bits", "h_model_bits", "h_bayes_bits", "discarded_mass"):
            recs.append({"set": "sula", "probe": "sula", "layer": None, "head": None, "position": r["k"],
                         "statistic": stat, "value": r[stat], "ci_low": None, "ci_high": None,
                         "variant": r["condition"], "hook": None, "meta": {"n": r["n"]}})
    return typed_frame(pd.DataFrame.from_records(recs))


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


def scan_interruption(exc: Any, model: Any, *args: Any, out: str | Path | None = None, **kwargs: Any) -> Any:
    """The one line of a scan (:func:`run_scan`'s arguments) stopped by a signal: the finished stages kept in the
    staging folder (in the order they finished) and that ``out`` appears only when the scan completes;
    ``continue_with="resume"`` when there is a staging folder to continue."""
    from geoprobe.interrupts import restate
    from geoprobe.io import is_empty_output, pending_replacement

    label = str(model) if isinstance(model, (str, Path)) else "the model"
    if out is None:
        return restate(exc, f"scan of {label} stopped; nothing was saved (no output folder)", None)
    staging = pending_replacement(out)
    if staging is None:
        return restate(exc, f"scan of {label} stopped before anything was written to {out}", None)
    done = sorted((staging / STAGE_DIR).glob("*/DONE"), key=lambda f: f.stat().st_mtime_ns)
    kept = (f"{len(done)} finished stage(s) ({', '.join(f.parent.name for f in done)}) kept"
            if done else "no stage had finished yet; its folder is kept")
    final = "appears when" if is_empty_output(out) else "is unchanged until"
    return restate(exc, f"scan of {label} stopped; {kept} in {staging}; {out} {final} the scan completes",
                   "resume")


@reporting(scan_interruption)
def run_scan(model: Any, *, domain: str | None = "math", n: int = 75, out: str | Path | None = None,
             resume: bool = False, overwrite: bool = False, options: ScanOptions | None = None,
             progress: bool = False, **kwargs: Any) -> ScanResult:
    """:func:`scan`, returning the :class:`ScanResult` (report, prompt records, output folder).

    ``preselected=`` (from :func:`preselect` with another model) skips the selection step and measures exactly
    those prompts (multi-revision scans, :mod:`geoprobe.scan.revisions`); the manifest says so.
    ``extra_outputs=`` (``f(handle, folder)``) writes more files into the output folder, inside the same atomic
    commit as the scan (multi-revision scans save each revision's key frames this way).
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
    # f(handle, folder): writes more files into the output folder with the scan (revisions: key frames)
    extra_outputs = kwargs.pop("extra_outputs", None)
    opts = replace(options or ScanOptions(), domain=domain, n=int(n), **kwargs)
    opts.check()
    sets = preselected_candidates(preselected) if preselected is not None else \
        dict(candidates) if candidates is not None else candidate_sets(opts)  # a copy: --max-tokens cuts it
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
    backend, backend_why = choose_backend(opts) if name is not None else (opts.backend, "the model object's own")
    say(f"loading {name or 'the model'} (backend {backend or 'of the object'})")
    t0 = time.perf_counter()
    handle = load_model(model, backend=backend, device=opts.device, dtype=opts.dtype, revision=opts.revision,
                        trust_remote_code=opts.trust_remote_code,
                        **({"tokenizer": tokenizer} if tokenizer is not None else {}),
                        **({"device_map": opts.device_map} if opts.device_map is not None else {}))
    load_s = time.perf_counter() - t0
    label = name or handle.info.source_detail.get("name") or handle.info.family
    sets, cut_ids = _cut_sets(handle, sets, opts)  # the explicit cut: before the length check, in the manifest
    for set_name, cands in sets.items():  # no tokenizer, empty or too long prompts: before anything is written
        try:
            tokenize_prompts(handle, [c.text for c in cands])
        except ConfigError as e:
            raise ConfigError(f"{set_name} set: {e}{_long_prompt_name(handle, cands)}") from None
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
            rep = _probe_stage(handle, set_name, selected_texts(recs), opts, sizer, stages,
                               entropies=selected_entropies(recs))
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
        causal_s = None
        if opts.causal:
            from geoprobe.scan.causal import causal_set, causal_stage

            cset = causal_set(list(reps))
            say(f"causal entropy-axis cut on the {cset} set ({opts.causal_controls} matched controls per cut)")
            t0 = time.perf_counter()
            crecs = [r for r in records if r.extra.get("set") == cset]
            causal_s = causal_stage(handle, cset, selected_texts(crecs), opts, sizer, stages)
            timings["causal"] = round(time.perf_counter() - t0, 2)
        from geoprobe.scan.table import scorecard

        summary: dict[str, Any] = {
            "model": str(label), "domain": domain_name, "verdict": sums["mixed"]["verdict"],
            "domain_verdict": sums["domain"]["verdict"] if "domain" in sums else None,
            "sets": sums,
            "sula": None if sula_s is None else {k: v for k, v in sula_s.items() if k != "records"},
            "causal": causal_s,
        }
        summary["execution"] = execution_record(handle, opts, backend_why)
        summary["published"] = _published_block(str(label), sums, summary["sula"])
        summary["predictions"] = scorecard(summary)
        timings["total"] = round(time.perf_counter() - t_start, 2)
        manifest = {
            "kind": "geoprobe-scan", "model": str(label), "revision": opts.revision,
            "model_info": handle.info.to_dict(), "backend": handle.backend, "device": str(handle.device),
            "dtype": str(handle.dtype), "seed": opts.seed, "batch_size": sizer.to_dict(),
            "execution": summary["execution"],
            "options": {k: v for k, v in dataclasses.asdict(opts).items()},
            "choices": {
                "suite": SUITE, "sets": list(sets), "pool_size": opts.pool_size,
                "candidates": {k: len(v) for k, v in sets.items()},
                "selection": f"{opts.per_bin} per entropy bin x {opts.n_bins} bins (numpy.quantile edges), "
                             f"drawn with seed {opts.seed}",
                "entropy": "next-token entropy (bits) of the model at each prompt's final token",
                "value_manifold": "final-token value vectors, all heads concatenated (KV heads not expanded), "
                                  "standardised; PCA at every layer (layer sweep), last layer = headline",
                "prompt_truncation": "none (prompts longer than the model's context are refused)"
                if opts.max_tokens is None else {
                    "max_tokens": int(opts.max_tokens),
                    "rule": "a prompt longer than max_tokens keeps its last tokens (geoprobe.scan.cut); "
                            "prompts.jsonl holds the cut texts",
                    "cut": {k: v for k, v in cut_ids.items() if v}},
                **({} if preselected is None else {"preselected": PRESELECTED_NOTE}),
                "sula": None if not opts.sula else {"ks": summary["sula"]["ks"], "n_per_k": opts.sula_per_k,
                                                    "labels": summary["sula"]["labels"],
                                                    "remap_labels": summary["sula"]["remap_labels"],
                                                    "eps": summary["sula"]["eps"], "ablation": "remove"},
                "causal": None if causal_s is None else {
                    "set": causal_s["set"], "cut_layers": causal_s.get("cut_layers"),
                    "n_controls": opts.causal_controls, "operator": causal_s.get("operator"),
                    "controls": causal_s.get("controls"), "applicable": causal_s["applicable"]},
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
                if extra_outputs is not None:
                    extra_outputs(handle, work)
                shutil.rmtree(work / STAGE_DIR, ignore_errors=True)

            from geoprobe.interrupts import finishing

            with finishing():  # a signal now waits for the swap: the scan is finished then
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
    sets, _ = _cut_sets(handle, sets, opts)
    sizer, stages = BatchSizer(opts.batch_size), Stages(None)
    return {name: _selection_stage(handle, name, cands, opts, sizer, stages) for name, cands in sets.items()}


def _cut_sets(handle: Any, sets: dict[str, list[Candidate]], opts: ScanOptions
              ) -> tuple[dict[str, list[Candidate]], dict[str, dict[str, int]]]:
    """``--max-tokens``: every set's candidates cut to their last ``max_tokens`` tokens (:mod:`geoprobe.scan.cut`)
    and ``{set: {id: original token count}}`` of the cut ones; the sets unchanged without it. A new dict: the
    caller's lists are never modified."""
    cut_ids: dict[str, dict[str, int]] = {}
    if opts.max_tokens is None:
        return sets, cut_ids
    from geoprobe.scan.cut import check_max_tokens, cut_candidates

    check_max_tokens(opts.max_tokens, getattr(handle.info, "max_positions", None))
    if getattr(handle, "tokenizer", None) is None:
        return sets, cut_ids
    out = {}
    for set_name, cands in sets.items():
        out[set_name], cut_ids[set_name] = cut_candidates(handle.tokenizer, cands, int(opts.max_tokens))
    return out, cut_ids
