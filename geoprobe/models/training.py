"""Training loop for wind-tunnel models.

Objective (next-token convention, readout slice only): at every supervised position the model's
log-probabilities over the readout slice, log q = log_softmax(logits[readout]), are trained with
- ``hard`` targets: cross-entropy -log q(answer) against the realised answer (the plain LM objective), or
- ``soft`` targets: cross-entropy -sum_h p_h log q_h against the exact posterior p (lower-variance gradient;
  the default for the HMM, whose realised hidden state is never shown).
Both are minimised by q = p, so either yields a calibrated model in the limit.

Schedule: AdamW (weight decay on matrices only), linear warm-up then cosine decay to ``min_lr_ratio * lr``,
gradient-norm clipping, optional bf16 autocast. Checkpoints are dense early (log-spaced, step 0 included) so
training dynamics can be measured; the trainer state is saved regularly and on interruption for --resume.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from geoprobe.errors import CheckpointError, ConfigError

TARGETS = ("hard", "soft")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation schedule of a wind-tunnel run."""

    steps: int
    batch_size: int
    lr: float
    warmup: int = 100
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    min_lr_ratio: float = 0.05
    eval_every: int = 250
    eval_sequences: int = 1024
    #: "hard" or "soft"; None = the task's default (``Task.default_target``)
    target: str | None = None
    #: number of log-spaced training checkpoints (plus step 0 and the last step)
    n_checkpoints: int = 24
    #: save the resumable trainer state every this many steps
    save_every: int = 250
    bf16: bool = False

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ConfigError(f"training needs steps >= 1, batch_size >= 1, lr > 0; got {self}")
        if self.target is not None and self.target not in TARGETS:
            raise ConfigError(f"unknown target {self.target!r}; valid choices: {', '.join(TARGETS)}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Multiplier of the base learning rate at ``step``: linear warm-up, then cosine to ``min_lr_ratio``."""
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    progress = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def checkpoint_steps(total: int, n: int) -> list[int]:
    """Steps at which to save a checkpoint: 0, ``n`` log-spaced steps in [1, total], and ``total``.

    Log spacing makes the schedule dense early, where attention patterns form (frame-precision dissociation).
    """
    if n <= 0:
        return [0, total]
    pts = {0, total}
    for i in range(n):
        pts.add(int(round(math.exp(math.log(total) * i / max(1, n - 1)))))
    return sorted(p for p in pts if 0 <= p <= total)


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.98))


def readout_loss(logits: torch.Tensor, batch, target: str) -> torch.Tensor:
    """Mean cross-entropy (nats) over supervised positions, on the readout slice (see module docstring)."""
    from geoprobe.calibration import readout_log_probs

    log_q = readout_log_probs(logits, batch.readout_ids)[batch.loss_mask]
    if target == "soft":
        return -(batch.target_probs[batch.loss_mask] * log_q).sum(-1).mean()
    labels = batch.labels[batch.loss_mask]
    return torch.nn.functional.nll_loss(log_q, labels)


def save_trainer_state(path: Path, **state: Any) -> None:
    from geoprobe.io import atomic_write

    atomic_write(path, lambda p: torch.save(state, p))


def load_trainer_state(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise CheckpointError(f"cannot resume: {path} is missing") from None
    except Exception as exc:
        raise CheckpointError(f"cannot resume: {path} is corrupted ({exc})") from None


class JsonlLog:
    """Append-only JSON-lines log (one flushed line per record)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, record: dict[str, Any]) -> None:
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")


def autocast(device: str, bf16: bool):
    """bf16 autocast on ``device`` when ``bf16``, else a no-op context."""
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda" if str(device).startswith("cuda") else "cpu", dtype=torch.bfloat16)


def optimisation_step(arch, model: torch.nn.Module, opt: torch.optim.Optimizer, batch, target: str,
                      cfg: TrainConfig, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One training step on ``batch``: forward (bf16 autocast if ``cfg.bf16``), readout loss, backward,
    gradient-norm clipping at ``cfg.grad_clip``, optimiser step. Returns (loss, pre-clipping gradient norm)."""
    with autocast(device, cfg.bf16):
        logits = arch.logits(model, batch.tokens, batch.features)
    loss = readout_loss(logits.float(), batch, target)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    opt.step()
    return loss, grad_norm


def timer() -> float:
    return time.perf_counter()
