"""The scan's measurement pass against a plain HF forward and TransformerLens ``run_with_cache``, on CPU.

    python benchmarks/scan_speed.py                          # SmolLM2 GGUF, math domain, 75 prompts
    python benchmarks/scan_speed.py --repeats 7 --mem-n 75 300 1000 --json out.json
    python benchmarks/scan_speed.py --model tiny --n 10 --repeats 1 --mem-n 10 20   # seconds (smoke: no
                                                             # selection, the tiny word model has no math)
    python benchmarks/scan_speed.py --model llama-3.2-1b --device cuda --dtype bfloat16 --full-scan
                                                             # what benchmarks/gpu_check.sh runs on a GPU

``--context T`` lengthens every selected prompt to at least T tokens (other math prompts prefixed, so it ends the
same way), e.g. T = 128 for the issue's CPU goal at longer contexts; ``--modes`` times a subset.

``--model tiny-bytes`` is the same with 2 layers of width 64 (the GPU check's CPU smoke run).
``--model llama-3.2-1b`` builds a Llama-3.2-1B-shaped model (16 layers, d_model 2048, 32 query / 8 KV heads,
vocabulary 128256) with random weights and a byte-level tokenizer (one token per UTF-8 byte) in a temporary
folder: the speed of a forward does not depend on the weights, and random weights still give distinct
next-token entropies for the selection. On CUDA, times are synchronised and the memory column is
``torch.cuda.max_memory_allocated`` above what was allocated before each mode (in process). ``--full-scan``
also runs ``geoprobe.scan`` end to end once (math domain, ``--n`` prompts per set, SULA off) on that device and
dtype and prints its execution record (backend, attention kernel, dtypes) and stage timings.

Prompts: the built-in ``math`` pool (300 candidates, seed 0) scored by the model and entropy-stratified exactly as
``geoprobe scan --domain math`` does (``--n`` per set, 5 bins); every mode below runs THOSE prompts, in the
same length-bucketed batches the scan uses (``--batch-size`` rows, each batch left-padded only to its own
longest prompt), on the backend the scan chooses (plain torch hooks; the model keeps its SDPA kernel).

Time modes (median of ``--repeats`` rounds after one warm-up round; the modes are interleaved within each round,
in one process and on one model, so load changes on a shared machine hit all of them alike):

``plain``        ``model(input_ids, attention_mask, position_ids)``: the plain HF SDPA forward a user would run,
                 logits ``[B, T, vocab]`` included (the reference: ratios are against it);
``plain-body``   the same forward without the unembedding (``model.model(...)``): the strictest baseline,
                 since the scan pass never computes logits;
``scan-pass``    the scan's measurement pass (:func:`geoprobe.probes.suite.collect_needs` for the
                 paper3-llm suite): one forward per batch capturing post-rotary q/k and values at every layer,
                 reduced on the fly (final-token values and keys, final-row attention entropy per head from
                 q/k, final-query/key cosine maps), stopped before the final norm and unembedding;
``scan-stage``   the scan's whole probe stage for the set: the pass plus every statistic (bootstrap CIs with
                 ``--n-boot`` resamples, PCA at every layer, nulls): what ``geoprobe scan`` spends per set;
``tl-cache``     TransformerLens 4.x ``TransformerBridge.run_with_cache`` (every hook cached, eager attention)
                 over the same batches, each batch's cache dropped before the next.

Memory (``--mem-n``): for each number of prompts N a fresh subprocess loads the model, takes the first N prompts
of the math pool (no selection: the next-token entropies are stand-ins, memory does not depend on them), runs
one one-prompt forward (the first forward of a process costs ~400 MiB once for SmolLM2: lazy set-up), resets
the kernel's resident-set high-water mark (``/proc/self/clear_refs``) and runs the measurement pass, then
(mark reset again) the whole probe stage (pass and statistics, including the value manifold's and key
orthogonality's fresh-weights null model: a second copy of the model); each figure is ``VmHWM - VmRSS`` around
it: the extra memory that step needed, with the model already resident. "kept" is the size of what the pass
hands to the probes (reduced activations).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

GGUF = ROOT.parent / "shared" / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
MODES = ("plain", "plain-body", "scan-pass", "scan-stage", "tl-cache")


def byte_tokenizer(folder: Path) -> None:
    """A byte-level BPE tokenizer without merges (one token per UTF-8 byte, ids 0..255) saved in ``folder``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    tok = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(sorted(alphabet))}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=sorted(alphabet)[0],
                            pad_token=sorted(alphabet)[0]).save_pretrained(folder)


def random_llama_1b(folder: Path, tiny: bool = False) -> str:
    """A Llama-3.2-1B-shaped causal LM with random weights (bf16 safetensors) + :func:`byte_tokenizer`
    (``tiny``: the same layout at 2 layers, d_model 64, 4 query / 2 KV heads, 256-byte vocabulary)."""
    import transformers as tf

    if tiny:
        cfg = tf.LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                             intermediate_size=128, vocab_size=256, max_position_embeddings=2048,
                             tie_word_embeddings=True, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    else:
        cfg = tf.LlamaConfig(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                             intermediate_size=8192, vocab_size=128256, max_position_embeddings=131072,
                             rope_theta=500000.0, tie_word_embeddings=True, bos_token_id=0, eos_token_id=0,
                             pad_token_id=0)
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = tf.LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(folder, safe_serialization=True)
    byte_tokenizer(folder)
    return str(folder)


def model_path(name: str) -> str:
    if name in ("llama-3.2-1b", "tiny-bytes"):
        return random_llama_1b(Path(tempfile.mkdtemp(prefix="geoprobe-bench-")) / "llama-1b",
                               tiny=name == "tiny-bytes")
    if name == "gguf":
        if not GGUF.exists():
            raise SystemExit(f"{GGUF} not found; use --model tiny")
        return str(GGUF)
    if name == "tiny":
        sys.path.insert(0, str(ROOT / "tests"))
        from conftest import build_tiny_model

        folder = Path(tempfile.mkdtemp(prefix="geoprobe-bench-")) / "llama"
        return str(build_tiny_model("llama", folder))
    return name


def _status_kb(key: str) -> int | None:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return None


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def lengthen(texts: list[str], pool: list[str], tokenizer: Any, tokens: int) -> list[str]:
    """Each text preceded by the next pool texts (cyclically) until it has at least ``tokens`` tokens: long
    prompts that still end with the selected prompt."""
    out = []
    for i, t in enumerate(texts):
        j = i
        while len(tokenizer(t)["input_ids"]) < tokens:
            j += 1
            t = pool[j % len(pool)] + "\n" + t
        out.append(t)
    return out


def setup(model: str, n: int, batch_size: int, n_boot: int, *, select: bool = True, device: str = "cpu",
          dtype: str = "float32", context: int | None = None) -> dict[str, Any]:
    """The loaded handle, the prompts (selected as the scan selects them), the scan's target and needs."""
    from geoprobe.backends import load_model
    from geoprobe.probes.contract import PROBES, ProbeState
    from geoprobe.scan import driver
    from geoprobe.scan.pools import build_pool
    from geoprobe.scan.select import select_prompts

    opts = driver.ScanOptions(domain="math", n=n, n_boot=n_boot, batch_size=batch_size, device=device, dtype=dtype)
    backend, why = driver.choose_backend(opts)
    handle = load_model(model, backend=backend, device=device, dtype=dtype)
    if select:
        cands = build_pool("math", max(300, n), seed=0)
        sel = select_prompts(handle, cands, n_per_bin=n // 5, n_bins=5, seed=0, batch_size=batch_size)
        texts = [c.text for c in sel.selected]
        ent = [float(sel.entropies[cands.index(c)]) for c in sel.selected]
    else:
        texts = [c.text for c in build_pool("math", n, seed=0)]
        ent = [float(i % 7) for i in range(n)]
    if context:
        texts = lengthen(texts, [c.text for c in build_pool("math", 300, seed=1)], handle.tokenizer, context)
    target = driver.measurement_target(handle, texts, opts, batch_size, ent)
    su, popts = driver._probe_options(handle, opts)
    state = ProbeState(target=target, options=popts)
    needs = [x for p in su.probes for x in PROBES.get(p).needs(state)]
    return {"handle": handle, "texts": texts, "entropies": ent, "opts": opts, "target": target, "state": state,
            "needs": needs, "backend": backend, "backend_choice": why, "driver": driver, "device": device,
            "dtype": dtype}


def make_modes(s: dict[str, Any], model: str) -> dict[str, Any]:
    from geoprobe.backends.batches import length_batches
    from geoprobe.backends.hf_hooks import forward_kwargs
    from geoprobe.probes.suite import collect_needs
    from geoprobe.scan.batching import BatchSizer

    h, t, driver = s["handle"], s["target"], s["driver"]
    dev = h.device
    batches = [(b.take(t.tokens).to(dev), b.take(t.attention_mask).to(dev))
               for b in length_batches(t.attention_mask, t.batch_size, bucket=True)]
    hf = h.hf_model

    def plain() -> None:
        with torch.no_grad():
            for tok, m in batches:
                hf(tok, **forward_kwargs(h.info, m))

    def plain_body() -> None:
        with torch.no_grad():
            for tok, m in batches:
                hf.model(tok, **forward_kwargs(h.info, m))

    def scan_pass() -> None:
        collect_needs(s["state"], s["needs"])

    def scan_stage() -> None:
        driver._probe_stage(h, "math", s["texts"], s["opts"], BatchSizer(t.batch_size), driver.Stages(None),
                            entropies=s["entropies"])

    modes = {"plain": plain, "plain-body": plain_body, "scan-pass": scan_pass, "scan-stage": scan_stage}
    try:
        from geoprobe.backends import load_model

        tl = load_model(model, backend="transformer_lens", device=s["device"], dtype=s["dtype"]).bridge

        def tl_cache() -> None:
            with torch.no_grad():
                for tok, m in batches:
                    _, cache = tl.run_with_cache(tok, attention_mask=m)
                    del cache

        modes["tl-cache"] = tl_cache
    except Exception as exc:  # noqa: BLE001  (report, keep the other numbers)
        print(f"# tl-cache skipped: {type(exc).__name__}: {exc}", file=sys.stderr)
    return modes


def time_part(s: dict[str, Any], model: str, repeats: int, only: list[str] | None = None) -> dict[str, Any]:
    modes = make_modes(s, model)
    modes = {m: f for m, f in modes.items() if not only or m in only}
    times: dict[str, list[float]] = {m: [] for m in modes}
    cuda = s["device"].startswith("cuda")
    peak: dict[str, float] = {}
    for r in range(repeats + 1):
        for name, fn in modes.items():
            gc.collect()
            if cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
            _sync(s["device"])
            t0 = time.perf_counter()
            fn()
            _sync(s["device"])
            if r:  # round 0 is the warm-up
                times[name].append(time.perf_counter() - t0)
            if cuda:
                peak[name] = max(peak.get(name, 0.0), (torch.cuda.max_memory_allocated() - base) / 2**20)
    med = {m: statistics.median(v) for m, v in times.items()}
    t = s["target"]
    lens = t.attention_mask.sum(1)
    return {"median_s": med, "all_s": times, "cuda_peak_extra_mib": peak or None,
            "ratio_to_plain": {m: med[m] / med["plain"] for m in med},
            "ratio_to_plain_body": {m: med[m] / med["plain-body"] for m in med} if "plain-body" in med else {},
            "n_prompts": t.n, "tokens": int(lens.sum()), "prompt_tokens": [int(lens.min()), int(lens.max())]}


def full_scan(model: str, args: argparse.Namespace) -> dict[str, Any]:
    """``geoprobe.scan`` end to end (math domain, SULA off) on ``args.device``/``args.dtype``; prints the
    execution record and checks that the statistics came back in float32."""
    from geoprobe.scan import driver

    t0 = time.perf_counter()
    res = driver.run_scan(model, domain="math", n=args.n, sula=False, n_boot=min(args.n_boot, 200),
                          device=args.device, dtype=args.dtype, batch_size=args.batch_size)
    s = res.report.summary
    ex = s["execution"]
    print(f"# full scan on {args.device} {args.dtype}: {time.perf_counter() - t0:.1f} s; backend {ex['backend']}, "
          f"attention {ex['attention_implementation']}, weights {ex['weights_dtype']}, statistics "
          f"{ex['statistics_dtype']}; verdict mixed {s['verdict']['grade']}; timings "
          f"{res.report.manifest['timings_s']}")
    vals = res.report.rows["value"].dropna()
    assert str(vals.dtype) == "float64" and bool(vals.map(lambda x: x == x).all())
    return {"execution": ex, "timings_s": res.report.manifest["timings_s"], "verdict": s["verdict"]["grade"]}


CHILD_FLAG = "--child-memory"


def _peak_extra_mib(fn: Any) -> tuple[Any, float, bool]:
    """``fn()``, and the resident-set high-water mark above the resident set before it (MiB); exact when the
    kernel let us reset the mark (``/proc/self/clear_refs``), else ``ru_maxrss``-based (a lower bound)."""
    gc.collect()
    exact = True
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        exact = False
    base = _status_kb("VmRSS") or 0
    out = fn()
    return out, ((_status_kb("VmHWM") or 0) - base) / 1024, exact


def memory_child(model: str, n: int, batch_size: int, n_boot: int) -> None:
    from geoprobe.probes.suite import collect_needs
    from geoprobe.scan.batching import BatchSizer

    s = setup(model, n, batch_size, n_boot, select=False)
    driver = s["driver"]
    t = s["target"]  # warm-up: the first forward of a process costs ~400 MiB once (lazy weight/kernel set-up)
    t.handle.run(t.tokens[:1], t.attention_mask[:1], sites=["rot_q", "rot_k", "v"])
    collected, pass_peak, exact = _peak_extra_mib(lambda: collect_needs(s["state"], s["needs"]))
    kept = sum(t.numel() * t.element_size() for d in collected.values() for t in d.values()) / 2**20
    del collected
    rep, peak, exact2 = _peak_extra_mib(lambda: driver._probe_stage(
        s["handle"], "math", s["texts"], s["opts"], BatchSizer(batch_size), driver.Stages(None),
        entropies=s["entropies"]))
    print(json.dumps({"n": n, "pass_peak_extra_mib": pass_peak, "collected_mib": kept, "peak_extra_mib": peak,
                      "exact": exact and exact2, "rows": len(rep.rows),
                      "tokens": int(s["target"].attention_mask.sum())}))


def memory_part(model: str, ns: list[int], batch_size: int, n_boot: int) -> list[dict[str, Any]]:
    """One subprocess per number of prompts; each table row is printed as soon as its child finishes."""
    print("| prompts | tokens | measurement pass: peak extra MiB | kept after the pass MiB | whole probe "
          "stage: peak extra MiB |")
    print("|---|---|---|---|---|", flush=True)
    out = []
    for n in ns:
        cmd = [sys.executable, str(Path(__file__).resolve()), CHILD_FLAG, model, str(n), str(batch_size),
               str(n_boot)]
        r = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
        if r.returncode:
            raise RuntimeError(f"memory child n={n} failed: {r.stderr.strip().splitlines()[-1:]}")
        row = json.loads(r.stdout.strip().splitlines()[-1])
        flag = "" if row["exact"] else " (lower bound)"
        print(f"| {row['n']} | {row['tokens']} | {row['pass_peak_extra_mib']:.1f}{flag} | "
              f"{row['collected_mib']:.2f} | {row['peak_extra_mib']:.1f}{flag} |", flush=True)
        out.append(row)
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == [CHILD_FLAG]:
        memory_child(argv[1], int(argv[2]), int(argv[3]), int(argv[4]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="gguf", help="'gguf' (SmolLM2 from ../shared), 'tiny', 'llama-3.2-1b', "
                                                    "'tiny-bytes' (its 2-layer version: smoke runs), or a path")
    ap.add_argument("--n", type=int, default=75, help="selected prompts (a multiple of 5)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--mem-n", type=int, nargs="*", default=[75, 300, 1000])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--full-scan", action="store_true", help="also run geoprobe.scan end to end once")
    ap.add_argument("--modes", nargs="+", choices=MODES, help="time only these modes (plain always runs)")
    ap.add_argument("--context", type=int, help="lengthen every selected prompt to at least this many tokens by "
                                                 "prefixing other math prompts (it still ends the same way)")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    model = model_path(args.model)
    s = setup(model, args.n, args.batch_size, args.n_boot, select=args.model != "tiny", device=args.device,
              dtype=args.dtype, context=args.context)
    record: dict[str, Any] = {"model": model, "backend": s["backend"], "backend_choice": s["backend_choice"],
                              "attention_implementation": s["handle"].attention_implementation,
                              "torch_threads": torch.get_num_threads(), "batch_size": args.batch_size}
    record["time"] = time_part(s, model, args.repeats, ["plain", *args.modes] if args.modes else None)
    tm = record["time"]
    sys.stdout.reconfigure(line_buffering=True)
    print(f"# {tm['n_prompts']} math prompts ({tm['prompt_tokens'][0]}-{tm['prompt_tokens'][1]} tokens, "
          f"{tm['tokens']} in all), batches of {args.batch_size} in length buckets, backend {s['backend']} "
          f"({record['attention_implementation']}), {record['torch_threads']} thread(s), median of "
          f"{args.repeats}")
    mem = tm["cuda_peak_extra_mib"] or {}
    print("| mode | median s | / plain | / plain-body |" + (" CUDA peak extra MiB |" if mem else ""))
    print("|---|---|---|---|" + ("---|" if mem else ""))
    body = "plain-body" in tm["median_s"]
    for m, v in tm["median_s"].items():
        rb = f"{tm['ratio_to_plain_body'][m]:.2f}x" if body else "-"
        print(f"| {m} | {v:.3f} | {tm['ratio_to_plain'][m]:.2f}x | {rb} |"
              + (f" {mem.get(m, float('nan')):.0f} |" if mem else ""))
    if args.full_scan:
        if args.json:  # the time part is kept even if the end-to-end scan fails
            Path(args.json).write_text(json.dumps(record, indent=2))
        try:
            record["full_scan"] = full_scan(model, args)
        except Exception as exc:
            record["full_scan_error"] = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:300]}"
            if args.json:
                Path(args.json).write_text(json.dumps(record, indent=2))
            raise
    if args.mem_n and not args.device.startswith("cuda"):
        del s
        gc.collect()
        if args.json:  # the time part is kept even if a memory child is interrupted
            Path(args.json).write_text(json.dumps(record, indent=2))
        record["memory"] = memory_part(model, args.mem_n, args.batch_size, args.n_boot)
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
