"""Attention entropy without the pattern: cost against the plain forward, on CPU or one CUDA GPU.

    python benchmarks/attention_stats.py                       # CPU, Llama-shaped small model, T = 512 2048
    python benchmarks/attention_stats.py --lengths 512 2048 8192 --repeats 3
    python benchmarks/attention_stats.py --device cuda --dtype bfloat16 --shapes pythia-410m llama-3.2-1b \\
        mistral-7b --lengths 512 2048 8192                     # what benchmarks/gpu_check.sh runs
    python benchmarks/attention_stats.py --cpu-smoke           # tiny shapes, T = 32, seconds (tested)

Models are built from configs with random weights (speed does not depend on them). For each shape and length
T (one sequence of T random tokens) three modes run the whole model:

``plain``   the HF forward with its own SDPA kernel (the reference cost), logits included;
``plain-body``  the same forward without the unembedding (``model.base_model``): the scan's passes never unembed;
``eager``   geoprobe's plain-torch backend capturing the ``pattern`` at every layer (the model switched to eager
            attention, ``[B, H, T, T]`` materialised) and reducing it to per-row entropies on the fly;
``eager-capture``  the same capture of the pattern with the entropy left out (what eager attention and
            the pattern copy cost alone);
``stream``  the same backend capturing post-rotary ``q``/``k`` during the SDPA forward and computing every
            row's entropy with :func:`geoprobe.attention_stats.attention_stats` (``method="auto"``: streaming
            over key blocks on CPU, flex attention with the keys as values on CUDA);
``stream-blocks``  the same with ``method="stream"`` forced (on CPU identical to ``stream``; the GPU check
            runs both);
``scan-pass`` the scan's measurement pass on the sequence (:func:`geoprobe.probes.suite.collect_needs` for the
            paper3-llm suite's needs: post-rotary q/k and values at every layer, final-row entropies from q/k,
            final values/keys, final-query cosine maps), what ``geoprobe scan`` runs per batch;
``tl-cache``  TransformerLens 4.x ``TransformerBridge.run_with_cache`` on the same HF model (booted with
            ``hf_model=``: eager attention while it runs, every hook cached, the cache dropped). Booting the
            bridge rewires the model's modules, so this mode runs after every other mode of the shape, at
            every T (not interleaved with them). Skipped, with
            the reason in the row, when TransformerLens is not installed or when its cache of every layer's
            scores and pattern (``2 * layers * heads * T^2`` elements) would exceed half the free GPU memory.

Time: median of ``--repeats`` rounds after one warm-up, the modes interleaved within each round (one process,
one model), so load changes on a shared machine hit every mode alike. Peak memory: on CPU each (shape, T,
mode) runs one forward in a fresh subprocess; after building the model the kernel's resident-set high-water
mark is reset (``/proc/self/clear_refs``) and the figure is ``VmHWM - VmRSS`` around the forward, i.e. the
extra memory that forward needed (where the reset is not permitted, ``ru_maxrss`` minus the resident set
before the forward, flagged "lower bound"; ``--in-process`` is flagged likewise). On CUDA:
``torch.cuda.max_memory_allocated`` above what was allocated before the forward. Ratios are against
``plain`` of the same shape and T.

Correctness (``--check``; ``--check-only`` runs nothing else): on a short left-padded batch, with the shape's model
cut to 2 layers in float32 (a sliding window, if the family has one, cut to T/3 so it really cuts rows), the
streaming entropies of every row and of the final row from SDPA-captured q/k against the eager pattern's
entropy (max over real query rows, bits; pass: < 1e-5); on CUDA the same for ``method="flex"`` (the fused
kernel, asked for explicitly so a fallback cannot hide a failure) and, with the weights cast to bfloat16, flex
against stream on the same bf16 q/k (both float32 statistics). ``--jsonl PATH`` appends every check and
timing row as one JSON line as soon as it exists (a time limit that kills the run keeps what finished).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
for _p in (ROOT, ROOT / "benchmarks"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from geoprobe.attention_stats import attention_stats  # noqa: E402
from geoprobe.backends.info import info_from_hf_config  # noqa: E402
from geoprobe.backends.torch_hooks import hf_torch_handle  # noqa: E402
from geoprobe.infotheory import entropy_bits  # noqa: E402

MODES = ("plain", "plain-body", "eager", "eager-capture", "stream", "stream-blocks", "scan-pass", "tl-cache")


class Skip(Exception):
    """A mode that cannot run here (the message says why); reported in its row, not a failure."""


def shape_config(name: str, max_len: int):
    """HF config of a named shape (random weights are built from it)."""
    import transformers as tf

    ctx = max(max_len, 128)
    if name == "llama-small":  # CPU benchmark: Llama layout with GQA, small enough for one core
        return tf.LlamaConfig(vocab_size=2048, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                              num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=ctx)
    if name == "pythia-410m":
        return tf.GPTNeoXConfig(vocab_size=50304, hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                num_attention_heads=16, rotary_pct=0.25, max_position_embeddings=ctx,
                                use_parallel_residual=True)
    if name == "llama-3.2-1b":
        return tf.LlamaConfig(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                              num_attention_heads=32, num_key_value_heads=8, head_dim=64,
                              max_position_embeddings=ctx, rope_theta=500000.0, tie_word_embeddings=True)
    if name == "mistral-7b":
        return tf.MistralConfig(vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                                num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=ctx,
                                sliding_window=4096)
    # tiny versions of the three GPU shapes (--cpu-smoke): same families, GQA and window kept
    if name == "tiny-neox":
        return tf.GPTNeoXConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                num_attention_heads=4, rotary_pct=0.25, max_position_embeddings=ctx)
    if name == "tiny-llama":
        return tf.LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=ctx)
    if name == "tiny-mistral":
        return tf.MistralConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=ctx,
                                sliding_window=16)
    raise SystemExit(f"unknown shape {name!r}; valid: llama-small, pythia-410m, llama-3.2-1b, mistral-7b, "
                     "tiny-neox, tiny-llama, tiny-mistral")


def build(name: str, max_len: int, device: str, dtype: torch.dtype, n_layers: int | None = None, seed: int = 0,
          window: int | None = None):
    """``(hf_model, handle)``: random weights, SDPA attention, on ``device`` in ``dtype`` (``window``: the
    family's sliding window, if it has one, set to this)."""
    import transformers as tf

    cfg = shape_config(name, max_len)
    if n_layers is not None:
        cfg.num_hidden_layers = n_layers
    if window is not None and getattr(cfg, "sliding_window", None) is not None:
        cfg.sliding_window = window
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    with torch.device(device):
        model = tf.AutoModelForCausalLM.from_config(cfg, dtype=dtype, attn_implementation="sdpa").eval()
    info = info_from_hf_config(model.config, "module")
    return model, hf_torch_handle(model, info, None, torch.device(device), dtype)


def make_forward(mode: str, model, handle, tokens: torch.Tensor, block_size: int):
    """A no-argument callable running one forward of ``mode``; entropies are reduced and dropped."""
    info = handle.info
    mask = torch.ones_like(tokens)
    if mode == "plain":
        def fwd():
            with torch.no_grad():
                model(tokens, attention_mask=mask, use_cache=False)
        return fwd
    if mode == "plain-body":
        def body():
            with torch.no_grad():
                model.base_model(tokens, attention_mask=mask, use_cache=False)
        return body
    if mode == "eager":
        def reduce_pattern(act):
            entropy_bits(act.value)
        return lambda: handle.run(tokens, mask, sites=["pattern"], reducer=reduce_pattern)
    if mode == "eager-capture":
        return lambda: handle.run(tokens, mask, sites=["pattern"], reducer=lambda act: None)
    if mode in ("stream", "stream-blocks"):
        method = "auto" if mode == "stream" else "stream"

        def fwd():
            held: dict = {}

            def reduce_qk(act):
                held[act.site] = act.value
                if "rot_q" in held and "rot_k" in held:
                    attention_stats(held.pop("rot_q"), held.pop("rot_k"), scale=info.attn_scale,
                                    attention_mask=act.attention_mask, sliding_window=info.sliding_window,
                                    block_size=block_size, method=method)
            handle.run(tokens, mask, sites=["rot_q", "rot_k"], reducer=reduce_qk)
        return fwd
    if mode == "scan-pass":
        return scan_pass(handle, tokens)
    if mode == "tl-cache":
        return tl_cache(model, handle, tokens)
    raise SystemExit(f"unknown mode {mode!r}; valid: {', '.join(MODES)}")


def scan_pass(handle, tokens: torch.Tensor):
    """The scan's measurement pass (paper3-llm needs, one batch) over ``tokens`` as one probe target."""
    from geoprobe.probes.contract import PROBES, ProbeState
    from geoprobe.probes.suite import collect_needs
    from geoprobe.probes.targets import ProbeTarget
    from geoprobe.scan import driver

    su, popts = driver._probe_options(handle, driver.ScanOptions(n_boot=20))
    target = ProbeTarget(handle=handle, kind="llm", name="benchmark", tokens=tokens.cpu(),
                         attention_mask=torch.ones_like(tokens).cpu(), final_entropy=torch.zeros(tokens.shape[0]),
                         batch_size=tokens.shape[0])
    state = ProbeState(target=target, options=popts)
    needs = [x for p in su.probes for x in PROBES.get(p).needs(state)]
    return lambda: collect_needs(state, needs)


def tl_cache_bytes(cfg, t: int, batch: int = 1) -> int:
    """Lower bound of a TransformerLens cache at length ``t``: every layer's scores and pattern (float32)."""
    return 2 * batch * cfg.num_hidden_layers * cfg.num_attention_heads * t * t * 4


_BRIDGES: dict[int, object] = {}  # id(hf model) -> its TransformerBridge (booted once per model)


def tl_cache(model, handle, tokens: torch.Tensor):
    """TransformerLens ``run_with_cache`` on ``model`` (booted on it; eager attention only while it runs)."""
    try:
        from transformer_lens.model_bridge import TransformerBridge
    except Exception as exc:  # noqa: BLE001
        raise Skip(f"TransformerLens not importable here ({type(exc).__name__}: {str(exc)[:120]})") from None
    dev = tokens.device
    if dev.type == "cuda":
        need = tl_cache_bytes(model.config, tokens.shape[1], tokens.shape[0])
        free = torch.cuda.mem_get_info()[0]
        if need > free / 2:
            raise Skip(f"its cache of every layer's scores and pattern needs >= {need / 2**30:.0f} GiB; "
                       f"{free / 2**30:.0f} GiB free")
    old = model.config._attn_implementation
    bridge = _BRIDGES.get(id(model))
    if bridge is None:
        bridge = TransformerBridge.boot_transformers(type(model).__name__, hf_model=model, tokenizer=_tokenizer(),
                                                     device=str(dev), dtype=next(model.parameters()).dtype)
        _BRIDGES[id(model)] = bridge
        model.set_attn_implementation(old)

    def fwd():
        model.set_attn_implementation("eager")
        try:
            with torch.no_grad():
                _, cache = bridge.run_with_cache(tokens)
            del cache
        finally:
            model.set_attn_implementation(old)
    return fwd


def _tokenizer():
    """A byte-level tokenizer (the bridge needs one; the benchmark feeds token ids)."""
    import tempfile

    from scan_speed import byte_tokenizer
    from transformers import AutoTokenizer

    folder = Path(tempfile.mkdtemp(prefix="geoprobe-bench-tok-"))
    byte_tokenizer(folder)
    return AutoTokenizer.from_pretrained(folder)


def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _tokens(vocab: int, t: int, device: str, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (1, t), generator=g).to(device)


def peak_memory(name: str, t: int, mode: str, device: str, dtype: torch.dtype, block_size: int, built=None,
                isolated: bool = True) -> tuple[float, bool]:
    """Peak extra memory (MiB) of one forward of ``mode`` and whether the figure is exact.

    CPU: ``VmHWM - VmRSS`` after resetting the high-water mark; exact only in a fresh process (``isolated``),
    since freed memory an allocator kept from an earlier mode is reused unseen. CUDA: the allocator's peak
    above what was allocated before the forward."""
    model, handle = built or build(name, t, device, dtype)
    fwd = make_forward(mode, model, handle, _tokens(model.config.vocab_size, t, device), block_size)
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fwd()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20, True
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:  # no permission to reset the high-water mark: ru_maxrss, a lower bound at best
        base_kb = _status_kb("VmRSS") or 0
        fwd()
        return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_kb) / 1024, False
    base_kb = _status_kb("VmRSS") or 0
    fwd()
    return ((_status_kb("VmHWM") or 0) - base_kb) / 1024, isolated


def peak_memory_in_subprocess(name: str, t: int, mode: str, dtype: str, block_size: int) -> tuple[float, bool]:
    """CPU: one fresh process per (shape, T, mode), so no allocator state is shared between modes."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", name, str(t), mode, "--dtype", dtype,
           "--block-size", str(block_size)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
    if out.returncode != 0:
        tail = (out.stderr or out.stdout).strip().splitlines()[-1:] or ["?"]
        raise RuntimeError(f"memory subprocess for {name} T={t} {mode} failed: {tail[0]}")
    r = json.loads(out.stdout.strip().splitlines()[-1])
    if "skipped" in r:
        raise Skip(r["skipped"])
    return r["peak_mib"], r["peak_exact"]


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}"


def _free(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def time_interleaved(name: str, t: int, modes: list[str], device: str, dtype: torch.dtype, repeats: int,
                     block_size: int, built=None) -> dict[str, float | str]:
    """Median seconds per mode; one warm-up each, then ``repeats`` rounds of every mode in turn (so a change
    in machine load during the run hits all modes alike). A mode that fails (out of memory, a kernel that does
    not build) gets its error message instead and leaves the rounds; the others go on."""
    model, handle = built or build(name, t, device, dtype)
    tokens = _tokens(model.config.vocab_size, t, device)
    fwds, out = {}, {}
    for m in modes:
        try:
            fwds[m] = make_forward(m, model, handle, tokens, block_size)
            fwds[m]()
        except Exception as exc:  # noqa: BLE001  (reported in the row)
            fwds.pop(m, None)
            out[m] = _error(exc)
            _free(device)
    times: dict[str, list[float]] = {m: [] for m in fwds}
    for _ in range(repeats):
        for m, f in list(fwds.items()):
            try:
                _sync(device)
                t0 = time.perf_counter()
                f()
                _sync(device)
                times[m].append(time.perf_counter() - t0)
            except Exception as exc:  # noqa: BLE001
                fwds.pop(m)
                out[m] = _error(exc)
                _free(device)
    out.update({m: statistics.median(times[m]) for m in fwds})
    return out


def measure(name: str, t: int, modes: list[str], device: str, dtype: torch.dtype, repeats: int, block_size: int,
            in_process: bool, built=None) -> list[dict]:
    """Rows ``{shape, T, mode, seconds, peak_mib, peak_exact}``; a mode that cannot run here gets ``skipped``
    (why), one that failed (out of memory, a kernel that does not build) ``error``, and the others still run."""
    cuda = device.startswith("cuda")
    rows = {}
    for m in modes:
        row = {"shape": name, "T": t, "mode": m}
        try:
            if cuda or in_process:
                peak, exact = peak_memory(name, t, m, device, dtype, block_size, built, isolated=False)
            else:
                peak, exact = peak_memory_in_subprocess(name, t, m, str(dtype).removeprefix("torch."), block_size)
            rows[m] = dict(row, peak_mib=peak, peak_exact=exact)
        except Skip as exc:
            rows[m] = dict(row, skipped=str(exc))
        except Exception as exc:  # noqa: BLE001  (reported in the row; the other modes still run)
            rows[m] = dict(row, error=_error(exc))
        _free(device)
    ok = [m for m in modes if "error" not in rows[m] and "skipped" not in rows[m]]
    for m, res in time_interleaved(name, t, ok, device, dtype, repeats, block_size, built).items():
        if isinstance(res, str):
            rows[m] = {"shape": name, "T": t, "mode": m, "error": res}
        else:
            rows[m].update(seconds=res, repeats=repeats)
    return list(rows.values())


def equality_check(name: str, device: str, t: int = 48, block_size: int = 16) -> list[dict]:
    """Correctness rows ``{shape, check, method, max_abs_err_bits, pass}`` (``error`` instead when a path
    fails): max |H - H_eager| (bits) over the real query rows of a left-padded batch, float32, 2 layers, a
    sliding window cut to T/3; on CUDA also flex explicitly and flex vs stream on bfloat16 q/k."""
    cuda = device.startswith("cuda")
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    model, handle = build(name, t, device, torch.float32, n_layers=2, seed=1, window=t // 3)
    with torch.no_grad():  # random init gives near-uniform attention: sharpen it so the check has teeth
        for mod in model.modules():
            if "Attention" in type(mod).__name__:
                for p in mod.parameters():
                    if p.ndim == 2:
                        p.mul_(6.0)
    g = torch.Generator().manual_seed(2)
    tokens = torch.randint(0, model.config.vocab_size, (2, t), generator=g).to(device)
    mask = torch.ones_like(tokens)
    mask[1, : t // 3] = 0  # left padding
    info = handle.info
    eager = handle.run(tokens, mask, sites=["pattern"], store_device=device)
    sdpa = handle.run(tokens, mask, sites=["rot_q", "rot_k"], store_device=device)
    real = mask.bool()
    fi = eager.final_index.to(device)
    b = torch.arange(tokens.shape[0], device=device)
    kw = dict(scale=info.attn_scale, attention_mask=mask, sliding_window=info.sliding_window, block_size=block_size)
    rows = []

    def check(what: str, method: str, fn) -> None:
        row = {"shape": name, "check": what, "method": method, "window": info.sliding_window}
        try:
            err, used = fn()
            row.update(method=used, max_abs_err_bits=err, **{"pass": err < 1e-5 and used == method})
        except Exception as exc:  # noqa: BLE001  (reported; the other checks still run)
            row.update(error=_error(exc), **{"pass": False})
        rows.append(row)

    def vs_eager(method: str, queries: str):
        err, used = 0.0, method
        for layer in range(info.n_layers):
            want = entropy_bits(eager["pattern", layer])
            st = attention_stats(sdpa["rot_q", layer], sdpa["rot_k", layer], queries=queries, method=method, **kw)
            used = st.method
            if queries == "all":
                err = max(err, (st.entropy_bits - want).abs().permute(0, 2, 1)[real].max().item())
            else:
                err = max(err, (st.entropy_bits[:, :, 0] - want[b, :, fi]).abs().max().item())
        return err, used

    for method in ["stream"] + (["flex"] if cuda else []):
        for queries in ("all", "final"):
            check(f"{queries} rows vs eager pattern (float32)", method,
                  lambda method=method, queries=queries: vs_eager(method, queries))
    if cuda:  # bf16 weights: both exact paths on the same bf16 q/k give the same float32 statistics
        model.to(torch.bfloat16)
        handle.dtype = torch.bfloat16
        q16 = handle.run(tokens, mask, sites=["rot_q", "rot_k"], store_device=device)

        def flex_vs_stream():
            err = 0.0
            for layer in range(info.n_layers):
                q, k = q16["rot_q", layer].bfloat16(), q16["rot_k", layer].bfloat16()
                a = attention_stats(q, k, method="stream", **kw)
                f = attention_stats(q, k, method="flex", **kw)
                assert a.entropy_bits.dtype == f.entropy_bits.dtype == torch.float32
                err = max(err, (f.entropy_bits - a.entropy_bits).abs().permute(0, 2, 1)[real].max().item())
            return err, "flex"
        check("all rows flex vs stream (bf16 q/k)", "flex", flex_vs_stream)
    for r in rows:
        res = (f"max|dH| = {r['max_abs_err_bits']:.2e} bits" if "error" not in r else f"failed: {r['error']}")
        print(f"check {r['shape']:<14} {r['check']:<38} method={r['method']:<6} {res}  "
              f"{'PASS' if r['pass'] else 'FAIL'}", flush=True)
    return rows


def table_lines(results: list[dict]) -> list[str]:
    """Markdown rows: time and peak memory of each mode, and both as ratios to ``plain`` of the same shape/T."""
    out = ["| shape | T | mode | time s | x plain | peak MiB | x plain |", "|---|---|---|---|---|---|---|"]
    base = {(r["shape"], r["T"]): r for r in results if r["mode"] == "plain" and "seconds" in r}
    first: dict = {}
    for r in results:
        first.setdefault((r["shape"], r["T"]), len(first))
    order = {m: i for i, m in enumerate(MODES)}
    for r in sorted(results, key=lambda r: (first[(r["shape"], r["T"])], order.get(r["mode"], 99))):
        head = f"| {r['shape']} | {r['T']} | {r['mode']} |"
        if "seconds" not in r:
            why = f"skipped: {r['skipped']}" if "skipped" in r else f"failed: {r.get('error', '?')}"
            out.append(f"{head} {why.replace('|', '/')} | | | |")
            continue
        b = base.get((r["shape"], r["T"]))
        tr = f"{r['seconds'] / b['seconds']:.2f}" if b else "-"
        exact = b and b.get("peak_exact", True) and r.get("peak_exact", True)
        mr = f"{r['peak_mib'] / b['peak_mib']:.2f}" if exact and b["peak_mib"] > 0 else "-"
        flag = "" if r.get("peak_exact", True) else " (lower bound)"
        out.append(f"{head} {r['seconds']:.4f} | {tr} | {r['peak_mib']:.1f}{flag} | {mr} |")
    return out


def print_table(results: list[dict]) -> None:
    print("\n".join(table_lines(results)), flush=True)


def _emit(path: Path | None, kind: str, row: dict) -> None:
    print(json.dumps(row), file=sys.stderr, flush=True)
    if path is not None:
        with path.open("a") as f:
            f.write(json.dumps({"kind": kind, **row}) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--shapes", nargs="+", default=None)
    ap.add_argument("--lengths", nargs="+", type=int, default=None)
    ap.add_argument("--modes", nargs="+", default=["plain", "eager", "stream"], choices=list(MODES))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--block-size", type=int, default=128)
    ap.add_argument("--check", action="store_true", help="also run the equality check per shape")
    ap.add_argument("--check-only", action="store_true", help="run the equality check per shape and nothing else")
    ap.add_argument("--cpu-smoke", action="store_true",
                    help="tiny shapes on CPU, T = 32, with the check, all in this process (seconds)")
    ap.add_argument("--in-process", action="store_true",
                    help="CPU: measure every configuration in this process (faster; memory is a lower bound)")
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    ap.add_argument("--jsonl", type=Path, default=None, help="append each row here as soon as it is measured")
    ap.add_argument("--child", nargs=3, metavar=("SHAPE", "T", "MODE"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    dtype = getattr(torch, a.dtype)
    if a.child:
        name, t, mode = a.child
        try:
            peak, exact = peak_memory(name, int(t), mode, "cpu", dtype, a.block_size)
        except Skip as exc:
            print(json.dumps({"skipped": str(exc)}))
            return 0
        print(json.dumps({"peak_mib": peak, "peak_exact": exact}))
        return 0
    if a.cpu_smoke:
        a.device, a.check, a.repeats, a.block_size, a.in_process = "cpu", True, 1, 16, True
        a.shapes = a.shapes or ["tiny-neox", "tiny-llama", "tiny-mistral"]
        a.lengths = a.lengths or [32]
        a.modes = list(MODES)
    shapes = a.shapes or ["llama-small"]
    lengths = a.lengths or [512, 2048]
    cuda = a.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        print("attention_stats benchmark: error: --device cuda but no CUDA GPU is visible", file=sys.stderr)
        return 2
    print(f"# device={a.device} dtype={a.dtype} torch={torch.__version__} threads={torch.get_num_threads()} "
          f"repeats={a.repeats} block_size={a.block_size}", flush=True)
    checks: list[dict] = []
    if a.check or a.check_only:
        for name in shapes:
            for c in equality_check(name, a.device):
                checks.append(c)
                _emit(a.jsonl, "check", c)
            _free(a.device)
    results = []
    if not a.check_only:
        for name in shapes:
            built = build(name, max(lengths), a.device, dtype) if (cuda or a.in_process) else None
            # the bridge rewires the model it boots on: TransformerLens runs last, after every other mode
            for group in ([m for m in a.modes if m != "tl-cache"], [m for m in a.modes if m == "tl-cache"]):
                for t in lengths if group else []:
                    for r in measure(name, t, group, a.device, dtype, a.repeats, a.block_size, a.in_process,
                                     built):
                        results.append(r)
                        _emit(a.jsonl, "row", r)
            built = None
            _BRIDGES.clear()
            _free(a.device)
        print_table(results)
    if a.json:
        a.json.write_text(json.dumps({"results": results, "checks": checks}, indent=2))
    failed = [c for c in checks if not c["pass"]] or [r for r in results if "error" in r and not cuda]
    if a.cpu_smoke:
        print(f"cpu smoke: {len(checks)} equality checks, {len(results)} timings, "
              f"{'FAILED' if failed else 'ok'}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
