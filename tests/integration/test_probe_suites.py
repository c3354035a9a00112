"""Probe suites as data: the built-in TOML files, verdicts whose thresholds come from the file, the CLI."""

import json
from pathlib import Path

import pytest

import geoprobe as gp
from geoprobe.cli import main
from geoprobe.probes.suites import BUILTIN_SUITES, builtin_suite_path, load_suite

REPO = Path(__file__).resolve().parents[2]

#: a fixed run summary: PC1+PC2 35%, weights orthogonality below 0.20 in 2 of 4 layers, focusing 31%; with
#: the nulls: isotropic data 4%/7% (q95 4.5%/8%), random and initial weights 0.05 in every layer, rho p = 0.3,
#: focusing 0.5% at initialisation and 12% on shuffled prompts (paired CI of the excess from 4 points up)
SUMMARY = {
    "value_manifold": {"pc1_share": 0.25, "pc12_share": 0.35, "isotropic_null_pc1": 0.04,
                       "isotropic_null_pc12": 0.07, "isotropic_null_pc1_q95": 0.045, "isotropic_null_pc12_q95": 0.08,
                       "rho_pc1_perm_p": 0.3, "init_pc1_share": None, "init_pc12_share": None,
                       "pc1_above_null": True, "pc12_above_null": True},
    "key_orthogonality": {"weights_layer_mean_abs_cos": [0.10, 0.30, 0.15, 0.25],
                          "weights_layer_random_baseline": [0.05] * 4, "weights_layer_init": [0.05] * 4,
                          "weights_layer_below_null": [False] * 4},
    "attention_focusing": {"focusing_percent": 31.0, "init_focusing_percent": 0.5, "shuffled_focusing_percent": 12.0,
                           "focusing_minus_null_ci_low": 4.0},
}


def test_builtin_suites_are_the_top_level_files():
    for name in BUILTIN_SUITES:
        assert builtin_suite_path(name).read_text() == (REPO / "probes" / f"{name}.toml").read_text()
        suite = load_suite(name)
        assert suite.name == name and suite.criteria
    p3 = load_suite("paper3-llm")
    paper = [c for c in p3.criteria if c.role == "verdict"]
    assert [(c.probe, c.op, c.threshold) for c in paper] == [
        ("value_manifold", ">", 0.30), ("key_orthogonality", "<", 0.20), ("attention_focusing", ">", 30.0)]
    assert paper[1].min_fraction == 0.5
    # the paper's criteria carry their nulls; null-calibrated criteria are reported beside them
    assert dict(paper[1].null) == {"random": ("weights_layer_random_baseline",), "init": ("weights_layer_init",)}
    assert dict(paper[2].null) == {"init": ("init_focusing_percent",), "shuffled": ("shuffled_focusing_percent",)}
    assert [c.statistic for c in p3.criteria if c.role == "calibrated"] == [
        ("pc1_above_null", "pc12_above_null"), ("weights_layer_below_null",),
        ("focusing_percent", "focusing_minus_null_ci_low"), ("rho_pc1_perm_p",)]


def _edited(tmp_path: Path, old: str, new: str) -> Path:
    text = (REPO / "probes" / "paper3-llm.toml").read_text()
    assert text.count(old) == 1
    path = tmp_path / "edited.toml"
    path.write_text(text.replace(old, new))
    return path


def test_paper3_verdict_on_a_fixed_summary_follows_the_suite_thresholds(tmp_path):
    v = load_suite(REPO / "probes" / "paper3-llm.toml").verdict(SUMMARY)
    assert (v["criteria_passed"], v["of"], v["label"]) == (3, 3, "Bayesian geometric signatures")
    assert v["details"]["key_orthogonality"]["observed"] == {"weights_layer_mean_abs_cos": {"fraction_passing": 0.5}}
    # random Gaussian and initial weights (0.05 < 0.20 everywhere) pass the paper's key criterion too: vacuous;
    # isotropic data (4% / 7%) does not pass the 30% manifold criterion
    nulls = v["details"]["key_orthogonality"]["nulls"]
    assert nulls["random"]["passed"] is True and nulls["init"]["passed"] is True
    assert v["vacuous"] == ["key_orthogonality"] and v["details"]["value_manifold"]["vacuous"] is False
    assert v["calibrated"]["criteria_passed"] == 2 and v["calibrated"]["of"] == 4
    assert v["calibrated"]["by_criterion"] == {"value_manifold (vs isotropic null and initial weights)": True,
                                               "key_orthogonality (vs random and initial weights)": False,
                                               "attention_focusing (vs initial weights and shuffled prompts)": True,
                                               "entropy ordering (permutation test)": False}
    assert v["calibrated"]["label"] is None  # 4 calibrated criteria for 3 paper criteria: no paper label
    # neither focusing null reaches 30%: focusing is not vacuous
    assert v["details"]["attention_focusing"]["nulls"]["shuffled"]["passed"] is False
    # a missing null (no initial model) is unavailable, never vacuous on its own
    no_init = {**SUMMARY, "key_orthogonality": {**SUMMARY["key_orthogonality"], "weights_layer_init": None,
                                                "weights_layer_random_baseline": [0.5] * 4}}
    v2 = load_suite(REPO / "probes" / "paper3-llm.toml").verdict(no_init)
    assert v2["details"]["key_orthogonality"]["nulls"]["init"]["passed"] is None
    assert v2["details"]["key_orthogonality"]["nulls"]["random"]["passed"] is False and v2["vacuous"] == []
    # focusing 31% passes > 30 but not > 35: one threshold edited in the file flips the verdict to partial
    v = load_suite(_edited(tmp_path, "threshold = 30.0", "threshold = 35.0")).verdict(SUMMARY)
    assert (v["criteria_passed"], v["label"]) == (2, "partial")
    assert v["by_criterion"] == {"value_manifold": True, "key_orthogonality": True, "attention_focusing": False}
    # orthogonality < 0.12 holds in 1 of 4 layers (< 50%)
    v = load_suite(_edited(tmp_path, "threshold = 0.20", "threshold = 0.12")).verdict(SUMMARY)
    assert v["by_criterion"]["key_orthogonality"] is False and v["label"] == "partial"
    # PC1+PC2 35% fails > 0.40 and so does PC1: with two criteria failing the label is "not observed"
    path = _edited(tmp_path, "threshold = 0.30", "threshold = 0.40")
    text = path.read_text().replace("threshold = 30.0", "threshold = 35.0")
    path.write_text(text)
    v = load_suite(path).verdict(SUMMARY)
    assert (v["criteria_passed"], v["label"]) == (1, "not observed")
    # a criterion's probe missing from the summary: no verdict
    assert load_suite("paper3-llm").verdict({"value_manifold": SUMMARY["value_manifold"]}) is None


@pytest.mark.parametrize("old,new,needle", [
    ('op = ">"', 'op = "=>"', "op '=>' is not one of"),
    ('statistic = "focusing_percent"', 'statistic = "focus"', None),
    ('probes = ["key_orthogonality"', 'probes = ["key_orth"', "unknown probe 'key_orth'"),
    ("[options]", "[options]\nn_bootstrap = 3", "unknown option(s) n_bootstrap"),
])
def test_bad_suites_fail_with_one_clear_line(tmp_path, old, new, needle):
    text = (REPO / "probes" / "paper3-llm.toml").read_text().replace(old, new, 1)
    path = tmp_path / "bad.toml"
    path.write_text(text)
    if needle is None:  # parses, but the statistic does not exist in a real summary
        with pytest.raises(gp.GeoprobeError, match="reads attention_focusing.focus, which the attention_focusing"):
            load_suite(path).verdict(SUMMARY)
    else:
        with pytest.raises(gp.GeoprobeError, match=needle.replace("(", r"\(").replace(")", r"\)")):
            load_suite(path)


def test_cli_probe_with_a_suite_file(tiny_model_dirs, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(" ".join(f"w{3 + (i * 7 + j * 5) % 40}" for j in range(4 + i % 9))
                                 for i in range(30)))
    text = (REPO / "probes" / "paper3-llm.toml").read_text()
    text = text.replace("n_boot = 1000", "n_boot = 40").replace(
        "n = 75", 'n = 12\npath = "prompts.txt"').replace(
        '"key_orthogonality", "qk_alignment", "attention_focusing", "value_manifold"]',
        '"key_orthogonality", "attention_focusing", "value_manifold"]')
    suite = tmp_path / "s.toml"
    suite.write_text(text)
    out = tmp_path / "o"
    assert main(["probe", str(tiny_model_dirs["llama"]), "--suite", str(suite), "--out", str(out), "--quiet",
                 "--device", "cpu"]) == 0
    doc = json.loads((out / "summary.json").read_text())
    summary, manifest = doc["summary"], doc["manifest"]
    assert set(summary) == {"key_orthogonality", "attention_focusing", "value_manifold", "verdict"}
    assert summary["verdict"]["suite"] == "paper3-llm" and summary["verdict"]["of"] == 3
    assert manifest["n_inputs"] == 12 and manifest["options"]["n_boot"] == 40
    # the same run judged by a suite whose focusing threshold sits just above the measured value
    foc = summary["attention_focusing"]["focusing_percent"]
    strict = text.replace("threshold = 30.0", f"threshold = {foc + 1e-6!r}").replace(
        "threshold = 0.30", "threshold = -1.0")
    suite.write_text(strict)
    v = load_suite(suite).verdict(summary)
    assert v["by_criterion"]["attention_focusing"] is False and v["by_criterion"]["value_manifold"] is True
    suite.write_text(strict.replace(f"threshold = {foc + 1e-6!r}", f"threshold = {foc - 1e-6!r}"))
    assert load_suite(suite).verdict(summary)["by_criterion"]["attention_focusing"] is True
    capsys.readouterr()
    assert main(["probe", str(tiny_model_dirs["llama"]), "--suite", str(tmp_path / "nope.toml"), "--out",
                 str(tmp_path / "o2"), "--quiet", "--device", "cpu"]) == 2
    assert "does not exist" in capsys.readouterr().err
