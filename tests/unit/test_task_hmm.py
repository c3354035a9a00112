"""HMM filtering wind tunnel against brute-force marginalisation over hidden-state paths.

Every expected number here is computed independently of geoprobe: matrices are parsed back from the header tokens
through the documented token names, and posteriors are obtained by enumerating all S^t state paths.
"""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from geoprobe.errors import ConfigError
from geoprobe.tasks import TASKS, make_generator, make_task
from geoprobe.tasks.hmm import quantize_rows

# ---------------------------------------------------------------- independent helpers


def parse_sequence(task, tokens_row):
    """(T, E, observations) read from one token row using only the documented layout and token names."""
    names = task.token_names()
    S, M = task.n_states, task.n_symbols
    toks = [names[i] for i in tokens_row.tolist()]
    assert toks[0] == "[TRANS]"
    assert toks[1 + S * S] == "[EMIT]"
    assert toks[2 + S * S + S * M] == "[SEP]"
    T = np.array([float(x[1:]) for x in toks[1 : 1 + S * S]]).reshape(S, S)
    E = np.array([float(x[1:]) for x in toks[2 + S * S : 2 + S * S + S * M]]).reshape(S, M)
    body = toks[3 + S * S + S * M :]
    assert body[0::2] == ["[OBS]"] * task.K
    obs = [int(x[1:]) for x in body[1::2]]
    assert all(x.startswith("o") for x in body[1::2])
    return T, E, obs


def brute_joint(T, E, obs):
    """{path: p(path, o_1..o_t)} over all S^t paths, start uniform."""
    S = T.shape[0]
    out = {}
    for path in itertools.product(range(S), repeat=len(obs)):
        p = (1.0 / S) * E[path[0], obs[0]]
        for j in range(1, len(obs)):
            p *= T[path[j - 1], path[j]] * E[path[j], obs[j]]
        out[path] = p
    return out


def brute_filter(T, E, obs, t):
    """p(s_t | o_1..o_t) (t 1-based) by summing the joint over all paths of length t."""
    S = T.shape[0]
    joint = brute_joint(T, E, obs[:t])
    post = np.zeros(S)
    for path, p in joint.items():
        post[path[-1]] += p
    return post / post.sum()


def brute_evidence(T, E, obs):
    return sum(brute_joint(T, E, obs).values())


def reference_quantize(p):
    """Pure-Python (exact Fraction) version of the documented repair rule."""
    k = len(p)
    remaining = 100 - 5 * k
    w = [max(Fraction(x) - Fraction(5, 100), Fraction(0)) for x in p]
    tot = sum(w)
    if tot == 0:
        w, tot = [Fraction(1)] * k, Fraction(k)
    quota = [remaining * x / tot for x in w]
    base = [math.floor(q) for q in quota]
    left = remaining - sum(base)
    order = sorted(range(k), key=lambda i: (-(quota[i] - base[i]), i))
    for i in order[:left]:
        base[i] += 1
    return [5 + b for b in base]


# ---------------------------------------------------------------- brute-force posteriors


@pytest.mark.parametrize("S,M", [(5, 5), (2, 3), (3, 2)])
@pytest.mark.parametrize("K", [1, 2, 3, 4])
def test_filter_posterior_matches_brute_force(S, M, K):
    task = make_task("hmm", K=K, n_states=S, n_symbols=M)
    batch = task.sample(6, make_generator(K * 100 + S * 10 + M, "eval"))
    positions = torch.nonzero(batch.loss_mask[0]).flatten().tolist()
    assert len(positions) == K
    for b in range(len(batch)):
        T, E, obs = parse_sequence(task, batch.tokens[b])
        for t, pos in enumerate(positions, start=1):
            expected = brute_filter(T, E, obs, t)
            got = batch.target_probs[b, pos].double().numpy()
            np.testing.assert_allclose(got, expected, atol=1e-6)
            h = -sum(x * math.log2(x) for x in expected if x > 0)
            assert abs(batch.bayes_entropy[b, pos].item() - h) < 1e-5
            assert batch.step[b, pos].item() == t - 1
            # the supervised position holds o_t itself (label is the hidden state, never the input token)
            assert batch.tokens[b, pos].item() == 100 + obs[t - 1]
            assert batch.labels[b, pos].item() == batch.extras["states"][b, t - 1].item()


@pytest.mark.parametrize("S,M", [(5, 5), (2, 3)])
@pytest.mark.parametrize("K", [2, 3, 4])
def test_next_obs_predictive_matches_brute_force(S, M, K):
    task = make_task("hmm", K=K, n_states=S, n_symbols=M, target="next_obs")
    batch = task.sample(4, make_generator(7 + K, "eval"))
    positions = torch.nonzero(batch.loss_mask[0]).flatten().tolist()
    assert len(positions) == K - 1
    assert batch.readout_ids.tolist() == list(range(100, 100 + M))
    for b in range(len(batch)):
        T, E, obs = parse_sequence(task, batch.tokens[b])
        for t, pos in enumerate(positions, start=1):
            ev = brute_evidence(T, E, obs[:t])
            expected = np.array([brute_evidence(T, E, obs[:t] + [o]) / ev for o in range(M)])
            np.testing.assert_allclose(batch.target_probs[b, pos].double().numpy(), expected, atol=1e-6)
            assert batch.labels[b, pos].item() == obs[t]
            assert batch.step[b, pos].item() == t - 1
            assert batch.tokens[b, pos].item() == 100 + obs[t - 1]


# ---------------------------------------------------------------- header, layout, vocabulary


def test_default_layout_and_vocabulary():
    task = make_task("hmm")
    assert task.config() == {"K": 20, "n_states": 5, "n_symbols": 5, "target": "filter"}
    assert task.header_len == 53
    assert task.seq_len == 53 + 2 * 20
    assert task.vocab_size == 110
    names = task.token_names()
    assert len(names) == 110
    assert names[0] == "p0.05" and names[95] == "p1.00" and names[38] == "p0.43"
    assert names[96:100] == ["[TRANS]", "[EMIT]", "[SEP]", "[OBS]"]
    assert names[100:105] == [f"o{i}" for i in range(5)]
    assert names[105:110] == [f"[S{i}]" for i in range(5)]
    assert task.readout_ids.tolist() == [105, 106, 107, 108, 109]
    assert len(set(names)) == len(names)
    batch = task.sample(64, make_generator(1, "train"))
    assert batch.tokens.dtype == torch.long
    assert batch.tokens.shape == (64, 93)
    assert batch.tokens.max().item() < 105, "state tokens are output-only"
    assert batch.tokens[:, :53].max().item() <= 98
    assert (batch.loss_mask.sum(1) == 20).all()
    assert batch.target_probs.shape == (64, 93, 5)
    assert batch.extras["transition"].shape == (64, 5, 5)
    assert batch.extras["emission"].shape == (64, 5, 5)
    assert batch.extras["states"].shape == (64, 20)
    assert batch.extras["observations"].shape == (64, 20)


@pytest.mark.parametrize("S,M", [(5, 5), (2, 3), (4, 7)])
def test_header_shows_exactly_the_sampling_matrices(S, M):
    task = make_task("hmm", K=6, n_states=S, n_symbols=M)
    batch = task.sample(32, make_generator(3, "train"))
    for b in range(len(batch)):
        T, E, obs = parse_sequence(task, batch.tokens[b])
        np.testing.assert_allclose(T, batch.extras["transition"][b].double().numpy(), atol=1e-7)
        np.testing.assert_allclose(E, batch.extras["emission"][b].double().numpy(), atol=1e-7)
        assert obs == batch.extras["observations"][b].tolist()
        for M in (T, E):
            hund = np.rint(M * 100).astype(int)
            assert (hund.sum(1) == 100).all()
            assert hund.min() >= 5
    Tdec, Edec = task.decode_header(batch.tokens)
    assert torch.allclose(Tdec, batch.extras["transition"].double(), atol=1e-7)
    assert torch.allclose(Edec, batch.extras["emission"].double(), atol=1e-7)


def test_rows_sum_to_100_hundredths_with_floor_on_a_big_batch():
    batch = make_task("hmm", K=1).sample(4096, make_generator(11, "train"))
    for key in ("transition", "emission"):
        hund = torch.round(batch.extras[key].double() * 100)
        assert torch.allclose(hund, batch.extras[key].double() * 100, atol=1e-4), "multiples of 0.01"
        hund = hund.long()
        assert (hund.sum(-1) == 100).all()
        assert hund.min().item() >= 5
        assert hund.max().item() <= 80  # 100 - 4 * 5


# ---------------------------------------------------------------- repair rule


def test_quantize_rows_matches_the_documented_rule_exactly():
    rng = np.random.default_rng(0)
    for k in (2, 3, 5, 8, 20):
        p = rng.dirichlet(np.ones(k), size=300)
        got = quantize_rows(torch.from_numpy(p)).tolist()
        for row, g in zip(p.tolist(), got, strict=True):
            assert g == reference_quantize(row)
            assert sum(g) == 100 and min(g) >= 5


def test_quantize_rows_is_rounding_when_no_entry_is_below_the_floor():
    rng = np.random.default_rng(1)
    p = rng.dirichlet(np.full(5, 20.0), size=500)  # concentrated near 0.2: every entry >= 0.05
    assert p.min() > 0.05
    h = quantize_rows(torch.from_numpy(p)).numpy()
    assert (np.abs(h - 100 * p) < 1).all()
    assert (h.sum(1) == 100).all()


def test_quantize_rows_edge_cases():
    assert quantize_rows(torch.tensor([[1.0, 0, 0, 0, 0]])).tolist() == [[80, 5, 5, 5, 5]]
    assert quantize_rows(torch.tensor([[0.5, 0.5, 0, 0, 0]])).tolist() == [
        [43, 42, 5, 5, 5]
    ]  # tie -> lower index
    assert quantize_rows(torch.full((1, 20), 0.05)).tolist() == [[5] * 20]
    assert quantize_rows(torch.tensor([[0.2] * 5])).tolist() == [[20] * 5]
    with pytest.raises(ConfigError):
        quantize_rows(torch.full((1, 21), 1 / 21))


# ---------------------------------------------------------------- statistics of the sampler


def _z_scores(counts, expected_probs_sum, var_sum):
    return (counts - expected_probs_sum) / np.sqrt(var_sum)


def test_observation_and_transition_frequencies_follow_the_matrices():
    task = make_task("hmm", K=20)
    batch = task.sample(4096, make_generator(5, "train"))
    T = batch.extras["transition"].double().numpy()
    E = batch.extras["emission"].double().numpy()
    s = batch.extras["states"].numpy()
    o = batch.extras["observations"].numpy()
    bidx = np.arange(len(batch))[:, None]
    # p(o_t = j | s_t) = E[s_t, j], summed over all (sequence, t)
    pe = E[bidx, s]  # [B, K, M]
    for j in range(5):
        z = _z_scores((o == j).sum(), pe[..., j].sum(), (pe[..., j] * (1 - pe[..., j])).sum())
        assert abs(z) < 5, (j, z)
    # p(s_{t+1} = j | s_t) = T[s_t, j]
    pt = T[bidx, s[:, :-1]]  # [B, K-1, S]
    for j in range(5):
        z = _z_scores((s[:, 1:] == j).sum(), pt[..., j].sum(), (pt[..., j] * (1 - pt[..., j])).sum())
        assert abs(z) < 5, (j, z)
    # finer: per (sequence, state) emission frequencies are close to the rows they were drawn from
    counts = np.zeros((len(batch), 5, 5))
    np.add.at(counts, (np.repeat(np.arange(len(batch)), 20), s.ravel(), o.ravel()), 1)
    n_s = counts.sum(-1)
    z_cell = (counts - n_s[..., None] * E) / np.sqrt(np.maximum(n_s[..., None] * E * (1 - E), 1e-12))
    assert abs(z_cell[n_s > 0].mean()) < 0.05
    # uniform start state
    first = np.bincount(s[:, 0], minlength=5) / len(batch)
    assert np.abs(first - 0.2).max() < 0.03


def test_matrix_entries_follow_dirichlet_then_repair():
    """Sampled rows vs numpy's Dirichlet(1,..,1) pushed through the reference rule (two-sample chi-square)."""
    from scipy.stats import chi2_contingency

    T = make_task("hmm", K=1).sample(4096, make_generator(2, "train")).extras["transition"].double().numpy()
    # by symmetry every entry has mean 1/S
    assert np.abs(T.mean(0) - 0.2).max() < 0.01
    got = np.rint(T * 100).astype(int).ravel()
    rows = np.random.default_rng(3).dirichlet(np.ones(5), size=1500)
    ref = np.array([reference_quantize(r) for r in rows.tolist()]).ravel()
    edges = [5, 6, 8, 11, 15, 20, 26, 33, 41, 50, 81]
    table = np.stack([np.histogram(got, edges)[0], np.histogram(ref, edges)[0]])
    assert chi2_contingency(table)[1] > 1e-4
    # the plain Beta(1, 4) marginal, before repair, is close: P(entry >= 0.5) = 0.5^4 = 0.0625
    assert abs((got >= 50).mean() - 0.0625) < 0.01


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "params,fragment",
    [
        ({"K": 0}, "K >= 1"),
        ({"target": "smoothing"}, "valid choices: filter, next_obs"),
        ({"K": 1, "target": "next_obs"}, "K >= 2"),
        ({"n_states": 1}, "n_states"),
        ({"n_symbols": 21}, "n_symbols"),
    ],
)
def test_bad_parameters_raise_config_error(params, fragment):
    with pytest.raises(ConfigError, match=fragment):
        make_task("hmm", **params)


def test_with_length_and_registry():
    assert "hmm" in TASKS
    task = make_task("hmm", target="next_obs")
    longer = task.with_length(K=50)
    assert longer.config() == {"K": 50, "n_states": 5, "n_symbols": 5, "target": "next_obs"}
    assert longer.seq_len == 153
    assert longer.sample(2, make_generator(0, "test")).tokens.shape == (2, 153)


# ---------------------------------------------------------------- properties


@settings(max_examples=25, deadline=None)
@given(
    S=st.integers(2, 6),
    M=st.integers(2, 6),
    K=st.integers(1, 8),
    target=st.sampled_from(["filter", "next_obs"]),
    seed=st.integers(0, 2**31),
    n=st.integers(1, 5),
)
def test_batches_are_well_formed(S, M, K, target, seed, n):
    if target == "next_obs" and K < 2:
        K = 2
    task = make_task("hmm", K=K, n_states=S, n_symbols=M, target=target)
    batch = task.sample(n, make_generator(seed, "train"))
    H = S if target == "filter" else M
    n_sup = K if target == "filter" else K - 1
    assert batch.tokens.shape == (n, task.seq_len) == (n, 3 + S * S + S * M + 2 * K)
    assert batch.tokens.min() >= 0 and batch.tokens.max() < 100 + M
    assert batch.target_probs.shape == (n, task.seq_len, H)
    assert len(batch.readout_ids) == H and batch.readout_ids.max() < task.vocab_size
    m = batch.loss_mask
    assert (m.sum(1) == n_sup).all()
    p = batch.target_probs
    assert (p >= 0).all()
    assert torch.allclose(p[m].sum(-1), torch.ones(n * n_sup), atol=1e-5)
    assert (p[~m] == 0).all()
    ent = batch.bayes_entropy
    assert (ent[m] >= 0).all() and (ent[m] <= math.log2(H) + 1e-5).all()
    assert (ent[~m] == 0).all()
    assert ((batch.labels >= 0) == m).all() and (batch.labels[m] < H).all()
    assert (batch.step[~m] == -1).all()
    assert (batch.step[m].view(n, n_sup) == torch.arange(n_sup)).all()
    # the realised answer always has positive Bayes probability
    assert (p[m].gather(1, batch.labels[m].unsqueeze(1)) > 0).all()


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**40), target=st.sampled_from(["filter", "next_obs"]))
def test_same_seed_same_batch_and_splits_differ(seed, target):
    task = make_task("hmm", K=4, target=target)
    a = task.sample(8, make_generator(seed, "train"))
    b = task.sample(8, make_generator(seed, "train"))
    c = task.sample(8, make_generator(seed, "eval"))
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.target_probs, b.target_probs)
    assert torch.equal(a.labels, b.labels)
    assert not torch.equal(a.tokens, c.tokens)
