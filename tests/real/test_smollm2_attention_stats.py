"""The real tier: streaming attention statistics on SmolLM2-135M (Llama, 9 query / 3 KV heads, trained weights).

A left-padded batch of real prompts: the streaming entropy and final-row entropy from q/k captured during the
model's own SDPA forward equal the entropy of the eager pattern at three depths to 1e-5.
"""

from __future__ import annotations

import pytest
import torch

from geoprobe.attention_stats import attention_stats
from geoprobe.infotheory import entropy_bits

pytestmark = pytest.mark.real

LAYERS = [0, 14, 29]


@pytest.fixture(scope="module")
def smol_torch(smollm2_torch):
    return smollm2_torch


def test_streaming_entropy_equals_eager_on_smollm2(smol_torch):
    h = smol_torch
    toks, mask = h.tokenize(["The capital of France is", "def fibonacci(n):\n    return",
                             "Natalia sold clips to 48 of her friends in April"], padding_side="left")
    eager = h.run(toks, mask, sites=["pattern"], layers=LAYERS)
    sdpa = h.run(toks, mask, sites=["rot_q", "rot_k"], layers=LAYERS)
    real = mask.bool()
    b = torch.arange(toks.shape[0])
    fi = eager.final_index
    for layer in LAYERS:
        want = entropy_bits(eager["pattern", layer])
        st = attention_stats(sdpa["rot_q", layer], sdpa["rot_k", layer], scale=h.info.attn_scale, attention_mask=mask,
                             block_size=4)
        err = (st.entropy_bits - want).abs().permute(0, 2, 1)[real].max().item()
        assert err < 1e-5, f"layer {layer}: entropy off by {err:.2e}"
        fin = attention_stats(sdpa["rot_q", layer], sdpa["rot_k", layer], scale=h.info.attn_scale, attention_mask=mask,
                              queries="final")
        assert (fin.entropy_bits[:, :, 0] - want[b, :, fi]).abs().max().item() < 1e-5
        assert float(want[b, :, fi].std()) > 0.1  # trained heads differ: not a uniform-attention artefact


def test_scan_measurement_pass_equals_eager_pattern_on_smollm2(smol_torch):
    """The scan's measurement pass on real math prompts (length buckets, SDPA, final-row entropies from
    post-rotary q/k) against the eager pattern path (one padded block): every layer's per-head final-row
    entropy to 1e-5 bits, and the focusing number they give."""
    from dataclasses import replace

    from geoprobe.probes.attention_focusing import focusing_percent
    from geoprobe.probes.contract import PROBES, ProbeState
    from geoprobe.probes.suite import collect_needs
    from geoprobe.probes.suites import load_suite
    from geoprobe.probes.targets import llm_target
    from geoprobe.scan.pools import build_pool

    texts = [c.text for c in build_pool("math", 12, seed=0)]
    t = llm_target(smol_torch, prompts=texts, batch_size=4, final_entropy=[0.0] * len(texts))
    opts = load_suite("paper3-llm").options
    got = {}
    for path, bucket in (("qk", True), ("pattern", False)):
        state = ProbeState(target=t, options=replace(opts, attention_path=path))
        needs = PROBES.get("attention_focusing").needs(state)
        got[path] = next(iter(collect_needs(state, needs, bucket=bucket).values()))
    assert smol_torch.attention_implementation == "sdpa"  # the pattern run switched to eager and back
    for layer in range(30):
        torch.testing.assert_close(got["qk"][layer], got["pattern"][layer], atol=1e-5, rtol=0)
    h = {p: torch.stack([got[p][layer].mean(-1) for layer in (0, 29)], 1).double().mean(0) for p in got}
    assert float(focusing_percent(h["qk"][0], h["qk"][1])) == pytest.approx(
        float(focusing_percent(h["pattern"][0], h["pattern"][1])), abs=1e-4)


def test_whole_probe_suite_fast_path_equals_eager_path_on_smollm2(smol_torch):
    """Every number of the paper3-llm suite (values and CIs, three depths) on real math prompts: the fast path
    (SDPA forward, statistics from post-rotary q/k, length buckets) against the eager-pattern path (the same
    model switched to eager attention, one padded block) to 1e-5 (focusing, a percentage, to 1e-4)."""
    import math
    from dataclasses import replace

    import pandas as pd

    from geoprobe.probes.suite import run_probes
    from geoprobe.probes.suites import load_suite
    from geoprobe.probes.targets import llm_target
    from geoprobe.scan.pools import build_pool

    suite = load_suite("paper3-llm")
    # 12 prompts: with fewer, near-equal principal components of the final values let float rounding (SDPA vs
    # eager differ in the 7th digit) swap two prompts' ranks in the value manifold's rank correlation
    texts = [c.text for c in build_pool("math", 12, seed=0)]
    reports = {}
    for path, bucket in (("qk", True), ("pattern", False)):
        t = llm_target(smol_torch, prompts=texts, batch_size=4, final_entropy=[0.1 * i for i in range(len(texts))])
        t.bucket = bucket
        opts = replace(suite.options, n_boot=20, attention_path=path, layers=tuple(LAYERS))
        reports[path] = run_probes(t, list(suite.probes), opts, suite=suite)
    assert smol_torch.attention_implementation == "sdpa"

    def rows(rep):
        def key(x):
            return None if pd.isna(x) else x

        return {(r.probe, r.statistic, r.variant, key(r.layer), key(r.head), key(r.position)):
                tuple(float("nan") if pd.isna(v) else float(v) for v in (r.value, r.ci_low, r.ci_high))
                for r in rep.rows.itertuples()}

    a, b = rows(reports["qk"]), rows(reports["pattern"])
    assert a.keys() == b.keys() and len(a) > 50
    assert any(k[0] == "attention_focusing" for k in a) and any(k[0] == "qk_alignment" for k in a)
    for k in a:
        for x, y in zip(a[k], b[k], strict=True):
            if math.isnan(y):
                assert math.isnan(x), k
            else:
                tol = 1e-4 if k[1] == "focusing_percent" else 1e-5
                assert x == pytest.approx(y, abs=tol, rel=1e-5), k
