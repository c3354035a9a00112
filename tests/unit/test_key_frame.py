"""Key-frame subspace overlap (planted rotations, scipy's principal angles, the random null r/d) and the
settling-order test of the frame-precision claim (planted settling orders, brute-force permutations)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.linalg import subspace_angles

from geoprobe.errors import ConfigError
from geoprobe.probes.key_frame import frame_overlaps, key_frame_bases, null_normalised, random_overlap


def _orthonormal(rng: np.random.Generator, d: int, k: int) -> np.ndarray:
    q, _ = np.linalg.qr(rng.standard_normal((d, k)))
    return q


def _scipy_overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Mean squared cosine of the principal angles, from scipy (an independent computation)."""
    return float(np.mean(np.cos(subspace_angles(a, b)) ** 2))


def test_planted_rotations_give_exact_principal_angle_overlaps():
    """Per head, one frame direction is turned by theta_h out of the frame (towards an orthogonal direction):
    principal angles {theta_h, 0, 0, 0}, overlap (cos^2 theta_h + 3) / 4; scipy agrees; W_K^h R (any invertible
    re-mixing of the key coordinates) has overlap 1 at full rank."""
    rng = np.random.default_rng(0)
    d_model, heads, d_head = 24, 3, 4
    thetas = [0.3, 0.9, math.pi / 2]
    wk, wk_rot, wk_mix = [], [], []
    for h in range(heads):
        q = _orthonormal(rng, d_model, d_head + 1)  # frame q[:, :4] and an orthogonal direction q[:, 4]
        a = q[:, :d_head] @ rng.standard_normal((d_head, d_head))  # a generic W_K^h spanning the frame
        rot = q[:, :d_head].copy()
        rot[:, 0] = math.cos(thetas[h]) * q[:, 0] + math.sin(thetas[h]) * q[:, d_head]
        b = rot @ rng.standard_normal((d_head, d_head))
        wk.append(a)
        wk_rot.append(b)
        wk_mix.append(a @ rng.standard_normal((d_head, d_head)))
    W = torch.tensor(np.stack(wk, 1))  # [d_model, heads, d_head], the canonical layout
    ref = key_frame_bases(W)
    assert ref.shape == (heads, d_model, d_head)
    got = frame_overlaps(key_frame_bases(torch.tensor(np.stack(wk_rot, 1))), ref)
    want = [(math.cos(t) ** 2 + 3) / 4 for t in thetas]
    assert got.tolist() == pytest.approx(want, abs=1e-12)
    assert got.tolist() == pytest.approx([_scipy_overlap(b, a) for a, b in zip(wk, wk_rot, strict=True)], abs=1e-12)
    assert frame_overlaps(key_frame_bases(torch.tensor(np.stack(wk_mix, 1))), ref).tolist() == pytest.approx(
        [1.0] * heads, abs=1e-12)
    # the other layout (TransformerLens [heads, d_model, d_head]) reads the same frames
    same = key_frame_bases(W.permute(1, 0, 2), layout="head_model_dhead")
    assert frame_overlaps(same, ref).tolist() == pytest.approx([1.0] * heads, abs=1e-12)


def test_top_r_frame_is_the_leading_singular_subspace():
    """W_K^h = U diag(s) V^T with planted U and decreasing s: the rank-2 frame is span(U[:, :2]); its overlap with
    a second matrix equals scipy's on those two directions (not on the whole column space)."""
    rng = np.random.default_rng(1)
    d_model, d_head = 20, 6
    u, v = _orthonormal(rng, d_model, d_head), _orthonormal(rng, d_head, d_head)
    w = u @ np.diag([9.0, 7.0, 3.0, 2.0, 1.0, 0.5]) @ v.T
    u2 = _orthonormal(rng, d_model, d_head)
    w2 = u2 @ np.diag([5.0, 4.0, 1.0, 0.8, 0.6, 0.1]) @ v.T
    f1 = key_frame_bases(torch.tensor(w[:, None, :]), rank=2)
    f2 = key_frame_bases(torch.tensor(w2[:, None, :]), rank=2)
    assert f1.shape == (1, d_model, 2)
    assert _scipy_overlap(f1[0].numpy(), u[:, :2]) == pytest.approx(1.0, abs=1e-12)
    assert float(frame_overlaps(f1, f2)[0]) == pytest.approx(_scipy_overlap(u[:, :2], u2[:, :2]), abs=1e-12)
    assert key_frame_bases(torch.tensor(w[:, None, :]), rank=99).shape == (1, d_model, d_head)  # capped at d_head
    with pytest.raises(ConfigError, match="do not match"):
        frame_overlaps(f1, key_frame_bases(torch.tensor(w[:, None, :])[:10]))


def test_random_subspaces_overlap_r_over_d():
    """The null: frames of independent Gaussian W_K overlap r/d on average (here 4/32 = 0.125)."""
    g = torch.Generator().manual_seed(3)
    d, r, n = 32, 4, 600
    a = key_frame_bases(torch.randn(d, n, r, generator=g, dtype=torch.float64))
    b = key_frame_bases(torch.randn(d, n, r, generator=g, dtype=torch.float64))
    ov = frame_overlaps(a, b)
    se = float(ov.std()) / math.sqrt(n)
    assert random_overlap(r, d) == 0.125
    assert abs(float(ov.mean()) - 0.125) < 4 * se and se < 0.005
    assert null_normalised(0.125, r, d) == 0.0 and null_normalised(1.0, r, d) == 1.0
    assert math.isnan(null_normalised(1.0, d, d))
    with pytest.raises(ConfigError, match="rank must be in 1..32"):
        random_overlap(33, 32)


# ------------------------------------------------------------------------------------------ settling order


def _brute_permutation_p(groups, idx):
    """Every relabelling with the same group sizes; D = max(precision) - max(frame)."""
    n, n_p = len(idx), groups.count("precision")
    obs = max(i for g, i in zip(groups, idx, strict=True) if g == "precision") - \
        max(i for g, i in zip(groups, idx, strict=True) if g == "frame")
    hits = total = 0
    for lab in itertools.combinations(range(n), n_p):
        d = max(idx[k] for k in lab) - max(idx[k] for k in range(n) if k not in lab)
        hits += d >= obs
        total += 1
    return hits / total, obs


def test_settling_order_supported_when_frame_settles_first():
    from geoprobe.scan.revisions import settling_order

    groups = ["frame"] * 4 + ["precision"] * 4
    idx = [1, 1, 0, 1, 4, 4, 4, 4]
    out = settling_order(list(zip(groups, idx, [None] * 8, strict=True)), n_boot=200, seed=0)
    p, obs = _brute_permutation_p(groups, idx)
    assert out["index_difference"] == obs == 3 and out["permutation_p"] == pytest.approx(p)
    assert out["permutation_p"] == pytest.approx(1 / math.comb(8, 4))  # only the observed labelling reaches 3
    assert out["ci"] == [3.0, 3.0] and out["p_not_after"] == 0.0 and out["supported"] is True
    assert out["exact_permutation"] is True and out["n_permutations"] == 70


def test_settling_order_false_when_the_frame_does_not_settle_first():
    """The frame's latest signature settles last: D < 0, the claim fails and is not supported."""
    from geoprobe.scan.revisions import settling_order

    groups = ["frame"] * 3 + ["precision"] * 3
    idx = [1, 2, 4, 2, 3, 1]
    out = settling_order(list(zip(groups, idx, [None] * 6, strict=True)), n_boot=200, seed=0)
    p, obs = _brute_permutation_p(groups, idx)
    assert out["index_difference"] == obs == -1 and out["permutation_p"] == pytest.approx(p)
    assert out["supported"] is False and out["ci"][0] < 0
    # D* <= 0 unless the resample misses frame's 4 and (misses precision's 3 or ...): worked out exactly
    no4, no3 = (2 / 3) ** 3, (2 / 3) ** 3
    want = 1 - no4 + no4 * (7 / 8 * no3 + 1 / 8 * (1 / 3) ** 3)
    assert out["p_not_after"] == pytest.approx(want, abs=0.07)
    # one late precision signature among early ones: D > 0 but the bootstrap over signatures does not hold it
    idx = [1, 1, 1, 4, 0, 1]
    out = settling_order(list(zip(groups, idx, [None] * 6, strict=True)), n_boot=400, seed=0)
    assert out["index_difference"] == 3 and out["supported"] is False
    drop = (2 / 3) ** 3  # P(a resample of the 3 precision signatures misses the late one) -> D = 0
    assert out["p_not_after"] == pytest.approx(drop, abs=0.07)
    # a group without a changing signature: no verdict
    assert settling_order([("frame", 1, None)], n_boot=10)["supported"] is None


def test_frame_precision_uses_unit_curves_and_reports_the_test():
    """Key-frame overlap as a mean over units: identical units give a point interval; the set summary carries
    the order test, and a frame that settles last makes the claim False."""
    from geoprobe.scan.revisions import frame_precision

    steps = [0, 10, 20, 30]
    units = torch.tensor([[0.2, 0.95, 1.0, 1.0], [0.3, 0.97, 1.0, 1.0], [0.25, 0.99, 1.0, 1.0]], dtype=torch.float64)
    curves = {("frame", "key_frame_overlap"): units.mean(0).tolist(),
              ("frame", "focusing_percent"): [0.0, 28.0, 30.0, 30.0],
              ("precision", "value_pc12_share"): [0.2, 0.3, 0.4, 0.6],
              ("precision", "rho_pc1_entropy"): [0.0, 0.1, 0.5, 0.9]}
    sig = pd.DataFrame([{"set": "mixed", "group": g, "signature": s, "step": st, "value": v}
                        for (g, s), vs in curves.items() for st, v in zip(steps, vs, strict=True)])
    table, summary = frame_precision(sig, steps, units={("mixed", "key_frame_overlap"): units}, n_boot=300)
    row = table.set_index("signature").loc["key_frame_overlap"]
    assert row["settling_step"] == 10 and (row["settling_index_ci_low"], row["settling_index_ci_high"]) == (1, 1)
    assert math.isnan(table.set_index("signature").loc["focusing_percent", "settling_index_ci_low"])
    m = summary["mixed"]
    assert (m["frame_settles_at"], m["precision_settles_at"]) == (10, 30)
    assert m["precision_settles_after_frame"] is True and m["precision_settles_after_frame_supported"] is True
    assert m["settling_order"]["index_difference"] == 2
    # one unit keeps turning until the end: the mean overlap settles last, so the claim is False
    late = units.clone()
    late[0] = torch.tensor([0.2, 0.3, 0.4, 1.0])
    curves[("frame", "key_frame_overlap")] = late.mean(0).tolist()
    sig = pd.DataFrame([{"set": "mixed", "group": g, "signature": s, "step": st, "value": v}
                        for (g, s), vs in curves.items() for st, v in zip(steps, vs, strict=True)])
    table, summary = frame_precision(sig, steps, units={("mixed", "key_frame_overlap"): late}, n_boot=300)
    m = summary["mixed"]
    assert m["frame_signatures"]["key_frame_overlap"] == 30 and m["frame_settles_at"] == 30
    assert m["precision_settles_after_frame"] is False and m["precision_settles_after_frame_supported"] is False
    row = table.set_index("signature").loc["key_frame_overlap"]
    assert row["settling_index_ci_low"] < 3 and row["settling_index_ci_high"] == 3  # bootstrap over the units


def test_key_frame_trajectory_without_frames_says_why(tmp_path):
    """An attention-free model's revisions have no key frames (and the trajectory says so); a revision folder
    missing its file is named."""
    import json

    from geoprobe.scan.revisions import Revision, key_frame_trajectory

    revs = [Revision(f"r{i}", "m", f"r{i}", f"r{i}", None) for i in range(2)]
    for r in revs:
        (tmp_path / "revisions" / r.label).mkdir(parents=True)
        (tmp_path / "revisions" / r.label / "manifest.json").write_text(json.dumps({"model_info": {
            "has_attention": False}}))
    assert key_frame_trajectory(tmp_path, revs, [0, 1]) == (None, "an attention-free model: no key frames")
    (tmp_path / "revisions" / "r1" / "manifest.json").write_text(json.dumps({"model_info": {"has_attention": True}}))
    assert key_frame_trajectory(tmp_path, revs, [0, 1]) == (None, "no key frames saved for r0, r1")
