"""`geoprobe scan` end to end on the real SmolLM2-135M-Instruct GGUF with the math domain, at a reduced size.

5 prompts per entropy quintile (25 per set) from 100 candidates per pool, 4 SULA prompts per k. Checked against
independent computations written here, on the plain ``transformers`` model of the converted folder: the
next-token entropy of every selected prompt (unpadded forward, full logits), the last layer's PC1 and PC1+PC2
shares (values captured with a forward hook on ``v_proj``, numpy SVD), and the SULA MAE from prompts.jsonl.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def scanned(tmp_path_factory, smollm2_gguf):
    from geoprobe.cli import main

    out = tmp_path_factory.mktemp("scan") / "smol"
    rc = main(["scan", str(smollm2_gguf), "--domain", "math", "--n", "25", "--pool-size", "100", "--sula-per-k", "4",
               "--n-boot", "200", "--causal-controls", "2", "--backend", "torch", "--device", "cpu", "--quiet", "--out", str(out)])
    assert rc == 0
    return out


def test_real_scan_numbers_match_a_plain_transformers_forward(scanned):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from geoprobe.scan.driver import selected_texts
    from geoprobe.scan.records import read_prompts_jsonl

    man = json.loads((scanned / "manifest.json").read_text())
    s = json.loads((scanned / "summary.json").read_text())["summary"]
    folder = man["model_info"]["source_detail"]["hf_folder"]
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    recs = read_prompts_jsonl(scanned / "prompts.jsonl")
    vals: list[np.ndarray] = []
    hook = model.model.layers[-1].self_attn.v_proj.register_forward_hook(
        lambda _m, _i, o: vals.append(o[0, -1].double().numpy()))
    try:
        for set_name in ("mixed", "domain"):
            rs = [r for r in recs if r.extra.get("set") == set_name]
            assert len(rs) == 100 and sum(r.selected for r in rs) == 25
            assert sorted(r.quintile for r in rs if r.selected) == sorted(list(range(5)) * 5)
            texts = selected_texts(rs)
            by_text = {r.text: r for r in rs}
            vals.clear()
            for t in texts:
                ids = torch.tensor([tok(t, add_special_tokens=True)["input_ids"]])
                with torch.no_grad():
                    p = torch.softmax(model(ids).logits[0, -1].double(), -1)
                h = float(-(p * torch.log2(p.clamp_min(1e-300))).sum())
                assert by_text[t].entropy_bits == pytest.approx(h, abs=5e-3)
            x = np.stack(vals)
            z = (x - x.mean(0)) / np.where(x.std(0, ddof=1) > 0, x.std(0, ddof=1), 1)
            lam = np.linalg.svd(z, compute_uv=False) ** 2
            vm = s["sets"][set_name]["value_manifold"]
            assert vm["d"] == 192  # 3 KV heads x 64, not expanded to the 9 query heads
            assert vm["pc1_share"]["value"] == pytest.approx(lam[0] / lam.sum(), abs=2e-3)
            assert vm["pc12_share"]["value"] == pytest.approx(lam[:2].sum() / lam.sum(), abs=2e-3)
    finally:
        hook.remove()
    # SULA: the headline MAE is the mean |H_model - H_Bayes| of the main prompts in prompts.jsonl
    main = [r.extra for r in recs if r.pool == "sula" and r.extra["condition"] == "main"]
    assert len(main) == 20
    assert s["sula"]["mae_bits"] == pytest.approx(np.mean([abs(e["h_model_bits"] - e["h_bayes_bits"]) for e in main]))
    assert s["domain"] == "math" and s["verdict"]["grade"] in ("full", "partial", "none")
    assert man["timings_s"]["total"] > 0  # recorded; speed is measured in benchmarks/, not asserted here


def test_real_scan_causal_stage_runs_at_quarter_depths(scanned):
    """The causal cut on SmolLM2 (30 layers): cut layers 7/15/22, each alone and together, 2 controls each,
    on the 25 math prompts; every number finite, and the p-values are the ones 2 controls allow."""
    import math

    c = json.loads((scanned / "summary.json").read_text())["summary"]["causal"]
    assert c["applicable"] and c["set"] == "domain" and c["n"] == 25 and c["readout_layer"] == 29
    assert c["cut_layers"] == [7, 15, 22] and list(c["cut_sets"]) == ["7", "15", "22", "all"]
    for e in c["cut_sets"].values():
        for m in ("axis_entropy_corr", "nll_bits", "final_entropy_bits", "output_entropy_corr"):
            assert all(math.isfinite(x) for x in (e[m]["baseline"], e[m]["after"], *e[m]["change_ci"]))
            assert min(abs(e[m]["p_empirical"] - q) for q in (1 / 3, 2 / 3, 1.0)) < 1e-6
