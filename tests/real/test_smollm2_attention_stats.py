"""The real tier: streaming attention statistics on SmolLM2-135M (Llama, 9 query / 3 KV heads, trained weights).

A left-padded batch of real prompts: the streaming entropy and final-row entropy from q/k captured during the
model's own SDPA forward equal the entropy of the eager pattern at three depths to 1e-5.
"""

from __future__ import annotations

import pytest
import torch

from geoprobe.attention_stats import attention_stats
from geoprobe.infotheory import entropy_bits

pytestmark = pytest.mark.real

LAYERS = [0, 14, 29]


@pytest.fixture(scope="module")
def smol_torch(smollm2_torch):
    return smollm2_torch


def test_streaming_entropy_equals_eager_on_smollm2(smol_torch):
    h = smol_torch
    toks, mask = h.tokenize(["The capital of France is", "def fibonacci(n):\n    return",
                             "Natalia sold clips to 48 of her friends in April"], padding_side="left")
    eager = h.run(toks, mask, sites=["pattern"], layers=LAYERS)
    sdpa = h.run(toks, mask, sites=["rot_q", "rot_k"], layers=LAYERS)
    real = mask.bool()
    b = torch.arange(toks.shape[0])
    fi = eager.final_index
    for layer in LAYERS:
        want = entropy_bits(eager["pattern", layer])
        st = attention_stats(sdpa["rot_q", layer], sdpa["rot_k", layer], scale=h.info.attn_scale, attention_mask=mask,
                             block_size=4)
        err = (st.entropy_bits - want).abs().permute(0, 2, 1)[real].max().item()
        assert err < 1e-5, f"layer {layer}: entropy off by {err:.2e}"
        fin = attention_stats(sdpa["rot_q", layer], sdpa["rot_k", layer], scale=h.info.attn_scale, attention_mask=mask,
                              queries="final")
        assert (fin.entropy_bits[:, :, 0] - want[b, :, fi]).abs().max().item() < 1e-5
        assert float(want[b, :, fi].std()) > 0.1  # trained heads differ: not a uniform-attention artefact
