"""Associative recall (binding primitive).

Layout (one sequence)::

    k1 v1 k2 v2 ... kN vN  f f ... f  [Q] q1 a1 [Q] q2 a2 ... [Q] qQ aQ

Keys are drawn without replacement from the key range (``n_keys`` tokens), values without replacement from a
disjoint value range (``n_values`` tokens), so every key has exactly one value; ``fillers`` tokens are drawn
i.i.d. from a separate filler range. The queries q_1..q_Q are distinct stored keys, each followed by its answer
a_j = value(q_j). Only the query positions are supervised: the logits at q_j predict a_j (next-token
convention), so there is no ambiguity about which position carries the answer. The Bayes predictive there is a
point mass (0 bits): the metric is accuracy.
"""

from __future__ import annotations

from typing import Any

import torch

from geoprobe.tasks.base import IGNORE_INDEX, TASKS, Task, TaskBatch, require
from geoprobe.tasks.params import Param


@TASKS.register("recall")
class RecallTask(Task):
    """Associative recall wind tunnel.

    Args:
        N: stored key-value pairs per sequence.
        n_keys: size of the key token range (>= N).
        n_values: size of the value token range (>= N); the readout slice.
        fillers: filler tokens between the pairs and the queries.
        n_fillers: size of the filler token range.
        queries: queries per sequence (distinct stored keys, <= N).
    """

    name = "recall"
    summary = "associative recall (binding): retrieve the value stored with a queried key"
    params = {"N": Param(int, low=1), "n_keys": Param(int, low=1), "n_values": Param(int, low=1),
              "fillers": Param(int, low=0), "n_fillers": Param(int, low=1), "queries": Param(int, low=1)}

    def __init__(self, N: int = 8, n_keys: int = 16, n_values: int = 16, fillers: int = 8, n_fillers: int = 4,
                 queries: int = 4) -> None:
        require(n_keys >= N, f"recall needs n_keys >= N (keys are distinct), got {n_keys} < {N}")
        require(n_values >= N, f"recall needs n_values >= N (values are distinct), got {n_values} < {N}")
        require(queries <= N, f"recall needs 1 <= queries <= N, got queries={queries}, N={N}")
        self.N, self.n_keys, self.n_values = N, n_keys, n_values
        self.fillers, self.n_fillers, self.queries = fillers, n_fillers, queries

    def config(self) -> dict[str, Any]:
        return {"N": self.N, "n_keys": self.n_keys, "n_values": self.n_values, "fillers": self.fillers,
                "n_fillers": self.n_fillers, "queries": self.queries}

    @property
    def query_token(self) -> int:
        return self.n_keys + self.n_values + self.n_fillers

    @property
    def vocab_size(self) -> int:
        return self.query_token + 1

    @property
    def seq_len(self) -> int:
        return 2 * self.N + self.fillers + 3 * self.queries

    @property
    def readout_size(self) -> int:
        return self.n_values

    @property
    def readout_ids(self) -> torch.Tensor:
        return torch.arange(self.n_keys, self.n_keys + self.n_values)

    def token_names(self) -> list[str]:
        return ([f"k{i}" for i in range(self.n_keys)] + [f"v{i}" for i in range(self.n_values)]
                + [f"f{i}" for i in range(self.n_fillers)] + ["[Q]"])

    def sample(self, n: int, generator: torch.Generator) -> TaskBatch:
        N, Q = self.N, self.queries
        keys = torch.argsort(torch.rand(n, self.n_keys, generator=generator), dim=1)[:, :N]
        values = torch.argsort(torch.rand(n, self.n_values, generator=generator), dim=1)[:, :N]
        fill = torch.randint(0, self.n_fillers, (n, self.fillers), generator=generator)
        which = torch.argsort(torch.rand(n, N, generator=generator), dim=1)[:, :Q]  # distinct stored pairs
        q_keys, answers = keys.gather(1, which), values.gather(1, which)
        T = self.seq_len
        tokens = torch.empty(n, T, dtype=torch.long)
        tokens[:, 0:2 * N:2] = keys
        tokens[:, 1:2 * N:2] = values + self.n_keys
        f0 = 2 * N
        tokens[:, f0:f0 + self.fillers] = fill + self.n_keys + self.n_values
        q0 = f0 + self.fillers
        tokens[:, q0::3] = self.query_token
        tokens[:, q0 + 1::3] = q_keys
        tokens[:, q0 + 2::3] = answers + self.n_keys
        q_pos = torch.arange(Q) * 3 + q0 + 1
        loss_mask = torch.zeros(n, T, dtype=torch.bool)
        loss_mask[:, q_pos] = True
        target = torch.zeros(n, T, self.n_values)
        target[:, q_pos] = torch.nn.functional.one_hot(answers, self.n_values).float()
        labels = torch.full((n, T), IGNORE_INDEX, dtype=torch.long)
        labels[:, q_pos] = answers
        step = torch.full((n, T), -1, dtype=torch.long)
        step[:, q_pos] = torch.arange(Q)
        return TaskBatch(tokens=tokens, loss_mask=loss_mask, target_probs=target,
                         bayes_entropy=torch.zeros(n, T), labels=labels, step=step,
                         readout_ids=self.readout_ids, extras={"keys": keys, "values": values})
