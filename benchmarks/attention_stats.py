"""Attention entropy without the pattern: cost against the plain forward, on CPU or one CUDA GPU.

    python benchmarks/attention_stats.py                       # CPU, Llama-shaped small model, T = 512 2048
    python benchmarks/attention_stats.py --lengths 512 2048 8192 --repeats 3
    python benchmarks/attention_stats.py --device cuda --dtype bfloat16 --shapes pythia-410m llama-3.2-1b \\
        mistral-7b --lengths 512 2048 8192                     # what benchmarks/gpu_check.sh runs
    python benchmarks/attention_stats.py --cpu-smoke           # tiny shapes, T = 32, seconds (tested)

Models are built from configs with random weights (speed does not depend on them). For each shape and length
T (one sequence of T random tokens) three modes run the whole model:

``plain``   the HF forward with its own SDPA kernel (the reference cost);
``eager``   geoprobe's plain-torch backend capturing the ``pattern`` at every layer (the model switched to eager
            attention, ``[B, H, T, T]`` materialised) and reducing it to per-row entropies on the fly;
``eager-capture``  the same capture of the pattern with the entropy left out (what eager attention and
            the pattern copy cost alone);
``stream``  the same backend capturing post-rotary ``q``/``k`` during the SDPA forward and computing every
            row's entropy with :func:`geoprobe.attention_stats.attention_stats` (``method="auto"``: streaming
            over key blocks on CPU, flex attention with the keys as values on CUDA);
``stream-blocks``  the same with ``method="stream"`` forced (on CPU identical to ``stream``; the GPU check
            runs both).

Time: median of ``--repeats`` rounds after one warm-up, the modes interleaved within each round (one process,
one model), so load changes on a shared machine hit every mode alike. Peak memory: on CPU each (shape, T,
mode) runs one forward in a fresh subprocess; after building the model the kernel's resident-set high-water
mark is reset (``/proc/self/clear_refs``) and the figure is ``VmHWM - VmRSS`` around the forward, i.e. the
extra memory that forward needed (where the reset is not permitted, ``ru_maxrss`` minus the resident set
before the forward, flagged "lower bound"; ``--in-process`` is flagged likewise). On CUDA:
``torch.cuda.max_memory_allocated`` above what was allocated before the forward. Ratios are against
``plain`` of the same shape and T.

Correctness (``--check``): on a short left-padded batch, with the shape's model cut to 2 layers in float32,
the streaming (and on CUDA the flex) entropies from SDPA-captured q/k against the eager pattern's entropy.
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
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from geoprobe.attention_stats import attention_stats  # noqa: E402
from geoprobe.backends.info import info_from_hf_config  # noqa: E402
from geoprobe.backends.torch_hooks import hf_torch_handle  # noqa: E402
from geoprobe.infotheory import entropy_bits  # noqa: E402

MODES = ("plain", "eager", "eager-capture", "stream", "stream-blocks")


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


def build(name: str, max_len: int, device: str, dtype: torch.dtype, n_layers: int | None = None, seed: int = 0):
    """``(hf_model, handle)``: random weights, SDPA attention, on ``device`` in ``dtype``."""
    import transformers as tf

    cfg = shape_config(name, max_len)
    if n_layers is not None:
        cfg.num_hidden_layers = n_layers
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
    raise SystemExit(f"unknown mode {mode!r}; valid: {', '.join(MODES)}")


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
    return r["peak_mib"], r["peak_exact"]


def time_interleaved(name: str, t: int, modes: list[str], device: str, dtype: torch.dtype, repeats: int,
                     block_size: int, built=None) -> dict[str, float]:
    """Median seconds per mode; one warm-up each, then ``repeats`` rounds of every mode in turn (so a change
    in machine load during the run hits all modes alike)."""
    model, handle = built or build(name, t, device, dtype)
    tokens = _tokens(model.config.vocab_size, t, device)
    fwds = {m: make_forward(m, model, handle, tokens, block_size) for m in modes}
    times: dict[str, list[float]] = {m: [] for m in modes}
    for f in fwds.values():
        f()
    for _ in range(repeats):
        for m, f in fwds.items():
            _sync(device)
            t0 = time.perf_counter()
            f()
            _sync(device)
            times[m].append(time.perf_counter() - t0)
    return {m: statistics.median(v) for m, v in times.items()}


def measure(name: str, t: int, modes: list[str], device: str, dtype: torch.dtype, repeats: int, block_size: int,
            in_process: bool, built=None) -> list[dict]:
    """Rows ``{shape, T, mode, seconds, peak_mib, peak_exact}`` (``error`` instead, for a mode that ran out of
    memory)."""
    cuda = device.startswith("cuda")
    rows = {}
    for m in modes:
        try:
            if cuda or in_process:
                peak, exact = peak_memory(name, t, m, device, dtype, block_size, built, isolated=False)
            else:
                peak, exact = peak_memory_in_subprocess(name, t, m, str(dtype).removeprefix("torch."), block_size)
            rows[m] = {"shape": name, "T": t, "mode": m, "peak_mib": peak, "peak_exact": exact}
        except (torch.OutOfMemoryError, RuntimeError) as exc:
            if cuda:
                torch.cuda.empty_cache()
            rows[m] = {"shape": name, "T": t, "mode": m, "error": str(exc).splitlines()[0][:200]}
    ok = [m for m in modes if "error" not in rows[m]]
    try:
        for m, sec in time_interleaved(name, t, ok, device, dtype, repeats, block_size, built).items():
            rows[m].update(seconds=sec, repeats=repeats)
    except torch.OutOfMemoryError as exc:
        for m in ok:
            rows[m] = {"shape": name, "T": t, "mode": m, "error": str(exc).splitlines()[0][:200]}
    return list(rows.values())


def equality_check(name: str, device: str, t: int = 48, block_size: int = 16) -> list[dict]:
    """Max |H_stream - H_eager| (bits) over real query rows of a left-padded batch, float32, 2 layers."""
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    model, handle = build(name, t, device, torch.float32, n_layers=2, seed=1)
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
    methods = ["stream"] + (["auto"] if device.startswith("cuda") else [])
    rows = []
    for method in methods:
        err = 0.0
        used = method
        for layer in range(info.n_layers):
            want = entropy_bits(eager["pattern", layer])
            st = attention_stats(sdpa["rot_q", layer], sdpa["rot_k", layer], scale=info.attn_scale, attention_mask=mask,
                                 sliding_window=info.sliding_window, block_size=block_size, method=method)
            used = st.method
            err = max(err, (st.entropy_bits - want).abs().permute(0, 2, 1)[real].max().item())
        rows.append({"shape": name, "method": used, "max_abs_err_bits": err, "pass": err < 1e-5})
    return rows


def print_table(results: list[dict]) -> None:
    print(f"{'shape':<14} {'T':>6} {'mode':<13} {'time s':>9} {'x plain':>8} {'peak MiB':>10} {'x plain':>8}")
    base = {(r["shape"], r["T"]): r for r in results if r["mode"] == "plain" and "error" not in r}
    for r in results:
        if "error" in r:
            print(f"{r['shape']:<14} {r['T']:>6} {r['mode']:<13} failed: {r['error']}")
            continue
        b = base.get((r["shape"], r["T"]))
        tr = f"{r['seconds'] / b['seconds']:.2f}" if b else "-"
        exact = b and b.get("peak_exact", True) and r.get("peak_exact", True)
        mr = f"{r['peak_mib'] / b['peak_mib']:.2f}" if exact and b["peak_mib"] > 0 else "-"
        flag = "" if r.get("peak_exact", True) else " (lower bound)"
        print(f"{r['shape']:<14} {r['T']:>6} {r['mode']:<13} {r['seconds']:>9.3f} {tr:>8} {r['peak_mib']:>10.1f} "
              f"{mr:>8}{flag}")


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
    ap.add_argument("--cpu-smoke", action="store_true",
                    help="tiny shapes on CPU, T = 32, with the check, all in this process (seconds)")
    ap.add_argument("--in-process", action="store_true",
                    help="CPU: measure every configuration in this process (faster; memory is a lower bound)")
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    ap.add_argument("--child", nargs=3, metavar=("SHAPE", "T", "MODE"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    dtype = getattr(torch, a.dtype)
    if a.child:
        name, t, mode = a.child
        peak, exact = peak_memory(name, int(t), mode, "cpu", dtype, a.block_size)
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
          f"repeats={a.repeats} block_size={a.block_size}")
    checks: list[dict] = []
    if a.check:
        for name in shapes:
            checks += equality_check(name, a.device)
        for c in checks:
            print(f"equality {c['shape']:<14} method={c['method']:<7} max|H_stream - H_eager| = "
                  f"{c['max_abs_err_bits']:.2e} bits  {'PASS' if c['pass'] else 'FAIL'}", flush=True)
    results = []
    for name in shapes:
        built = build(name, max(lengths), a.device, dtype) if (cuda or a.in_process) else None
        for t in lengths:
            for r in measure(name, t, a.modes, a.device, dtype, a.repeats, a.block_size, a.in_process, built):
                results.append(r)
                print(json.dumps(r), file=sys.stderr, flush=True)
        built = None
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
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
