"""Streaming attention statistics from captured q/k equal the eager pattern's, on every attention family.

For each tiny family (GPT-2 learned positions, GPT-NeoX and Phi partial rotary, Llama GQA, Mistral GQA with a
sliding window shorter than the sequences) a left- and right-padded batch runs through the plain-torch backend.
The fixtures' random attention is almost uniform (scores ~0.01), where a wrong scale would go unnoticed, so each
model here gets its attention projections multiplied by 10 (scores x100): rows are then far from uniform.
(1) q, k and the eager ``pattern`` from the same forward: the streaming entropy, the attention mass on
key sets and final-row entropy equal those of the pattern rows to 1e-5; (2) q, k alone from the model's own
SDPA forward (no pattern requested): the same statistics still equal the eager pattern's.
"""

from __future__ import annotations

import pytest
import torch

from geoprobe.attention_stats import attention_stats
from geoprobe.backends import load_model
from geoprobe.infotheory import entropy_bits

FAMILIES = ["gpt2", "neox", "phi", "llama", "mistral"]
TOL = 1e-5


SHARPEN = 10.0


@pytest.fixture(scope="module")
def sharp_handle(tiny_model_dirs):
    """``sharp_handle(family)``: a fresh plain-torch handle whose attention weight matrices are x10."""
    cache = {}

    def get(family):
        if family not in cache:
            h = load_model(tiny_model_dirs[family], backend="torch", device="cpu")
            with torch.no_grad():
                for mod in h.model.modules():
                    if "Attention" in type(mod).__name__:
                        for p in mod.parameters():
                            if p.ndim == 2:
                                p.mul_(SHARPEN)
            cache[family] = h
        return cache[family]

    return get


def _seqs(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 48, (n,), generator=g).tolist() for n in lengths]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("side", ["left", "right"])
def test_streaming_entropy_equals_eager_pattern_entropy(family, side, sharp_handle):
    h = sharp_handle(family)
    info = h.info
    seqs = _seqs([12, 7, 10])
    with_pattern = h.run(seqs, sites=["rot_q", "rot_k", "pattern"], padding_side=side)
    sdpa_only = h.run(seqs, sites=["rot_q", "rot_k"], padding_side=side)
    mask = with_pattern.attention_mask
    real = mask.bool()  # compare real query rows only (padding queries have no defined row)
    g = torch.Generator().manual_seed(1)
    sets = torch.rand(mask.shape[0], 2, mask.shape[1], generator=g) > 0.5
    fi = with_pattern.final_index
    b = torch.arange(mask.shape[0])
    for layer in range(info.n_layers):
        pat = with_pattern["pattern", layer]  # [B, H, T, T] from eager attention
        want = entropy_bits(pat)  # [B, H, T]
        want_mass = torch.einsum("bhqk,bsk->bhqs", pat, sets.float())
        for acts, block in ((with_pattern, 5), (sdpa_only, 3), (sdpa_only, 64)):
            st = attention_stats(acts["rot_q", layer], acts["rot_k", layer], scale=info.attn_scale, attention_mask=mask,
                                 sliding_window=info.sliding_window, key_sets=sets, block_size=block)
            err = (st.entropy_bits - want).abs().permute(0, 2, 1)[real].max().item()
            assert err < TOL, f"{family} {side} layer {layer} block {block}: entropy off by {err:.2e}"
            merr = (st.mass - want_mass).abs().permute(0, 2, 1, 3)[real].max().item()
            assert merr < TOL, f"{family} {side} layer {layer}: key-set mass off by {merr:.2e}"
            fin = attention_stats(acts["rot_q", layer], acts["rot_k", layer], scale=info.attn_scale, attention_mask=mask,
                                  sliding_window=info.sliding_window, queries="final", block_size=block)
            ferr = (fin.entropy_bits[:, :, 0] - want[b, :, fi]).abs().max().item()
            assert ferr < TOL, f"{family} {side} layer {layer}: final-row entropy off by {ferr:.2e}"
        # rows are far from uniform: mean deficit below log2(#visible keys) of at least 0.1 bits
        pos = torch.arange(mask.shape[1])
        n_vis = (mask[:, None, :].bool() & (pos[None, None, :] <= pos[None, :, None])
                 & (pos[None, :, None] - pos[None, None, :] < (info.sliding_window or 10**6))).sum(-1)
        deficit = (torch.log2(n_vis.clamp_min(1).float())[:, None] - want).permute(0, 2, 1)[real]
        assert float(deficit.mean()) > 0.1, f"{family} layer {layer}: attention is nearly uniform"
    if info.sliding_window is not None:  # the window really cuts the rows (else the test proves less)
        assert info.sliding_window < max(len(s) for s in seqs)


def test_wrong_scale_or_missing_window_is_detected(sharp_handle):
    """The comparison has teeth: a wrong scale, or ignoring Mistral's window, misses the eager entropy."""
    h = sharp_handle("mistral")
    info = h.info
    acts = h.run(_seqs([12, 12]), sites=["rot_q", "rot_k", "pattern"])
    want = entropy_bits(acts["pattern", 1])
    q, k = acts["rot_q", 1], acts["rot_k", 1]
    no_window = attention_stats(q, k, scale=info.attn_scale)
    wrong_scale = attention_stats(q, k, scale=2 * info.attn_scale, sliding_window=info.sliding_window)
    assert (no_window.entropy_bits - want).abs().max() > 1e-2
    assert (wrong_scale.entropy_bits - want).abs().max() > 1e-2
