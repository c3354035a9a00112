"""`tunnel train --value-lr-mult M`: value parameters step M times further than at M = 1, nothing else changes;
the setting is recorded and checked on --resume; attention-free architectures are refused."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from geoprobe.errors import CheckpointError, ConfigError
from geoprobe.models import ARCHS, get_preset
from geoprobe.models.architectures import ModelSize
from geoprobe.models.run import train_tunnel
from geoprobe.models.training import TrainConfig, make_optimizer, readout_loss
from geoprobe.tasks import make_generator, make_task


def one_step(arch_name: str, mult: float) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(parameters before, after) one AdamW step of a tiny model on one bijection batch."""
    task = make_task("bijection", V=5, L=4)
    arch = ARCHS.get(arch_name)
    model = arch.build(task.vocab_size, ModelSize(2, 2, 16, task.seq_len), seed=0)
    cfg = TrainConfig(steps=10, batch_size=4, lr=1e-3, weight_decay=0.1, value_lr_mult=mult)
    opt = make_optimizer(model, cfg, arch_name)
    batch = task.sample(4, make_generator(0, "train"))
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    loss = readout_loss(arch.logits(model, batch.tokens), batch, "hard")
    loss.backward()
    opt.step()
    return before, {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("arch_name", ["transformer", "transformer-rope"])
def test_value_step_is_m_times_the_plain_step_and_nothing_else_changes(arch_name):
    b1, a1 = one_step(arch_name, 1.0)
    b10, a10 = one_step(arch_name, 10.0)
    n_value = 0
    for key in b1:
        assert torch.equal(b1[key], b10[key])  # same initialisation
        d1, d10 = a1[key] - b1[key], a10[key] - b10[key]
        if arch_name == "transformer" and key.endswith("attn.c_attn.weight"):
            d = d1.shape[1] // 3
            assert torch.allclose(d10[:, 2 * d:], 10 * d1[:, 2 * d:], rtol=1e-4, atol=1e-9)
            assert torch.allclose(d10[:, :2 * d], d1[:, :2 * d], atol=1e-9)
            n_value += 1
        elif arch_name == "transformer" and key.endswith("attn.c_attn.bias"):
            d = d1.shape[0] // 3
            assert torch.allclose(d10[2 * d:], 10 * d1[2 * d:], rtol=1e-4, atol=1e-9)
            assert torch.allclose(d10[:2 * d], d1[:2 * d], atol=1e-9)
        elif arch_name == "transformer-rope" and key.endswith("v_proj.weight"):
            assert torch.allclose(d10, 10 * d1, rtol=1e-4, atol=1e-9)
            n_value += 1
        else:
            assert torch.allclose(d10, d1, atol=1e-9), key
        if "c_attn" in key or "v_proj" in key:
            assert d1.abs().max() > 0  # the step did move them
    assert n_value == 2  # one per layer


def test_attention_free_architectures_are_refused_in_one_line(tmp_path):
    preset = get_preset("bijection", "smoke", steps=2, value_lr_mult=10.0)
    with pytest.raises(ConfigError, match="architecture 'mamba' has none"):
        train_tunnel(tmp_path / "m", "bijection", preset, arch_name="mamba", device="cpu", progress=False)
    assert not (tmp_path / "m").exists()
    with pytest.raises(ConfigError, match="value_lr_mult must be a finite number > 0"):
        TrainConfig(steps=1, batch_size=1, lr=1.0, value_lr_mult=0.0)


def test_multiplier_is_recorded_and_checked_on_resume(tmp_path):
    preset = get_preset("bijection", "smoke", steps=6, value_lr_mult=10.0)
    out = tmp_path / "run"
    train_tunnel(out, "bijection", preset, device="cpu", progress=False, stop_after=3)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["train"]["value_lr_mult"] == 10.0
    plain = replace(preset, train=replace(preset.train, value_lr_mult=1.0))
    with pytest.raises(CheckpointError, match="train.value_lr_mult is 10.0 in the run but 1.0"):
        train_tunnel(out, "bijection", plain, device="cpu", progress=False, resume=True)
    metrics = train_tunnel(out, "bijection", preset, device="cpu", progress=False, resume=True)
    assert metrics["entropy_mae_bits"] >= 0


def test_a_manifest_from_before_the_option_resumes_as_m_equals_1(tmp_path):
    preset = get_preset("bijection", "smoke", steps=6)
    out = tmp_path / "old"
    train_tunnel(out, "bijection", preset, device="cpu", progress=False, stop_after=3)
    path = out / "manifest.json"
    manifest = json.loads(path.read_text())
    del manifest["train"]["value_lr_mult"]  # as written before --value-lr-mult existed
    path.write_text(json.dumps(manifest))
    ten = replace(preset, train=replace(preset.train, value_lr_mult=10.0))
    with pytest.raises(CheckpointError, match="train.value_lr_mult is 1.0 in the run but 10.0"):
        train_tunnel(out, "bijection", ten, device="cpu", progress=False, resume=True)
    metrics = train_tunnel(out, "bijection", preset, device="cpu", progress=False, resume=True)
    assert metrics["entropy_mae_bits"] >= 0
