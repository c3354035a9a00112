"""Null models behind the focusing and ablation verdicts, and criteria a random or untrained model used to pass
(issue 13: a verdict must be able to fail for a random model; flags come from tests, not from ``a > b``)."""

import math

import pytest
import torch

from geoprobe.probes.ablation import heads_subset_test, layer_bypass_null_test, random_kick
from geoprobe.probes.attention_focusing import focusing_null_test, null_summary, shuffle_context
from geoprobe.probes.suites import load_suite
from geoprobe.stats import paired_statistic_test


def _foc(e: torch.Tensor) -> float:
    """Independent focusing: 100 (mean H_first - mean H_last) / mean H_first of [n, L] entropies."""
    return float(100 * (e[:, 0].mean() - e[:, -1].mean()) / e[:, 0].mean())


def _entropies(first, last, n=40, seed=0, noise=0.05):
    g = torch.Generator().manual_seed(seed)
    e = torch.empty(n, 3, dtype=torch.float64)
    e[:, 0] = first + noise * torch.randn(n, generator=g, dtype=torch.float64)
    e[:, 1] = (first + last) / 2
    e[:, 2] = last + noise * torch.randn(n, generator=g, dtype=torch.float64)
    return e


# ------------------------------------------------------------------------------------------- paired test


def test_paired_statistic_test_known_answers():
    a = _entropies(4.0, 1.0)
    same = paired_statistic_test(a, a.clone(), lambda x: x.mean((-1, -2)), n_boot=300, seed=0)
    assert same.estimate == 0.0 and same.p_greater == 1.0 and not same.significant  # every swap gives D = 0
    b = a - 1.0
    t = paired_statistic_test(a, b, lambda x: x.mean((-1, -2)), n_boot=300, seed=0)
    assert t.estimate == pytest.approx(1.0) and t.low == pytest.approx(1.0) and t.high == pytest.approx(1.0)
    # swapping k of the 40 pairs gives D* = 1 - 2k/40 >= 1 only for k = 0 (probability 2^-40)
    assert t.p_greater == pytest.approx(1 / 301) and t.significant


def test_focusing_null_test_matches_an_independent_computation():
    model, null = _entropies(4.0, 1.0), _entropies(4.0, 2.0, seed=1)
    r = focusing_null_test(model, null, n_boot=400, seed=0)
    assert r["focusing_percent"] == pytest.approx(_foc(null), abs=1e-12)
    assert r["test"]["estimate"] == pytest.approx(_foc(model) - _foc(null), abs=1e-12)  # ~75 - 50
    assert r["test"]["ci"][0] > 20 and r["test"]["significant"] and r["test"]["p_one_sided"] == pytest.approx(1 / 401)
    # bootstrap over prompts, resampling pairs jointly: reproduce the CI by hand
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, 40, (400, 40), generator=g)
    d = torch.tensor([_foc(model[i]) - _foc(null[i]) for i in idx], dtype=torch.float64)
    lo, hi = torch.quantile(d, torch.tensor([0.025, 0.975], dtype=d.dtype)).tolist()
    assert r["test"]["ci"] == pytest.approx([lo, hi], abs=1e-9)


# ------------------------------------------------------------------------------- the calibrated criterion


def _summary(model, nulls):
    from geoprobe.probes.attention_focusing import focusing_with_ci

    ci = focusing_with_ci(model, n_boot=300, seed=0)
    s = {"focusing_percent": ci.estimate, "ci": [ci.low, ci.high], "focusing_ci_low": ci.low}
    s.update(null_summary(model, nulls, n_boot=300, seed=0))
    return s


def test_focusing_that_the_shuffled_control_also_shows_is_vacuous_and_fails_calibrated():
    """A model focusing 75% passes the paper's > 30%; when its shuffled control focuses just as much, the
    criterion is reported vacuous and the null-calibrated criterion fails (before: a pass with nothing beside)."""
    su = load_suite("paper3-llm")
    crit = {c.name: c for c in su.criteria}
    paper, cal = crit["attention_focusing"], crit["attention_focusing (vs initial weights and shuffled prompts)"]
    model = _entropies(4.0, 1.0)
    init = _entropies(4.0, 4.0, seed=2)  # a random model: no focusing
    s = {"attention_focusing": _summary(model, {"init": (init, "fresh"), "shuffled": (model.clone(), "shuffled")})}
    p = paper.evaluate(s)
    assert p["passed"] and p["vacuous"] and p["nulls"]["shuffled"]["passed"] and not p["nulls"]["init"]["passed"]
    assert s["attention_focusing"]["focusing_minus_shuffled"]["estimate"] == 0.0
    assert s["attention_focusing"]["focusing_above_null"] is False and not cal.evaluate(s)["passed"]
    # focusing well beyond both nulls passes both
    weaker = _entropies(4.0, 3.0, seed=3)
    s = {"attention_focusing": _summary(model, {"init": (init, "fresh"), "shuffled": (weaker, "shuffled")})}
    assert cal.evaluate(s)["passed"] and not paper.evaluate(s)["vacuous"]
    assert s["attention_focusing"]["focusing_minus_null_ci_low"] == pytest.approx(
        min(s["attention_focusing"]["focusing_minus_init"]["ci"][0],
            s["attention_focusing"]["focusing_minus_shuffled"]["ci"][0]))


def test_shuffle_context_keeps_first_final_padding_and_the_token_multiset():
    toks = torch.tensor([[0, 0, 2, 5, 6, 7, 8, 9], [2, 10, 11, 12, 13, 14, 15, 16], [0, 0, 0, 0, 0, 2, 5, 6]])
    mask = (toks != 0).long()
    out = shuffle_context(toks, mask, seed=0)
    assert torch.equal(out, shuffle_context(toks, mask, seed=0))  # seeded
    assert not torch.equal(out, shuffle_context(toks, mask, seed=1))
    assert torch.equal(out[mask == 0], toks[mask == 0])
    for i in range(3):
        real = torch.nonzero(mask[i]).flatten()
        assert out[i, real[0]] == toks[i, real[0]] and out[i, real[-1]] == toks[i, real[-1]]
        assert sorted(out[i, real].tolist()) == sorted(toks[i, real].tolist())
    assert torch.equal(out[2], toks[2])  # one middle token: nothing to shuffle
    assert not torch.equal(out[1], toks[1])


def test_focusing_nulls_on_a_tiny_llama_equal_a_plain_transformers_computation(tiny_model_dirs):
    """Known answer: the init null is AutoModelForCausalLM.from_config(config) under seed 0 and the shuffled null
    is the model on shuffle_context's tokens; both recomputed here from eager attention weights, one prompt at a
    time without padding."""
    from transformers import AutoModelForCausalLM

    import geoprobe as gp
    from geoprobe.infotheory import entropy_bits
    from geoprobe.probes.suite import run_probes
    from geoprobe.probes.targets import llm_target

    prompts = [" ".join(f"w{3 + (i * 7 + j * 5) % 40}" for j in range(4 + i % 9)) for i in range(16)]
    folder = str(tiny_model_dirs["llama"])
    t = llm_target(folder, prompts=prompts, device="cpu", batch_size=8, backend="torch")
    s = run_probes(t, ["attention_focusing"], gp.ProbeOptions(n_boot=100)).summary["attention_focusing"]

    def reference(model, tokens):
        rows = []
        for i in range(tokens.shape[0]):
            ids = tokens[i][t.attention_mask[i].bool()][None]
            with torch.no_grad():
                att = model(ids, output_attentions=True).attentions  # L x [1, H, T, T]
            rows.append([float(entropy_bits(a[0, :, -1].double(), dim=-1).mean()) for a in att])
        return torch.tensor(rows, dtype=torch.float64)

    trained = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").float().eval()
    torch.manual_seed(0)
    fresh = AutoModelForCausalLM.from_config(trained.config, attn_implementation="eager").float().eval()
    e_model = reference(trained, t.tokens)
    e_init = reference(fresh, t.tokens)
    e_shuf = reference(trained, shuffle_context(t.tokens, t.attention_mask, seed=0))
    assert s["focusing_percent"] == pytest.approx(_foc(e_model), abs=1e-4)
    assert s["init_focusing_percent"] == pytest.approx(_foc(e_init), abs=1e-4)
    assert s["shuffled_focusing_percent"] == pytest.approx(_foc(e_shuf), abs=1e-4)
    assert s["focusing_minus_init"]["estimate"] == pytest.approx(_foc(e_model) - _foc(e_init), abs=1e-4)
    assert s["focusing_nulls_used"] == ["init", "shuffled"]
    # a random model focuses by a few thousandths of a percent: the paper's rule and the calibrated one fail
    assert abs(s["focusing_percent"]) < 0.1 and s["focusing_above_null"] is False
    v = load_suite("paper3-llm")
    crit = {c.name: c for c in v.criteria}
    assert not crit["attention_focusing (vs initial weights and shuffled prompts)"].evaluate(
        {"attention_focusing": s})["passed"]
    from geoprobe.report_text import SENTENCES

    text = SENTENCES["attention_focusing"](s)
    assert "the same architecture at initialisation" in text and "the shuffled-context control" in text
    assert text.endswith("beyond every null: no.")


# ----------------------------------------------------------------------------------------------- ablation


def test_layer_bypass_null_test_and_heads_subset_test_known_answers():
    r = layer_bypass_null_test(5.0, [float(i) / 10 for i in range(1, 21)])
    assert r["p"] == pytest.approx(1 / 21) and r["beats_null"] and r["null_median"] == pytest.approx(1.05)
    inside = layer_bypass_null_test(1.0, [float(i) / 10 for i in range(1, 21)])  # 11 of 20 draws >= 1.0
    assert inside["p"] == pytest.approx(12 / 21) and not inside["beats_null"]
    eff = {(layer, h): (10.0 if layer == 0 else 0.1 * h) for layer in range(3) for h in range(4)}
    t = heads_subset_test(eff, [(0, h) for h in range(4)], n_draws=999, seed=0)
    # P(a random 4-set is exactly the layer-0 heads) = 1 / C(12, 4) = 1/495
    assert t["mean_effect"] == 10.0 and t["significant"] and t["p"] < 0.02
    flat = {k: 1.0 for k in eff}
    assert heads_subset_test(flat, [(0, h) for h in range(4)], n_draws=99)["p"] == 1.0


def test_random_kick_moves_the_residual_by_the_blocks_own_update(tiny_handle):
    h = tiny_handle("llama", "torch")
    toks = torch.tensor([[2, 5, 6, 7, 8, 9], [2, 9, 8, 7, 6, 5]])
    a = h.run(toks, None, sites=["resid_pre", "resid_post"], layers=[0, 1])
    with random_kick(h, 0, seed=3):
        b = h.run(toks, None, sites=["resid_pre"], layers=[1])
    with random_kick(h, 0, seed=3):
        c = h.run(toks, None, sites=["resid_pre"], layers=[1])
    update = (a["resid_post", 0] - a["resid_pre", 0]).norm(dim=-1)
    moved = b["resid_pre", 1] - a["resid_pre", 1]
    assert torch.allclose(moved.norm(dim=-1), update, rtol=1e-4, atol=1e-6)
    assert torch.equal(b["resid_pre", 1], c["resid_pre", 1])  # seeded
    cos = torch.nn.functional.cosine_similarity(moved, -(a["resid_post", 0] - a["resid_pre", 0]), dim=-1)
    assert cos.abs().max() < 0.9  # a random direction, not the bypass


def test_ablation_nulls_on_an_untrained_tunnel(tunnel_run_dir):
    """The untrained model's bypass ratios are ~1; under the old flag its first layer 'beat' the kicks by
    p = 1/21 (1.002 vs ~0.997), so a bare significance flag is not enough: the calibrated rule divides the
    bypass by the kicks' q95 and asks for the paper's 10x. Given the model as its own initial model, the init
    null equals the measurement exactly."""
    import geoprobe as gp
    from geoprobe.probes.suite import run_probes
    from geoprobe.probes.targets import tunnel_target

    t = tunnel_target(tunnel_run_dir, n=32, device="cpu", batch_size=32, backend="torch")
    rep = run_probes(t, ["ablation"], gp.ProbeOptions(n_boot=50, n_controls=20), init_handle=t.handle)
    s = rep.summary["ablation"]
    L = t.handle.info.n_layers
    assert s["init_layer_bypass_ratios"] == s["layer_bypass_ratios"]
    rows = rep.rows[rep.rows["statistic"] == "bypass_ratio_vs_matched_kick"].sort_values("layer")
    assert len(rows) == L
    for layer, (_, r) in enumerate(rows.iterrows()):
        null = torch.tensor(r["meta"]["null_ratios"], dtype=torch.float64)
        assert len(null) == 20
        p = (1 + int((null >= r["value"]).sum())) / 21
        assert s["layer_bypass_p"][layer] == pytest.approx(p)
        q95 = float(torch.quantile(null, 0.95))
        assert s["layer_bypass_over_null_q95"][layer] == pytest.approx(r["value"] / q95)
        assert 0.9 < s["layer_bypass_over_null_q95"][layer] < 1.1  # untrained: a bypass is just another kick
    crit = {c.name: c for c in load_suite("paper1-tunnels").criteria}
    summary = {"ablation": s}
    assert not crit["every layer is essential"].evaluate(summary)["passed"]
    assert not crit["every layer beats a matched random kick"].evaluate(summary)["passed"]
    assert s["layer0_heads_matter_most"] is False and s["layer0_heads_vs_random_heads"]["p"] > 0.05
    from geoprobe.report_text import SENTENCES

    text = SENTENCES["ablation"](s)
    assert "a random kick of the same size" in text and "every layer beats the kicks (p < 0.05): no" in text


def test_a_model_whose_every_perturbation_hurts_passes_the_paper_rule_vacuously():
    """Paper I's 'every layer > 10x' passes whenever the baseline MAE is tiny, also when a random kick of the
    same size hurts as much; the matched-kick null makes that visible and the calibrated rule fails."""
    crit = {c.name: c for c in load_suite("paper1-tunnels").criteria}
    kicks = [[20.0 + 0.5 * i for i in range(20)], [30.0 + 0.5 * i for i in range(20)]]
    ratios = [35.0, 52.0]
    tests = [layer_bypass_null_test(r, k) for r, k in zip(ratios, kicks, strict=True)]
    s = {"ablation": {"layer_bypass_ratios": ratios, "layer_bypass_null_median": [x["null_median"] for x in tests],
                      "init_layer_bypass_ratios": None,
                      "layer_bypass_over_null_q95": [r / x["null_q95"] for r, x in zip(ratios, tests, strict=True)]}}
    paper = crit["every layer is essential"].evaluate(s)
    assert paper["passed"] and paper["vacuous"] and paper["nulls"]["matched_kick"]["passed"]
    assert paper["nulls"]["init"]["passed"] is None
    assert not crit["every layer beats a matched random kick"].evaluate(s)["passed"]
    assert [x["beats_null"] for x in tests] == [True, True]  # significant, yet far from 10x the kicks


# ------------------------------------------------------------------------ audit: criteria random models passed


def test_untrained_tunnel_passes_the_old_tunnel_focusing_rule_by_noise_but_not_the_new(tunnel_run_dir):
    """Old rule ``focusing_percent > 0``: a coin flip for an untrained model (+-0.01%); new rule: the CI's lower
    end above 1%."""
    import geoprobe as gp
    from geoprobe.probes.suite import run_probes
    from geoprobe.probes.targets import tunnel_target

    t = tunnel_target(tunnel_run_dir, n=32, device="cpu", batch_size=32, backend="torch")
    s = run_probes(t, ["attention_focusing"], gp.ProbeOptions(n_boot=100)).summary["attention_focusing"]
    assert abs(s["focusing_percent"]) < 0.05
    crit = {c.name: c for c in load_suite("paper1-tunnels").criteria}["attention focuses with depth"]
    assert not crit.evaluate({"attention_focusing": s})["passed"]
    flipped = dict(s, focusing_percent=abs(s["focusing_percent"]), focusing_ci_low=abs(s["focusing_ci_low"]))
    assert flipped["focusing_percent"] > 0  # what the old rule accepted
    assert not crit.evaluate({"attention_focusing": flipped})["passed"]


def test_untrained_tunnel_passed_the_old_entropy_ordering_test_through_position(tmp_path):
    """On the smoke bijection stream (V=6, L=5) the Bayes entropy is a function of position, so the untrained
    step-0 model's PC1 (which tracks position) 'orders' entropy with permutation p < 0.01. The tunnel suite's
    calibrated criterion now reads the within-position test, undefined (and failing) on such a stream."""
    import os
    import subprocess
    import sys

    import geoprobe as gp
    from geoprobe.probes.suite import run_probes
    from geoprobe.probes.targets import tunnel_target

    run = tmp_path / "smoke"
    subprocess.run([sys.executable, "-m", "geoprobe", "tunnel", "train", "bijection", "--preset", "smoke", "--steps",
                    "1", "--out", str(run), "--device", "cpu", "--quiet"], check=True, capture_output=True,
                   env=dict(os.environ))
    t = tunnel_target(run / "checkpoints" / "step_0000000", n=64, device="cpu", batch_size=64, backend="torch")
    s = run_probes(t, ["value_manifold"], gp.ProbeOptions(n_boot=1000, max_samples=400)).summary["value_manifold"]
    assert s["entropy_determined_by_position"] is True
    assert s["rho_pc1_perm_p"] < 0.01  # the old criterion (rho_pc1_perm_p < 0.01) passed an untrained model
    assert abs(s["spearman_rho_pc1_position"]) == pytest.approx(s["spearman_rho_pc1_entropy"], abs=1e-12)
    crit = {c.name: c for c in load_suite("paper1-tunnels").criteria}
    new = crit["entropy ordering within position (permutation test)"]
    assert s["within_position_rho_perm_p"] is None and not new.evaluate({"value_manifold": s})["passed"]
    assert "entropy ordering (permutation test)" not in crit
    assert math.isfinite(s["rho_pc1_perm_p"])


def test_random_llama_passed_the_old_isotropic_share_rule_but_not_the_new(tiny_model_dirs):
    """A random network's values are not isotropic: the tiny random Llama's PC1+PC2 share lies above the isotropic
    q95, so the old calibrated value-manifold rule passed it. The new rule also needs the share above fresh
    weights on the same prompts (paired CI), which a random model does not reach; given as its own initial
    model, D = 0 exactly."""
    import geoprobe as gp
    from geoprobe.probes.suite import run_probes
    from geoprobe.probes.suites import Criterion
    from geoprobe.probes.targets import llm_target

    prompts = [" ".join(f"w{3 + (i * 7 + j * 5) % 40}" for j in range(4 + i % 9)) for i in range(24)]
    t = llm_target(str(tiny_model_dirs["llama"]), prompts=prompts, device="cpu", batch_size=8, backend="torch")
    s = run_probes(t, ["value_manifold"], gp.ProbeOptions(n_boot=200)).summary["value_manifold"]
    old = Criterion("old", "value_manifold", ("pc1_share", "pc12_share"), ">",
                    ("isotropic_null_pc1_q95", "isotropic_null_pc12_q95"), combine="any")
    assert s["pc12_share"] > s["isotropic_null_pc12_q95"] and old.evaluate({"value_manifold": s})["passed"]
    new = {c.name: c for c in load_suite("paper3-llm").criteria}["value_manifold (vs isotropic null and initial weights)"]
    assert not new.evaluate({"value_manifold": s})["passed"]
    assert s["pc12_minus_init"]["ci"][0] < 0 < s["pc12_minus_init"]["ci"][1]
    assert s["pc12_minus_init"]["estimate"] == pytest.approx(s["pc12_share"] - s["init_pc12_share"], abs=1e-9)
    own = run_probes(t, ["value_manifold"], gp.ProbeOptions(n_boot=100), init_handle=t.handle).summary["value_manifold"]
    assert own["pc1_minus_init"]["estimate"] == 0.0 and own["pc1_minus_init"]["ci"] == [0.0, 0.0]
    assert own["pc1_above_null"] is False and own["pc12_above_null"] is False


def test_a_one_checkpoint_dissociation_passes_the_paper_rule_but_not_the_calibrated_one():
    """Frame and MAE settling together at the end of a short run (a 40-step smoke run: settling steps 25 and 29,
    one checkpoint apart) give a degenerate bootstrap CI [1, 1], so `dissociation` is true; the calibrated rule
    also asks for the precision to settle more than twice as late as the frame."""
    from geoprobe.probes.dynamics import settling_dissociation

    steps = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 13, 15, 18, 21, 25, 29, 34, 40]
    frame = [1.0, 0.998, 0.988, 0.971, 0.944, 0.905, 0.861, 0.812, 0.755, 0.696, 0.584, 0.483, 0.381, 0.248,
             0.132, 0.061, 0.017, 0.002, 0.0]  # the smoke run's normalised trajectories (docs/criteria.md)
    mae = [1.0, 0.995, 0.979, 0.984, 0.990, 0.985, 0.967, 0.949, 0.894, 0.801, 0.663, 0.611, 0.501, 0.324, 0.289,
           0.222, 0.059, -0.008, 0.0]
    seq = torch.tensor([frame] * 20, dtype=torch.float64)
    d = settling_dissociation(steps, seq, torch.tensor([mae] * 20, dtype=torch.float64), n_boot=200, seed=0)
    assert (d["frame_settling_step"], d["precision_settling_step"]) == (25, 29)
    assert d["index_difference_ci"] == [1.0, 1.0] and d["dissociation"] is True
    s = {"dynamics": {"dissociation": d["dissociation"], "settling_ratio": d["settling_ratio"],
                      "settling_index_difference_ci_low": d["index_difference_ci"][0]}}
    crit = {c.name: c for c in load_suite("paper1-tunnels").criteria}
    assert crit["frame before precision"].evaluate(s)["passed"]  # the old (and paper) rule
    assert d["settling_ratio"] == pytest.approx(29 / 25)
    assert not crit["frame well before precision"].evaluate(s)["passed"]
    # the planted early frame of test_null_calibration (ratio 20) passes both
    s["dynamics"].update(settling_ratio=20.0, settling_index_difference_ci_low=5.0)
    assert crit["frame well before precision"].evaluate(s)["passed"]


def test_alignment_sharpening_against_step_0_known_answers(tunnel_run_dir):
    """Given as its own initial model, a model sharpens beyond step 0 by exactly 0 (never significant); a planted
    extra sharpening of 0.03 over +-0.002 noise is found."""
    import geoprobe as gp
    from geoprobe.probes.qk_alignment import sharpening_vs_init
    from geoprobe.probes.suite import run_probes
    from geoprobe.probes.targets import tunnel_target

    t = tunnel_target(tunnel_run_dir, n=32, device="cpu", batch_size=32, backend="torch")
    s = run_probes(t, ["qk_alignment"], gp.ProbeOptions(n_boot=100), init_handle=t.handle).summary["qk_alignment"]
    assert s["sharpening_minus_init"]["estimate"] == 0.0 and s["sharpens_beyond_init"] is False
    crit = {c.name: c for c in load_suite("paper1-tunnels").criteria}["alignment sharpens beyond step 0"]
    assert not crit.evaluate({"qk_alignment": s})["passed"]
    g = torch.Generator().manual_seed(0)
    init = 0.002 * torch.randn(40, 3, generator=g, dtype=torch.float64)
    model = init + torch.tensor([0.0, 0.015, 0.03], dtype=torch.float64)
    r = sharpening_vs_init(model, init, n_boot=300, seed=0)
    assert r["sharpening_minus_init"]["estimate"] == pytest.approx(0.03) and r["sharpens_beyond_init"] is True
    assert r["sharpening_minus_init"]["p_one_sided"] == pytest.approx(1 / 301)
