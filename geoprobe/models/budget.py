"""Throughput measurement and wall-clock budgets for wind-tunnel training.

A budgeted run keeps its preset's model, batch, learning rate and schedule *shape* and shortens only the
number of optimisation steps so that training plus evaluation fit in ``seconds``:

    t_train(n)  = n * batch / r_train                     (r_train: measured training sequences/s)
    t_eval      = E * n_eval / r_eval                      (r_eval: measured forward-only sequences/s;
                                                            E = periodic evaluations + the final one +
                                                            length-generalisation passes, each weighted by
                                                            its sequence length relative to the training one)
    n           = floor((safety * seconds - t_measure - t_eval) * r_train / batch), clipped to [1, preset steps]

Warm-up is scaled with the steps (at most 10% of them); periodic evaluation keeps ``n_evals`` evaluations per
run on at most ``periodic_sequences`` sequences each (the training curve), while the final evaluation keeps its
full size (the measurement). The measured rates and the resulting schedule are recorded in the run's manifest, so a budgeted run
is reproducible by passing the recorded ``steps`` back (``--steps``) on any machine.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any

import torch

from geoprobe.errors import ConfigError
from geoprobe.models.architectures import Architecture
from geoprobe.models.presets import LENGTH_PARAM, Preset
from geoprobe.models.training import TrainConfig, make_optimizer, optimisation_step, timer
from geoprobe.tasks.base import Task, make_generator


def train_rate(arch: Architecture, model: torch.nn.Module, task: Task, cfg: TrainConfig, *, steps: int = 3,
               repeats: int = 1, device: str = "cpu", min_seconds: float = 0.0, warmup_steps: int = 1) -> float:
    """Training throughput in sequences/s of the run's own step (:func:`optimisation_step`: forward, backward,
    clipping, AdamW) on ``cfg.batch_size`` sequences.

    ``warmup_steps`` untimed steps, then the median over ``repeats`` timings of at least ``steps`` steps and
    at least ``min_seconds`` seconds each. Trains ``model`` in place (pass a throwaway model).
    """
    model.to(device).train()
    opt = make_optimizer(model, cfg)
    gen = make_generator(0, "train")
    target = cfg.target or task.default_target

    def step() -> None:
        optimisation_step(arch, model, opt, task.sample(cfg.batch_size, gen).to(device), target, cfg, device)

    for _ in range(warmup_steps):
        step()
    rates = []
    for _ in range(repeats):
        t0, done = timer(), 0
        while done < steps or timer() - t0 < min_seconds:
            step()
            done += 1
        rates.append(done * cfg.batch_size / (timer() - t0))
    return statistics.median(rates)


@torch.no_grad()
def eval_rate(arch: Architecture, model: torch.nn.Module, task: Task, *, n: int = 256,
              device: str = "cpu") -> float:
    """Forward-only throughput in sequences/s on one batch of ``n`` sequences (after a small warm-up)."""
    model.to(device).eval()
    gen = make_generator(0, "eval")
    warm = task.sample(min(n, 16), gen).to(device)
    arch.logits(model, warm.tokens, warm.features)
    batch = task.sample(n, gen).to(device)
    t0 = timer()
    arch.logits(model, batch.tokens, batch.features)
    return n / (timer() - t0)


#: the :class:`TrainConfig` fields a plan sets (``get_preset(task, name, **{k: plan[k] for k in ...})``)
PLANNED_FIELDS = ("steps", "warmup", "eval_every", "eval_sequences")


def min_budget_steps(preset_steps: int) -> int:
    """Fewest steps worth training under a budget: 5% of the preset's steps, at least 10."""
    return max(10, math.ceil(0.05 * preset_steps))


@dataclass(frozen=True)
class BudgetPlan:
    """The schedule chosen for a budget and the measurements behind it."""

    seconds: float
    steps: int
    warmup: int
    eval_every: int
    eval_sequences: int
    train_seqs_per_s: float
    eval_seqs_per_s: float
    eval_seconds_estimate: float
    measure_seconds: float
    #: True when the budget, not the preset, set the number of steps
    limited: bool

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def plan_budget(arch: Architecture, task: Task, preset: Preset, seconds: float, *, device: str = "cpu",
                safety: float = 0.9, n_evals: int = 10, periodic_sequences: int = 512,
                eval_sequences_final: int = 2048) -> BudgetPlan:
    """Fit ``preset``'s training of ``arch`` on ``task`` into ``seconds`` of wall time (see module docstring)."""
    if seconds <= 0:
        raise ConfigError(f"the time budget must be positive, got {seconds} s")
    cfg = preset.train
    t0 = timer()
    model = arch.build(task.vocab_size, preset.size, seed=0, n_features=task.n_features)
    # steady-state steps (a 3-step timing right after construction under-reads fast models); the median of
    # three timings resists a short burst of other load on a shared machine
    r_train = train_rate(arch, model, task, cfg, device=device, warmup_steps=2, repeats=3,
                         min_seconds=min(1.5, 0.004 * seconds))
    r_eval = eval_rate(arch, model, task, device=device)
    measure = timer() - t0
    del model
    # evaluation passes in units of "sequences at the training length"
    length_passes = 0.0
    param = LENGTH_PARAM.get(task.name)
    if param is not None:
        for length in preset.eval_lengths:
            length_passes += task.with_length(**{param: length}).seq_len / task.seq_len
    periodic = min(cfg.eval_sequences, periodic_sequences)
    eval_seqs = n_evals * periodic + (1 + length_passes) * max(cfg.eval_sequences, eval_sequences_final)
    t_eval = eval_seqs / r_eval
    available = safety * seconds - measure - t_eval
    fit = max(1, math.floor(available * r_train / cfg.batch_size)) if available > 0 else 1
    if fit >= cfg.steps:  # the budget is not binding: the preset's schedule, unchanged
        steps, warmup, eval_every, periodic = cfg.steps, cfg.warmup, cfg.eval_every, cfg.eval_sequences
    else:
        steps = fit
        warmup = max(1, min(cfg.warmup, steps // 10))
        eval_every = max(1, min(cfg.eval_every, math.ceil(steps / n_evals)))
    return BudgetPlan(seconds=float(seconds), steps=steps, warmup=warmup, eval_every=eval_every,
                      eval_sequences=periodic, train_seqs_per_s=r_train, eval_seqs_per_s=r_eval,
                      eval_seconds_estimate=t_eval, measure_seconds=measure, limited=fit < cfg.steps)
