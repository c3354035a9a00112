"""Entropy stratification of prompt candidates (the LLM scan's prompt selection).

Every candidate is scored by the model's next-token entropy at its final token,

    H_i = -sum_v p(v | prompt_i) log2 p(v | prompt_i)   (bits),

the candidates are split into ``n_bins`` (default 5) quantile bins of those entropies, and the same number
(default 15) is drawn from every bin without replacement, so the selected set covers the model's whole range of
uncertainty (15 x 5 = 75 prompts by default).

Bins: with edges ``e = numpy.quantile(H, [0, 1/n_bins, ..., 1])`` (linear interpolation), candidate ``i`` is in
bin ``q = #{j in 1..n_bins-1 : e_j <= H_i}`` (a value equal to an interior edge goes to the upper bin).
Selection: ``numpy.random.default_rng(seed)`` draws ``n_per_bin`` members of bin 0, then of bin 1, ...; each
bin's members are taken in input order before the draw, so the result depends only on (entropies, seed).

:func:`next_token_entropies` computes ``H`` from a loaded model handle in batches, keeping only each row's
final-position distribution (never ``[N, T, vocab]``); :func:`stratify` is a pure function of the entropies.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from geoprobe.errors import ConfigError
from geoprobe.infotheory import entropy_from_logits_bits
from geoprobe.scan.readout import map_final_logits

DEFAULT_PER_BIN = 15
DEFAULT_BINS = 5


@dataclass(frozen=True)
class BinSummary:
    """One entropy bin: its index, edges, the entropy range and number of its members, and how many were taken."""

    index: int
    lower_edge: float
    upper_edge: float
    min_entropy: float
    max_entropy: float
    n_candidates: int
    n_selected: int

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Stratification:
    """Result of :func:`stratify`.

    Attributes:
        bin_of: bin index of every candidate (``[N]`` int).
        selected: indices of the selected candidates, bin by bin, ascending within a bin.
        edges: the ``n_bins + 1`` quantile edges (``numpy.quantile``).
        bins: one :class:`BinSummary` per bin.
        seed: the seed of the draw.
    """

    bin_of: np.ndarray
    selected: np.ndarray
    edges: np.ndarray
    bins: list[BinSummary] = field(default_factory=list)
    seed: int = 0

    def summary(self) -> list[dict[str, Any]]:
        """Per-bin entropy range and counts as plain dicts (for reports and manifests)."""
        return [b.to_dict() for b in self.bins]


def check_candidate_count(n: int, *, n_per_bin: int = DEFAULT_PER_BIN, n_bins: int = DEFAULT_BINS) -> None:
    """Raise ConfigError (saying how many are needed) unless ``n >= n_per_bin * n_bins``."""
    if int(n_per_bin) < 1 or int(n_bins) < 1:
        raise ConfigError(f"stratification needs n_per_bin >= 1 and n_bins >= 1, got {n_per_bin} and {n_bins}")
    need = int(n_per_bin) * int(n_bins)
    if n < need:
        raise ConfigError(f"too few prompt candidates: got {n}, need at least {need} "
                          f"({n_per_bin} per entropy bin x {n_bins} bins)")


def stratify(entropies: Sequence[float] | np.ndarray, *, n_per_bin: int = DEFAULT_PER_BIN,
             n_bins: int = DEFAULT_BINS, seed: int = 0) -> Stratification:
    """Split candidates into entropy quantile bins and draw ``n_per_bin`` from each (see module docstring).

    Raises:
        ConfigError: too few candidates overall (fewer than ``n_per_bin * n_bins``) or in one bin (ties), or
            non-finite entropies, each with a message that says how many are needed.
    """
    h = np.asarray(entropies, dtype=np.float64).reshape(-1)
    n_per_bin, n_bins = int(n_per_bin), int(n_bins)
    check_candidate_count(h.size, n_per_bin=n_per_bin, n_bins=n_bins)
    bad = np.flatnonzero(~np.isfinite(h))
    if bad.size:
        raise ConfigError(f"next-token entropy is not finite for candidate(s) {bad[:5].tolist()}")
    edges = np.quantile(h, np.linspace(0.0, 1.0, n_bins + 1))
    bin_of = (h[:, None] >= edges[None, 1:-1]).sum(1).astype(np.int64)
    rng = np.random.default_rng(seed)
    selected: list[np.ndarray] = []
    bins: list[BinSummary] = []
    for q in range(n_bins):
        members = np.flatnonzero(bin_of == q)
        if members.size < n_per_bin:
            raise ConfigError(f"entropy bin {q} holds only {members.size} candidate(s) (tied entropies); need "
                              f"{n_per_bin} per bin: give more candidates with distinct next-token entropies")
        pick = np.sort(rng.choice(members, size=n_per_bin, replace=False))
        selected.append(pick)
        bins.append(BinSummary(q, float(edges[q]), float(edges[q + 1]), float(h[members].min()),
                               float(h[members].max()), int(members.size), n_per_bin))
    return Stratification(bin_of=bin_of, selected=np.concatenate(selected), edges=edges, bins=bins, seed=seed)


def next_token_entropies(handle: Any, texts: Sequence[str], *, batch_size: int = 8,
                         max_tokens: int | None = None) -> np.ndarray:
    """Entropy in bits of the model's next-token distribution after each text (``[N]`` float64).

    Runs :func:`geoprobe.scan.readout.map_final_logits` (batched, final position only, input order kept)
    with ``H = -sum_v p_v log2 p_v`` of the softmax of the final logits (float64).
    """
    out = map_final_logits(handle, texts, lambda z: entropy_from_logits_bits(z.double()), batch_size=batch_size,
                           max_tokens=max_tokens)
    return out.numpy().astype(np.float64)
