"""Command-line interface: a thin argparse layer over the library.

    geoprobe demo [--out DIR]                      train + calibrate a bijection wind tunnel, HTML report
    geoprobe tunnel list                           tasks, architectures, presets
    geoprobe tunnel sample TASK --n N --seed S     sampled sequences as JSON lines
    geoprobe tunnel train TASK --preset P --out DIR [--seed S] [--device D] [--resume|--overwrite]
    geoprobe tunnel eval RUN [--lengths 20 30 50]
    geoprobe tunnel compare --tasks ... --archs ... --preset P --seeds N --out DIR
    geoprobe probe TARGET [--probes ...] --out DIR  geometric probes on a run folder or any HF model
    geoprobe doctor                                versions and devices

Errors the user can fix are printed as one line (``geoprobe: error: ...``) with exit code 2. Training stopped by
SIGINT or SIGTERM saves a consistent trainer state and exits 130 / 143; it continues with ``--resume``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from geoprobe.errors import ConfigError, GeoprobeError, TrainingInterrupted

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
                        target=args.target, bf16=args.bf16 or None, save_every=args.save_every)
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
    from geoprobe.io import is_empty_output, open_output, pending_replacement
    from geoprobe.models.checkpoint import MANIFEST, read_manifest
    from geoprobe.models.presets import get_preset
    from geoprobe.models.run import evaluate_run, train_tunnel

    out = Path(args.out)
    pending = pending_replacement(out)
    finished = (out / MANIFEST).exists() and read_manifest(out).get("status") == "finished"
    if finished and not args.overwrite and pending is None:
        print(f"{out} already holds a trained demo run; re-evaluating it (use --overwrite to retrain)")
        with open_output(out, kind="tunnel-run", resume=True) as output:
            metrics = evaluate_run(output.work, device=args.device, progress=True)
    else:
        preset = get_preset("bijection", args.preset)
        resume = not args.overwrite and (pending is not None or not is_empty_output(out))
        try:
            metrics = train_tunnel(out, "bijection", preset, seed=args.seed, device=args.device, resume=resume,
                                   overwrite=args.overwrite)
        except TrainingInterrupted as exc:  # demo resumes by itself: say so instead of "--resume"
            raise TrainingInterrupted(exc.signum, str(exc).replace(
                "continue with --resume", "rerun 'geoprobe demo' (without --overwrite) to continue")) from None
    _print_metrics(metrics, out)
    return 0


def cmd_probe(args: argparse.Namespace) -> int:
    """Run the geometric probes on a wind-tunnel run folder or any loadable model."""
    from dataclasses import replace

    from geoprobe.io import open_output
    from geoprobe.probes.suite import PROBES, run_probes
    from geoprobe.probes.suites import load_suite, suite_prompts_path
    from geoprobe.probes.targets import is_run_dir, llm_target, tunnel_target

    for name in args.probes or []:
        PROBES.get(name)  # unknown probe names fail before anything is loaded or written
    suite = load_suite(args.suite) if args.suite else None
    opts = suite.options if suite is not None else None
    explicit = {"n_boot": args.n_boot, "seed": args.seed, "manifold_site": args.manifold_site,
                "manifold_positions": args.manifold_positions,
                "layers": tuple(args.layers) if args.layers else None}
    from geoprobe.probes.contract import ProbeOptions

    opts = replace(opts or ProbeOptions(), **{k: v for k, v in explicit.items() if v is not None})
    args.seed = opts.seed
    staged = open_output(args.out, kind="probe", inputs=(args.target, args.prompts), overwrite=args.overwrite,
                         staged=True, resume_hint=False)  # validated and locked; written complete or not at all
    init = None
    if is_run_dir(args.target):  # a run folder, RUN/model or RUN/checkpoints/step_N
        target = tunnel_target(args.target, n=args.n or 512, seed=args.seed, backend=args.backend,
                               device=args.device, dtype=args.dtype, task=args.task,
                               trust_remote_code=args.trust_remote_code)
        from geoprobe.models.checkpoint import list_checkpoints

        ckpts = list_checkpoints(target.run_dir)
        if ckpts and ckpts[0][0] == 0:
            from geoprobe.backends import load_model

            init = load_model(ckpts[0][1], backend=args.backend, device=args.device, dtype=args.dtype)
    else:
        if args.task is not None:
            raise ConfigError("--task applies to wind-tunnel run folders; for a language model use --prompts")
        prompts = args.prompts or (suite_prompts_path(suite) if suite is not None else None)
        n = args.n or (suite.prompts.get("n") if suite is not None else None)
        target = llm_target(args.target, prompts_path=prompts, n=n, seed=args.seed,
                            backend=args.backend, device=args.device, dtype=args.dtype, revision=args.revision,
                            trust_remote_code=args.trust_remote_code)
    report = run_probes(target, args.probes or (list(suite.probes) if suite is not None and suite.probes else None),
                        opts, init_handle=init, suite=suite, progress=not args.quiet)
    out = staged.commit(report.save)
    for name, summ in report.summary.items():
        brief = {k: v for k, v in summ.items() if not isinstance(v, (dict, list)) or k == "by_criterion"}
        print(f"{name}: {json.dumps(brief, default=str)[:400]}")
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
    parser = argparse.ArgumentParser(prog="geoprobe", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="train and calibrate a bijection wind tunnel on CPU (minutes)")
    demo.add_argument("--out", default="runs/demo")
    demo.add_argument("--preset", default="cpu")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--device", default="auto")
    demo.add_argument("--overwrite", action="store_true",
                      help="retrain from scratch (the old run is replaced only when the new one is finished)")
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
    train.add_argument("--save-every", type=int, metavar="N",
                       help="save the resumable trainer state every N steps (default: the preset's)")
    group = train.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true",
                       help="continue an interrupted run in --out (same settings; a finished run is refused)")
    group.add_argument("--overwrite", action="store_true",
                       help="replace a run geoprobe wrote in --out; the old run stays until the new one finishes")
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
    probe.add_argument("--probes", nargs="+", help="probes to run (default: the suite's, else all that apply)")
    probe.add_argument("--suite", help="probe suite: a .toml file (e.g. probes/paper3-llm.toml) or a built-in "
                                       "name (paper1-tunnels, paper3-llm); its criteria give the verdict")
    probe.add_argument("--task", help="wind-tunnel task (must match the run's own task)")
    probe.add_argument("--out", required=True)
    probe.add_argument("--n", type=int, help="sequences (tunnels, default 512) or prompts (models)")
    probe.add_argument("--prompts", help="prompt file: one per line, or JSON lines with text/prompt/question")
    probe.add_argument("--layers", type=int, nargs="+", help="layers for value_manifold/entropy_axis")
    probe.add_argument("--manifold-site", choices=["values", "residual"],
                       help="value-manifold variant: value vectors (default) or the residual stream")
    probe.add_argument("--manifold-positions", choices=["final", "all_positions"],
                       help="value-manifold samples (default: all supervised positions for tunnels, final for LLMs)")
    probe.add_argument("--seed", type=int, help="seed of the inputs and resampling (default: the suite's, else 0)")
    probe.add_argument("--n-boot", type=int, help="bootstrap resamples for CIs (default: the suite's, else 1000)")
    probe.add_argument("--backend", default="transformer_lens", help="transformer_lens, nnsight or torch")
    probe.add_argument("--device", default="auto")
    probe.add_argument("--dtype", default="float32",
                       help="float32, bfloat16, float16, or auto (keep the checkpoint's dtype) weights")
    probe.add_argument("--revision", help="hub revision (branch, tag or commit)")
    probe.add_argument("--trust-remote-code", action="store_true",
                       help="let transformers run Python code shipped with the model (off by default)")
    probe.add_argument("--overwrite", action="store_true",
                       help="replace an --out folder geoprobe wrote, once the new result is complete")
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
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except GeoprobeError as exc:
        print(f"geoprobe: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # output piped into e.g. `head`: not an error
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except TrainingInterrupted as exc:
        print(f"geoprobe: {exc}", file=sys.stderr)
        return 128 + exc.signum
    except KeyboardInterrupt:
        print("geoprobe: interrupted; finished work is kept (training runs continue with --resume)",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        from geoprobe.io import Output

        Output.close_all()  # release locks (and drop unfinished staging) of a command that stopped early


if __name__ == "__main__":
    raise SystemExit(main())
