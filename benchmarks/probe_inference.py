"""Inference cost of probing: backend overhead vs plain Hugging Face, and memory vs number of prompts.

    python benchmarks/probe_inference.py [--model PATH|gguf] [--repeats 5] [--json OUT]
    python benchmarks/probe_inference.py --only-stats --stats-t 256 512 1024 2048   # part 3 only

Part 1 (time, median of repeats, ratios against plain HF SDPA forward measured in the same run):
plain HF forward; each backend's logits-only forward; capture of q/k at all layers; capture of the attention
pattern (eager) at all layers.

Part 2 (memory): peak resident memory of a fresh process that computes final-row attention entropy for N
prompts, (a) reducing on the fly through ``handle.run(..., reducer=...)`` and (b) caching the full patterns,
for growing N. The reducer's peak must stay flat in N; the cache's grows with N.

Part 3 (``--stats-t``; memory of the attention statistics vs sequence length T): peak extra resident memory of
a fresh process per (T, mode) for every row's attention entropy at every layer of one sequence of T tokens:
``qk-forward`` (post-rotary q/k captured during the SDPA forward, entropies streamed over key blocks by
:func:`geoprobe.attention_stats.attention_stats`) vs ``pattern-forward`` (eager attention, the ``[1, H, T, T]``
pattern captured and reduced), and the statistics alone from given q/k of the model's shape:
``qk-stats`` (streaming) vs ``pattern-stats`` (softmax of the full scores, then the entropy). The streaming
statistics stay flat in T (O(T) outputs plus one ``block_size^2`` tile per head); the pattern grows as T^2.
The high-water mark is reset before each measurement (``/proc/self/clear_refs``; where not permitted the
figure is ``ru_maxrss``-based, a lower bound, and flagged).

Default model: the real SmolLM2-135M in ../shared/models (converted once from GGUF); ``--model tiny`` builds a
random Pythia-like GPT-NeoX instead.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
GGUF = ROOT.parent / "shared" / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"


def tiny_neox(folder: Path) -> Path:
    import transformers as tf
    from tokenizers import Tokenizer, models, pre_tokenizers

    cfg = tf.GPTNeoXConfig(vocab_size=512, hidden_size=256, num_hidden_layers=6, num_attention_heads=8,
                           intermediate_size=1024, max_position_embeddings=4096, rotary_pct=0.25)
    torch.manual_seed(0)
    tf.GPTNeoXForCausalLM(cfg).save_pretrained(folder)
    names = ["<pad>"] + [f"w{i}" for i in range(1, 512)]
    tok = Tokenizer(models.WordLevel(vocab={n: i for i, n in enumerate(names)}, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tf.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<pad>").save_pretrained(folder)
    return folder


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def time_part(model: str, batch: int, seq: int, repeats: int) -> dict:
    from geoprobe.backends import load_hf_model, load_model

    hf, _ = load_hf_model(model, attn_implementation="sdpa")
    vocab = hf.config.vocab_size
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(10, vocab - 1, (batch, seq), generator=g)
    res = {"batch": batch, "seq": seq}
    with torch.no_grad():
        base = timed(lambda: hf(tokens), repeats)
    res["hf_sdpa_forward_s"] = round(base, 4)
    L = hf.config.num_hidden_layers
    for backend in ("transformer_lens", "nnsight", "torch"):
        h = load_model(model, backend=backend, device="cpu")
        for label, sites in (("logits", ["logits"]), ("capture_qk", ["rot_q", "rot_k"]), ("capture_pattern", ["pattern"])):
            def run(h=h, sites=sites):
                if sites == ["logits"]:
                    h.logits(tokens)
                else:
                    h.run(tokens, sites=sites, layers=list(range(L)), reducer=lambda a: None)
            t = timed(run, repeats)
            res[f"{backend}/{label}_ratio"] = round(t / base, 3)
    return res


MEM_CHILD = r"""
import resource, sys, torch
from geoprobe.backends import load_model
from geoprobe.infotheory import entropy_bits
model, n, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
h = load_model(model, device="cpu")
g = torch.Generator().manual_seed(0)
tokens = torch.randint(10, h.info.vocab_size - 1, (n, 128), generator=g)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
kept = []
if mode == "reduce":
    h.run(tokens, sites=["pattern"], positions="all", batch_size=8,
          reducer=lambda a: kept.append(entropy_bits(a.value[:, :, -1], dim=-1)))
else:
    acts = h.run(tokens, sites=["pattern"], positions="all", batch_size=8)
    kept = [acts.stack("pattern")]
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print((after - before) / 1024)
"""


STATS_CHILD = r"""
import json, math, resource, sys
from pathlib import Path
import torch
from geoprobe.attention_stats import attention_stats
from geoprobe.backends import load_model
from geoprobe.infotheory import entropy_bits
model, t, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
h = load_model(model, backend="torch", device="cpu")
info = h.info
g = torch.Generator().manual_seed(0)
tokens = torch.randint(10, info.vocab_size - 1, (1, t), generator=g)
h.run(tokens[:, :8], sites=["rot_q", "rot_k"], reducer=lambda a: None)  # lazy set-up outside the measurement
held, kept = {}, []
if mode.endswith("-stats"):
    q = torch.randn(1, t, info.n_heads, info.d_head, generator=g)
    k = torch.randn(1, t, info.n_kv_heads, info.d_head, generator=g)
def status(key):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
def reduce_qk(act):
    held[act.site] = act.value
    if "rot_q" in held and "rot_k" in held:
        kept.append(attention_stats(held.pop("rot_q"), held.pop("rot_k"), scale=info.attn_scale,
                                    sliding_window=info.sliding_window).entropy_bits)
exact = True
try:
    Path("/proc/self/clear_refs").write_text("5")
except OSError:
    exact = False
base = status("VmRSS")
if mode == "qk-forward":
    h.run(tokens, sites=["rot_q", "rot_k"], reducer=reduce_qk)
elif mode == "pattern-forward":
    h.run(tokens, sites=["pattern"], reducer=lambda a: kept.append(entropy_bits(a.value)))
elif mode == "qk-stats":
    kept.append(attention_stats(q, k, scale=info.attn_scale).entropy_bits)
else:
    kr = k.repeat_interleave(info.n_heads // info.n_kv_heads, dim=2)
    s = torch.einsum("bqhd,bkhd->bhqk", q, kr) * info.attn_scale
    s.masked_fill_(torch.ones(t, t, dtype=torch.bool).triu(1), -math.inf)
    kept.append(entropy_bits(torch.softmax(s, -1)))
peak = (status("VmHWM") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) - base
print(json.dumps({"peak_extra_mib": peak / 1024, "exact": exact, "kept": len(kept)}))
"""
STATS_MODES = ("qk-forward", "pattern-forward", "qk-stats", "pattern-stats")


def stats_memory_part(model: str, lengths: list[int]) -> dict:
    """Peak extra MiB per (mode, T), one fresh process each; prints a markdown table as rows arrive."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    print("| mode | " + " | ".join(f"T={t}" for t in lengths) + " |", flush=True)
    print("|---|" + "---|" * len(lengths), flush=True)
    out = {}
    for mode in STATS_MODES:
        cells = []
        for t in lengths:
            r = subprocess.run([sys.executable, "-c", STATS_CHILD, model, str(t), mode], capture_output=True,
                               text=True, env=env, cwd=ROOT)
            if r.returncode:
                raise RuntimeError(r.stderr[-2000:])
            row = json.loads(r.stdout.strip().splitlines()[-1])
            out[f"{mode}/T={t}_peak_extra_MiB"] = round(row["peak_extra_mib"], 1)
            cells.append(f"{row['peak_extra_mib']:.1f}" + ("" if row["exact"] else " (lower bound)"))
        print(f"| {mode} | " + " | ".join(cells) + " |", flush=True)
    return out


def memory_part(model: str, ns: list[int]) -> dict:
    out = {}
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for mode in ("reduce", "cache"):
        for n in ns:
            r = subprocess.run([sys.executable, "-c", MEM_CHILD, model, str(n), mode], capture_output=True,
                               text=True, env=env, cwd=ROOT)
            if r.returncode:
                raise RuntimeError(r.stderr[-2000:])
            out[f"{mode}/n={n}_peak_extra_MiB"] = round(float(r.stdout.strip().splitlines()[-1]), 1)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="gguf", help="'gguf' (SmolLM2 from ../shared), 'tiny', or a path")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--mem-n", type=int, nargs="+", default=[16, 64, 256])
    ap.add_argument("--stats-t", type=int, nargs="*", default=[256, 512, 1024, 2048],
                    help="sequence lengths of part 3 (statistics memory vs T); none: skip it")
    ap.add_argument("--only-stats", action="store_true", help="run part 3 only")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="geoprobe-bench-"))
    if args.model == "tiny":
        model = str(tiny_neox(tmp / "neox"))
    elif args.model == "gguf":
        if not GGUF.exists():
            raise SystemExit(f"{GGUF} not found; use --model tiny")
        model = str(GGUF)
    else:
        model = args.model
    record = {"model": model, "torch_threads": torch.get_num_threads()}
    if args.stats_t:
        record["stats_memory_vs_T"] = stats_memory_part(model, args.stats_t)
    if not args.only_stats:
        record["time"] = time_part(model, args.batch, args.seq, args.repeats)
        record["memory"] = memory_part(model, args.mem_n)
    print(json.dumps(record, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
