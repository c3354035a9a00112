"""Query-key alignment across layers.

For a prefix ending at query position t, layer l and query head h (with KV head g(h) = h // group under
grouped-query attention, see :mod:`geoprobe.probes.heads`):
    c_l(t, j) = (1/H) sum_h cos(q_{l,h}(t), k_{l,g(h)}(j)),   j <= t   (NaN for j > t or padded keys)
i.e. cosines are computed per head and then averaged over heads (never the vectors). The result for one prefix
is a [layers, positions] heatmap.

Scalar per layer ("consistent minus eliminated"): given a boolean mask of key positions holding hypotheses
still consistent with the evidence and a mask of those already eliminated (positions in neither are ignored),
    Delta_l = mean_{j in consistent} c_l(t, j) - mean_{j in eliminated} c_l(t, j).
It should grow with depth if alignment sharpens onto the live hypotheses.

"Sharpens with depth" is a test, not a comparison of two means: the per-prompt paired difference
d_i = Delta_last(i) - Delta_first(i) gets a percentile bootstrap CI of its mean and a one-sided sign-flip
p-value (:func:`geoprobe.stats.paired_difference_test`); the flag is True only when the CI lies above 0.
An untrained model's differences of +-0.002 with a CI containing 0 therefore give False.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from geoprobe.errors import ConfigError
from geoprobe.probes.heads import expand_kv
from geoprobe.results import ResultRow
from geoprobe.stats import bootstrap_ci, paired_difference_test

PROBE = "qk_alignment"


def _unit_pair(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-12) -> tuple[torch.Tensor, torch.Tensor]:
    a = a / a.norm(dim=-1, keepdim=True).clamp_min(eps)
    b = b / b.norm(dim=-1, keepdim=True).clamp_min(eps)
    return a, b


def qk_cosine_map(
    q_final: torch.Tensor, k: torch.Tensor, key_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Heads-averaged cosine between one query per layer and every key position.

    Args:
        q_final: [..., layers, n_heads, d_head], the query at the prefix's last position.
        k: [..., layers, T, n_kv_heads, d_head]; KV heads are expanded to query heads (repeat-interleave).
        key_mask: optional bool [..., T] (True = use this key; e.g. causal j <= t and not padding).

    Returns:
        [..., layers, T] float64: c_l(j) = mean_h cos(q_{l,h}, k_{l,g(h)}(j)); NaN where ``key_mask`` is False.
    """
    n_heads = q_final.shape[-2]
    k = expand_kv(k.detach().to(torch.float64), n_heads, head_dim=-2)
    qn, kn = _unit_pair(q_final.detach().to(torch.float64), k)
    cos = torch.einsum("...lhd,...lthd->...lth", qn, kn).mean(-1)
    if key_mask is not None:
        cos = cos.masked_fill(~key_mask.bool().to(cos.device).unsqueeze(-2), math.nan)
    return cos


def qk_alignment_prefixes(
    q: torch.Tensor,
    k: torch.Tensor,
    query_positions: Sequence[int] | torch.Tensor,
    padding_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """[layers, positions] heatmaps for several prefixes of one sequence.

    Args:
        q: [layers, T, n_heads, d_head]; k: [layers, T, n_kv_heads, d_head] (one sequence).
        query_positions: the prefix ends t (each row uses keys j <= t).
        padding_mask: optional bool [T], True = real token.

    Returns:
        [P, layers, T]: entry [p, l, j] = c_l(t_p, j), NaN for j > t_p or padded j.
    """
    pos = torch.as_tensor(query_positions, dtype=torch.long, device=q.device)
    T = k.shape[1]
    q_sel = q[:, pos].transpose(0, 1)  # [P, layers, H, d]
    mask = torch.arange(T, device=q.device).unsqueeze(0) <= pos.unsqueeze(1)  # [P, T]
    if padding_mask is not None:
        mask = mask & padding_mask.bool().to(q.device).unsqueeze(0)
    return qk_cosine_map(q_sel, k.unsqueeze(0).expand(len(pos), *k.shape), mask)


def consistent_minus_eliminated(
    cos_map: torch.Tensor, consistent: torch.Tensor, eliminated: torch.Tensor | None = None
) -> torch.Tensor:
    """Delta_l = mean_{j consistent} c_l(j) - mean_{j eliminated} c_l(j) for a heatmap [..., layers, T].

    ``consistent`` / ``eliminated`` are bool [..., T]; when ``eliminated`` is None it is every non-NaN position
    not marked consistent. NaN entries of ``cos_map`` are ignored; an empty group gives NaN. Returns [..., layers].
    """
    consistent = consistent.bool()
    valid = ~torch.isnan(cos_map)
    if eliminated is None:
        eliminated = ~consistent.unsqueeze(-2) & valid
    else:
        eliminated = eliminated.bool().unsqueeze(-2) & valid
    if (consistent.unsqueeze(-2) & eliminated).any():
        raise ConfigError("a key position cannot be both consistent and eliminated")
    cons = consistent.unsqueeze(-2) & valid
    c = torch.nan_to_num(cos_map, nan=0.0)

    def _mean(m: torch.Tensor) -> torch.Tensor:
        cnt = m.sum(-1)
        s = (c * m).sum(-1)
        return torch.where(cnt > 0, s / cnt.clamp_min(1), torch.full_like(s, math.nan))

    return _mean(cons) - _mean(eliminated)


def qk_alignment_rows(
    delta: torch.Tensor,
    *,
    heatmap: torch.Tensor | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    kv_expanded: bool | None = None,
) -> list[ResultRow]:
    """Rows from per-prompt results.

    Args:
        delta: [n_prompts, layers] consistent-minus-eliminated scores; one row per layer with the mean across
            prompts and a percentile bootstrap 95% CI (prompts resampled; prompts with NaN are dropped).
        heatmap: optional [n_prompts, layers, T] (or [layers, T]) cosine maps; adds ``mean_cos`` rows per
            (layer, position), averaged over prompts ignoring NaN.
        kv_expanded: recorded in ``meta`` (whether KV heads were expanded to query heads).
    """
    rows: list[ResultRow] = []
    d = delta.detach().to(torch.float64)
    if d.ndim == 1:
        d = d.unsqueeze(0)
    meta = {} if kv_expanded is None else {"kv_expanded": kv_expanded}
    for layer in range(d.shape[1]):
        col = d[:, layer]
        col = col[~torch.isnan(col)]
        if col.numel() == 0:
            rows.append(ResultRow(PROBE, "consistent_minus_eliminated_cos", math.nan, layer=layer, meta=dict(meta, n=0)))
            continue
        ci = bootstrap_ci(col, n_boot=n_boot, seed=seed) if col.numel() > 1 else None
        rows.append(ResultRow(
            PROBE, "consistent_minus_eliminated_cos", float(col.mean()), layer=layer,
            ci_low=ci.low if ci else None, ci_high=ci.high if ci else None,
            meta=dict(meta, n=int(col.numel()), n_boot=n_boot, seed=seed),
        ))
    if heatmap is not None:
        hm = heatmap.detach().to(torch.float64)
        if hm.ndim == 2:
            hm = hm.unsqueeze(0)
        mean = torch.nanmean(hm, dim=0)
        for layer in range(mean.shape[0]):
            for pos in range(mean.shape[1]):
                v = float(mean[layer, pos])
                if not math.isnan(v):
                    rows.append(ResultRow(PROBE, "mean_cos", v, layer=layer, position=pos, meta=dict(meta)))
    return rows


# ------------------------------------------------------------------------------------------ the probe


def final_key_cosines(q_act: Any, k_act: Any) -> torch.Tensor:
    """``reduce(rot_q activation, rot_k activation) -> [b, T]`` (float64): per row, c(j) = mean over heads of
    cos(final query, key j), the :func:`qk_cosine_map` of the final query, NaN for keys after the final token
    or on padding. Reduced per batch, so the keys of every position are never kept for all prompts.

    With G query heads per KV head, ``(1/H) sum_h qhat_h . khat_{g(h)}(j) = (1/H) sum_kv khat_kv(j) . s_kv`` with
    ``s_kv`` the sum of the unit queries of group kv: one product per KV head, keys never expanded."""
    q, k = q_act.value, k_act.value
    b, _, h, d = q.shape
    hk = k.shape[2]
    fi = q_act.final_index.to(q.device)
    qn, kn = _unit_pair(q[torch.arange(b, device=q.device), fi].to(torch.float64), k.to(torch.float64))
    qsum = qn.reshape(b, hk, h // hk, d).sum(2)  # [b, Hkv, d]
    cos = torch.einsum("bkd,btkd->bt", qsum, kn) / h
    T = k.shape[1]
    key_mask = (torch.arange(T, device=q.device)[None, :] <= fi[:, None]) & q_act.attention_mask.bool().to(q.device)
    return cos.masked_fill(~key_mask, math.nan).cpu()


def _needs(state: Any) -> list[Any]:
    from geoprobe.probes.contract import Need

    layers = state.all_layers
    return [Need("rot_q", layers, "final"),
            Need("rot_q", layers, "final_key_cosines", reduce=final_key_cosines, pair="rot_k", positional=True,
                 bucket_safe=True)]


def align_right(x: torch.Tensor, final_index: torch.Tensor) -> torch.Tensor:
    """Shift each row of ``x`` [N, L, T] so that its final token sits in the last column (NaN-filled)."""
    N, L, T = x.shape
    out = torch.full_like(x, math.nan)
    for i in range(N):
        f = int(final_index[i])
        out[i, :, T - 1 - f:] = x[i, :, :f + 1]
    return out


def _run(state: Any, acts: Any) -> Any:
    from geoprobe.probes.contract import ProbeOutput

    t = state.target
    h, L = t.handle, t.handle.info.n_layers
    layers = list(range(L))
    q_final, cosines = acts.get("rot_q", "final"), acts.get("rot_q", "final_key_cosines")
    q = torch.stack([q_final[layer] for layer in layers], 1)  # [N, L, H, d]
    heat = torch.stack([cosines[layer] for layer in layers], 1)  # [N, L, T]: qk_cosine_map per batch
    T = heat.shape[2]
    delta, scalar_note = hypothesis_delta(t, h, q)
    rows = qk_alignment_rows(delta, n_boot=state.options.n_boot, seed=state.options.seed, kv_expanded=True)
    # heatmap rows by position counted back from the final token (aligned for any prompt length)
    rel = align_right(heat, t.final_index)  # [N, L, T] with column T-1 = final token
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
        summary.update(sharpening_summary(delta, n_boot=state.options.n_boot, seed=state.options.seed))
        init = _init_delta(state)
        if init is not None:
            s0 = sharpening_summary(init, n_boot=state.options.n_boot, seed=state.options.seed)
            summary.update(init_sharpens_with_depth=s0["sharpens_with_depth"],
                           init_sharpening_test=s0["sharpening_test"])
            summary.update(sharpening_vs_init(delta, init, n_boot=state.options.n_boot, seed=state.options.seed))
        test = summary["sharpening_test"]
        rows.append(ResultRow(PROBE, "last_minus_first_layer", test["estimate"], ci_low=test["ci"][0],
                              ci_high=test["ci"][1], meta={"p_one_sided": test["p_one_sided"], "n": test["n"],
                                                           "test": "paired over prompts; sign-flip p"}))
    return ProbeOutput(rows, summary)


def hypothesis_delta(t: Any, h: Any, q: torch.Tensor) -> tuple[torch.Tensor, str]:
    """Per-prompt consistent-minus-eliminated scores [N, L] of handle ``h`` from its final queries ``q``
    [N, L, H, d] (NaN when the target has no eliminated hypotheses), and a note saying what was measured."""
    from geoprobe.probes.common import token_embeddings
    from geoprobe.probes.key_orthogonality import token_keys

    L = q.shape[1]
    layers = list(range(L))
    delta = torch.full((t.n, L), math.nan, dtype=torch.float64)
    scalar_note = "not defined for this target (needs hypotheses with zero posterior at the final position)"
    if t.kind == "tunnel":
        post = t.batch.target_probs[torch.arange(t.n), t.final_index]  # [N, n_hyp]
        consistent, eliminated = post > 0, post == 0
        if bool(eliminated.any()) and bool(consistent.any()):
            emb = token_embeddings(h, t.hypothesis_ids)
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
    return delta, scalar_note


def _init_delta(state: Any) -> torch.Tensor | None:
    """The same scores on the model at initialisation (same inputs), or None (no initial model, or an LLM
    target where the score is undefined)."""
    from dataclasses import replace

    from geoprobe.probes.suite import init_collected

    t = state.target
    if t.kind != "tunnel":
        return None
    acts0 = init_collected(state, PROBE)
    if acts0 is None:
        return None
    init = state.init_handle
    t0 = replace(t, handle=init)
    layers = list(range(init.info.n_layers))
    qf = acts0.get("rot_q", "final")
    q0 = torch.stack([qf[layer] for layer in layers], 1)
    delta, _ = hypothesis_delta(t0, init, q0)
    return None if bool(torch.isnan(delta).all()) else delta


def sharpening_summary(delta: torch.Tensor, *, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Summary keys for "alignment sharpens with depth" from per-prompt scores ``delta`` [n_prompts, layers].

    ``sharpens_with_depth``: the bootstrap 95% CI of mean(Delta_last - Delta_first) over prompts lies above 0;
    ``sharpening_test``: {estimate, ci, p_one_sided, n, significant};
    ``sharpens_with_depth_naive``: the bare comparison mean(Delta_last) > mean(Delta_first) (legacy, no
    uncertainty; kept only to show what the old flag said).
    """
    d = delta.detach().to(torch.float64)
    test = paired_difference_test(d[:, -1] - d[:, 0], n_boot=n_boot, seed=seed)
    m = torch.nanmean(d, 0)
    return {"sharpens_with_depth": test.significant, "sharpening_test": test.to_dict(),
            "sharpens_with_depth_naive": bool(m[-1] > m[0])}


def sharpening_vs_init(delta: torch.Tensor, init: torch.Tensor, *, n_boot: int = 1000, seed: int = 0
                       ) -> dict[str, Any]:
    """The sharpening of the model against the model at initialisation on the same prompts: per prompt
    s_i = (Delta_last - Delta_first)(model) - (Delta_last - Delta_first)(init), tested with
    :func:`geoprobe.stats.paired_difference_test`. ``sharpening_minus_init`` = {estimate, ci, p_one_sided, n,
    significant}; ``sharpens_beyond_init`` = its CI above 0."""
    d = delta.detach().to(torch.float64)
    d0 = init.detach().to(torch.float64)
    test = paired_difference_test((d[:, -1] - d[:, 0]) - (d0[:, -1] - d0[:, 0]), n_boot=n_boot, seed=seed)
    return {"sharpening_minus_init": test.to_dict(), "sharpens_beyond_init": test.significant}


def _init_needs(state: Any) -> list[Any]:
    """The initial model's final queries at every layer, for :func:`_init_delta` (tunnels only)."""
    from geoprobe.probes.contract import Need

    return [Need("rot_q", state.all_layers, "final")] if state.kind == "tunnel" else []


def _register() -> None:
    from geoprobe.probes.common import row_figures
    from geoprobe.probes.contract import Probe, register_probe

    register_probe(Probe(
        name=PROBE, run=_run, needs=_needs, init_needs=_init_needs, default_for=("tunnel", "llm"),
        figures=row_figures(PROBE),
        claims={"tunnel": "Paper I: alignment to still-consistent hypotheses sharpens with depth",
                "llm": "Paper III: query-key alignment sharpens across depth"},
        description="cos(final query, keys) per layer; consistent-minus-eliminated hypotheses (tunnels)"))


_register()
