"""The real tier: SmolLM2-135M-Instruct (Llama, 30 layers, 9 query / 3 KV heads) from the shared GGUF file.

The model and its conversion cache come from the smollm2_* fixtures in ``tests/conftest.py``.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from geoprobe.backends import attention_out, attention_pattern, attention_z, load_model

pytestmark = pytest.mark.real

SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
LAYERS = [0, 14, 29]


@pytest.fixture(scope="module")
def cache_dir(smollm2_cache_dir) -> Path:
    return smollm2_cache_dir


@pytest.fixture(scope="module")
def smol(smollm2_gguf, cache_dir):
    return load_model(smollm2_gguf, device="cpu", cache_dir=cache_dir)


@pytest.fixture(scope="module")
def prompts(smol):
    texts = ["The capital of France is", "def fibonacci(n):", "Natalia sold clips to 48 of her friends"]
    return smol.tokenize(texts, padding_side="left")


def test_info_provenance_and_top_token(smol, prompts):
    i = smol.info
    assert (i.family, i.n_layers, i.n_heads, i.n_kv_heads, i.d_model, i.d_head, i.vocab_size) == (
        "llama", 30, 9, 3, 576, 64, 49152)
    assert i.source == "gguf" and i.source_detail["sha256"] == SHA256 and i.positional == "rotary"
    toks, mask = prompts
    logits = smol.logits(toks, mask)
    assert smol.tokenizer.decode(logits[0, -1].argmax()) == " Paris"


def test_second_load_uses_the_cached_folder(smol, smollm2_gguf, cache_dir):
    t0 = time.perf_counter()
    again = load_model(smollm2_gguf, device="cpu", cache_dir=cache_dir)
    assert time.perf_counter() - t0 < 15
    assert again.info.source_detail["hf_folder"] == smol.info.source_detail["hf_folder"]


def test_attention_recomputed_from_sites_with_gqa(smol, prompts):
    toks, mask = prompts
    real = mask.bool()
    i = smol.info
    acts = smol.run(toks, mask, sites=["resid_pre", "rot_q", "rot_k", "q", "k", "v", "pattern", "z",
                                       "attn_out"], layers=LAYERS)
    for layer in LAYERS:
        p = attention_pattern(acts["rot_q", layer], acts["rot_k", layer], scale=i.attn_scale, attention_mask=mask)
        assert (p - acts["pattern", layer]).permute(0, 2, 1, 3)[real].abs().max() < 1e-5
        assert (attention_z(p, acts["v", layer]) - acts["z", layer])[real].abs().max() < 1e-4
        W = smol.attention_weights(layer)
        assert (attention_out(acts["z", layer], W.W_O, W.b_O) - acts["attn_out", layer])[real].abs().max() < 1e-4
        x = smol.input_norm(layer)(acts["resid_pre", layer])
        for which in ("q", "k", "v"):  # pre-rotary q/k (TransformerLens hook_q/hook_k) and v
            assert (W.project(x, which) - acts[which, layer])[real].abs().max() < 1e-3, (layer, which)


def test_left_padded_batch_equals_single_prompts(smol, prompts):
    toks, mask = prompts
    batched = smol.run(toks, mask, sites=["resid_post", "v", "logits"], layers=LAYERS, positions="final")
    for row in range(toks.shape[0]):
        ids = toks[row][mask[row].bool()][None]
        single = smol.run(ids, sites=["resid_post", "v", "logits"], layers=LAYERS, positions="final")
        for key, val in single.items():
            scale = max(1.0, val.abs().max().item())  # residuals reach |x| ~ 20 deep in the model
            assert (batched[key][row] - val[0]).abs().max() < 1e-4 * scale, (row, key)


def test_nnsight_agrees_and_head_ablation_restores(smol, smollm2_gguf, prompts, cache_dir):
    toks, mask = prompts
    real = mask.bool()
    nn_h = load_model(smollm2_gguf, backend="nnsight", device="cpu", cache_dir=cache_dir)
    ref = smol.run(toks, mask, sites=["rot_k", "v", "resid_post"], layers=[3])
    got = nn_h.run(toks, mask, sites=["rot_k", "v", "resid_post"], layers=[3])
    for key in ref:
        # relative to the activations' size: residuals reach |x| ~ 20 by layer 3 and the two backends run
        # different attention kernels (3e-4 absolute was seen on a CPU without AVX-512)
        scale = max(1.0, ref[key][real].abs().max().item())
        assert (got[key] - ref[key])[real].abs().max() < 1e-4 * scale, key
    before = smol.logits(toks, mask)
    with smol.ablate_heads({0: list(range(9))}):
        assert (smol.logits(toks, mask) - before).abs().max() > 1e-2
    assert torch.equal(smol.logits(toks, mask), before)
