"""The scan's causal entropy-axis stage (geoprobe.scan.causal) on tiny GPT-2 models.

Known answers: (1) a planted model whose layer-0 values carry one direction u that the layer-0 output projection
reads alone (uniform attention, W_O = g u b^T): cutting u removes the signal, so the downstream axis-entropy
correlation collapses and calibration moves, while every matched control r ⟂ u is invisible to W_O and changes
nothing; (2) the batched cuts (every condition's rows mixed in the same forward passes) equal an independent
computation written here: numpy PCA of values captured with plain transformers hooks, the cut applied in a
forward hook on ``c_attn``, entropies and NLL from the plain model's logits, one condition at a time.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from geoprobe.scan import causal, driver
from geoprobe.scan.causal import cut_layers, run_causal

D = 32  # tiny GPT-2: 4 heads x 8


def _copy_tokenizer(src: Path, dst: Path) -> None:
    for p in src.iterdir():
        if "token" in p.name or "special" in p.name:
            shutil.copy(p, dst)


def planted_gpt2(src: Path, dst: Path, *, gain: float = 1.0, noise: float = 0.05) -> Path:
    """Layer 0: W_Q = W_K = 0 (uniform attention), values v = 3 (a . x) u + noise ⟂ u, W_O = gain u b^T."""
    import transformers as tf

    m = tf.AutoModelForCausalLM.from_pretrained(src)
    g = torch.Generator().manual_seed(0)
    u = torch.tensor([1.0 if i % 3 else -1.0 for i in range(D)]) / math.sqrt(D)  # equal |u_i|: uniform scale
    a = torch.randn(D, generator=g)
    b = torch.randn(D, generator=g)
    a, b = a / a.norm(), b / b.norm()
    perp = torch.eye(D) - torch.outer(u, u)
    att = m.transformer.h[0].attn
    with torch.no_grad():
        att.c_attn.weight[:, :2 * D] = 0
        att.c_attn.bias[:] = 0
        att.c_attn.weight[:, 2 * D:] = 3.0 * torch.outer(a, u) + noise * torch.randn(D, D, generator=g) @ perp
        att.c_proj.weight[:] = gain * torch.outer(u, b)
        att.c_proj.bias[:] = 0
    m.save_pretrained(dst)
    _copy_tokenizer(src, dst)
    return dst


def word_pool(domain: str, n: int, seed: int = 0) -> list:
    """Pools of random ``wN`` words (the tiny word-level tokenizer maps English to <unk>)."""
    from geoprobe.scan.pools.base import Candidate

    return [Candidate(f"{domain}-{i}", t, domain, domain)
            for i, t in enumerate(word_texts(n, seed=seed + sum(map(ord, domain))))]


def word_texts(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    out: list[str] = []
    while len(out) < n:
        t = " ".join(f"w{int(i)}" for i in rng.integers(3, 48, size=int(rng.integers(3, 13))))
        if t not in out:
            out.append(t)
    return out


def test_cut_layers_are_quarter_depths_below_the_readout():
    assert cut_layers(30) == [7, 15, 22]
    assert cut_layers(24) == [6, 12, 18]
    assert cut_layers(5) == [1, 2, 3]
    assert cut_layers(2) == [0]
    assert cut_layers(1) == []


def test_planted_axis_cut_removes_the_entropy_signal_and_controls_do_not(tiny_model_dirs, tmp_path):
    from geoprobe.backends import load_model

    h = load_model(planted_gpt2(tiny_model_dirs["gpt2"], tmp_path / "planted"), backend="torch", device="cpu")
    s = run_causal(h, word_texts(30), n_controls=9, n_boot=200, seed=0)
    assert s["applicable"] and s["cut_layers"] == [0] and s["readout_layer"] == 1 and list(s["cut_sets"]) == ["0"]
    assert s["axes_pc1_share"]["0"] > 0.75  # the plant: one direction carries the layer-0 values
    e = s["cut_sets"]["0"]
    ax = e["axis_entropy_corr"]
    assert ax["baseline"] > 0.7 and ax["after"] < 0.15  # the readout axis loses the entropy ordering
    assert ax["change_ci"][1] < -0.3
    assert max(abs(c) for c in ax["control_changes"]) < 0.05  # W_O cannot see any r ⟂ u
    for m in ("axis_entropy_corr", "nll_bits", "output_entropy_corr"):
        assert e[m]["p_empirical"] == pytest.approx(1 / 10)  # the axis beats all 9 controls
        assert len(e[m]["control_changes"]) == 9
    assert e["output_entropy_corr"]["after"] < 0.7 and e["output_entropy_corr"]["control_change_q05"] > -0.02
    assert abs(e["nll_bits"]["change"]) > 10 * max(abs(c) for c in e["nll_bits"]["control_changes"])
    assert e["axis_effect_beyond_controls"] is False  # p = 0.1 with 9 controls: not <= 0.05
    s19 = run_causal(h, word_texts(30), n_controls=19, n_boot=50, seed=0)
    assert s19["cut_sets"]["0"]["axis_entropy_corr"]["p_empirical"] == pytest.approx(1 / 20)
    assert s19["cut_sets"]["0"]["axis_effect_beyond_controls"] is True  # p = 0.05: every control beaten
    # without the plant (the same random model) the cut does nothing special
    base = run_causal(load_model(tiny_model_dirs["gpt2"], backend="torch", device="cpu"), word_texts(30),
                      n_controls=9, n_boot=50, seed=0)
    assert abs(base["cut_sets"]["0"]["axis_entropy_corr"]["change"]) < 0.3


def _hf_reference(model, tok, texts: list[str], cuts: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]):
    """Per prompt (one at a time): last-layer final-token values, final entropy (bits), NLL sum (bits), count,
    and the final-token values at every layer, with ``cuts[layer] = (w, mean, scale)`` applied to v."""
    L = model.config.n_layer
    out = []
    for text in texts:
        ids = torch.tensor([tok(text, add_special_tokens=True)["input_ids"]])
        got: dict[int, np.ndarray] = {}
        hooks = []
        for layer in range(L):
            def hook(_m, _i, o, layer=layer, got=got):
                o = o.clone()
                if layer in cuts:
                    w, mean, scale = (torch.as_tensor(x, dtype=torch.float64) for x in cuts[layer])
                    v = o[..., 2 * D:].double()
                    z = (v - mean) / scale
                    o[..., 2 * D:] = (v - scale * (z @ w)[..., None] * w).to(o.dtype)
                got[layer] = o[0, -1, 2 * D:].double().numpy()
                return o
            hooks.append(model.transformer.h[layer].attn.c_attn.register_forward_hook(hook))
        try:
            with torch.no_grad():
                logits = model(ids).logits[0].double()
        finally:
            for hk in hooks:
                hk.remove()
        logp = torch.log_softmax(logits, -1)
        p = logp[-1].exp()
        ent = float(-(p * logp[-1]).sum() / math.log(2))
        nll = float(-logp[:-1].gather(-1, ids[0, 1:, None]).sum() / math.log(2))
        out.append((got, ent, nll, ids.shape[1] - 1))
    return out


def _axis(x: np.ndarray):
    mean = x.mean(0)
    sd = x.std(0, ddof=1)
    z = (x - mean) / sd
    u = np.linalg.svd(z, full_matrices=False)[2][0]
    return u, mean, sd


def _spearman(a, b) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def test_batched_cuts_equal_one_condition_at_a_time_through_plain_transformers(tmp_path, tiny_model_dirs):
    import transformers as tf

    from geoprobe.backends import load_model

    cfg = tf.GPT2Config(n_embd=D, n_layer=5, n_head=4, n_inner=64, n_positions=32, vocab_size=48,
                        bos_token_id=2, eos_token_id=2, pad_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0,
                        attn_pdrop=0.0)
    torch.manual_seed(3)
    model = tf.GPT2LMHeadModel(cfg)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn_like(p))
    folder = tmp_path / "gpt2-5"
    model.save_pretrained(folder)
    _copy_tokenizer(tiny_model_dirs["gpt2"], folder)
    model = tf.GPT2LMHeadModel.from_pretrained(folder, attn_implementation="eager").eval()
    tok = tf.AutoTokenizer.from_pretrained(folder)
    texts = word_texts(16, seed=1)
    h = load_model(folder, backend="torch", device="cpu")
    s = run_causal(h, texts, n_controls=3, n_boot=50, seed=0, batch_size=7)  # 7 rows: conditions mix in a pass
    assert s["cut_layers"] == [1, 2, 3] and list(s["cut_sets"]) == ["1", "2", "3", "all"]
    assert s["forward_rows"] == 16 * (1 + 4 * 4)

    ref0 = _hf_reference(model, tok, texts, {})
    h_ref = np.array([r[1] for r in ref0])
    axes = {layer: _axis(np.stack([r[0][layer] for r in ref0])) for layer in (1, 2, 3, 4)}
    u4, m4, s4 = axes[4]
    proj0 = ((np.stack([r[0][4] for r in ref0]) - m4) / s4) @ u4
    sign = 1.0 if _spearman(proj0, h_ref) >= 0 else -1.0

    def metrics(ref):
        v4 = np.stack([r[0][4] for r in ref])
        ent = np.array([r[1] for r in ref])
        return {"axis_entropy_corr": _spearman(sign * ((v4 - m4) / s4) @ u4, h_ref),
                "nll_bits": sum(r[2] for r in ref) / sum(r[3] for r in ref),
                "final_entropy_bits": float(ent.mean()), "output_entropy_corr": _spearman(ent, h_ref)}

    base = metrics(ref0)
    for k, v in base.items():
        assert s["baseline"][k] == pytest.approx(v, abs=2e-5), k
    for label, layers in (("1", [1]), ("3", [3]), ("all", [1, 2, 3])):
        after = metrics(_hf_reference(model, tok, texts, {layer: axes[layer] for layer in layers}))
        e = s["cut_sets"][label]
        assert e["layers"] == layers
        for k, v in after.items():
            assert e[k]["after"] == pytest.approx(v, abs=2e-5), (label, k)
            assert e[k]["change"] == pytest.approx(v - base[k], abs=3e-5), (label, k)
        assert e["calibration_change_percent"] == pytest.approx(
            100 * (after["nll_bits"] - base["nll_bits"]) / base["nll_bits"], abs=1e-3)
    # the controls: 3 per cut set, their p-value counts them
    e = s["cut_sets"]["all"]["nll_bits"]
    hits = sum(abs(c) >= abs(e["change"]) for c in e["control_changes"])
    assert e["p_empirical"] == pytest.approx((1 + hits) / 4)


def test_no_attention_is_not_applicable(tiny_handle):
    s = run_causal(tiny_handle("mamba", "torch"), word_texts(5))
    assert s == {"applicable": False,
                 "reason": "not applicable: no attention (the entropy axis lives in attention value space)"}


def test_scan_writes_the_causal_stage_and_resumes_it(tiny_model_dirs, tmp_path, monkeypatch):
    import pandas as pd

    monkeypatch.setattr(driver, "build_pool", word_pool)
    kw = dict(domain="math", n=10, pool_size=40, sula=False, n_boot=30, backend="torch", device="cpu",
              causal_controls=4)
    res = driver.run_scan(tiny_model_dirs["gpt2"], out=tmp_path / "a", **kw)
    out = res.out
    s = json.loads((out / "summary.json").read_text())["summary"]
    c = s["causal"]
    assert c["applicable"] and c["set"] == "domain" and c["n"] == 10 and c["n_controls"] == 4
    e = c["cut_sets"]["0"]
    assert e["axis_entropy_corr"]["change_ci"][0] <= e["axis_entropy_corr"]["change"] \
        <= e["axis_entropy_corr"]["change_ci"][1]
    # the causal test ran on the domain set's selected prompts: an independent call gives the same numbers
    recs = [r for r in res.records if r.extra.get("set") == "domain"]
    again = run_causal(res_handle(tiny_model_dirs["gpt2"]), driver.selected_texts(recs), n_controls=4,
                       n_boot=30, seed=0)
    assert again["cut_sets"]["0"]["nll_bits"]["after"] == pytest.approx(e["nll_bits"]["after"], abs=1e-9)
    rows = pd.read_csv(out / "results.csv")
    cr = rows[rows["probe"] == "entropy_axis_causal"]
    assert set(cr["set"]) == {"domain"} and set(cr["variant"]) == {"cut/axis", "cut/controls"}
    r = cr[(cr["variant"] == "cut/axis") & (cr["statistic"] == "nll_bits_change")].iloc[0]
    assert r["value"] == pytest.approx(e["nll_bits"]["change"]) and r["layer"] == 0
    html = (out / "report.html").read_text()
    assert "Causal test: cutting the entropy axis" in html
    a = e["axis_entropy_corr"]  # the one-line sentence heads the page with the numbers above
    assert c["sentence"] == causal.causal_sentence(c)
    assert (f"Causal entropy-axis cut at layers [0] (set domain, n=10): corr(axis, entropy) {a['baseline']:+.2f} "
            f"-&gt; {a['after']:+.2f}") in html
    man = json.loads((out / "manifest.json").read_text())
    assert man["choices"]["causal"]["cut_layers"] == [0] and man["options"]["causal_controls"] == 4

    # interrupted after the causal stage: resuming reads it back instead of cutting again
    calls = []
    real = causal.run_causal
    monkeypatch.setattr(causal, "run_causal", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    orig_build = driver.build_report

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(driver, "build_report", boom)
    with pytest.raises(KeyboardInterrupt):
        driver.run_scan(tiny_model_dirs["gpt2"], out=tmp_path / "b", **kw)
    assert calls == [1]
    monkeypatch.setattr(driver, "build_report", orig_build)
    resumed = driver.run_scan(tiny_model_dirs["gpt2"], out=tmp_path / "b", resume=True, **kw)
    assert calls == [1] and "causal-domain" in resumed.report.manifest["resumed_stages"]
    assert resumed.report.summary["causal"]["cut_sets"] == json.loads(json.dumps(c["cut_sets"]))

    off = driver.run_scan(tiny_model_dirs["gpt2"], **{**kw, "causal": False})
    assert off.report.summary["causal"] is None and "entropy_axis_causal" not in set(off.report.rows["probe"])


def res_handle(folder: Path):
    from geoprobe.backends import load_model

    return load_model(folder, backend="torch", device="cpu")


@pytest.mark.parametrize("family", ["neox", "llama"])
def test_every_backend_cuts_the_same(family, tiny_handle):
    """The row-wise cut runs through each backend's value hook: TransformerLens, nnsight and plain torch agree."""
    got = {be: run_causal(tiny_handle(family, be), word_texts(12), n_controls=2, n_boot=20, batch_size=5)
           for be in ("torch", "transformer_lens", "nnsight")}
    ref = got["torch"]
    for be in ("transformer_lens", "nnsight"):
        for label, e in ref["cut_sets"].items():
            for m in causal.METRICS:
                assert got[be]["cut_sets"][label][m]["after"] == pytest.approx(e[m]["after"], abs=1e-5), (be, m)
                assert got[be]["cut_sets"][label][m]["control_changes"] == pytest.approx(
                    e[m]["control_changes"], abs=1e-5), (be, m)
