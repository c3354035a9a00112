"""Interventions: exact restore, null effects where the maths says so, real effects, backend agreement."""

from __future__ import annotations

import shutil

import pytest
import torch

from geoprobe.backends import SiteError, head_means, keep_only, load_model, project_out, shift


def _tokens(n: int = 3, t: int = 8, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, 48, (n, t), generator=g)


def _interventions(h):
    toks = _tokens()
    means = head_means(h, toks, layers=[0])
    u = torch.randn(h.info.value_dim, generator=torch.Generator().manual_seed(0))
    return {
        "zero_heads": lambda: h.ablate_heads({0: [1], 1: [0, 3]}),
        "mean_heads": lambda: h.ablate_heads({0: [2]}, mode="mean", means=means),
        "bypass": lambda: h.bypass_layers(0),
        "attn_only": lambda: h.zero_attention([0, 1]),
        "mlp_only": lambda: h.zero_mlp(1),
        "project_out": lambda: h.value_operator(1, project_out(u)),
        "keep_only": lambda: h.value_operator(0, keep_only(u)),
        "shift": lambda: h.value_operator(0, shift(u, 2.0)),
    }


@pytest.mark.parametrize("family", ["gpt2", "neox", "llama"])
def test_every_intervention_changes_logits_and_restores_exactly(family, tiny_handle):
    h = tiny_handle(family)
    toks = _tokens()
    before = h.logits(toks)
    for name, make in _interventions(h).items():
        with make():
            during = h.logits(toks)
        assert (during - before).abs().max() > 1e-4, f"{name} had no effect"
        assert torch.equal(h.logits(toks), before), f"{name} did not restore the model"
    with pytest.raises(RuntimeError), h.ablate_heads({0: [0]}):  # restore also after an exception
        raise RuntimeError("boom")
    assert torch.equal(h.logits(toks), before) and not h._edits


def _zero_head_copy(src, dst, family: str, layer: int, head: int, d_head: int):
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    state = load_file(str(dst / "model.safetensors"))
    sl = slice(head * d_head, (head + 1) * d_head)
    if family == "gpt2":  # Conv1D c_proj: weight [in = H*d, out]
        state[f"transformer.h.{layer}.attn.c_proj.weight"][sl, :] = 0
    else:
        state[f"model.layers.{layer}.self_attn.o_proj.weight"][:, sl] = 0
    save_file(state, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_ablating_a_head_with_zero_output_weights_changes_nothing(family, tiny_model_dirs, tmp_path):
    folder = _zero_head_copy(tiny_model_dirs[family], tmp_path / family, family, layer=0, head=1, d_head=8)
    h = load_model(folder, device="cpu")
    assert h.attention_weights(0).W_O[1].abs().max() == 0
    toks = _tokens()
    before = h.logits(toks)
    with h.ablate_heads({0: [1]}):
        assert torch.equal(h.logits(toks), before)
    with h.ablate_heads({0: [2]}):
        assert (h.logits(toks) - before).abs().max() > 1e-4


def test_intervention_semantics_on_sites(tiny_handle):
    h = tiny_handle("llama")
    toks = _tokens()
    with h.bypass_layers(1):
        a = h.run(toks, sites=["resid_pre", "resid_post"], layers=[1])
        assert torch.equal(a["resid_pre", 1], a["resid_post", 1])
    with h.zero_attention(0):
        a = h.run(toks, sites=["resid_pre", "resid_mid", "attn_out"], layers=[0])
        assert a["attn_out", 0].abs().max() == 0 and torch.equal(a["resid_pre", 0], a["resid_mid", 0])
    means = head_means(h, toks, layers=[1])
    with h.ablate_heads({1: [3]}, mode="mean", means=means):
        z = h.run(toks, sites=["z"], layers=[1])["z", 1]
        assert torch.allclose(z[:, :, 3], means[1][3].expand_as(z[:, :, 3]))
    u = torch.randn(h.info.value_dim)
    with h.value_operator(0, project_out(u)):
        v = h.run(toks, sites=["v"], layers=[0])["v", 0].flatten(2)
        assert (v @ (u / u.norm())).abs().max() < 1e-5
    with h.value_operator(0, keep_only(u)):
        v = h.run(toks, sites=["v"], layers=[0])["v", 0].flatten(2)
        resid = v - (v @ (u / u.norm()))[..., None] * (u / u.norm())
        assert resid.abs().max() < 1e-5


def test_intervention_errors(tiny_handle):
    h = tiny_handle("llama")
    with pytest.raises(SiteError, match="out of range"):
        h.ablate_heads({0: [9]})
    with pytest.raises(SiteError, match="means"):
        h.ablate_heads({0: [1]}, mode="mean")
    with pytest.raises(SiteError, match="'zero' or 'mean'"):
        h.ablate_heads({0: [1]}, mode="resample")
    with pytest.raises(SiteError, match="expected"), h.value_operator(0, lambda v: v[..., :3]):
        h.logits(_tokens())
    assert not h._edits
    with pytest.raises(SiteError, match="attention"):
        tiny_handle("mamba").ablate_heads({0: [0]})


@pytest.mark.parametrize("family", ["neox", "llama"])
def test_interventions_agree_across_backends(family, tiny_handle):
    """The same edits through the bridge, nnsight and plain torch hooks give the same logits."""
    toks = _tokens()
    mask = torch.ones_like(toks)
    mask[0, :2] = 0  # left padding in row 0
    real = mask.bool()
    results = {}
    for be in ("transformer_lens", "nnsight", "torch"):
        h = tiny_handle(family, be)
        out = {"plain": h.logits(toks, mask)}
        for name, make in _interventions(h).items():
            with make():
                out[name] = h.logits(toks, mask)
        results[be] = out
    for be in ("nnsight", "torch"):
        for name, ref in results["transformer_lens"].items():
            err = (results[be][name] - ref)[real].abs().max().item()
            assert err < 2e-5, f"{family} {be} {name}: {err:.2e}"
