"""Bijection elimination (accumulation primitive).

Latent: a uniformly random permutation pi of {0..V-1}, fresh per sequence. Keys k_1..k_L are distinct (without
replacement, default) or i.i.d. uniform (with replacement).

Posterior at key t given the pairs (k_s, pi(k_s)) for s < t:
- if k_t was seen before: a point mass on pi(k_t);
- otherwise: uniform over the values not yet used, U = {0..V-1} \\ {pi(k_s) : s < t}, so
  p(v) = 1[v in U] / |U| and H = log2 |U| (the staircase log2(V - t + 1) without replacement, 1-based t).

Layouts:
- ``separate`` (default): ``k1 (pi(k1)+V) k2 (pi(k2)+V) ... k_{L-1} (pi(k_{L-1})+V) k_L``; vocab 2V (keys 0..V-1,
  values V..2V-1), length 2L-1; every key position is supervised and predicts the value token after it.
- ``paired_query``: ``k1 v1 ... kL vL q`` with a shared vocab of V; key positions predict the value that follows
  and the query position (a key drawn uniformly from the context) predicts pi(q) with Bayes entropy 0. With
  ``query_only=True`` only the query position is supervised.
"""

from __future__ import annotations

from typing import Any

import torch

from geoprobe.infotheory import entropy_bits
from geoprobe.tasks.base import IGNORE_INDEX, TASKS, Task, TaskBatch, require
from geoprobe.tasks.params import Param

LAYOUTS = ("separate", "paired_query")


def elimination_posterior(keys: torch.Tensor, values: torch.Tensor, n_values: int) -> torch.Tensor:
    """Exact predictive p(value of k_t | pairs before t) for every t, vectorised.

    Args:
        keys: ``[B, L]`` key ids in 0..V-1.
        values: ``[B, L]`` their values pi(k_t) in 0..V-1.
        n_values: V.

    Returns:
        ``[B, L, V]`` float32: a point mass on pi(k_t) where k_t occurred before t, else uniform over the values
        not used by the (distinct) pairs before t.
    """
    onehot_k = torch.nn.functional.one_hot(keys, n_values).float()
    onehot_v = torch.nn.functional.one_hot(values, n_values).float()
    seen_k = (torch.cumsum(onehot_k, 1) - onehot_k) > 0  # [B, L, V]: key id seen strictly before t
    used_v = (torch.cumsum(onehot_v, 1) - onehot_v) > 0
    key_seen = seen_k.gather(2, keys.unsqueeze(-1)).squeeze(-1)  # [B, L]
    free = (~used_v).float()
    uniform = free / free.sum(-1, keepdim=True)
    return torch.where(key_seen.unsqueeze(-1), onehot_v, uniform)


@TASKS.register("bijection")
class BijectionTask(Task):
    """Bijection elimination wind tunnel.

    Args:
        V: size of the key and value sets (>= 2).
        L: number of keys per sequence (1 <= L <= V without replacement).
        layout: ``separate`` (default) or ``paired_query``.
        replacement: draw keys i.i.d. (sawtooth entropy curve) instead of without replacement.
        query_only: ``paired_query`` only: supervise the query position alone.
    """

    name = "bijection"
    summary = "bijection elimination (accumulation): posterior uniform over unused values"
    params = {"V": Param(int, low=2), "L": Param(int, low=1), "layout": Param(str, choices=LAYOUTS),
              "replacement": Param(bool), "query_only": Param(bool)}

    def __init__(
        self,
        V: int = 20,
        L: int = 19,
        layout: str = "separate",
        replacement: bool = False,
        query_only: bool = False,
    ) -> None:
        require(
            replacement or L <= V,
            f"bijection without replacement needs L <= V, got L={L} > V={V} (sample keys with replacement=true, or use a smaller L)",
        )
        require(not query_only or layout == "paired_query", "query_only applies to the paired_query layout only")
        self.V, self.L = V, L
        self.layout, self.replacement, self.query_only = layout, replacement, query_only

    def config(self) -> dict[str, Any]:
        return {
            "V": self.V,
            "L": self.L,
            "layout": self.layout,
            "replacement": self.replacement,
            "query_only": self.query_only,
        }

    @property
    def vocab_size(self) -> int:
        return 2 * self.V if self.layout == "separate" else self.V

    @property
    def seq_len(self) -> int:
        return 2 * self.L - 1 if self.layout == "separate" else 2 * self.L + 1

    @property
    def readout_size(self) -> int:
        return self.V

    @property
    def readout_ids(self) -> torch.Tensor:
        offset = self.V if self.layout == "separate" else 0
        return torch.arange(offset, offset + self.V)

    def token_names(self) -> list[str]:
        if self.layout == "separate":
            return [f"k{i}" for i in range(self.V)] + [f"v{i}" for i in range(self.V)]
        return [f"s{i}" for i in range(self.V)]

    def sample(self, n: int, generator: torch.Generator) -> TaskBatch:
        V, L = self.V, self.L
        perms = torch.argsort(torch.rand(n, V, generator=generator), dim=1)
        if self.replacement:
            keys = torch.randint(0, V, (n, L), generator=generator)
        else:
            keys = torch.argsort(torch.rand(n, V, generator=generator), dim=1)[:, :L]
        values = perms.gather(1, keys)
        post = elimination_posterior(keys, values, V)  # [n, L, V]
        T = self.seq_len
        tokens = torch.zeros(n, T, dtype=torch.long)
        loss_mask = torch.zeros(n, T, dtype=torch.bool)
        target = torch.zeros(n, T, V)
        labels = torch.full((n, T), IGNORE_INDEX, dtype=torch.long)
        step = torch.full((n, T), -1, dtype=torch.long)
        key_pos = torch.arange(L) * 2
        tokens[:, key_pos] = keys
        if self.layout == "separate":
            tokens[:, key_pos[:-1] + 1] = values[:, :-1] + V
        else:
            tokens[:, key_pos + 1] = values
        if not self.query_only:
            loss_mask[:, key_pos] = True
            target[:, key_pos] = post
            labels[:, key_pos] = values
            step[:, key_pos] = torch.arange(L)
        extras = {"permutation": perms, "keys": keys}
        if self.layout == "paired_query":
            qi = torch.randint(0, L, (n,), generator=generator)
            q = keys.gather(1, qi.unsqueeze(1)).squeeze(1)
            answer = perms.gather(1, q.unsqueeze(1)).squeeze(1)
            tokens[:, -1] = q
            loss_mask[:, -1] = True
            target[:, -1] = torch.nn.functional.one_hot(answer, V).float()
            labels[:, -1] = answer
            step[:, -1] = 0 if self.query_only else L
            extras["query"] = q
        ent = torch.where(loss_mask, entropy_bits(target), torch.zeros(()))
        return TaskBatch(
            tokens=tokens,
            loss_mask=loss_mask,
            target_probs=target,
            bayes_entropy=ent.float(),
            labels=labels,
            step=step,
            readout_ids=self.readout_ids,
            extras=extras,
        )
