"""Measure what random models score on every suite criterion and flag, and write ``docs/criteria.md``.

    python benchmarks/criteria_nulls.py                  # all cases (SmolLM2 cases when its GGUF is present)
    python benchmarks/criteria_nulls.py --no-smollm2     # tiny models only (about a minute on 2 cores)
    python benchmarks/criteria_nulls.py --out docs/criteria.md

Cases (every one a model that has learnt nothing, except the last, shown for contrast):

- ``tunnel-step0``: the bijection wind tunnel at the ``smoke`` preset, its step-0 checkpoint (untrained), under
  ``paper1-tunnels``; its model at initialisation (the ``init`` null) is the step-0 checkpoint of the same
  preset with another seed (a second random draw of the same architecture). ``dynamics`` (frame before
  precision) needs a training trajectory: it is measured over the checkpoints of that smoke run (40 steps,
  which leave the entropy MAE at ~0.5 bits, i.e. a run that has learnt almost nothing);
- ``tiny-llama``, ``tiny-neox``: the tiny random Llama / GPT-NeoX of the test suite (``tests/conftest.py``), on
  24 word prompts, under ``paper3-llm``;
- ``smollm2-init``: SmolLM2-135M's config with fresh seeded weights, on the first 40 built-in prompts;
- ``smollm2``: the trained SmolLM2-135M (Q4_1 GGUF) on the same prompts.

Every number in the tables is measured by this script with the probes' own code (``n_boot`` = 200, seed 0);
``tests/unit/test_criteria_doc.py`` re-measures the ``tiny-llama`` column and checks it against the file.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from geoprobe.report_text import format_value

ROOT = Path(__file__).resolve().parents[1]
SMOLLM2 = ROOT.parent / "shared" / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
N_BOOT = 200
WORD_PROMPTS = [" ".join(f"w{3 + (i * 7 + j * 5) % 40}" for j in range(4 + i % 9)) for i in range(24)]
LLM_PROBES = ["key_orthogonality", "qk_alignment", "attention_focusing", "value_manifold"]
TUNNEL_PROBES = ["key_orthogonality", "qk_alignment", "attention_focusing", "value_manifold", "ablation",
                 "entropy_axis"]

#: case name -> (suite, column title)
CASES = {
    "tunnel-step0": ("paper1-tunnels", "bijection tunnel, smoke preset, step 0 (untrained)"),
    "tiny-llama": ("paper3-llm", "tiny random Llama"),
    "tiny-neox": ("paper3-llm", "tiny random GPT-NeoX"),
    "smollm2-init": ("paper3-llm", "SmolLM2-135M config, fresh weights"),
    "smollm2": ("paper3-llm", "SmolLM2-135M trained (contrast)"),
}

#: what each case is (printed under the tables)
CASE_NOTES = {
    "tunnel-step0": "the bijection wind tunnel (V=6, L=5) at the smoke preset, its step-0 checkpoint, on 64 test "
                    "sequences; its `init` null is the step-0 checkpoint of seed 1. `dynamics` needs a trajectory: "
                    "it is measured over the checkpoints of the seed-0 smoke run itself (40 steps, entropy MAE "
                    "still ~0.5 bits), a run that has learnt almost nothing",
    "tiny-llama": "the test suite's tiny random Llama (2 layers, d_model 32, GQA) on 24 word prompts",
    "tiny-neox": "the test suite's tiny random GPT-NeoX (2 layers, d_model 64) on 24 word prompts",
    "smollm2-init": "SmolLM2-135M's config with fresh weights (seed 1; the probes' own init null is seed 0) on the "
                    "first 40 built-in prompts",
    "smollm2": "the trained SmolLM2-135M-Instruct (Q4_1 GGUF) on the same 40 built-in prompts (not the scan's "
               "entropy-stratified 75, so its numbers differ from a scan's)",
}

#: what each null name in a suite's ``null = {...}`` table is (text for the docs)
NULL_NAMES = {
    "random": "random Gaussian W_K (E|cos| in the compared dimension)",
    "init": "the same architecture at initialisation (LLMs: same config, fresh seeded weights; tunnels: step 0)",
    "isotropic": "isotropic Gaussian data of the same n and D",
    "permutation": "entropies permuted (same sign rule)",
    "shuffled": "the model on its prompts with the context shuffled (first and final token kept)",
    "matched_kick": "a random kick of the bypass's size at each layer (median of n_controls draws)",
}

#: flags (yes/no summary keys that are not criteria themselves): probe -> [(key, how it is decided)]
FLAGS = {
    "key_orthogonality": [("layer0_below_null", "layer-0 CI over heads below random AND init")],
    "qk_alignment": [("sharpens_with_depth", "bootstrap CI of last - first layer above 0 (paired over prompts)"),
                     ("sharpens_with_depth_naive", "legacy bare comparison (kept to show it)")],
    "attention_focusing": [
        ("focusing_above_null", "paired CI of focusing - null's above 0 for every null"),
        ("monotone_decrease", "every consecutive layer drop has a paired CI above 0"),
        ("monotone_decrease_naive", "legacy bare comparison of layer means")],
    "value_manifold": [
        ("pc1_above_isotropic_q95", "PC1 share above the isotropic null's q95 (a weak null: random networks pass)"),
        ("pc1_above_null", "above the isotropic q95 AND paired CI of share - init share above 0"),
        ("pc12_above_null", "the same for PC1+PC2"),
        ("entropy_determined_by_position", "the reference entropy is constant at every position (rho confounded)"),
        ("rho_pc1_significant", "permutation p of |rho(PC1, H)| < 0.05 (sign rule included)"),
        ("best_pc_significant", "max-statistic permutation p of the best PC < 0.05"),
        ("rho_above_init", "bootstrap CI of |rho| - |rho at init| above 0")],
    "ablation": [
        ("layer0_heads_matter_most", "layer-0 heads' mean effect vs random head sets of the same size, p < 0.05"),
        ("every_layer_beats_null", "every layer's bypass beats all-but-5% of matched random kicks")],
    "dynamics": [("dissociation", "bootstrap CI of (MAE - frame settling index) above 0")],
}


# ----------------------------------------------------------------------------------------------- measuring


def _conftest() -> Any:
    spec = importlib.util.spec_from_file_location("_geoprobe_test_conftest", ROOT / "tests" / "conftest.py")
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(mod)
    return mod


def _options() -> Any:
    import geoprobe as gp

    return gp.ProbeOptions(n_boot=N_BOOT, seed=0, max_samples=400, n_controls=20)


def measure_tiny(family: str, workdir: Path) -> dict[str, Any]:
    """The suite summary of the tiny random ``family`` model (the test suite's builder) on the word prompts."""
    from geoprobe.probes.suite import run_probes
    from geoprobe.probes.targets import llm_target

    folder = workdir / f"tiny-{family}"
    if not folder.exists():
        _conftest().build_tiny_model(family, folder)
    t = llm_target(str(folder), prompts=WORD_PROMPTS, device="cpu", batch_size=8, backend="torch")
    return run_probes(t, LLM_PROBES, _options(), suite="paper3-llm").summary


def _train_smoke(out: Path, seed: int, steps: int | None = None) -> Path:
    """A bijection run at the smoke preset (``steps``: the preset's when None); returns its step-0 checkpoint."""
    if not (out / "manifest.json").exists():
        subprocess.run([sys.executable, "-m", "geoprobe", "tunnel", "train", "bijection", "--preset", "smoke",
                        *(["--steps", str(steps)] if steps else []), "--out", str(out), "--seed", str(seed),
                        "--device", "cpu", "--quiet"], check=True, capture_output=True)
    return out / "checkpoints" / "step_0000000"


def measure_tunnel(workdir: Path) -> dict[str, Any]:
    """``paper1-tunnels`` (dynamics excluded: it needs a training run) on the untrained step-0 checkpoint."""
    from geoprobe.backends import load_model
    from geoprobe.probes.suite import run_probes
    from geoprobe.probes.targets import tunnel_target

    step0 = _train_smoke(workdir / "smoke-seed0", 0)
    other = _train_smoke(workdir / "smoke-seed1", 1, steps=2)
    t = tunnel_target(step0, n=64, device="cpu", batch_size=64, backend="torch")
    init = load_model(other, backend="torch", device="cpu")
    summary = run_probes(t, TUNNEL_PROBES, _options(), init_handle=init, suite="paper1-tunnels").summary
    run = tunnel_target(workdir / "smoke-seed0", n=64, device="cpu", batch_size=64, backend="torch")
    summary["dynamics"] = run_probes(run, ["dynamics"], _options(), suite="paper1-tunnels").summary["dynamics"]
    return summary


def measure_smollm2(fresh: bool) -> dict[str, Any]:
    """SmolLM2 (``fresh``: its config with fresh seeded weights) on the first 40 built-in prompts."""
    from geoprobe.backends import load_model
    from geoprobe.probes.key_orthogonality import initialised_handle
    from geoprobe.probes.suite import run_probes
    from geoprobe.probes.targets import llm_target

    h = load_model(SMOLLM2, backend="torch", device="cpu")
    if fresh:
        h = initialised_handle(h, seed=1)  # seed 1: the probes' own init null uses seed 0
    t = llm_target(h, n=40, device="cpu", batch_size=16)
    return run_probes(t, LLM_PROBES, _options(), suite="paper3-llm").summary


def measure(case: str, workdir: Path) -> dict[str, Any]:
    if case == "tunnel-step0":
        return measure_tunnel(workdir)
    if case.startswith("tiny-"):
        return measure_tiny(case.split("-", 1)[1], workdir)
    return measure_smollm2(fresh=case == "smollm2-init")


# ----------------------------------------------------------------------------------------------- rendering


def criterion_cell(c: Any, summary: Mapping[str, Any]) -> str:
    """``observed -> pass/FAIL`` (+ which nulls pass the same rule) of criterion ``c`` on a run's summary."""
    if c.probe not in summary:
        return "not run"
    r = c.evaluate(summary)
    obs = "; ".join(format_value(v, cells=True) for v in r["observed"].values())
    nulls = [f"{k} {'passes' if v['passed'] else 'fails'}" for k, v in r["nulls"].items() if v["passed"] is not None]
    return f"{obs} → {'pass' if r['passed'] else 'FAIL'}" + (f" (nulls: {', '.join(nulls)})" if nulls else "")


def _rule(c: Any) -> str:
    thr = c.threshold if isinstance(c.threshold, tuple) else (c.threshold,) * len(c.statistic)
    parts = [f"`{s}` {c.op} {format_value(t, cells=True) if not isinstance(t, str) else '`' + t + '`'}"
             for s, t in zip(c.statistic, thr, strict=True)]
    text = (" or " if c.combine == "any" else " and ").join(parts)
    return text + (f" in ≥ {c.min_fraction:.0%} of elements" if c.min_fraction < 1 else "")


def _against(c: Any) -> str:
    if c.null:
        return "; ".join(f"{k}: {NULL_NAMES.get(k, k)}" for k in c.null)
    if c.role == "calibrated":
        return "built into the statistic (see the rule)"
    return "none"


def criteria_rows(suite_name: str, cases: Mapping[str, Mapping[str, Any]]) -> list[list[str]]:
    """One row per criterion of ``suite_name``: name, role, probe, rule, nulls, then one cell per case."""
    from geoprobe.probes.suites import load_suite

    su = load_suite(suite_name)
    return [[c.name, c.role, c.probe, _rule(c), _against(c)] + [criterion_cell(c, s) for s in cases.values()]
            for c in su.criteria]


def flag_rows(cases: Mapping[str, Mapping[str, Any]]) -> list[list[str]]:
    """One row per flag: probe, key, how it is decided, then one cell per case."""
    rows = []
    for probe, flags in FLAGS.items():
        for key, how in flags:
            cells = [format_value(s[probe].get(key), cells=True) if probe in s else "not run" for s in cases.values()]
            rows.append([probe, f"`{key}`", how, *cells])
    return rows


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    esc = [[cell.replace("|", "\\|") for cell in r] for r in rows]
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in esc]


def render(results: Mapping[str, Mapping[str, Any]], timings: Mapping[str, float] | None = None) -> str:
    """The markdown of ``docs/criteria.md`` from ``{case: summary}``."""
    lines = [
        "# Criteria, their nulls, and what a random model scores",
        "",
        "Generated by `python benchmarks/criteria_nulls.py` (do not edit by hand; "
        "`tests/unit/test_criteria_doc.py` re-measures the tiny-llama column and fails when this file is stale).",
        "",
        "Every pass criterion of the built-in suites (`probes/*.toml`) is listed with the rule the suite applies, the",
        "null models it is calibrated against, and what models that learnt nothing actually get under the same code",
        f"(`n_boot` = {N_BOOT}, seed 0). A cell reads `observed → pass/FAIL`; `(nulls: ...)` says whether each null",
        "model passes the same rule: a criterion that a null passes is reported as **vacuous** in every verdict.",
        "Criteria with role `verdict` give the paper's label; `calibrated` ones are reported beside it.",
        "A random model should FAIL every calibrated criterion; where it passes a `verdict` criterion, that",
        "criterion cannot tell a trained model from an untrained one by itself.",
        "",
    ]
    by_suite: dict[str, dict[str, Mapping[str, Any]]] = {}
    for case, summary in results.items():
        by_suite.setdefault(CASES[case][0], {})[case] = summary
    for suite, cases in by_suite.items():
        lines += [f"## Suite `{suite}`", ""]
        header = ["criterion", "role", "probe", "rule", "calibrated against"] + [
            f"{CASES[c][1]} [`{c}`]" for c in cases]
        lines += _table(header, criteria_rows(suite, cases)) + [""]
    lines += ["## Flags", "",
              "Yes/no summary keys that are not criteria by themselves; each is decided by a CI or a test (the",
              "`*_naive` ones are the old bare comparisons, kept only to show what they said).", ""]
    lines += _table(["probe", "flag", "decided by"] + [f"`{c}`" for c in results], flag_rows(results)) + [""]
    lines += ["## Cases", ""] + [f"- `{c}`: {CASE_NOTES[c]}." for c in results] + [""]
    if timings:
        lines += ["Measured in " + ", ".join(f"{c} {t:.0f} s" for c, t in timings.items()) + " on 2 CPU cores.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "docs" / "criteria.md"))
    ap.add_argument("--no-smollm2", action="store_true", help="skip the SmolLM2 cases")
    ap.add_argument("--workdir", default=None, help="where tiny models and smoke runs are built (default: a temp dir)")
    args = ap.parse_args(argv)
    cases = [c for c in CASES if not (c.startswith("smollm2") and (args.no_smollm2 or not SMOLLM2.is_file()))]
    results, timings = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        for case in cases:
            t0 = time.perf_counter()
            results[case] = measure(case, work)
            timings[case] = time.perf_counter() - t0
            print(f"{case}: {timings[case]:.1f} s", flush=True)
        if args.workdir:  # the raw summaries, for reading the numbers behind the tables
            from geoprobe.io import write_json

            write_json(work / "summaries.json", results)
    Path(args.out).write_text(render(results, timings), encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
