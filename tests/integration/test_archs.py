"""Mamba, LSTM and MLP wind-tunnel architectures: strict save/load, parameter matching, training, hooks."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from geoprobe.cli import main
from geoprobe.errors import CheckpointError, ConfigError
from geoprobe.models import ARCHS, ModelSize, n_params

SIZE = ModelSize(n_layers=2, n_heads=2, d_model=32, max_positions=16)


@pytest.mark.parametrize("arch", ["lstm", "mlp", "mamba"])
def test_save_load_roundtrip_gives_identical_logits(arch, tmp_path):
    a = ARCHS.get(arch)
    model = a.build(12, SIZE, seed=3).eval()
    a.save(model, tmp_path / "m")
    again = a.load(tmp_path / "m")
    x = torch.randint(0, 12, (3, 9))
    with torch.no_grad():
        assert torch.equal(a.logits(model, x), a.logits(again, x))


@pytest.mark.parametrize("arch", ["lstm", "mlp"])
def test_missing_tensor_is_a_checkpoint_error(arch, tmp_path):
    a = ARCHS.get(arch)
    a.save(a.build(12, SIZE, seed=0), tmp_path / "m")
    state = load_file(str(tmp_path / "m" / "model.safetensors"))
    del state["head.weight"]
    save_file(state, str(tmp_path / "m" / "model.safetensors"))
    with pytest.raises(CheckpointError, match="head.weight"):
        a.load(tmp_path / "m")


@pytest.mark.parametrize("size", [ModelSize(4, 4, 128, 37), ModelSize(6, 6, 192, 37), ModelSize(2, 2, 32, 9)])
def test_mlp_control_is_parameter_matched_to_the_transformer(size):
    t = n_params(ARCHS.get("transformer").build(40, size, seed=0))
    m = n_params(ARCHS.get("mlp").build(40, size, seed=0))
    assert abs(m - t) / t < 0.05


def test_mlp_cannot_route_across_positions():
    """Changing an earlier token never changes a later position's logits (no mixing across positions)."""
    a = ARCHS.get("mlp")
    model = a.build(12, SIZE, seed=0).eval()
    x = torch.randint(0, 12, (1, 8))
    y = x.clone()
    y[0, 2] = (y[0, 2] + 1) % 12
    with torch.no_grad():
        lx, ly = a.logits(model, x), a.logits(model, y)
    assert torch.equal(lx[0, 3:], ly[0, 3:]) and not torch.equal(lx[0, 2], ly[0, 2])


@pytest.mark.parametrize("arch", ["lstm", "mlp", "mamba"])
def test_smoke_training_end_to_end(arch, tmp_path):
    out = tmp_path / arch
    assert main(["tunnel", "train", "bijection", "--preset", "smoke", "--arch", arch, "--steps", "6", "--out",
                 str(out), "--quiet", "--device", "cpu"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["arch"] == arch and metrics["entropy_mae_bits"] >= 0
    assert main(["tunnel", "eval", str(out), "--quiet", "--device", "cpu"]) == 0


def test_lstm_run_loads_through_the_torch_backend_with_residual_sites(tmp_path):
    from geoprobe.backends import load_model
    from geoprobe.models import get_preset, load_run
    from geoprobe.models.run import train_tunnel
    from geoprobe.probes.suite import ProbeOptions, run_probes
    from geoprobe.probes.targets import tunnel_target

    out = tmp_path / "lstm"
    train_tunnel(out, "bijection", get_preset("bijection", "smoke", steps=4), arch_name="lstm", device="cpu",
                 progress=False)
    h = load_model(out, device="cpu")
    assert h.backend == "torch" and h.info.has_attention is False and h.info.n_layers == 2
    model, task, _ = load_run(out)
    tokens = task.sample(4, torch.Generator().manual_seed(0)).tokens
    acts = h.run(tokens, sites=["resid_pre", "resid_post", "logits"], layers=[0, 1])
    assert torch.allclose(acts["resid_post", 0], acts["resid_pre", 1])
    with torch.no_grad():
        assert torch.allclose(acts["logits"], model(tokens), atol=1e-6)
    with h.bypass_layers(1):
        bypassed = h.logits(tokens)
    assert not torch.allclose(bypassed, acts["logits"])
    target = tunnel_target(out, n=16, device="cpu")
    report = run_probes(target, ["ablation"], ProbeOptions(n_boot=10))
    assert set(report.rows["variant"]) == {"bypass_block"}  # no heads, no attention/MLP split in an LSTM
    # two layers x (effect, ratio, the bypass against matched random kicks of the residual stream)
    assert len(report.rows) == 2 * 3
    kicks = report.rows[report.rows["statistic"] == "bypass_ratio_vs_matched_kick"]
    assert sorted(kicks["layer"]) == [0, 1] and all(len(m["null_ratios"]) == 20 for m in kicks["meta"])
    with pytest.raises(ConfigError, match="needs attention heads"):
        run_probes(target, ["key_orthogonality"], ProbeOptions(n_boot=10))


@pytest.mark.parametrize("arch", ["transformer", "transformer-rope", "lstm", "mlp", "mamba"])
def test_continuous_features_enter_through_a_saved_input_projection(arch, tmp_path):
    """Models of continuous-input tasks (linreg) carry their input projection through save/strict load, and
    their logits depend on the features."""
    a = ARCHS.get(arch)
    model = a.build(12, SIZE, seed=1, n_features=3).eval()
    a.save(model, tmp_path / "m")
    again = a.load(tmp_path / "m")
    x = torch.randint(0, 12, (2, 7))
    f = torch.randn(2, 7, 3)
    with torch.no_grad():
        out = a.logits(model, x, f)
        assert torch.equal(out, a.logits(again, x, f))
        assert (out - a.logits(model, x, f + 1.0)).abs().max() > 1e-4
    with pytest.raises(ConfigError, match="3 continuous features"):
        a.logits(model, x)
    with pytest.raises(ConfigError, match="no input projection"):
        a.logits(a.build(12, SIZE, seed=1), x, f)


@pytest.mark.parametrize("arch", ["transformer", "lstm"])
def test_linreg_trains_and_reloads_with_features(arch, tmp_path, capsys):
    out = tmp_path / arch
    assert main(["tunnel", "train", "linreg", "--preset", "smoke", "--arch", arch, "--steps", "30", "--out",
                 str(out), "--quiet"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    # 30 steps learn the marginal scale of y at least: well below the ~2 bits of a uniform 8-bin readout error
    assert 0 < metrics["entropy_mae_bits"] < 1.5 and metrics["kl_bits"] < 1.5
    assert main(["tunnel", "eval", str(out), "--quiet"]) == 0
    again = json.loads((out / "metrics.json").read_text())
    assert again["entropy_mae_bits"] == pytest.approx(metrics["entropy_mae_bits"], abs=1e-6)
    if arch == "transformer":  # probes read tokens only: a clear error, not a silent wrong answer
        capsys.readouterr()
        assert main(["probe", str(out), "--out", str(tmp_path / "probe")]) != 0
        assert "continuous features" in capsys.readouterr().err
