"""The prepared GPU check: correctness and cost of attention statistics without the pattern, in sections.

    python benchmarks/gpu_check.py --out DIR                  # one CUDA GPU, no network, about 7 minutes
    python benchmarks/gpu_check.py --smoke --out DIR          # the same sections on tiny shapes, CPU (tested)
    python benchmarks/gpu_check.py --only correctness t2048   # a subset (section names start with these)

Each section runs in its own Python process under a time limit, most important first, so an out-of-memory
error, a kernel that does not build or a hung compile costs that section only; rows measured before a limit
hit are kept (``--jsonl``). Time a section does not use passes on to the next; sections that find less than
10 s of the total budget left are skipped and listed. Sections (real mode; the smoke mode swaps in tiny shapes of the same families,
T = 32 / 16 / 64 for 2048 / 512 / 8192, bfloat16 weights on CPU, and merges shapes into one section each):

1. ``correctness``: per shape (Pythia-410M-shaped GPT-NeoX, Llama-3.2-1B-shaped GQA, Mistral-7B-shaped GQA
   with a sliding window), 2 layers in float32 on a left-padded batch: streaming and flex entropies of every
   row and of the final row against the eager pattern's (pass: < 1e-5 bits), and flex against stream on
   bfloat16 q/k (``benchmarks/attention_stats.py --check-only``).
2. ``t2048-<shape>`` (T = 2048 then 512) and 3. ``t8192-<shape>``: the full-size model in bfloat16, random
   weights, one sequence of T tokens; modes ``plain`` (HF SDPA forward, the reference), ``plain-body``,
   ``scan-pass`` (the scan's measurement pass), ``stream`` (every row's entropy, flex on CUDA),
   ``stream-blocks`` (forced key-block streaming), ``eager`` (the pattern), then ``tl-cache``
   (TransformerLens ``run_with_cache``; skipped with the reason when its cache cannot fit or TransformerLens
   is not installed). Median time of 3 and CUDA peak memory above the weights, both also as ratios to plain.
4. ``scan``: ``benchmarks/scan_speed.py`` on a Llama-3.2-1B-shaped model with a byte-level tokenizer: 25
   entropy-selected math prompts, plain vs the scan's pass and probe stage vs ``run_with_cache`` (median of
   2), then one end-to-end ``geoprobe.scan`` (selection, probes, causal stage; SULA off) whose statistics
   must come back in float32.

Device time: the section limits sum to 425 s (``CAPS``); with the environment probe and the wheel install the
whole run takes at most about 7.5 minutes, less when sections finish early (the flex kernels' compile time is
the unknown: each distinct shape compiles once per process).

Writes into ``--out`` (default ``$OUT``, else ``./gpu_check_out``): ``gpu_check.json`` (environment, sections
with status/seconds, every check and row), ``gpu_check.md`` (the tables), ``rows.jsonl``, ``scan.json``,
``gpu_check.log`` (every section's output). Exit status 0 when every check passes and no section or mode
failed, else 1 (skipped modes with a stated reason do not fail it).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHAPES = ("pythia-410m", "llama-3.2-1b", "mistral-7b")
TINY = {"pythia-410m": "tiny-neox", "llama-3.2-1b": "tiny-llama", "mistral-7b": "tiny-mistral"}
MODES = ["plain", "plain-body", "scan-pass", "stream", "stream-blocks", "eager", "tl-cache"]
#: seconds each section may use (unused time passes on); the sum is the default total budget
#: (correctness compiles up to 9 flex kernels: 3 head layouts x all rows / final row / bf16, ~5-15 s each)
CAPS = {"correctness": 100, "t2048-pythia-410m": 40, "t2048-llama-3.2-1b": 45, "t2048-mistral-7b": 60,
        "t8192-pythia-410m": 30, "t8192-llama-3.2-1b": 35, "t8192-mistral-7b": 50, "scan": 65}
SMOKE_CAPS = {"correctness": 120, "t2048": 240, "t8192": 120, "scan": 180}  # safety nets on a loaded CPU
MIN_SECTION_S = 10


def sections(smoke: bool, jsonl: Path, scan_json: Path) -> list[tuple[str, list[str], int]]:
    """``(name, command, cap seconds)`` in the order they run."""
    py = [sys.executable]
    bench = [*py, str(HERE / "attention_stats.py"), "--jsonl", str(jsonl)]
    if smoke:
        shapes = [TINY[s] for s in SHAPES]
        dev = ["--device", "cpu", "--in-process", "--block-size", "16", "--repeats", "1"]
        out = [("correctness", [*bench, "--check-only", "--device", "cpu", "--shapes", *shapes],
                SMOKE_CAPS["correctness"]),
               ("t2048", [*bench, *dev, "--dtype", "bfloat16", "--shapes", *shapes, "--lengths", "32", "16",
                          "--modes", *MODES], SMOKE_CAPS["t2048"]),
               ("t8192", [*bench, *dev, "--dtype", "bfloat16", "--shapes", shapes[2], "--lengths", "64",
                          "--modes", *MODES], SMOKE_CAPS["t8192"]),
               ("scan", [*py, str(HERE / "scan_speed.py"), "--model", "tiny-bytes", "--n", "10", "--repeats", "1",
                         "--n-boot", "20", "--mem-n", "--dtype", "bfloat16", "--full-scan", "--json",
                         str(scan_json)], SMOKE_CAPS["scan"])]
        return out
    dev = ["--device", "cuda", "--dtype", "bfloat16", "--block-size", "512", "--repeats", "3"]
    out = [("correctness", [*bench, "--check-only", "--device", "cuda", "--shapes", *SHAPES], CAPS["correctness"])]
    for lengths in (["2048", "512"], ["8192"]):
        for s in SHAPES:
            name = f"t{lengths[0]}-{s}"
            out.append((name, [*bench, *dev, "--shapes", s, "--lengths", *lengths, "--modes", *MODES], CAPS[name]))
    out.append(("scan", [*py, str(HERE / "scan_speed.py"), "--model", "llama-3.2-1b", "--device", "cuda",
                         "--dtype", "bfloat16", "--n", "25", "--repeats", "2", "--n-boot", "200", "--mem-n",
                         "--full-scan", "--json", str(scan_json)], CAPS["scan"]))
    return out


def environment() -> dict:
    """Versions and the device, from a child process (the parent never initialises CUDA)."""
    code = ("import json, torch, transformers as tf\n"
            "from geoprobe.attention_stats import flex_available\n"
            "try:\n import transformer_lens; tl = transformer_lens.__version__ if hasattr(transformer_lens, "
            "'__version__') else 'yes'\nexcept Exception as e: tl = f'not importable: {type(e).__name__}'\n"
            "cuda = torch.cuda.is_available()\n"
            "print(json.dumps({'python': __import__('sys').version.split()[0], 'torch': torch.__version__, "
            "'transformers': tf.__version__, 'transformer_lens': tl, 'flex_attention': flex_available(), "
            "'cuda': cuda, 'gpu': torch.cuda.get_device_name(0) if cuda else None, "
            "'gpu_memory_gib': round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1) if cuda "
            "else None}))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ.copy())
    if r.returncode:
        return {"error": (r.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(r.stdout.strip().splitlines()[-1])


def run_section(cmd: list[str], limit: float, log) -> tuple[str, int | None, float]:
    """Run ``cmd`` in its own process group for at most ``limit`` seconds: ``(status, returncode, seconds)``."""
    t0 = time.perf_counter()
    log.write(f"\n$ {' '.join(cmd)}\n")
    log.flush()
    p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy(), start_new_session=True)
    try:
        rc = p.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        return "timed out", None, time.perf_counter() - t0
    return ("ok" if rc == 0 else "failed"), rc, time.perf_counter() - t0


def read_jsonl(path: Path) -> tuple[list[dict], list[dict]]:
    checks, rows = [], []
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                (checks if r.pop("kind") == "check" else rows).append(r)
    return checks, rows


def markdown(env: dict, secs: list[dict], checks: list[dict], rows: list[dict], scan: dict | None,
             total: float, smoke: bool) -> str:
    sys.path.insert(0, str(HERE))
    from attention_stats import table_lines

    out = [f"# geoprobe GPU check{' (CPU smoke run: tiny shapes, numbers mean nothing)' if smoke else ''}", "",
           f"{env.get('gpu') or 'CPU'}; torch {env.get('torch')}, transformers {env.get('transformers')}, "
           f"TransformerLens {env.get('transformer_lens')}, flex attention {env.get('flex_attention')}; "
           f"total {total:.0f} s.", "", "## Sections", "", "| section | status | seconds | limit s |", "|---|---|---|---|"]
    out += [f"| {s['name']} | {s['status']} | {s['seconds']:.1f} | {s['limit_s']:.0f} |" for s in secs]
    out += ["", "## Correctness (max |H - H_eager| over real query rows, bits; pass < 1e-5)", "",
            "| shape | check | method | max abs err | pass |", "|---|---|---|---|---|"]
    for c in checks:
        err = f"{c['max_abs_err_bits']:.2e}" if "max_abs_err_bits" in c else f"failed: {c.get('error')}"
        out.append(f"| {c['shape']} | {c['check']} | {c['method']} | {err} | {'PASS' if c['pass'] else 'FAIL'} |")
    out += ["", "## Time and peak memory (ratios to the plain HF SDPA forward of the same shape and T)", ""]
    out += table_lines(rows)
    if scan and "time" in scan:
        tm = scan["time"]
        mem = tm.get("cuda_peak_extra_mib") or {}
        out += ["", f"## The scan path ({tm['n_prompts']} math prompts, {tm['tokens']} tokens)", "",
                "| mode | median s | x plain | peak extra MiB |", "|---|---|---|---|"]
        out += [f"| {m} | {v:.3f} | {tm['ratio_to_plain'][m]:.2f} | "
                f"{mem[m]:.0f} |" if m in mem else f"| {m} | {v:.3f} | {tm['ratio_to_plain'][m]:.2f} | - |"
                for m, v in tm["median_s"].items()]
        if "full_scan_error" in scan:
            out += ["", f"End-to-end scan failed: {scan['full_scan_error']}"]
        if "full_scan" in scan:
            ex = scan["full_scan"]["execution"]
            out += ["", f"End-to-end scan: backend {ex['backend']}, attention {ex['attention_implementation']}, "
                        f"weights {ex['weights_dtype']}, statistics {ex['statistics_dtype']}; stage seconds "
                        f"{scan['full_scan']['timings_s']}."]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on CPU: proves every section runs")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "gpu_check_out"))
    ap.add_argument("--budget", type=float, default=None, help="total seconds for all sections (default: the "
                                                                 "sum of the section limits: 425 real, 300 smoke)")
    ap.add_argument("--only", nargs="+", default=None, help="run only sections whose names start with these")
    a = ap.parse_args(argv)
    t_start = time.perf_counter()
    env = environment()
    print(f"# gpu_check{' --smoke' if a.smoke else ''}: {json.dumps(env)}", flush=True)
    if not a.smoke and not env.get("cuda"):
        print("gpu_check: error: no CUDA GPU visible (use --smoke on CPU)", file=sys.stderr)
        return 2
    a.out.mkdir(parents=True, exist_ok=True)
    jsonl, scan_json = a.out / "rows.jsonl", a.out / "scan.json"
    for f in (jsonl, scan_json):  # this script's own outputs of an earlier run
        f.unlink(missing_ok=True)
    plan = sections(a.smoke, jsonl, scan_json)
    if a.only:
        plan = [s for s in plan if any(s[0].startswith(o) for o in a.only)]
    budget = a.budget if a.budget is not None else float(sum(c for _, _, c in plan))
    secs: list[dict] = []
    spare = 0.0
    with (a.out / "gpu_check.log").open("w") as log:
        for name, cmd, cap in plan:
            left = budget - (time.perf_counter() - t_start)
            limit = min(cap + spare, left)
            if left < MIN_SECTION_S:
                secs.append({"name": name, "status": "skipped: no time left", "seconds": 0.0, "limit_s": limit})
                print(f"# section {name}: skipped (no time left)", flush=True)
                continue
            status, rc, sec = run_section(cmd, limit, log)
            spare = max(0.0, limit - sec)
            secs.append({"name": name, "status": status, "returncode": rc, "seconds": sec, "limit_s": limit})
            print(f"# section {name}: {status} in {sec:.1f} s (limit {limit:.0f} s)", flush=True)
    checks, rows = read_jsonl(jsonl)
    scan = json.loads(scan_json.read_text()) if scan_json.exists() else None
    total = time.perf_counter() - t_start
    record = {"smoke": a.smoke, "environment": env, "sections": secs, "checks": checks, "rows": rows,
              "scan": scan, "total_s": total}
    (a.out / "gpu_check.json").write_text(json.dumps(record, indent=2))
    md = markdown(env, secs, checks, rows, scan, total, a.smoke)
    (a.out / "gpu_check.md").write_text(md)
    print(md, flush=True)
    bad = ([f"section {s['name']} {s['status']}" for s in secs if s["status"] != "ok"]
           + [c["shape"] + ": " + c["check"] for c in checks if not c["pass"]]
           + [f"{r['shape']} T={r['T']} {r['mode']}" for r in rows if "error" in r])
    if not checks and any(s["name"] == "correctness" for s in secs):
        bad.append("no correctness check ran")
    print(f"gpu_check: {'FAILED: ' + '; '.join(bad) if bad else 'ok'}; total {total:.1f} s; results in {a.out}",
          flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
