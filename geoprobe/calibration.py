"""Calibration of a model's predictive against the exact Bayes posterior, in bits.

Given the model's log-probabilities over the task's readout slice, ``log q = log_softmax(logits[..., readout])``,
and the exact posterior ``p`` at every supervised position (sequence i, position t):

- model entropy  H_model(i,t) = -sum_h q_h log2 q_h            (softmax over the hypothesis slice only)
- Bayes entropy  H_Bayes(i,t) = -sum_h p_h log2 p_h
- **entropy MAE, per-sample (default)**: mean_{i,t} |H_model(i,t) - H_Bayes(i,t)|
- **entropy MAE, mean-of-means (variant)**: mean_t | mean_i H_model(i,t) - mean_i H_Bayes(i,t) |; lenient
  because errors of opposite sign cancel, reported only beside the default
- **KL(Bayes || model)** in bits: mean_{i,t} sum_h p_h (log2 p_h - log2 q_h)
- **accuracy** where the answer is deterministic (H_Bayes = 0): argmax_h q_h equals the realised answer.
- **latent-posterior entropy MAE** (tasks whose supervision target is the predictive of the next *observed*
  token while the quantity of interest is the posterior of a *latent* variable, e.g. the noisy-label task):
  when ``batch.extras["latent_posterior"]`` ``[B, T, H']`` is present, mean_{i,t} |H_model(i,t) -
  H_latent(i,t)| with H_latent the entropy of that latent posterior. ``entropy_mae_bits`` always compares
  with the supervision target (``reference`` names it); the latent score is ``latent_entropy_mae_bits``.

Statistics are accumulated per supervised-position index ``step`` in float64 running sums, so evaluation over
any number of sequences uses constant memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from geoprobe.infotheory import entropy_bits, kl_bits
from geoprobe.tasks.base import TaskBatch

DETERMINISTIC_BITS = 1e-9
#: TaskBatch.extras key of an optional latent-variable posterior [B, T, H'] scored beside the target
LATENT_POSTERIOR = "latent_posterior"


def readout_log_probs(logits: torch.Tensor, readout_ids: torch.Tensor) -> torch.Tensor:
    """log q over the readout slice: ``log_softmax(logits[..., readout_ids])`` in float32."""
    return torch.log_softmax(logits[..., readout_ids.to(logits.device)].float(), dim=-1)


@dataclass
class CalibrationResult:
    """Calibration metrics of one evaluation (all entropies and KL in bits)."""

    entropy_mae_bits: float
    entropy_mae_se_bits: float
    entropy_mae_mean_of_means_bits: float
    kl_bits: float
    deterministic_accuracy: float | None
    n_deterministic: int
    n_sequences: int
    n_positions: int
    per_position: dict[str, list[float]]
    latent_entropy_mae_bits: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "entropy_mae_bits": self.entropy_mae_bits,
            "entropy_mae_se_bits": self.entropy_mae_se_bits,
            "entropy_mae_mean_of_means_bits": self.entropy_mae_mean_of_means_bits,
            "kl_bits": self.kl_bits,
            "deterministic_accuracy": self.deterministic_accuracy,
            "n_deterministic": self.n_deterministic,
            "n_sequences": self.n_sequences,
            "n_positions": self.n_positions,
            "per_position": self.per_position,
            "latent_entropy_mae_bits": self.latent_entropy_mae_bits,
        }


class CalibrationAccumulator:
    """Streaming accumulator of calibration statistics per supervised-position index."""

    def __init__(self) -> None:
        self._sums: dict[str, torch.Tensor] = {}
        self._seq_mae: list[torch.Tensor] = []
        self.n_sequences = 0
        self.correct = 0
        self.n_det = 0

    def _add(self, name: str, step: torch.Tensor, values: torch.Tensor, size: int) -> None:
        cur = self._sums.get(name)
        if cur is None or cur.numel() < size:
            grown = torch.zeros(size, dtype=torch.float64)
            if cur is not None:
                grown[: cur.numel()] = cur
            cur = grown
        cur.index_add_(0, step, values.double())
        self._sums[name] = cur

    def update(self, log_q: torch.Tensor, batch: TaskBatch) -> None:
        """Add a batch: ``log_q`` ``[B, T, H]`` model log-probabilities over the readout slice."""
        mask = batch.loss_mask.to(log_q.device)
        p = batch.target_probs.to(log_q.device)[mask]
        lq = log_q[mask]
        h_model = entropy_bits(lq.exp()).double().cpu()
        h_bayes = entropy_bits(p).double().cpu()
        kl = kl_bits(p, lq).double().cpu()
        step = batch.step[mask.cpu()].cpu()
        size = int(step.max()) + 1 if step.numel() else 0
        abs_err = (h_model - h_bayes).abs()
        for name, vals in (("count", torch.ones_like(h_model)), ("h_model", h_model), ("h_bayes", h_bayes),
                           ("abs_err", abs_err), ("kl", kl)):
            self._add(name, step, vals, size)
        latent = batch.extras.get(LATENT_POSTERIOR)
        if latent is not None:
            h_lat = entropy_bits(latent.to(log_q.device)[mask]).double().cpu()
            self._add("h_latent", step, h_lat, size)
            self._add("abs_err_latent", step, (h_model - h_lat).abs(), size)
        # per-sequence MAE (for the standard error across sequences)
        row = torch.nonzero(mask.cpu(), as_tuple=True)[0]
        per_seq = torch.zeros(len(batch), dtype=torch.float64).index_add_(0, row, abs_err)
        n_per_seq = torch.zeros(len(batch), dtype=torch.float64).index_add_(0, row, torch.ones_like(abs_err))
        keep = n_per_seq > 0
        self._seq_mae.append(per_seq[keep] / n_per_seq[keep])
        det = h_bayes <= DETERMINISTIC_BITS
        if det.any():
            labels = batch.labels.to(log_q.device)[mask].cpu()
            pred = lq.argmax(-1).cpu()
            self.correct += int((pred[det] == labels[det]).sum())
            self.n_det += int(det.sum())
        self.n_sequences += len(batch)

    def result(self) -> CalibrationResult:
        s = self._sums
        if not s or float(s["count"].sum()) == 0:
            raise ValueError("no supervised positions were evaluated")
        count = s["count"]
        used = count > 0
        n = float(count.sum())
        mean = {k: (s[k][used] / count[used]) for k in ("h_model", "h_bayes", "abs_err", "kl")}
        seq_mae = torch.cat(self._seq_mae)
        latent = "h_latent" in s
        per_position = {
            "step": torch.nonzero(used).squeeze(1).tolist(),
            "count": count[used].tolist(),
            "model_entropy_bits": mean["h_model"].tolist(),
            "bayes_entropy_bits": mean["h_bayes"].tolist(),
            "entropy_abs_error_bits": mean["abs_err"].tolist(),
            "kl_bits": mean["kl"].tolist(),
        }
        if latent:
            per_position["latent_entropy_bits"] = (s["h_latent"][used] / count[used]).tolist()
            per_position["latent_entropy_abs_error_bits"] = (s["abs_err_latent"][used] / count[used]).tolist()
        se = float(seq_mae.std(unbiased=True) / math.sqrt(len(seq_mae))) if len(seq_mae) > 1 else float("nan")
        return CalibrationResult(
            entropy_mae_bits=float(s["abs_err"].sum() / n),
            entropy_mae_se_bits=se,
            entropy_mae_mean_of_means_bits=float((mean["h_model"] - mean["h_bayes"]).abs().mean()),
            kl_bits=float(s["kl"].sum() / n),
            deterministic_accuracy=(self.correct / self.n_det) if self.n_det else None,
            n_deterministic=self.n_det,
            n_sequences=self.n_sequences,
            n_positions=int(n),
            per_position=per_position,
            latent_entropy_mae_bits=float(s["abs_err_latent"].sum() / n) if latent else None,
        )


def calibration_from_log_probs(log_q: torch.Tensor, batch: TaskBatch) -> CalibrationResult:
    """Calibration metrics of one batch (pure function on tensors)."""
    acc = CalibrationAccumulator()
    acc.update(log_q, batch)
    return acc.result()
