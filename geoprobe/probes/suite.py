"""Run the geometric probes on a :class:`~geoprobe.probes.targets.ProbeTarget` and assemble a Report.

Each probe here is a thin wrapper: it asks the backend for the sites it needs (reducing on the fly where it
can), calls the pure functions of its module (where the math and its formula live), and returns tidy
:class:`~geoprobe.results.ResultRow`s, a summary and figures. The same code runs on a wind-tunnel run folder and
on any Hugging Face causal LM.

=====================  =================================================================================
probe                  what it measures (module with the math)
=====================  =================================================================================
key_orthogonality      mean |off-diag cos| of keys per layer/head: weights, token-keys (tunnels), runtime-keys
                       (``key_orthogonality``), with random and at-initialisation baselines
qk_alignment           cos(final query, keys) per layer; consistent-minus-eliminated hypotheses (tunnels)
attention_focusing     final-row attention entropy per layer/head; focusing % first -> last layer
value_manifold         PCA of standardised value vectors; PC1, PC1+PC2, participation ratio, rho(PC1, H)
ablation               zero-ablate every head, bypass / attention-only / MLP-only zeroing of every layer
entropy_axis           cut / keep-only / shift along the PC1 axis vs an orthogonalised random control
dynamics               frame-precision dissociation over a run's checkpoints (tunnels only)
=====================  =================================================================================
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from geoprobe.errors import ConfigError
from geoprobe.infotheory import entropy_bits
from geoprobe.probes.targets import ProbeTarget
from geoprobe.registry import Registry
from geoprobe.results import ResultRow

#: Paper I/III claims shown beside our measurements (SCIENCE.md sections 5 and 7)
PAPER_CLAIMS = {
    "tunnel": {
        "key_orthogonality": "Paper I: layer-0 token-key mean |cos| 0.052 vs 0.082 random (-37%)",
        "qk_alignment": "Paper I: alignment to still-consistent hypotheses sharpens with depth",
        "attention_focusing": "Paper I/III: attention entropy falls with depth (focusing)",
        "value_manifold": "Paper I: low-dimensional value manifold parameterised by posterior entropy",
        "ablation": "Paper I: every single-layer ablation raises MAE > 10x; layer-0 heads matter most "
                    "(separate-vocab: all six layer-0 heads 17-24x baseline)",
        "entropy_axis": "Paper III (LLMs): cutting the axis leaves calibration within 1% (readout, not bottleneck)",
        "dynamics": "Paper II/replication: frame in place by step ~400-2,500 while MAE improves a further ~40x",
    },
    "llm": {
        "key_orthogonality": "Paper III: key orthogonality (weights) < 0.20 in >= 50% of layers",
        "attention_focusing": "Paper III: focusing > 30% (Pythia-410M 82%, Phi-2 86%, Llama-3.2-1B 31%)",
        "value_manifold": "Paper III: PC1 or PC1+PC2 > 30% (Pythia-410M 99.7%, Phi-2 60.6%, Llama-3.2-1B 51.4%)",
        "qk_alignment": "Paper III: query-key alignment sharpens across depth",
        "ablation": "Paper III: head/layer ablations change loss/entropy",
        "entropy_axis": "Paper III: Pythia-410M axis cut drops corr(axis, entropy) 0.27 -> 0.07, calibration < 1%",
    },
}


@dataclass
class ProbeOutput:
    rows: list[ResultRow] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)
    #: sample-level tables the figures draw (kept in the Report so a saved report rebuilds its figures)
    tables: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ProbeOptions:
    n_boot: int = 1000
    seed: int = 0
    #: value-manifold / entropy-axis samples for tunnels (supervised positions, subsampled)
    max_samples: int = 2000
    #: layers for value_manifold / entropy_axis (None: every layer for tunnels, the last for LLMs)
    layers: tuple[int, ...] | None = None
    #: value-manifold variant: "values" (default, Paper III) or "residual" (the residual stream after the block)
    manifold_site: str = "values"
    #: value-manifold positions: None = "all_positions" for tunnels, "final" for LLMs
    manifold_positions: str | None = None


ProbeFn = Callable[[ProbeTarget, ProbeOptions, dict[str, Any]], ProbeOutput]
PROBES: Registry[ProbeFn] = Registry("probe")
#: probes that run by default (ablation and entropy_axis run many forward passes: cheap on tunnels only)
DEFAULT_PROBES = {
    "tunnel": ["key_orthogonality", "qk_alignment", "attention_focusing", "value_manifold", "ablation",
               "entropy_axis", "dynamics"],
    "llm": ["key_orthogonality", "qk_alignment", "attention_focusing", "value_manifold"],
}


def _require_attention(t: ProbeTarget, probe: str) -> None:
    if not t.handle.info.has_attention:
        raise ConfigError(f"probe {probe!r} needs attention heads; {t.name} ({t.handle.info.family}) has none")


# ------------------------------------------------------------------------------------------ shared helpers


def token_embeddings(handle: Any, ids: torch.Tensor) -> torch.Tensor:
    """Input embeddings ``[n, d_model]`` of token ``ids`` (no positions), float32."""
    emb = handle.hf_model.get_input_embeddings()
    with torch.no_grad():
        return emb(ids.to(handle.device)).float()


def supervised_samples(t: ProbeTarget, max_samples: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, position) indices of up to ``max_samples`` supervised positions (deterministic subsample)."""
    assert t.batch is not None
    rows, pos = torch.nonzero(t.batch.loss_mask, as_tuple=True)
    if rows.numel() > max_samples:
        g = torch.Generator().manual_seed(seed)
        keep = torch.randperm(rows.numel(), generator=g)[:max_samples].sort().values
        rows, pos = rows[keep], pos[keep]
    return rows, pos


def collect(t: ProbeTarget, site: str, layers: list[int], select: Callable[[Any], torch.Tensor]
            ) -> dict[int, torch.Tensor]:
    """Run the model once, reducing each (site, layer, batch) activation with ``select`` on the fly.

    ``select(activation)`` returns the part to keep (e.g. a few positions); results are concatenated per layer
    in input order. Memory holds only the selected parts.
    """
    parts: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}

    def reducer(act: Any) -> None:
        parts[act.layer].append(select(act).cpu())

    t.handle.run(t.tokens, t.attention_mask, sites=[site], layers=layers, reducer=reducer,
                 batch_size=t.batch_size)
    return {layer: torch.cat(v) for layer, v in parts.items()}


def values_at_samples(t: ProbeTarget, layers: list[int], opts: ProbeOptions, site: str = "v"
                      ) -> tuple[dict[int, torch.Tensor], torch.Tensor, str]:
    """Concatenated-heads value vectors (``site="v"``) or residual vectors (``"resid_post"``) and their
    reference entropies, per layer.

    Tunnels: every supervised position (subsampled to ``max_samples``) with the Bayes entropy there
    (variant ``all_positions``, default) or the final token only (``opts.manifold_positions="final"``); LLMs:
    the final token with the model's next-token entropy (``final``).
    Returns ({layer: [n, D]}, entropy [n], positions variant). KV heads are not expanded.
    """
    positions = opts.manifold_positions or ("all_positions" if t.kind == "tunnel" else "final")
    if positions == "all_positions" and t.kind != "tunnel":
        raise ConfigError("the all_positions value-manifold variant needs a wind tunnel (supervised positions)")
    if positions == "all_positions":
        rows, pos = supervised_samples(t, opts.max_samples, opts.seed)

        def select(act: Any) -> torch.Tensor:
            r0 = act.rows.start
            m = (rows >= r0) & (rows < r0 + act.value.shape[0])
            return act.value[(rows[m] - r0).to(act.value.device), pos[m].to(act.value.device)]

        vals = collect(t, site, layers, select)
        ent = t.batch.bayes_entropy[rows, pos]
        variant = "all_positions"
    else:
        def select(act: Any) -> torch.Tensor:
            r = torch.arange(act.value.shape[0], device=act.value.device)
            return act.value[r, act.final_index]

        vals = collect(t, site, layers, select)
        ent = t.final_entropy
        variant = "final"
    return {k: v.reshape(v.shape[0], -1) for k, v in vals.items()}, ent.float(), variant


def calibration_metric(t: ProbeTarget) -> dict[str, float]:
    """The behavioural metric interventions are judged by.

    Tunnels: per-sample entropy MAE against the exact posterior (bits) and KL. LLMs: mean next-token negative
    log-likelihood over the prompts' real tokens (bits) and mean final-token entropy (bits).
    """
    logits = t.logits()
    if t.kind == "tunnel":
        from geoprobe.probes.calibration import calibration_from_log_probs, readout_log_probs

        res = calibration_from_log_probs(readout_log_probs(logits, t.batch.readout_ids), t.batch)
        return {"entropy_mae_bits": res.entropy_mae_bits, "kl_bits": res.kl_bits}
    logp = torch.log_softmax(logits.float(), -1)
    nxt = t.tokens[:, 1:].to(logp.device)
    m = (t.attention_mask[:, 1:] * t.attention_mask[:, :-1]).bool().to(logp.device)
    nll = -logp[:, :-1].gather(-1, nxt.unsqueeze(-1)).squeeze(-1)
    final = logits[torch.arange(t.n), t.final_index.to(logits.device)]
    return {"nll_bits": float(nll[m].mean() / math.log(2)),
            "final_entropy_bits": float(entropy_bits(torch.softmax(final.float(), -1)).mean())}


def default_layers(t: ProbeTarget, opts: ProbeOptions) -> list[int]:
    L = t.handle.info.n_layers
    if opts.layers is not None:
        bad = [x for x in opts.layers if not -L <= x < L]
        if bad:
            raise ConfigError(f"layers {bad} out of range (model has {L} layers)")
        return sorted({x % L for x in opts.layers})
    return list(range(L)) if t.kind == "tunnel" else [L - 1]


# ------------------------------------------------------------------------------------------ probes


@PROBES.register("key_orthogonality")
def run_key_orthogonality(t: ProbeTarget, opts: ProbeOptions, ctx: dict[str, Any]) -> ProbeOutput:
    from geoprobe.probes.key_orthogonality import key_orthogonality_rows

    _require_attention(t, "key_orthogonality")
    h, L = t.handle, t.handle.info.n_layers
    weights = [h.attention_weights(layer) for layer in range(L)]
    init = ctx.get("init_handle")
    init_w = [init.attention_weights(layer) for layer in range(L)] if init is not None else None
    rows = key_orthogonality_rows([w.W_K for w in weights], "weights",
                                  init_by_layer=[w.W_K for w in init_w] if init_w else None)
    if t.kind == "tunnel":
        ids = t.hypothesis_ids
        emb = token_embeddings(t.handle, ids)
        normed = {layer: h.input_norm(layer)(emb) for layer in range(L)}
        tk_rows = key_orthogonality_rows([w.W_K for w in weights], "token-keys", token_embeddings=normed,
                                         biases_by_layer={i: w.b_K for i, w in enumerate(weights)})
        if init is not None:
            iemb = token_embeddings(init, ids)
            inormed = {layer: init.input_norm(layer)(iemb) for layer in range(L)}
            base = key_orthogonality_rows([w.W_K for w in init_w], "token-keys", token_embeddings=inormed,
                                          biases_by_layer={i: w.b_K for i, w in enumerate(init_w)})
            by_key = {(r.layer, r.head): r.value for r in base}
            for r in tk_rows:
                r.meta["baseline_init"] = by_key[(r.layer, r.head)]
        rows += tk_rows
    # runtime keys at each row's final token
    keys = collect(t, "k", list(range(L)), lambda a: a.value[torch.arange(a.value.shape[0]), a.final_index])
    rows += key_orthogonality_rows([keys[layer] for layer in range(L)], "runtime-keys")
    layer_means = {(r.variant, r.layer): r for r in rows if r.head is None}
    default = "token-keys" if t.kind == "tunnel" else "weights"
    first = layer_means[(default, 0)]
    frac_below = sum(layer_means[("weights", layer)].value < 0.20 for layer in range(L)) / L
    summary = {
        "default_definition": default,
        "layer0_mean_abs_cos": first.value,
        "layer0_random_baseline": first.meta["baseline_random"],
        "layer0_vs_random_percent": 100 * (first.value / first.meta["baseline_random"] - 1),
        "fraction_of_layers_weights_below_0.20": frac_below,
        "passes_paper3_criterion": bool(frac_below >= 0.5),
    }
    if "baseline_init" in first.meta:
        summary["layer0_at_initialisation"] = first.meta["baseline_init"]
    from geoprobe.plots import orthogonality_figure

    return ProbeOutput(rows, summary, {"Key orthogonality per layer": orthogonality_figure(rows)})


@PROBES.register("attention_focusing")
def run_attention_focusing(t: ProbeTarget, opts: ProbeOptions, ctx: dict[str, Any]) -> ProbeOutput:
    from geoprobe.probes.attention_focusing import attention_focusing_rows

    _require_attention(t, "attention_focusing")
    L = t.handle.info.n_layers
    # the final query's attention row, reduced to its entropy per head on the fly: [N, H] per layer
    ent = collect(t, "pattern", list(range(L)), lambda a: entropy_bits(
        a.value[torch.arange(a.value.shape[0]), :, a.final_index].float(), dim=-1))
    E = torch.stack([ent[layer] for layer in range(L)], dim=1)  # [N, L, H]
    rows = attention_focusing_rows(E, n_boot=opts.n_boot, seed=opts.seed)
    foc = next(r for r in rows if r.statistic == "focusing_percent")
    summary = {"focusing_percent": foc.value, "ci": [foc.ci_low, foc.ci_high],
               "first_layer_entropy_bits": float(E[:, 0].mean()), "last_layer_entropy_bits": float(E[:, -1].mean()),
               "passes_paper3_criterion": bool(foc.meta["passes"]),
               "monotone_decrease": bool(all(E[:, i].mean() >= E[:, i + 1].mean() for i in range(L - 1)))}
    from geoprobe.plots import attention_entropy_figure

    return ProbeOutput(rows, summary, {"Attention entropy vs depth": attention_entropy_figure(rows)})


@PROBES.register("value_manifold")
def run_value_manifold(t: ProbeTarget, opts: ProbeOptions, ctx: dict[str, Any]) -> ProbeOutput:
    from geoprobe.probes.value_manifold import passes_manifold_criterion, value_manifold, value_manifold_rows

    _require_attention(t, "value_manifold")
    sites = {"values": "v", "residual": "resid_post"}
    if opts.manifold_site not in sites:
        raise ConfigError(f"unknown value-manifold site {opts.manifold_site!r}; valid choices: values, residual")
    layers = default_layers(t, opts)
    vals, ent, positions = values_at_samples(t, layers, opts, site=sites[opts.manifold_site])
    if float(ent.std()) == 0.0:
        raise ConfigError("the reference entropy is constant over the samples, so rho is undefined "
                          "(e.g. the bijection's final key always has 1 bit): use the all_positions variant")
    rows, results = [], {}
    for layer in layers:
        res = value_manifold(vals[layer], ent, site=opts.manifold_site, positions=positions,
                             n_boot=opts.n_boot, seed=opts.seed,
                             kv_expanded=False if opts.manifold_site == "values" else None)
        results[layer] = res
        rows += value_manifold_rows(res, layer=layer)
    ctx["value_manifold"] = {"values": vals, "entropy": ent, "results": results, "site": opts.manifold_site}
    last = results[layers[-1]]
    summary = {
        "layer": layers[-1], "site": opts.manifold_site, "positions": positions, "n": last.n, "d": last.d,
        "pc1_share": last.pc1.estimate, "pc12_share": last.pc12.estimate,
        "participation_ratio": last.participation_ratio,
        "spearman_rho_pc1_entropy": last.rho.estimate, "rho_ci": [last.rho.low, last.rho.high],
        "pc1_sign_flipped": last.sign_flipped,
        "isotropic_null_pc1": last.null.pc1_mean if last.null else None,
        "passes_paper3_criterion": passes_manifold_criterion(last),
        "kv_heads_expanded": False if opts.manifold_site == "values" else None,
    }
    from geoprobe.plots import PCA_TABLE, pca_table, probe_figures

    tables = {PCA_TABLE: pca_table(last.pca.scores[:, :2], ent, layer=layers[-1])}
    return ProbeOutput(rows, summary, probe_figures(rows, tables), tables)


@PROBES.register("qk_alignment")
def run_qk_alignment(t: ProbeTarget, opts: ProbeOptions, ctx: dict[str, Any]) -> ProbeOutput:
    from geoprobe.probes.key_orthogonality import token_keys
    from geoprobe.probes.qk_alignment import consistent_minus_eliminated, qk_alignment_rows, qk_cosine_map

    _require_attention(t, "qk_alignment")
    h, L = t.handle, t.handle.info.n_layers
    layers = list(range(L))
    q_final = collect(t, "q", layers, lambda a: a.value[torch.arange(a.value.shape[0]), a.final_index])
    k_all = collect(t, "k", layers, lambda a: a.value)
    q = torch.stack([q_final[layer] for layer in layers], 1)  # [N, L, H, d]
    k = torch.stack([k_all[layer] for layer in layers], 1)  # [N, L, T, Hkv, d]
    T = k.shape[2]
    causal = torch.arange(T)[None, :] <= t.final_index[:, None]
    key_mask = causal & t.attention_mask.bool()
    heat = qk_cosine_map(q, k, key_mask)  # [N, L, T]
    delta = torch.full((t.n, L), math.nan, dtype=torch.float64)
    scalar_note = "not defined for this target (needs hypotheses with zero posterior at the final position)"
    if t.kind == "tunnel":
        post = t.batch.target_probs[torch.arange(t.n), t.final_index]  # [N, n_hyp]
        consistent, eliminated = post > 0, post == 0
        if bool(eliminated.any()) and bool(consistent.any()):
            emb = token_embeddings(t.handle, t.hypothesis_ids)
            cos_hyp = []
            for layer in layers:
                w = h.attention_weights(layer)
                tk = token_keys(h.input_norm(layer)(emb), w.W_K, w.b_K)  # [Hkv, n_hyp, d]
                cos_hyp.append(qk_cosine_map(q[:, layer:layer + 1], tk.permute(1, 0, 2)[None, None].expand(
                    t.n, 1, -1, -1, -1)))
            cos_hyp = torch.cat(cos_hyp, 1)  # [N, L, n_hyp]
            delta = consistent_minus_eliminated(cos_hyp, consistent, eliminated)
            scalar_note = ("mean cos(final query, token-key of each hypothesis) over hypotheses still consistent "
                           "with the evidence minus over eliminated ones, per layer (heads averaged)")
    rows = qk_alignment_rows(delta, n_boot=opts.n_boot, seed=opts.seed, kv_expanded=True)
    # heatmap rows by position counted back from the final token (aligned for any prompt length)
    rel = _align_right(heat, t.final_index)  # [N, L, T] with column T-1 = final token
    hm_rows = qk_alignment_rows(torch.full((1, L), math.nan), heatmap=torch.nanmean(rel, 0), kv_expanded=True)
    for r in hm_rows:
        if r.statistic == "mean_cos":
            r.position = r.position - (T - 1)  # 0 = final token, -1 = the token before, ...
            r.meta["position"] = "relative to the final token"
            rows.append(r)
    d = torch.nanmean(delta, 0)
    summary = {"scalar": scalar_note,
               "consistent_minus_eliminated_by_layer": [None if math.isnan(x) else float(x) for x in d.tolist()]}
    if not bool(torch.isnan(d).all()):
        summary["sharpens_with_depth"] = bool(d[-1] > d[0])
    from geoprobe.plots import qk_heatmap_figure

    return ProbeOutput(rows, summary, {"Query-key alignment (final query vs keys)": qk_heatmap_figure(rows)})


def _align_right(x: torch.Tensor, final_index: torch.Tensor) -> torch.Tensor:
    """Shift each row of ``x`` [N, L, T] so that its final token sits in the last column (NaN-filled)."""
    N, L, T = x.shape
    out = torch.full_like(x, math.nan)
    for i in range(N):
        f = int(final_index[i])
        out[i, :, T - 1 - f:] = x[i, :, :f + 1]
    return out


@PROBES.register("ablation")
def run_ablation(t: ProbeTarget, opts: ProbeOptions, ctx: dict[str, Any]) -> ProbeOutput:
    from geoprobe.probes.ablation import ablation_rows, rank_ablations

    h, info = t.handle, t.handle.info
    base = calibration_metric(t)
    metric = next(iter(base))
    records = []
    if info.has_attention:
        for layer in range(info.n_layers):
            for head in range(info.n_heads):
                with h.ablate_heads({layer: [head]}):
                    records.append({"layer": layer, "head": head, "kind": "zero",
                                    "baseline": base[metric], "ablated": calibration_metric(t)[metric]})
    for layer in range(info.n_layers):
        kinds = [("bypass_block", h.bypass_layers)]
        if info.has_attention:
            kinds += [("zero_attn", h.zero_attention), ("zero_mlp", h.zero_mlp)]
        for kind, cm in kinds:
            with cm(layer):
                records.append({"layer": layer, "head": None, "kind": kind, "baseline": base[metric],
                                "ablated": calibration_metric(t)[metric]})
    table = rank_ablations(records, metric=metric)
    rows = ablation_rows(table)
    heads = table[table["head"].notna()]
    layers = table[(table["kind"] == "bypass_block")]
    summary = {"metric": metric, "baseline": base[metric]}
    if len(heads):
        top = heads.sort_values("effect", ascending=False).iloc[0]
        summary["top_head"] = {"layer": int(top["layer"]), "head": int(top["head"]), "ratio": float(top["ratio"])}
        l0 = heads[heads["layer"] == 0]
        summary["layer0_head_ratios"] = [round(float(x), 3) for x in l0.sort_values("head")["ratio"]]
    summary["layer_bypass_ratios"] = [round(float(x), 3) for x in layers.sort_values("layer")["ratio"]]
    summary["every_layer_bypass_over_10x"] = bool((layers["ratio"] > 10).all())
    from geoprobe.plots import probe_figures

    return ProbeOutput(rows, summary, probe_figures(rows))


@PROBES.register("entropy_axis")
def run_entropy_axis(t: ProbeTarget, opts: ProbeOptions, ctx: dict[str, Any]) -> ProbeOutput:
    from geoprobe.probes.entropy_axis import (
        axis_entropy_correlation,
        intervention_rows,
        make_operator,
        orthogonal_control,
        projection_sigma,
    )

    _require_attention(t, "entropy_axis")
    if ctx.get("value_manifold", {}).get("site") != "values":  # the axis lives in value space
        from dataclasses import replace

        run_value_manifold(t, replace(opts, manifold_site="values"), ctx)
    vm = ctx["value_manifold"]
    layers = sorted(vm["results"])
    last = t.handle.info.n_layers - 1
    ent = vm["entropy"]

    def measure() -> dict[str, float]:
        out = dict(calibration_metric(t))
        v_last, _, _ = values_at_samples(t, [last], opts)
        res_last = vm["results"].get(last)
        if res_last is not None:
            z = (v_last[last].double() - res_last.pca.mean) / res_last.pca.scale
            out["axis_entropy_corr_last_layer"] = axis_entropy_correlation(z, res_last.axis, ent)
        return out

    baseline = measure()
    rows: list[ResultRow] = []
    plan = [(layer, [layer]) for layer in layers]
    if len(layers) > 1:
        plan.append((None, layers))  # multi-layer: every layer at once
    for label, where in plan:
        for op_name, kw in (("cut", {}), ("keep_only", {}), ("shift", {"k": 1.0}), ("shift", {"k": -1.0})):
            for direction in ("axis", "control"):
                edits = []
                for layer in where:
                    res = vm["results"][layer]
                    u = res.axis if direction == "axis" else orthogonal_control(res.axis, seed=opts.seed + layer)
                    z = (vm["values"][layer].double() - res.pca.mean) / res.pca.scale
                    sigma = projection_sigma(z, u)
                    op = make_operator(op_name, u, sigma=sigma, space="standardised", mean=res.pca.mean,
                                       scale=res.pca.scale, **kw)
                    edits.append((layer, op))
                with _value_operators(t.handle, edits):
                    after = measure()
                name = op_name if op_name != "shift" else f"shift{'+' if kw['k'] > 0 else '-'}1sigma"
                rows += intervention_rows(label, name, baseline, after, direction=direction,
                                          meta={"layers": where})
    cal = next(iter(baseline))  # the calibration metric (first key of calibration_metric)
    cut_rows = [r for r in rows if r.variant == "cut/axis" and r.statistic == cal]
    ctl_rows = [r for r in rows if r.variant == "cut/control" and r.statistic == cal]
    summary = {"metric": cal, "baseline": baseline,
               "cut_axis_relative_change": {str(r.layer): r.meta["relative_change"] for r in cut_rows},
               "cut_control_relative_change": {str(r.layer): r.meta["relative_change"] for r in ctl_rows}}
    from geoprobe.plots import probe_figures

    return ProbeOutput(rows, summary, probe_figures(rows))


class _value_operators:
    """Stack one value-operator context per (layer, op)."""

    def __init__(self, handle: Any, edits: list[tuple[int, Callable]]) -> None:
        import contextlib

        self._stack = contextlib.ExitStack()
        self._handle, self._edits = handle, edits

    def __enter__(self) -> None:
        for layer, op in self._edits:
            self._stack.enter_context(self._handle.value_operator(layer, op))

    def __exit__(self, *exc: Any) -> None:
        self._stack.close()


@PROBES.register("dynamics")
def run_dynamics(t: ProbeTarget, opts: ProbeOptions, ctx: dict[str, Any]) -> ProbeOutput:
    from geoprobe.backends import load_model
    from geoprobe.models.checkpoint import list_checkpoints
    from geoprobe.probes.dynamics import dissociation_summary, dynamics_rows, frame_precision_table
    from geoprobe.probes.key_orthogonality import token_keys
    from geoprobe.probes.value_manifold import value_manifold

    if t.kind != "tunnel" or t.run_dir is None:
        raise ConfigError("probe 'dynamics' needs a wind-tunnel run folder with training checkpoints")
    _require_attention(t, "dynamics")
    ckpts = list_checkpoints(t.run_dir)
    if len(ckpts) < 2:
        raise ConfigError(f"{t.run_dir} has {len(ckpts)} checkpoint(s); dynamics needs at least 2")
    n_probe = min(t.n, 128)
    sub = ProbeTarget(None, "tunnel", t.name, t.tokens[:n_probe], t.attention_mask[:n_probe],
                      t.final_entropy[:n_probe], batch=t.batch.slice(0, n_probe), task=t.task, run_dir=t.run_dir,
                      batch_size=t.batch_size, seed=t.seed)
    steps, patterns, frames, maes, rhos = [], [], [], [], []
    for step, folder in ckpts:
        sub.handle = load_model(folder, backend=t.handle.backend, device=str(t.handle.device))
        L = sub.handle.info.n_layers
        pat = collect(sub, "pattern", list(range(L)), lambda a: a.value.sum(0, keepdim=True))
        patterns.append(torch.stack([pat[layer].sum(0) / n_probe for layer in range(L)]))  # [L, H, T, T]
        emb = token_embeddings(sub.handle, sub.hypothesis_ids)
        w = sub.handle.attention_weights(0)
        tk = token_keys(sub.handle.input_norm(0)(emb), w.W_K, w.b_K)  # [Hkv, n_hyp, d]
        frames.append(tk.transpose(1, 2))  # [Hkv, d, n_hyp]: the subspace spanned by the hypothesis keys
        maes.append(calibration_metric(sub)["entropy_mae_bits"])
        vals, ent, positions = values_at_samples(sub, [L - 1], ProbeOptions(max_samples=1000, seed=opts.seed))
        rhos.append(value_manifold(vals[L - 1], ent, positions=positions, n_boot=50, null_draws=0,
                                   seed=opts.seed).rho.estimate)
        steps.append(step)
    table = frame_precision_table(steps, patterns=patterns, key_frames=frames, mae=maes, rho=rhos)
    summ = dissociation_summary(table)
    rows = dynamics_rows(table, summ)
    summary = {"checkpoints": len(steps), "frame_stable_step": summ.frame_stable_step,
               "attention_threshold_bits": summ.threshold_bits, "mae_at_stable": summ.mae_at_stable,
               "mae_final": summ.mae_final, "mae_improvement_factor_after_stable": summ.mae_improvement_factor,
               "table": table.to_dict("list")}
    from geoprobe.plots import probe_figures

    return ProbeOutput(rows, summary, probe_figures(rows))


# ------------------------------------------------------------------------------------------ orchestration


def run_probes(target: ProbeTarget, probes: list[str] | None = None, options: ProbeOptions | None = None,
               *, init_handle: Any = None, progress: bool = False):
    """Run ``probes`` (default: :data:`DEFAULT_PROBES` for the target's kind) and return a Report.

    ``init_handle`` is the same architecture at initialisation (tunnels: the step-0 checkpoint), used as the
    key-orthogonality baseline.
    """
    from tqdm.auto import tqdm

    from geoprobe.report import Report
    from geoprobe.results import rows_to_frame

    opts = options or ProbeOptions()
    names = probes or DEFAULT_PROBES[target.kind]
    for name in names:
        PROBES.get(name)
    ctx: dict[str, Any] = {"init_handle": init_handle}
    rows, summary, figures, tables, timings = [], {}, {}, {}, {}
    for name in tqdm(names, desc="probes", disable=not progress):
        t0 = time.perf_counter()
        out = PROBES.get(name)(target, opts, ctx)
        timings[name] = round(time.perf_counter() - t0, 2)
        rows += out.rows
        summary[name] = {**out.summary, "paper_claim": PAPER_CLAIMS[target.kind].get(name, "")}
        figures.update(out.figures)
        tables.update(out.tables)
    info = target.handle.info
    manifest = {
        "target": target.name, "kind": target.kind, "model": info.to_dict(), "backend": target.handle.backend,
        "device": str(target.handle.device), "dtype": str(target.handle.dtype), "n_inputs": target.n,
        "seed": opts.seed, "options": {"n_boot": opts.n_boot, "max_samples": opts.max_samples,
                                       "layers": opts.layers},
        "probes": names, "timings_s": timings,
    }
    if target.kind == "tunnel":
        manifest["task"] = {"name": target.task.name, "config": target.task.config(), "stream": "test"}
    from geoprobe.models.checkpoint import versions

    manifest["versions"] = versions()
    verdict = paper3_verdict(summary) if target.kind == "llm" else None
    if verdict:
        summary["verdict"] = verdict
    title = f"geoprobe probes: {target.name}"
    return Report(title=title, rows=rows_to_frame(rows, include_meta=True), summary=summary, figures=figures,
                  manifest=manifest, tables=tables)


def paper3_verdict(summary: dict[str, Any]) -> dict[str, Any] | None:
    """Paper III: 3/3 criteria = "Bayesian geometric signatures", 2/3 = "partial" (SCIENCE.md section 7)."""
    keys = {"value_manifold": "passes_paper3_criterion", "key_orthogonality": "passes_paper3_criterion",
            "attention_focusing": "passes_paper3_criterion"}
    if not all(k in summary for k in keys):
        return None
    passed = {k: bool(summary[k][v]) for k, v in keys.items()}
    n = sum(passed.values())
    label = {3: "Bayesian geometric signatures", 2: "partial"}.get(n, "not observed")
    return {"criteria_passed": n, "of": 3, "label": label, "by_criterion": passed}
