"""Calibration metrics against hand-computed answers."""

import math

import pytest
import torch

from geoprobe.probes.calibration import CalibrationAccumulator, calibration_from_log_probs
from geoprobe.tasks import make_generator, make_task
from geoprobe.tasks.base import TaskBatch


def _staircase_batch(n=64, V=8, L=7):
    task = make_task("bijection", V=V, L=L)
    return task, task.sample(n, make_generator(0, "eval"))


def test_exact_posterior_scores_zero():
    _, batch = _staircase_batch()
    log_q = torch.log(batch.target_probs.clamp_min(1e-30))
    res = calibration_from_log_probs(log_q, batch)
    assert res.entropy_mae_bits < 1e-5
    assert res.entropy_mae_mean_of_means_bits < 1e-5
    assert abs(res.kl_bits) < 1e-5
    assert res.n_positions == 64 * 7


def test_uniform_model_error_is_log2V_minus_bayes_entropy():
    V, L = 8, 7
    _, batch = _staircase_batch(V=V, L=L)
    log_q = torch.full(batch.target_probs.shape, -math.log(V))
    res = calibration_from_log_probs(log_q, batch)
    staircase = [math.log2(V - t) for t in range(L)]  # Bayes entropy at key t (0-based)
    expected_mae = sum(math.log2(V) - h for h in staircase) / L
    assert abs(res.entropy_mae_bits - expected_mae) < 1e-5
    # KL(p || uniform) = log2 V - H(p) for every p
    assert abs(res.kl_bits - expected_mae) < 1e-5
    assert res.per_position["bayes_entropy_bits"] == pytest.approx(staircase, abs=1e-5)


def test_mean_of_means_cancels_opposite_errors_but_per_sample_does_not():
    # two sequences, one supervised position each; Bayes: 1 bit. model: 0 bits on one, ~2 bits on the other.
    p = torch.tensor([[[0.5, 0.5, 0, 0]], [[0.5, 0.5, 0, 0]]])
    q = torch.tensor([[[1.0 - 3e-9, 1e-9, 1e-9, 1e-9]], [[0.25, 0.25, 0.25, 0.25]]])
    batch = TaskBatch(tokens=torch.zeros(2, 1, dtype=torch.long), loss_mask=torch.ones(2, 1, dtype=torch.bool),
                      target_probs=p, bayes_entropy=torch.ones(2, 1), labels=torch.zeros(2, 1, dtype=torch.long),
                      step=torch.zeros(2, 1, dtype=torch.long), readout_ids=torch.arange(4))
    res = calibration_from_log_probs(torch.log(q), batch)
    assert abs(res.entropy_mae_bits - 1.0) < 1e-6  # (|0-1| + |2-1|) / 2
    assert res.entropy_mae_mean_of_means_bits < 1e-6  # mean H_model = 1 = mean H_Bayes


def test_deterministic_accuracy_and_streaming_equals_one_shot():
    task = make_task("bijection", V=6, L=6, layout="paired_query")
    batch = task.sample(50, make_generator(1, "eval"))
    torch.manual_seed(0)
    logits = torch.randn(batch.target_probs.shape)
    # make the query prediction right for exactly the first 20 sequences
    q_label = batch.labels[:, -1]
    logits[:20, -1] = -10.0
    logits[torch.arange(20), -1, q_label[:20]] = 10.0
    logits[20:, -1] = -10.0
    logits[torch.arange(20, 50), -1, (q_label[20:] + 1) % 6] = 10.0
    log_q = torch.log_softmax(logits, -1)
    one = calibration_from_log_probs(log_q, batch)
    assert one.n_deterministic >= 50  # every query, plus the last key (only one value left)
    acc = CalibrationAccumulator()
    acc.update(log_q[:17], batch.slice(0, 17))
    acc.update(log_q[17:], batch.slice(17, 50))
    two = acc.result()
    assert abs(one.entropy_mae_bits - two.entropy_mae_bits) < 1e-9
    assert abs(one.kl_bits - two.kl_bits) < 1e-9
    assert one.deterministic_accuracy == two.deterministic_accuracy
