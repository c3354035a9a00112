"""Sampling throughput of every registered wind tunnel (default parameters).

For each task in :data:`geoprobe.tasks.TASKS`, times ``task.sample(n, generator)`` ``--repeats`` times (after one
warm-up call) and reports the median sequences per second as a Markdown table; ``--json PATH`` also writes the
numbers. Runs on CPU with the current torch thread setting (set ``OMP_NUM_THREADS`` to control it).

    python benchmarks/sampling.py --n 4096 --repeats 5 [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from geoprobe.tasks import TASKS, make_generator, make_task


def measure(name: str, n: int, repeats: int, seed: int = 0) -> dict:
    """Median throughput of sampling ``n`` sequences of task ``name`` (default parameters)."""
    task = make_task(name)
    gen = make_generator(seed, "train")
    task.sample(min(n, 64), gen)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        task.sample(n, gen)
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {
        "task": name,
        "config": task.config(),
        "seq_len": task.seq_len,
        "n": n,
        "repeats": repeats,
        "median_s": median,
        "seqs_per_s": n / median,
        "tokens_per_s": n * task.seq_len / median,
    }


def markdown(rows: list[dict]) -> str:
    lines = ["| task | config | seq_len | seqs/s |", "|---|---|---|---|"]
    for r in rows:
        cfg = ", ".join(f"{k}={v}" for k, v in r["config"].items())
        lines.append(f"| {r['task']} | {cfg} | {r['seq_len']} | {r['seqs_per_s']:,.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4096, help="sequences per sample() call (default 4096)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per task; the median is reported")
    parser.add_argument("--tasks", nargs="*", default=None, help="subset of task names (default: all)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.n < 1 or args.repeats < 1:
        parser.error("--n and --repeats must be >= 1")
    names = args.tasks or TASKS.names()
    for name in names:
        TASKS.get(name)  # unknown names fail early with the valid choices
    rows = [measure(name, args.n, args.repeats) for name in names]
    print(
        f"n={args.n}, repeats={args.repeats}, torch {torch.__version__}, threads={torch.get_num_threads()}, "
        f"{platform.processor() or platform.machine()}"
    )
    print(markdown(rows))
    if args.json is not None:
        payload = {
            "n": args.n,
            "repeats": args.repeats,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "machine": platform.machine(),
            "results": rows,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
