"""Wall time of a ``tunnel compare`` grid through the local executor and through Ray, and their ratio.

    python benchmarks/sweep_speedup.py [--preset smoke] [--seeds 1] [--ray-cpus 2] [--repeats 1] [--json OUT]

Runs the default grid (bijection, hmm, recall x transformer, mamba, lstm, mlp, ``--seeds`` seeds) on the CPU into fresh
temporary folders: first ``--executor local``, then ``--executor ray`` on a local Ray instance with
``--ray-cpus`` CPUs (started and stopped inside the timed call, as the CLI does), ``--repeats`` times,
alternating. Prints each wall time, the summed per-cell wall times (the work done), the 1-minute load average
before each run (others' processes share the cores), and checks that both executors gave the same entropy MAE
in every cell. Speed-up = local wall time / Ray wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import pandas as pd

from geoprobe.compare import run_comparison

TASKS = ["bijection", "hmm", "recall"]
ARCHS = ["transformer", "mamba", "lstm", "mlp"]


def one(executor: str, preset: str, ray_cpus: int, seeds: int) -> dict:
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "grid"
        load = os.getloadavg()[0]
        t0 = time.perf_counter()
        if executor == "ray":
            from geoprobe.sweep.executors import RayExecutor

            with RayExecutor(num_cpus=ray_cpus):  # connection reused by run_comparison, stopped at the end
                run_comparison(out, TASKS, ARCHS, preset=preset, seeds=seeds, device="cpu", progress=False,
                               executor="ray")
        else:
            threads = torch.get_num_threads()
            torch.set_num_threads(1)  # as a 1-CPU Ray task
            try:
                run_comparison(out, TASKS, ARCHS, preset=preset, seeds=seeds, device="cpu", progress=False)
            finally:
                torch.set_num_threads(threads)
        wall = time.perf_counter() - t0
        cells = pd.read_csv(out / "cells.csv")
        return {"executor": executor, "wall_s": wall, "cells": len(cells), "load_1min_before": load,
                "sum_cell_wall_s": float(cells["cell_wall_time_s"].sum()),
                "mae": cells.set_index(["task", "arch", "seed"])["entropy_mae_bits"].to_dict()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="smoke")
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--ray-cpus", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--json")
    args = ap.parse_args()
    runs = []
    for _ in range(args.repeats):
        for ex in ("local", "ray"):
            runs.append(one(ex, args.preset, args.ray_cpus, args.seeds))
            r = runs[-1]
            print(f"{ex:5s} {r['cells']} cells: {r['wall_s']:6.1f} s wall, {r['sum_cell_wall_s']:6.1f} s summed cell "
                  f"time, load {r['load_1min_before']:.1f} before", flush=True)
    local = [r for r in runs if r["executor"] == "local"]
    ray = [r for r in runs if r["executor"] == "ray"]
    same = all(a["mae"] == b["mae"] for a in local for b in ray)
    speedup = sum(r["wall_s"] for r in local) / sum(r["wall_s"] for r in ray)
    print(f"speed-up (local / ray, {args.ray_cpus} Ray CPUs): {speedup:.2f}x; identical MAE in every cell: {same}")
    if args.json:
        Path(args.json).write_text(json.dumps({"runs": [{k: v for k, v in r.items() if k != "mae"} for r in runs],
                                               "speedup": speedup, "identical": same}, indent=2))


if __name__ == "__main__":
    main()
