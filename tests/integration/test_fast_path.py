"""The fast measurement path: the paper3-llm suite from captured q/k on the model's own SDPA forward, in
length-bucketed batches, gives the eager-pattern path's numbers; out-of-memory back-off in the measurement pass;
accelerate device maps on CPU; bfloat16 weights with float32 statistics."""

import math
import sys
from dataclasses import replace

import pandas as pd
import pytest
import torch

from geoprobe.backends import load_model
from geoprobe.backends.batches import length_batches
from geoprobe.errors import ConfigError
from geoprobe.probes.contract import PROBES, ProbeState
from geoprobe.probes.suite import collect_needs, run_probes
from geoprobe.probes.suites import load_suite
from geoprobe.probes.targets import llm_target
from geoprobe.scan import driver

#: 2..14 words, no two alike in their last tokens (Mistral's window 4 over 2 layers sees the last 7: equal
#: endings would tie the reference entropies, and float rounding would break the ties of the rank correlation)
PROMPTS = [" ".join(f"w{3 + (i * 7 + j * 5 + i * j) % 44}" for j in range(2 + (i * 5) % 13)) for i in range(20)]
SUITE = load_suite("paper3-llm")


def _opts(path: str):
    return replace(SUITE.options, n_boot=40, attention_path=path, layers=(0, 1))


def _rows(report):
    def num(x):
        return None if pd.isna(x) else x

    return {(r.probe, r.statistic, r.variant, num(r.layer), num(r.head), num(r.position)):
            tuple(float("nan") if pd.isna(v) else float(v) for v in (r.value, r.ci_low, r.ci_high))
            for r in report.rows.itertuples()}


def _no_eager(handle, monkeypatch):
    """Fail if the run switches the model to eager attention or asks for the pattern."""
    def refuse(*a, **k):
        raise AssertionError("the fast path switched the model to eager attention")

    monkeypatch.setattr(handle.hf_model, "set_attn_implementation", refuse)
    inner = handle._forward

    def forward(tokens, mask, plan, emit, edits):
        assert "pattern" not in plan.sites
        return inner(tokens, mask, plan, emit, edits)

    monkeypatch.setattr(handle, "_forward", forward)


@pytest.mark.parametrize("family", ["neox", "phi", "llama", "mistral"])
def test_paper3_suite_fast_path_equals_eager_pattern_path(tiny_model_dirs, family, monkeypatch):
    """Every number of the paper3-llm suite (values and CIs) on the fast path (torch hooks, SDPA, statistics
    from post-rotary q/k, length buckets) equals the eager path (TransformerBridge, eager pattern, one padded
    block) to 1e-5, for GPT-NeoX and Phi (partial rotary), Llama (GQA) and Mistral (GQA + sliding window 4 <
    prompt lengths), with left padding."""
    fast_t = llm_target(str(tiny_model_dirs[family]), prompts=PROMPTS, device="cpu", backend="torch",
                        batch_size=6)
    assert fast_t.handle.attention_implementation == "sdpa"
    assert int(fast_t.attention_mask.sum(1).min()) < int(fast_t.attention_mask.sum(1).max())  # real padding
    _no_eager(fast_t.handle, monkeypatch)
    fast = run_probes(fast_t, list(SUITE.probes), _opts("qk"), suite=SUITE)
    eager_t = llm_target(str(tiny_model_dirs[family]), prompts=PROMPTS, device="cpu", backend="transformer_lens",
                         batch_size=6)
    eager_t.bucket = False
    eager = run_probes(eager_t, list(SUITE.probes), _opts("pattern"), suite=SUITE)
    a, b = _rows(fast), _rows(eager)
    assert a.keys() == b.keys() and len(a) > 50
    assert any(k[0] == "attention_focusing" and k[1] == "focusing_percent" for k in a)
    for key in a:
        for x, y in zip(a[key], b[key], strict=True):
            if math.isnan(y):
                assert math.isnan(x), key
            else:
                # focusing is 100 (H_first - H_last) / H_first: entropies agree to 1e-6 bits, so focusing to
                # 100 * 1e-6 / H_first percentage points (H_first ~ 2 bits here)
                tol = 1e-4 if key[1] == "focusing_percent" else 1e-5
                assert x == pytest.approx(y, abs=tol, rel=1e-5), key
    assert fast.manifest["backend"] == "torch" and eager.manifest["backend"] == "transformer_lens"


def test_length_buckets_sort_rows_and_trim_padding():
    mask = torch.zeros(5, 8, dtype=torch.long)
    for i, n in enumerate([3, 8, 1, 3, 5]):
        mask[i, 8 - n:] = 1  # left padding
    got = length_batches(mask, 2)
    assert [b.rows.tolist() for b in got] == [[2, 0], [3, 4], [1]]  # by length, ties in input order
    assert [(b.cols.start, b.cols.stop) for b in got] == [(5, 8), (3, 8), (0, 8)]
    plain = length_batches(mask, 2, bucket=False)
    assert [b.rows.tolist() for b in plain] == [[0, 1], [2, 3], [4]]
    assert all((b.cols.start, b.cols.stop) == (0, 8) for b in plain)


def test_bucketed_collection_equals_unbucketed(tiny_model_dirs):
    """Every activation the suite collects (final values, keys, queries, final-row entropies, the per-key
    cosine maps padded back to the input length) is the same in input order with and without length buckets
    (1e-6), and bucketing really runs fewer padded columns."""
    t = llm_target(str(tiny_model_dirs["llama"]), prompts=PROMPTS, device="cpu", backend="torch", batch_size=4)
    state = ProbeState(target=t, options=_opts("qk"))
    needs = [n for name in SUITE.probes for n in PROBES.get(name).needs(state)]
    widths = []
    inner = t.handle._forward

    def forward(tokens, mask, plan, emit, edits):
        widths.append(tokens.shape[0] * tokens.shape[1])
        return inner(tokens, mask, plan, emit, edits)

    t.handle._forward = forward
    try:
        on = collect_needs(state, needs, bucket=True)
        cells_on = sum(widths)
        widths.clear()
        off = collect_needs(state, needs, bucket=False)
        cells_off = sum(widths)
    finally:
        del t.handle._forward
    assert cells_on < 0.8 * cells_off
    assert set(on) == set(off) and ("rot_q", "final_key_cosines") in set(on)
    for key in on:
        for layer in on[key]:
            x, y = on[key][layer], off[key][layer]
            assert x.shape == y.shape, key
            torch.testing.assert_close(x, y, atol=1e-6, rtol=1e-6, equal_nan=True, check_dtype=False)


def test_measurement_pass_backs_off_on_out_of_memory(tiny_model_dirs, tiny_handle):
    """--batch-size auto in the probe pass itself: forwards that capture q/k on more than 4 rows raise an
    out-of-memory error; the pass halves 64 -> 4, records each halving, and gives the numbers of batch size 4."""
    h = load_model(tiny_model_dirs["llama"], backend="torch", device="cpu")
    texts = PROMPTS[:15]
    opts = driver.ScanOptions(n_boot=30, batch_size="auto")
    sizer = driver.BatchSizer("auto")
    inner = h._forward

    def forward(tokens, mask, plan, emit, edits):
        if "rot_q" in plan.sites and tokens.shape[0] > 4:
            raise RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate 123456789 bytes")
        return inner(tokens, mask, plan, emit, edits)

    h._forward = forward
    ent = [float(i) / 7 for i in range(len(texts))]
    rep = driver._probe_stage(h, "mixed", texts, opts, sizer, driver.Stages(None), entropies=ent)
    assert sizer.size == 4 and [x["failed_at"] for x in sizer.history] == [64, 32, 16, 8]
    assert {x["stage"] for x in sizer.history} == {"probes-mixed"}
    del h._forward
    ref = driver._probe_stage(h, "mixed", texts, opts, driver.BatchSizer(4), driver.Stages(None), entropies=ent)
    a, b = _rows(rep), _rows(ref)
    assert a.keys() == b.keys()
    for k in a:
        for x, y in zip(a[k], b[k], strict=True):
            assert (x != x and y != y) or x == pytest.approx(y, abs=1e-6), k


def test_device_map_auto_on_cpu_only(tiny_model_dirs, tiny_handle):
    """accelerate's device_map="auto" with no GPU puts every module on the CPU; activations equal the plain
    load; the scan records the map; the bridge backend and a missing accelerate are one-line errors."""
    h = load_model(tiny_model_dirs["llama"], backend="torch", device="cpu", device_map="auto")
    ref = tiny_handle("llama", "torch")
    assert h.device_map["requested"] == "auto" and h.device_map["devices"] == ["cpu"]
    assert {str(p.device) for p in h.hf_model.parameters()} == {"cpu"}
    ids = torch.tensor([[2, 5, 9, 11, 4]])
    a = h.run(ids, sites=["rot_k", "v"], layers=[1])
    b = ref.run(ids, sites=["rot_k", "v"], layers=[1])
    for k in (("rot_k", 1), ("v", 1)):
        torch.testing.assert_close(a[k], b[k])
    with pytest.raises(ConfigError, match="applies to the torch and nnsight backends"):
        load_model(tiny_model_dirs["llama"], backend="transformer_lens", device="cpu", device_map="auto")
    with pytest.raises(ConfigError, match="unknown device map 'everywhere'; valid choices: auto"):
        load_model(tiny_model_dirs["llama"], backend="torch", device="cpu", device_map="everywhere")


def test_device_map_without_accelerate_is_one_line(tiny_model_dirs, monkeypatch):
    monkeypatch.setitem(sys.modules, "accelerate", None)  # import accelerate -> ImportError
    with pytest.raises(ConfigError) as e:
        load_model(tiny_model_dirs["llama"], backend="torch", device="cpu", device_map="auto")
    assert str(e.value) == "--device-map needs the accelerate package: pip install 'accelerate>=0.26'"


def test_bfloat16_weights_give_float32_statistics(tiny_model_dirs, tiny_handle):
    """bf16 weights on CPU: every collected statistic is float32, and the final-row attention entropies and
    final values are within bf16 rounding of the float32 model's; float16 on CPU is refused in one line."""
    h16 = load_model(tiny_model_dirs["llama"], backend="torch", device="cpu", dtype="bfloat16")
    assert next(h16.hf_model.parameters()).dtype == torch.bfloat16
    out = {}
    for name, h in (("bf16", h16), ("f32", tiny_handle("llama", "torch"))):
        t = llm_target(h, prompts=PROMPTS, batch_size=8)
        state = ProbeState(target=t, options=_opts("qk"))
        needs = [n for p in ("attention_focusing", "value_manifold") for n in PROBES.get(p).needs(state)]
        out[name] = collect_needs(state, needs)
        assert t.final_entropy.dtype == torch.float32
    for key in out["f32"]:
        for layer, ref in out["f32"][key].items():
            got = out["bf16"][key][layer]
            assert got.dtype == torch.float32, key
            scale = float(ref.abs().max())
            assert float((got - ref).abs().max()) <= 0.03 * scale, key  # bf16: 8 mantissa bits
            assert not torch.equal(got, ref)  # the weights really were bf16
    with pytest.raises(ConfigError, match="float16 is not supported on CPU; use --dtype bfloat16 or float32"):
        load_model(tiny_model_dirs["llama"], backend="torch", device="cpu", dtype="float16")


def test_torch_backend_skips_the_unembedding_when_no_logits_are_read(tiny_handle):
    h = tiny_handle("llama", "torch")
    calls = []
    hook = h.hf_model.lm_head.register_forward_hook(lambda m, a, o: calls.append(o.shape))
    try:
        acts = h.run(torch.tensor([[2, 5, 9, 11]]), sites=["v"], layers=[-1])
        assert calls == [] and acts["v", 1].shape == (1, 4, 2, 8)
        h.run(torch.tensor([[2, 5, 9, 11]]), sites=["logits"], positions="final")
        assert calls == [(1, 1, 48)]  # final rows only
    finally:
        hook.remove()


def test_scan_chooses_the_fast_backend_and_records_how_it_ran(tiny_model_dirs, monkeypatch):
    """With no --backend the scan runs on torch hooks (SDPA kept: switching to eager fails the test), its probe
    passes never compute logits, and manifest and summary record backend, attention kernel, dtypes and the
    device map."""
    from conftest import word_pool
    from transformers import PreTrainedModel

    from geoprobe.backends.torch_hooks import HFTorchHandle

    monkeypatch.setattr(driver, "build_pool", word_pool)

    def refuse(*a, **k):
        raise AssertionError("the scan switched the model to eager attention")

    monkeypatch.setattr(PreTrainedModel, "set_attn_implementation", refuse)
    plans = []
    inner = HFTorchHandle._forward

    def forward(self, tokens, mask, plan, emit, edits):
        plans.append(list(plan.sites))
        return inner(self, tokens, mask, plan, emit, edits)

    monkeypatch.setattr(HFTorchHandle, "_forward", forward)
    res = driver.run_scan(tiny_model_dirs["llama"], domain=None, n=10, pool_size=40, sula=False, n_boot=20,
                          device="cpu", device_map="auto", causal=False)
    ex = res.report.summary["execution"]
    assert ex["backend"] == "torch" and ex["attention_implementation"] == "sdpa"
    assert "q/k" in ex["backend_choice"] and ex["weights_dtype"] == "float32" and ex["statistics_dtype"] == "float32"
    assert ex["device_map"]["requested"] == "auto" and ex["device_map"]["devices"] == ["cpu"]
    assert res.report.manifest["execution"] == ex and res.report.manifest["backend"] == "torch"
    assert not any("pattern" in p for p in plans)
    # 10 prompts in one batch of 16: the measurement pass is ONE forward; then the nulls, each one forward on q/k or
    # values only: ONE on the initial-weights model for focusing's and the value manifold's nulls together, one on
    # the shuffled context
    assert [p for p in plans if "logits" not in p] == [["rot_k", "rot_q", "v"], ["rot_q", "v", "rot_k"],
                                                       ["rot_q", "rot_k"]]
    assert sum("logits" in p for p in plans) == 3  # selection: 40 candidates in batches of 16


def test_scan_cli_device_map_on_the_bridge_is_one_line(tiny_model_dirs, tmp_path, capsys):
    from geoprobe.cli import main

    out = tmp_path / "scan"
    assert main(["scan", str(tiny_model_dirs["llama"]), "--backend", "transformer_lens", "--device-map", "auto",
                 "--out", str(out), "--no-sula", "--quiet", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == ("geoprobe: error: --device-map applies to the torch and nnsight backends "
                       "(TransformerBridge boots the model on one device); pass --backend torch")
    assert not out.exists()


def test_probe_cli_batch_size_auto_backs_off_and_records_it(tiny_model_dirs, tmp_path, monkeypatch, capsys):
    """``geoprobe probe --batch-size auto``: a capture forward of more than 4 rows runs out of memory; the probe
    pass halves 64 -> 4 and the manifest records the halvings; the numbers equal a run at --batch-size 4."""
    import json

    from geoprobe.backends.torch_hooks import HFTorchHandle
    from geoprobe.cli import main

    prompts = tmp_path / "p.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    inner = HFTorchHandle._forward

    def forward(self, tokens, mask, plan, emit, edits):
        if "rot_q" in plan.sites and tokens.shape[0] > 4:
            raise RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate 987654321 bytes")
        return inner(self, tokens, mask, plan, emit, edits)

    monkeypatch.setattr(HFTorchHandle, "_forward", forward)
    base = ["probe", str(tiny_model_dirs["llama"]), "--backend", "torch", "--device", "cpu", "--prompts",
            str(prompts), "--probes", "attention_focusing", "qk_alignment", "--n-boot", "20", "--quiet"]
    assert main([*base, "--batch-size", "auto", "--out", str(tmp_path / "auto")]) == 0
    assert main([*base, "--batch-size", "4", "--out", str(tmp_path / "four")]) == 0
    capsys.readouterr()
    man = json.loads((tmp_path / "auto" / "summary.json").read_text())["manifest"]
    assert man["batch_size"]["requested"] == "auto" and man["batch_size"]["final"] == 4
    assert [(h["stage"], h["failed_at"]) for h in man["batch_size"]["halvings"]] == [
        ("probes", 64), ("probes", 32), ("probes", 16), ("probes", 8)]
    assert man["attention_implementation"] == "sdpa"
    a = json.loads((tmp_path / "auto" / "summary.json").read_text())["summary"]
    b = json.loads((tmp_path / "four" / "summary.json").read_text())["summary"]
    assert a["attention_focusing"]["focusing_percent"] == pytest.approx(b["attention_focusing"]["focusing_percent"],
                                                                          abs=1e-6)
    assert a["qk_alignment"]["consistent_minus_eliminated_by_layer"] == b["qk_alignment"][
        "consistent_minus_eliminated_by_layer"]
    assert a["attention_focusing"]["ci"] == pytest.approx(b["attention_focusing"]["ci"], abs=1e-6)
