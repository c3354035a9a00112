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

A step whose loss or gradient norm is not finite raises :class:`NonFiniteStep` *before* the optimiser
changes the weights, so the model and the last saved trainer state stay usable.
"""

from __future__ import annotations

import contextlib
import json
import math
import pickle
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
    #: EM-like schedule: value parameters at lr x value_lr_mult (1 = ordinary training; see value_lr.py)
    value_lr_mult: float = 1.0

    def __post_init__(self) -> None:
        if not math.isfinite(self.lr) or self.lr <= 0:
            raise ConfigError(f"learning rate must be a finite number > 0, got lr={self.lr}")
        if not math.isfinite(self.value_lr_mult) or self.value_lr_mult <= 0:
            raise ConfigError(f"value_lr_mult must be a finite number > 0, got {self.value_lr_mult}")
        for key in ("weight_decay", "grad_clip", "min_lr_ratio"):
            value = getattr(self, key)
            if not math.isfinite(value) or value < 0:
                raise ConfigError(f"training needs a finite {key} >= 0, got {key}={value}")
        for key in ("steps", "batch_size", "eval_every", "eval_sequences", "save_every"):
            if getattr(self, key) < 1:
                raise ConfigError(f"training needs {key} >= 1, got {key}={getattr(self, key)}")
        if self.warmup < 0:
            raise ConfigError(f"training needs warmup >= 0, got warmup={self.warmup}")
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


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, arch_name: str | None = None) -> torch.optim.Optimizer:
    """AdamW, weight decay on matrices only; with ``cfg.value_lr_mult != 1`` the value parameters of
    ``arch_name`` train at lr x value_lr_mult (:mod:`geoprobe.models.value_lr`)."""
    if cfg.value_lr_mult != 1.0:
        from geoprobe.models.value_lr import value_lr_optimizer

        if arch_name is None:
            raise ConfigError("value_lr_mult != 1 needs the architecture's name to find its value parameters")
        return value_lr_optimizer(model, arch_name, cfg.lr, cfg.weight_decay, cfg.value_lr_mult)
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


#: keys of a trainer state (all taken at the same optimisation step)
STATE_KEYS = ("model", "optimizer", "scheduler", "generator", "step")


def save_trainer_state(path: Path, **state: Any) -> None:
    from geoprobe.io import atomic_write

    atomic_write(path, lambda p: torch.save(state, p))


def load_trainer_state(path: Path) -> dict[str, Any]:
    """Load a trainer state with ``torch.load(weights_only=True)``: tensors, numbers, strings and containers
    only; a file holding any other pickled object is refused (it could run code) and nothing is executed."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"cannot resume: {path} is missing") from None
    except pickle.UnpicklingError:
        raise CheckpointError(f"cannot resume: {path} holds pickled objects other than tensors and numbers; "
                              "refused to load it (a trainer state written by geoprobe never does)") from None
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(f"cannot resume: {path} is corrupted ({first})") from None
    missing = [k for k in STATE_KEYS if not isinstance(state, dict) or k not in state]
    if missing or not isinstance(state["generator"], torch.Tensor) or not isinstance(state["step"], int):
        raise CheckpointError(f"cannot resume: {path} is not a geoprobe trainer state (missing or bad: "
                              f"{', '.join(missing) or 'generator/step'})")
    return state


class JsonlLog:
    """Append-only JSON-lines log (one flushed line per record)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, record: dict[str, Any]) -> None:
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")

    def truncate(self, max_step: int) -> int:
        """Keep only the records with ``step <= max_step`` (and drop a torn last line): the log of a run resumed
        from the trainer state of ``max_step``. Returns the number of records dropped."""
        from geoprobe.io import write_text

        if not self.path.exists():
            return 0
        keep, dropped = [], 0
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                dropped += 1
                continue
            if isinstance(record, dict) and record.get("step", math.inf) <= max_step:
                keep.append(line + "\n")
            else:
                dropped += 1
        if dropped:
            write_text(self.path, "".join(keep))
        return dropped


class NonFiniteStep(ArithmeticError):
    """The loss or gradient norm of a step is not finite (raised before the optimiser step)."""

    def __init__(self, loss: float, grad_norm: float) -> None:
        super().__init__(f"loss {loss}, gradient norm {grad_norm}")
        self.loss, self.grad_norm = loss, grad_norm


def autocast(device: str, bf16: bool):
    """bf16 autocast on ``device`` when ``bf16``, else a no-op context."""
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda" if str(device).startswith("cuda") else "cpu", dtype=torch.bfloat16)


def optimisation_step(arch, model: torch.nn.Module, opt: torch.optim.Optimizer, batch, target: str,
                      cfg: TrainConfig, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One training step on ``batch``: forward (bf16 autocast if ``cfg.bf16``), readout loss, backward,
    gradient-norm clipping at ``cfg.grad_clip``, optimiser step. Returns (loss, pre-clipping gradient norm).

    Raises :class:`NonFiniteStep` (weights and optimiser untouched) when the loss or gradient norm is not finite.
    """
    with autocast(device, cfg.bf16):
        logits = arch.logits(model, batch.tokens, batch.features)
    loss = readout_loss(logits.float(), batch, target)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    if not bool(torch.isfinite(loss.detach()) & torch.isfinite(grad_norm)):
        opt.zero_grad(set_to_none=True)
        raise NonFiniteStep(float(loss.detach()), float(grad_norm))
    opt.step()
    return loss, grad_norm


def timer() -> float:
    return time.perf_counter()


def is_out_of_memory(exc: BaseException) -> bool:
    """True for a failed allocation: Python's MemoryError, torch's (CUDA) OutOfMemoryError, or the CPU
    allocator's RuntimeError ("can't allocate memory")."""
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text
                                              or "not enough memory" in text)


def out_of_memory_error(what: str, exc: BaseException) -> ConfigError:
    """One line for a failed allocation while doing ``what``, with the size torch reports when it does."""
    import re

    m = re.search(r"allocate (\d+) bytes", str(exc)) or re.search(r"allocate ([\d.]+ [KMGTP]iB)", str(exc))
    size = ""
    if m is not None:
        raw = m.group(1)
        size = f" (tried to allocate {raw})" if not raw.isdigit() else \
            f" (tried to allocate {int(raw) / 2**30:,.1f} GiB)"
    return ConfigError(f"out of memory while {what}{size}; use a smaller model, task or --batch-size")


@contextlib.contextmanager
def memory_guard(what: str):
    """Turn an allocation failure inside the block into :func:`out_of_memory_error` (one line)."""
    try:
        yield
    except (MemoryError, RuntimeError) as exc:
        if is_out_of_memory(exc):
            raise out_of_memory_error(what, exc) from None
        raise
