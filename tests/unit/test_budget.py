"""Time-budget planning: the step count follows the measured rates and the budget, never the preset's max."""

import math

import pytest

from geoprobe.errors import ConfigError
from geoprobe.models import ARCHS, get_preset
from geoprobe.models.budget import PLANNED_FIELDS, min_budget_steps, plan_budget
from geoprobe.tasks import make_task


@pytest.fixture(scope="module")
def smoke():
    preset = get_preset("bijection", "smoke")
    return preset, make_task("bijection", **preset.task_params)


def test_large_budget_keeps_the_preset_schedule(smoke):
    preset, task = smoke
    plan = plan_budget(ARCHS.get("transformer"), task, preset, 1e6)
    assert plan.steps == preset.train.steps and not plan.limited
    assert plan.warmup == preset.train.warmup and plan.eval_every == preset.train.eval_every
    assert plan.eval_sequences == preset.train.eval_sequences
    assert plan.train_seqs_per_s > 0 and plan.eval_seqs_per_s > 0 and plan.measure_seconds > 0
    assert set(PLANNED_FIELDS) <= set(plan.to_dict())


def test_budget_formula_sets_steps(smoke):
    preset, task = smoke
    seconds = 5.0
    plan = plan_budget(ARCHS.get("lstm"), task, preset.__class__(**{**preset.__dict__, "train": preset.train.__class__(
        **{**preset.train.to_dict(), "steps": 10**6})}), seconds)
    available = 0.9 * seconds - plan.measure_seconds - plan.eval_seconds_estimate
    expected = max(1, math.floor(available * plan.train_seqs_per_s / preset.train.batch_size))
    assert plan.steps == expected and plan.limited
    assert 1 <= plan.warmup <= max(1, plan.steps // 10)
    assert plan.eval_every == max(1, min(preset.train.eval_every, math.ceil(plan.steps / 10)))
    assert plan.eval_sequences == min(preset.train.eval_sequences, 512)


def test_tiny_budget_gives_one_step_and_is_flagged(smoke):
    preset, task = smoke
    plan = plan_budget(ARCHS.get("mlp"), task, preset, 1e-3)
    assert plan.steps == 1 and plan.limited


def test_min_budget_steps_and_bad_budget(smoke):
    assert min_budget_steps(40) == 10 and min_budget_steps(2500) == 125
    preset, task = smoke
    with pytest.raises(ConfigError, match="budget must be positive"):
        plan_budget(ARCHS.get("mlp"), task, preset, 0)
