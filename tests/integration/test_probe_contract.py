"""The probe contract: one shared forward pass, results identical to the pre-refactor engine, a probe added
from outside the package, TransformerLens hook names on rows, and no import cycles."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import geoprobe as gp
from geoprobe.probes.suite import run_probes
from geoprobe.probes.targets import llm_target, tunnel_target

OBSERVATIONAL = ["key_orthogonality", "qk_alignment", "attention_focusing", "value_manifold"]
OPTS = gp.ProbeOptions(n_boot=50, max_samples=400)
GOLDEN = Path(__file__).parent / "data" / "probe_rows_pre_refactor.json"
PROMPTS = [" ".join(f"w{3 + (i * 7 + j * 5) % 40}" for j in range(4 + i % 9)) for i in range(24)]


def _count_forwards(handle) -> list[int]:
    calls = [0]
    inner = handle._forward

    def counted(*a, **kw):
        calls[0] += 1
        return inner(*a, **kw)

    handle._forward = counted
    return calls


@pytest.fixture
def one_thread():
    """The golden rows were recorded with one intra-op thread; float32 reductions (PCA, covariances) depend on
    the thread count in the last bits, so the comparison at rel 1e-6 runs with one thread too."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def llama_target(tiny_model_dirs):
    return llm_target(str(tiny_model_dirs["llama"]), prompts=PROMPTS, device="cpu", batch_size=8)


def test_four_observational_probes_share_one_forward_pass_per_batch(llama_target):
    calls = _count_forwards(llama_target.handle)
    try:
        report = run_probes(llama_target, OBSERVATIONAL, OPTS)
    finally:
        del llama_target.handle._forward
    n_batches = math.ceil(len(PROMPTS) / 8)
    assert n_batches == 3
    # one shared pass per batch (the pre-refactor engine ran 5 per batch, 15), plus one per batch of focusing's
    # shuffled-context control (the same model on other inputs; the initial-model null runs on its own handle)
    assert calls[0] == 2 * n_batches
    assert set(report.summary) >= set(OBSERVATIONAL)


#: statistics added after the golden rows were recorded (null calibration, issue 13): allowed as extra rows
#: (entropy_axis rows with variant "<op>/controls" summarise the matched random controls)
NEW_STATISTICS = {"rho_pc1_entropy_perm_p", "best_pc_abs_rho_entropy", "last_minus_first_layer",
                  "output_entropy_corr_downstream", "spearman_rho_pc1_position",
                  "partial_rho_pc1_entropy_given_position", "within_position_rho_pc1_entropy",
                  "focusing_minus_null", "bypass_ratio_vs_matched_kick"}
KEY = ("probe", "layer", "head", "position", "statistic", "variant")


def _key(row):
    return tuple(None if row[c] is None or (not isinstance(row[c], str) and row[c] != row[c]) else row[c]
                 for c in KEY)


def _compare(rows, golden):
    """Every golden row is still produced, in the same order and with the same numbers; rows beyond them may
    only carry the statistics added since (NEW_STATISTICS)."""
    by_key = {}
    for i, r in enumerate(rows):
        by_key.setdefault(_key(r), []).append(i)
    matched, last = set(), -1
    for want in golden:
        idx = [i for i in by_key.get(_key(want), []) if i not in matched]
        assert idx, ("golden row missing", want)
        i = idx[0]
        assert i > last, ("golden row out of order", want)
        matched.add(i)
        last = i
        got = rows[i]
        for c in ("value", "ci_low", "ci_high"):
            g, w = got[c], want[c]
            g_nan = g is None or (isinstance(g, float) and math.isnan(g))
            w_nan = w is None or (isinstance(w, float) and math.isnan(w))
            assert g_nan == w_nan, (c, got, want)
            if not g_nan:
                assert g == pytest.approx(w, rel=1e-6, abs=1e-9), (c, got, want)
    extra = {rows[i]["statistic"] for i in range(len(rows))
             if i not in matched and not str(rows[i]["variant"]).endswith("/controls")}
    assert extra <= NEW_STATISTICS, extra - NEW_STATISTICS
    return len(rows) - len(matched)


def _records(report):
    df = report.rows.astype(object).where(report.rows.notna(), None)
    return df.to_dict("records")


def test_llm_rows_equal_the_pre_refactor_engine(llama_target, one_thread):
    """Golden rows were recorded by the engine before the contract (five passes per batch) on this fixed tiny
    model, prompts and seed: the one-pass engine must give every number again."""
    report = run_probes(llama_target, OBSERVATIONAL, OPTS)
    _compare(_records(report), json.loads(GOLDEN.read_text())["llm"])


def test_tunnel_rows_equal_the_pre_refactor_engine(tunnel_run_dir, one_thread):
    target = tunnel_target(tunnel_run_dir, n=48, device="cpu", batch_size=16)
    report = run_probes(target, [*OBSERVATIONAL, "ablation", "entropy_axis"], OPTS)
    _compare(_records(report), json.loads(GOLDEN.read_text())["tunnel"])


def test_a_probe_registered_from_a_test_file_runs_in_the_shared_pass(llama_target):
    """A new probe is one object: mean norm of the final-token residual stream per layer (known answer: the
    same norms from a plain handle.run)."""

    def run(state, acts):
        v = acts.get("resid_post", "final")
        rows = [gp.ResultRow("toy_norm", "mean_norm", float(x.norm(dim=-1).mean()), layer=layer)
                for layer, x in sorted(v.items())]
        return gp.ProbeOutput(rows, {"n_layers": len(rows)})

    gp.register_probe(gp.Probe(name="toy_norm", run=run, needs_attention=False,
                               needs=lambda s: [gp.Need("resid_post", s.all_layers, "final")]), replace=True)
    try:
        calls = _count_forwards(llama_target.handle)
        try:
            report = run_probes(llama_target, ["toy_norm", "value_manifold"], OPTS)
        finally:
            del llama_target.handle._forward
        assert calls[0] == 3  # the toy probe joined the shared pass
        t = llama_target
        ref = t.handle.run(t.tokens, t.attention_mask, sites=["resid_post"], positions="final")
        df = report.rows[report.rows.probe == "toy_norm"]
        for layer in (0, 1):
            want = float(ref["resid_post", layer].norm(dim=-1).mean())
            assert float(df[df.layer == layer]["value"].iloc[0]) == pytest.approx(want, rel=1e-6)
        assert report.summary["toy_norm"]["n_layers"] == 2
        assert report.rows[report.rows.probe == "toy_norm"].shape[0] == 2
        with pytest.raises(gp.GeoprobeError, match="'toy_norm' is already registered"):
            gp.register_probe(gp.Probe(name="toy_norm", run=run))
    finally:
        gp.PROBES.unregister("toy_norm")
    with pytest.raises(gp.GeoprobeError, match="unknown probe 'toy_norm'"):
        run_probes(llama_target, ["toy_norm"], OPTS)


def test_rows_carry_transformer_lens_hook_names(llama_target):
    report = run_probes(llama_target, ["key_orthogonality", "value_manifold"], OPTS)
    df = report.rows
    assert "hook" in df.columns
    ko = df[(df.probe == "key_orthogonality") & (df.variant == "runtime-keys") & df["layer"].notna()]
    assert set(ko["hook"]) == {"blocks.0.attn.hook_rot_k", "blocks.1.attn.hook_rot_k"}
    w = df[(df.probe == "key_orthogonality") & (df.variant == "weights") & (df.layer == 1)]
    assert set(w["hook"]) == {"blocks.1.attn.hook_k"}
    vm = df[df.probe == "value_manifold"]
    assert set(vm["hook"]) == {"blocks.1.attn.hook_v"}


def test_unknown_or_misdeclared_needs_fail_clearly(llama_target):
    with pytest.raises(gp.GeoprobeError, match="custom positions need a reduce function"):
        gp.Need("resid_post", (0,), "middle")
    state = gp.ProbeState(target=llama_target, options=OPTS)
    clash = [gp.Need("resid_post", (0,), "middle", reduce=lambda a: a.value[:, 1]),
             gp.Need("resid_post", (1,), "middle", reduce=lambda a: a.value[:, 2])]
    with pytest.raises(gp.GeoprobeError, match="different functions under one name 'middle'"):
        gp.collect_needs(state, clash)
    mid = gp.collect_needs(state, clash[:1]).get("resid_post", "middle")  # a custom reduction, known answer
    ref = llama_target.handle.run(llama_target.tokens, llama_target.attention_mask, sites=["resid_post"], layers=[0])
    assert torch.equal(mid[0], ref["resid_post", 0][:, 1])

    def run(state, acts):
        acts.get("z", "final")
        return gp.ProbeOutput()

    gp.register_probe(gp.Probe(name="toy_undeclared", run=run), replace=True)
    try:
        with pytest.raises(gp.GeoprobeError, match="z/final was not collected"):
            run_probes(llama_target, ["toy_undeclared"], OPTS)
    finally:
        gp.PROBES.unregister("toy_undeclared")


def test_backends_and_models_do_not_import_probes():
    import re

    root = Path(gp.__file__).parent
    imports_probes = re.compile(r"^\s*(from|import)\s+geoprobe\.probes", re.M)
    files = [p for sub in ("backends", "models", "tasks") for p in (root / sub).rglob("*.py")]
    files += [root / n for n in ("tensor_ops.py", "calibration.py", "infotheory.py", "stats.py")]
    offenders = [str(p.relative_to(root)) for p in files if imports_probes.search(p.read_text())]
    assert offenders == []
    code = ("import sys, geoprobe.backends, geoprobe.models; "
            "print(sorted(m for m in sys.modules if m.startswith('geoprobe.probes')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_import_geoprobe_is_lazy_and_flat():
    code = ("import sys, geoprobe as gp; heavy = [m for m in ('torch', 'transformers', 'geoprobe.probes.suite') "
            "if m in sys.modules]; print(heavy, sorted(set(gp.__all__) - set(dir(gp))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[] []"
    for name in ("load_model", "run_probes", "Probe", "register_probe", "make_task", "load_run", "train_tunnel",
                 "load_suite", "ProbeOptions", "Report"):
        assert callable(getattr(gp, name)), name
    assert gp.run_probes is run_probes
    assert torch.is_tensor(torch.zeros(1))
