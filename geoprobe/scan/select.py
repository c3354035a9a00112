"""Score candidates with a model and select the entropy-stratified prompt set, with records for prompts.jsonl.

:func:`select_prompts` = :func:`geoprobe.scan.stratify.next_token_entropies` on every candidate, then
:func:`geoprobe.scan.stratify.stratify`, then one :class:`geoprobe.scan.records.PromptRecord` per candidate
(selected or not, with its bin and entropy), so the written file lets anyone redo the selection.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from geoprobe.scan.pools.base import Candidate
from geoprobe.scan.records import PromptRecord, records_from_candidates
from geoprobe.scan.stratify import (
    DEFAULT_BINS,
    DEFAULT_PER_BIN,
    Stratification,
    check_candidate_count,
    next_token_entropies,
    stratify,
)


@dataclass
class Selection:
    """The stratified prompt set.

    Attributes:
        selected: the chosen candidates, bin by bin.
        entropies: next-token entropy (bits) of every candidate, in input order.
        strata: the :class:`Stratification` (bins, edges, indices).
        records: one record per candidate, in input order.
    """

    selected: list[Candidate]
    entropies: np.ndarray
    strata: Stratification
    records: list[PromptRecord]


def select_prompts(handle: Any, candidates: Sequence[Candidate], *, n_per_bin: int = DEFAULT_PER_BIN,
                   n_bins: int = DEFAULT_BINS, seed: int = 0, batch_size: int = 8) -> Selection:
    """Score ``candidates`` with ``handle`` and draw ``n_per_bin`` per entropy bin (default 15 x 5 = 75).

    The candidate count is checked before the model runs, so too few candidates fail at once with the
    number needed.
    """
    candidates = list(candidates)
    check_candidate_count(len(candidates), n_per_bin=n_per_bin, n_bins=n_bins)
    h = next_token_entropies(handle, [c.text for c in candidates], batch_size=batch_size)
    st = stratify(h, n_per_bin=n_per_bin, n_bins=n_bins, seed=seed)
    recs = records_from_candidates(candidates, h, st.bin_of, st.selected)
    return Selection([candidates[i] for i in st.selected], h, st, recs)
