"""Verdicts that can fail: permutation p-values for |rho|, tested flags, null-calibrated key orthogonality,
scale-free frame-precision dissociation, variance-matched entropy-axis controls (issue 13, items 2-6)."""

import math

import pytest
import torch

from geoprobe.probes.dynamics import dissociation_summary, frame_precision_table, settling_dissociation
from geoprobe.probes.entropy_axis import (
    control_distribution,
    matched_control_lambda,
    orthogonal_control,
    projection_sigma,
)
from geoprobe.probes.key_orthogonality import key_orthogonality_rows, null_calibrated_layers
from geoprobe.probes.qk_alignment import sharpening_summary
from geoprobe.stats import (
    abs_rho_permutation,
    empirical_p,
    paired_difference_test,
    settling_step,
    spearman_rho,
)
from geoprobe.tensor_ops import cut


def _binomial_ci(p: float, n: int, z: float = 3.0) -> tuple[float, float]:
    half = z * math.sqrt(p * (1 - p) / n)
    return p - half, p + half


# ----------------------------------------------------------------------------------- item 4: |rho| has a null


def test_abs_rho_under_no_relation_is_about_0_09_at_n75_and_p_is_uniform():
    """The sign rule makes |rho| the statistic: its null mean at n = 75 is ~0.09, not 0; over 200 pure-noise
    seeds the fraction with p < 0.05 is within a binomial CI of 0.05, for PC1 and for the best-of-k test."""
    hits1 = hits_best = naive_best = 0
    means = []
    n_seeds = 200
    for seed in range(n_seeds):
        g = torch.Generator().manual_seed(seed)
        scores, y = torch.randn(75, 10, generator=g), torch.randn(75, generator=g)
        r = abs_rho_permutation(scores, y, n_perm=199, seed=seed)
        means.append(r.null_mean_abs_rho)
        hits1 += r.p_each[0] < 0.05
        hits_best += r.p_best < 0.05
        naive_best += min(r.p_each) < 0.05  # picking the best PC without paying for it
    assert sum(means) / n_seeds == pytest.approx(math.sqrt(2 / (math.pi * 74)), abs=0.01)  # ~0.093
    lo, hi = _binomial_ci(0.05, n_seeds)
    assert lo <= hits1 / n_seeds <= hi
    assert lo <= hits_best / n_seeds <= hi
    assert naive_best / n_seeds > 0.2  # ~40% for k = 10: why the best PC needs the max-statistic correction


def test_planted_relation_gives_small_p_and_finds_the_right_component():
    g = torch.Generator().manual_seed(1)
    scores = torch.randn(75, 8, generator=g, dtype=torch.float64)
    y = -scores[:, 3] + 0.6 * torch.randn(75, generator=g, dtype=torch.float64)  # negative: sign must not matter
    r = abs_rho_permutation(scores, y, n_perm=500, seed=0)
    assert r.best == 3 and r.p_best < 0.01 and r.p_each[3] < 0.01
    assert r.abs_rho[3] == pytest.approx(abs(float(spearman_rho(scores[:, 3], y))), abs=1e-12)
    assert r.p_each[3] == pytest.approx(1 / 501)  # no permutation reaches it


def test_value_manifold_reports_perm_p_and_best_pc():
    from geoprobe.probes.value_manifold import value_manifold, value_manifold_rows

    g = torch.Generator().manual_seed(2)
    n, d = 75, 20
    x = torch.randn(n, d, generator=g, dtype=torch.float64) * torch.linspace(3, 1, d, dtype=torch.float64)
    h = x[:, -1] * 0  # entropy tied to a small-variance direction: a late PC, not PC1
    z = torch.randn(n, generator=g, dtype=torch.float64)
    x[:, -1] = z * 0.2
    h = z + 0.1 * torch.randn(n, generator=g, dtype=torch.float64)
    res = value_manifold(x, h, n_boot=200, null_draws=0)
    rp = res.rho_perm
    assert rp is not None and rp.abs_rho[0] == pytest.approx(res.rho.estimate, abs=1e-12)
    assert rp.best != 0 and rp.p_best < 0.01 and rp.p_each[0] > 0.01
    rows = {r.statistic: r for r in value_manifold_rows(res)}
    assert rows["best_pc_abs_rho_entropy"].meta["pc"] == rp.best + 1
    assert rows["rho_pc1_entropy_perm_p"].value == rp.p_each[0]


# ----------------------------------------------------------------------------- item 3: flags come from tests


def test_sharpens_with_depth_is_false_for_untrained_noise_but_true_for_planted_growth():
    """An untrained model's layer differences of +-0.002 (CI containing 0) made the old flag True whenever the
    last mean happened to exceed the first; the tested flag says False."""
    g = torch.Generator().manual_seed(0)
    found = False
    for seed in range(20):
        g.manual_seed(seed)
        delta = 0.002 * torch.randn(40, 4, generator=g, dtype=torch.float64)
        s = sharpening_summary(delta, n_boot=500, seed=0)
        if s["sharpens_with_depth_naive"]:  # the old `d[-1] > d[0]`
            found = True
            assert s["sharpens_with_depth"] is False
            lo, hi = s["sharpening_test"]["ci"]
            assert lo < 0 < hi
    assert found
    planted = delta + torch.tensor([0.0, 0.01, 0.02, 0.03], dtype=torch.float64)
    s = sharpening_summary(planted, n_boot=500, seed=0)
    assert s["sharpens_with_depth"] is True and s["sharpening_test"]["p_one_sided"] < 0.01


def test_paired_difference_test_known_answers():
    t = paired_difference_test(torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0]), n_boot=999, seed=0)
    assert t.estimate == 3.0 and t.significant and t.p_greater == pytest.approx(1 / 1000, abs=0.04)
    # symmetric differences: the exact sign-flip null puts the observed mean at its centre
    t = paired_difference_test(torch.tensor([-1.0, 1.0, -2.0, 2.0]), n_boot=999, seed=0)
    assert t.estimate == 0.0 and not t.significant and t.p_greater > 0.4
    assert empirical_p(3.0, torch.tensor([1.0, 2.0, 3.0, 4.0])) == pytest.approx(3 / 5)


# ------------------------------------------------------------------- item 2: key criterion against its nulls


def _heads_rows(W_K, W_init):
    return key_orthogonality_rows([W_K], "weights", init_by_layer=[W_init])


def test_paper_key_criterion_is_vacuous_for_random_weights_and_the_null_calibrated_one_is_not():
    """A random Gaussian W_K (d_model = 576, the SmolLM2 width) scores ~0.033 < 0.20: the paper's criterion
    passes for it. The null-calibrated criterion (CI over heads below random and below init) does not."""
    g = torch.Generator().manual_seed(0)
    W = torch.randn(576, 9, 64, generator=g)
    W0 = torch.randn(576, 9, 64, generator=g)
    rows = _heads_rows(W, W0)
    layer_mean = next(r.value for r in rows if r.head is None)
    assert layer_mean < 0.20  # the paper's rule passes a random model
    nc = null_calibrated_layers(rows, "weights", 1, n_boot=500)
    assert nc["random"][0] == pytest.approx(math.sqrt(2 / (math.pi * 576)))
    assert nc["below_null"] == [False] and nc["null_used"] == "random and init"
    assert nc["ci"][0][0] < nc["random"][0] * 1.01  # the random model sits on its own baseline


def test_planted_orthogonal_keys_pass_the_null_calibrated_criterion():
    g = torch.Generator().manual_seed(1)
    q, _ = torch.linalg.qr(torch.randn(128, 128, generator=g))
    W = q[:, :96].reshape(128, 3, 32)  # every head's columns exactly orthonormal: |cos| = 0
    W0 = torch.randn(128, 3, 32, generator=g)
    nc = null_calibrated_layers(_heads_rows(W, W0), "weights", 1, n_boot=200)
    assert nc["below_null"] == [True] and nc["ci"][0][1] < 1e-6
    # correlated keys (shared component) are worse than random: they fail
    Wc = W + 0.5 * torch.randn(128, 1, 1, generator=g)
    assert null_calibrated_layers(_heads_rows(Wc, W0), "weights", 1, n_boot=200)["below_null"] == [False]


def test_initialised_handle_is_the_same_config_with_fresh_seeded_weights(tiny_handle):
    from transformers import AutoModelForCausalLM

    from geoprobe.probes.key_orthogonality import initialised_handle

    h = tiny_handle("llama", "torch")
    before = torch.random.get_rng_state()
    a, b = initialised_handle(h, seed=3), initialised_handle(h, seed=3)
    assert torch.equal(torch.random.get_rng_state(), before)  # global RNG untouched
    wa, wb, wt = (x.attention_weights(0).W_K for x in (a, b, h))
    assert torch.equal(wa, wb) and not torch.allclose(wa, wt)
    torch.manual_seed(3)
    ref = AutoModelForCausalLM.from_config(h.hf_model.config)
    k = ref.model.layers[0].self_attn.k_proj.weight  # [n_kv * d_head, d_model]
    info = h.info
    assert torch.allclose(wa, k.T.reshape(info.d_model, info.n_kv_heads, info.d_head), atol=0)


# ------------------------------------------------------------------------ item 6: scale-free dissociation


STEPS = [0, 50, 122, 200, 301, 400, 600, 1000]


def _seq(curve, n=30, noise=0.01, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = torch.tensor(curve, dtype=torch.float64)
    return c.unsqueeze(0) * (1 + noise * torch.randn(n, len(curve), generator=g, dtype=torch.float64))


def test_proportional_decay_is_no_dissociation_although_the_legacy_threshold_calls_one():
    """JS and MAE falling together (the same fraction of their step-0 values at every checkpoint) settle at the
    same step: ratio 1, no dissociation. The legacy 0.05-bit threshold still reports a large MAE factor."""
    frac = [1.0, 0.8, 0.53, 0.3, 0.11, 0.05, 0.02, 0.0]
    js = [0.6 * f for f in frac]
    mae = [0.01 + 0.4 * f for f in frac]
    d = settling_dissociation(STEPS, _seq(js), _seq(mae, seed=1), n_boot=300, seed=0)
    assert d["frame_settling_step"] == d["precision_settling_step"] == 400
    assert d["settling_ratio"] == 1.0 and d["dissociation"] is False
    legacy = dissociation_summary(frame_precision_table(STEPS, mae=mae, rho=[0.0] * 8).assign(attn_js_bits=js))
    assert legacy.mae_improvement_factor > 2  # what the old criterion counted as "frame before precision"


def test_planted_early_frame_late_precision_is_a_dissociation():
    js = [0.6, 0.05, 0.01, 0.005, 0.003, 0.002, 0.001, 0.0]  # 90% of its change done by step 50
    mae = [0.5, 0.48, 0.45, 0.40, 0.30, 0.20, 0.08, 0.01]  # settles only at the end
    d = settling_dissociation(STEPS, _seq(js), _seq(mae, seed=1), n_boot=300, seed=0)
    assert d["frame_settling_step"] == 50 and d["precision_settling_step"] == 1000
    assert d["settling_ratio"] == pytest.approx(20.0)
    assert d["dissociation"] is True and d["index_difference_ci"][0] > 0 and d["p_not_earlier"] == 0.0
    # and the reverse order (precision first) is not called a dissociation
    r = settling_dissociation(STEPS, _seq(mae), _seq(js, seed=1), n_boot=300, seed=0)
    assert r["dissociation"] is False and r["settling_ratio"] == pytest.approx(1 / 20)


def test_settling_step_is_scale_free():
    v = [10.0, 6.0, 2.0, 0.9, 0.5, 0.0]
    s = [0, 1, 2, 3, 4, 5]
    assert settling_step(s, v, 0.1) == 3  # |0.9| <= 1.0 from step 3 on
    assert settling_step(s, [x * 1e-3 + 7 for x in v], 0.1) == 3  # scale and offset do not matter
    assert settling_step(s, [3.0, 2.0, 1.1, 1.5, 1.05, 1.0], 0.1) == 4  # must stay settled
    assert settling_step(s, [1.0] * 6) is None


# --------------------------------------------------------------- item 5: variance-matched entropy-axis controls


def test_matched_cut_displaces_as_much_variance_as_cutting_the_axis():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(500, 40, generator=g, dtype=torch.float64) * torch.linspace(6, 1, 40, dtype=torch.float64)
    u = torch.zeros(40, dtype=torch.float64)
    u[0] = 1.0  # the high-variance axis
    r = orthogonal_control(u, seed=5)
    assert abs(float(r @ u)) < 1e-12
    lam = matched_control_lambda(z, u, r)
    axis_disp = (z - cut(z, u)).norm(dim=1)
    ctl_disp = (z - cut(z, r, lam)).norm(dim=1)
    unmatched = (z - cut(z, r)).norm(dim=1)
    assert float(ctl_disp.pow(2).mean()) == pytest.approx(float(axis_disp.pow(2).mean()), rel=0.02)
    assert float(unmatched.pow(2).mean()) < float(axis_disp.pow(2).mean()) / 3  # the old control was far weaker
    assert projection_sigma(z, u) / projection_sigma(z, r) == pytest.approx(lam)


def test_control_distribution_places_the_axis_effect():
    d = control_distribution(1.0, 1.5, [1.0 + 0.01 * i for i in range(-10, 10)])
    assert d["axis_change"] == 0.5 and d["p_empirical"] == pytest.approx(1 / 21) and d["n_controls"] == 20
    assert d["control_change_q05"] < 0 < d["control_change_q95"]
    inside = control_distribution(1.0, 1.0, [1.0 + 0.01 * i for i in range(-10, 10)])
    assert inside["p_empirical"] == 1.0


def test_entropy_axis_on_a_tunnel_reads_downstream_and_reports_the_control_distribution(tunnel_run_dir):
    """Cutting the axis at the layer where the correlation is read fixes it by construction (the projection
    becomes constant): such rows are marked not downstream; the downstream output-entropy correlation and the
    distribution over variance-matched controls are reported."""
    import geoprobe as gp
    from geoprobe.probes.suite import run_probes
    from geoprobe.probes.targets import tunnel_target

    target = tunnel_target(tunnel_run_dir, n=16, device="cpu", batch_size=16)
    report = run_probes(target, ["value_manifold", "entropy_axis"],
                        gp.ProbeOptions(n_boot=20, max_samples=150, n_controls=4))
    df = report.rows[report.rows["probe"] == "entropy_axis"]
    last = target.handle.info.n_layers - 1
    at_last = df[(df["statistic"] == "axis_entropy_corr_last_layer") & (df["variant"] == "cut/axis")
                 & (df["layer"] == last)].iloc[0]
    assert at_last["meta"]["downstream"] is False
    first = df[(df["statistic"] == "axis_entropy_corr_last_layer") & (df["variant"] == "cut/axis")
               & (df["layer"] == 0)].iloc[0]
    assert first["meta"]["downstream"] is (last > 0)
    ctl = df[(df["variant"] == "cut/controls") & (df["statistic"] == "output_entropy_corr_downstream")]
    assert len(ctl) == last + 1 + (1 if last > 0 else 0)
    for _, r in ctl.iterrows():
        m = r["meta"]
        assert m["n_controls"] == 4 and 1 / 5 <= m["p_empirical"] <= 1.0
        assert r["ci_low"] <= r["value"] <= r["ci_high"]
    s = report.summary["entropy_axis"]
    assert s["n_controls"] == 4 and set(s["cut_vs_controls"]) >= {s["metric"], "output_entropy_corr_downstream"}
    base = s["baseline"]["output_entropy_corr_downstream"]
    assert -1.0 <= base <= 1.0


def test_summary_table_says_when_a_criterion_is_vacuous():
    from geoprobe.probes.suites import load_suite
    from geoprobe.report_text import summary_table

    summary = {
        "value_manifold": {"pc1_share": 0.25, "pc12_share": 0.35, "isotropic_null_pc1": 0.04,
                           "isotropic_null_pc12": 0.07, "isotropic_null_pc1_q95": 0.045,
                           "isotropic_null_pc12_q95": 0.08, "rho_pc1_perm_p": 0.3, "init_pc1_share": None, "init_pc12_share": None,
                           "pc1_above_null": True, "pc12_above_null": False},
        "key_orthogonality": {"weights_layer_mean_abs_cos": [0.10, 0.30, 0.15, 0.25],
                              "weights_layer_random_baseline": [0.05] * 4, "weights_layer_init": None,
                              "weights_layer_below_null": [False] * 4},
        "attention_focusing": {"focusing_percent": 31.0, "init_focusing_percent": 0.2,
                               "shuffled_focusing_percent": 30.5, "focusing_minus_null_ci_low": -0.4},
    }
    summary["verdict"] = load_suite("paper3-llm").verdict(summary)
    lines = summary_table(summary).splitlines()
    assert lines[1] == ("vacuous: key orthogonality also passes for the null model(s) random under the same rule, "
                        "so it cannot tell this model from them")
    # the shuffled control focuses 30.5%: the paper's > 30% cannot tell the model from it either
    assert lines[2] == ("vacuous: attention focusing also passes for the null model(s) shuffled under the same "
                        "rule, so it cannot tell this model from them")
    assert lines[3].startswith("null-calibrated: 1 of 4 (value_manifold (vs isotropic null and initial weights) passes, ")
    assert "attention_focusing (vs initial weights and shuffled prompts) fails" in lines[3]


def test_value_manifold_reports_the_initial_model_under_the_same_code(tiny_model_dirs):
    """Known answer: the model given as its own initial model has |rho| - |rho_init| = 0 exactly (never
    'above init'); with no initial model given, a language model is compared with fresh weights of its config."""
    import geoprobe as gp
    from geoprobe.probes.suite import run_probes
    from geoprobe.probes.targets import llm_target

    prompts = [" ".join(f"w{3 + (i * 7 + j * 5) % 40}" for j in range(4 + i % 9)) for i in range(24)]
    t = llm_target(str(tiny_model_dirs["llama"]), prompts=prompts, device="cpu", batch_size=8, backend="torch")
    opts = gp.ProbeOptions(n_boot=50)
    own = run_probes(t, ["value_manifold"], opts, init_handle=t.handle).summary["value_manifold"]
    assert own["init_pc1_share"] == pytest.approx(own["pc1_share"], rel=1e-9)
    assert own["rho_minus_init"] == pytest.approx(0.0, abs=1e-12) and own["rho_above_init"] is False
    fresh = run_probes(t, ["value_manifold", "key_orthogonality"], opts).summary
    vm, ko = fresh["value_manifold"], fresh["key_orthogonality"]
    assert vm["init_pc1_share"] != pytest.approx(vm["pc1_share"], rel=1e-6)
    assert ko["init_model"].startswith("same config, fresh weights") and ko["weights_layer_init"] is not None


@pytest.mark.parametrize("extra,needle", [
    ('null = { init = ["a", "b"] }', "null 'init' names 2 statistic(s) for 1"),
    ('role = "advisory"', "role 'advisory'; valid choices: verdict, calibrated"),
    ('null = "x"', "null must be a table"),
])
def test_bad_null_declarations_fail_with_one_clear_line(extra, needle):
    import tomllib

    from geoprobe.errors import ConfigError
    from geoprobe.probes.suites import parse_suite

    text = f'[[criteria]]\nprobe = "value_manifold"\nstatistic = "pc1_share"\nop = ">"\nthreshold = 0.3\n{extra}\n'
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        parse_suite(tomllib.loads(text))


def test_key_thresholds_compare_elementwise():
    from geoprobe.probes.suites import Criterion

    c = Criterion("k", "key_orthogonality", ("v",), "<", "base", min_fraction=0.5, null={"init": ("v0",)})
    out = c.evaluate({"key_orthogonality": {"v": [0.1, 0.5, 0.2], "base": [0.2, 0.2, 0.1], "v0": [0.3, 0.3, 0.3]}})
    assert out["observed"] == {"v": {"fraction_passing": pytest.approx(1 / 3)}} and out["passed"] is False
    assert out["nulls"]["init"]["passed"] is False and out["vacuous"] is False
