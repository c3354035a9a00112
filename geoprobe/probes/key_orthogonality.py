"""Key orthogonality: how close to orthogonal are the key directions of each head?

Core statistic, for a set of m vectors x_1..x_m: normalise x_i <- x_i / ||x_i||, form the Gram matrix
G_ij = cos(x_i, x_j), and take the **mean absolute off-diagonal cosine**
    O = 1 / (m (m-1)) * sum_{i != j} |G_ij|.
O = 0 for mutually orthogonal vectors, 1 for identical (or anti-parallel) ones; lower = more orthogonal.

Three named definitions of the vectors (every row records which one was used):

- ``"weights"`` (Paper III; default for LLMs): W_K in the canonical layout **[d_model, n_heads, d_head]**
  (``layout="model_head_dhead"``; TransformerLens' [n_heads, d_model, d_head] is ``layout="head_model_dhead"``).
  Head h's matrix W_K^h = W_K[:, h, :] is [d_model, d_head]; its **d_head columns** W_K^h[:, c] (vectors in
  R^{d_model}, the residual-stream directions read by each key coordinate) are the m = d_head vectors.
- ``"token-keys"`` (Paper I; default for wind tunnels): hypothesis-token embeddings E [n_tokens, d_model], already
  passed through the block's input norm and without positions, are mapped to keys k_t^h = E_t W_K^h (+ b_K^h);
  the m = n_tokens key vectors in R^{d_head} are compared (token x token matrix).
- ``"runtime-keys"``: actual key vectors from a forward pass, [n, heads, d_head] (the probe: each prompt's final
  token), **grouped by token id**: each distinct token contributes one vector, the mean of its keys, and the
  m = n_distinct_tokens means are compared. Without grouping, prompts that mostly end in the same token ("?")
  give near-identical keys and O measures token identity, not a key frame; with it, identical tokens are never
  compared with each other, and fewer than two distinct tokens give NaN (no verdict; ``n_distinct_tokens`` is
  in the rows' meta). Not part of the null-calibrated criteria (``weights`` / ``token-keys`` are).

For grouped-query attention the key heads are the n_kv heads (no expansion: repeating a KV head would only
duplicate values). Keys from ``"weights"`` / ``"token-keys"`` / ``"runtime-keys"`` are compared per key head.

Random baseline: for independent isotropic vectors in R^n, E|cos| = Gamma(n/2) / (sqrt(pi) Gamma((n+1)/2)),
approximately sqrt(2 / (pi n)) (n=64: 0.0997). The baseline depends on the dimension n of the **compared
vectors**: d_model for ``"weights"`` (the columns live in R^{d_model}), d_head for the two key definitions.
Rows record ``vector_dim`` and the matching baseline so the comparison is explicit. An "at initialisation"
baseline is the same statistic on a freshly initialised W_K (``init_by_layer``): for wind tunnels the run's
step-0 checkpoint, for language models the same config with fresh weights (:func:`initialised_handle`, seeded).

Null-calibrated criterion (per layer, per definition): the layer's keys are "more orthogonal than chance" when
the upper end of the 95% bootstrap CI of the mean over key heads lies below BOTH the random Gaussian baseline
in the compared dimension and the same layer at initialisation. A fixed threshold such as "< 0.20" is not
null-calibrated: with d_model = 576 a random Gaussian W_K already scores sqrt(2/(pi 576)) = 0.033, so it
passes for any model; the summary therefore reports each definition's per-layer random and initial values
beside the measurement (``*_layer_random_baseline``, ``*_layer_init``) for suites to test the paper's
threshold on them too.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from geoprobe.errors import ConfigError, UnknownNameError
from geoprobe.results import ResultRow
from geoprobe.stats import bootstrap_ci

PROBE = "key_orthogonality"
DEFINITIONS = ("weights", "token-keys", "runtime-keys")
DEFAULT_DEFINITION_LLM = "weights"
DEFAULT_DEFINITION_TUNNEL = "token-keys"
LAYOUTS = ("model_head_dhead", "head_model_dhead")
STATISTIC = "mean_abs_offdiag_cos"


def random_abs_cos_baseline(dim: int, exact: bool = False) -> float:
    """E|cos| between two independent isotropic vectors in R^dim.

    Approximate (default, the value the papers quote): sqrt(2 / (pi dim)). Exact:
    Gamma(dim/2) / (sqrt(pi) Gamma((dim+1)/2)).
    """
    if dim < 1:
        raise ConfigError("dimension must be >= 1")
    if exact:
        return math.exp(math.lgamma(dim / 2) - math.lgamma((dim + 1) / 2)) / math.sqrt(math.pi)
    return math.sqrt(2.0 / (math.pi * dim))


def mean_abs_offdiag_cos(vectors: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """O = mean_{i != j} |cos(x_i, x_j)| for vectors [..., m, n] (m vectors of dimension n), batched over ``...``.

    Zero vectors have cosine 0 with everything. Computed in float64; returns [...] (NaN if m < 2).
    """
    x = vectors.detach().to(torch.float64)
    m = x.shape[-2]
    if m < 2:
        return torch.full(x.shape[:-2], math.nan, dtype=torch.float64)
    x = x / x.norm(dim=-1, keepdim=True).clamp_min(eps)
    g = (x @ x.transpose(-1, -2)).abs()
    off = g.sum((-1, -2)) - torch.diagonal(g, dim1=-2, dim2=-1).sum(-1)
    return off / (m * (m - 1))


def to_canonical_layout(W_K: torch.Tensor, layout: str = "model_head_dhead") -> torch.Tensor:
    """Return W_K as [d_model, heads, d_head] from ``layout`` ("model_head_dhead" or "head_model_dhead")."""
    if W_K.ndim != 3:
        raise ConfigError(f"W_K must be 3-D ([d_model, heads, d_head]), got shape {tuple(W_K.shape)}")
    if layout == "model_head_dhead":
        return W_K
    if layout == "head_model_dhead":
        return W_K.permute(1, 0, 2)
    raise UnknownNameError(f"unknown W_K layout {layout!r}; valid choices: {', '.join(LAYOUTS)}")


def weights_orthogonality(W_K: torch.Tensor, layout: str = "model_head_dhead") -> torch.Tensor:
    """Definition ``"weights"``: per head, mean |off-diagonal cosine| among the d_head columns of W_K^h.

    W_K [d_model, heads, d_head] (canonical layout); vectors = W_K[:, h, c] in R^{d_model}, c = 0..d_head-1.
    Returns [heads].
    """
    w = to_canonical_layout(W_K, layout)
    return mean_abs_offdiag_cos(w.permute(1, 2, 0))  # [heads, d_head, d_model]


def token_keys(
    token_embeddings: torch.Tensor, W_K: torch.Tensor, b_K: torch.Tensor | None = None, layout: str = "model_head_dhead"
) -> torch.Tensor:
    """Keys of hypothesis tokens: k[h, t] = E_t W_K^h + b_K^h, E [n_tokens, d_model] (normed, no positions).

    Returns [heads, n_tokens, d_head] (float64).
    """
    w = to_canonical_layout(W_K, layout).to(torch.float64)
    keys = torch.einsum("tm,mhd->htd", token_embeddings.detach().to(torch.float64), w)
    if b_K is not None:
        keys = keys + b_K.detach().to(torch.float64).reshape(w.shape[1], 1, w.shape[2])
    return keys


def token_key_orthogonality(
    token_embeddings: torch.Tensor, W_K: torch.Tensor, b_K: torch.Tensor | None = None, layout: str = "model_head_dhead"
) -> torch.Tensor:
    """Definition ``"token-keys"``: per head, mean |off-diag| of the token x token cosine matrix of
    k_t = E_t W_K^h + b_K^h. Returns [heads]."""
    return mean_abs_offdiag_cos(token_keys(token_embeddings, W_K, b_K, layout))


def mean_key_per_token(keys: torch.Tensor, token_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Group keys [n, heads, d_head] by ``token_ids`` [n]: (mean key per distinct token [m, heads, d_head] in
    float64, the distinct ids [m] in ascending order)."""
    ids = torch.as_tensor(token_ids).reshape(-1).cpu()
    if ids.shape[0] != keys.shape[0]:
        raise ConfigError(f"runtime keys: {keys.shape[0]} key rows but {ids.shape[0]} token ids")
    uniq, inv = torch.unique(ids, return_inverse=True)
    k = keys.detach().to(torch.float64).cpu()
    sums = torch.zeros(len(uniq), *k.shape[1:], dtype=torch.float64).index_add_(0, inv, k)
    counts = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, inv, torch.ones(len(ids), dtype=torch.float64))
    return sums / counts.view(-1, *([1] * (k.ndim - 1))), uniq


def runtime_key_orthogonality(keys: torch.Tensor, token_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Definition ``"runtime-keys"``: keys [n, heads, d_head] from a forward pass -> per head mean |off-diag
    cos|. With ``token_ids`` [n] (the token at each key's position; the probe always passes them) the keys are
    first averaged per distinct token and the m x m matrix of the distinct tokens is used (NaN if m < 2);
    without them, all n keys are compared as given. Returns [heads]."""
    if keys.ndim != 3:
        raise ConfigError(f"runtime keys must be [n, heads, d_head], got {tuple(keys.shape)}")
    if token_ids is not None:
        keys, _ = mean_key_per_token(keys, token_ids)
    return mean_abs_offdiag_cos(keys.transpose(0, 1))


def key_orthogonality(
    inputs: torch.Tensor,
    definition: str = DEFAULT_DEFINITION_LLM,
    *,
    token_embeddings: torch.Tensor | None = None,
    b_K: torch.Tensor | None = None,
    layout: str = "model_head_dhead",
    token_ids: torch.Tensor | None = None,
) -> tuple[torch.Tensor, int]:
    """Dispatch on ``definition``; ``inputs`` is W_K (weights, token-keys) or keys [n, heads, d_head]
    (runtime-keys, grouped by ``token_ids`` when given). Returns (per-head values [heads], dimension of the
    compared vectors)."""
    if definition == "weights":
        w = to_canonical_layout(inputs, layout)
        return weights_orthogonality(w), w.shape[0]
    if definition == "token-keys":
        if token_embeddings is None:
            raise ConfigError("key orthogonality 'token-keys' needs token_embeddings [n_tokens, d_model]")
        w = to_canonical_layout(inputs, layout)
        return token_key_orthogonality(token_embeddings, w, b_K), w.shape[2]
    if definition == "runtime-keys":
        return runtime_key_orthogonality(inputs, token_ids), inputs.shape[-1]
    raise UnknownNameError(f"unknown key-orthogonality definition {definition!r}; valid choices: {', '.join(DEFINITIONS)}")


def key_orthogonality_rows(
    inputs_by_layer: Mapping[int, torch.Tensor] | Sequence[torch.Tensor],
    definition: str = DEFAULT_DEFINITION_LLM,
    *,
    token_embeddings: torch.Tensor | Mapping[int, torch.Tensor] | None = None,
    biases_by_layer: Mapping[int, torch.Tensor | None] | None = None,
    init_by_layer: Mapping[int, torch.Tensor] | Sequence[torch.Tensor] | None = None,
    layout: str = "model_head_dhead",
    exact_baseline: bool = False,
    token_ids: torch.Tensor | None = None,
) -> list[ResultRow]:
    """Rows for every layer: one per head (``statistic="mean_abs_offdiag_cos"``) and one per layer averaged over
    heads (head=None). ``meta`` holds ``vector_dim``, ``baseline_random`` (E|cos| in that dimension),
    ``ratio_to_random``, ``n_key_heads`` and, when ``init_by_layer`` gives W_K at initialisation (same
    definition, same token embeddings), ``baseline_init``. ``token_embeddings`` may be one tensor shared by all
    layers or a per-layer mapping (each block's own input norm). The variant is the definition name.
    ``token_ids`` [n] (runtime-keys): the token of each key row; keys are grouped per distinct token and meta
    records ``n_keys`` and ``n_distinct_tokens``.
    """
    items = inputs_by_layer.items() if isinstance(inputs_by_layer, Mapping) else enumerate(inputs_by_layer)
    inits = None
    if init_by_layer is not None:
        inits = dict(init_by_layer.items()) if isinstance(init_by_layer, Mapping) else dict(enumerate(init_by_layer))
    rows: list[ResultRow] = []
    for layer, x in items:
        emb = token_embeddings[layer] if isinstance(token_embeddings, Mapping) else token_embeddings
        bias = biases_by_layer.get(layer) if biases_by_layer is not None else None
        vals, dim = key_orthogonality(x, definition, token_embeddings=emb, b_K=bias, layout=layout,
                                      token_ids=token_ids)
        base = random_abs_cos_baseline(dim, exact=exact_baseline)
        init_vals = None
        if inits is not None and layer in inits:
            init_vals, _ = key_orthogonality(inits[layer], definition, token_embeddings=emb, layout=layout)
        common = {"vector_dim": dim, "baseline_random": base, "n_key_heads": int(vals.shape[0])}
        if definition == "runtime-keys" and token_ids is not None:
            common.update(n_keys=int(x.shape[0]), n_distinct_tokens=int(torch.unique(torch.as_tensor(token_ids)).numel()),
                          grouping="mean key per distinct token")
        for h, v in enumerate(vals.tolist()):
            meta = dict(common, ratio_to_random=v / base)
            if init_vals is not None:
                meta["baseline_init"] = float(init_vals[h])
            rows.append(ResultRow(PROBE, STATISTIC, v, layer=layer, head=h, variant=definition, meta=meta))
        mean = float(vals.mean())
        meta = dict(common, ratio_to_random=mean / base, aggregate="mean over heads")
        if init_vals is not None:
            meta["baseline_init"] = float(init_vals.mean())
        rows.append(ResultRow(PROBE, STATISTIC, mean, layer=layer, head=None, variant=definition, meta=meta))
    return rows


def initialised_handle(handle: Any, seed: int = 0) -> Any:
    """The same architecture with freshly initialised weights: ``AutoModelForCausalLM.from_config`` of the
    handle's Hugging Face config under ``torch.manual_seed(seed)`` (the global RNG is restored afterwards),
    wrapped as a plain-torch handle on the CPU in float32. None when the handle has no Hugging Face config."""
    hf = getattr(handle, "hf_model", None)
    cfg = getattr(hf, "config", None)
    if cfg is None:
        return None
    from transformers import AutoModelForCausalLM

    from geoprobe.backends.torch_hooks import hf_torch_handle

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        model = AutoModelForCausalLM.from_config(cfg).float()
    return hf_torch_handle(model, handle.info, handle.tokenizer, torch.device("cpu"), torch.float32)


def init_handle_for(state: Any) -> Any:
    """The run's model at initialisation, shared by the probes of one run: ``state.init_handle`` when given
    (tunnels: the step-0 checkpoint), else for language models :func:`initialised_handle` (cached on the state;
    ``state.init_source`` says which). None when neither exists."""
    if state.init_handle is None and state.kind == "llm" and not getattr(state, "_init_tried", False):
        state._init_tried = True
        state.init_handle = initialised_handle(state.target.handle, seed=state.options.seed)
        if state.init_handle is not None:
            state._init_source = f"same config, fresh weights (from_config, seed {state.options.seed})"
    if state.init_handle is not None and getattr(state, "_init_source", None) is None:
        state._init_source = "given (tunnels: the step-0 checkpoint)"
    return state.init_handle


def null_calibrated_layers(rows: Sequence[ResultRow], definition: str, n_layers: int, *, n_boot: int = 1000,
                           seed: int = 0) -> dict[str, Any]:
    """Per-layer null calibration of one definition from its per-head rows (module docstring).

    Returns lists over layers: ``ci`` ([low, high] of the mean over key heads, percentile bootstrap over heads),
    ``random`` (E|cos| in the compared dimension), ``init`` (mean over heads at initialisation, or None),
    ``below_null`` (CI high < random baseline and < init; init missing -> random only, recorded in
    ``null_used``), and ``fraction_below_null``.
    """
    ci, rand, init, below = [], [], [], []
    for layer in range(n_layers):
        heads = [r for r in rows if r.variant == definition and r.layer == layer and r.head is not None]
        v = torch.tensor([r.value for r in heads], dtype=torch.float64)
        b = bootstrap_ci(v, n_boot=n_boot, seed=seed + layer) if v.numel() > 1 else None
        lo, hi = (b.low, b.high) if b else (float(v.mean()), float(v.mean()))
        ci.append([lo, hi])
        base = heads[0].meta["baseline_random"]
        rand.append(base)
        ini = [r.meta["baseline_init"] for r in heads if "baseline_init" in r.meta]
        init.append(float(sum(ini) / len(ini)) if len(ini) == len(heads) else None)
        ok = hi < base and (init[-1] is None or hi < init[-1])
        below.append(bool(ok))
    return {"ci": ci, "random": rand, "init": init if all(x is not None for x in init) else None,
            "below_null": below, "fraction_below_null": sum(below) / len(below) if below else 0.0,
            "null_used": "random and init" if all(x is not None for x in init) else "random only"}


# ------------------------------------------------------------------------------------------ the probe


def _needs(state: Any) -> list[Any]:
    from geoprobe.probes.contract import Need

    return [Need("rot_k", state.all_layers, "final")]  # runtime keys at each row's final token


def _run(state: Any, acts: Any) -> Any:
    from geoprobe.probes.common import token_embeddings
    from geoprobe.probes.contract import ProbeOutput

    t = state.target
    h, L = t.handle, t.handle.info.n_layers
    weights = [h.attention_weights(layer) for layer in range(L)]
    init = init_handle_for(state)
    init_source = getattr(state, "_init_source", None)
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
    keys = acts.get("rot_k", "final")
    final_ids = t.tokens[torch.arange(t.tokens.shape[0]), t.final_index.to(t.tokens.device)].cpu()
    rows += key_orthogonality_rows([keys[layer] for layer in range(L)], "runtime-keys", token_ids=final_ids)
    for r in rows:
        r.meta["site_name"] = "rot_k" if r.variant == "runtime-keys" else "k"
    layer_means = {(r.variant, r.layer): r for r in rows if r.head is None}
    default = "token-keys" if t.kind == "tunnel" else "weights"
    first = layer_means[(default, 0)]
    summary = {
        "default_definition": default,
        "layer0_mean_abs_cos": first.value,
        "layer0_random_baseline": first.meta["baseline_random"],
        "layer0_vs_random_percent": 100 * (first.value / first.meta["baseline_random"] - 1),
        "weights_layer_mean_abs_cos": [layer_means[("weights", layer)].value for layer in range(L)],
    }
    if t.kind == "tunnel":
        summary["token_keys_layer_mean_abs_cos"] = [layer_means[("token-keys", layer)].value for layer in range(L)]
    if "baseline_init" in first.meta:
        summary["layer0_at_initialisation"] = first.meta["baseline_init"]
        summary["layer0_vs_init_percent"] = 100 * (first.value / first.meta["baseline_init"] - 1)
    summary["layer0_init_vs_random_percent"] = (100 * (first.meta["baseline_init"] / first.meta["baseline_random"] - 1)
                                                if "baseline_init" in first.meta else None)
    summary["init_model"] = init_source
    n_distinct = int(torch.unique(final_ids).numel())
    summary["runtime_keys_n_distinct_final_tokens"] = n_distinct
    summary["runtime_keys_layer_mean_abs_cos"] = [layer_means[("runtime-keys", layer)].value for layer in range(L)]
    summary["runtime_keys_note"] = (
        "final-token keys averaged per distinct final token (identical tokens are not compared); not a criterion"
        + ("; fewer than 2 distinct final tokens, so undefined" if n_distinct < 2 else ""))
    opts = state.options
    for definition in (("weights", "token-keys") if t.kind == "tunnel" else ("weights",)):
        key = definition.replace("-", "_")
        nc = null_calibrated_layers(rows, definition, L, n_boot=opts.n_boot, seed=opts.seed)
        summary[f"{key}_layer_ci"] = nc["ci"]
        summary[f"{key}_layer_random_baseline"] = nc["random"]
        summary[f"{key}_layer_init"] = nc["init"]
        summary[f"{key}_layer_below_null"] = nc["below_null"]
        summary[f"{key}_fraction_below_null"] = nc["fraction_below_null"]
        summary[f"{key}_null_used"] = nc["null_used"]
        summary[f"{key}_ratio_to_random"] = [layer_means[(definition, layer)].value / nc["random"][layer]
                                            for layer in range(L)]
        if definition == default:
            summary["layer0_ci"] = nc["ci"][0]
            summary["layer0_below_null"] = nc["below_null"][0]
        for layer in range(L):
            r = layer_means[(definition, layer)]
            r.meta.update(ci_over_heads=nc["ci"][layer], below_null=nc["below_null"][layer])
    return ProbeOutput(rows, summary)


def _register() -> None:
    from geoprobe.probes.common import row_figures
    from geoprobe.probes.contract import Probe, register_probe

    register_probe(Probe(
        name=PROBE, run=_run, needs=_needs, default_for=("tunnel", "llm"), figures=row_figures(PROBE),
        claims={"tunnel": "Paper I: layer-0 token-key mean |cos| 0.052 vs 0.082 random (-37%)",
                "llm": "Paper III: key orthogonality (weights) < 0.20 in >= 50% of layers"},
        description="mean |off-diagonal cos| of keys per layer/head (weights, token-keys, runtime-keys)"))


_register()
