"""Measure the wind-tunnel calibration targets of issue 2: train a preset, report wall time and MAE.

    python benchmarks/tunnel_targets.py --task bijection --preset cpu --out runs/bench-bijection-cpu
    python benchmarks/tunnel_targets.py --task hmm --preset cpu --out runs/bench-hmm-cpu

Prints one JSON record (task, preset, device, threads, steps, wall time, steps/s, the time at which the
periodic evaluation first reached 0.05 and 0.01 bits, final per-sample / mean-of-means MAE, KL, length
generalisation) and writes it to OUT/benchmark.json. Targets: cpu bijection <= 0.05 bits within 15 minutes on
2 cores; paper presets <= 0.01 bits.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from geoprobe.io import write_json
from geoprobe.models.presets import get_preset
from geoprobe.models.run import resolve_device, train_tunnel
from geoprobe.tunnel_report import read_log


def first_time_below(log: list[dict], threshold: float) -> dict | None:
    for rec in log:
        if rec.get("entropy_mae_bits", 1e9) <= threshold:
            return {"step": rec["step"], "wall_time_s": round(rec["wall_time_s"], 1)}
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="bijection")
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--arch", default="transformer")
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--steps", type=int)
    ap.add_argument("--bf16", action="store_true")
    args = ap.parse_args(argv)
    device = resolve_device(args.device)
    preset = get_preset(args.task, args.preset, steps=args.steps, bf16=args.bf16 or None)
    t0 = time.perf_counter()
    metrics = train_tunnel(args.out, args.task, preset, arch_name=args.arch, seed=args.seed, device=device,
                           overwrite=True, progress=sys.stderr.isatty())
    total = time.perf_counter() - t0
    manifest = json.loads((Path(args.out) / "manifest.json").read_text())
    log = read_log(Path(args.out))
    record = {
        "task": args.task, "preset": args.preset, "arch": args.arch, "seed": args.seed, "device": device,
        "torch_threads": torch.get_num_threads(), "steps": preset.train.steps,
        "batch_size": preset.train.batch_size, "n_params": manifest.get("n_params"),
        "train_wall_time_s": round(manifest["train_wall_time_s"], 1), "total_wall_time_s": round(total, 1),
        "steps_per_s": round(preset.train.steps / manifest["train_wall_time_s"], 2),
        "first_below_0.05_bits": first_time_below(log, 0.05),
        "first_below_0.01_bits": first_time_below(log, 0.01),
        "entropy_mae_bits": metrics["entropy_mae_bits"],
        "entropy_mae_se_bits": metrics["entropy_mae_se_bits"],
        "entropy_mae_mean_of_means_bits": metrics["entropy_mae_mean_of_means_bits"],
        "kl_bits": metrics["kl_bits"],
        "length_generalisation": {
            k: v.get("entropy_mae_bits", v.get("skipped"))
            for k, v in metrics.get("length_generalisation", {}).get("results", {}).items()
        },
    }
    write_json(Path(args.out) / "benchmark.json", record)
    print(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
