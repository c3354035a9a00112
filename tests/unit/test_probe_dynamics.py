"""Frame-precision dissociation on synthetic checkpoint sequences."""

import math

import pytest
import torch

from geoprobe.probes.dynamics import (
    attention_distance,
    dissociation_summary,
    dynamics_rows,
    frame_precision_table,
    js_divergence_bits,
    stabilised_step,
    subspace_overlap,
)


def test_js_known_values():
    p = torch.tensor([1.0, 0.0])
    q = torch.tensor([0.0, 1.0])
    assert float(js_divergence_bits(p, q)) == pytest.approx(1.0)
    assert float(js_divergence_bits(p, p)) == 0.0
    a, b = torch.tensor([0.5, 0.5]), torch.tensor([0.9, 0.1])
    m = (a + b) / 2
    want = 0.5 * sum(x * math.log2(x / y) for x, y in zip(a, m, strict=True)) + 0.5 * sum(
        x * math.log2(x / y) for x, y in zip(b, m, strict=True))
    assert float(js_divergence_bits(a, b)) == pytest.approx(float(want))


def test_subspace_overlap():
    e = torch.eye(6, dtype=torch.float64)
    assert subspace_overlap(e[:, :2], e[:, :2] @ torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)) == pytest.approx(1.0)
    assert subspace_overlap(e[:, :2], e[:, 2:4]) == pytest.approx(0.0)
    half = torch.stack([e[:, 0], (e[:, 1] + e[:, 2]) / math.sqrt(2)], 1)
    assert subspace_overlap(e[:, :2], half) == pytest.approx((1 + 0.5) / 2)
    assert subspace_overlap(e[:, :2], half, "principal_cosine") == pytest.approx((1 + math.sqrt(0.5)) / 2)


def _pattern(w):
    """[1 layer, 1 head, 2, 2] causal pattern whose second row is (w, 1-w)."""
    return torch.tensor([[[[1.0, 0.0], [w, 1 - w]]]])


def test_frame_stabilises_then_mae_improves():
    steps = [0, 100, 200, 400, 800]
    ws = [0.0, 0.3, 0.49, 0.5, 0.5]  # pattern converges by step 200
    patterns = [_pattern(w) for w in ws]
    e = torch.eye(4, dtype=torch.float64)
    frames = [e[:, :2] + t * e[:, 2:] for t in (1.0, 0.0, 0.0, 0.0, 0.0)]
    mae = [1.0, 0.4, 0.2, 0.05, 0.005]
    rho = [0.1, 0.5, 0.7, 0.8, 0.9]
    table = frame_precision_table(steps, patterns=patterns, key_frames=[f.unsqueeze(0) for f in frames], mae=mae, rho=rho)
    assert table["attn_js_bits"].iloc[-1] == 0.0
    assert table["key_frame_overlap"].tolist() == pytest.approx([0.5, 1, 1, 1, 1])
    d, per_layer = attention_distance(patterns[0], patterns[-1])
    # row 0 identical; row 1 JS((0,1)||(.5,.5)) = 1 - 0.5*H_b(.25)... computed directly:
    assert d == pytest.approx(0.5 * float(js_divergence_bits(torch.tensor([0.0, 1.0]), torch.tensor([0.5, 0.5]))))
    s = dissociation_summary(table, threshold_bits=0.01)
    assert s.frame_stable_step == 200
    assert s.mae_improvement_factor == pytest.approx(40.0)
    assert s.rho_final == 0.9
    rows = dynamics_rows(table, s)
    assert [r.value for r in rows if r.statistic == "frame_stable_step"] == [200.0]
    assert stabilised_step(steps, [0.5, 0.0, 0.5, 0.0, 0.0], 0.1) == 400  # a relapse resets the clock
    assert stabilised_step(steps, [0.1, 0.9, 0.95, 0.96, 0.99], 0.9, direction="above") == 200
