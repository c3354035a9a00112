"""The scan driver end to end on tiny random models: selection, signatures, outputs, resume, batch back-off.

The built-in pools are English text, which the tiny word-level tokenizer maps to <unk>; the tests replace them
with pools of random ``wN`` words (distinct next-token entropies). Numbers are checked against independent
computations written here: next-token entropies from a plain ``transformers`` forward of each unpadded prompt,
and the value-manifold PC1/PC1+PC2 shares from the last layer's value projection captured with a forward hook
and decomposed with numpy.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import word_pool

from geoprobe.errors import ConfigError, OutputExistsError
from geoprobe.scan import driver
from geoprobe.scan.records import read_prompts_jsonl

N, POOL = 10, 40  # 2 per quintile from 40 candidates per set


@pytest.fixture
def words(monkeypatch):
    monkeypatch.setattr(driver, "build_pool", word_pool)


def entropy_bits_hf(model, tok, text: str) -> float:
    ids = torch.tensor([tok(text, add_special_tokens=True)["input_ids"]])
    with torch.no_grad():
        p = torch.softmax(model(ids).logits[0, -1].double(), -1)
    return float(-(p * torch.log2(p.clamp_min(1e-300))).sum())


def last_layer_values(model, tok, texts: list[str], family: str) -> np.ndarray:
    """Final-token value vectors of the last layer (all KV heads concatenated) through a forward hook."""
    layer = (model.gpt_neox.layers if family == "neox" else model.model.layers)[-1]
    got = []
    if family == "neox":  # fused [heads, 3, d_head]: v is index 2
        cfg = model.config
        dh = cfg.hidden_size // cfg.num_attention_heads

        def hook(_m, _i, out):
            got.append(out[0, -1].view(cfg.num_attention_heads, 3, dh)[:, 2].reshape(-1).double().numpy())
        h = layer.attention.query_key_value.register_forward_hook(hook)
    else:
        h = layer.self_attn.v_proj.register_forward_hook(lambda _m, _i, out: got.append(out[0, -1].double().numpy()))
    try:
        with torch.no_grad():
            for t in texts:
                model(torch.tensor([tok(t, add_special_tokens=True)["input_ids"]]))
    finally:
        h.remove()
    return np.stack(got)


def shares_numpy(x: np.ndarray) -> tuple[float, float]:
    z = x - x.mean(0)
    sd = z.std(0, ddof=1)
    z = np.where(sd > 0, z / np.where(sd > 0, sd, 1), 0)
    lam = np.linalg.svd(z, compute_uv=False) ** 2
    return float(lam[0] / lam.sum()), float(lam[:2].sum() / lam.sum())


@pytest.mark.parametrize("family,backend", [("llama", "torch"), ("neox", "transformer_lens"), ("phi", "torch"),
                                            ("mistral", "torch")])
def test_scan_numbers_match_independent_paths(words, tiny_model_dirs, tiny_hf, family, backend):
    res = driver.run_scan(tiny_model_dirs[family], domain="math", n=N, pool_size=POOL, sula=False, n_boot=50,
                          backend=backend, device="cpu")
    s = res.report.summary
    model = tiny_hf(family)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dirs[family])
    assert set(s["sets"]) == {"mixed", "domain"} and s["domain"] == "math"
    for set_name in ("mixed", "domain"):
        recs = [r for r in res.records if r.extra.get("set") == set_name]
        assert len(recs) == POOL and sum(r.selected for r in recs) == N
        # equal numbers per quintile, and every quintile's members lie inside its entropy range
        assert sorted(r.quintile for r in recs if r.selected) == sorted([0, 1, 2, 3, 4] * (N // 5))
        for r in recs[::7] + [r for r in recs if r.selected][:3]:
            assert r.entropy_bits == pytest.approx(entropy_bits_hf(model, tok, r.text), abs=2e-4)
        h = np.array([r.entropy_bits for r in recs])
        edges = np.quantile(h, np.linspace(0, 1, 6))
        assert [r.quintile for r in recs] == list((h[:, None] >= edges[None, 1:-1]).sum(1))
        vm = s["sets"][set_name]["value_manifold"]
        x = last_layer_values(model, tok, driver.selected_texts(recs), family)
        pc1, pc12 = shares_numpy(x)
        assert vm["pc1_share"]["value"] == pytest.approx(pc1, abs=1e-5)
        assert vm["pc12_share"]["value"] == pytest.approx(pc12, abs=1e-5)
        assert vm["pc1_share"]["ci"][0] <= vm["pc1_share"]["value"] <= vm["pc1_share"]["ci"][1]
        sweep = s["sets"][set_name]["layer_sweep"]
        assert [r["layer"] for r in sweep] == list(range(model.config.num_hidden_layers))
        assert sweep[-1]["pc12_share"] == pytest.approx(pc12, abs=1e-5)
        # the verdict applies the suite's thresholds to these very numbers
        v = s["sets"][set_name]["verdict"]
        vm_pass = pc1 > 0.30 or pc12 > 0.30
        ko = s["sets"][set_name]["key_orthogonality"]["layer_mean_abs_cos"]
        ko_pass = np.mean(np.array(ko) < 0.20) >= 0.5
        foc_pass = s["sets"][set_name]["attention_focusing"]["focusing_percent"] > 30.0
        assert v["by_criterion"] == {"value_manifold": vm_pass, "key_orthogonality": bool(ko_pass),
                                     "attention_focusing": foc_pass}
        # focusing's nulls travel with the set and its verdict (a random tiny model focuses like its nulls)
        af = s["sets"][set_name]["attention_focusing"]
        assert abs(af["init_focusing_percent"]) < 1 and abs(af["shuffled_focusing_percent"]) < 1
        assert af["focusing_above_null"] is not True
        assert v["criteria"]["attention_focusing"]["baseline"]["null"] == {
            "init": af["init_focusing_percent"], "shuffled": af["shuffled_focusing_percent"]}
        from geoprobe.report_text import fmt_fixed, scan_set_sentence

        assert f"(fresh weights {fmt_fixed(af['init_focusing_percent'], 1)}%, shuffled context" in scan_set_sentence(
            s["sets"][set_name])
        n_pass = vm_pass + bool(ko_pass) + foc_pass
        assert v["grade"] == {3: "full", 2: "partial"}.get(n_pass, "none")
        assert v["criteria"]["value_manifold"]["threshold"] == 0.30
        assert v["criteria"]["key_orthogonality"]["baseline"]["random_baseline"] == pytest.approx(
            np.sqrt(2 / (np.pi * model.config.hidden_size)), rel=1e-6)
    assert s["verdict"] == s["sets"]["mixed"]["verdict"]
    assert s["predictions"]["domain_restriction"]["state"] == (
        "held" if s["sets"]["domain"]["value_manifold"]["pc12_share"]["ci"][0]
        > s["sets"]["mixed"]["value_manifold"]["pc12_share"]["ci"][1] else "failed")


def test_scan_writes_folder_and_resumes_interrupted_stages(words, tiny_model_dirs, tmp_path, monkeypatch):
    path = tiny_model_dirs["llama"]
    kw = dict(domain="code", n=N, pool_size=POOL, sula=False, n_boot=30, backend="torch", device="cpu")
    full = driver.run_scan(path, out=tmp_path / "full", **kw)
    out = full.out
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "figures", "manifest.json", "prompts.jsonl", "report.html", "results.csv", "summary.json"]
    recs = read_prompts_jsonl(out / "prompts.jsonl")
    assert len(recs) == 2 * POOL and sum(r.selected for r in recs) == 2 * N
    import pandas as pd

    rows = pd.read_csv(out / "results.csv")
    assert set(rows["set"]) == {"mixed", "domain"}
    man = json.loads((out / "manifest.json").read_text())
    assert man["batch_size"] == {"requested": 16, "start": 16, "final": 16, "halvings": []}
    assert man["seed"] == 0 and man["options"]["domain"] == "code" and man["resumed_stages"] == []
    html = (out / "report.html").read_text()
    assert html.index("Verdict") < html.index("Layer sweep")

    # interrupt the domain probes: the finished stages stay in the staging folder, no result appears
    real = driver._probe_stage
    calls = []

    def boom(handle, name, *a, **k):
        if name == "domain":
            raise KeyboardInterrupt
        return real(handle, name, *a, **k)

    monkeypatch.setattr(driver, "_probe_stage", boom)
    with pytest.raises(KeyboardInterrupt):
        driver.run_scan(path, out=tmp_path / "cut", **kw)
    assert not (tmp_path / "cut").exists()
    staging = tmp_path / ".cut.geoprobe-new"
    assert sorted(p.name for p in (staging / "stages").iterdir()) == [
        "config.json", "probes-mixed", "selection-domain", "selection-mixed"]
    monkeypatch.setattr(driver, "_probe_stage", lambda *a, **k: (calls.append(a[1]), real(*a, **k))[1])
    with pytest.raises(ConfigError, match="different settings.*seed"):
        driver.run_scan(path, out=tmp_path / "cut", resume=True, **{**kw, "seed": 1})
    resumed = driver.run_scan(path, out=tmp_path / "cut", resume=True, **kw)
    assert calls == ["mixed", "domain"]  # mixed comes back from its saved stage (no forward pass)
    man2 = json.loads((tmp_path / "cut" / "manifest.json").read_text())
    assert man2["resumed_stages"] == ["selection-mixed", "probes-mixed", "selection-domain"]
    assert not staging.exists() and not (tmp_path / "cut" / "stages").exists()
    a = full.report.summary["sets"]
    b = resumed.report.summary["sets"]
    for k in ("mixed", "domain"):
        for key in ("value", "ci"):
            assert b[k]["value_manifold"]["pc12_share"][key] == pytest.approx(a[k]["value_manifold"]["pc12_share"][key])
        assert b[k]["attention_focusing"]["focusing_percent"] == pytest.approx(
            a[k]["attention_focusing"]["focusing_percent"])
    assert (tmp_path / "cut" / "prompts.jsonl").read_text() == (out / "prompts.jsonl").read_text()

    # a finished scan is never replaced without --overwrite
    with pytest.raises(OutputExistsError, match="already holds results"):
        driver.run_scan(path, out=out, **kw)
    with pytest.raises(OutputExistsError, match="nothing to resume"):
        driver.run_scan(path, out=out, resume=True, **kw)
    before = (out / "summary.json").read_text()
    driver.run_scan(path, out=out, overwrite=True, **{**kw, "seed": 3})
    assert (out / "summary.json").read_text() != before


def test_batch_size_auto_halves_on_injected_oom(words, tiny_model_dirs):
    from geoprobe.backends import load_model

    h = load_model(tiny_model_dirs["llama"], backend="torch", device="cpu")
    seen = []
    orig = h.run

    def run(tokens, *a, **k):  # rows per forward pass: the slice, or the handle's own batching
        rows = min(len(tokens), k.get("batch_size") or len(tokens))
        seen.append(rows)
        if rows > 8:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return orig(tokens, *a, **k)

    h.run = run
    res = driver.run_scan(h, domain=None, n=N, pool_size=POOL, sula=False, n_boot=20, batch_size="auto")
    bs = res.report.manifest["batch_size"]
    assert bs["requested"] == "auto" and bs["start"] == 64 and bs["final"] == 8
    assert [x["failed_at"] for x in bs["halvings"]] == [64, 32, 16]
    assert bs["halvings"][0]["stage"] == "selection-mixed" and "out of memory" in bs["halvings"][0]["error"]
    assert max(seen[seen.index(8):]) <= 8  # after the back-off, every batch stays at the final size
    ref = driver.run_scan(tiny_model_dirs["llama"], domain=None, n=N, pool_size=POOL, sula=False, n_boot=20,
                          backend="torch", device="cpu", batch_size=16)
    assert res.report.summary["sets"]["mixed"]["value_manifold"]["pc12_share"]["value"] == pytest.approx(
        ref.report.summary["sets"]["mixed"]["value_manifold"]["pc12_share"]["value"], abs=1e-6)


def _no_tokenizer(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for p in src.iterdir():
        if "token" not in p.name and "special" not in p.name:
            shutil.copy(p, dst)
    return dst


BAD = [
    ("unknown domain", lambda d, t: ["--domain", "poetry"], "unknown prompt domain 'poetry'; valid choices: code, "
                                                             "knowledge, math, mixed, prose"),
    ("n not a multiple of the bins", lambda d, t: ["--n", "12"], "multiple of 5"),
    ("too few prompts", lambda d, t: ["--prompts", _write(t / "few.txt", ["w3 w4"] * 3 + ["w5 w6"] * 4)],
     "too few prompt candidates: got 7, need at least 10"),
    ("prompt longer than the context", lambda d, t: ["--prompts", _write(
        t / "long.txt", ["w3 w4"] * 2 + [" ".join(["w5"] * (40 + i)) for i in range(10)])],
     "domain set: prompt 2 is 40 tokens long, more than the model's context of 32 tokens (10 prompt(s) too long); "
     "the first is long-3 'w5 w5 w5 w5 w5 w5 w5 w5 w5 w5 w5 w5 w5 w'...; shorten them or keep the last N tokens "
     "with --max-tokens N (recorded in the manifest)"),
    ("max tokens beyond the context", lambda d, t: ["--max-tokens", "40"],
     "--max-tokens 40 exceeds the model's context of 32 tokens; use at most 32"),
    ("model without tokenizer", None, "no usable tokenizer"),
    ("missing model", lambda d, t: [], "no such file or folder"),
    ("offline hub model", lambda d, t: [], "model 'nobody-here/no-such-model' is not in the local Hugging Face "
                                           "cache and HF_HUB_OFFLINE is set; download it once online (gated models: "
                                           "huggingface-cli login first), or pass a local folder"),
    ("revision not in the offline cache", lambda d, t: ["--revision", "v9.9"],
     "model 'nobody-here/no-such-model' (revision v9.9) is not in the local Hugging Face cache"),
    ("empty prompt file", lambda d, t: ["--prompts", _write(t / "empty.txt", [])], "holds no prompts"),
    ("blank prompt file", lambda d, t: ["--prompts", _write(t / "blank.txt", ["", "   ", "\t"])],
     "holds no prompts"),
    ("missing jsonl field", lambda d, t: ["--prompts", _write(t / "p.jsonl", ['{"q": "w3 w4"}'] * 12),
                                        "--prompts-field", "text"], "p.jsonl line 1 has no field 'text'; its fields: q"),
    ("unknown dataset file", lambda d, t: ["--dataset", str(t / "nowhere.parquet")],
     "nowhere.parquet' is not a local file or folder and could not be reached on the hub"),
    ("no causal controls", lambda d, t: ["--causal-controls", "0"], "--causal-controls must be >= 1, got 0"),
    ("revision of a local folder", lambda d, t: ["--revision", "main"], "only applies to hub ids"),
    ("bad batch size", lambda d, t: ["--batch-size", "zero"], "positive integer or 'auto'"),
]


def _write(p: Path, lines: list[str]) -> str:
    p.write_text("\n".join(lines) + "\n")
    return str(p)


@pytest.mark.parametrize("case,extra,message", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_one_line_exit_2_nothing_written(words, tiny_model_dirs, tmp_path, capsys, case, extra,
                                                      message):
    from geoprobe.cli import main

    target = str(tiny_model_dirs["llama"])
    if case == "model without tokenizer":
        target, extra = str(_no_tokenizer(tiny_model_dirs["llama"], tmp_path / "notok")), (lambda d, t: [])
    elif case == "missing model":
        target = str(tmp_path / "nowhere" / "model")
    elif case in ("offline hub model", "revision not in the offline cache"):
        target = "nobody-here/no-such-model"
    out = tmp_path / "out"
    capsys.readouterr()  # fixture output (model building)
    rc = main(["scan", target, "--quiet", "--no-sula", "--n", "10", "--pool-size", "40", "--out", str(out),
               *extra(target, tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and err[0].startswith("geoprobe: error: ") and message in err[0], err
    assert not out.exists() and not list(tmp_path.glob(".out*"))


def test_gp_scan_returns_the_report_and_writes_nothing(words, tiny_handle, tmp_path, monkeypatch):
    import geoprobe as gp
    from geoprobe.report import Report

    monkeypatch.chdir(tmp_path)
    rep = gp.scan(tiny_handle("llama", "torch"), domain="prose", n=N, pool_size=POOL, sula=False, n_boot=20)
    assert isinstance(rep, Report) and list(tmp_path.iterdir()) == []
    assert rep.summary["domain"] == "prose" and rep.summary["verdict"]["grade"] in ("full", "partial", "none")
    assert set(rep.rows["set"]) == {"mixed", "domain"}
    html = rep._repr_html_()
    assert html.index("Verdict") < html.index("mixed (n=10)")
    assert gp.scan.build_pool is not None  # still the package of building blocks


def test_scan_table_cli_from_saved_scans(words, tiny_model_dirs, tmp_path, capsys):
    from geoprobe.cli import main

    dirs = []
    for fam in ("llama", "phi"):
        d = tmp_path / fam
        assert main(["scan", str(tiny_model_dirs[fam]), "--domain", "math", "--n", "10", "--pool-size", "40",
                     "--no-sula", "--n-boot", "20", "--backend", "torch", "--device", "cpu", "--out", str(d)]) == 0
        dirs.append(d)
    capsys.readouterr()
    assert main(["scan-table", *map(str, dirs), "--out", str(tmp_path / "t.md")]) == 0
    md = (tmp_path / "t.md").read_text()
    for d in dirs:
        s = json.loads((d / "summary.json").read_text())["summary"]
        m, dm = s["sets"]["mixed"], s["sets"]["domain"]
        pc = f"{100 * m['value_manifold']['pc12_share']['value']:.1f}% → " \
             f"{100 * dm['value_manifold']['pc12_share']['value']:.1f}% (math)"
        assert f"| {s['model']} | {pc} |" in md
        assert f"| {m['verdict']['grade']} ({dm['verdict']['grade']}) |" in md
    card = [line for line in md.splitlines() if line.startswith("| value manifold PC1")][0]
    states = [c.strip() for c in card.strip("|").split("|")[1:]]
    for d, st in zip(dirs, states, strict=True):
        s = json.loads((d / "summary.json").read_text())["summary"]
        assert st == ("held" if s["sets"]["mixed"]["verdict"]["by_criterion"]["value_manifold"] else "failed")
    assert main(["scan-table", str(dirs[0]), "--out", str(tmp_path / "t.csv")]) == 0
    import pandas as pd

    t = pd.read_csv(tmp_path / "t.csv")
    assert t.loc[0, "prediction:sula_calibrated"] == "not measured"
    assert main(["scan-table", str(dirs[0]), "--out", str(tmp_path / "t.csv")]) == 2  # exists, no --overwrite
    assert main(["scan-table", str(tmp_path)]) == 2
    assert "not a saved scan" in capsys.readouterr().err
