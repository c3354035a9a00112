"""Every tiny family through every signature of the scan: GPT-2, GPT-NeoX (Pythia), Phi, Llama (GQA), Mistral
(sliding window) and Mamba (attention-free).

Each signature must be present and finite, or explicitly "not applicable: no attention" (Mamba's key
orthogonality, focusing, query-key alignment, verdict and causal cut). One number per family is checked against
an independent computation in the tests: the last layer's PC1 / PC1+PC2 shares recomputed with numpy
(``test_scan_driver.shares_numpy``) from final-token activations of the plain ``transformers`` model (values through a forward hook on the value projection;
Mamba: the residual stream from ``output_hidden_states``). GPT-2 also runs the in-context (SULA) experiment,
with label words its word-level tokenizer knows.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_VOCAB, _tiny_config, word_pool
from test_scan_driver import shares_numpy

from geoprobe.scan import driver, sula

FAMILIES = ("gpt2", "neox", "phi", "llama", "mistral", "mamba")
N, POOL = 10, 40


def _gpt2_for_sula(dst: Path) -> Path:
    """A tiny GPT-2 with 256 positions (SULA prompts at k = 8 are longer than the fixtures' 32) and the fixtures'
    word vocabulary split on punctuation too, so a label glued to the prompts' ``test:`` is its own token."""
    import transformers as tf
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    cfg = _tiny_config("gpt2")
    cfg.n_positions = 256
    torch.manual_seed(0)
    model = tf.GPT2LMHeadModel(cfg)
    model.save_pretrained(dst)
    names = ["<pad>", "<unk>", "<bos>"] + [f"w{i}" for i in range(3, TINY_VOCAB)]
    tok = Tokenizer(models.WordLevel(vocab={n: i for i, n in enumerate(names)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>",
                            bos_token="<bos>").save_pretrained(dst)
    return dst


def _finite(x) -> bool:
    return x is not None and math.isfinite(float(x))


def _final_activations(model, tok, texts: list[str], family: str) -> np.ndarray:
    """Last layer, final token: concatenated value vectors (attention) or the block's output (Mamba)."""
    got: list[np.ndarray] = []
    L = model.config.num_hidden_layers
    hook = None
    if family == "gpt2":
        d = model.config.n_embd
        hook = model.transformer.h[-1].attn.c_attn.register_forward_hook(
            lambda _m, _i, o: got.append(o[0, -1, 2 * d:].double().numpy()))
    elif family == "neox":
        cfg = model.config
        dh = cfg.hidden_size // cfg.num_attention_heads
        hook = model.gpt_neox.layers[-1].attention.query_key_value.register_forward_hook(
            lambda _m, _i, o: got.append(o[0, -1].view(cfg.num_attention_heads, 3, dh)[:, 2].reshape(-1)
                                         .double().numpy()))
    elif family != "mamba":
        hook = model.model.layers[-1].self_attn.v_proj.register_forward_hook(
            lambda _m, _i, o: got.append(o[0, -1].double().numpy()))
    try:
        with torch.no_grad():
            for t in texts:
                out = model(torch.tensor([tok(t, add_special_tokens=True)["input_ids"]]), output_hidden_states=True)
                if family == "mamba":  # Mamba's hidden_states: one per block output, then the final norm
                    got.append(out.hidden_states[L - 1][0, -1].double().numpy())
    finally:
        if hook is not None:
            hook.remove()
    return np.stack(got)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_through_every_signature(family, tiny_model_dirs, tiny_hf, monkeypatch, tmp_path):
    from transformers import AutoTokenizer

    monkeypatch.setattr(driver, "build_pool", word_pool)
    with_sula = family == "gpt2"
    folder = tiny_model_dirs[family]
    if with_sula:  # English label words are <unk> to the word-level tokenizer: use two of its words per pair
        monkeypatch.setattr(sula, "choose_label_pairs", lambda tok, *a, **k: [("w3", "w4"), ("w5", "w6")])
        folder = _gpt2_for_sula(tmp_path / "gpt2")
    res = driver.run_scan(folder, domain="math", n=N, pool_size=POOL, sula=with_sula,
                          sula_per_k=4, n_boot=20, causal_controls=2, backend="torch", device="cpu")
    s = res.report.summary
    attention = family != "mamba"
    if with_sula:
        import transformers as tf

        model = tf.AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    else:
        model = tiny_hf(family)
    tok = AutoTokenizer.from_pretrained(folder)
    L = model.config.num_hidden_layers
    for set_name in ("mixed", "domain"):
        ss = s["sets"][set_name]
        vm = ss["value_manifold"]
        assert vm["site"] == ("values" if attention else "residual") and vm["layer"] == L - 1
        assert _finite(vm["participation_ratio"]["value"]) and vm["participation_ratio"]["value"] >= 1
        for k in ("pc1_share", "pc12_share", "rho_pc1_entropy"):
            assert _finite(vm[k]["value"]) and all(map(_finite, vm[k]["ci"])), (set_name, k)
        assert [r["layer"] for r in ss["layer_sweep"]] == list(range(L))
        assert all(_finite(r["pc12_share"]) and _finite(r["null_pc12"]) for r in ss["layer_sweep"])
        # independent: numpy PCA of the plain model's final-token activations at the last layer
        recs = [r for r in res.records if r.extra.get("set") == set_name]
        pc1, pc12 = shares_numpy(_final_activations(model, tok, driver.selected_texts(recs), family))
        assert vm["pc1_share"]["value"] == pytest.approx(pc1, abs=1e-5)
        assert vm["pc12_share"]["value"] == pytest.approx(pc12, abs=1e-5)
        if attention:
            ko, af, qk = ss["key_orthogonality"], ss["attention_focusing"], ss["qk_alignment"]
            assert len(ko["layer_mean_abs_cos"]) == L and all(map(_finite, ko["layer_mean_abs_cos"]))
            assert _finite(ko["random_baseline"]) and 0 <= ko["fraction_of_layers_below_0.20"] <= 1
            assert _finite(af["focusing_percent"]) and all(map(_finite, af["ci"]))
            assert len(af["entropy_bits_by_layer"]) == L and all(map(_finite, af["entropy_bits_by_layer"]))
            assert len(qk["mean_cos_by_layer"]) == L and all(map(_finite, qk["mean_cos_by_layer"]))
            assert ss["verdict"]["grade"] in ("full", "partial", "none") and ss["verdict"]["of"] == 3
        else:
            for k in ("key_orthogonality", "attention_focusing", "qk_alignment"):
                assert ss[k]["not_applicable"] == "not applicable: no attention"
            assert ss["attention_focusing"]["focusing_percent"] is None
            assert ss["verdict"]["grade"] == "not measured"
            assert ss["verdict"]["reason"].startswith("not applicable: no attention")
    if not attention:  # the cross-model table renders it: attention columns n/a, their predictions not measured
        from geoprobe.scan.table import markdown

        md = markdown([json.loads(json.dumps(s))])
        pcs = [s["sets"][k]["value_manifold"]["pc12_share"]["value"] for k in ("mixed", "domain")]
        assert f"| {100 * pcs[0]:.1f}% → {100 * pcs[1]:.1f}% (math) | n/a | n/a |" in md
        assert "| not measured (not measured) |" in md
        assert ("not measured: not applicable: no attention (the key orthogonality and focusing criteria need "
                "attention heads)") in res.report.to_html()
        for k in ("key_orthogonality", "attention_focusing", "causal_axis_cut", "causal_calibration"):
            assert s["predictions"][k]["state"] == "not measured"
    c = s["causal"]
    if attention:
        assert c["applicable"] and c["cut_layers"] == [0] and c["set"] == "domain"
        for m in ("axis_entropy_corr", "nll_bits", "final_entropy_bits", "output_entropy_corr"):
            e = c["cut_sets"]["0"][m]
            assert _finite(e["change"]) and all(map(_finite, e["change_ci"])) and len(e["control_changes"]) == 2
    else:
        assert c == {"applicable": False, "set": "domain",
                     "reason": "not applicable: no attention (the entropy axis lives in attention value space)",
                     "sentence": "Causal entropy-axis cut: not applicable: no attention (the entropy axis "
                                 "lives in attention value space)."}
    if with_sula:
        su = s["sula"]
        assert su["labels"] == ["w3", "w4"] and _finite(su["mae_bits"]) and 0 <= su["discarded_mass"] <= 1
        assert set(su["by_condition"]) == set(sula.CONDITIONS)
        main = [r.extra for r in res.records if r.pool == "sula" and r.extra["condition"] == "main"]
        assert su["mae_bits"] == pytest.approx(np.mean([abs(e["h_model_bits"] - e["h_bayes_bits"]) for e in main]))
    else:
        assert s["sula"] is None
    assert set(s["predictions"]) and res.report.figures  # the scorecard and figures were built
