"""Schedule, checkpoint spacing and the readout loss."""

import math

import pytest
import torch

from geoprobe.errors import ConfigError, UnknownNameError
from geoprobe.models import get_preset
from geoprobe.models.training import TrainConfig, checkpoint_steps, lr_factor, readout_loss
from geoprobe.tasks import make_generator, make_task


def test_lr_schedule_warmup_then_cosine_to_floor():
    cfg = TrainConfig(steps=1000, batch_size=1, lr=1.0, warmup=100, min_lr_ratio=0.1)
    assert lr_factor(0, cfg) == pytest.approx(0.01)
    assert lr_factor(99, cfg) == pytest.approx(1.0)
    assert lr_factor(100, cfg) == pytest.approx(1.0)
    assert lr_factor(550, cfg) == pytest.approx(0.1 + 0.9 * 0.5)  # cosine midpoint
    assert lr_factor(1000, cfg) == pytest.approx(0.1)


def test_checkpoints_are_dense_early_and_include_init_and_end():
    steps = checkpoint_steps(10_000, 20)
    assert steps[0] == 0 and steps[-1] == 10_000
    early = [s for s in steps if s <= 100]
    late = [s for s in steps if s > 5000]
    assert len(early) > 2 * len(late)


def test_soft_and_hard_loss_agree_for_point_mass_targets():
    task = make_task("bijection", V=5, L=5, layout="paired_query", query_only=True)
    batch = task.sample(32, make_generator(0, "train"))
    logits = torch.randn(32, task.seq_len, task.vocab_size)
    assert torch.allclose(readout_loss(logits, batch, "soft"), readout_loss(logits, batch, "hard"), atol=1e-6)


def test_soft_loss_minimum_is_the_posterior_entropy():
    task = make_task("bijection", V=6, L=6)
    batch = task.sample(16, make_generator(0, "train"))
    logits = torch.full((16, task.seq_len, task.vocab_size), -30.0)
    logits[..., task.readout_ids] = torch.log(batch.target_probs.clamp_min(1e-30))
    loss = readout_loss(logits, batch, "soft")
    mean_entropy_nats = batch.bayes_entropy[batch.loss_mask].mean() * math.log(2)
    assert float(loss) == pytest.approx(float(mean_entropy_nats), abs=1e-5)


def test_bad_presets_and_configs_name_the_choices():
    with pytest.raises(UnknownNameError, match="smoke, cpu, paper"):
        get_preset("bijection", "huge")
    with pytest.raises(ConfigError, match="hard, soft"):
        TrainConfig(steps=1, batch_size=1, lr=1e-3, target="medium")
