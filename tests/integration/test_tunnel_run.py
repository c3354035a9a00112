"""End to end: train a smoke-preset wind tunnel through the CLI, reload it strictly, resume, bad input."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from geoprobe.cli import main
from geoprobe.models import get_preset, load_run
from geoprobe.models.checkpoint import list_checkpoints
from geoprobe.models.run import train_tunnel


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "bij"
    assert main(["tunnel", "train", "bijection", "--preset", "smoke", "--out", str(out), "--quiet",
                 "--device", "cpu"]) == 0
    return out


def test_train_writes_metrics_report_manifest_and_checkpoints(smoke_run):
    metrics = json.loads((smoke_run / "metrics.json").read_text())
    for key in ("entropy_mae_bits", "entropy_mae_mean_of_means_bits", "kl_bits"):
        assert 0 <= metrics[key] < 5
    pp = metrics["per_position"]
    assert len(pp["bayes_entropy_bits"]) == 5  # smoke preset: L = 5 keys
    assert pp["bayes_entropy_bits"][0] == pytest.approx(2.585, abs=1e-3)  # log2 6
    html = (smoke_run / "report.html").read_text()
    assert "Bayes posterior" in html and "plotly" in html
    manifest = json.loads((smoke_run / "manifest.json").read_text())
    assert manifest["status"] == "finished" and manifest["arch"] == "transformer"
    steps = [s for s, _ in list_checkpoints(smoke_run)]
    assert steps[0] == 0 and steps[-1] == 40 and len(steps) > 10
    assert not (smoke_run / "state").exists()


def test_reload_is_strict_and_reproduces_metrics(smoke_run):
    model, task, manifest = load_run(smoke_run)
    assert task.config()["V"] == 6
    assert main(["tunnel", "eval", str(smoke_run), "--quiet", "--device", "cpu"]) == 0
    again = json.loads((smoke_run / "metrics.json").read_text())
    assert again["entropy_mae_bits"] == pytest.approx(manifest["metrics"]["entropy_mae_bits"], abs=1e-9)


def test_corrupted_and_mismatched_checkpoints_fail_with_one_line(smoke_run, tmp_path, capsys):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(smoke_run, broken)
    weights = broken / "model" / "model.safetensors"
    state = load_file(str(weights))
    dropped = sorted(state)[0]
    del state[dropped]
    save_file(state, str(weights))
    assert main(["tunnel", "eval", str(broken), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not match" in err[0] and dropped in err[0]

    weights.write_bytes(b"not a safetensors file")
    assert main(["tunnel", "eval", str(broken), "--quiet"]) == 2
    assert "cannot read" in capsys.readouterr().err

    mismatched = tmp_path / "mismatched"
    shutil.copytree(smoke_run, mismatched)
    manifest = json.loads((mismatched / "manifest.json").read_text())
    manifest["task"]["config"]["V"] = 7  # vocabulary 14 instead of 12
    (mismatched / "manifest.json").write_text(json.dumps(manifest))
    assert main(["tunnel", "eval", str(mismatched), "--quiet"]) == 2
    assert "does not match its manifest" in capsys.readouterr().err


def test_existing_output_is_kept_without_resume_or_overwrite(smoke_run, capsys):
    before = (smoke_run / "metrics.json").read_bytes()
    assert main(["tunnel", "train", "bijection", "--preset", "smoke", "--out", str(smoke_run), "--quiet"]) == 2
    assert "--resume" in capsys.readouterr().err
    assert (smoke_run / "metrics.json").read_bytes() == before


@pytest.mark.parametrize("argv,needle", [
    (["tunnel", "train", "nope", "--preset", "smoke", "--out", "{tmp}/a"], "unknown task 'nope'; valid choices: bijection"),
    (["tunnel", "train", "bijection", "--preset", "huge", "--out", "{tmp}/a"], "smoke, cpu, paper"),
    (["tunnel", "train", "bijection", "--arch", "rnn9", "--preset", "smoke", "--out", "{tmp}/a"],
     "valid choices:"),
    (["tunnel", "train", "bijection", "--preset", "smoke", "--set", "L=9", "--out", "{tmp}/a"], "L <= V"),
    (["tunnel", "eval", "{tmp}/missing"], "does not exist"),
])
def test_bad_input_is_one_clear_line(argv, needle, tmp_path, capsys):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(argv + ["--quiet"] if argv[1] != "sample" else argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0]
    assert not (tmp_path / "a").exists() or not any((tmp_path / "a").iterdir())


def test_resume_reproduces_an_uninterrupted_run_exactly(tmp_path):
    preset = get_preset("bijection", "smoke", steps=24, eval_every=8, save_every=4)
    train_tunnel(tmp_path / "full", "bijection", preset, device="cpu", progress=False)
    paused = train_tunnel(tmp_path / "split", "bijection", preset, device="cpu", progress=False, stop_after=10)
    assert paused == {"status": "paused", "step": 10}
    assert (tmp_path / "split" / "state" / "trainer.pt").exists()
    train_tunnel(tmp_path / "split", "bijection", preset, device="cpu", progress=False, resume=True)
    a = load_file(str(tmp_path / "full" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "split" / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_resume_refuses_a_different_task(tmp_path, capsys):
    preset = get_preset("bijection", "smoke", steps=6)
    train_tunnel(tmp_path / "r", "bijection", preset, device="cpu", progress=False, stop_after=3)
    assert main(["tunnel", "train", "bijection", "--preset", "smoke", "--set", "V=5", "--out",
                 str(tmp_path / "r"), "--resume", "--quiet"]) == 2
    assert "cannot resume" in capsys.readouterr().err


def test_sample_prints_json_lines(capsys):
    assert main(["tunnel", "sample", "bijection", "--n", "2", "--seed", "3", "--set", "V=5", "--set", "L=4"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    rec = json.loads(lines[0])
    assert rec["supervised_positions"] == [0, 2, 4, 6]
    assert rec["bayes_entropy_bits"] == pytest.approx([2.321928, 2.0, 1.584963, 1.0], abs=1e-5)


def test_bf16_autocast_trains_on_cpu(tmp_path):
    preset = get_preset("bijection", "smoke", steps=4, bf16=True)
    metrics = train_tunnel(tmp_path / "bf16", "bijection", preset, device="cpu", progress=False)
    assert metrics["entropy_mae_bits"] == metrics["entropy_mae_bits"]  # finite, not NaN
    assert json.loads((tmp_path / "bf16" / "manifest.json").read_text())["train"]["bf16"] is True


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown when CUDA is missing")
def test_cuda_request_without_gpu_is_a_clear_error(tmp_path, capsys):
    assert main(["tunnel", "train", "bijection", "--preset", "smoke", "--device", "cuda", "--out",
                 str(tmp_path / "c"), "--quiet"]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err


def test_demo_command_trains_then_reevaluates(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--preset", "smoke", "--out", str(out), "--device", "cpu"]) == 0
    first = json.loads((out / "metrics.json").read_text())
    assert (out / "report.html").exists() and first["task"]["name"] == "bijection"
    capsys.readouterr()
    assert main(["demo", "--preset", "smoke", "--out", str(out), "--device", "cpu"]) == 0  # finished: re-evaluate
    assert "re-evaluating" in capsys.readouterr().out
    again = json.loads((out / "metrics.json").read_text())
    assert again["entropy_mae_bits"] == pytest.approx(first["entropy_mae_bits"], abs=1e-9)
