"""Command-line interface: a thin argparse layer over the library.

    geoprobe demo [--out DIR]                      train + calibrate a bijection wind tunnel, HTML report
    geoprobe tunnel list                           tasks, architectures, presets
    geoprobe tunnel sample TASK --n N --seed S     sampled sequences as JSON lines
    geoprobe tunnel train TASK --preset P --out DIR [--seed S] [--device D] [--resume|--overwrite]
    geoprobe tunnel eval RUN [--lengths 20 30 50]
    geoprobe tunnel compare --tasks ... --archs ... --preset P --seeds N --out DIR
                 [--executor local|ray] [--ray-address ADDR] [--max-retries K]   cells as Ray tasks
    geoprobe probe TARGET [--probes ...] --out DIR  geometric probes on a run folder or any HF model
    geoprobe scan MODEL [--domain math] --out DIR  Paper III on a language model: stratified prompts, signatures, SULA
    geoprobe scan MODEL --revisions R1 R2 ... --out DIR [--executor ray]   training checkpoints, same prompts,
                                                   trajectory and frame-precision settling table
    geoprobe scan M1 M2 ... --out DIR [--executor ray]   several models: one scan each, then the cross-model table
    geoprobe scan-table DIR1 DIR2 ... [--out F]    cross-model table and prediction scorecard from saved scans
    geoprobe gradients RUN --out DIR               Paper II: routing law, value step, EM-like schedule
    geoprobe paper2 em-vs-sgd --out DIR            Paper II: SGD vs EM-like schedule on the toy head, 5 seeds
    geoprobe paper2 routing --out DIR              Paper II: the routing law measured step by step in training
    geoprobe doctor                                versions and devices

Errors the user can fix are printed as one line (``geoprobe: error: ...``) with exit code 2, also for bad
command-line syntax and for sizes that do not fit in memory. Training stopped by SIGINT or SIGTERM saves a
consistent trainer state and exits 130 / 143; it continues with ``--resume``. Every other long job (scans, grids,
probes) stops the same way (:mod:`geoprobe.interrupts`): finished stages / cells / revisions are kept, nothing
half-written looks finished, and one line names what was kept and the exact command that continues.

``--set KEY=VALUE`` values are strings converted by the task's declared parameter types
(:mod:`geoprobe.tasks.params`): ``--set replacement=false`` (or ``no``/``0``) is False.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path
from typing import Any

from geoprobe.errors import ConfigError, GeoprobeError, JobInterrupted, TrainingInterrupted
from geoprobe.probes.prompts import DEFAULT_MAX_PROMPTS

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
#: wind-tunnel sequences a probe run samples when --n is not given
DEFAULT_TUNNEL_SEQUENCES = 512
#: most bootstrap resamples: beyond 1e5 the Monte Carlo error of a 95% percentile endpoint is far below the
#: sampling error it estimates, while the index table (n_boot x n int64) grows without bound
MAX_BOOTSTRAP = 100_000


class UsageError(GeoprobeError):
    """Bad command-line syntax (unknown option, missing argument, a value of the wrong type or range)."""


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (raised, so ``main`` prints them like every other error)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        message = re.sub(r"^argument (\S+?)(/\S+)?: ", r"\1 ", message)  # "argument --n: x" -> "--n x"
        raise UsageError(f"{message} (see: {self.prog} --help)")


def int_at_least(minimum: int, maximum: int | None = None):
    """argparse type: an integer >= ``minimum`` (and <= ``maximum``): ``--n``, ``--n-boot``, ``--steps``, ..."""
    bounds = f">= {minimum}" if maximum is None else f"in {minimum}..{maximum}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer {bounds}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"must be <= {maximum}, got {value}")
        return value

    parse.__name__ = f"int {bounds}"
    return parse


def float_in(low: float, high: float = math.inf, *, low_open: bool = True):
    """argparse type: a finite float in (low, high] (or [low, high] with ``low_open=False``)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
        above = value > low if low_open else value >= low
        if not (math.isfinite(value) and above and value <= high):
            if low == 0 and low_open and not math.isfinite(high):
                raise argparse.ArgumentTypeError(f"must be positive (and finite), got {text}")
            bound = f"{'>' if low_open else '>='} {low:g}" + (f" and <= {high:g}" if math.isfinite(high) else "")
            raise argparse.ArgumentTypeError(f"must be a finite number {bound}, got {text}")
        return value

    return parse


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)
positive_float = float_in(0.0)


def parse_assignment(text: str) -> tuple[str, str]:
    """``KEY=VALUE`` split at the first ``=``; the value stays a string, converted later by the task's declared
    parameter type (so ``replacement=False`` is False, ``V=abc`` an error naming V, int and 'abc')."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects KEY=VALUE, got {text!r}")
    return key.strip(), raw


def _task_params(assignments: list[str] | None) -> dict[str, str]:
    params: dict[str, str] = {}
    for text in assignments or []:
        key, value = parse_assignment(text)
        if key in params:
            raise ConfigError(f"--set {key} given twice ({params[key]!r} and {value!r})")
        params[key] = value
    return params


def _size_options(args: argparse.Namespace) -> str:
    """The size-like options the user passed, e.g. ``--n 100000, --set V=1000000`` (for memory errors)."""
    parts = [f"--{name.replace('_', '-')} {getattr(args, name)}" for name in ("n", "batch_size", "n_boot", "steps")
             if getattr(args, name, None) is not None]
    parts += [f"--set {a}" for a in getattr(args, "set", None) or []]
    return ", ".join(parts)


# ---------------------------------------------------------------------------------------------- tunnel


def cmd_tunnel_list(args: argparse.Namespace) -> int:
    from geoprobe.models import ARCHS, PRESET_NAMES
    from geoprobe.tasks import TASKS, make_task

    print("tasks:")
    for name in TASKS:
        task = make_task(name)
        print(f"  {name:<12} {task.summary}  defaults: {task.config()}")
        print(f"  {'':<12} --set parameters: {task.describe_params()}")
    print("architectures: " + ", ".join(ARCHS.names()))
    print("presets: " + ", ".join(PRESET_NAMES))
    return 0


def cmd_tunnel_sample(args: argparse.Namespace) -> int:
    from geoprobe.memory import check_fits
    from geoprobe.tasks import make_generator, make_task

    task = make_task(args.task, **_task_params(args.set))
    check_fits(task.batch_nbytes(args.n), f"--n {args.n} sequences of {task.describe()}")
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
    from geoprobe.memory import check_fits
    from geoprobe.models.presets import get_preset
    from geoprobe.models.run import train_tunnel
    from geoprobe.tasks import TASKS, make_task

    TASKS.get(args.task)  # an unknown task is reported as such, before presets are looked up
    preset = get_preset(args.task, args.preset, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                        target=args.target, bf16=args.bf16 or None, save_every=args.save_every,
                        value_lr_mult=args.value_lr_mult)
    task = make_task(args.task, **{**preset.task_params, **_task_params(args.set)})  # bad --set: before any write
    check_fits(task.batch_nbytes(preset.train.batch_size),
               f"a training batch of {preset.train.batch_size} sequences of {task.describe()}")
    metrics = train_tunnel(args.out, args.task, preset, arch_name=args.arch, seed=args.seed,
                           device=args.device, resume=args.resume, overwrite=args.overwrite,
                           task_overrides=_task_params(args.set), progress=not args.quiet)
    _print_metrics(metrics, Path(args.out))
    return 0


def cmd_tunnel_eval(args: argparse.Namespace) -> int:
    from geoprobe.io import OutputLock
    from geoprobe.models.run import evaluate_run

    _require_run_folder(args.run)
    # evaluation rewrites metrics.json, report.html and the manifest: not while a training job writes the run
    lock = OutputLock(args.run, advice="wait for it to finish before evaluating").acquire()
    try:
        metrics = evaluate_run(args.run, lengths=args.lengths, device=args.device, n_sequences=args.n,
                               progress=not args.quiet)
    finally:
        lock.release()
    _print_metrics(metrics, Path(args.run))
    return 0


def cmd_tunnel_compare(args: argparse.Namespace) -> int:
    from geoprobe.compare import markdown_table, run_comparison, verdict_line

    res = run_comparison(args.out, args.tasks, args.archs, preset=args.preset, seeds=args.seeds,
                         device=args.device, mae_threshold=args.mae_threshold, acc_threshold=args.acc_threshold,
                         progress=not args.quiet, budget_minutes=args.budget_minutes,
                         executor=args.executor, ray_address=args.ray_address, max_retries=args.max_retries)
    print(markdown_table(res["table"]), end="")
    print(res["criteria"])
    for arch, v in res["verdicts"].items():
        print(verdict_line(arch, v))
    print(f"wrote {Path(args.out) / 'table.md'}, table.csv, cells.csv, verdicts.json and report.html")
    return 0


def _require_run_folder(path: str) -> None:
    """A run argument that is an existing file is named as such (not reported as missing)."""
    p = Path(path)
    if p.is_file():
        raise ConfigError(f"{p} is a file, not a run folder (pass the folder that `geoprobe tunnel train --out` "
                          "wrote)")


def _print_metrics(metrics: dict[str, Any], run_dir: Path) -> None:
    print(f"entropy MAE (per-sample)  {metrics['entropy_mae_bits']:.4f} ± {metrics['entropy_mae_se_bits']:.4f} bits")
    print(f"entropy MAE (mean-of-means) {metrics['entropy_mae_mean_of_means_bits']:.4f} bits")
    print(f"KL(Bayes || model)        {metrics['kl_bits']:.4f} bits")
    if metrics.get("latent_entropy_mae_bits") is not None:
        print(f"entropy MAE vs the hidden-label posterior {metrics['latent_entropy_mae_bits']:.4f} bits "
              "(the figure above is against the next-label predictive)")
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
    tunnel = is_run_dir(args.target)  # a run folder, RUN/model or RUN/checkpoints/step_N
    if tunnel:  # validate the request against the run's task before anything is written
        from geoprobe.backends.sources import run_of_folder
        from geoprobe.memory import check_fits
        from geoprobe.models.checkpoint import read_manifest, task_from_manifest

        if args.prompts is not None or args.max_tokens is not None:
            raise ConfigError(f"{'--prompts' if args.prompts is not None else '--max-tokens'} applies to language "
                              "models; a wind-tunnel run is probed on fresh sequences of its own task (--n)")
        task = task_from_manifest(read_manifest(run_of_folder(args.target)[0]))
        if args.task is not None and args.task != task.name:
            raise ConfigError(f"{args.target} was trained on task {task.name!r}, not {args.task!r}")
        n = args.n or DEFAULT_TUNNEL_SEQUENCES
        check_fits(task.batch_nbytes(n), f"--n {n} sequences of {task.describe()}")
    else:
        from geoprobe.probes.prompts import load_prompts, select_prompts

        if args.task is not None:
            raise ConfigError("--task applies to wind-tunnel run folders; for a language model use --prompts")
        prompt_path = args.prompts or (suite_prompts_path(suite) if suite is not None else None)
        n = args.n or (suite.prompts.get("n") if suite is not None else None)
        prompts, prompt_info = select_prompts(load_prompts(prompt_path), n, source=prompt_path)
        from geoprobe.backends.sources import resolve_source

        resolve_source(args.target, revision=args.revision)  # a missing or unloadable target: before any write
    staged = open_output(args.out, kind="probe", inputs=(args.target, args.prompts), overwrite=args.overwrite,
                         staged=True, resume_hint=False)  # validated and locked; written complete or not at all
    init = None
    if tunnel:
        target = tunnel_target(args.target, n=n, seed=args.seed, backend=args.backend,
                               device=args.device, dtype=args.dtype, task=args.task,
                               trust_remote_code=args.trust_remote_code)
        from geoprobe.models.checkpoint import list_checkpoints

        ckpts = list_checkpoints(target.run_dir)
        if ckpts and ckpts[0][0] == 0:
            from geoprobe.backends import load_model

            init = load_model(ckpts[0][1], backend=args.backend, device=args.device, dtype=args.dtype)
    else:
        print(prompt_info.pop("note"), flush=True)
        from geoprobe.backends import load_model
        from geoprobe.scan.batching import BatchSizer

        handle = load_model(args.target, backend=args.backend, device=args.device, dtype=args.dtype,
                            revision=args.revision, trust_remote_code=args.trust_remote_code,
                            **({"device_map": args.device_map} if args.device_map else {}))
        sizer = BatchSizer(args.batch_size)  # --batch-size auto: halve on out-of-memory
        target = sizer.run(lambda bs: llm_target(handle, prompts=prompts, max_tokens=args.max_tokens, seed=args.seed,
                                                 progress=not args.quiet, batch_size=bs), "reference")
        target.manifest["prompts"] = {**target.manifest["prompts"], **prompt_info}
    names = args.probes or (list(suite.probes) if suite is not None and suite.probes else None)
    if tunnel:
        report = run_probes(target, names, opts, init_handle=init, suite=suite, progress=not args.quiet)
    else:
        report = sizer.run(lambda bs: run_probes(replace(target, batch_size=bs), names, opts, init_handle=init,
                                                 suite=suite, progress=not args.quiet), "probes")
        report.manifest.update(batch_size=sizer.to_dict(), device_map=target.handle.device_map,
                               attention_implementation=target.handle.attention_implementation)
    if "prompts" in target.manifest:  # which prompts were used (the default cap is recorded, never silent)
        report.manifest["prompts"] = target.manifest["prompts"]
    out = staged.commit(report.save)
    from geoprobe.report_text import summary_table

    print(summary_table(report.summary), end="")
    print(f"wrote {out / 'summary.json'}, {out / 'results.csv'} and {out / 'report.html'}")
    return 0


def batch_size_arg(text: str) -> int | str:
    """argparse type: a positive integer or ``auto`` (halve on out-of-memory)."""
    if text == "auto":
        return "auto"
    try:
        return positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"must be a positive integer or 'auto', got {text!r}") from None


def cmd_scan(args: argparse.Namespace) -> int:
    """Paper III on a pretrained language model: entropy-stratified prompts, signatures, SULA."""
    from geoprobe.scan.driver import ScanOptions, run_scan, set_sentence

    opts = ScanOptions(pool_size=args.pool_size, seed=args.seed, prompts=args.prompts,
                       prompts_field=args.prompts_field, dataset=args.dataset, dataset_limit=args.dataset_limit,
                       sula=not args.no_sula, sula_per_k=args.sula_per_k, n_boot=args.n_boot,
                       causal=not args.no_causal, causal_controls=args.causal_controls,
                       max_tokens=args.max_tokens,
                       batch_size=args.batch_size, backend=args.backend, device=args.device, dtype=args.dtype,
                       revision=args.revision, trust_remote_code=args.trust_remote_code,
                       device_map=args.device_map, attention_path=args.attention)
    if len(args.target) > 1:
        return _scan_models(args, opts)
    args.target = args.target[0]
    if args.revisions:
        return _scan_revisions(args, opts)
    if args.executor != "local" or args.ray_address:
        raise ConfigError("--executor/--ray-address apply to multi-revision scans (--revisions) and multi-model "
                          "scans (several models)")
    res = run_scan(args.target, domain=args.domain, n=args.n, out=args.out, resume=args.resume,
                   overwrite=args.overwrite, options=opts, progress=not args.quiet)
    s = res.report.summary
    for line in (set_sentence(x) for x in s["sets"].values()):
        print(line)
    if s.get("sula"):
        print(f"SULA: MAE {s['sula']['mae_bits']:.3f} bits (main), discarded mass {s['sula']['discarded_mass']:.3f}")
    if s.get("causal"):
        from geoprobe.scan.causal import causal_sentence

        print(causal_sentence(s["causal"]))
    if res.out is not None:
        print(f"wrote {res.out}: summary.json, results.csv, prompts.jsonl, report.html, manifest.json")
    return 0


def _scan_revisions(args: argparse.Namespace, opts: Any) -> int:
    """``scan MODEL --revisions ...``: every revision on the final revision's prompts, then the trajectory."""
    from geoprobe.scan.revisions import scan_revisions

    if args.out is None:
        raise ConfigError("--revisions needs --out (each revision's scan and the trajectory are saved there)")
    if args.resume or args.overwrite:
        raise ConfigError("--resume/--overwrite do not apply with --revisions: rerunning the same command "
                          "continues (finished revisions are kept); choose another --out to start afresh")
    from geoprobe.scan.tunnel_revisions import tunnel_run_of

    if tunnel_run_of(args.target, args.revisions) is not None:
        return _scan_tunnel_revisions(args, opts)
    res = scan_revisions(args.target, args.revisions, out=args.out, domain=args.domain, n=args.n, options=opts,
                         executor=args.executor, ray_address=args.ray_address, max_retries=args.max_retries,
                         progress=not args.quiet)
    _print_frame_precision(res, f"{res['step_axis'].split(' (')[0]}")
    print(f"wrote {res['out']}: revisions/, selection/, trajectory.csv, signatures.csv, key_frame_overlap.csv, "
          "frame_precision.csv/.json, "
          "report.html, sweep.json, manifest.json")
    return 0


def _print_frame_precision(res: dict[str, Any], axis: str | None, at: str = "") -> None:
    """One line per set: where the frame and the precision signatures settle, then the settling-order test."""
    for set_name, s in res["by_set"].items():
        after = s["precision_settles_after_frame"]
        verdict = "n/a" if after is None else ("precision settles after the frame" if after else
                                              "precision does not settle after the frame")
        where = f" ({axis})" if axis else ""
        print(f"{set_name}: frame settles at {at}{s['frame_settles_at']}, precision at {at}{s['precision_settles_at']}"
              f"{where}: {verdict}")
        o = s.get("settling_order") or {}
        if o.get("index_difference") is not None:
            print(f"  settling order: precision - frame = {o['index_difference']} revisions (95% CI "
                  f"{o['ci'][0]}..{o['ci'][1]}, permutation p = {o['permutation_p']:.3g}): "
                  f"{'supported' if o['supported'] else 'not supported'}")


def _scan_tunnel_revisions(args: argparse.Namespace, opts: Any) -> int:
    """``scan RUN --revisions STEP ...``: a wind-tunnel run's checkpoints on its own held-out sequences."""
    from dataclasses import replace

    from geoprobe.scan.tunnel_revisions import options_from_scan, scan_tunnel_revisions

    res = scan_tunnel_revisions(args.target, args.revisions, out=args.out,
                                options=options_from_scan(replace(opts, n=args.n), domain=args.domain),
                                executor=args.executor,
                                ray_address=args.ray_address, max_retries=args.max_retries, progress=not args.quiet)
    _print_frame_precision(res, None, at="step ")
    d = res["per_sequence_dissociation"]
    if d is not None:
        lo, hi = d["index_difference_ci"]
        print(f"per sequence: attention JS settles at step {d['frame_settling_step']}, entropy MAE at step "
              f"{d['precision_settling_step']} (precision - frame = {d['index_difference']:g} checkpoint(s), 95% CI "
              f"{lo:g}..{hi:g}): {'dissociation' if d['dissociation'] else 'no significant dissociation'}")
    print(f"wrote {res['out']}: revisions/, sequences/, trajectory.csv, signatures.csv, frame_precision.csv/.json, "
          "report.html, sweep.json, manifest.json")
    return 0


def _scan_models(args: argparse.Namespace, opts: Any) -> int:
    """``scan M1 M2 ...``: every model an ordinary scan in ``--out/models/``, then the cross-model table."""
    from geoprobe.scan.models import scan_models

    if args.revisions:
        raise ConfigError(f"--revisions takes one model, got {len(args.target)}; scan each model's revisions "
                          "separately, or drop --revisions to compare the models")
    if args.out is None:
        raise ConfigError("several models need --out (each model's scan and the table are saved there)")
    if args.resume or args.overwrite:
        raise ConfigError("--resume/--overwrite do not apply to several models: rerunning the same command "
                          "continues (finished models are kept); choose another --out to start afresh")
    table = scan_models(args.target, out=args.out, domain=args.domain, n=args.n, options=opts,
                        executor=args.executor, ray_address=args.ray_address, max_retries=args.max_retries,
                        progress=not args.quiet)
    for r in table.to_dict("records"):
        pc12 = "n/a" if r["pc12_mixed"] is None else f"{100 * r['pc12_mixed']:.1f}%"
        print(f"{r['model']}: PC1+PC2 {pc12} (mixed), verdict {r['verdict']}")
    print(f"wrote {args.out}: models/, table.csv, table.md, scorecard.csv, sweep.json, manifest.json")
    return 0


def cmd_scan_table(args: argparse.Namespace) -> int:
    """Cross-model table and prediction scorecard from saved scan folders."""
    from geoprobe.io import write_text
    from geoprobe.scan.table import csv_text, load_scan, markdown

    summaries = [load_scan(d) for d in args.scans]
    if args.out is None:
        print(markdown(summaries), end="")
        return 0
    out = Path(args.out)
    if out.suffix.lower() not in (".md", ".csv"):
        raise ConfigError(f"--out must end in .md or .csv, got {out.name!r}")
    if out.exists() and not args.overwrite:
        raise ConfigError(f"{out} exists; pass --overwrite to replace it")
    write_text(out, markdown(summaries) if out.suffix.lower() == ".md" else csv_text(summaries))
    print(f"wrote {out}")
    return 0


def cmd_gradients(args: argparse.Namespace) -> int:
    """Paper II on a wind-tunnel run: the routing law on its heads, a value step, the EM-like schedule."""
    from geoprobe.gradients.tunnel import gradients_report
    from geoprobe.io import open_output
    from geoprobe.models.checkpoint import read_manifest
    from geoprobe.report_text import summary_table

    read_manifest(args.run)  # not a run: one line, before anything is written
    staged = open_output(args.out, kind="gradients", inputs=(args.run,), overwrite=args.overwrite, staged=True,
                         resume_hint=False)  # validated and locked; written complete or not at all
    report = gradients_report(args.run, n=args.n, seed=args.seed, em_steps=args.em_steps,
                              multipliers=tuple(args.value_lr_multipliers))
    out = staged.commit(report.save)
    print(summary_table(report.summary), end="")
    print(f"wrote {out / 'summary.json'}, {out / 'results.csv'} and {out / 'report.html'}")
    return 0


def _context(text: str) -> int | None:
    """``--context``: a positive integer, or ``full`` for the whole causal prefix."""
    if text.strip().lower() in ("full", "none"):
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer or 'full', got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer or 'full', got {text!r}")
    return value


def _save_report(args: argparse.Namespace, kind: str, build) -> Any:
    """Open ``--out`` (validated and locked, written complete or not at all), build the report, save it."""
    from geoprobe.io import open_output

    staged = open_output(args.out, kind=kind, overwrite=args.overwrite, staged=True, resume_hint=False)
    report = build()
    out = staged.commit(report.save)
    return report, out


def cmd_paper2_em_vs_sgd(args: argparse.Namespace) -> int:
    """Paper II's SGD vs EM-like comparison on the toy head over seeds (speed-up with CIs and a x1 control)."""
    from geoprobe.gradients.em_vs_sgd import EMProtocol, em_vs_sgd_report

    protocol = EMProtocol(seeds=tuple(args.seeds), steps=args.steps, lr=args.lr, value_lr_mult=args.value_lr_mult,
                          T=args.T, context=args.context, eval_every=args.eval_every, n_boot=args.n_boot,
                          task_params=_task_params(args.set), specificity=tuple(args.specificity))
    report, out = _save_report(args, "paper2-em-vs-sgd", lambda: em_vs_sgd_report(protocol))
    print(report.headline)
    print(f"wrote {out / 'summary.json'}, {out / 'results.csv'} and {out / 'report.html'}")
    return 0


def cmd_paper2_routing(args: argparse.Namespace) -> int:
    """The routing law measured on the toy head's own training steps (per checkpoint, with a shuffled null)."""
    from geoprobe.gradients.routing_dynamics import routing_dynamics_report
    from geoprobe.report_text import summary_table

    if args.run is not None:
        from geoprobe.models.checkpoint import read_manifest

        read_manifest(args.run)  # not a run: one line, before anything is written
        kwargs = {"run_dir": args.run, "n": args.n, "seed": args.seed}
    else:
        kwargs = {"seed": args.seed, "steps": args.steps, "lr": args.lr, "value_lr_mult": args.value_lr_mult,
                  "T": args.T, "context": args.context, "n_checkpoints": args.checkpoints,
                  "task_params": _task_params(args.set)}
    report, out = _save_report(args, "paper2-routing", lambda: routing_dynamics_report(**kwargs))
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
    for mod in ("transformers", "transformer_lens", "nnsight", "gguf", "plotly", "ray"):
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


def add_executor_options(parser: argparse.ArgumentParser, unit: str) -> None:
    """``--executor local|ray``, ``--ray-address``, ``--max-retries`` (grids and multi-revision scans)."""
    from geoprobe.sweep.executors import DEFAULT_MAX_RETRIES, EXECUTORS

    parser.add_argument("--executor", choices=EXECUTORS, default="local",
                        help=f"local: one {unit} after another in this process; ray: each {unit} a Ray task "
                             "(pip install 'geoprobe[ray]')")
    parser.add_argument("--ray-address", help="Ray cluster to use with --executor ray (default: RAY_ADDRESS, "
                                              "else start a local Ray instance and stop it at the end)")
    parser.add_argument("--max-retries", type=non_negative_int, default=DEFAULT_MAX_RETRIES,
                        help=f"run a failed {unit} again at most this many times (default {DEFAULT_MAX_RETRIES})")


SET_HELP = ("task parameter, e.g. V=10 or replacement=false; converted by the parameter's declared type "
            "(`geoprobe tunnel list` shows them); bool accepts true/false/yes/no/1/0")


def build_parser() -> argparse.ArgumentParser:
    from geoprobe import __version__

    parser = OneLineParser(prog="geoprobe", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log geoprobe's steps to stderr")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="train and calibrate a bijection wind tunnel on CPU (minutes)")
    demo.add_argument("--out", default="runs/demo")
    demo.add_argument("--preset", default="cpu")
    demo.add_argument("--seed", type=non_negative_int, default=0)
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
    sample.add_argument("--n", type=positive_int, default=3)
    sample.add_argument("--seed", type=non_negative_int, default=0)
    sample.add_argument("--split", default="train", help="sample stream: train, eval or test")
    sample.add_argument("--set", action="append", metavar="KEY=VALUE", help=SET_HELP)
    sample.add_argument("--probs", action="store_true", help="include the full Bayes distributions")
    sample.set_defaults(func=cmd_tunnel_sample)

    train = tunnel.add_parser("train", help="train a wind-tunnel model and calibrate it")
    train.add_argument("task")
    train.add_argument("--preset", default="cpu")
    train.add_argument("--out", required=True)
    train.add_argument("--arch", default="transformer")
    train.add_argument("--seed", type=non_negative_int, default=0)
    train.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    train.add_argument("--set", action="append", metavar="KEY=VALUE", help=SET_HELP)
    train.add_argument("--steps", type=positive_int)
    train.add_argument("--batch-size", type=positive_int)
    train.add_argument("--lr", type=float)
    train.add_argument("--target", choices=["hard", "soft"], help="training target (default: task's)")
    train.add_argument("--bf16", action="store_true", help="bfloat16 autocast")
    train.add_argument("--value-lr-mult", type=positive_float, metavar="M",
                       help="EM-like schedule: attention value parameters at lr x M (transformer, transformer-rope; "
                            "default 1 = ordinary training; recorded in the manifest, checked by --resume)")
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
    ev.add_argument("--lengths", type=positive_int, nargs="+", help="also evaluate at these lengths (e.g. HMM K)")
    ev.add_argument("--n", type=positive_int, default=2048, help="evaluation sequences")
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
    probe.add_argument("--n", type=positive_int,
                       help=f"sequences (tunnels, default {DEFAULT_TUNNEL_SEQUENCES}) or prompts (models: the first "
                            f"N of the file; default: the first {DEFAULT_MAX_PROMPTS}, printed and recorded)")
    probe.add_argument("--prompts", help="UTF-8 prompt file: one per line, or JSON lines with text/prompt/question")
    probe.add_argument("--max-tokens", type=positive_int,
                       help="models: keep only the last N tokens of longer prompts, recorded in the manifest "
                            "(default: whole prompts up to the model's context; a longer prompt is an error)")
    probe.add_argument("--layers", type=int, nargs="+", help="layers for value_manifold/entropy_axis")
    probe.add_argument("--manifold-site", choices=["values", "residual"],
                       help="value-manifold variant: value vectors (default) or the residual stream")
    probe.add_argument("--manifold-positions", choices=["final", "all_positions"],
                       help="value-manifold samples (default: all supervised positions for tunnels, final for LLMs)")
    probe.add_argument("--seed", type=non_negative_int,
                       help="seed of the inputs and resampling (default: the suite's, else 0)")
    probe.add_argument("--n-boot", type=int_at_least(1, MAX_BOOTSTRAP),
                       help=f"bootstrap resamples for CIs, 1..{MAX_BOOTSTRAP} (default: the suite's, else 1000)")
    probe.add_argument("--backend", default="transformer_lens", help="transformer_lens, nnsight or torch")
    probe.add_argument("--device", default="auto")
    probe.add_argument("--dtype", default="float32",
                       help="float32, bfloat16, float16, or auto (keep the checkpoint's dtype) weights")
    probe.add_argument("--revision", help="hub revision (branch, tag or commit)")
    probe.add_argument("--batch-size", type=batch_size_arg, default=16,
                       help="language models: prompts per forward pass, or 'auto' (start at 64, halve on "
                            "out-of-memory)")
    probe.add_argument("--device-map", help="auto (accelerate: spread a model over GPUs and CPU; torch/nnsight "
                                            "backends)")
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
    cmp_.add_argument("--seeds", type=positive_int, default=1)
    cmp_.add_argument("--out", required=True)
    cmp_.add_argument("--device", default="auto")
    cmp_.add_argument("--mae-threshold", type=positive_float, default=0.05, help="pass threshold, bits")
    cmp_.add_argument("--acc-threshold", type=float_in(0.0, 1.0), default=0.9,
                      help="pass threshold for recall accuracy, in (0, 1]")
    cmp_.add_argument("--budget-minutes", type=positive_float,
                      help="finish in about this many minutes: each new cell's steps are fitted to an equal share")
    add_executor_options(cmp_, "cell")
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

    paper2 = sub.add_parser("paper2", help="Paper II experiments on the single-head toy model and the sticky chain"
                            ).add_subparsers(dest="paper2_command", required=True)
    for name, helptext, func in (
            ("em-vs-sgd", "SGD vs EM-like (value lr x M) over seeds: speed-up to SGD's final loss, CIs, x1 control",
             cmd_paper2_em_vs_sgd),
            ("routing", "the routing law on the toy head's own training steps, per checkpoint, with a null",
             cmd_paper2_routing)):
        p2 = paper2.add_parser(name, help=helptext)
        p2.add_argument("--out", required=True, help="output folder for summary.json, results.csv, report.html")
        if name == "em-vs-sgd":
            p2.add_argument("--seeds", type=non_negative_int, nargs="+", default=[42, 2024, 1337, 7777, 9999])
            p2.add_argument("--eval-every", type=positive_int, default=50,
                            help="steps between held-out calibration evaluations")
            p2.add_argument("--n-boot", type=positive_int, default=2000, help="bootstrap resamples over seeds")
            p2.add_argument("--specificity", nargs="*", choices=["query_key", "output"], default=[],
                            help="extra arms with the multiplier on these parameter groups instead of the values")
        else:
            p2.add_argument("--seed", type=non_negative_int, default=42)
            p2.add_argument("--checkpoints", type=positive_int, default=16,
                            help="log-spaced training steps at which the update is measured")
            p2.add_argument("--run", help="measure over the saved checkpoints of this GPT-2 wind-tunnel run folder "
                                          "instead of training the toy head")
            p2.add_argument("--n", type=positive_int, default=32, help="test sequences (with --run)")
        p2.add_argument("--steps", type=positive_int, default=1000, help="full-batch SGD steps")
        p2.add_argument("--lr", type=positive_float, default=0.01, help="SGD learning rate")
        p2.add_argument("--value-lr-mult", type=positive_float, default=10.0,
                        help="the EM-like arm's value learning rate = lr x M")
        p2.add_argument("--T", type=int_at_least(2), default=2000, help="chain length")
        p2.add_argument("--context", type=_context, default=32,
                        help="inputs each query reads (default 32; 'full': the whole causal prefix, O(T^2))")
        p2.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="sticky-task parameter (n_symbols, p_stay, d, mu_scale, mu_seed)")
        p2.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
        p2.set_defaults(func=func)

    scan = sub.add_parser("scan", help="Paper III on a language model: stratified prompts, signatures, SULA")
    scan.add_argument("target", nargs="+", help="hub id (with --revision), local HF folder or .gguf file; several: "
                                               "each scanned into --out/models/, then the cross-model table")
    scan.add_argument("--domain", help="domain-restricted set measured beside the mixed pool: "
                      "math, code, prose, knowledge or mixed")
    scan.add_argument("--n", type=positive_int, default=75,
                      help="prompts per set, a multiple of 5 (equal per entropy quintile; default 15 x 5 = 75)")
    scan.add_argument("--out", help="output folder (written complete or not at all)")
    scan.add_argument("--prompts", help="prompt file (text, or JSONL with --prompts-field) for the domain set")
    scan.add_argument("--prompts-field", help="JSONL field holding the prompt text")
    scan.add_argument("--dataset", help="datasets spec NAME_OR_PATH[:config:split:field] for the domain set")
    scan.add_argument("--dataset-limit", type=positive_int, help="rows read from --dataset")
    scan.add_argument("--pool-size", type=positive_int, default=300, help="candidates drawn from each built-in pool")
    scan.add_argument("--seed", type=non_negative_int, default=0, help="seed of pools, selection, bootstraps, SULA")
    scan.add_argument("--no-sula", action="store_true", help="skip the in-context noisy-label experiment")
    scan.add_argument("--sula-per-k", type=int_at_least(2), default=50, help="SULA prompts per k (k = 0, 1, 2, 4, 8)")
    scan.add_argument("--max-tokens", type=positive_int,
                      help="cut prompts longer than N tokens to their last N (recorded in the manifest; "
                           "default: prompts are whole, an over-long one is an error)")
    scan.add_argument("--no-causal", action="store_true", help="skip the causal entropy-axis cut")
    scan.add_argument("--causal-controls", type=positive_int, default=19,
                      help="matched random control directions per causal cut (19: smallest p-value 0.05)")
    scan.add_argument("--n-boot", type=int_at_least(1, MAX_BOOTSTRAP), default=1000, help="bootstrap resamples")
    scan.add_argument("--batch-size", type=batch_size_arg, default=16,
                      help="prompts per forward pass, or 'auto' (start at 64, halve on out-of-memory)")
    scan.add_argument("--backend", help="transformer_lens, nnsight or torch (default: chosen per run: torch hooks, "
                                        "which keep the model's SDPA kernel, unless --attention pattern)")
    scan.add_argument("--device-map", help="auto (accelerate: spread a model over GPUs and CPU)")
    scan.add_argument("--attention", choices=["qk", "pattern"], default="qk",
                      help="attention statistics from captured q/k with the model's own kernel (qk, default) or "
                           "from the raw eager pattern (pattern: slower)")
    scan.add_argument("--device", default="auto", help="auto, cpu, cuda[:N]")
    scan.add_argument("--dtype", help="float32 (default), bfloat16, float16 or auto")
    scan.add_argument("--revision", help="hub revision (branch, tag or commit)")
    scan.add_argument("--revisions", nargs="+", metavar="REV",
                      help="scan each revision (hub revisions of TARGET, or checkpoint folders), in training order, "
                           "on the prompts the last one selects, and write the trajectory (needs --out); with a "
                           "wind-tunnel run as TARGET: its checkpoint steps (or 'all', 'final'), measured on the "
                           "run's own held-out sequences")
    add_executor_options(scan, "revision (or model)")
    scan.add_argument("--trust-remote-code", action="store_true",
                      help="let transformers run code shipped with the model")
    grp = scan.add_mutually_exclusive_group()
    grp.add_argument("--resume", action="store_true", help="continue an interrupted scan in --out")
    grp.add_argument("--overwrite", action="store_true",
                     help="replace a scan geoprobe wrote in --out, once the new one is complete")
    scan.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    scan.set_defaults(func=cmd_scan)

    stab = sub.add_parser("scan-table", help="cross-model table and prediction scorecard from saved scans")
    stab.add_argument("scans", nargs="+", help="scan output folders")
    stab.add_argument("--out", help="FILE.md or FILE.csv (default: markdown on stdout)")
    stab.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    stab.set_defaults(func=cmd_scan_table)

    from geoprobe.cli_help import apply_help

    return apply_help(parser)


#: commands that handle SIGINT/SIGTERM themselves (training saves a consistent state between two steps)
SELF_GUARDED = {("tunnel", "train"), ("demo",)}
#: commands whose result appears complete or not at all: a stopped one leaves nothing
ONE_SHOT = {("probe",), ("gradients",), ("paper2", "em-vs-sgd"), ("paper2", "routing")}


def _command(args: argparse.Namespace) -> tuple[str, ...]:
    return tuple(w for w in (args.command, getattr(args, "tunnel_command", None),
                             getattr(args, "paper2_command", None)) if w)


def _run_guarded(args: argparse.Namespace) -> Any:
    """``args.func(args)`` with SIGINT/SIGTERM raising :class:`JobInterrupted` at once (geoprobe.interrupts);
    the job's layers say what they kept, else this generic line does."""
    from geoprobe.interrupts import guard

    cmd = _command(args)
    if cmd in SELF_GUARDED:
        return args.func(args)
    message = "{signal} received: geoprobe " + " ".join(cmd) + " stopped"
    if cmd in ONE_SHOT:
        message += f"; nothing was written to {args.out} (its results appear complete or not at all)"
    with guard(message):
        return args.func(args)


def _continue_hint(exc: JobInterrupted, argv: list[str] | None) -> str:
    """``"; continue with: geoprobe ... --resume"`` (or the same command, or "start it again with")."""
    import shlex

    if exc.says_how_to_continue:
        return ""
    words = list(sys.argv[1:] if argv is None else argv)
    if exc.continue_with == "resume":
        words = [w for w in words if w != "--overwrite"] + ([] if "--resume" in words else ["--resume"])
    how = "start it again with" if exc.continue_with is None else "continue with"
    return f"; {how}: geoprobe {shlex.join(words)}"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = None
    try:
        args = parser.parse_args(argv)
        from geoprobe.logs import configure_cli_logging

        configure_cli_logging(args.verbose)
        return int(_run_guarded(args) or 0)
    except GeoprobeError as exc:
        print(f"geoprobe: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (MemoryError, RuntimeError) as exc:
        from geoprobe.memory import out_of_memory_message

        oom = out_of_memory_message(exc)
        if oom is None:
            raise
        sizes = _size_options(args) if args is not None else ""
        print(f"geoprobe: error: {oom}" + (f" with {sizes}" if sizes else "") + "; use smaller sizes",
              file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # output piped into e.g. `head`: not an error
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except JobInterrupted as exc:
        print(f"geoprobe: {exc}{_continue_hint(exc, argv)}", file=sys.stderr)
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
