"""The nulls measured on the model at initialisation share ONE streaming pass over it
(:func:`geoprobe.probes.suite.init_collected`): the initial model runs one forward per batch, and every null
number equals what the separate passes the probes ran before gave (recomputed here with that code path:
focusing's ``_entropies_of`` on the initial target, the manifold's ``values_at_samples``, qk_alignment's
``collect`` of the final queries)."""

import math
from dataclasses import replace

import pytest
import torch
from conftest import build_tiny_model
from test_probe_contract import PROMPTS, _count_forwards

import geoprobe as gp
from geoprobe.probes import attention_focusing as af
from geoprobe.probes import key_orthogonality as ko
from geoprobe.probes import qk_alignment as qa
from geoprobe.probes.common import collect, select_final, values_at_samples
from geoprobe.probes.contract import ProbeState
from geoprobe.probes.suite import run_probes
from geoprobe.probes.targets import llm_target, tunnel_target
from geoprobe.probes.value_manifold import value_manifold

OPTS = gp.ProbeOptions(n_boot=60, max_samples=300)
BS = 8


def _old_focusing_null(state, t0):
    """The init null as the probe computed it before: a collect_needs pass of its own on the initial target."""
    e_model = af._entropies_of(state, state.target)
    return af.null_summary(e_model, {"init": (af._entropies_of(state, t0), "x")}, n_boot=OPTS.n_boot,
                           seed=OPTS.seed)


def _old_manifold_null(t, t0, layer, site, positions):
    """init PC1 / PC1+PC2 shares and |rho| as before: values_at_samples (its own pass) on the initial target,
    against the trained model's reference entropies."""
    _, ent, _ = values_at_samples(t, [layer], OPTS, site=site)
    vals0, _, _ = values_at_samples(t0, [layer], OPTS, site=site)
    position = None
    if positions == "all_positions":
        position = ProbeState(target=t, options=OPTS).samples[1]
    res0 = value_manifold(vals0[layer], ent, site=OPTS.manifold_site, positions=positions, n_boot=OPTS.n_boot,
                          seed=OPTS.seed, null_draws=0, position=position)
    return res0.pc1.estimate, res0.pc12.estimate, abs(res0.rho.estimate)


@pytest.mark.parametrize("bucket", [True, False])
def test_llm_nulls_share_one_initial_model_pass_with_the_same_numbers(tiny_model_dirs, monkeypatch, bucket):
    t = llm_target(str(tiny_model_dirs["llama"]), prompts=PROMPTS, device="cpu", batch_size=BS)
    t.bucket = bucket
    lens = t.attention_mask.sum(1)
    assert int(lens.min()) < int(lens.max())  # with bucket, length buckets really reorder and trim the rows
    made, calls = [], []
    real = ko.initialised_handle

    def counted_init(handle, seed=0):
        h0 = real(handle, seed=seed)
        made.append(h0)
        calls.append(_count_forwards(h0))
        return h0

    monkeypatch.setattr(ko, "initialised_handle", counted_init)
    rep = run_probes(t, ["key_orthogonality", "qk_alignment", "attention_focusing", "value_manifold"], OPTS,
                     suite="paper3-llm")
    n_batches = math.ceil(len(PROMPTS) / BS)
    assert n_batches == 3 and len(made) == 1  # one initial model for the whole run ...
    assert calls[0][0] == n_batches  # ... and ONE forward per batch on it (the separate passes ran 2 per batch)
    assert rep.manifest["forward_passes"]["initial_model"] == ("one streaming pass per batch for the nulls of "
                                                                "attention_focusing, value_manifold")

    h0 = real(t.handle, seed=OPTS.seed)  # the same seeded weights, built again for the old code path
    state = ProbeState(target=t, options=OPTS)
    t0 = replace(t, handle=h0)
    old = _old_focusing_null(state, t0)
    s = rep.summary["attention_focusing"]
    for k in ("init_focusing_percent", "init_focusing_ci", "init_focusing_ci_low", "focusing_minus_init"):
        assert s[k] == old[k], k  # exact: same inputs, same batches, same reduction
    assert math.isfinite(s["init_focusing_percent"])
    layer = t.handle.info.n_layers - 1
    pc1, pc12, rho = _old_manifold_null(t, t0, layer, "v", "final")
    v = rep.summary["value_manifold"]
    got = (v["init_pc1_share"], v["init_pc12_share"], v["init_abs_rho_pc1_entropy"])
    if bucket:
        # the manifold's old pass of its own ran unbucketed (full padding); in the shared pass its initial values
        # come from the same length buckets as the trained values, so kernels see shorter sequences: float32
        # rounding only (3e-10 relative here; bit-identical on SmolLM2 with its built-in prompts)
        assert got == pytest.approx((pc1, pc12, rho), rel=1e-6, abs=1e-9)
    else:
        assert got == (pc1, pc12, rho)  # the same batches: bit for bit
    assert 0 < pc1 < pc12 <= 1


def test_tunnel_nulls_share_one_initial_model_pass_with_the_same_numbers(tunnel_run_dir, tmp_path):
    from geoprobe.backends import load_model

    t = tunnel_target(tunnel_run_dir, n=48, device="cpu", batch_size=16)
    # another draw of the run's architecture (seed 1; the run's model is seed 0)
    init = load_model(build_tiny_model("gpt2", tmp_path / "init", seed=1), backend="torch", device="cpu")
    calls = _count_forwards(init)
    rep = run_probes(t, ["qk_alignment", "attention_focusing", "value_manifold"], OPTS, init_handle=init,
                     suite="paper1-tunnels")
    assert calls[0] == math.ceil(48 / 16)  # the three probes' nulls: one pass (they ran one each before)
    assert rep.manifest["forward_passes"]["initial_model"].endswith("qk_alignment, attention_focusing, value_manifold")
    del init._forward

    state = ProbeState(target=t, options=OPTS)
    t0 = replace(t, handle=init)
    old = _old_focusing_null(state, t0)
    s = rep.summary["attention_focusing"]
    for k in ("init_focusing_percent", "init_focusing_ci", "focusing_minus_init"):
        assert s[k] == old[k], k
    layer = max(range(t.handle.info.n_layers))
    pc1, pc12, rho = _old_manifold_null(t, t0, layer, "v", "all_positions")
    v = rep.summary["value_manifold"]
    assert (v["init_pc1_share"], v["init_pc12_share"], v["init_abs_rho_pc1_entropy"]) == (pc1, pc12, rho)
    layers = list(range(init.info.n_layers))
    qf = collect(t0, "rot_q", layers, select_final)  # qk_alignment's old pass of its own
    delta0, _ = qa.hypothesis_delta(t0, init, torch.stack([qf[x] for x in layers], 1))
    s0 = qa.sharpening_summary(delta0, n_boot=OPTS.n_boot, seed=OPTS.seed)
    q = rep.summary["qk_alignment"]
    assert q["init_sharpening_test"] == s0["sharpening_test"]
    assert q["init_sharpens_with_depth"] == s0["sharpens_with_depth"]


@pytest.mark.parametrize("probe", ["attention_focusing", "value_manifold"])
def test_a_probe_run_alone_still_gets_its_initial_model_null(tiny_model_dirs, probe):
    """A probe called outside a run that lists it (state.probes empty) still gets its init null: init_collected
    adds the asking probe's needs."""
    t = llm_target(str(tiny_model_dirs["llama"]), prompts=PROMPTS[:10], device="cpu", batch_size=BS)
    st = ProbeState(target=t, options=OPTS)
    p = gp.PROBES.get(probe)
    from geoprobe.probes.suite import collect_needs

    out = p.run(st, collect_needs(st, p.needs(st)))
    key = "init_focusing_percent" if probe == "attention_focusing" else "init_pc1_share"
    assert out.summary[key] is not None and math.isfinite(out.summary[key])
