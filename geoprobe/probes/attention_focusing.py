"""Attention entropy and focusing (Paper III).

Per head, the entropy of the attention row of query position t, in bits:
    H_{l,h}(t) = -sum_j a_{l,h}(t, j) log2 a_{l,h}(t, j)      (0 log 0 = 0)
Layer entropy = mean over heads of H_{l,h} (entropies are averaged, never the attention weights).
Focusing across depth (Paper III pass criterion: > 30%), with Hbar_l the mean over prompts of the layer entropy:
    focusing = 100 * (Hbar_first - Hbar_last) / Hbar_first
(ratio of prompt means; its percentile bootstrap 95% CI resamples prompts).

Two paths to H: from a materialised pattern row (eager attention; :func:`pattern_entropy_bits`, the entropy of
a given distribution, :func:`geoprobe.infotheory.entropy_bits`), or from post-rotary q and k without the pattern
(:func:`entropy_from_qk`, which is :func:`geoprobe.attention_stats.attention_stats`: the one implementation of
attention-row entropy from scores, streaming over key blocks with a running log-sum-exp; causal mask, sliding
window, key padding, grouped-query heads).

The probe reads the final query's entropy per head from ``rot_q``/``rot_k`` of the same layer and batch (a
paired :class:`~geoprobe.probes.contract.Need`; ``ProbeOptions.attention_path = "qk"``, the default), so the
model's own forward keeps its SDPA/flash kernel; ``attention_path = "pattern"`` reads the eager pattern row
instead. The two agree to float32 rounding (~1e-6 bits per entropy), not bit for bit. Focusing is a ratio of
a difference: where the first and last layers' entropies are nearly equal (a random model: focusing ~0.001%),
that rounding is a visible relative change of the focusing number while both stay equal in absolute terms.

Nulls (what the focusing criterion is calibrated against, measured with the same code on the same prompts):

- ``init``: the same architecture at initialisation (language models: the same config with fresh seeded
  weights; wind tunnels: the run's step-0 checkpoint when given), i.e. a random model;
- ``shuffled``: the model itself on the prompts with their context shuffled (:func:`shuffle_context`: the
  tokens strictly between each prompt's first and final real token permuted, seeded; the first token, the
  final token, the length and the padding are kept), so any focusing that comes from the tokens' identity or
  the final query alone, not from the order of the context, survives it.

For each null the paired test :func:`geoprobe.stats.paired_statistic_test` compares the focusing statistic of
the model with that of the null over the same prompts: D = focusing(model) - focusing(null), a bootstrap CI
over prompts and a swap-randomisation p-value. ``focusing_above_null`` is True only when the CI of D lies above
0 for every available null, and ``focusing_minus_null_ci_low`` is the smallest lower CI end of D over the nulls
(suites: ``focusing_minus_null_ci_low > 0`` together with the paper's threshold: a deterministic random model
can differ from another random draw or from its shuffled inputs by a tiny but "significant" amount, so
significance alone is not enough). Each null's own focusing (with its CI) is reported beside the measurement as
``init_focusing_percent`` / ``shuffled_focusing_percent`` (``*_focusing_ci_low``), so a suite applies the
paper's rule to them too and flags the criterion as vacuous when a null passes it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from geoprobe.errors import ConfigError
from geoprobe.infotheory import entropy_bits
from geoprobe.results import ResultRow
from geoprobe.stats import bootstrap_ci
from geoprobe.tensor_ops import _positions, entropy_from_qk  # noqa: F401  (re-exported)

PROBE = "attention_focusing"


def last_token_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real token per row of a [B, T] mask (True/1 = real); works for left and right padding."""
    m = attention_mask.bool()
    if not m.any(-1).all():
        raise ConfigError("a prompt has no real tokens (empty attention mask row)")
    T = m.shape[-1]
    idx = torch.arange(T, device=m.device).expand_as(m)
    return torch.where(m, idx, torch.full_like(idx, -1)).amax(-1)


def pattern_entropy_bits(
    pattern: torch.Tensor, query_positions: Sequence[int] | torch.Tensor | None = None
) -> torch.Tensor:
    """Row entropies H = -sum_j a_j log2 a_j of a pattern [B, H, T_q, T_k] at ``query_positions``.

    ``query_positions``: None (all rows), [P] shared, or [B, P] per prompt (negative = from the end).
    Returns [B, H, P] (float32 or float64).
    """
    B, H, Tq, _ = pattern.shape
    pos = _positions(query_positions, B, Tq, pattern.device)  # [B, P]
    rows = torch.gather(pattern, 2, pos[:, None, :, None].expand(B, H, pos.shape[1], pattern.shape[-1]))
    return entropy_bits(rows, dim=-1)


def focusing_percent(h_first: float | torch.Tensor, h_last: float | torch.Tensor) -> float | torch.Tensor:
    """focusing = 100 * (H_first - H_last) / H_first."""
    return 100.0 * (h_first - h_last) / h_first


def focusing_with_ci(
    layer_entropy: torch.Tensor,
    *,
    first_layer: int = 0,
    last_layer: int = -1,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
):
    """Focusing of head-averaged entropies [n_prompts, layers] with a bootstrap CI over prompts.

    Statistic: 100 * (mean_i H_i[first] - mean_i H_i[last]) / mean_i H_i[first]. Returns a
    :class:`geoprobe.stats.BootstrapCI`.
    """
    e = layer_entropy.detach().to(torch.float64)
    pair = torch.stack([e[:, first_layer], e[:, last_layer]], dim=-1)  # [n, 2]
    return bootstrap_ci(pair, focusing_of_pairs, n_boot=n_boot, level=level, seed=seed, vectorized=True)


def focusing_of_pairs(pairs: torch.Tensor) -> torch.Tensor:
    """The focusing statistic of per-prompt (H_first, H_last) pairs ``[..., n, 2]``: 100 * (mean H_first -
    mean H_last) / mean H_first over the prompt axis; returns ``[...]``."""
    m = pairs.mean(-2)
    return 100.0 * (m[..., 0] - m[..., 1]) / m[..., 0]


def focusing_null_test(model_entropy: torch.Tensor, null_entropy: torch.Tensor, *, first_layer: int = 0,
                       last_layer: int = -1, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """The model's focusing against a null's on the same prompts (module docstring, "Nulls").

    ``model_entropy``, ``null_entropy``: head-averaged entropies ``[n_prompts, layers]``, row i = prompt i.
    Returns ``{"focusing_percent", "ci"}`` of the null and ``test``: D = focusing(model) - focusing(null) as
    ``{"estimate", "ci", "p_one_sided", "n", "significant"}`` (:func:`geoprobe.stats.paired_statistic_test`).
    """
    from geoprobe.stats import paired_statistic_test

    def pairs(e: torch.Tensor) -> torch.Tensor:
        e = e.detach().to(torch.float64)
        return torch.stack([e[:, first_layer], e[:, last_layer]], dim=-1)

    own = focusing_with_ci(null_entropy, first_layer=first_layer, last_layer=last_layer, n_boot=n_boot, seed=seed)
    test = paired_statistic_test(pairs(model_entropy), pairs(null_entropy), focusing_of_pairs, n_boot=n_boot,
                                 seed=seed)
    return {"focusing_percent": own.estimate, "ci": [own.low, own.high], "test": test.to_dict()}


def shuffle_context(tokens: torch.Tensor, attention_mask: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """The shuffled control's inputs: per row, the real tokens strictly between the first and the final real
    token are permuted (``torch.Generator`` seeded with ``seed``, one permutation per row in row order); the
    first and final real tokens, the padding and the length are unchanged. Returns new ``[N, T]`` ids."""
    out = tokens.clone()
    m = attention_mask.bool().cpu()
    g = torch.Generator().manual_seed(int(seed))
    for i in range(out.shape[0]):
        idx = torch.nonzero(m[i], as_tuple=True)[0]
        mid = idx[1:-1]
        if mid.numel() > 1:
            perm = mid[torch.randperm(mid.numel(), generator=g)]
            out[i, mid.to(out.device)] = tokens[i, perm.to(out.device)]
    return out


def attention_focusing_rows(
    entropy: torch.Tensor,
    *,
    first_layer: int = 0,
    last_layer: int = -1,
    n_boot: int = 1000,
    seed: int = 0,
    path: str = "pattern",
    layers: Sequence[int] | None = None,
) -> list[ResultRow]:
    """Rows from per-prompt entropies at the final query position.

    Args:
        entropy: [n_prompts, layers, heads] per-head entropies (bits), or [n_prompts, layers] already averaged
            over heads. Heads are averaged per prompt before anything else.
        first_layer, last_layer: indices (into the layer axis) compared by the focusing statistic.
        path: "pattern" or "qk" (how the entropies were computed), recorded in ``meta``.
        layers: actual layer numbers of the layer axis (default 0..L-1).

    Rows: ``attention_entropy_bits`` per (layer, head) (mean over prompts) and per layer (head=None, with a
    bootstrap CI); ``focusing_percent`` (layer=None, with CI, ``meta`` has first/last layer, threshold, passes).
    """
    e = entropy.detach().to(torch.float64)
    per_head = e if e.ndim == 3 else None
    layer_e = e.mean(-1) if e.ndim == 3 else e
    L = layer_e.shape[1]
    names = list(layers) if layers is not None else list(range(L))
    meta = {"path": path, "n_prompts": int(layer_e.shape[0]), "n_boot": n_boot, "seed": seed}
    rows: list[ResultRow] = []
    for li in range(L):
        if per_head is not None:
            for h in range(per_head.shape[2]):
                rows.append(ResultRow(PROBE, "attention_entropy_bits", float(per_head[:, li, h].mean()),
                                      layer=names[li], head=h, meta=dict(meta)))
        col = layer_e[:, li]
        ci = bootstrap_ci(col, n_boot=n_boot, seed=seed) if col.numel() > 1 else None
        rows.append(ResultRow(PROBE, "attention_entropy_bits", float(col.mean()), layer=names[li],
                              ci_low=ci.low if ci else None, ci_high=ci.high if ci else None,
                              meta=dict(meta, aggregate="mean of per-head entropies")))
    foc = focusing_with_ci(layer_e, first_layer=first_layer, last_layer=last_layer, n_boot=n_boot, seed=seed)
    rows.append(ResultRow(
        PROBE, "focusing_percent", foc.estimate, ci_low=foc.low, ci_high=foc.high,
        meta=dict(meta, first_layer=names[first_layer], last_layer=names[last_layer],
                  definition="100*(mean H_first - mean H_last)/mean H_first over prompts"),
    ))
    return rows


# ------------------------------------------------------------------------------------------ the probe


def final_row_entropy(act: Any) -> torch.Tensor:
    """The final query's attention row reduced to its entropy per head (bits): ``[b, H]``."""
    v = act.value
    return entropy_bits(v[torch.arange(v.shape[0], device=v.device), :, act.final_index.to(v.device)].float(), dim=-1)


def final_entropy_from_qk(info: Any) -> Any:
    """``reduce(rot_q activation, rot_k activation) -> [b, H]``: the final query's attention entropy per head
    (bits) from post-rotary q/k with the model's scale, sliding window and key padding (no pattern)."""
    from geoprobe.attention_stats import attention_stats

    def reduce(q_act: Any, k_act: Any) -> torch.Tensor:
        st = attention_stats(q_act.value, k_act.value, scale=float(info.attn_scale),
                             attention_mask=q_act.attention_mask, sliding_window=info.sliding_window,
                             queries=q_act.final_index[:, None])
        return st.entropy_bits[..., 0]

    return reduce


#: how the probe gets the final query's attention row entropy (``ProbeOptions.attention_path``)
ATTENTION_PATHS = ("qk", "pattern")


def _needs(state: Any) -> list[Any]:
    from geoprobe.probes.contract import Need

    path = getattr(state.options, "attention_path", "qk")
    if path not in ATTENTION_PATHS:
        raise ConfigError(f"unknown attention_path {path!r}; valid choices: {', '.join(ATTENTION_PATHS)}")
    if path == "pattern":
        return [Need("pattern", state.all_layers, "final_row_entropy", reduce=final_row_entropy)]
    return [Need("rot_q", state.all_layers, "final_row_entropy_qk", pair="rot_k",
                 reduce=final_entropy_from_qk(state.target.handle.info), bucket_safe=True)]


def _entropies(state: Any, acts: Any) -> torch.Tensor:
    """Per-prompt, per-layer, per-head final-row entropies ``[N, L, H]`` from the collected activations."""
    path = getattr(state.options, "attention_path", "qk")
    ent = (acts.get("pattern", "final_row_entropy") if path == "pattern"
           else acts.get("rot_q", "final_row_entropy_qk"))
    return torch.stack([ent[layer] for layer in range(state.n_layers)], dim=1)


def _entropies_of(state: Any, target: Any) -> torch.Tensor:
    """The same entropies (same needs, same reduction: :func:`_needs` and :func:`_entropies`, whatever path they
    read) for another target: null inputs (the shuffled control)."""
    from geoprobe.probes.contract import ProbeState
    from geoprobe.probes.suite import collect_needs

    st = ProbeState(target=target, options=state.options)
    return _entropies(st, collect_needs(st, _needs(st)))


def null_entropies(state: Any) -> dict[str, tuple[torch.Tensor | None, str]]:
    """``{null: (entropies [N, L, H] or None, what it is)}`` for the nulls of the module docstring. The ``init``
    entropies come from the run's one pass over the initial model (:func:`geoprobe.probes.suite.init_collected`,
    the same needs and reduction as :func:`_needs` / :func:`_entropies`)."""
    from dataclasses import replace

    from geoprobe.probes.suite import init_collected

    t = state.target
    out: dict[str, tuple[torch.Tensor | None, str]] = {}
    acts0 = init_collected(state, PROBE)
    out["init"] = ((_entropies(state, acts0), getattr(state, "_init_source", None) or "given")
                   if acts0 is not None else (None, "no model at initialisation available"))
    shuffled = shuffle_context(t.tokens, t.attention_mask, seed=state.options.seed)
    out["shuffled"] = (_entropies_of(state, replace(t, tokens=shuffled)),
                       f"the model on its prompts with the tokens between the first and the final real token "
                       f"permuted (seed {state.options.seed})")
    return out


def depth_summary(E: torch.Tensor, *, n_boot: int, seed: int) -> dict[str, Any]:
    """``monotone_decrease``: every consecutive layer pair's paired difference H_l - H_{l+1} over prompts has a
    bootstrap CI above 0 (tested against the prompt-to-prompt variation, so near-equal layers do not count as a
    decrease), with the bare comparison of the layer means kept as ``monotone_decrease_naive``."""
    from geoprobe.stats import paired_difference_test

    layer_e = E.double().mean(-1) if E.ndim == 3 else E.double()
    L = layer_e.shape[1]
    tests = [paired_difference_test(layer_e[:, i] - layer_e[:, i + 1], n_boot=n_boot, seed=seed + i)
             for i in range(L - 1)]
    return {"monotone_decrease": bool(tests) and all(t.significant for t in tests),
            "monotone_decrease_naive": bool(all(layer_e[:, i].mean() >= layer_e[:, i + 1].mean()
                                                for i in range(L - 1))),
            "layer_drops_significant": [t.significant for t in tests]}


def _run(state: Any, acts: Any) -> Any:
    from geoprobe.probes.contract import ProbeOutput

    E = _entropies(state, acts)
    opts = state.options
    rows = attention_focusing_rows(E, n_boot=opts.n_boot, seed=opts.seed,
                                   path=getattr(opts, "attention_path", "qk"))
    foc = next(r for r in rows if r.statistic == "focusing_percent")
    summary = {"focusing_percent": foc.value, "ci": [foc.ci_low, foc.ci_high],
               "first_layer_entropy_bits": float(E[:, 0].mean()), "last_layer_entropy_bits": float(E[:, -1].mean()),
               **depth_summary(E, n_boot=opts.n_boot, seed=opts.seed), "focusing_ci_low": foc.ci_low}
    summary.update(null_summary(E, null_entropies(state), n_boot=opts.n_boot, seed=opts.seed, rows=rows))
    return ProbeOutput(rows, summary)


def null_summary(E: torch.Tensor, nulls: dict[str, tuple[torch.Tensor | None, str]], *, n_boot: int, seed: int,
                 rows: list[ResultRow] | None = None) -> dict[str, Any]:
    """Summary keys of the null comparison: per null ``{null}_focusing_percent``, ``{null}_focusing_ci``,
    ``{null}_focusing_ci_low``, ``focusing_minus_{null}`` (the paired test) and ``{null}_model``; ``focusing_above_null`` (the CI of D above
    0 for every available null; None when no null is available), ``focusing_minus_null_ci_low`` (the smallest
    lower CI end of D over the available nulls, None without one) and ``focusing_nulls_used``. Appends one row
    per null (statistic ``focusing_minus_null``, variant = the null) to ``rows`` when given."""
    layer_e = E.double().mean(-1) if E.ndim == 3 else E.double()
    out: dict[str, Any] = {}
    used = []
    for name, (e0, what) in nulls.items():
        out[f"{name}_model"] = what
        if e0 is None:
            out.update({f"{name}_focusing_percent": None, f"{name}_focusing_ci": None,
                        f"{name}_focusing_ci_low": None, f"focusing_minus_{name}": None})
            continue
        e0 = e0.double().mean(-1) if e0.ndim == 3 else e0.double()
        r = focusing_null_test(layer_e, e0, n_boot=n_boot, seed=seed)
        out.update({f"{name}_focusing_percent": r["focusing_percent"], f"{name}_focusing_ci": r["ci"],
                    f"{name}_focusing_ci_low": r["ci"][0], f"focusing_minus_{name}": r["test"]})
        used.append(name)
        if rows is not None:
            t = r["test"]
            rows.append(ResultRow(PROBE, "focusing_minus_null", t["estimate"], ci_low=t["ci"][0], ci_high=t["ci"][1],
                                  variant=name, meta={"null_focusing_percent": r["focusing_percent"],
                                                      "null_focusing_ci": r["ci"], "p_one_sided": t["p_one_sided"],
                                                      "null_model": what, "n_boot": n_boot, "seed": seed}))
    out["focusing_above_null"] = (all(out[f"focusing_minus_{n}"]["significant"] for n in used) if used else None)
    out["focusing_minus_null_ci_low"] = min(out[f"focusing_minus_{n}"]["ci"][0] for n in used) if used else None
    out["focusing_nulls_used"] = used
    return out


def _register() -> None:
    from geoprobe.probes.common import row_figures
    from geoprobe.probes.contract import Probe, register_probe

    register_probe(Probe(
        name=PROBE, run=_run, needs=_needs, init_needs=_needs, default_for=("tunnel", "llm"),
        figures=row_figures(PROBE),
        claims={"tunnel": "Paper I/III: attention entropy falls with depth (focusing)",
                "llm": "Paper III: focusing > 30% (Pythia-410M 82%, Phi-2 86%, Llama-3.2-1B 31%)"},
        description="final-row attention entropy per layer/head; focusing % first -> last layer"))


_register()
