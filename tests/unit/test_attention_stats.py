"""Streaming / flex attention statistics against an independent dense implementation written here.

The reference builds every score with explicit Python-level loops over heads (no repeat_interleave, no
shared helper), applies soft-capping, ALiBi and the visibility rule literally, softmaxes in float64 and takes
-sum p log2 p. Planted cases check known answers exactly (uniform rows: log2 of the number of visible keys).
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from geoprobe.attention_stats import attention_stats, final_query_index, flex_available
from geoprobe.errors import ConfigError, GeoprobeError

TOL = 1e-5


def dense_reference(q, k, *, scale, mask=None, window=None, softcap=None, slopes=None, key_sets=None):
    """float64 brute force: entropy [B, H, T] (bits), lse [B, H, T], mass [B, H, T, S] from full scores."""
    q, k = q.double(), k.double()
    b, t, h, _ = q.shape
    group = h // k.shape[2]
    ent = torch.zeros(b, h, t, dtype=torch.float64)
    lse = torch.full((b, h, t), -math.inf, dtype=torch.float64)
    n_sets = key_sets.shape[1] if key_sets is not None else 0
    mass = torch.zeros(b, h, t, n_sets, dtype=torch.float64)
    for bi in range(b):
        for hi in range(h):
            kv = hi // group
            s = q[bi, :, hi] @ k[bi, :, kv].T * scale  # [T, T]
            if softcap is not None:
                s = softcap * torch.tanh(s / softcap)
            for i in range(t):
                row = []
                idx = []
                for j in range(t):
                    ok = j <= i and (window is None or i - j < window) and (mask is None or bool(mask[bi, j]))
                    if ok:
                        v = s[i, j] - (float(slopes[hi]) * (i - j) if slopes is not None else 0.0)
                        row.append(v)
                        idx.append(j)
                if not row:
                    continue
                r = torch.stack(row)
                pr = torch.softmax(r, 0)
                lse[bi, hi, i] = torch.logsumexp(r, 0)
                ent[bi, hi, i] = -(pr * torch.log2(pr.clamp_min(1e-300))).sum()
                for si in range(n_sets):
                    ks = key_sets[0 if key_sets.shape[0] == 1 else bi, si]
                    mass[bi, hi, i, si] = sum(float(pr[n]) for n, j in enumerate(idx) if bool(ks[j]))
    return ent, lse, mass


def _rand(b=2, t=13, h=4, hk=2, d=8, seed=0, amp=2.0):
    g = torch.Generator().manual_seed(seed)
    return amp * torch.randn(b, t, h, d, generator=g), amp * torch.randn(b, t, hk, d, generator=g)


def test_planted_uniform_rows_have_log2_visible_count():
    # q = 0 -> every visible key has the same score: H_i = log2(#visible keys), lse_i = log(#visible)
    t = 10
    q = torch.zeros(1, t, 2, 4)
    k = torch.randn(1, t, 1, 4)
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1, 1, 1]])  # left padding of 2
    st = attention_stats(q, k, scale=0.5, attention_mask=mask, sliding_window=3, block_size=3)
    n_vis = torch.tensor([0, 0, 1, 2, 3, 3, 3, 3, 3, 3], dtype=torch.float32)
    want = torch.where(n_vis > 0, torch.log2(n_vis.clamp_min(1)), torch.zeros_like(n_vis))
    assert torch.allclose(st.entropy_bits[0], want.expand(2, t), atol=1e-6)
    assert torch.isinf(st.lse[0, :, :2]).all() and torch.allclose(st.lse[0, :, 2:], torch.log(n_vis[2:]).expand(2, 8))


def test_planted_one_hot_row_has_zero_entropy_and_full_mass():
    # key 3 aligned with the query at a huge score: row 5 puts all its mass on key 3
    t, d = 6, 4
    q = torch.zeros(1, t, 1, d)
    k = torch.zeros(1, t, 1, d)
    q[0, 5, 0, 0] = 100.0
    k[0, 3, 0, 0] = 1.0
    sets = torch.zeros(1, 2, t, dtype=torch.bool)
    sets[0, 0, 3] = True
    sets[0, 1, :3] = True
    st = attention_stats(q, k, scale=1.0, queries=[5], key_sets=sets, block_size=2)
    assert st.entropy_bits.shape == (1, 1, 1)
    assert abs(float(st.entropy_bits[0, 0, 0])) < 1e-6
    assert torch.allclose(st.mass[0, 0, 0], torch.tensor([1.0, 0.0]), atol=1e-6)


CASES = [
    dict(),
    dict(window=4),
    dict(padding="left"),
    dict(padding="right", window=3),
    dict(softcap=5.0),
    dict(alibi=True),
    dict(alibi=True, padding="left", window=5),
    dict(mha=True, padding="left"),
    dict(d=16, padding="left", window=6),
]
#: (method, block size): flex has no block size and refuses soft-capping (tested below)
RUNS = [(c, "stream", blk) for c in CASES for blk in (1, 4, 64)]
RUNS += [(c, "flex", 4) for c in CASES if flex_available() and not c.get("softcap")]


@pytest.mark.parametrize("case, method, block", RUNS)
def test_matches_dense_reference(case, block, method):
    hk = 4 if case.get("mha") else 2
    q, k = _rand(hk=hk, d=case.get("d", 8), seed=block)
    b, t = q.shape[:2]
    mask = None
    if case.get("padding") == "left":
        mask = torch.ones(b, t, dtype=torch.long)
        mask[0, :5] = 0
    elif case.get("padding") == "right":
        mask = torch.ones(b, t, dtype=torch.long)
        mask[1, -4:] = 0
    slopes = torch.tensor([0.5, 0.25, 0.125, 0.0625]) if case.get("alibi") else None
    g = torch.Generator().manual_seed(7)
    sets = torch.rand(b, 3, t, generator=g) > 0.5
    kw = dict(scale=0.35, mask=mask, window=case.get("window"), softcap=case.get("softcap"), slopes=slopes)
    ent, lse, mass = dense_reference(q, k, key_sets=sets, **kw)
    st = attention_stats(q, k, scale=0.35, attention_mask=mask, sliding_window=case.get("window"),
                         softcap=case.get("softcap"), alibi_slopes=slopes, key_sets=sets, block_size=block,
                         method=method)
    assert st.method == method
    assert (st.entropy_bits.double() - ent).abs().max() < TOL
    fin = torch.isfinite(lse)
    assert torch.equal(torch.isfinite(st.lse), fin)
    assert (st.lse.double()[fin] - lse[fin]).abs().max() < TOL
    assert (st.mass.double() - mass).abs().max() < TOL
    # final-row and explicit positions are the same rows
    fi = final_query_index(mask, b, t, q.device)
    fin_st = attention_stats(q, k, scale=0.35, attention_mask=mask, sliding_window=case.get("window"),
                             softcap=case.get("softcap"), alibi_slopes=slopes, queries="final", block_size=block,
                             method=method)
    want = ent[torch.arange(b), :, fi]
    assert (fin_st.entropy_bits[:, :, 0].double() - want).abs().max() < TOL
    some = attention_stats(q, k, scale=0.35, attention_mask=mask, sliding_window=case.get("window"),
                           softcap=case.get("softcap"), alibi_slopes=slopes, queries=[-1, 3, 7],
                           block_size=block, method=method)
    assert (some.entropy_bits.double() - ent[:, :, [t - 1, 3, 7]]).abs().max() < TOL


def test_large_scores_stay_exact_in_float32():
    # scores of order 100: the running-max form keeps 1e-5 where a naive lse - E[s] would cancel badly
    q, k = _rand(b=1, t=40, seed=3, amp=6.0)
    ent, _, _ = dense_reference(q, k, scale=0.35)
    st = attention_stats(q, k, scale=0.35, block_size=8)
    assert (st.entropy_bits.double() - ent).abs().max() < TOL
    assert float(ent.max()) > 0.5  # not a degenerate all-one-hot case


def test_gqa_keys_are_not_expanded_in_memory(monkeypatch):
    calls = []
    orig = torch.Tensor.repeat_interleave

    def spy(self, *a, **kw):
        calls.append(1)
        return orig(self, *a, **kw)

    monkeypatch.setattr(torch.Tensor, "repeat_interleave", spy)
    q, k = _rand()
    attention_stats(q, k, scale=0.3, method="stream")
    assert calls == []


def test_bf16_inputs_give_float32_statistics_of_the_rounded_values():
    q, k = _rand(seed=5)
    qb, kb = q.bfloat16(), k.bfloat16()
    ent, _, _ = dense_reference(qb.float(), kb.float(), scale=0.35)
    st = attention_stats(qb, kb, scale=0.35, block_size=5)
    assert st.entropy_bits.dtype == torch.float32
    assert (st.entropy_bits.double() - ent).abs().max() < TOL


@pytest.mark.parametrize("kwargs, words", [
    (dict(method="fast"), "valid choices: auto, stream, flex"),
    (dict(queries="last"), "'all', 'final'"),
    (dict(queries=[20]), "query positions"),
    (dict(alibi_slopes=torch.ones(3)), "one slope per query head"),
    (dict(softcap=-1.0), "softcap"),
    (dict(block_size=0), "block_size"),
    (dict(key_sets=torch.ones(2, 13, dtype=torch.bool)), "key_sets"),
    (dict(attention_mask=torch.ones(2, 5)), "attention_mask"),
])
def test_user_errors_are_one_clear_line(kwargs, words):
    q, k = _rand()
    with pytest.raises(GeoprobeError, match=words.replace("(", r"\(")):
        attention_stats(q, k, scale=0.3, **kwargs)


def test_gqa_mismatch_and_empty_mask_rows_raise():
    q, _ = _rand(h=4)
    k = torch.randn(2, 13, 3, 8)
    with pytest.raises(ConfigError, match="multiple of n_kv_heads"):
        attention_stats(q, k, scale=0.3)
    q, k = _rand()
    mask = torch.ones(2, 13)
    mask[1] = 0
    with pytest.raises(ConfigError, match="no real token"):
        attention_stats(q, k, scale=0.3, attention_mask=mask, queries="final")


@pytest.mark.skipif(not flex_available(), reason="torch without flex_attention")
def test_flex_refuses_softcap():
    q, k = _rand()
    with pytest.raises(ConfigError, match="soft-capped"):
        attention_stats(q, k, scale=0.3, softcap=5.0, method="flex")
    # auto never picks flex on CPU
    assert attention_stats(q, k, scale=0.3).method == "stream"


def test_auto_falls_back_to_streaming_when_flex_fails(monkeypatch):
    import geoprobe.attention_stats as mod

    def broken(*a, **kw):
        raise RuntimeError("no kernel for this head size")

    real_auto = mod._auto_method
    monkeypatch.setattr(mod, "_auto_method", lambda q, softcap, n_rows: "flex")
    monkeypatch.setattr(mod, "_flex", broken)
    monkeypatch.setattr(mod, "_FLEX_FAILED", None)  # restored after the test
    q, k = _rand()
    ent, _, _ = dense_reference(q, k, scale=0.35)
    with pytest.warns(RuntimeWarning, match="no kernel for this head size"):
        st = attention_stats(q, k, scale=0.35)
    assert st.method == "stream" and (st.entropy_bits.double() - ent).abs().max() < TOL
    with pytest.raises(RuntimeError, match="no kernel"):  # asked for explicitly: the error is not hidden
        attention_stats(q, k, scale=0.35, method="flex")
    # the failure is remembered: auto no longer picks flex in this process, even on CUDA with many rows
    assert "no kernel for this head size" in mod._FLEX_FAILED
    assert real_auto(SimpleNamespace(is_cuda=True), None, 4096) == "stream"


def test_auto_picks_flex_only_on_cuda_for_many_rows(monkeypatch):
    """A compiled flex kernel is specialised to its shapes: auto uses it on CUDA for >= FLEX_MIN_ROWS query rows
    (all rows of a long sequence) and streams the final row of each scan batch (no compile per batch length)."""
    import geoprobe.attention_stats as mod

    monkeypatch.setattr(mod, "_FLEX_FAILED", None)
    monkeypatch.setattr(mod, "flex_available", lambda: True)
    cuda, cpu = SimpleNamespace(is_cuda=True), SimpleNamespace(is_cuda=False)
    assert mod._auto_method(cuda, None, mod.FLEX_MIN_ROWS) == "flex"
    assert mod._auto_method(cuda, None, 1) == "stream"
    assert mod._auto_method(cuda, None, mod.FLEX_MIN_ROWS - 1) == "stream"
    assert mod._auto_method(cuda, 30.0, 4096) == "stream"  # soft-capping: the identity needs linear scores
    assert mod._auto_method(cpu, None, 4096) == "stream"


def test_final_row_streams_in_one_key_tile_with_bounded_scores(monkeypatch):
    """queries="final": the requested rows form one chunk and key blocks grow to block_size**2 // P keys, so
    a final row up to T = block_size**2 is one score tile; every tile holds at most B*H*max(bs**2, P*bs)
    scores; the entropies still equal the dense reference."""
    shapes = []
    orig = torch.matmul

    def spy(a, b, *args, **kw):
        out = orig(a, b, *args, **kw)
        shapes.append(out.numel())
        return out

    q, k = _rand(b=2, t=70, h=4, hk=2, seed=11)
    ent, _, _ = dense_reference(q, k, scale=0.35)
    monkeypatch.setattr(torch, "matmul", spy)
    fin = attention_stats(q, k, scale=0.35, queries="final", block_size=8, method="stream")
    assert len(shapes) == 2  # T = 70 > 8**2: two key tiles of 64 keys (was ceil(70 / 8) = 9 tiles of 8)
    assert max(shapes) <= 2 * 4 * 8 * 8
    assert (fin.entropy_bits[:, :, 0].double() - ent[:, :, -1]).abs().max() < TOL
    shapes.clear()
    some = attention_stats(q, k, scale=0.35, queries=list(range(20, 70)), block_size=8, method="stream")
    assert max(shapes) <= 2 * 4 * 50 * 8 and len(shapes) == 9  # P = 50 rows: key blocks of 8 (50 * 8 > 64)
    assert (some.entropy_bits.double() - ent[:, :, 20:70]).abs().max() < TOL


def test_compiled_flex_raises_the_recompile_limit(monkeypatch):
    """One compiled kernel per shape: the CUDA path raises dynamo's recompile limit to FLEX_RECOMPILE_LIMIT so
    the 9th sequence length does not silently fall back to the unfused (score-materialising) kernel. Wrapping
    compiles nothing, so this runs without a GPU."""
    import geoprobe.attention_stats as mod

    if not flex_available():
        pytest.skip("torch without flex_attention")
    cfg = torch._dynamo.config
    name = "recompile_limit" if hasattr(cfg, "recompile_limit") else "cache_size_limit"
    monkeypatch.setattr(cfg, name, 8)
    monkeypatch.setattr(mod, "_COMPILED_FLEX", None)
    fn = mod._flex_fn(torch.device("cuda"))
    assert getattr(cfg, name) == mod.FLEX_RECOMPILE_LIMIT >= 64
    assert fn is mod._flex_fn(torch.device("cuda"))  # cached: one wrapper per process
    from torch.nn.attention.flex_attention import flex_attention

    assert mod._flex_fn(torch.device("cpu")) is flex_attention


def test_every_entropy_helper_is_the_one_streaming_implementation(monkeypatch):
    """tensor_ops.entropy_from_qk and backends.attention.attention_entropy delegate to attention_stats: their
    numbers are bit-identical to it, and each call goes through it (one implementation of row entropy)."""
    import geoprobe.attention_stats as mod
    from geoprobe.backends.attention import attention_entropy
    from geoprobe.tensor_ops import entropy_from_qk

    g = torch.Generator().manual_seed(3)
    q = torch.randn(2, 11, 4, 6, generator=g) * 2
    k = torch.randn(2, 11, 2, 6, generator=g) * 2
    mask = torch.ones(2, 11, dtype=torch.long)
    mask[1, :4] = 0
    ref = attention_stats(q, k, scale=0.4, attention_mask=mask, sliding_window=5, block_size=3, method="stream")
    assert torch.equal(attention_entropy(q, k, scale=0.4, attention_mask=mask, sliding_window=5, chunk=3),
                       ref.entropy_bits)
    assert torch.equal(entropy_from_qk(q, k, scale=0.4, key_padding_mask=mask.bool(), window=5, chunk_size=3),
                       ref.entropy_bits)
    pos = torch.tensor([[10, 6], [10, 7]])
    some = attention_stats(q, k, scale=0.4, attention_mask=mask, queries=pos, block_size=3, method="stream")
    assert torch.equal(entropy_from_qk(q, k, pos, scale=0.4, key_padding_mask=mask.bool(), chunk_size=3),
                       some.entropy_bits)
    assert torch.equal(entropy_from_qk(q, k, -1, scale=0.4, key_padding_mask=mask.bool(), chunk_size=3),
                       attention_stats(q, k, scale=0.4, attention_mask=mask, queries=[10], block_size=3,
                                       method="stream").entropy_bits)
    calls = []
    inner = mod.attention_stats

    def spy(*a, **kw):
        calls.append(kw.get("method"))
        return inner(*a, **kw)

    monkeypatch.setattr("geoprobe.tensor_ops.attention_stats", spy)
    monkeypatch.setattr("geoprobe.backends.attention.attention_stats", spy)
    entropy_from_qk(q, k)
    attention_entropy(q, k, scale=0.4)
    assert calls == ["stream", "stream"]


def test_rotary_table_follows_the_layer_device():
    """Under a device map the rotary cos/sin come from the first layer's device while a later layer's q/k sit
    on another: apply_rotary moves the table to x's device (here x on the meta device, the table on the CPU:
    the result lives on meta), and on one device the numbers are the textbook rotation."""
    from geoprobe.backends.attention import apply_rotary

    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, 2, 4, generator=g)
    ang = torch.randn(1, 3, 2, generator=g)
    cos, sin = torch.cat([ang.cos()] * 2, -1), torch.cat([ang.sin()] * 2, -1)
    out = apply_rotary(x.to("meta"), cos, sin)
    assert out.device.type == "meta" and out.shape == x.shape
    got = apply_rotary(x, cos, sin)
    c, s_ = ang.cos()[:, :, None], ang.sin()[:, :, None]
    want = torch.cat([x[..., :2] * c - x[..., 2:] * s_, x[..., 2:] * c + x[..., :2] * s_], -1)
    torch.testing.assert_close(got, want)


def test_probe_reductions_keep_indices_on_the_activation_device():
    """Reductions that run on the model's device build their index and mask tensors there: on the meta device
    (a stand-in for CUDA that exists on every machine) with CPU positions / masks they return meta tensors of
    the right shape instead of a device-mismatch error."""
    from geoprobe.backends.sites import SiteActivation
    from geoprobe.probes.attention_focusing import final_row_entropy
    from geoprobe.probes.qk_alignment import qk_alignment_prefixes

    q = torch.randn(3, 6, 4, 8).to("meta")  # [layers, T, heads, d]
    k = torch.randn(3, 6, 2, 8).to("meta")
    pad = torch.tensor([False, True, True, True, True, True])
    maps = qk_alignment_prefixes(q, k, [1, 4], padding_mask=pad)
    assert maps.device.type == "meta" and tuple(maps.shape) == (2, 3, 6)
    pat = torch.rand(2, 4, 5, 5).to("meta")
    mask = torch.ones(2, 5, dtype=torch.long)
    act = SiteActivation("pattern", 0, pat, slice(0, 2), mask, torch.tensor([4, 3]), "all")
    h = final_row_entropy(act)
    assert h.device.type == "meta" and tuple(h.shape) == (2, 4)


MEMORY_CHILD = """
import gc, json
from pathlib import Path
import torch
from geoprobe.attention_stats import attention_stats

def kb(key):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])

def peak(fn):
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")
    base = kb("VmRSS")
    fn()
    return (kb("VmHWM") - base) / 1024

g = torch.Generator().manual_seed(0)
out = {}
attention_stats(torch.randn(1, 64, 8, 32), torch.randn(1, 64, 2, 32), scale=0.2)  # warm-up
for t in (256, 2048):
    q, k = torch.randn(1, t, 8, 32, generator=g), torch.randn(1, t, 2, 32, generator=g)
    out[f"all/{t}"] = peak(lambda: attention_stats(q, k, scale=0.2, block_size=128))
    out[f"final/{t}"] = peak(lambda: attention_stats(q, k, scale=0.2, queries="final", block_size=128))
    out[f"dense/{t}"] = peak(lambda: torch.softmax(torch.einsum("bqhd,bkhd->bhqk", q, k.repeat_interleave(4, 2)), -1))
print(json.dumps(out))
"""


def test_streaming_statistics_memory_is_flat_in_t():
    """Peak extra resident memory (VmHWM in a child) of every row's statistics at T = 256 and 2048 (8 query / 2
    KV heads, d = 32): streaming stays within a few MiB (O(T) outputs plus one 128 x 128 tile per head) while
    the dense pattern of the same heads grows as T^2 (8 x 2048^2 floats = 128 MiB)."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    if not os.access("/proc/self/clear_refs", os.W_OK):
        pytest.skip("the kernel does not let this process reset its resident-set high-water mark")
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", MALLOC_MMAP_THRESHOLD_="65536")
    r = subprocess.run([sys.executable, "-c", MEMORY_CHILD], capture_output=True, text=True, env=env, timeout=300,
                       cwd=Path(__file__).resolve().parents[2])
    assert r.returncode == 0, r.stderr[-2000:]
    p = json.loads(r.stdout.strip().splitlines()[-1])
    assert p["dense/2048"] > 120 and p["dense/2048"] > 30 * p["dense/256"], p  # the T^2 reference really grew
    assert p["all/2048"] < 12 and p["all/2048"] - p["all/256"] < 8, p
    assert p["final/2048"] < 6, p
