"""Ablation ranking and mean-ablation helpers."""

import pytest
import torch

from geoprobe.errors import ConfigError, UnknownNameError
from geoprobe.probes.ablation import HeadMeans, ablation_rows, mean_ablate_head, rank_ablations, zero_head


def test_rank_ablations_effect_ratio_order():
    table = rank_ablations({(0, 1): (0.01, 0.24), (0, 2): (0.01, 0.17), (1, None): (0.01, 0.5), (2, 0): (0.01, 0.009)})
    assert table["rank"].tolist() == [1, 2, 3, 4]
    assert table.loc[0, "layer"] == 1 and table["head"].isna().iloc[0] and table.loc[0, "kind"] == "bypass_block"
    assert table.loc[1, "ratio"] == pytest.approx(24.0)
    assert table.loc[1, "effect"] == pytest.approx(0.23)
    assert table.loc[3, "effect"] < 0
    rows = ablation_rows(table)
    assert len(rows) == 8 and {r.variant for r in rows} == {"zero", "bypass_block"}
    t2 = rank_ablations([(0, 0, 1.0, 2.0, ), {"layer": 1, "head": 0, "baseline": 1.0, "ablated": 3.0, "kind": "mean"}])
    assert t2.loc[0, "kind"] == "mean"
    with pytest.raises(UnknownNameError):
        rank_ablations([{"layer": 0, "head": 0, "baseline": 1, "ablated": 2, "kind": "bogus"}])


def test_head_means_streaming_and_ablate():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(4, 6, 3, 2, generator=g)  # [batch, pos, heads, d_head]
    mask = torch.ones(4, 6, dtype=torch.bool)
    mask[:, -1] = False
    hm, other = HeadMeans(), HeadMeans()
    hm.update(0, z[:2], mask[:2])
    other.update(0, z[2:], mask[2:])
    hm.merge(other)
    want = z[mask].double().mean(0)
    assert torch.allclose(hm.means(0), want)
    assert hm.count(0) == 20 and hm.layers == [0]
    out = mean_ablate_head(z, 1, hm.means(0))
    assert torch.allclose(out[..., 1, :], want[1].float().expand(4, 6, 2))
    assert torch.equal(out[..., 0, :], z[..., 0, :])
    assert zero_head(z, [0, 2])[..., [0, 2], :].abs().max() == 0
    with pytest.raises(ConfigError):
        hm.means(5)
