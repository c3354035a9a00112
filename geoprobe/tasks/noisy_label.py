"""Noisy-label in-context inference (SULA, Paper III) and a Beta-Bernoulli coin-flip variant.

``sula`` (two hypotheses). A hidden label y in {L1, L2} with uniform prior; each of K in-context examples
``x_i y_i`` (a random carrier word x_i, then a label) shows y with probability 1 - eps (eps = 0.1) and the other
label otherwise. After m of k examples say L1 the posterior is

    P(y = L1 | m of k) = 1 / (1 + r^(k - 2m)),   r = (1 - eps) / eps = 9,

and the predictive of the next example's label is P(y_{k+1} = L1) = (1 - eps) P(L1 | .) + eps P(L2 | .). Every
carrier position x_{k+1} is supervised with that predictive over the two label tokens (next-token convention);
``extras["posterior_L1"]`` holds the hidden-label posterior at the same positions and
``extras["latent_posterior"]`` the pair (P(L1 | .), P(L2 | .)) there, so calibration reports two distinct
scores: ``entropy_mae_bits`` against the entropy of the predictive (what the model is trained to output; never
below H_b(eps) = 0.469 bits) and ``latent_entropy_mae_bits`` against the entropy of the hidden-label posterior.
Expected entropy of the hidden-label posterior: 1.000, 0.469, 0.258, 0.078, 0.008 bits at k = 0, 1, 2, 4, 8;
the published LLM SULA errors (Paper III) and ``geoprobe scan``'s SULA experiment compare the model's
renormalised label probabilities with the hidden-label posterior, so only ``latent_entropy_mae_bits`` is
like-for-like with them.

``coinflip`` (Beta-Bernoulli, named as such: not the papers' task). A coin bias p ~ Beta(a, b) per sequence;
tokens ``[S] f_1 ... f_n`` with f in {H, T}; position t (the start token is t = 0) predicts f_{t+1} with the
conjugate predictive P(H) = (a + heads_{1..t}) / (a + b + t).
"""

from __future__ import annotations

from typing import Any

import torch

from geoprobe.infotheory import binary_entropy_bits, entropy_bits
from geoprobe.tasks.base import TASKS, Task, TaskBatch
from geoprobe.tasks.params import Param


def sula_posterior_l1(m: torch.Tensor, k: torch.Tensor, eps: float = 0.1) -> torch.Tensor:
    """P(y = L1 | m of k examples say L1) = 1 / (1 + ((1-eps)/eps)^(k - 2m)) (uniform prior)."""
    r = (1 - eps) / eps
    return 1.0 / (1.0 + torch.pow(torch.tensor(r, dtype=torch.float64), (k - 2 * m).double()))


def sula_expected_entropy(k: int, eps: float = 0.1) -> float:
    """E_m[H_b(P(L1 | m of k))] in bits, m ~ the mixture of Binomial(k, 1-eps) and Binomial(k, eps) (exact)."""
    from math import comb

    total = 0.0
    for m in range(k + 1):
        p_m = 0.5 * comb(k, m) * ((1 - eps) ** m * eps ** (k - m) + eps ** m * (1 - eps) ** (k - m))
        post = sula_posterior_l1(torch.tensor(m), torch.tensor(k), eps)
        total += p_m * float(binary_entropy_bits(post))
    return total


@TASKS.register("sula")
class SULATask(Task):
    """Noisy-label in-context wind tunnel (two hypotheses).

    Args:
        K: in-context examples per sequence.
        n_words: carrier-word vocabulary.
        eps: label noise (probability that an example shows the wrong label).
    """

    name = "sula"
    summary = "noisy-label in-context learning (SULA): posterior 1/(1+9^(k-2m)) over two labels"
    params = {"K": Param(int, low=1), "n_words": Param(int, low=1),
              "eps": Param(float, low=0, high=0.5, low_open=True, high_open=True)}

    def __init__(self, K: int = 8, n_words: int = 16, eps: float = 0.1) -> None:
        self.K, self.n_words, self.eps = K, n_words, eps

    def config(self) -> dict[str, Any]:
        return {"K": self.K, "n_words": self.n_words, "eps": self.eps}

    @property
    def vocab_size(self) -> int:
        return self.n_words + 2

    @property
    def seq_len(self) -> int:
        return 2 * self.K

    @property
    def readout_ids(self) -> torch.Tensor:
        return torch.arange(self.n_words, self.n_words + 2)

    def token_names(self) -> list[str]:
        return [f"w{i}" for i in range(self.n_words)] + ["L1", "L2"]

    def sample(self, n: int, generator: torch.Generator) -> TaskBatch:
        K = self.K
        y = torch.randint(0, 2, (n, 1), generator=generator)  # 0 = L1, 1 = L2
        flip = torch.rand(n, K, generator=generator) < self.eps
        shown = torch.where(flip, 1 - y, y)  # [n, K] label index of each example
        words = torch.randint(0, self.n_words, (n, K), generator=generator)
        tokens = torch.empty(n, 2 * K, dtype=torch.long)
        tokens[:, 0::2] = words
        tokens[:, 1::2] = shown + self.n_words
        says_l1 = (shown == 0).long()
        m = torch.cumsum(says_l1, 1) - says_l1  # L1 votes before example i
        k = torch.arange(K).expand(n, K)
        post = sula_posterior_l1(m, k, self.eps).float()  # P(y = L1 | examples before i)
        p_next = (1 - self.eps) * post + self.eps * (1 - post)
        pred = torch.stack([p_next, 1 - p_next], -1)
        T = 2 * K
        pos = torch.arange(K) * 2
        loss_mask = torch.zeros(n, T, dtype=torch.bool)
        loss_mask[:, pos] = True
        target = torch.zeros(n, T, 2)
        target[:, pos] = pred
        labels = torch.full((n, T), -100, dtype=torch.long)
        labels[:, pos] = shown
        step = torch.full((n, T), -1, dtype=torch.long)
        step[:, pos] = torch.arange(K)
        posterior = torch.zeros(n, T)
        posterior[:, pos] = post
        latent = torch.zeros(n, T, 2)
        latent[:, pos] = torch.stack([post, 1 - post], -1)
        ent = torch.where(loss_mask, entropy_bits(target), torch.zeros(()))
        return TaskBatch(tokens=tokens, loss_mask=loss_mask, target_probs=target, bayes_entropy=ent.float(),
                         labels=labels, step=step, readout_ids=self.readout_ids,
                         extras={"label": y.squeeze(1), "posterior_L1": posterior,
                                 "latent_posterior": latent})


@TASKS.register("coinflip")
class CoinFlipTask(Task):
    """Beta-Bernoulli coin flips with the conjugate predictive (a named extra, not the papers' SULA task).

    Args:
        n: flips per sequence; a, b: Beta prior parameters (> 0).
    """

    name = "coinflip"
    summary = "Beta-Bernoulli coin flips: predictive (a + heads) / (a + b + t)"
    params = {"n": Param(int, low=1), "a": Param(float, low=0, low_open=True),
              "b": Param(float, low=0, low_open=True)}

    def __init__(self, n: int = 16, a: float = 1.0, b: float = 1.0) -> None:
        self.n, self.a, self.b = n, a, b

    def config(self) -> dict[str, Any]:
        return {"n": self.n, "a": self.a, "b": self.b}

    @property
    def vocab_size(self) -> int:
        return 3

    @property
    def seq_len(self) -> int:
        return self.n + 1

    @property
    def readout_ids(self) -> torch.Tensor:
        return torch.tensor([1, 2])

    def token_names(self) -> list[str]:
        return ["[S]", "H", "T"]

    def sample(self, n: int, generator: torch.Generator) -> TaskBatch:
        N = self.n
        ga = torch.distributions.Gamma(torch.tensor(self.a), torch.tensor(1.0))
        gb = torch.distributions.Gamma(torch.tensor(self.b), torch.tensor(1.0))
        # Beta(a, b) = X / (X + Y) with X ~ Gamma(a), Y ~ Gamma(b); sampled through the generator's uniforms
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
            x, yv = ga.sample((n,)), gb.sample((n,))
        p = x / (x + yv)
        heads = torch.rand(n, N, generator=generator) < p[:, None]
        tokens = torch.zeros(n, N + 1, dtype=torch.long)
        tokens[:, 1:] = torch.where(heads, 1, 2)
        h_before = torch.cat([torch.zeros(n, 1), torch.cumsum(heads.float(), 1)], 1)[:, :N]  # heads in 1..t
        t = torch.arange(N).float()
        p_head = (self.a + h_before) / (self.a + self.b + t)
        target = torch.zeros(n, N + 1, 2)
        target[:, :N] = torch.stack([p_head, 1 - p_head], -1)
        loss_mask = torch.zeros(n, N + 1, dtype=torch.bool)
        loss_mask[:, :N] = True
        labels = torch.full((n, N + 1), -100, dtype=torch.long)
        labels[:, :N] = (~heads).long()
        step = torch.full((n, N + 1), -1, dtype=torch.long)
        step[:, :N] = torch.arange(N)
        ent = torch.where(loss_mask, entropy_bits(target), torch.zeros(()))
        return TaskBatch(tokens=tokens, loss_mask=loss_mask, target_probs=target, bayes_entropy=ent.float(),
                         labels=labels, step=step, readout_ids=self.readout_ids, extras={"p": p})
