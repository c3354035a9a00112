"""Key frames in multi-revision scans: three tiny Llama (grouped-query) "revisions" with planted key weights.

Frame first: the middle revision carries the final revision's k_proj (other weights differ), so its key frame
overlap is exactly 1 and the key frame settles at the middle step. Frame last: the middle revision is the final
model with the first revision's k_proj, so the key frame only settles at the end and the claim "precision
settles after frame" comes out False. The overlaps are checked against scipy's principal angles of the k_proj
rows read straight from the checkpoint files; the initial-weights value against a fresh model built here.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import build_tiny_model, word_pool
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from scipy.linalg import subspace_angles

from geoprobe.scan import driver

N, POOL = 10, 40
SCAN_KW = dict(domain="code", n=N, pool_size=POOL, sula=False, causal=False, n_boot=30, backend="torch",
               device="cpu")
D_MODEL, N_KV, D_HEAD, LAYERS = 32, 2, 8, 2  # tests/conftest.py's tiny Llama


@pytest.fixture
def words(monkeypatch):
    monkeypatch.setattr(driver, "build_pool", word_pool)


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def _with_k_proj(folder: Path, donor: Path) -> None:
    """Replace every k_proj weight of ``folder``'s checkpoint by ``donor``'s."""
    path = folder / "model.safetensors"
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    w, d = _weights(folder), _weights(donor)
    keys = [k for k in w if k.endswith("k_proj.weight")]
    assert len(keys) == LAYERS
    save_file({k: (d[k] if k in keys else v).contiguous() for k, v in w.items()}, str(path), metadata=meta)


@pytest.fixture(scope="module")
def llama_revisions(tmp_path_factory):
    root = tmp_path_factory.mktemp("llama-revs")
    first = build_tiny_model("llama", root / "a" / "step_100", seed=1)
    final = build_tiny_model("llama", root / "c" / "step_300", seed=0)
    early = build_tiny_model("llama", root / "early" / "step_200", seed=2)  # other weights, the final keys
    _with_k_proj(early, final)
    late = root / "late" / "step_200"  # the final weights, the first revision's keys
    shutil.copytree(final, late)
    _with_k_proj(late, first)
    return {"first": first, "early": early, "late": late, "final": final}


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def _k_rows(w: dict[str, torch.Tensor], layer: int, head: int) -> np.ndarray:
    k = w[f"model.layers.{layer}.self_attn.k_proj.weight"].double().numpy()  # [n_kv * d_head, d_model]
    return k[head * D_HEAD:(head + 1) * D_HEAD]


def _scipy_overlap(a_rows: np.ndarray, b_rows: np.ndarray) -> float:
    """Mean squared cosine of the principal angles between the row spaces (r = d_head: the whole space)."""
    return float(np.mean(np.cos(subspace_angles(a_rows.T, b_rows.T)) ** 2))


def _fresh_k_proj(folder: Path, seed: int = 0) -> dict[str, torch.Tensor]:
    """The same config with fresh weights under ``seed``, as the scan's initial-weights model is defined."""
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder)).float()
    return {k: v.detach() for k, v in model.state_dict().items() if k.endswith("k_proj.weight")}


def test_key_frame_overlap_trajectory_planted_and_resumed(words, llama_revisions, tmp_path, capsys):
    from geoprobe.scan.revisions import scan_revisions

    revs = [llama_revisions[k] for k in ("first", "early", "final")]
    out = tmp_path / "early"
    res = scan_revisions("tiny-llama", [str(p) for p in revs], out=out, **SCAN_KW)
    folders = [out / "revisions" / p.name for p in revs]
    for i, f in enumerate(folders):
        with safe_open(str(f / "key_frames.safetensors"), framework="pt") as sf:
            assert sorted(sf.keys()) == ["layer_0", "layer_1"]
            assert tuple(sf.get_tensor("layer_0").shape) == (N_KV, D_MODEL, D_HEAD)  # per KV head, r = d_head
            assert (sf.metadata()["rank"], sf.metadata()["d_model"]) == ("8", "32")
        assert (f / "key_frames_init.safetensors").is_file() == (i == 2)  # the final revision only

    # overlaps: scipy's principal angles between the k_proj row spaces, straight from the checkpoint files
    kf = pd.read_csv(out / "key_frame_overlap.csv")
    assert len(kf) == 3 * LAYERS * N_KV
    wf, fresh = _weights(revs[-1]), _fresh_k_proj(revs[-1])
    for r in kf.to_dict("records"):
        w = _weights(revs[[str(p) for p in revs].index(r["revision"])])
        want = _scipy_overlap(_k_rows(w, r["layer"], r["kv_head"]), _k_rows(wf, r["layer"], r["kv_head"]))
        assert r["overlap"] == pytest.approx(want, abs=1e-5)
        init = _scipy_overlap(_k_rows(fresh, r["layer"], r["kv_head"]), _k_rows(wf, r["layer"], r["kv_head"]))
        assert r["init_overlap"] == pytest.approx(init, abs=1e-5)
        assert (r["rank"], r["d_model"], r["random_null"]) == (8, 32, 0.25)
        assert r["null_normalised"] == pytest.approx((r["overlap"] - 0.25) / 0.75)
    by_step = kf.groupby("step")["overlap"].mean()
    assert by_step[200] == pytest.approx(1.0, abs=1e-6) and by_step[300] == pytest.approx(1.0, abs=1e-6)
    assert by_step[100] < 0.6  # unrelated seeds: near the random null 0.25

    sig = pd.read_csv(out / "signatures.csv")
    for set_name in ("mixed", "domain"):
        got = sig[(sig["set"] == set_name) & (sig["signature"] == "key_frame_overlap")]
        assert got["group"].unique().tolist() == ["frame"]
        assert got["value"].tolist() == pytest.approx(by_step.tolist())
        assert (got["ci_low"] <= got["value"] + 1e-12).all() and (got["value"] <= got["ci_high"] + 1e-12).all()
    fp = pd.read_csv(out / "frame_precision.csv")
    row = fp[(fp["set"] == "mixed") & (fp["signature"] == "key_frame_overlap")].iloc[0]
    assert row["settling_step"] == 200 and row["settling_index"] == 1
    assert (row["settling_index_ci_low"], row["settling_index_ci_high"]) == (1, 1)  # every unit exactly 1 at 200
    js = json.loads((out / "frame_precision.json").read_text())
    assert js["key_frame"]["random_null"] == 0.25 and js["key_frame"]["rank"] == 8
    assert js["key_frame"]["by_revision"] == pytest.approx(by_step.tolist())
    assert js["key_frame"]["init_overlap"] == pytest.approx(kf["init_overlap"].mean())
    assert [(x["layer"], x["settling_step"]) for x in js["key_frame"]["by_layer"]] == [(0, 200), (1, 200)]
    assert js["key_frame"]["by_layer"][0]["overlap"] == pytest.approx(
        kf[kf["layer"] == 0].groupby("step")["overlap"].mean().tolist())
    m = js["by_set"]["mixed"]
    assert m["frame_signatures"]["key_frame_overlap"] == 200
    order = m["settling_order"]
    t = fp[(fp["set"] == "mixed") & fp["settling_index"].notna()]
    want = int(t.loc[t["group"] == "precision", "settling_index"].max() - t.loc[t["group"] == "frame",
                                                                             "settling_index"].max())
    assert order["index_difference"] == want and order["n_frame_signatures"] == int((t["group"] == "frame").sum())
    assert m["precision_settles_after_frame_supported"] == (want > 0 and order["ci"][0] > 0)
    assert res["by_set"] == js["by_set"]
    html = (out / "report.html").read_text()
    assert "Key-frame overlap with the final revision per layer" in html and "settling-order test" in html

    # resumable: a finished revision without its key frames (an older folder) gets them from the weights alone
    files = [folders[0] / "key_frames.safetensors", folders[2] / "key_frames_init.safetensors"]
    before = [_read(f) for f in files]
    mtime = (folders[0] / "summary.json").stat().st_mtime_ns
    for f in files:
        f.unlink()
    scan_revisions("tiny-llama", [str(p) for p in revs], out=out, **SCAN_KW)
    for f, (tensors, meta) in zip(files, before, strict=True):
        t2, m2 = _read(f)
        assert m2 == meta and t2.keys() == tensors.keys()
        assert all(torch.equal(t2[k], tensors[k]) for k in tensors)
    assert (folders[0] / "summary.json").stat().st_mtime_ns == mtime
    cells = {c["key"]: c for c in json.loads((out / "sweep.json").read_text())["cells"]}
    assert [cells[str(p)]["reused"] for p in revs] == [False, True, False]
    assert pd.read_csv(out / "key_frame_overlap.csv").equals(kf)

    # the command line prints each set's order test under its settling line
    from geoprobe.cli import main

    capsys.readouterr()
    assert main(["scan", "tiny-llama", "--revisions", *map(str, revs), "--out", str(out), "--domain", "code",
                 "--n", str(N), "--pool-size", str(POOL), "--no-sula", "--no-causal", "--n-boot", "30",
                 "--backend", "torch", "--device", "cpu", "--quiet"]) == 0
    printed = capsys.readouterr().out.splitlines()
    o = order
    assert printed[1] == (f"  settling order: precision - frame = {o['index_difference']} revisions (95% CI "
                          f"{o['ci'][0]}..{o['ci'][1]}, permutation p = {o['permutation_p']:.3g}): "
                          f"{'supported' if o['supported'] else 'not supported'}")
    assert printed[-1].endswith("key_frame_overlap.csv, frame_precision.csv/.json, report.html, sweep.json, "
                                "manifest.json")


def test_frame_that_settles_last_makes_the_claim_false(words, llama_revisions, tmp_path):
    from geoprobe.scan.revisions import scan_revisions

    revs = [llama_revisions[k] for k in ("first", "late", "final")]
    res = scan_revisions("tiny-llama", [str(p) for p in revs], out=tmp_path / "late", **SCAN_KW)
    kf = pd.read_csv(tmp_path / "late" / "key_frame_overlap.csv")
    by_step = kf.groupby("step")["overlap"].mean()
    assert by_step[100] == pytest.approx(by_step[200], abs=1e-6)  # the middle revision has the first one's keys
    assert by_step[100] < 0.6 and by_step[300] == pytest.approx(1.0, abs=1e-6)
    for set_name in ("mixed", "domain"):
        s = res["by_set"][set_name]
        assert s["frame_signatures"]["key_frame_overlap"] == 300 and s["frame_settles_at"] == 300
        assert s["precision_settles_after_frame"] is False
        assert s["precision_settles_after_frame_supported"] is False
        assert s["settling_order"]["index_difference"] <= 0
