"""Register your own wind tunnel: a task whose exact Bayesian predictive you know, then train and calibrate a
model on it with geoprobe's machinery.

The task here is a K-sided die whose face probabilities are drawn per sequence from a symmetric
Dirichlet(alpha) prior. After t rolls with face counts c, the exact predictive of the next roll is

    P(next = k | c) = (c_k + alpha) / (t + K alpha)        (Dirichlet-multinomial conjugacy).

Sequences are sampled by the equivalent Polya urn (each roll drawn from that predictive), so the sampler and
the posterior cannot disagree; the script also checks the formula against a Monte-Carlo posterior.

    python examples/register_wind_tunnel.py --smoke     # seconds
    python examples/register_wind_tunnel.py             # a longer training run (minutes on a laptop)
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from geoprobe.infotheory import entropy_bits
from geoprobe.tasks import TASKS, Task, TaskBatch
from geoprobe.tasks.base import IGNORE_INDEX
from geoprobe.tasks.params import Param


@TASKS.register("dirichlet_die")
class DirichletDie(Task):
    """Tokens ``[S] f_1 ... f_n``; position t (the start token is t = 0) predicts f_{t+1}."""

    name = "dirichlet_die"
    summary = "K-sided die, face probabilities ~ Dirichlet(alpha): predictive (c_k + alpha) / (t + K alpha)"
    default_target = "soft"

    #: every constructor parameter with its type and range: `--set K=6` and manifests are converted and checked
    params = {"K": Param(int, low=2), "n": Param(int, low=1), "alpha": Param(float, low=0, low_open=True)}

    def __init__(self, K: int = 4, n: int = 8, alpha: float = 1.0) -> None:
        self.K, self.n, self.alpha = int(K), int(n), float(alpha)

    @property
    def vocab_size(self) -> int:
        return self.K + 1  # faces 0..K-1 and the start token K

    @property
    def seq_len(self) -> int:
        return self.n + 1

    @property
    def readout_ids(self) -> torch.Tensor:
        return torch.arange(self.K)

    def config(self) -> dict[str, Any]:
        return {"K": self.K, "n": self.n, "alpha": self.alpha}

    def token_names(self) -> list[str]:
        return [f"face{k}" for k in range(self.K)] + ["<s>"]

    def sample(self, n: int, generator: torch.Generator) -> TaskBatch:
        B, T, K = n, self.seq_len, self.K
        tokens = torch.full((B, T), K, dtype=torch.long)
        probs = torch.zeros(B, T, K)
        labels = torch.full((B, T), IGNORE_INDEX, dtype=torch.long)
        step = torch.full((B, T), -1, dtype=torch.long)
        counts = torch.zeros(B, K, dtype=torch.float64)
        for t in range(self.n):  # Polya urn: roll t+1 ~ the exact predictive after t rolls
            pred = (counts + self.alpha) / (t + K * self.alpha)
            roll = torch.multinomial(pred, 1, generator=generator).squeeze(1)
            probs[:, t] = pred.float()
            labels[:, t], step[:, t], tokens[:, t + 1] = roll, t, roll
            counts[torch.arange(B), roll] += 1
        mask = step >= 0
        ent = torch.where(mask, entropy_bits(probs), torch.zeros(()))
        return TaskBatch(tokens, mask, probs, ent.float(), labels, step, self.readout_ids)


def monte_carlo_predictive(rolls: list[int], K: int, alpha: float, draws: int = 200_000, seed: int = 0):
    """P(next | rolls) by importance sampling from the prior: E[theta * L(theta)] / E[L(theta)]."""
    rng = np.random.default_rng(seed)
    theta = rng.dirichlet([alpha] * K, size=draws)
    like = np.prod(theta[:, rolls], axis=1)
    return (theta * like[:, None]).sum(0) / like.sum()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="a seconds-long training run")
    args = ap.parse_args()

    from geoprobe.models.architectures import ModelSize
    from geoprobe.models.presets import Preset
    from geoprobe.models.run import train_tunnel
    from geoprobe.models.training import TrainConfig
    from geoprobe.tasks import make_generator, make_task

    task = make_task("dirichlet_die", K=4, n=8, alpha=1.0)  # found by name like the built-in tunnels
    batch = task.sample(1, make_generator(0, "test"))
    rolls = batch.tokens[0, 1:6].tolist()
    exact = batch.target_probs[0, 5].double().numpy()
    mc = monte_carlo_predictive(rolls, task.K, task.alpha)
    print(f"after rolls {rolls}: exact predictive {np.round(exact, 4)}, Monte-Carlo {np.round(mc, 4)}")
    assert np.abs(exact - mc).max() < 0.01

    steps = 60 if args.smoke else 3000
    preset = Preset("custom", task.config(), ModelSize(2, 2, 32, task.seq_len),
                    TrainConfig(steps=steps, batch_size=64, lr=3e-3, warmup=10, eval_every=max(20, steps // 10),
                                eval_sequences=256))
    with tempfile.TemporaryDirectory(prefix="geoprobe-example-") as tmp:
        metrics = train_tunnel(Path(tmp) / "die", "dirichlet_die", preset, device="cpu", progress=not args.smoke)
    print(f"trained {steps} steps: entropy MAE vs the exact posterior {metrics['entropy_mae_bits']:.4f} bits, "
          f"KL {metrics['kl_bits']:.4f} bits")


if __name__ == "__main__":
    main()
