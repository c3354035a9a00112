"""Parameters and training throughput of every wind-tunnel architecture at a preset's sizes.

    python benchmarks/architectures.py [--task bijection] [--preset cpu] [--steps 20] [--repeats 3] [--json OUT]

For each architecture: parameter count (and its ratio to the transformer) and training sequences/second
(forward + backward + AdamW step on preset-sized batches; median over repeats of ``--steps`` steps, after one
warm-up step), printed as a Markdown table. Ratios against the transformer are measured in the same run.

Mamba baselines (add them to ``--archs``): ``mamba`` uses geoprobe's CPU selective scan
(``geoprobe/models/mamba_scan.py``); ``mamba-mambapy`` is the same model with transformers' ``mambapy`` parallel
scan, ``mamba-sequential`` with transformers' sequential reference loop.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from geoprobe.models import ARCHS, get_preset, n_params
from geoprobe.models.architectures import MambaSSM
from geoprobe.models.budget import train_rate
from geoprobe.tasks import make_task

#: Mamba with transformers' own CPU scans: name -> use_mambapy
MAMBA_BASELINES = {"mamba-mambapy": True, "mamba-sequential": False}


def build(arch_name: str, task, preset):
    """The architecture and a fresh model (a name of :data:`MAMBA_BASELINES`: Mamba with that scan)."""
    baseline = arch_name in MAMBA_BASELINES
    arch = MambaSSM(fast_cpu_scan=False) if baseline else ARCHS.get(arch_name)
    model = arch.build(task.vocab_size, preset.size, seed=0, n_features=task.n_features)
    if baseline:
        for layer in model.backbone.layers:
            layer.mixer.use_mambapy = MAMBA_BASELINES[arch_name]
    return arch, model


def train_rate_of(arch_name: str, task, preset, steps: int, repeats: int) -> float:
    arch, model = build(arch_name, task, preset)
    return train_rate(arch, model, task, preset.train, steps=steps, repeats=repeats)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="bijection")
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--archs", nargs="+", default=["transformer", "mamba", "lstm", "mlp"])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    preset = get_preset(args.task, args.preset)
    task = make_task(args.task, **preset.task_params)
    rows = []
    for name in args.archs:
        params = n_params(build(name, task, preset)[1])
        rows.append({"arch": name, "params": params, "train_seqs_per_s": train_rate_of(name, task, preset, args.steps,
                                                                                       args.repeats)})
    base = next((r for r in rows if r["arch"] == "transformer"), rows[0])
    print(f"task {args.task}, preset {args.preset}, batch {preset.train.batch_size}, seq_len {task.seq_len}, "
          f"torch threads {torch.get_num_threads()}\n")
    print("| arch | params | params / transformer | train seqs/s | speed / transformer |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['arch']} | {r['params']:,} | {r['params'] / base['params']:.3f} | {r['train_seqs_per_s']:.0f} | "
              f"{r['train_seqs_per_s'] / base['train_seqs_per_s']:.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
