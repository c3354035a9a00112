"""``positions="final"`` logits: every HF backend unembeds each row's final position only ([B, 1, vocab] instead
of [B, T, vocab]) and the numbers equal the full path's at those positions (to float32 rounding: the head's
matmul over 1 row instead of T may block its sums differently)."""

import pytest
import torch

TEXTS = ["w3 w4 w5 w9 w11 w12 w13", "w7 w8", "w20 w21 w22 w23 w24"]


@pytest.mark.parametrize("family", ["llama", "gpt2", "neox"])
@pytest.mark.parametrize("backend", ["torch", "nnsight", "transformer_lens"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_final_logits_unembed_only_the_final_rows(tiny_handle, family, backend, side, monkeypatch):
    h = tiny_handle(family, backend)
    toks, mask = h.tokenize(TEXTS, padding_side=side)
    full = h.run(toks, mask, sites=["logits"], batch_size=2)["logits"]  # [B, T, V]
    shapes = []
    inner = type(h)._forward

    def spy(self, *a, **kw):
        out = inner(self, *a, **kw)
        shapes.append(tuple(out.shape))
        return out

    monkeypatch.setattr(type(h), "_forward", spy)
    fin = h.run(toks, mask, sites=["logits"], positions="final", batch_size=2)["logits"]
    assert shapes == [(2, 1, h.info.vocab_size), (1, 1, h.info.vocab_size)]  # never [b, T, vocab]
    n_real = torch.tensor([len(t.split()) for t in TEXTS])
    last = n_real - 1 if side == "right" else torch.full((3,), toks.shape[1] - 1)
    torch.testing.assert_close(fin, full[torch.arange(3), last], rtol=1e-6, atol=1e-6)
    with h.ablate_heads({0: [1]}):  # under an intervention too
        edited_full = h.run(toks, mask, sites=["logits"], batch_size=2)["logits"]
        edited = h.run(toks, mask, sites=["logits"], positions="final", batch_size=2)["logits"]
    torch.testing.assert_close(edited, edited_full[torch.arange(3), last], rtol=1e-6, atol=1e-6)
    assert (edited - fin).abs().max() > 1e-4  # the ablation changed them
    # with layer sites in the same pass the final logits are the same too
    both = h.run(toks, mask, sites=["resid_post", "logits"], layers=[1], positions="final", batch_size=2)
    assert torch.equal(both["logits"], fin)
