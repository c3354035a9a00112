"""Command-line interface: a thin argparse layer over the library.

    geoprobe demo [--out DIR]                      train + calibrate a bijection wind tunnel, HTML report
    geoprobe tunnel list                           tasks, architectures, presets
    geoprobe tunnel sample TASK --n N --seed S     sampled sequences as JSON lines
    geoprobe tunnel train TASK --preset P --out DIR [--seed S] [--device D] [--resume|--overwrite]
    geoprobe tunnel eval RUN [--lengths 20 30 50]
    geoprobe tunnel compare --tasks ... --archs ... --preset P --seeds N --out DIR
    geoprobe probe TARGET [--probes ...] --out DIR  geometric probes on a run folder or any HF model
    geoprobe gradients RUN --out DIR               Paper II: routing law, value step, EM-like schedule
    geoprobe doctor                                versions and devices

Errors the user can fix are printed as one line (``geoprobe: error: ...``) with exit code 2; an interrupted
training run keeps its trainer state and continues with ``--resume``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from geoprobe.errors import ConfigError, GeoprobeError

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def parse_assignment(text: str) -> tuple[str, Any]:
    """``key=value`` with the value read as JSON where possible (``V=10``, ``replacement=true``)."""
    if "=" not in text:
        raise ConfigError(f"expected KEY=VALUE, got {text!r}")
    key, raw = text.split("=", 1)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip(), value


def _task_params(assignments: list[str] | None) -> dict[str, Any]:
    return dict(parse_assignment(a) for a in (assignments or []))


# ---------------------------------------------------------------------------------------------- tunnel


def cmd_tunnel_list(args: argparse.Namespace) -> int:
    from geoprobe.models import ARCHS, PRESET_NAMES
    from geoprobe.tasks import TASKS, make_task

    print("tasks:")
    for name in TASKS:
        task = make_task(name)
        print(f"  {name:<12} {task.summary}  defaults: {task.config()}")
    print("architectures: " + ", ".join(ARCHS.names()))
    print("presets: " + ", ".join(PRESET_NAMES))
    return 0


def cmd_tunnel_sample(args: argparse.Namespace) -> int:
    from geoprobe.tasks import make_generator, make_task

    if args.n < 1:
        raise ConfigError(f"--n must be >= 1, got {args.n}")
    task = make_task(args.task, **_task_params(args.set))
    batch = task.sample(args.n, make_generator(args.seed, args.split))
    names = task.token_names()
    for i in range(args.n):
        mask = batch.loss_mask[i]
        pos = mask.nonzero().squeeze(1)
        record = {
            "task": task.name,
            "config": task.config(),
            "tokens": batch.tokens[i].tolist(),
            "text": " ".join(names[t] for t in batch.tokens[i].tolist()),
            "supervised_positions": pos.tolist(),
            "answers": [names[int(batch.readout_ids[a])] for a in batch.labels[i][mask].tolist() if a >= 0],
            "bayes_entropy_bits": [round(float(h), 6) for h in batch.bayes_entropy[i][mask]],
        }
        if batch.features is not None:  # continuous inputs (e.g. linreg: x at X slots, y at Y slots)
            record["features"] = [[round(float(v), 4) for v in row] for row in batch.features[i]]
        if args.probs:
            record["bayes_probs"] = [[round(float(p), 6) for p in row] for row in batch.target_probs[i][mask]]
        print(json.dumps(record))
    return 0


def cmd_tunnel_train(args: argparse.Namespace) -> int:
    from geoprobe.models.presets import get_preset
    from geoprobe.models.run import train_tunnel
    from geoprobe.tasks import TASKS

    TASKS.get(args.task)  # an unknown task is reported as such, before presets are looked up
    preset = get_preset(args.task, args.preset, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                        target=args.target, bf16=args.bf16 or None)
    metrics = train_tunnel(args.out, args.task, preset, arch_name=args.arch, seed=args.seed,
                           device=args.device, resume=args.resume, overwrite=args.overwrite,
                           task_overrides=_task_params(args.set), progress=not args.quiet)
    _print_metrics(metrics, Path(args.out))
    return 0


def cmd_tunnel_eval(args: argparse.Namespace) -> int:
    from geoprobe.models.run import evaluate_run

    metrics = evaluate_run(args.run, lengths=args.lengths, device=args.device, n_sequences=args.n,
                           progress=not args.quiet)
    _print_metrics(metrics, Path(args.run))
    return 0


def cmd_tunnel_compare(args: argparse.Namespace) -> int:
    from geoprobe.compare import markdown_table, run_comparison

    res = run_comparison(args.out, args.tasks, args.archs, preset=args.preset, seeds=args.seeds,
                         device=args.device, mae_threshold=args.mae_threshold, acc_threshold=args.acc_threshold,
                         progress=not args.quiet, budget_minutes=args.budget_minutes)
    print(markdown_table(res["table"]), end="")
    print(res["criteria"])
    for arch, v in res["verdicts"].items():
        untested = f"; untested (time budget) {', '.join(v['untested'])}" if v["untested"] else ""
        print(f"{arch}: realises {', '.join(v['realises']) or 'none'}; fails {', '.join(v['fails']) or 'none'}"
              f"{untested}")
    print(f"wrote {Path(args.out) / 'table.md'}, table.csv, cells.csv, verdicts.json and report.html")
    return 0


def _print_metrics(metrics: dict[str, Any], run_dir: Path) -> None:
    print(f"entropy MAE (per-sample)  {metrics['entropy_mae_bits']:.4f} ± {metrics['entropy_mae_se_bits']:.4f} bits")
    print(f"entropy MAE (mean-of-means) {metrics['entropy_mae_mean_of_means_bits']:.4f} bits")
    print(f"KL(Bayes || model)        {metrics['kl_bits']:.4f} bits")
    if metrics.get("deterministic_accuracy") is not None:
        print(f"accuracy (deterministic)  {metrics['deterministic_accuracy']:.4f}")
    for length, res in metrics.get("length_generalisation", {}).get("results", {}).items():
        value = f"{res['entropy_mae_bits']:.4f} bits" if "entropy_mae_bits" in res else res.get("skipped")
        print(f"  length {length}: {value}")
    print(f"wrote {run_dir / 'metrics.json'} and {run_dir / 'report.html'}")


def cmd_demo(args: argparse.Namespace) -> int:
    """Train the cpu-preset bijection wind tunnel (or continue/re-evaluate it) and write the report."""
    from geoprobe.models.checkpoint import is_finished_run
    from geoprobe.models.presets import get_preset
    from geoprobe.models.run import evaluate_run, train_tunnel

    out = Path(args.out)
    if is_finished_run(out) and not args.overwrite:
        print(f"{out} already holds a trained demo run; re-evaluating it (use --overwrite to retrain)")
        metrics = evaluate_run(out, device=args.device, progress=True)
    else:
        preset = get_preset("bijection", args.preset)
        metrics = train_tunnel(out, "bijection", preset, seed=args.seed, device=args.device,
                               resume=out.exists() and not args.overwrite, overwrite=args.overwrite)
    _print_metrics(metrics, out)
    return 0


def cmd_probe(args: argparse.Namespace) -> int:
    """Run the geometric probes on a wind-tunnel run folder or any loadable model."""
    from geoprobe.io import prepare_output_dir
    from geoprobe.probes.suite import PROBES, ProbeOptions, run_probes
    from geoprobe.probes.targets import is_run_dir, llm_target, tunnel_target

    for name in args.probes or []:
        PROBES.get(name)  # unknown probe names fail before anything is loaded or written
    out = prepare_output_dir(args.out, overwrite=args.overwrite)
    init = None
    if is_run_dir(args.target):
        if args.task is not None:
            from geoprobe.models.checkpoint import read_manifest

            own = read_manifest(args.target)["task"]["name"]
            if args.task != own:
                raise ConfigError(f"{args.target} was trained on task {own!r}, not {args.task!r}")
        target = tunnel_target(args.target, n=args.n or 512, seed=args.seed, backend=args.backend,
                               device=args.device, dtype=args.dtype)
        from geoprobe.models.checkpoint import list_checkpoints

        ckpts = list_checkpoints(args.target)
        if ckpts and ckpts[0][0] == 0:
            from geoprobe.backends import load_model

            init = load_model(ckpts[0][1], backend=args.backend, device=args.device, dtype=args.dtype)
    else:
        if args.task is not None:
            raise ConfigError("--task applies to wind-tunnel run folders; for a language model use --prompts")
        target = llm_target(args.target, prompts_path=args.prompts, n=args.n, seed=args.seed,
                            backend=args.backend, device=args.device, dtype=args.dtype, revision=args.revision)
    layers = tuple(args.layers) if args.layers else None
    report = run_probes(target, args.probes, ProbeOptions(
        n_boot=args.n_boot, seed=args.seed, layers=layers, manifold_site=args.manifold_site,
        manifold_positions=args.manifold_positions),
                        init_handle=init, progress=not args.quiet)
    report.save(out)
    from geoprobe.report_text import summary_table

    print(summary_table(report.summary), end="")
    print(f"wrote {out / 'summary.json'}, {out / 'results.csv'} and {out / 'report.html'}")
    return 0


def cmd_gradients(args: argparse.Namespace) -> int:
    """Paper II on a wind-tunnel run: the routing law on its heads, a value step, the EM-like schedule."""
    from geoprobe.gradients.tunnel import gradients_report
    from geoprobe.io import prepare_output_dir
    from geoprobe.report_text import summary_table

    out = prepare_output_dir(args.out, overwrite=args.overwrite)
    report = gradients_report(args.run, n=args.n, seed=args.seed, em_steps=args.em_steps,
                              multipliers=tuple(args.value_lr_multipliers))
    report.save(out)
    print(summary_table(report.summary), end="")
    print(f"wrote {out / 'summary.json'}, {out / 'results.csv'} and {out / 'report.html'}")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    import importlib.util
    import platform

    import torch

    import geoprobe

    print(f"geoprobe {geoprobe.__version__}, python {platform.python_version()}, torch {torch.__version__}")
    print(f"cuda available: {torch.cuda.is_available()}"
          + (f" ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else ""))
    for mod in ("transformers", "transformer_lens", "nnsight", "gguf", "plotly"):
        spec = importlib.util.find_spec(mod)
        if spec is None:
            print(f"{mod}: not installed")
            continue
        from importlib.metadata import PackageNotFoundError, version

        try:
            print(f"{mod}: {version(mod.replace('_', '-'))}")
        except PackageNotFoundError:
            print(f"{mod}: installed")
    return 0


# ---------------------------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    from geoprobe import __version__

    parser = argparse.ArgumentParser(prog="geoprobe", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log geoprobe's steps to stderr")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="train and calibrate a bijection wind tunnel on CPU (minutes)")
    demo.add_argument("--out", default="runs/demo")
    demo.add_argument("--preset", default="cpu")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--device", default="auto")
    demo.add_argument("--overwrite", action="store_true", help="retrain from scratch")
    demo.set_defaults(func=cmd_demo)

    tunnel = sub.add_parser("tunnel", help="wind tunnels: sample, train, evaluate").add_subparsers(
        dest="tunnel_command", required=True)
    lst = tunnel.add_parser("list", help="tasks, architectures and presets")
    lst.set_defaults(func=cmd_tunnel_list)

    sample = tunnel.add_parser("sample", help="print sampled sequences as JSON lines")
    sample.add_argument("task")
    sample.add_argument("--n", type=int, default=3)
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--split", default="train", help="sample stream: train, eval or test")
    sample.add_argument("--set", action="append", metavar="KEY=VALUE", help="task parameter, e.g. V=10")
    sample.add_argument("--probs", action="store_true", help="include the full Bayes distributions")
    sample.set_defaults(func=cmd_tunnel_sample)

    train = tunnel.add_parser("train", help="train a wind-tunnel model and calibrate it")
    train.add_argument("task")
    train.add_argument("--preset", default="cpu")
    train.add_argument("--out", required=True)
    train.add_argument("--arch", default="transformer")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    train.add_argument("--set", action="append", metavar="KEY=VALUE", help="task parameter override")
    train.add_argument("--steps", type=int)
    train.add_argument("--batch-size", type=int)
    train.add_argument("--lr", type=float)
    train.add_argument("--target", choices=["hard", "soft"], help="training target (default: task's)")
    train.add_argument("--bf16", action="store_true", help="bfloat16 autocast")
    group = train.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    group.add_argument("--overwrite", action="store_true", help="delete --out first")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(func=cmd_tunnel_train)

    ev = tunnel.add_parser("eval", help="re-evaluate a saved run against the exact posterior")
    ev.add_argument("run")
    ev.add_argument("--lengths", type=int, nargs="+", help="also evaluate at these lengths (e.g. HMM K)")
    ev.add_argument("--n", type=int, default=2048, help="evaluation sequences")
    ev.add_argument("--device", default="auto")
    ev.add_argument("--quiet", action="store_true")
    ev.set_defaults(func=cmd_tunnel_eval)

    probe = sub.add_parser("probe", help="geometric probes on a run folder or a model (HF folder, hub id, GGUF)")
    probe.add_argument("target", help="wind-tunnel run folder, local HF folder, hub id or .gguf file")
    probe.add_argument("--probes", nargs="+", help="probes to run (default: all that apply)")
    probe.add_argument("--task", help="wind-tunnel task (must match the run's own task)")
    probe.add_argument("--out", required=True)
    probe.add_argument("--n", type=int, help="sequences (tunnels, default 512) or prompts (models)")
    probe.add_argument("--prompts", help="prompt file: one per line, or JSON lines with text/prompt/question")
    probe.add_argument("--layers", type=int, nargs="+", help="layers for value_manifold/entropy_axis")
    probe.add_argument("--manifold-site", default="values", choices=["values", "residual"],
                       help="value-manifold variant: value vectors (default) or the residual stream")
    probe.add_argument("--manifold-positions", choices=["final", "all_positions"],
                       help="value-manifold samples (default: all supervised positions for tunnels, final for LLMs)")
    probe.add_argument("--seed", type=int, default=0)
    probe.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for CIs")
    probe.add_argument("--backend", default="transformer_lens", help="transformer_lens, nnsight or torch")
    probe.add_argument("--device", default="auto")
    probe.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16 weights")
    probe.add_argument("--revision", help="hub revision (branch, tag or commit)")
    probe.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    probe.add_argument("--quiet", action="store_true")
    probe.set_defaults(func=cmd_probe)

    cmp_ = tunnel.add_parser("compare", help="train/evaluate a task x architecture x seed grid and tabulate")
    cmp_.add_argument("--tasks", nargs="+", default=["bijection", "hmm", "recall"])
    cmp_.add_argument("--archs", nargs="+", default=["transformer", "mamba", "lstm", "mlp"])
    cmp_.add_argument("--preset", default="cpu")
    cmp_.add_argument("--seeds", type=int, default=1)
    cmp_.add_argument("--out", required=True)
    cmp_.add_argument("--device", default="auto")
    cmp_.add_argument("--mae-threshold", type=float, default=0.05, help="pass threshold, bits")
    cmp_.add_argument("--acc-threshold", type=float, default=0.9, help="pass threshold for recall accuracy")
    cmp_.add_argument("--budget-minutes", type=float,
                      help="finish in about this many minutes: each new cell's steps are fitted to an equal share")
    cmp_.add_argument("--quiet", action="store_true")
    cmp_.set_defaults(func=cmd_tunnel_compare)

    doctor = sub.add_parser("doctor", help="versions and devices")
    doctor.set_defaults(func=cmd_doctor)

    grad = sub.add_parser("gradients", help="Paper II on a wind-tunnel run: routing law, value step, EM schedule")
    grad.add_argument("run", help="wind-tunnel run folder (GPT-2 'transformer' architecture)")
    grad.add_argument("--out", required=True, help="output folder for summary.json, results.csv, report.html")
    grad.add_argument("--n", type=int, default=64, help="test sequences for the routing-law check")
    grad.add_argument("--seed", type=int, default=0, help="random seed (test sequences, schedule runs)")
    grad.add_argument("--em-steps", type=int, default=200,
                      help="training steps per EM-like schedule run (0 skips the schedule comparison)")
    grad.add_argument("--value-lr-multipliers", type=float, nargs="+", default=[1.0, 10.0],
                      help="value learning rate = lr x m for each m (1 = ordinary training)")
    grad.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    grad.set_defaults(func=cmd_gradients)

    from geoprobe.cli_help import apply_help

    return apply_help(parser)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from geoprobe.logs import configure_cli_logging

    configure_cli_logging(args.verbose)
    try:
        return int(args.func(args) or 0)
    except GeoprobeError as exc:
        print(f"geoprobe: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # output piped into e.g. `head`: not an error
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("geoprobe: interrupted; finished work is kept (training runs continue with --resume)",
              file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    raise SystemExit(main())
