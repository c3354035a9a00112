"""nnsight and plain-torch backends return the same activations and weights as the bridge on the same model."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from geoprobe.backends import attention_out


@pytest.mark.parametrize("family", ["gpt2", "neox", "phi", "llama", "mistral"])
def test_backends_agree_on_every_site(family, tiny_handle):
    ref_h = tiny_handle(family)
    g = torch.Generator().manual_seed(3)
    toks = torch.randint(3, 48, (3, 10), generator=g)
    mask = torch.ones_like(toks)
    mask[0, :3] = 0  # left padding
    mask[2, -2:] = 0  # right padding
    real = mask.bool()
    sites = ref_h.available_sites
    ref = ref_h.run(toks, mask, sites=sites)
    for be in ("nnsight", "torch"):
        h = tiny_handle(family, be)
        assert h.info == ref_h.info
        acts = h.run(toks, mask, sites=sites)
        assert set(acts) == set(ref)
        for key, val in ref.items():
            got = acts[key]
            if key[0] == "pattern":  # compare the rows of real queries
                err = (got - val).permute(0, 2, 1, 3)[real].abs().max().item()
            else:
                err = (got - val)[real].abs().max().item()
            assert err < 2e-5, f"{family} {be} {key}: {err:.2e}"
        for layer in range(h.info.n_layers):
            w, wr = h.attention_weights(layer), ref_h.attention_weights(layer)
            for name in ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V", "b_O"):
                assert torch.allclose(getattr(w, name), getattr(wr, name), atol=1e-6), (family, be, name)
            out = attention_out(acts["z", layer], w.W_O, w.b_O)
            assert torch.equal(h.stacked_weights("W_K")[layer], w.W_K)
            assert (out - acts["attn_out", layer])[real].abs().max() < 2e-5


def test_nnsight_keeps_sdpa_unless_a_pattern_is_requested(tiny_handle):
    h = tiny_handle("llama", "nnsight")
    assert h.hf_model.config._attn_implementation == "sdpa"
    toks = torch.randint(3, 48, (2, 6))
    h.run(toks, sites=["pattern"], layers=[0])
    assert h.hf_model.config._attn_implementation == "sdpa"
    a = h.run(toks, sites=["rot_q", "rot_k", "resid_post"], layers=[1])
    assert a["rot_k", 1].shape == (2, 6, 2, 8)


def test_nnsight_is_imported_lazily():
    code = "import sys, geoprobe.backends; assert 'nnsight' not in sys.modules, 'eager import'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
