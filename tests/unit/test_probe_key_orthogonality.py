"""Key orthogonality: known answers for the three definitions and the random baseline."""

import math

import pytest
import torch

from geoprobe.errors import ConfigError, UnknownNameError
from geoprobe.probes.key_orthogonality import (
    key_orthogonality_rows,
    mean_abs_offdiag_cos,
    random_abs_cos_baseline,
    runtime_key_orthogonality,
    token_key_orthogonality,
    weights_orthogonality,
)
from geoprobe.results import rows_to_frame


def test_baseline_values():
    assert random_abs_cos_baseline(64) == pytest.approx(0.0997, abs=1e-4)
    assert random_abs_cos_baseline(64, exact=True) == pytest.approx(0.0997, rel=0.01)


def test_orthogonal_and_identical_vectors():
    assert float(mean_abs_offdiag_cos(torch.eye(5))) == 0.0
    same = torch.ones(4, 7) * torch.tensor([1.0, -1.0, 2.0, 3.0]).unsqueeze(1)  # parallel and anti-parallel
    assert float(mean_abs_offdiag_cos(same)) == pytest.approx(1.0)


def test_weights_definition_uses_d_head_columns():
    d_model, d_head = 16, 4
    q, _ = torch.linalg.qr(torch.randn(d_model, d_model, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    W = torch.stack([q[:, :d_head], q[:, :1].repeat(1, d_head)], dim=1)  # [d_model, 2 heads, d_head]
    vals = weights_orthogonality(W)
    assert vals[0] == pytest.approx(0.0, abs=1e-12)  # orthonormal columns
    assert vals[1] == pytest.approx(1.0)  # identical columns
    # TransformerLens layout gives the same answer
    assert torch.allclose(weights_orthogonality(W.permute(1, 0, 2), layout="head_model_dhead"), vals)
    with pytest.raises(UnknownNameError):
        weights_orthogonality(W, layout="nope")


def test_random_gaussian_matches_baseline():
    g = torch.Generator().manual_seed(0)
    d = 64
    x = torch.randn(300, d, generator=g)
    assert float(mean_abs_offdiag_cos(x)) == pytest.approx(random_abs_cos_baseline(d, exact=True), rel=0.02)
    assert float(mean_abs_offdiag_cos(x)) == pytest.approx(random_abs_cos_baseline(d), rel=0.02)


def test_token_keys_and_runtime_keys():
    n_tok, d_model, d_head = 5, 8, 5
    E = torch.eye(n_tok, d_model)
    W = torch.zeros(d_model, 2, d_head)
    W[:n_tok, 0, :] = torch.eye(n_tok)  # head 0: token t -> e_t (orthogonal keys)
    W[:, 1, 0] = 1.0  # head 1: every token -> e_0 (identical keys)
    vals = token_key_orthogonality(E, W)
    assert vals.tolist() == pytest.approx([0.0, 1.0])
    # a bias shared by all tokens makes head 0's keys non-orthogonal
    b = torch.zeros(2, d_head)
    b[0] = 1.0
    assert float(token_key_orthogonality(E, W, b)[0]) > 0.1
    keys = torch.stack([torch.eye(4), torch.ones(4, 4)], dim=1)  # [n=4, heads=2, d=4]
    assert runtime_key_orthogonality(keys).tolist() == pytest.approx([0.0, 1.0])
    with pytest.raises(ConfigError):
        runtime_key_orthogonality(keys[0])


def test_rows_record_definition_baseline_and_init():
    g = torch.Generator().manual_seed(1)
    W = {0: torch.randn(32, 3, 8, generator=g), 1: torch.randn(32, 3, 8, generator=g)}
    init = {0: torch.randn(32, 3, 8, generator=g), 1: torch.randn(32, 3, 8, generator=g)}
    rows = key_orthogonality_rows(W, "weights", init_by_layer=init)
    df = rows_to_frame(rows)
    assert len(df) == 2 * (3 + 1)
    assert set(df["variant"]) == {"weights"}
    agg = [r for r in rows if r.head is None and r.layer == 0][0]
    assert agg.meta["vector_dim"] == 32
    assert agg.meta["baseline_random"] == pytest.approx(math.sqrt(2 / (math.pi * 32)))
    assert "baseline_init" in agg.meta
    E = torch.randn(6, 32, generator=g)
    rows = key_orthogonality_rows([W[0]], "token-keys", token_embeddings=E)
    assert rows[-1].meta["vector_dim"] == 8 and rows[-1].variant == "token-keys"
    with pytest.raises(ConfigError):
        key_orthogonality_rows([W[0]], "token-keys")
    with pytest.raises(UnknownNameError):
        key_orthogonality_rows([W[0]], "embeddings")


def test_runtime_keys_do_not_compare_identical_tokens():
    from geoprobe.probes.key_orthogonality import key_orthogonality_rows

    g = torch.Generator().manual_seed(0)
    # every prompt ends in the same token: keys differ only by a little context noise
    same = torch.ones(30, 2, 16, dtype=torch.float64) + 0.01 * torch.randn(30, 2, 16, generator=g, dtype=torch.float64)
    assert runtime_key_orthogonality(same).min() > 0.99  # ungrouped: a spurious "not orthogonal" verdict
    grouped = runtime_key_orthogonality(same, torch.full((30,), 7))
    assert bool(torch.isnan(grouped).all())  # one distinct token: no verdict
    rows = key_orthogonality_rows([same], "runtime-keys", token_ids=torch.full((30,), 7))
    assert all(math.isnan(r.value) and r.meta["n_distinct_tokens"] == 1 and r.meta["n_keys"] == 30 for r in rows)
    # four distinct tokens with orthogonal key directions, each seen 10 times with context noise
    ids = torch.arange(4).repeat_interleave(10)
    basis = torch.eye(16, dtype=torch.float64)[:4]
    keys = basis[ids].unsqueeze(1).expand(40, 2, 16) + 0.05 * torch.randn(40, 2, 16, generator=g, dtype=torch.float64)
    # ungrouped, the 9 same-token partners of each key (cos ~ 1) alone give 9/39 = 0.23
    assert runtime_key_orthogonality(keys).min() > 9 / 39 - 0.01
    assert runtime_key_orthogonality(keys, ids).max() < 0.03  # grouped: the key frame is orthogonal
    # grouping = the plain statistic on the per-token mean keys
    means = torch.stack([keys[ids == k].mean(0) for k in range(4)])
    assert runtime_key_orthogonality(keys, ids).tolist() == pytest.approx(runtime_key_orthogonality(means).tolist())
