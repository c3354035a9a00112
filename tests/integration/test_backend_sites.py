"""Correctness proofs for the canonical sites on tiny random models of every supported family.

For each family we recompute every layer's attention from the extracted tensors and match the model's own:
pattern from post-RoPE q/k (scale, GQA expansion, causal/sliding mask) against the hook pattern AND against
plain HF eager ``output_attentions``; z from pattern and v; attn_out from z and W_O; q/k/v from resid_pre
through the block's input norm and the canonical weights. Then padding (left and right) against
per-sequence runs, final-token extraction, early stopping and reducers.
"""

from __future__ import annotations

import pytest
import torch

from geoprobe.backends import (
    SiteError,
    apply_rotary,
    attention_entropy,
    attention_out,
    attention_pattern,
    attention_z,
    final_row_attention,
    final_token_index,
)

ATTN_FAMILIES = ["gpt2", "neox", "llama", "mistral", "phi"]
TOL = 2e-5


def _tokens(n: int = 3, t: int = 9, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, 48, (n, t), generator=g)


def _maxdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


@pytest.mark.parametrize("family", ATTN_FAMILIES)
def test_attention_recomputed_from_sites_matches_model(family, tiny_handle, tiny_hf):
    h = tiny_handle(family)
    info = h.info
    toks = _tokens(t=10)  # > Mistral's sliding window (4): the window matters
    sites = ["resid_pre", "rot_q", "rot_k", "q", "k", "v", "pattern", "z", "attn_out", "logits"]
    acts = h.run(toks, sites=sites)
    ref = tiny_hf(family)(toks, output_attentions=True, output_hidden_states=True)
    assert _maxdiff(acts["logits"], ref.logits) < TOL
    errs = {}
    for layer in range(info.n_layers):
        q, k, v = acts["rot_q", layer], acts["rot_k", layer], acts["v", layer]
        assert q.shape == (3, 10, info.n_heads, info.d_head)
        assert k.shape == v.shape == (3, 10, info.n_kv_heads, info.d_head)
        p = attention_pattern(q, k, scale=info.attn_scale, sliding_window=info.sliding_window)
        errs["pattern_vs_hook"] = _maxdiff(p, acts["pattern", layer])
        errs["pattern_vs_hf"] = _maxdiff(p, ref.attentions[layer])
        errs["z"] = _maxdiff(attention_z(p, v), acts["z", layer])
        W = h.attention_weights(layer)
        assert W.W_Q.shape == (info.d_model, info.n_heads, info.d_head)
        assert W.W_K.shape == W.W_V.shape == (info.d_model, info.n_kv_heads, info.d_head)
        assert W.W_O.shape == (info.n_heads, info.d_head, info.d_model)
        errs["attn_out"] = _maxdiff(attention_out(acts["z", layer], W.W_O, W.b_O), acts["attn_out", layer])
        x = h.input_norm(layer)(acts["resid_pre", layer])
        errs["q_weights"] = _maxdiff(W.project(x, "q"), acts["q", layer])
        errs["k_weights"] = _maxdiff(W.project(x, "k"), acts["k", layer])
        errs["v_weights"] = _maxdiff(W.project(x, "v"), acts["v", layer])
        errs["resid_pre_vs_hf"] = _maxdiff(acts["resid_pre", layer], ref.hidden_states[layer])
        for name, e in errs.items():
            assert e < TOL, f"{family} layer {layer}: {name} off by {e:.2e}"
    if info.positional != "rotary":  # learned positions: q/k are the projections themselves
        assert torch.equal(acts["rot_q", 0], acts["q", 0])
    else:
        assert _maxdiff(acts["rot_k", 0], acts["k", 0]) > 1e-3  # RoPE did rotate something


@pytest.mark.parametrize("family", ["llama", "phi"])
def test_post_rope_keys_match_bridge_rot_hooks_and_hf_rotary(family, tiny_handle):
    """Our rebuilt post-RoPE q/k equal the bridge's hook_rot_q/k (where it fires) and HF's rotary module."""
    h = tiny_handle(family)
    toks = _tokens()
    acts = h.run(toks, sites=["rot_q", "rot_k", "k"], layers=[1])
    _, cache = h.bridge.run_with_cache(toks, names_filter=lambda n: "hook_rot" in n)
    assert _maxdiff(acts["rot_k", 1], cache["blocks.1.attn.hook_rot_k"]) < 1e-6
    assert _maxdiff(acts["rot_q", 1], cache["blocks.1.attn.hook_rot_q"]) < 1e-6
    hf = h.hf_model
    pos = torch.arange(toks.shape[1])[None]
    rot = hf.model.rotary_emb
    cos, sin = rot(torch.zeros(1, toks.shape[1], 1), pos)
    assert _maxdiff(apply_rotary(acts["k", 1], cos, sin), acts["rot_k", 1]) < 1e-6


@pytest.mark.parametrize("family", ["gpt2", "neox", "llama", "mistral"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_batched_padding_equals_per_sequence(family, side, tiny_handle):
    h = tiny_handle(family)
    lengths = [9, 5, 7]
    seqs = [_tokens(1, n, seed=i)[0].tolist() for i, n in enumerate(lengths)]
    sites = ["resid_post", "rot_q", "rot_k", "v", "z", "pattern", "attn_out", "logits"]
    batched = h.run(seqs, sites=sites, padding_side=side)
    fin = batched.final_index
    assert fin.tolist() == ([8, 8, 8] if side == "left" else [n - 1 for n in lengths])
    final = h.run(seqs, sites=sites, padding_side=side, positions="final")
    for i, s in enumerate(seqs):
        single = h.run([s], sites=sites)
        n, t = len(s), batched.attention_mask.shape[1]
        cols = slice(t - n, t) if side == "left" else slice(0, n)
        for key, val in single.items():
            site = key[0]
            if site == "pattern":
                got = batched[key][i, :, cols, cols]
                fin_got = final[key][i, :, cols]
                fin_ref = val[0, :, -1, :]
            else:
                got = batched[key][i, cols]
                fin_got, fin_ref = final[key][i], val[0, -1]
            assert _maxdiff(got, val[0]) < TOL, f"{family} {side} row {i} {key}"
            assert _maxdiff(fin_got, fin_ref) < TOL, f"{family} {side} final row {i} {key}"


def test_final_token_index_left_right_and_empty():
    m = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 0], [1, 1, 1, 1], [0, 1, 0, 0]])
    assert final_token_index(m).tolist() == [3, 2, 3, 1]
    with pytest.raises(SiteError):
        final_token_index(torch.tensor([[0, 0]]))


@pytest.mark.parametrize("family", ["neox", "llama"])
@pytest.mark.parametrize("backend", ["transformer_lens", "nnsight", "torch"])
def test_early_stop_and_layer_subsets_match_full_run(family, backend, tiny_handle):
    h = tiny_handle(family, backend)
    toks = _tokens()
    full = h.run(toks, sites=["resid_post", "rot_k", "logits"])
    last = h.bridge.blocks[1] if backend == "transformer_lens" else h.hf_model.base_model.layers[1]
    calls = []
    hook = last.register_forward_hook(lambda *a: calls.append(1))
    try:
        part = h.run(toks, sites=["resid_post", "rot_k"], layers=[0])
    finally:
        hook.remove()
    assert not calls, "the forward did not stop after the deepest requested layer"
    assert set(part) == {("resid_post", 0), ("rot_k", 0)}
    for key in part:
        assert torch.equal(part[key], full[key])
    assert torch.equal(h.run(toks, sites=["rot_k"], layers=-1)["rot_k", 1], full["rot_k", 1])


def test_reducer_streams_batches_without_caching(tiny_handle):
    h = tiny_handle("llama")
    toks = _tokens(n=7)
    calls = []
    total = {}

    def reducer(a):
        calls.append((a.site, a.layer, a.rows, tuple(a.value.shape)))
        total[a.site, a.layer] = total.get((a.site, a.layer), 0) + a.value.sum(0)

    assert h.run(toks, sites=["resid_post", "v"], layers=[1], reducer=reducer, batch_size=3,
                 positions="final") is None
    assert [c[2] for c in calls if c[0] == "v"] == [slice(0, 3), slice(3, 6), slice(6, 7)]
    assert calls[0][3] == (3, 32) and calls[1][3] == (3, 2, 8)  # final token: [b, d_model], [b, H_kv, d]
    ref = h.run(toks, sites=["resid_post", "v"], layers=[1], positions="final")
    for key, s in total.items():
        assert _maxdiff(s, ref[key].sum(0)) < 1e-5


def test_statistic_path_final_row_and_chunked_entropy(tiny_handle):
    from geoprobe.backends.attention import entropy_bits

    h = tiny_handle("mistral")
    info = h.info
    seqs = [_tokens(1, n, seed=i)[0].tolist() for i, n in enumerate([10, 6])]
    acts = h.run(seqs, sites=["rot_q", "rot_k", "pattern"], layers=[1], padding_side="left")
    mask, fin = acts.attention_mask, acts.final_index
    row = final_row_attention(acts["rot_q", 1], acts["rot_k", 1], fin, scale=info.attn_scale, attention_mask=mask,
                              sliding_window=info.sliding_window)
    b = torch.arange(2)
    assert _maxdiff(row, acts["pattern", 1][b, :, fin, :]) < 1e-6
    ent = attention_entropy(acts["rot_q", 1], acts["rot_k", 1], scale=info.attn_scale, attention_mask=mask,
                            sliding_window=info.sliding_window, chunk=3)
    ref = entropy_bits(acts["pattern", 1])
    real = mask.bool()
    assert _maxdiff(ent.permute(0, 2, 1)[real], ref.permute(0, 2, 1)[real]) < 1e-5


def test_site_errors_are_clear(tiny_handle):
    h = tiny_handle("neox")
    with pytest.raises(SiteError, match="parallel"):
        h.run(_tokens(), sites=["resid_mid"])
    with pytest.raises(SiteError, match="valid sites"):
        h.run(_tokens(), sites=["resid"])
    with pytest.raises(SiteError, match="out of range"):
        h.run(_tokens(), sites=["z"], layers=[5])
    with pytest.raises(SiteError, match="tokenise to nothing"):
        h.tokenize([""])


def test_mamba_loads_without_attention_and_residual_sites_work(tiny_handle, tiny_hf):
    h = tiny_handle("mamba")
    assert h.info.has_attention is False and h.info.n_heads == 0 and h.info.positional == "none"
    toks = _tokens()
    acts = h.run(toks, sites=["resid_pre", "resid_post", "logits"])
    ref = tiny_hf("mamba")(toks, output_hidden_states=True, use_cache=False)
    assert _maxdiff(acts["logits"], ref.logits) < TOL
    assert _maxdiff(acts["resid_post", 0], ref.hidden_states[0]) < TOL  # HF Mamba: hidden_states[i] = block i out
    assert torch.equal(acts["resid_post", 0], acts["resid_pre", 1])
    with pytest.raises(SiteError, match="attention"):
        h.run(toks, sites=["rot_k"])
