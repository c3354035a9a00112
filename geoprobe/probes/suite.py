"""The probe engine: run registered :class:`~geoprobe.probes.contract.Probe`s on a
:class:`~geoprobe.probes.targets.ProbeTarget` and assemble a Report.

Every requested observational probe declares what it reads (:class:`~geoprobe.probes.contract.Need`); the
engine runs ONE streaming forward pass per batch for the union of those sites and layers, reduces each
activation on the fly for every probe that asked for it (memory holds only the reduced parts), then calls each
probe on the collected tensors. The nulls measured on the model at initialisation (declared as ``init_needs``)
share one more such pass over the initial model (:func:`init_collected`). Intervention probes (ablation,
entropy_axis, dynamics) run their own passes.
Pass criteria and the verdict come from a probe suite (:mod:`geoprobe.probes.suites`), not from this code.

=====================  =================================================================================
probe                  what it measures (module with the math and the probe)
=====================  =================================================================================
key_orthogonality      mean |off-diag cos| of keys per layer/head: weights, token-keys (tunnels), runtime-keys
                       (``key_orthogonality``), with random and at-initialisation baselines
qk_alignment           cos(final query, keys) per layer; consistent-minus-eliminated hypotheses (tunnels)
attention_focusing     final-row attention entropy per layer/head; focusing % first -> last layer
value_manifold         PCA of standardised value vectors; PC1, PC1+PC2, participation ratio, rho(PC1, H)
linear_probe           cross-validated ridge (entropy) / logistic (posterior) readouts per layer vs shuffled labels
ablation               zero-ablate every head, bypass / attention-only / MLP-only zeroing of every layer
entropy_axis           cut / keep-only / shift along the PC1 axis vs an orthogonalised random control
dynamics               frame-precision dissociation over a run's checkpoints (tunnels only)
=====================  =================================================================================
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import torch

from geoprobe.probes.common import select_final, select_samples
from geoprobe.probes.contract import (
    DEFAULT_PROBES,
    PROBES,
    Collected,
    Need,
    Probe,
    ProbeOptions,
    ProbeOutput,
    ProbeState,
    default_probes,
    register_probe,
)
from geoprobe.probes.targets import ProbeTarget

if TYPE_CHECKING:
    from geoprobe.backends.handle import ModelHandle
    from geoprobe.probes.suites import Suite
    from geoprobe.report import Report

__all__ = ["run_probes", "collect_needs", "init_collected", "PROBES", "DEFAULT_PROBES", "Probe", "ProbeOptions",
           "ProbeOutput", "ProbeState", "Need", "Collected", "default_probes", "register_probe"]


def collect_needs(state: ProbeState, needs: Sequence[Need], *, bucket: bool | None = None) -> Collected:
    """One streaming forward pass per batch for the union of ``needs``; reduced activations per need.

    Needs sharing (site, positions) are merged (layers united) and computed once. A paired need
    (``Need.pair``) gets both sites of the same layer and batch; each is dropped as soon as every need that
    reads it has been reduced. Returns a :class:`Collected` with rows in input order, on the CPU.

    ``bucket`` (default: ``target.bucket``): order the rows by length and pad each batch only to its own
    longest row (:func:`geoprobe.backends.batches.length_batches`); results come back in input order, with
    ``"all"`` and positional reductions padded back to the full input length. Passes where every row has the
    same length (wind tunnels), with ``"samples"`` needs (global positions) or with a custom reduction not marked
    ``bucket_safe`` run unbucketed.
    """
    from geoprobe.backends.batches import length_batches, pad_positions

    t = state.target
    merged: dict[tuple[str, str], Need] = {}
    for n in needs:
        old = merged.get(n.key)
        if old is not None and (old.reduce is not n.reduce or old.pair != n.pair):
            from geoprobe.errors import ConfigError

            raise ConfigError(f"two probes reduce {n.site} with different functions under one name "
                              f"{n.positions!r}; give each reduction its own positions name")
        merged[n.key] = n if old is None else replace(old, layers=old.layers + n.layers)
    if not merged:
        return Collected()
    # one output tensor per (need, layer), allocated when its first batch arrives and filled in place (input
    # rows), so memory holds the reduced rows and nothing per batch; "samples" parts (not one per row) are listed
    out: dict[tuple[str, str], dict[int, torch.Tensor]] = {k: {} for k in merged}
    listed: dict[tuple[str, str], dict[int, list[torch.Tensor]]] = {k: {} for k in merged}
    filled: dict[tuple[str, str], dict[int, int]] = {k: {} for k in merged}
    by_site: dict[str, list[Need]] = {}
    for n in merged.values():
        by_site.setdefault(n.site, []).append(n)
    paired = [n for n in merged.values() if n.pair is not None]
    samples = state.samples if any(n.positions == "samples" for n in merged.values()) else None
    mask = t.attention_mask
    if bucket is None:
        bucket = bool(getattr(t, "bucket", True))
    lens = mask.bool().sum(1)
    safe = all(n.positions in ("final", "all") or n.bucket_safe for n in merged.values())
    bucket = bucket and safe and bool((lens != lens[0]).any())
    total_t = mask.shape[1]
    cur: dict[str, Any] = {}
    held: dict[tuple[str, int], Any] = {}  # activations waiting for their pair (this batch only)

    def keep(n: Need, layer: int, part: torch.Tensor) -> None:
        if n.positions == "all" or n.positional:
            part = pad_positions(part, cur["cols"], total_t, 0.0 if n.positions == "all" else math.nan)
        part = part.detach().cpu()
        if n.positions == "samples":
            listed[n.key].setdefault(layer, []).append(part)
            return
        dst = out[n.key].get(layer)
        if dst is None:
            dst = out[n.key][layer] = torch.empty((t.n, *part.shape[1:]), dtype=part.dtype)
        dst[cur["rows"]] = part
        filled[n.key][layer] = filled[n.key].get(layer, 0) + part.shape[0]

    def reducer(act: Any) -> None:
        layer = act.layer
        for n in by_site.get(act.site, ()):
            if layer not in n.layers or n.pair is not None:
                continue
            if n.positions == "final":
                part = select_final(act)
            elif n.positions == "all":
                part = act.value
            elif n.positions == "samples":
                assert samples is not None
                part = select_samples(act, *samples)
            else:
                assert n.reduce is not None
                part = n.reduce(act)
            keep(n, layer, part)
        waiting = [n for n in paired if layer in n.layers and act.site in (n.site, n.pair)]
        if not waiting:
            return
        held[(act.site, layer)] = act
        for n in waiting:
            a, b = held.get((n.site, layer)), held.get((n.pair, layer))
            if a is None or b is None or (n.key, layer) in cur["done"]:
                continue
            assert n.reduce is not None
            keep(n, layer, n.reduce(a, b))
            cur["done"].add((n.key, layer))
        for s in {x for n in waiting for x in (n.site, n.pair)}:  # drop what no pending need still reads
            if all((n.key, layer) in cur["done"] for n in paired if layer in n.layers and s in (n.site, n.pair)):
                held.pop((s, layer), None)

    sites = list(dict.fromkeys([*by_site, *(n.pair for n in paired if n.pair is not None)]))
    layers = sorted({layer for n in merged.values() for layer in n.layers})
    for b in length_batches(mask, t.batch_size, bucket=bucket):
        cur.update(rows=b.rows, cols=b.cols, done=set())
        held.clear()
        if bucket:
            t.handle.run(b.take(t.tokens), b.take(mask), sites=sites, layers=layers, reducer=reducer)
        else:  # consecutive rows, every column: SiteActivation.rows are input rows ("samples" needs use them)
            r = b.rows
            t.handle.run(t.tokens[int(r[0]):int(r[-1]) + 1], mask[int(r[0]):int(r[-1]) + 1], sites=sites,
                         layers=layers, reducer=_offset(reducer, int(r[0])))
    for k, d in filled.items():
        bad = [layer for layer, c in d.items() if c != t.n]
        if bad:
            raise RuntimeError(f"{k}: layers {bad} were reduced for {[d[x] for x in bad]} rows, not {t.n}")
    for k, d in listed.items():
        out[k].update({layer: torch.cat(v) for layer, v in d.items()})
    return Collected({k: dict(sorted(d.items())) for k, d in out.items()})


def init_collected(state: ProbeState, probe: str) -> Collected | None:
    """The model at initialisation's activations for the nulls: ONE streaming pass per batch over the same
    inputs (:func:`collect_needs`) for the ``init_needs`` of every probe of the run (``state.probes``) and of
    ``probe``, run the first time one asks and kept on the state. None when there is no initial model
    (:func:`geoprobe.probes.key_orthogonality.init_handle_for`).

    Each ``init_needs`` is declared on a :class:`ProbeState` whose target is the run's target with the initial
    model's handle (same inputs, options and samples), so every null reads the sites, layers and positions a
    pass of its own on that target would read. The pass batches like the measurement pass (length buckets
    unless ``target.bucket`` is off): a null that used to run unbucketed can differ from that by float
    rounding only.
    """
    from geoprobe.probes.key_orthogonality import init_handle_for

    init = init_handle_for(state)
    if init is None:
        return None
    if state._init_acts is None or probe not in state._init_acts[0]:
        names = tuple(dict.fromkeys([*state.probes, probe]))
        st0 = ProbeState(target=replace(state.target, handle=init), options=state.options,
                         _samples=state._samples)
        by_probe = {name: list(f(st0)) for name in names if (f := PROBES.get(name).init_needs) is not None}
        readers = tuple(name for name, needs in by_probe.items() if needs)
        state._init_acts = (frozenset(names), readers,
                            collect_needs(st0, [n for needs in by_probe.values() for n in needs]))
    return state._init_acts[2]


def _offset(reducer: Any, start: int) -> Any:
    """``reducer`` seeing each activation's ``rows`` shifted by ``start`` (input rows of the whole target)."""
    from dataclasses import replace as dc_replace

    def f(act: Any) -> None:
        reducer(dc_replace(act, rows=slice(act.rows.start + start, act.rows.stop + start)))

    return f


def run_probes(target: ProbeTarget | Any, probes: Sequence[str] | None = None,
               options: ProbeOptions | None = None, *, init_handle: ModelHandle | None = None,
               suite: Suite | str | None = None, progress: bool = False, **target_kwargs: Any) -> Report:
    """Run ``probes`` on ``target`` and return a :class:`~geoprobe.report.Report`.

    Args:
        target: a :class:`ProbeTarget`, or anything :func:`geoprobe.probes.targets.make_target` accepts (a run
            folder, a model id/path, a loaded :class:`~geoprobe.backends.ModelHandle`, a ``TransformerBridge``,
            a ``transformers`` model, an nnsight ``LanguageModel``); ``target_kwargs`` go to ``make_target``.
        probes: probe names (default: the suite's probes, else each probe's ``default_for`` the target kind).
        options: :class:`ProbeOptions` (default: the suite's ``[options]``, else the defaults).
        init_handle: the same architecture at initialisation (tunnels: the step-0 checkpoint), used as the
            key-orthogonality baseline.
        suite: a :class:`~geoprobe.probes.suites.Suite`, a suite file, or a built-in suite name
            (``paper1-tunnels``, ``paper3-llm``); its criteria give the verdict (default: the built-in suite
            of the target's kind).
    """
    from tqdm.auto import tqdm

    from geoprobe.models.checkpoint import versions
    from geoprobe.probes.suites import default_suite, load_suite
    from geoprobe.probes.targets import make_target
    from geoprobe.report import Report
    from geoprobe.results import rows_to_frame

    if not isinstance(target, ProbeTarget):
        target = make_target(target, **target_kwargs)
    elif target_kwargs:
        from geoprobe.errors import ConfigError

        raise ConfigError(f"options {sorted(target_kwargs)} apply only when target is not already a ProbeTarget")
    su = load_suite(suite) if suite is not None else default_suite(target.kind)
    opts = options or (su.options if suite is not None else ProbeOptions())
    names = list(probes or (su.probes if suite is not None and su.probes else default_probes(target.kind)))
    objs = [PROBES.get(name) for name in names]
    for p in objs:
        p.check(target)
    state = ProbeState(target=target, options=opts, init_handle=init_handle, probes=tuple(names))
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    needs = [n for p in objs for n in p.needs(state)]  # intervention probes may read the shared pass too
    collected = collect_needs(state, needs)
    timings["shared_forward_pass"] = round(time.perf_counter() - t0, 2)
    rows, summary, figures, tables = [], {}, {}, {}
    for p in tqdm(objs, desc="probes", disable=not progress):
        t0 = time.perf_counter()
        out = p.run(state, collected)
        state.outputs[p.name] = out
        timings[p.name] = round(time.perf_counter() - t0, 2)
        if p.figures is not None:
            out.figures.update(p.figures(out))
        rows += out.rows
        summary[p.name] = {**out.summary, "paper_claim": su.claims.get(p.name, p.claims.get(target.kind, ""))}
        figures.update(out.figures)
        tables.update(out.tables)
    _attach_hook_names(rows, target)
    info = target.handle.info
    manifest = {
        "target": target.name, "kind": target.kind, "model": info.to_dict(), "backend": target.handle.backend,
        "device": str(target.handle.device), "dtype": str(target.handle.dtype), "n_inputs": target.n,
        "seed": opts.seed, "options": {"n_boot": opts.n_boot, "max_samples": opts.max_samples,
                                       "layers": opts.layers},
        "probes": names, "timings_s": timings, "suite": su.name,
        "forward_passes": {"shared": "one streaming pass per batch for "
                           + ", ".join(p.name for p in objs if not p.intervention),
                           "own_passes": [p.name for p in objs if p.intervention]},
    }
    if state._init_acts is not None and state._init_acts[1]:
        manifest["forward_passes"]["initial_model"] = ("one streaming pass per batch for the nulls of "
                                                       + ", ".join(state._init_acts[1]))
    if target.kind == "tunnel" and target.task is not None:
        manifest["task"] = {"name": target.task.name, "config": target.task.config(), "stream": "test"}
    manifest["versions"] = versions()
    verdict = su.verdict(summary)
    if verdict is not None:
        summary["verdict"] = verdict
    title = f"geoprobe probes: {target.name}"
    return Report(title=title, rows=rows_to_frame(rows, include_meta=True), summary=summary, figures=figures,
                  manifest=manifest, tables=tables)


def _attach_hook_names(rows: list, target: ProbeTarget) -> None:
    """Set each row's ``hook``: the TransformerLens hook name of the site it was measured at (a probe names
    the site per row with ``meta["site_name"]``, else its usual site is used)."""
    from geoprobe.backends.sites import tl_hook_name

    for r in rows:
        site = r.meta.pop("site_name", None) or _PROBE_SITE.get(r.probe)
        if site is None or r.hook is not None:
            continue
        r.hook = tl_hook_name(site, r.layer if r.layer is not None else "*")


#: the canonical site each built-in probe's rows are measured at (rows may override with meta["site_name"])
_PROBE_SITE = {"key_orthogonality": "k_rot", "qk_alignment": "q_rot", "attention_focusing": "pattern",
               "value_manifold": "v", "entropy_axis": "v", "ablation": "z", "dynamics": "pattern",
               "linear_probe": "resid_post"}
