"""Paper II on a real (tiny, trained) GPT-2 wind tunnel: the routing law on its heads, the value step's first
order loss change, the EM-like schedule's value-only learning rate."""

from __future__ import annotations

import pytest
import torch

from geoprobe.errors import ConfigError
from geoprobe.gradients.routing import em_param_groups
from geoprobe.gradients.tunnel import (
    _is_value_param,
    gradients_report,
    routing_check,
    split_value_weights,
    value_step_check,
)
from geoprobe.models import ARCHS, get_preset
from geoprobe.models.checkpoint import load_run
from geoprobe.models.run import train_tunnel
from geoprobe.tasks import make_generator


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("grad_runs") / "bij"
    train_tunnel(out, "bijection", get_preset("bijection", "smoke", steps=20), device="cpu", progress=False)
    return out


@pytest.fixture(scope="module")
def loaded(run):
    model, task, manifest = load_run(run)
    return model, ARCHS.get(manifest["arch"]), task.sample(16, make_generator(0, "test")), task.default_target


def test_routing_law_matches_autograd_through_the_model(loaded):
    model, arch, batch, target = loaded
    rows, sample, recs = routing_check(model, arch, batch, target)
    # the recomputed attention is the layer's own (float64)
    assert all(r.max_abs_diff < 1e-12 for r in recs)
    heads = {(r.layer, r.head) for r in rows}
    assert heads == {(layer, h) for layer in range(2) for h in range(2)}
    assert all(r.value < 1e-12 for r in rows)
    assert all(r.meta["max_abs_gradient"] > 1e-9 for r in rows)  # the gradients compared are not all zero
    assert len(sample) > 100
    assert (sample["autograd"] - sample["routing_law"]).abs().max() < 1e-15
    # the check can fail: perturbing the formula's upstream gradient is detected
    from geoprobe.gradients.routing import routing_gradient

    r = recs[0]
    wrong = routing_gradient(r.scores.detach(), r.values.detach(), 1.01 * r.out.grad)
    assert float((wrong - r.scores.grad).abs().max()) > 1e-3 * float(r.scores.grad.abs().max())


def test_value_step_loss_change_is_first_order(loaded):
    model, arch, batch, target = loaded
    rows = value_step_check(model, arch, batch, target, layer=1, lrs=(1.0, 0.1, 0.01))
    dev = [abs(r.value - 1) for r in rows]
    assert all(r.meta["predicted"] < 0 for r in rows)
    assert dev[-1] < 1e-3
    # the deviation from first order shrinks ~linearly with the step (second-order term)
    assert dev[0] / dev[1] == pytest.approx(10, rel=0.3)


def test_split_value_weights_keeps_the_function_and_isolates_w_v(run):
    model, task, manifest = load_run(run)
    batch = task.sample(4, make_generator(1, "test"))
    arch = ARCHS.get(manifest["arch"])
    with torch.no_grad():
        before = arch.logits(model, batch.tokens)
    split_value_weights(model)
    with torch.no_grad():
        after = arch.logits(model, batch.tokens)
    assert torch.equal(before, after)
    groups = em_param_groups(model, _is_value_param, 1e-3, value_lr_multiplier=10.0)
    value = groups[-1]
    assert value["lr"] == pytest.approx(1e-2) and len(value["params"]) == 2  # one W_V per layer
    d = model.config.n_embd
    assert all(tuple(p.shape) == (d, d) for p in value["params"])


def test_gradients_report_and_cli(run, tmp_path, capsys):
    from geoprobe.cli import main
    from geoprobe.report import Report

    report = gradients_report(run, n=8, em_steps=4, lrs=(0.01,))
    assert report.summary["routing_law"]["holds"] is True
    em = report.rows[(report.rows.probe == "em_schedule") & (report.rows.statistic == "loss")]
    assert sorted(set(em["variant"])) == ["value lr x1", "value lr x10"] and len(em) == 8
    # same initialisation and first batch: the first step's loss is identical for both schedules
    first = em[[m["step"] == 1 for m in em["meta"]]]["value"].tolist()
    assert first[0] == first[1]
    assert set(report.figures) == {"Routing law: autograd vs formula", "Routing law: relative error per head",
                                   "Value step: actual vs first-order loss change",
                                   "EM-like schedule: value learning rate x m"}
    assert main(["gradients", str(run), "--out", str(tmp_path / "g"), "--n", "8", "--em-steps", "0"]) == 0
    out = capsys.readouterr().out
    assert "routing_law" in out and "max relative error scores" in out
    back = Report.load(tmp_path / "g")
    assert back.summary["routing_law"]["holds"] is True and "Routing law: autograd vs formula" in back.figures


def test_gradients_needs_attention(tmp_path, capsys):
    from geoprobe.cli import main

    out = tmp_path / "lstm"
    train_tunnel(out, "bijection", get_preset("bijection", "smoke", steps=2), arch_name="lstm", device="cpu",
                 progress=False)
    with pytest.raises(ConfigError, match="GPT-2 style attention"):
        gradients_report(out, n=4, em_steps=0)
    assert main(["gradients", str(out), "--out", str(tmp_path / "g")]) == 2
    assert "GPT-2 style attention" in capsys.readouterr().err


@pytest.mark.parametrize("extra,needle", [(["--n", "0"], "--n must be >= 1"),
                                          (["--em-steps", "-1"], "--em-steps must be >= 0"),
                                          (["--value-lr-multipliers", "1", "0"], "multipliers must be > 0")])
def test_gradients_cli_bad_numbers_are_one_line(run, tmp_path, capsys, extra, needle):
    from geoprobe.cli import main

    assert main(["gradients", str(run), "--out", str(tmp_path / "g"), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0]
