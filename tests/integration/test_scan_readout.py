"""Batched final-position readouts on tiny models against an independent plain-HF forward, prompt by prompt."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from geoprobe.errors import ConfigError
from geoprobe.scan import sula
from geoprobe.scan.stratify import next_token_entropies, stratify

TEXTS = ["w3 w4 w5", "w7", "w9 w10 w11 w12 w13 w14", "w5 w5", "w20 w21 w22 w23", "w30 w31 w3",
         "w40 w41 w42 w43 w44 w45 w46 w47", "w6 w8"]


def reference_final_probs(hf, tokenizer, text):
    ids = torch.tensor([tokenizer(text, add_special_tokens=True)["input_ids"]])
    with torch.no_grad():
        return torch.softmax(hf(ids).logits[0, -1].double(), -1)


@pytest.mark.parametrize("family,backend", [("llama", "torch"), ("neox", "transformer_lens")])
def test_next_token_entropies_equal_per_prompt_reference(tiny_handle, tiny_hf, family, backend):
    h = tiny_handle(family, backend)
    hf = tiny_hf(family)
    got = next_token_entropies(h, TEXTS, batch_size=3)
    want = []
    for t in TEXTS:
        p = reference_final_probs(hf, h.tokenizer, t)
        want.append(float(-(p * torch.log2(p)).sum()))
    assert np.allclose(got, want, atol=1e-4)
    assert np.allclose(next_token_entropies(h, TEXTS, batch_size=1), got, atol=1e-4)
    assert got.max() <= math.log2(h.info.vocab_size) + 1e-6


def test_stratify_on_model_entropies(tiny_handle):
    h = tiny_handle("llama", "torch")
    texts = [f"w{3 + i % 40} w{3 + (7 * i) % 41} w{3 + (i * i) % 43}" for i in range(20)]
    ent = next_token_entropies(h, texts, batch_size=8)
    st = stratify(ent, n_per_bin=2, n_bins=5, seed=0)
    order = np.argsort(ent, kind="stable")
    assert sorted(order[:4].tolist()) == np.flatnonzero(st.bin_of == 0).tolist()  # 4 lowest entropies


def test_prompt_errors(tiny_handle):
    h = tiny_handle("llama", "torch")
    with pytest.raises(ConfigError, match="prompt list is empty"):
        next_token_entropies(h, [])
    with pytest.raises(ConfigError, match=r"prompt\(s\) \[1\] are empty"):
        next_token_entropies(h, ["w3", "  "])
    long = " ".join(["w3"] * 40)  # the tiny models' context is 32
    with pytest.raises(ConfigError, match="prompt 1 is 40 tokens long, more than the model's context of 32 tokens"):
        next_token_entropies(h, ["w3", long])


def test_sula_readout_equals_reference(tiny_handle, tiny_hf):
    h = tiny_handle("llama", "torch")
    hf = tiny_hf("llama")
    words = tuple(f"w{i}" for i in range(10, 30))
    main = sula.sula_prompts(ks=(0, 2, 4), n_per_k=3, labels=(" w5", " w6"), words=words, seed=0)
    prompts = main + sula.lexical_remap(main, (" w7", " w8"))
    r = sula.read_model(h, prompts, batch_size=4)
    for i, p in enumerate(prompts):
        probs = reference_final_probs(hf, h.tokenizer, p.text)
        a, b = (h.tokenizer(lab, add_special_tokens=False)["input_ids"][-1] for lab in p.labels)
        q = float(probs[a] / (probs[a] + probs[b]))
        assert r.p_l1[i] == pytest.approx(q, abs=1e-5)
        assert r.discarded_mass[i] == pytest.approx(1 - float(probs[a] + probs[b]), abs=1e-5)
        assert r.h_model_bits[i] == pytest.approx(-(q * math.log2(q) + (1 - q) * math.log2(1 - q)), abs=1e-4)


def test_select_prompts_scores_stratifies_and_records(tiny_handle, tmp_path):
    from geoprobe.scan import Candidate, read_prompts_jsonl, select_prompts, write_prompts_jsonl

    h = tiny_handle("llama", "torch")
    cands = [Candidate(f"t-{i}", f"w{3 + i % 40} w{3 + (7 * i) % 41}", "file", "custom") for i in range(30)]
    sel = select_prompts(h, cands, n_per_bin=3, n_bins=5, seed=2, batch_size=7)
    ent = next_token_entropies(h, [c.text for c in cands], batch_size=1)
    assert np.allclose(sel.entropies, ent, atol=1e-4)
    st = stratify(sel.entropies, n_per_bin=3, n_bins=5, seed=2)
    assert [c.id for c in sel.selected] == [cands[i].id for i in st.selected]
    back = read_prompts_jsonl(write_prompts_jsonl(tmp_path / "prompts.jsonl", sel.records))
    assert [i for i, r in enumerate(back) if r.selected] == sorted(st.selected.tolist())
    assert [r.quintile for r in back] == st.bin_of.tolist()
    with pytest.raises(ConfigError, match="got 30, need at least 75"):
        select_prompts(None, cands)  # refused before any model call
