"""QK alignment with planted query/key vectors."""

import math

import pytest
import torch

from geoprobe.probes.qk_alignment import (
    consistent_minus_eliminated,
    qk_alignment_prefixes,
    qk_alignment_rows,
    qk_cosine_map,
)


def test_planted_alignment_and_gqa():
    L, T, H, d = 2, 4, 4, 3
    e = torch.eye(d)
    k = torch.zeros(L, T, 2, d)  # 2 KV heads for 4 query heads (group 2)
    k[:, :, 0] = e[0]  # KV head 0 keys along e0
    k[:, :, 1] = e[1]  # KV head 1 keys along e1
    q = torch.zeros(L, H, d)
    q[:, 0] = q[:, 1] = e[0]  # query heads 0,1 -> KV head 0 -> cos 1
    q[:, 2] = q[:, 3] = e[2]  # query heads 2,3 -> KV head 1 -> cos 0
    cos = qk_cosine_map(q, k)
    assert cos.shape == (L, T)
    assert torch.allclose(cos, torch.full((L, T), 0.5, dtype=torch.float64))


def test_prefix_heatmaps_are_causal():
    L, T, H, d = 3, 5, 2, 4
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(L, T, H, d, generator=g), torch.randn(L, T, H, d, generator=g)
    maps = qk_alignment_prefixes(q, k, [1, 4])
    assert maps.shape == (2, L, T)
    assert torch.isnan(maps[0, :, 2:]).all() and not torch.isnan(maps[0, :, :2]).any()
    assert not torch.isnan(maps[1]).any()
    ref = qk_cosine_map(q[:, 4], k)
    assert torch.allclose(maps[1], ref)
    pad = torch.tensor([False, True, True, True, True])
    assert torch.isnan(qk_alignment_prefixes(q, k, [4], padding_mask=pad)[0, :, 0]).all()


def test_consistent_minus_eliminated_planted():
    # layer 0: no preference; layer 1: aligned with consistent keys only
    cos = torch.tensor([[0.2, 0.2, 0.2, 0.2, math.nan], [0.9, 0.8, 0.1, 0.0, math.nan]], dtype=torch.float64)
    consistent = torch.tensor([True, True, False, False, False])
    delta = consistent_minus_eliminated(cos, consistent)
    assert delta.tolist() == pytest.approx([0.0, 0.8])
    eliminated = torch.tensor([False, False, True, False, False])  # position 3 ignored
    assert consistent_minus_eliminated(cos, consistent, eliminated).tolist() == pytest.approx([0.0, 0.75])
    rows = qk_alignment_rows(torch.stack([delta, delta + 0.1]).float(), heatmap=cos, n_boot=50, kv_expanded=True)
    main = [r for r in rows if r.statistic == "consistent_minus_eliminated_cos"]
    assert [r.layer for r in main] == [0, 1]
    assert main[1].value == pytest.approx(0.85)
    assert main[1].ci_low <= main[1].value <= main[1].ci_high
    assert main[0].meta["kv_expanded"] is True
    assert len([r for r in rows if r.statistic == "mean_cos"]) == 8
