"""The scan's prompt side on the real SmolLM2-135M-Instruct (GGUF): entropy spread, readouts, SULA labels.

Numbers measured when this was written (300 candidates per pool, seed 0, next-token entropy in bits,
quantiles 10/50/90 %): code 0.18/3.50/6.91, knowledge 0.59/4.14/7.82, math 0.96/3.05/4.57, prose
0.80/4.82/8.71, mixed 0.88/3.79/7.41 (``benchmarks/scan_pool_entropies.py``). Here a reduced pool keeps the
test to a few seconds.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from geoprobe.scan import build_pool, next_token_entropies, stratify, sula

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def smol(smollm2_torch):
    return smollm2_torch


def full_path_final_probs(handle, text):
    """Independent path: the whole [1, T, vocab] logits of one unpadded prompt, last row."""
    ids = handle.tokenizer(text, add_special_tokens=True)["input_ids"]
    return torch.softmax(handle.logits([ids])[0, -1].double(), -1)


def test_pool_entropies_spread_and_match_the_unbatched_path(smol):
    pool = build_pool("mixed", 60, seed=0)
    h = next_token_entropies(smol, [c.text for c in pool], batch_size=16)
    for i in (0, 17, 33, 59):  # batched, left-padded, final-only == one prompt, full logits
        p = full_path_final_probs(smol, pool[i].text)
        assert h[i] == pytest.approx(float(-(p * torch.log2(p.clamp_min(1e-300))).sum()), abs=2e-3)
    assert h.min() < 0.5 and h.max() > 6.0 and np.percentile(h, 90) - np.percentile(h, 10) > 4.0
    st = stratify(h, n_per_bin=4, seed=0)
    assert [b.n_candidates for b in st.bins] == [12] * 5
    assert st.bins[0].max_entropy < 2.0 and st.bins[4].min_entropy > 4.0
    det = np.median([x for x, c in zip(h, pool, strict=True) if c.ending == "determined"])
    opn = np.median([x for x, c in zip(h, pool, strict=True) if c.ending == "open"])
    assert det + 1.0 < opn


def test_sula_labels_and_readout(smol):
    pairs = sula.choose_label_pairs(smol.tokenizer)
    assert pairs == [(" lum", " pim"), (" fum", " vex")]  # " dax"/" wug" are two tokens here
    main = sula.sula_prompts(ks=(0, 8), n_per_k=6, labels=pairs[0], seed=0)
    prompts = main + sula.shuffle_labels(main, seed=1)
    r = sula.read_model(smol, prompts, batch_size=8)
    a, b = sula.label_token_ids(smol.tokenizer, pairs[0])
    for i in (0, 7, 13, 22):
        p = full_path_final_probs(smol, prompts[i].text)
        assert r.p_l1[i] == pytest.approx(float(p[a] / (p[a] + p[b])), abs=2e-3)
        assert r.discarded_mass[i] == pytest.approx(1.0 - float(p[a] + p[b]), abs=2e-3)
    assert np.all((r.discarded_mass >= 0) & (r.discarded_mass <= 1))
    # with 8 consistent labels the model follows the majority label
    k8 = [i for i, p in enumerate(prompts) if p.condition == "main" and p.k == 8]
    follows = [(r.p_l1[i] > 0.5) == (prompts[i].m > 4) for i in k8 if prompts[i].m != 4]
    assert np.mean(follows) >= 0.8
