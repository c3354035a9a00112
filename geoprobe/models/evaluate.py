"""Evaluate a wind-tunnel model against the exact posterior on a held-out stream (never the training seed)."""

from __future__ import annotations

from typing import Any

import torch
from tqdm.auto import tqdm

from geoprobe.calibration import CalibrationAccumulator, CalibrationResult, readout_log_probs
from geoprobe.models.architectures import Architecture
from geoprobe.tasks.base import Task, TaskBatch, make_generator


@torch.no_grad()
def evaluate_model(model: torch.nn.Module, arch: Architecture, task: Task, *, n_sequences: int, seed: int,
                   split: str = "eval", batch_size: int = 256, device: str | torch.device = "cpu",
                   progress: bool = False, batches: list[TaskBatch] | None = None) -> CalibrationResult:
    """Calibration of ``model`` on ``n_sequences`` fresh sequences of the ``split`` stream of ``seed``.

    ``batches`` evaluates pre-sampled batches instead (the periodic evaluation during training reuses one set).
    """
    was_training = model.training
    model.eval()
    acc = CalibrationAccumulator()
    if batches is None:
        gen = make_generator(seed, split)
        sizes = [min(batch_size, n_sequences - i) for i in range(0, n_sequences, batch_size)]
        batches_iter = (task.sample(s, gen) for s in sizes)
        total = len(sizes)
    else:
        batches_iter, total = iter(batches), len(batches)
    for batch in tqdm(batches_iter, total=total, desc="evaluate", disable=not progress, leave=False):
        features = None if batch.features is None else batch.features.to(device)
        logits = arch.logits(model, batch.tokens.to(device), features)
        acc.update(readout_log_probs(logits, batch.readout_ids), batch.to(logits.device))
    model.train(was_training)
    return acc.result()


def length_generalisation(model: torch.nn.Module, arch: Architecture, task: Task, length_param: str,
                          lengths: list[int], *, max_positions: int, n_sequences: int, seed: int,
                          device: str | torch.device = "cpu", progress: bool = False) -> dict[str, Any]:
    """Calibration at other sequence lengths (e.g. HMM K=20, 30, 50) on the ``test`` stream.

    Lengths whose sequences exceed the model's ``max_positions`` are reported as skipped, with the reason.
    """
    out: dict[str, Any] = {}
    for length in lengths:
        variant = task.with_length(**{length_param: length})
        if variant.seq_len > max_positions:
            out[str(length)] = {"skipped": f"sequence length {variant.seq_len} > model positions {max_positions}"}
            continue
        res = evaluate_model(model, arch, variant, n_sequences=n_sequences, seed=seed, split="test",
                             device=device, progress=progress)
        out[str(length)] = res.to_dict()
    return out
