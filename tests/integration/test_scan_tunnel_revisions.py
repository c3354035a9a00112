"""A wind-tunnel run's own checkpoints as scan revisions (``geoprobe scan RUN --revisions ...``).

A smoke-preset run is trained through the CLI; three of its checkpoints are scanned through the CLI, and every
trajectory number is checked against an independent computation written here (transformers' eager GPT-2 with
numpy: calibration against the exact posterior, attention JS to the final checkpoint, scipy's principal angles
of the hypothesis-key frames; the settling definition written out). Planted runs (checkpoints assembled from
the real ones) make the frame-precision claim come out False and True; bad inputs are one line with exit 2.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file

from geoprobe.cli import main

LN2 = math.log(2)
N, N_BOOT = 24, 30
SCAN = ["--n", str(N), "--n-boot", str(N_BOOT), "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "bij"
    assert main(["tunnel", "train", "bijection", "--preset", "smoke", "--out", str(out), "--quiet",
                 "--device", "cpu"]) == 0
    return out


def _ckpt(run: Path, step: int) -> Path:
    return run / "checkpoints" / f"step_{step:07d}"


def planted_run(src: Path, dst: Path, middle) -> Path:
    """A run folder with src's manifest and three checkpoints: step 0 = src's step 0, step 20 = ``middle(final
    state dict)`` (weights assembled here), step 40 = src's final checkpoint."""
    dst.mkdir(parents=True)
    shutil.copy(src / "manifest.json", dst / "manifest.json")
    shutil.copytree(_ckpt(src, 0), _ckpt(dst, 0))
    shutil.copytree(_ckpt(src, 40), _ckpt(dst, 40))
    shutil.copytree(_ckpt(src, 40), _ckpt(dst, 20))
    w = _ckpt(dst, 20) / "model.safetensors"
    save_file(middle(load_file(str(w)), load_file(str(_ckpt(src, 0) / "model.safetensors"))), str(w))
    return dst


# ------------------------------------------------------------------------------------------------ by hand


def _hf(folder: Path):
    from transformers import GPT2LMHeadModel

    return GPT2LMHeadModel.from_pretrained(folder, attn_implementation="eager").eval()


def by_hand(folder: Path, final: Path, seq: Path) -> dict[str, float]:
    """Calibration, attention JS to ``final`` and key-frame overlap with ``final``, from transformers + numpy."""
    import scipy.linalg

    tokens = torch.as_tensor(np.load(seq / "tokens.npy"))
    p = np.load(seq / "target_probs.npy").astype(np.float64)
    mask = np.load(seq / "loss_mask.npy")
    readout = np.load(seq / "readout_ids.npy")
    out, attn, frames = {}, [], []
    for f in (folder, final):
        m = _hf(f)
        with torch.no_grad():
            o = m(tokens, output_attentions=True)
            emb = m.transformer.wte.weight[torch.as_tensor(readout)]
            x = m.transformer.h[0].ln_1(emb).double()
            w, b = m.transformer.h[0].attn.c_attn.weight.double(), m.transformer.h[0].attn.c_attn.bias.double()
        d, H = m.config.n_embd, m.config.n_head
        keys = (x @ w[:, d:2 * d] + b[d:2 * d]).numpy()  # [n_hyp, d]: columns of head h are h*dh:(h+1)*dh
        frames.append([keys[:, h * (d // H):(h + 1) * (d // H)].T for h in range(H)])
        attn.append(np.stack([a.double().numpy() for a in o.attentions], 1))  # [n, L, H, T, T]
        if f == folder:
            z = o.logits.double().numpy()[..., readout]
            lq = z - np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1, keepdims=True)) - z.max(-1, keepdims=True)
            h_model = -(np.exp(lq) * lq).sum(-1) / LN2
            plogp = np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0.0)
            h_bayes = -plogp.sum(-1) / LN2
            out["mae"] = float(np.abs(h_model - h_bayes)[mask].mean())
            out["kl"] = float((plogp - p * lq).sum(-1)[mask].mean() / LN2)

    def kl(a, mid):
        return np.where(a > 0, a * np.log(np.where(a > 0, a, 1) / np.where(a > 0, mid, 1)), 0.0).sum(-1)

    a, r = attn
    mid = (a + r) / 2
    js = (0.5 * kl(a, mid) + 0.5 * kl(r, mid)) / LN2  # [n, L, H, T]
    out["js_per_sequence"] = js.mean(axis=(1, 2, 3))
    out["js"] = float(out["js_per_sequence"].mean())
    out["overlap"] = float(np.mean([np.mean(np.cos(scipy.linalg.subspace_angles(fa, fb)) ** 2)
                                    for fa, fb in zip(*frames, strict=True)]))
    return out


def settle_by_hand(steps, values, remaining=0.1):
    total = abs(values[0] - values[-1])
    if total == 0:
        return None
    for i in range(len(values)):
        if all(abs(v - values[-1]) <= remaining * total + 1e-15 for v in values[i:]):
            return steps[i]


def _sig(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "signatures.csv").pivot(index="signature", columns="step", values="value")


# ------------------------------------------------------------------------------------------------ tests


def test_three_checkpoints_through_the_cli_equal_independent_computations(smoke_run, tmp_path, capsys):
    from geoprobe.models.checkpoint import read_manifest, task_from_manifest
    from geoprobe.tasks.base import make_generator

    out = tmp_path / "traj"
    final = _ckpt(smoke_run, 40)
    argv = ["scan", str(smoke_run), "--revisions", "0", "step_11", str(final), "--out", str(out), *SCAN]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "bijection: frame settles at step" in printed and "wrote" in printed
    for f in ("trajectory.csv", "signatures.csv", "frame_precision.csv", "frame_precision.json", "report.html",
              "sweep.json", "manifest.json", "sequences/batch.json", "sequences/tokens.npy",
              "sequences/target_probs.npy"):
        assert (out / f).is_file(), f
    labels = ["step_0000000", "step_0000011", "step_0000040"]
    assert sorted(p.name for p in (out / "revisions").iterdir()) == labels
    for label in labels:
        for f in ("summary.json", "results.csv", "report.html", "signatures.json", "per_sequence.csv"):
            assert (out / "revisions" / label / f).is_file(), (label, f)
    assert not list(out.rglob("*.pkl")) and not list(out.rglob("*.pt"))

    # the saved sequences: the run's task, test stream of seed 0, exactly as `geoprobe probe RUN` draws them
    seq = out / "sequences"
    want = task_from_manifest(read_manifest(smoke_run)).sample(N, make_generator(0, "test"))
    assert np.array_equal(np.load(seq / "tokens.npy"), want.tokens.numpy())
    assert np.array_equal(np.load(seq / "target_probs.npy"), want.target_probs.numpy())

    sig = _sig(out)
    assert list(sig.columns) == [0, 11, 40]
    per_seq = {s: pd.read_csv(out / "revisions" / f"step_{s:07d}" / "per_sequence.csv") for s in (0, 11, 40)}
    for step in (0, 11, 40):
        h = by_hand(_ckpt(smoke_run, step), final, seq)
        assert sig.loc["calibration_entropy_mae_bits", step] == pytest.approx(h["mae"], abs=1e-5)
        assert sig.loc["calibration_kl_bits", step] == pytest.approx(h["kl"], abs=1e-5)
        assert sig.loc["attention_js_to_final_bits", step] == pytest.approx(h["js"], abs=1e-6)
        assert np.allclose(per_seq[step]["attention_js_to_final_bits"], h["js_per_sequence"], atol=1e-6)
        assert sig.loc["key_frame_overlap_to_final", step] == pytest.approx(h["overlap"], abs=1e-6)
    assert sig.loc["attention_js_to_final_bits", 40] == 0.0
    assert sig.loc["key_frame_overlap_to_final", 40] == pytest.approx(1.0, abs=1e-9)
    assert sig.loc["key_frame_overlap_to_final", 0] < 0.95  # training moved the key frame
    assert sig.loc["calibration_entropy_mae_bits", 40] < sig.loc["calibration_entropy_mae_bits", 0]

    # the final revision's probe numbers are those of a plain probe run of that checkpoint on the same sequences
    from geoprobe.probes.contract import ProbeOptions
    from geoprobe.probes.suite import run_probes
    from geoprobe.probes.targets import tunnel_target

    t = tunnel_target(final, n=N, seed=0, backend="torch", device="cpu")
    rep = run_probes(t, ["key_orthogonality", "attention_focusing", "value_manifold"], ProbeOptions(n_boot=N_BOOT))
    vm = rep.summary["value_manifold"]
    assert sig.loc["value_pc1_share", 40] == pytest.approx(vm["pc1_share"], abs=1e-9)
    assert sig.loc["value_pc12_share", 40] == pytest.approx(vm["pc12_share"], abs=1e-9)
    assert sig.loc["rho_pc1_h_bayes", 40] == pytest.approx(vm["spearman_rho_pc1_entropy"], abs=1e-9)
    assert sig.loc["focusing_percent", 40] == pytest.approx(rep.summary["attention_focusing"]["focusing_percent"])
    assert sig.loc["key_orthogonality_layer0_mean_abs_cos", 40] == pytest.approx(
        rep.summary["key_orthogonality"]["layer0_mean_abs_cos"])

    # normalised excess and settling steps: the definitions written out
    s = pd.read_csv(out / "signatures.csv")
    fp = pd.read_csv(out / "frame_precision.csv").set_index("signature")
    steps = [0, 11, 40]
    for name, g in s.groupby("signature"):
        v = g.sort_values("step")["value"].tolist()
        assert np.allclose(g.sort_values("step")["normalised_excess"], [(x - v[-1]) / (v[0] - v[-1]) for x in v])
        assert fp.loc[name, "settling_step"] == settle_by_hand(steps, v), name
    fpj = json.loads((out / "frame_precision.json").read_text())
    b = fpj["by_set"]["bijection"]
    frame = max(settle_by_hand(steps, s[s.signature == n].sort_values("step")["value"].tolist())
                for n in b["frame_signatures"])
    prec = max(settle_by_hand(steps, s[s.signature == n].sort_values("step")["value"].tolist())
               for n in b["precision_signatures"])
    assert (b["frame_settles_at"], b["precision_settles_at"]) == (frame, prec)
    assert b["precision_settles_after_frame"] is (prec > frame)
    d = fpj["per_sequence_dissociation"]
    js = np.stack([per_seq[x]["attention_js_to_final_bits"] for x in steps], 1).mean(0)
    mae = np.stack([per_seq[x]["entropy_mae_bits"] for x in steps], 1).mean(0)
    assert (d["frame_settling_step"], d["precision_settling_step"]) == (settle_by_hand(steps, list(js)),
                                                                        settle_by_hand(steps, list(mae)))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["tunnel"] is True and manifest["task"]["name"] == "bijection"
    assert [r["step"] for r in manifest["revisions"]] == steps

    # a rerun reuses everything and rewrites the same trajectory; a lost revision folder is measured again
    before = {f: (out / f).read_bytes() for f in ("signatures.csv", "frame_precision.csv", "trajectory.csv")}
    assert main(argv) == 0
    assert all(c["reused"] for c in json.loads((out / "sweep.json").read_text())["cells"])
    shutil.rmtree(out / "revisions" / "step_0000011")
    assert main(argv) == 0
    cells = {c["key"]: c for c in json.loads((out / "sweep.json").read_text())["cells"]}
    assert not cells["step_11"]["reused"] and cells["0"]["reused"]
    assert {f: (out / f).read_bytes() for f in before} == before
    # other settings in the same folder: one line, nothing changed
    assert main([*argv[:-len(SCAN)], "--n", str(N), "--n-boot", "31", "--device", "cpu", "--quiet"]) == 2
    assert "different settings (n_boot)" in capsys.readouterr().err


def _claim(out: Path) -> tuple[dict, dict]:
    fpj = json.loads((out / "frame_precision.json").read_text())
    return fpj["by_set"]["bijection"], fpj["per_sequence_dissociation"]


def test_frame_precision_claim_fails_when_everything_settles_together(smoke_run, tmp_path):
    """Step 20 holds the final weights: every signature has settled there, so precision does not settle after
    the frame (False), and the per-sequence test finds no dissociation. (Through the library's
    ``scan_revisions``, which hands wind-tunnel runs over.)"""
    from geoprobe.scan.revisions import scan_revisions

    run = planted_run(smoke_run, tmp_path / "same", lambda final, init: final)
    out = tmp_path / "out"
    res = scan_revisions(str(run), ["0", "20", "40"], out=out, n=N, n_boot=N_BOOT, device="cpu")
    assert res["by_set"]["bijection"]["precision_settles_after_frame"] is False
    assert json.loads((out / "manifest.json").read_text())["options"]["n"] == N
    sig = _sig(out)
    assert (sig[20] == sig[40]).all()  # same weights, same sequences, same seeds: the same numbers
    b, d = _claim(out)
    assert (b["frame_settles_at"], b["precision_settles_at"]) == (20, 20)
    assert b["precision_settles_after_frame"] is False
    assert d["index_difference"] == 0 and d["dissociation"] is False


def test_frame_precision_claim_holds_when_only_the_readout_is_untrained(smoke_run, tmp_path):
    """Step 20 = the final weights with step 0's unembedding: keys, attention and values (hence every frame
    signature and the value manifold) are already final, calibration is not: precision settles after the frame."""
    from geoprobe.scan.tunnel_revisions import TunnelScanOptions, scan_tunnel_revisions

    run = planted_run(smoke_run, tmp_path / "readout", lambda final, init: {**final, "lm_head.weight":
                                                                            init["lm_head.weight"]})
    out = tmp_path / "out"
    scan_tunnel_revisions(run, ["0", "20", "40"], out=out,
                          options=TunnelScanOptions(n=N, n_boot=N_BOOT, device="cpu"))
    sig = _sig(out)
    frame = [n for n in sig.index if n.startswith(("key_", "attention_", "focusing", "value_", "rho_"))]
    assert (sig.loc[frame, 20] == sig.loc[frame, 40]).all()
    assert sig.loc["calibration_entropy_mae_bits", 20] != sig.loc["calibration_entropy_mae_bits", 40]
    b, d = _claim(out)
    assert (b["frame_settles_at"], b["precision_settles_at"]) == (20, 40)
    assert b["precision_settles_after_frame"] is True
    assert b["precision_signatures"]["value_pc1_share"] == 20
    assert (d["frame_settling_step"], d["precision_settling_step"], d["index_difference"]) == (20, 40, 1.0)


@pytest.mark.parametrize("argv, message", [
    (["scan", "{run}", "--revisions", "0", "{other}/checkpoints/step_0000040"], "mixes checkpoints of two different runs"),
    (["scan", "{other}", "--revisions", "{run}/checkpoints/step_0000000"], "mixes checkpoints of two different runs"),
    (["scan", "{run}", "--revisions", "0", "main"], "revision main is not a checkpoint of wind-tunnel run"),
    (["scan", "EleutherAI/pythia-70m", "--revisions", "step1000", "{run}/checkpoints/step_0000040"],
     "TARGET EleutherAI/pythia-70m is not the wind-tunnel run of the checkpoints"),
    (["scan", "{run}", "--revisions", "0", "10"], "has no checkpoint at step 10; saved steps: 0, 1, 2"),
    (["scan", "{run}", "--revisions", "40", "0"], "must be in training order (increasing steps), got steps [40, 0]"),
    (["scan", "{run}", "--revisions", "5", "step_0000005"], "--revisions lists step_0000005 more than once"),
    (["scan", "{run}", "--revisions", "0", "40", "--domain", "math"], "--domain do(es) not apply to wind-tunnel"),
    (["scan", "{run}", "--revisions", "0", "40", "--max-tokens", "8"], "--max-tokens do(es) not apply"),
])
def test_bad_tunnel_revisions_are_one_line(smoke_run, tmp_path, capsys, argv, message):
    other = tmp_path / "other"
    if "{other}" in " ".join(argv):
        planted_run(smoke_run, other, lambda final, init: final)
    out = tmp_path / "out"
    argv = [a.format(run=smoke_run, other=other) for a in argv] + ["--out", str(out), "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("geoprobe: error: ") and message in err[0], err
    assert not out.exists()


def test_attention_free_run_is_one_line_before_anything_is_written(smoke_run, tmp_path, capsys):
    from conftest import build_tiny_model

    run = tmp_path / "ssm"
    run.mkdir()
    manifest = json.loads((smoke_run / "manifest.json").read_text())
    (run / "manifest.json").write_text(json.dumps({**manifest, "arch": "mamba"}))
    for step in (0, 40):
        build_tiny_model("mamba", _ckpt(run, step))
    capsys.readouterr()
    assert main(["scan", str(run), "--revisions", "0", "40", "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"geoprobe: error: run {run.resolve()} (arch mamba) has no attention: the frame signatures (key "
                   "frame, attention patterns) need an attention model (arch transformer or transformer-rope)"]
    assert not (tmp_path / "out").exists()


def test_all_and_final_name_the_run_checkpoints(smoke_run):
    from geoprobe.models.checkpoint import list_checkpoints
    from geoprobe.scan.tunnel_revisions import resolve_tunnel_revisions

    run, revs = resolve_tunnel_revisions(smoke_run / "model", ["all"])
    assert run == smoke_run.resolve()
    assert [(r.step, Path(r.source)) for r in revs] == [(s, f) for s, f in list_checkpoints(smoke_run)]
    _, revs = resolve_tunnel_revisions(smoke_run, ["step5", "final"])
    assert [(r.label, r.step) for r in revs] == [("step_0000005", 5), ("final", 40)]
    assert Path(revs[-1].source) == smoke_run.resolve() / "model"


def test_batch_round_trip_is_exact_and_pickle_free(tmp_path):
    from geoprobe.tasks import make_task
    from geoprobe.tasks.base import make_generator
    from geoprobe.tasks.batch_io import load_batch, save_batch

    batch = make_task("sula").sample(5, make_generator(3, "test"))
    save_batch(tmp_path / "b", batch, {"seed": 3})
    back = load_batch(tmp_path / "b")
    for name in ("tokens", "loss_mask", "target_probs", "bayes_entropy", "labels", "step", "readout_ids"):
        a, b = getattr(batch, name), getattr(back, name)
        assert a.dtype == b.dtype and torch.equal(a, b), name
    assert set(back.extras) == set(batch.extras) and all(torch.equal(back.extras[k], v)
                                                         for k, v in batch.extras.items())
    for f in (tmp_path / "b").glob("*.npy"):
        np.load(f, allow_pickle=False)  # plain arrays
