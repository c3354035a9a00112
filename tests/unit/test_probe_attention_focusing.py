"""Attention entropy/focusing: known answers and the chunked q/k path against the dense pattern."""

import math

import pytest
import torch

from geoprobe.probes.attention_focusing import (
    attention_focusing_rows,
    entropy_from_qk,
    focusing_percent,
    focusing_with_ci,
    last_token_positions,
    pattern_entropy_bits,
)


def test_uniform_and_one_hot_rows():
    T = 8
    causal_uniform = torch.tril(torch.ones(T, T))
    causal_uniform = causal_uniform / causal_uniform.sum(-1, keepdim=True)
    pat = torch.stack([causal_uniform, torch.eye(T)]).unsqueeze(0)  # [1, 2 heads, T, T]
    ent = pattern_entropy_bits(pat)
    assert ent[0, 0].tolist() == pytest.approx([math.log2(t + 1) for t in range(T)], abs=1e-6)
    assert ent[0, 1].abs().max() == 0
    assert pattern_entropy_bits(pat, [-1])[0, :, 0].tolist() == pytest.approx([3.0, 0.0], abs=1e-6)


def _dense_reference(q, k, pad=None, window=None):
    B, T, H, d = q.shape
    k = k.repeat_interleave(H // k.shape[2], dim=2)
    s = torch.einsum("bthd,bshd->bhts", q.double(), k.double()) / math.sqrt(d)
    i = torch.arange(T)
    allowed = i[None, :] <= i[:, None]
    if window is not None:
        allowed = allowed & (i[None, :] > i[:, None] - window)
    allowed = allowed[None, None].expand(B, H, T, T)
    if pad is not None:
        allowed = allowed & pad[:, None, None, :]
    pattern = torch.softmax(s.masked_fill(~allowed, -math.inf), -1)
    return pattern


@pytest.mark.parametrize("window", [None, 3])
def test_chunked_qk_matches_dense_with_gqa_and_padding(window):
    g = torch.Generator().manual_seed(0)
    B, T, H, d = 2, 9, 4, 5
    q = torch.randn(B, T, H, d, generator=g) * 2
    k = torch.randn(B, T, 2, d, generator=g) * 2
    pad = torch.ones(B, T, dtype=torch.bool)
    pad[1, :3] = False  # left padding on prompt 1
    pattern = _dense_reference(q, k, pad, window)
    last = last_token_positions(pad)
    pos = torch.stack([torch.tensor([3, 5, 8]), torch.tensor([4, 6, 8])])
    dense = pattern_entropy_bits(pattern, pos)
    chunked = entropy_from_qk(q, k, pos, key_padding_mask=pad, window=window, chunk_size=2)
    assert torch.allclose(chunked.double(), dense, atol=1e-5)
    assert last.tolist() == [8, 8]
    allq = entropy_from_qk(q, k, None, window=window, chunk_size=4)
    assert torch.allclose(allq.double(), pattern_entropy_bits(_dense_reference(q, k, None, window)), atol=1e-5)


def test_last_token_positions_right_padding():
    m = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    assert last_token_positions(m).tolist() == [2, 3]


def test_focusing_and_rows():
    assert focusing_percent(4.0, 1.0) == pytest.approx(75.0)
    g = torch.Generator().manual_seed(0)
    n, L, H = 40, 3, 2
    ent = torch.empty(n, L, H)
    ent[:, 0] = 4.0 + 0.1 * torch.randn(n, H, generator=g)
    ent[:, 1] = 2.0
    ent[:, 2] = 1.0 + 0.1 * torch.randn(n, H, generator=g)
    ci = focusing_with_ci(ent.mean(-1), n_boot=200)
    assert ci.estimate == pytest.approx(75.0, abs=1.0)
    assert ci.low < ci.estimate < ci.high
    rows = attention_focusing_rows(ent, n_boot=200)
    foc = [r for r in rows if r.statistic == "focusing_percent"][0]
    # the pass rule lives in the suites, not in the probe's rows
    assert "passes" not in foc.meta and foc.meta["first_layer"] == 0 and foc.meta["last_layer"] == 2
    layer_rows = [r for r in rows if r.statistic == "attention_entropy_bits" and r.head is None]
    assert [r.layer for r in layer_rows] == [0, 1, 2]
    assert layer_rows[1].value == pytest.approx(2.0)
    assert len([r for r in rows if r.head is not None]) == L * H
