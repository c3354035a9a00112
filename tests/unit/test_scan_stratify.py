"""Entropy stratification: planted entropies give exact bins, edges are numpy quantiles, draws are seeded."""

from __future__ import annotations

import numpy as np
import pytest

from geoprobe.errors import ConfigError
from geoprobe.scan.stratify import stratify


def planted(n: int = 100, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Entropies 0..n-1 (bits / 10) in a shuffled order, and each one's true quintile."""
    perm = np.random.default_rng(seed).permutation(n)
    return perm / 10.0, perm // (n // 5)


def test_planted_entropies_give_exact_quintiles_and_edges():
    h, truth = planted()
    st = stratify(h, n_per_bin=15, seed=0)
    assert np.array_equal(st.bin_of, truth)
    assert np.array_equal(st.edges, np.quantile(h, [0, 0.2, 0.4, 0.6, 0.8, 1.0]))
    assert np.allclose(st.edges, [0.0, 1.98, 3.96, 5.94, 7.92, 9.9])
    assert [(b.min_entropy, b.max_entropy, b.n_candidates, b.n_selected) for b in st.bins] == [
        (pytest.approx(2.0 * q), pytest.approx(2.0 * q + 1.9), 20, 15) for q in range(5)]
    assert st.selected.size == 75 and len(set(st.selected.tolist())) == 75
    for q in range(5):
        chunk = st.selected[15 * q:15 * (q + 1)]
        assert np.all(truth[chunk] == q) and np.all(np.diff(chunk) > 0)


def test_selection_is_deterministic_given_seed_and_depends_only_on_ranks():
    h, _ = planted(250, seed=1)
    a, b, c = stratify(h, seed=5), stratify(h, seed=5), stratify(h, seed=6)
    assert np.array_equal(a.selected, b.selected)
    assert not np.array_equal(a.selected, c.selected)
    # a monotone transform of the entropies keeps bins and selection (quantiles of ranks)
    d = stratify(np.exp(h), seed=5)
    assert np.array_equal(d.bin_of, a.bin_of) and np.array_equal(d.selected, a.selected)
    # the draw is numpy's default_rng(seed).choice per bin, bin by bin (independent replay)
    rng = np.random.default_rng(5)
    replay = np.concatenate([np.sort(rng.choice(np.flatnonzero(a.bin_of == q), 15, replace=False))
                             for q in range(5)])
    assert np.array_equal(replay, a.selected)


def test_value_on_an_interior_edge_goes_to_the_upper_bin():
    st = stratify([0.0, 1.0, 2.0, 3.0, 4.0, 5.0], n_per_bin=1, n_bins=2, seed=0)
    assert st.edges.tolist() == [0.0, 2.5, 5.0]
    assert st.bin_of.tolist() == [0, 0, 0, 1, 1, 1]
    st = stratify([0.0, 1.0, 2.0], n_per_bin=1, n_bins=2, seed=0)  # edge 1.0 equals a value
    assert st.bin_of.tolist() == [0, 1, 1]


def test_too_few_candidates_or_ties_or_nan_are_one_line_errors():
    with pytest.raises(ConfigError) as e:
        stratify(np.arange(74.0))
    assert str(e.value) == ("too few prompt candidates: got 74, need at least 75 (15 per entropy bin x 5 bins)")
    ties = np.concatenate([np.zeros(60), np.arange(1.0, 41.0)])  # edges 0, 0, 0: the zeros land in bin 2
    with pytest.raises(ConfigError, match=r"entropy bin 0 holds only 0 candidate\(s\).*need 15 per bin"):
        stratify(ties)
    with pytest.raises(ConfigError, match=r"not finite for candidate\(s\) \[3\]"):
        stratify(np.r_[np.arange(3.0), np.nan, np.arange(100.0)])
    summary = stratify(np.arange(10.0), n_per_bin=2)
    assert summary.summary()[0] == {"index": 0, "lower_edge": 0.0, "upper_edge": 1.8, "min_entropy": 0.0,
                                    "max_entropy": 1.0, "n_candidates": 2, "n_selected": 2}
