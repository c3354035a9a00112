"""Bijection elimination wind tunnel against brute-force enumeration of all V! permutations.

Expected numbers come from counting the permutations consistent with the pairs visible in the tokens, never from
geoprobe's own posterior code.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from geoprobe.errors import ConfigError
from geoprobe.tasks import make_generator, make_task


def visible_pairs(task, tokens_row):
    """(keys, shown values) read from the tokens alone; the last key of ``separate`` has no value shown."""
    V, toks = task.V, tokens_row.tolist()
    if task.layout == "separate":
        keys = toks[0::2]
        values = [v - V for v in toks[1::2]]
        return keys, values, None
    body, query = toks[:-1], toks[-1]
    return body[0::2], body[1::2], query


def brute_predictive(V, pairs, key):
    """p(pi(key) = v | pairs) for every v by counting consistent permutations under a uniform prior."""
    counts = np.zeros(V)
    for perm in itertools.permutations(range(V)):
        if all(perm[k] == v for k, v in pairs):
            counts[perm[key]] += 1
    assert counts.sum() > 0, "the visible pairs must be consistent with some permutation"
    return counts / counts.sum()


CASES = [
    (V, L, layout, replacement)
    for V, L in [(4, 3), (4, 4), (3, 3), (5, 3)]
    for layout in ("separate", "paired_query")
    for replacement in (False, True)
]


@pytest.mark.parametrize("V,L,layout,replacement", CASES)
def test_posterior_matches_permutation_enumeration(V, L, layout, replacement):
    task = make_task("bijection", V=V, L=L, layout=layout, replacement=replacement)
    batch = task.sample(12, make_generator(V * 100 + L, "eval"))
    for b in range(len(batch)):
        keys, values, query = visible_pairs(task, batch.tokens[b])
        assert len(keys) == L
        if not replacement:
            assert len(set(keys)) == L
        for t in range(L):
            pos = 2 * t
            assert batch.loss_mask[b, pos]
            assert batch.step[b, pos].item() == t
            expected = brute_predictive(V, list(zip(keys[:t], values[:t], strict=True)), keys[t])
            np.testing.assert_allclose(batch.target_probs[b, pos].double().numpy(), expected, atol=1e-6)
            h = -sum(p * math.log2(p) for p in expected if p > 0)
            assert abs(batch.bayes_entropy[b, pos].item() - h) < 1e-5
            assert expected[batch.labels[b, pos].item()] > 0
            if t < len(values):  # the label is the value shown right after the key
                assert batch.labels[b, pos].item() == values[t]
        if layout == "paired_query":
            pos = 2 * L
            assert query in keys
            expected = brute_predictive(V, list(zip(keys, values, strict=True)), query)
            np.testing.assert_allclose(batch.target_probs[b, pos].double().numpy(), expected, atol=1e-6)
            assert expected.max() == 1.0
            assert batch.bayes_entropy[b, pos].item() == pytest.approx(0.0, abs=1e-6)
            assert batch.step[b, pos].item() == L
        else:
            assert batch.loss_mask[b].sum().item() == L


def test_default_staircase_is_log2_of_remaining_values():
    task = make_task("bijection")
    assert task.config() == {
        "V": 20,
        "L": 19,
        "layout": "separate",
        "replacement": False,
        "query_only": False,
    }
    batch = task.sample(32, make_generator(0, "eval"))
    ent = batch.bayes_entropy[batch.loss_mask].view(32, 19)
    expected = torch.tensor([math.log2(20 - t) for t in range(19)])  # log2(V - t + 1) for 1-based t
    assert torch.allclose(ent, expected.expand(32, 19), atol=1e-5)
    assert ent[0, 0].item() == pytest.approx(4.322, abs=5e-4)
    assert ent[0, 1].item() == pytest.approx(4.248, abs=5e-4)
    assert ent[0, -2].item() == pytest.approx(1.585, abs=5e-4)
    assert ent[0, -1].item() == pytest.approx(1.000, abs=1e-6)
    assert ent.mean().item() == pytest.approx(3.215, abs=5e-4)  # SCIENCE.md: mean 3.215 bits over 19 keys
    assert (ent.mean(0) - expected).abs().max() < 1e-5


def test_with_replacement_is_a_sawtooth():
    task = make_task("bijection", V=6, L=12, replacement=True)
    batch = task.sample(64, make_generator(4, "eval"))
    ent = batch.bayes_entropy[batch.loss_mask].view(64, 12)
    keys = batch.tokens[:, 0::2]
    for b in range(64):
        seen, used = set(), 0
        for t in range(12):
            k = keys[b, t].item()
            want = 0.0 if k in seen else math.log2(6 - used)
            assert ent[b, t].item() == pytest.approx(want, abs=1e-5)
            if k not in seen:
                seen.add(k)
                used += 1
    assert (ent == 0).any(), "repeated keys give 0 bits"


@pytest.mark.parametrize("V,L", [(20, 19), (5, 5), (3, 1)])
def test_separate_layout_tokens(V, L):
    task = make_task("bijection", V=V, L=L)
    assert task.vocab_size == 2 * V and task.seq_len == 2 * L - 1
    assert task.readout_ids.tolist() == list(range(V, 2 * V))
    names = task.token_names()
    assert len(names) == 2 * V and names[0] == "k0" and names[V] == "v0"
    batch = task.sample(16, make_generator(1, "train"))
    assert batch.tokens.shape == (16, 2 * L - 1)
    assert (batch.tokens[:, 0::2] < V).all(), "keys are < V"
    assert (batch.tokens[:, 1::2] >= V).all() and (batch.tokens[:, 1::2] < 2 * V).all(), "values are >= V"
    perm = batch.extras["permutation"]
    assert (perm.sort(1).values == torch.arange(V)).all(), "a permutation per sequence"
    keys = batch.tokens[:, 0::2]
    assert torch.equal(batch.tokens[:, 1::2] - V, perm.gather(1, keys[:, :-1]))
    assert torch.equal(batch.loss_mask[:, 0::2], torch.ones(16, L, dtype=torch.bool))
    assert not batch.loss_mask[:, 1::2].any()


def test_paired_query_layout_tokens():
    V, L = 8, 6
    task = make_task("bijection", V=V, L=L, layout="paired_query")
    assert task.vocab_size == V and task.seq_len == 2 * L + 1
    assert task.readout_ids.tolist() == list(range(V))
    batch = task.sample(64, make_generator(2, "train"))
    keys, vals, q = batch.tokens[:, 0:-1:2], batch.tokens[:, 1:-1:2], batch.tokens[:, -1]
    assert (keys == q.unsqueeze(1)).any(1).all(), "the query is one of the context keys"
    assert torch.equal(batch.extras["query"], q)
    answer = (vals * (keys == q.unsqueeze(1))).sum(1)
    assert torch.equal(batch.labels[:, -1], answer)
    assert (batch.bayes_entropy[:, -1] == 0).all()
    assert batch.loss_mask.sum(1).eq(L + 1).all()
    only = make_task("bijection", V=V, L=L, layout="paired_query", query_only=True)
    b2 = only.sample(8, make_generator(2, "train"))
    assert b2.loss_mask.sum(1).eq(1).all() and b2.loss_mask[:, -1].all()
    assert (b2.step[:, -1] == 0).all()


def test_bad_parameters():
    with pytest.raises(ConfigError, match="L <= V"):
        make_task("bijection", V=4, L=5)
    make_task("bijection", V=4, L=5, replacement=True)  # fine with replacement
    with pytest.raises(ConfigError, match="valid choices: separate, paired_query"):
        make_task("bijection", layout="interleaved")
    with pytest.raises(ConfigError, match="V >= 2"):
        make_task("bijection", V=1, L=1)
    with pytest.raises(ConfigError, match="L >= 1"):
        make_task("bijection", L=0)
    with pytest.raises(ConfigError, match="paired_query"):
        make_task("bijection", query_only=True)


@settings(max_examples=25, deadline=None)
@given(
    V=st.integers(2, 12),
    L=st.integers(1, 12),
    layout=st.sampled_from(["separate", "paired_query"]),
    replacement=st.booleans(),
    seed=st.integers(0, 2**40),
    n=st.integers(1, 6),
)
def test_batches_are_well_formed(V, L, layout, replacement, seed, n):
    if not replacement:
        L = min(L, V)
    task = make_task("bijection", V=V, L=L, layout=layout, replacement=replacement)
    batch = task.sample(n, make_generator(seed, "train"))
    assert batch.tokens.shape == (n, task.seq_len)
    assert batch.tokens.min() >= 0 and batch.tokens.max() < task.vocab_size
    m = batch.loss_mask
    p = batch.target_probs
    assert (p >= 0).all() and (p[~m] == 0).all()
    assert torch.allclose(p[m].sum(-1), torch.ones(int(m.sum())), atol=1e-5)
    ent = batch.bayes_entropy
    assert (ent[m] >= -1e-7).all() and (ent[m] <= math.log2(V) + 1e-5).all() and (ent[~m] == 0).all()
    assert ((batch.labels >= 0) == m).all() and (batch.labels[m] < V).all()
    assert (p[m].gather(1, batch.labels[m].unsqueeze(1)) > 0).all()
    n_sup = int(m[0].sum())
    assert (m.sum(1) == n_sup).all()
    assert (batch.step[~m] == -1).all()
    assert (batch.step[m].view(n, n_sup) == torch.arange(n_sup)).all()
    again = task.sample(n, make_generator(seed, "train"))
    assert torch.equal(batch.tokens, again.tokens) and torch.equal(batch.target_probs, again.target_probs)
