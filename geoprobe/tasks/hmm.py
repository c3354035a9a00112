"""HMM filtering (transport primitive).

Latent, fresh per sequence: a transition matrix T (S x S, S = ``n_states``) and an emission matrix E (S x M,
M = ``n_symbols``), every row drawn from Dirichlet(1, ..., 1), floored at 0.05 and rounded to hundredths (see
:func:`quantize_rows` for the exact repair rule); the start distribution pi0 is uniform. Hidden states s_1..s_K and observations o_1..o_K are sampled from
the *rounded* matrices, which are exactly the ones shown to the model in the header.

Sequence (S = M = 5 by default; 53 + 2K tokens)::

    [TRANS] T[0,0] T[0,1] ... T[S-1,S-1] [EMIT] E[0,0] ... E[S-1,M-1] [SEP] [OBS] o_1 [OBS] o_2 ... [OBS] o_K

Matrices are written row-major, one probability token per entry. Header length 3 + S*S + S*M (53).

Vocabulary (ids; ``vocab_size = 100 + M + S`` = 110 by default):

- ``0..95``: probability tokens ``p0.05`` .. ``p1.00``; id = 100 * p - 5 (hundredths minus 5);
- ``96`` ``[TRANS]``, ``97`` ``[EMIT]``, ``98`` ``[SEP]``, ``99`` ``[OBS]``;
- ``100..100+M-1``: observation symbols ``o0`` ..; these form the readout slice of ``target="next_obs"``;
- ``100+M..100+M+S-1``: state tokens ``[S0]`` ..: **output-only** (they never occur in inputs), the readout
  slice of ``target="filter"``. The 105 input tokens of the published task are ids 0..104; the 5 state tokens are
  appended so that the model's unembedding has a logit per hidden state.

Targets (named variants, ``target=``):

- ``filter`` (default): at the position of symbol o_t (t = 1..K) the filtering posterior p(s_t | o_1..o_t),
  from the normalised forward algorithm (float64)::

      alpha_1 ∝ pi0 ⊙ E[:, o_1],    alpha_t ∝ (T^T alpha_{t-1}) ⊙ E[:, o_t].

  ``labels`` holds the realised hidden state s_t (an index into the state slice), but the hidden state is never
  observed, so the default loss is soft cross-entropy against the posterior (``default_target = "soft"``).
- ``next_obs``: at the position of symbol o_t for t = 1..K-1 the predictive of the next observation,
  p(o_{t+1} | o_1..o_t) = sum_j (T^T alpha_t)_j E[j, :], over the M symbol tokens; ``labels`` = o_{t+1}.
  (The next input token there is ``[OBS]``; the answer is read from the symbol slice, never the token itself.)

``step`` numbers the supervised positions 0, 1, ... (0-based t). ``extras``: ``transition`` [B, S, S] and
``emission`` [B, S, M] (float32, exact multiples of 0.01 up to float32 rounding), ``states`` [B, K] and
``observations`` [B, K] (int64, 0-based).
"""

from __future__ import annotations

from typing import Any

import torch

from geoprobe.infotheory import entropy_bits
from geoprobe.tasks.base import IGNORE_INDEX, TASKS, Task, TaskBatch, require
from geoprobe.tasks.params import Param

TARGETS = ("filter", "next_obs")
#: the smallest matrix entry, in hundredths (0.05)
MIN_HUNDREDTHS = 5
#: probability tokens for 0.05, 0.06, ..., 1.00
N_PROB_TOKENS = 100 - MIN_HUNDREDTHS + 1
TRANS_ID = N_PROB_TOKENS  # 96
EMIT_ID = N_PROB_TOKENS + 1  # 97
SEP_ID = N_PROB_TOKENS + 2  # 98
OBS_ID = N_PROB_TOKENS + 3  # 99
SYMBOL_OFFSET = N_PROB_TOKENS + 4  # 100
#: largest number of states/symbols for which every entry can be >= 0.05
MAX_SIZE = 100 // MIN_HUNDREDTHS


def quantize_rows(probs: torch.Tensor) -> torch.Tensor:
    """Floor probability rows at 0.05 and round them to hundredths summing to exactly 1.00 (vectorised).

    Rule ("floor, then largest remainder on the mass above the floor"), for a row p of length k (k <= 20):

    1. every entry gets the floor of 5 hundredths; R = 100 - 5k hundredths remain;
    2. R is apportioned in proportion to the excess above the floor, w_i = max(p_i - 0.05, 0), by the
       largest-remainder (Hamilton) method: quota_i = R w_i / sum_j w_j, entry i gets floor(quota_i), and the
       R - sum_i floor(quota_i) leftover hundredths go one each to the largest fractional parts (ties to the
       lower index). A row with sum w = 0 (only p = uniform at k = 20) gets its excess uniformly.

    Result h: integers, h_i >= 5, sum h = 100. When no p_i is below 0.05, quota_i = 100 p_i - 5, so the rule is
    plain rounding of 100 p to integers that keep the sum at 100 (|h_i - 100 p_i| < 1); otherwise the floored
    entries' extra mass is taken from the others in proportion to their excess.

    Args:
        probs: ``[..., k]`` rows summing to 1 (any float dtype).

    Returns:
        ``[..., k]`` int64 hundredths.
    """
    k = probs.shape[-1]
    require(1 <= k <= MAX_SIZE, f"rows of length {k} cannot have every entry >= 0.05 (at most {MAX_SIZE})")
    p = probs.double()
    remaining = 100 - MIN_HUNDREDTHS * k
    excess = (p - MIN_HUNDREDTHS / 100).clamp_min(0.0)
    total = excess.sum(-1, keepdim=True)
    excess = torch.where(total > 0, excess, torch.ones_like(excess))
    quota = remaining * excess / excess.sum(-1, keepdim=True)
    base = quota.floor()
    leftover = remaining - base.sum(-1, keepdim=True).long()  # in [0, k]
    order = torch.argsort(-(quota - base), dim=-1, stable=True)
    rank = torch.argsort(order, dim=-1)
    h = base.long() + (rank < leftover).long() + MIN_HUNDREDTHS
    return h


def _sample_rows(cum_hundredths: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Index drawn from each row with probabilities h/100, given inclusive cumulative hundredths ``[..., k]``.

    Exact inverse-CDF sampling: r uniform on {0..99}, index = #{j : cum_j <= r}.
    """
    r = torch.randint(0, 100, cum_hundredths.shape[:-1], generator=generator)
    return (cum_hundredths <= r.unsqueeze(-1)).sum(-1)


def forward_filter(
    transition: torch.Tensor,
    emission: torch.Tensor,
    observations: torch.Tensor,
    start: torch.Tensor | None = None,
) -> torch.Tensor:
    """Filtering posteriors p(s_t | o_1..o_t) by the normalised forward algorithm, in float64.

    alpha_1 ∝ pi0 ⊙ E[:, o_1] and alpha_t ∝ (T^T alpha_{t-1}) ⊙ E[:, o_t], vectorised over the batch.

    Args:
        transition: ``[B, S, S]`` row-stochastic T (T[i, j] = p(s_{t+1} = j | s_t = i)).
        emission: ``[B, S, M]`` row-stochastic E (E[i, o] = p(o | s = i)).
        observations: ``[B, K]`` symbol indices.
        start: ``[B, S]`` or ``[S]`` start distribution pi0; uniform when omitted.

    Returns:
        ``[B, K, S]`` float64 posteriors.
    """
    T, E = transition.double(), emission.double()
    B, S, _ = T.shape
    K = observations.shape[1]
    lik = E.transpose(1, 2).gather(1, observations.unsqueeze(-1).expand(B, K, S))  # [B, K, S]: E[s, o_t]
    pred = torch.full((B, S), 1.0 / S, dtype=torch.float64) if start is None else start.double().expand(B, S)
    out = torch.empty(B, K, S, dtype=torch.float64)
    for t in range(K):
        if t > 0:
            pred = torch.einsum("bi,bij->bj", out[:, t - 1], T)
        alpha = pred * lik[:, t]
        out[:, t] = alpha / alpha.sum(-1, keepdim=True)
    return out


def next_observation_predictive(
    posteriors: torch.Tensor, transition: torch.Tensor, emission: torch.Tensor
) -> torch.Tensor:
    """p(o_{t+1} | o_1..o_t) = sum_j (T^T alpha_t)_j E[j, :] for every filtering posterior alpha_t.

    Args:
        posteriors: ``[B, K, S]`` from :func:`forward_filter`.
        transition: ``[B, S, S]``.
        emission: ``[B, S, M]``.

    Returns:
        ``[B, K, M]`` float64.
    """
    nxt = torch.einsum("bki,bij->bkj", posteriors.double(), transition.double())
    return torch.einsum("bkj,bjo->bko", nxt, emission.double())


@TASKS.register("hmm")
class HMMTask(Task):
    """HMM filtering wind tunnel (see the module docstring for the sequence, vocabulary and targets).

    Args:
        K: number of observations per sequence (>= 1; >= 2 for ``target="next_obs"``).
        n_states: hidden states S (2..20; default 5).
        n_symbols: observation symbols M (2..20; default 5).
        target: ``filter`` (default) or ``next_obs``.
    """

    name = "hmm"
    summary = "HMM filtering (transport): forward-algorithm posterior over hidden states"
    #: every matrix entry is >= 0.05, so at most 20 states / symbols
    params = {"K": Param(int, low=1), "n_states": Param(int, low=2, high=MAX_SIZE),
              "n_symbols": Param(int, low=2, high=MAX_SIZE), "target": Param(str, choices=TARGETS)}
    default_target = "soft"

    def __init__(self, K: int = 20, n_states: int = 5, n_symbols: int = 5, target: str = "filter") -> None:
        require(
            target != "next_obs" or K >= 2,
            f"hmm target 'next_obs' needs K >= 2 (the last observation has no successor), got K={K}",
        )
        self.K, self.n_states, self.n_symbols, self.target = K, n_states, n_symbols, target

    def config(self) -> dict[str, Any]:
        return {"K": self.K, "n_states": self.n_states, "n_symbols": self.n_symbols, "target": self.target}

    @property
    def header_len(self) -> int:
        """``[TRANS]`` + S*S + ``[EMIT]`` + S*M + ``[SEP]`` (53 for S = M = 5)."""
        return 3 + self.n_states * (self.n_states + self.n_symbols)

    @property
    def state_offset(self) -> int:
        """Id of ``[S0]``, the first (output-only) state token."""
        return SYMBOL_OFFSET + self.n_symbols

    @property
    def vocab_size(self) -> int:
        return self.state_offset + self.n_states

    @property
    def seq_len(self) -> int:
        return self.header_len + 2 * self.K

    @property
    def readout_ids(self) -> torch.Tensor:
        if self.target == "filter":
            return torch.arange(self.state_offset, self.state_offset + self.n_states)
        return torch.arange(SYMBOL_OFFSET, SYMBOL_OFFSET + self.n_symbols)

    def token_names(self) -> list[str]:
        probs = [f"p{h / 100:.2f}" for h in range(MIN_HUNDREDTHS, 101)]
        return (
            probs
            + ["[TRANS]", "[EMIT]", "[SEP]", "[OBS]"]
            + [f"o{i}" for i in range(self.n_symbols)]
            + [f"[S{i}]" for i in range(self.n_states)]
        )

    def symbol_positions(self) -> torch.Tensor:
        """``[K]`` positions of the observation symbols o_1..o_K."""
        return self.header_len + 2 * torch.arange(self.K) + 1

    def decode_header(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The (T, E) matrices shown in the header of ``tokens`` ``[B, T]``, as float64 probabilities."""
        S, M = self.n_states, self.n_symbols
        hundredths = (tokens[:, : self.header_len] + MIN_HUNDREDTHS).double() / 100
        trans = hundredths[:, 1 : 1 + S * S].reshape(-1, S, S)
        emit = hundredths[:, 2 + S * S : 2 + S * S + S * M].reshape(-1, S, M)
        return trans, emit

    def sample(self, n: int, generator: torch.Generator) -> TaskBatch:
        S, M, K = self.n_states, self.n_symbols, self.K
        # Dirichlet(1, ..., 1) rows = normalised i.i.d. Exp(1) draws
        raw_t = torch.empty(n, S, S, dtype=torch.float64).exponential_(generator=generator)
        raw_e = torch.empty(n, S, M, dtype=torch.float64).exponential_(generator=generator)
        h_t = quantize_rows(raw_t / raw_t.sum(-1, keepdim=True))  # [n, S, S] int hundredths
        h_e = quantize_rows(raw_e / raw_e.sum(-1, keepdim=True))  # [n, S, M]
        cum_t, cum_e = h_t.cumsum(-1), h_e.cumsum(-1)

        rows = torch.arange(n)
        states = torch.empty(n, K, dtype=torch.long)
        states[:, 0] = torch.randint(0, S, (n,), generator=generator)
        r_trans = torch.randint(0, 100, (n, K), generator=generator)
        for t in range(1, K):
            cum_row = cum_t[rows, states[:, t - 1]]  # [n, S]
            states[:, t] = (cum_row <= r_trans[:, t : t + 1]).sum(-1)
        observations = _sample_rows(cum_e[rows.unsqueeze(1), states], generator)  # [n, K]

        trans, emit = h_t.double() / 100, h_e.double() / 100
        post = forward_filter(trans, emit, observations)  # [n, K, S] float64

        L, hl = self.seq_len, self.header_len
        tokens = torch.empty(n, L, dtype=torch.long)
        tokens[:, 0] = TRANS_ID
        tokens[:, 1 : 1 + S * S] = (h_t - MIN_HUNDREDTHS).reshape(n, S * S)
        tokens[:, 1 + S * S] = EMIT_ID
        tokens[:, 2 + S * S : hl - 1] = (h_e - MIN_HUNDREDTHS).reshape(n, S * M)
        tokens[:, hl - 1] = SEP_ID
        sym_pos = self.symbol_positions()
        tokens[:, sym_pos - 1] = OBS_ID
        tokens[:, sym_pos] = observations + SYMBOL_OFFSET

        if self.target == "filter":
            pos, target, answer = sym_pos, post, states
        else:
            pos = sym_pos[:-1]
            target = next_observation_predictive(post[:, :-1], trans, emit)
            answer = observations[:, 1:]
        H = target.shape[-1]
        loss_mask = torch.zeros(n, L, dtype=torch.bool)
        target_probs = torch.zeros(n, L, H)
        bayes_entropy = torch.zeros(n, L)
        labels = torch.full((n, L), IGNORE_INDEX, dtype=torch.long)
        step = torch.full((n, L), -1, dtype=torch.long)
        loss_mask[:, pos] = True
        target_probs[:, pos] = target.float()
        bayes_entropy[:, pos] = entropy_bits(target).float()
        labels[:, pos] = answer
        step[:, pos] = torch.arange(len(pos))
        return TaskBatch(
            tokens=tokens,
            loss_mask=loss_mask,
            target_probs=target_probs,
            bayes_entropy=bayes_entropy,
            labels=labels,
            step=step,
            readout_ids=self.readout_ids,
            extras={
                "transition": trans.float(),
                "emission": emit.float(),
                "states": states,
                "observations": observations,
            },
        )
