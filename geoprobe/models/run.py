"""Train a wind tunnel end to end: sample, optimise, checkpoint, evaluate, report; resumable.

Nothing is lost (see :mod:`geoprobe.io` for the output folder rules):

- everything (names, device, schedule, the run being resumed, the trainer state) is checked, and the model and
  one batch are built, before the run folder is created or changed;
- one job per run folder (a lock naming the holder); ``--overwrite`` trains the replacement beside the old run
  (``.<name>.geoprobe-new``) and swaps it in when finished; ``--resume`` continues that replacement if one was
  interrupted, else the run itself;
- SIGINT/SIGTERM stop between two optimisation steps with model, optimiser, scheduler and sampler saved at the
  same step (:class:`~geoprobe.errors.TrainingInterrupted`); after ``kill -9`` the last periodic save serves,
  the log is cut back to it and temporary files of killed writes are removed. Either way ``--resume`` reproduces
  the uninterrupted run bit for bit on CPU;
- a non-finite loss or gradient stops training (status ``failed``), keeping the last good checkpoints and
  trainer state.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from geoprobe.errors import (
    CheckpointError,
    ConfigError,
    OutputError,
    TrainingDivergedError,
    TrainingInterrupted,
)
from geoprobe.interrupts import StopRequest
from geoprobe.io import (
    _default,
    check_output,
    is_empty_output,
    open_output,
    pending_replacement,
    remove_stale_temps,
    write_json,
)
from geoprobe.models.architectures import ARCHS, ModelSize, n_params
from geoprobe.models.checkpoint import (
    MANIFEST,
    checkpoint_dir,
    list_checkpoints,
    new_manifest,
    read_manifest,
    save_model_folder,
    write_manifest,
)
from geoprobe.models.evaluate import evaluate_model, length_generalisation
from geoprobe.models.presets import LENGTH_PARAM, Preset
from geoprobe.models.training import (
    JsonlLog,
    NonFiniteStep,
    TrainConfig,
    checkpoint_steps,
    is_out_of_memory,
    load_trainer_state,
    lr_factor,
    make_optimizer,
    memory_guard,
    optimisation_step,
    out_of_memory_error,
    save_trainer_state,
    timer,
)
from geoprobe.tasks.base import Task, make_generator, make_task

STATE_FILE = Path("state") / "trainer.pt"
#: train-config keys that may differ on --resume: they change when the state is saved, not what is trained
RESUME_FREE_KEYS = ("save_every",)
#: settings added after runs were first written: a manifest without one used its default
LATER_DEFAULTS = {"train.value_lr_mult": 1.0}
_OWN_FILES = {"manifest.json", "log.jsonl", "metrics.json", "report.html", "model", "trainer.pt"}


def _own_temp(name: str) -> bool:
    """Target names whose temporary leftovers (``.NAME.xxxxxxxx.tmp``) a run folder may hold."""
    return name in _OWN_FILES or re.fullmatch(r"step_\d{7}", name) is not None


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when available else ``cpu``; a clear error for an unavailable CUDA request."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' requested but no CUDA GPU is available; use --device cpu or auto")
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise ConfigError(f"unknown device {device!r}; valid choices: auto, cpu, cuda, cuda:N")
    return device


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value, default=_default))


def schedule_difference(old: dict[str, Any], new: dict[str, Any]) -> tuple[str, Any, Any] | None:
    """The first setting (``task.name``, ``task.config.V``, ``arch``, ``size.d_model``, ``seed``,
    ``train.lr``, ...) in which manifest ``new`` differs from the run's manifest ``old``, as
    ``(key, old value, new value)``; None when the run can be resumed with ``new``."""
    def flat(prefix: str, value: Any, out: dict[str, Any]) -> dict[str, Any]:
        if isinstance(value, dict):
            for k, v in value.items():
                flat(f"{prefix}.{k}" if prefix else k, v, out)
        else:
            out[prefix] = value
        return out

    a, b = {}, {}
    for key in ("task", "arch", "size", "seed", "train"):
        flat(key, _plain(old.get(key)), a)
        flat(key, _plain(new.get(key)), b)
    for key, default in LATER_DEFAULTS.items():
        for d in (a, b):
            d.setdefault(key, default)
    for key in sorted(set(a) | set(b), key=lambda k: (k.split(".")[0] != "task", k)):
        if key.split(".")[-1] in RESUME_FREE_KEYS and key.startswith("train."):
            continue
        if a.get(key, "<absent>") != b.get(key, "<absent>"):
            return key, a.get(key, "<absent>"), b.get(key, "<absent>")
    return None


def _resume_point(out: Path, wanted: dict[str, Any]) -> tuple[Path, dict[str, Any], dict[str, Any] | None]:
    """Where ``--resume`` continues (the run, or its pending replacement), its manifest and trainer state.

    One line (CheckpointError) when there is nothing to resume, the settings differ from the run's, or the run
    is finished; nothing is written.
    """
    work = pending_replacement(out) or out
    if is_empty_output(work):
        raise CheckpointError(f"nothing to resume: {out} holds no run; drop --resume to start a new one")
    if not (work / MANIFEST).exists():
        raise CheckpointError(f"cannot resume {out}: it holds no {MANIFEST} (not a geoprobe run folder?)")
    old = read_manifest(work)
    diff = schedule_difference(old, wanted)
    if diff is not None:
        key, was, now = diff
        which = "the run" if work == out else f"its unfinished replacement {work.name}"
        raise CheckpointError(f"cannot resume {out}: {key} is {was!r} in {which} but {now!r} in this command; "
                              "resume with the run's settings, or train a new --out")
    if old.get("status") == "finished" and work == out and not (work / "state").exists():
        raise CheckpointError(f"{out} is a finished run (step {old.get('step')} of {old['train'].get('steps')}); "
                              f"nothing to resume: 'geoprobe tunnel eval {out}' re-evaluates it, --overwrite "
                              "retrains it")
    state = None
    if old.get("status") not in ("trained", "finished") and (work / STATE_FILE).exists():
        state = load_trainer_state(work / STATE_FILE)
    return work, old, state


def train_tunnel(out: str | Path, task_name: str, preset: Preset, *, arch_name: str = "transformer",
                 seed: int = 0, device: str = "auto", resume: bool = False, overwrite: bool = False,
                 task_overrides: dict[str, Any] | None = None, progress: bool = True,
                 eval_sequences_final: int | None = None, stop_after: int | None = None,
                 manifest_extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train ``arch_name`` on ``task_name`` with ``preset`` into the run folder ``out``; return final metrics.

    With ``resume=True`` an interrupted run continues from its last saved trainer state; every setting (task and
    its config, architecture, size, seed, every training-schedule key but ``save_every``) must equal the run's
    (:func:`schedule_difference`), and a finished run is refused. ``overwrite=True`` replaces a run geoprobe
    wrote, swapping the new one in only when it is finished. ``stop_after`` ends this call after that many
    optimisation steps with the trainer state saved (time-sliced jobs); the returned dict then holds
    ``{"status": "paused", "step": ...}``. Resuming reproduces an uninterrupted run exactly on CPU.
    ``manifest_extra`` adds keys to the run's manifest (e.g. the time-budget plan of ``tunnel compare``).

    Raises :class:`~geoprobe.errors.TrainingInterrupted` on SIGINT/SIGTERM (state saved; main thread only) and
    :class:`~geoprobe.errors.TrainingDivergedError` on a non-finite loss or gradient.
    """
    out = Path(out)
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite exclude each other")
    arch = ARCHS.get(arch_name)  # validate names before touching the disk
    from geoprobe.models.value_lr import check_value_lr

    check_value_lr(arch_name, preset.train.value_lr_mult)
    device = resolve_device(device)
    params = {**preset.task_params, **(task_overrides or {})}
    with memory_guard(f"building task {task_name!r} with {params}"):
        task = make_task(task_name, **params)
    size = preset.size
    if task.seq_len > size.max_positions:
        size = replace(size, max_positions=task.seq_len)
    cfg = preset.train
    target = cfg.target or task.default_target
    check_output(out, resume=resume, overwrite=overwrite)
    manifest = new_manifest(task, arch_name, size, preset.name, seed, {**cfg.to_dict(), "target": target},
                            device)
    state = None
    if resume:
        _, old, state = _resume_point(out, manifest)
        manifest = {**old, "train": manifest["train"], "device": device}
    manifest.update(manifest_extra or {})
    # build the model, its optimiser and a batch before the run folder exists: an allocation failure leaves nothing
    what = (f"building a {arch_name} with {size.n_layers} layers, d_model {size.d_model}, vocabulary "
            f"{task.vocab_size} and a batch of {cfg.batch_size} sequences")
    with memory_guard(what):
        model = arch.build(task.vocab_size, size, seed, n_features=task.n_features).to(device)
        opt = make_optimizer(model, cfg, arch_name)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, cfg))
        gen = make_generator(seed, "train")
        eval_gen = make_generator(seed, "eval")
        n_eval = cfg.eval_sequences
        eval_batches = [task.sample(min(256, n_eval - i), eval_gen) for i in range(0, n_eval, 256)]
        trial = torch.Generator()
        trial.set_state(gen.get_state())
        task.sample(cfg.batch_size, trial)  # the first training batch, drawn from a copy: allocation check
    manifest["n_params"] = n_params(model)

    output = open_output(out, kind="tunnel-run", resume=resume, overwrite=overwrite)
    try:
        run_dir = output.work
        start, wall_before = 0, 0.0
        if resume and not output.created:
            _, old, state = _resume_point(out, {**manifest, "train": manifest["train"]})  # again, under the lock
            if old.get("status") == "finished":  # evaluated, but the clean-up or the swap was cut short
                return _finish(output, run_dir)
            if old.get("status") == "trained":  # training finished, final evaluation was interrupted
                return _evaluate_and_commit(output, run_dir, device, eval_sequences_final or max(n_eval, 2048),
                                            progress)
            for folder in (run_dir, run_dir / "checkpoints", run_dir / "state"):
                remove_stale_temps(folder, _own_temp)
        if state is not None:
            try:
                model.load_state_dict(state["model"])
                opt.load_state_dict(state["optimizer"])
                sched.load_state_dict(state["scheduler"])
                gen.set_state(state["generator"])
            except (RuntimeError, ValueError, KeyError, TypeError) as exc:
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise CheckpointError(f"cannot resume: {run_dir / STATE_FILE} does not fit the model ({first})") \
                    from None
            start, wall_before = state["step"], float(state.get("wall_time_s", 0.0))
        log = JsonlLog(run_dir / "log.jsonl")
        log.truncate(start)  # records after the saved step are replayed identically
        manifest.update(status="training", step=start)
        manifest.pop("failure", None)
        write_manifest(run_dir, manifest)
        return _train_loop(output, run_dir, manifest, task, arch, arch_name, model, opt, sched, gen,
                           eval_batches, cfg, target, seed, device, start, wall_before, stop_after,
                           eval_sequences_final, progress)
    finally:
        output.close()


def _train_loop(output, run_dir: Path, manifest: dict[str, Any], task: Task, arch, arch_name: str,
                model: torch.nn.Module, opt, sched, gen: torch.Generator, eval_batches, cfg: TrainConfig,
                target: str, seed: int, device: str, start: int, wall_before: float, stop_after: int | None,
                eval_sequences_final: int | None, progress: bool) -> dict[str, Any]:
    """The optimisation loop of :func:`train_tunnel` (run folder open and locked)."""
    state_path = run_dir / STATE_FILE
    log = JsonlLog(run_dir / "log.jsonl")
    ckpts = set(checkpoint_steps(cfg.steps, cfg.n_checkpoints))
    n_eval = cfg.eval_sequences
    saved: list[int] = [start] if state_path.exists() else []

    def save_state(step: int, wall: float) -> None:
        save_trainer_state(state_path, model=model.state_dict(), optimizer=opt.state_dict(),
                           scheduler=sched.state_dict(), generator=gen.get_state(), step=step,
                           wall_time_s=wall)
        saved.append(step)

    t0 = timer()
    step = start
    mae = float("nan")
    end = cfg.steps if stop_after is None else min(cfg.steps, start + stop_after)
    stop = StopRequest()
    bar = tqdm(total=cfg.steps, initial=start, desc=f"train {task.name}/{arch_name}", disable=not progress,
               dynamic_ncols=True)
    try:
        with stop:
            if start == 0 and 0 in ckpts:
                save_model_folder(checkpoint_dir(run_dir, 0), arch_name, model, task)
            model.train()
            while step < end and stop.signum is None:
                batch = task.sample(cfg.batch_size, gen).to(device)
                try:
                    loss, grad_norm = optimisation_step(arch, model, opt, batch, target, cfg, device)
                except NonFiniteStep as bad:
                    raise _diverged(run_dir, manifest, step + 1, bad, cfg, saved) from None
                sched.step()
                step += 1
                bar.update(1)
                if step in ckpts:
                    save_model_folder(checkpoint_dir(run_dir, step), arch_name, model, task)
                if step % cfg.eval_every == 0 or step == cfg.steps:
                    res = evaluate_model(model, arch, task, n_sequences=n_eval, seed=seed, device=device,
                                         batches=eval_batches)
                    mae = res.entropy_mae_bits
                    log.write({"step": step, "loss": loss.item(), "grad_norm": float(grad_norm),
                               "lr": sched.get_last_lr()[0], "entropy_mae_bits": mae, "kl_bits": res.kl_bits,
                               "wall_time_s": wall_before + timer() - t0})
                if step % 10 == 0:
                    bar.set_postfix(loss=f"{loss.item():.4f}", mae=f"{mae:.4f}")
                if step % cfg.save_every == 0:
                    save_state(step, wall_before + timer() - t0)
            wall = wall_before + timer() - t0
            if not saved or saved[-1] != step:
                save_state(step, wall)
            if stop.signum is not None:
                _interrupted(run_dir, output, stop.signum, step, cfg.steps)
            if step < cfg.steps:
                return {"status": "paused", "step": step}
            save_model_folder(run_dir / "model", arch_name, model, task)
            manifest.update(status="trained", step=step, train_wall_time_s=wall)
            write_manifest(run_dir, manifest)
    except Exception as exc:
        if is_out_of_memory(exc) and output.created and not saved:
            _empty(run_dir, keep=run_dir == output.final)  # nothing worth keeping: no half-made run folder
            raise out_of_memory_error(f"training with a batch of {cfg.batch_size} sequences", exc) from None
        if isinstance(exc, OSError):  # disk full, quota, read-only or failing disk while writing the run
            kept = (f"the trainer state of step {saved[-1]} is kept" if saved else "no trainer state was saved yet")
            raise _write_failure(run_dir, exc, f"training stopped at step {step} of {cfg.steps}; {kept}") from None
        raise
    finally:
        bar.close()
    if stop.signum is not None:  # the signal came while the final model was saved: evaluation is left to --resume
        _interrupted(run_dir, output, stop.signum, step, cfg.steps)
    return _evaluate_and_commit(output, run_dir, device, eval_sequences_final or max(n_eval, 2048), progress)


def _empty(folder: Path, *, keep: bool) -> None:
    """Delete ``folder`` (a run folder this job created), or only its content when ``keep``."""
    from geoprobe.io import mark

    shutil.rmtree(folder, ignore_errors=True)
    if keep:
        folder.mkdir(parents=True, exist_ok=True)
        mark(folder, "tunnel-run")


def _interrupted(run_dir: Path, output, signum: int, step: int, steps: int):
    """Raise :class:`TrainingInterrupted` (the trainer state of ``step`` is already saved)."""
    name = signal.Signals(signum).name
    where = "" if output.work == output.final else f" (the replacement is kept in {output.work}; " \
        f"{output.final} is unchanged until it finishes)"
    raise TrainingInterrupted(signum, f"{name} received: training stopped at step {step} of {steps} with its "
                                      f"trainer state saved in {run_dir}{where}; continue with --resume")


def _diverged(run_dir: Path, manifest: dict[str, Any], step: int, bad: NonFiniteStep, cfg: TrainConfig,
              saved: list[int]) -> TrainingDivergedError:
    """Mark the run ``failed`` and describe what was kept."""
    failure = f"non-finite loss ({bad.loss}) or gradient norm ({bad.grad_norm}) at step {step}"
    manifest.update(status="failed", failure=failure)
    write_manifest(run_dir, manifest)
    ckpts = [s for s, _ in list_checkpoints(run_dir)]
    kept = f"checkpoints up to step {ckpts[-1]}" if ckpts else "no checkpoints"
    kept += f" and the trainer state of step {saved[-1]}" if saved else ""
    return TrainingDivergedError(f"training diverged in {run_dir}: {failure} with lr {cfg.lr:g}; kept {kept}; "
                                 "retrain with a smaller --lr (--overwrite)")


def _evaluate_and_commit(output, run_dir: Path, device: str, n_sequences: int, progress: bool) -> dict[str, Any]:
    """Final evaluation (a signal stops it at once: training is saved, status ``trained``), then swap in."""
    message = (f"{{signal}} received during the final evaluation; training is complete and saved in {run_dir}; "
               "continue with --resume (it only evaluates)")
    try:
        with StopRequest(immediate=message):
            evaluate_run(run_dir, device=device, n_sequences=n_sequences, progress=progress)
    except OSError as exc:
        raise _write_failure(run_dir, exc, "training is complete and saved; the final evaluation stopped") from None
    return _finish(output, run_dir)


def _write_failure(run_dir: Path, exc: OSError, where: str) -> OutputError:
    """One line for an OSError while writing the run (no space left, quota, read-only or failing disk)."""
    reason = exc.strerror or str(exc)
    return OutputError(f"cannot write to {run_dir}: {reason} ({Path(exc.filename).name if exc.filename else 'a file'}"
                       f"); {where}; fix the disk and continue with --resume")


def _finish(output, run_dir: Path) -> dict[str, Any]:
    """Drop the resume state of an evaluated run and swap it in; a signal here waits until this is done (the
    run is complete then, so it is not reported as an interruption)."""
    with StopRequest():
        metrics = json.loads((run_dir / "metrics.json").read_text())
        shutil.rmtree(run_dir / "state", ignore_errors=True)  # finished: the resume state is no longer needed
        output.commit()
    return metrics


def _evaluate_at(run_dir: str | Path, step: int | None, device: str, n_sequences: int, progress: bool
                 ) -> tuple[torch.nn.Module, Any, dict[str, Any], dict[str, Any]]:
    """Load the run's final model (``step`` None) or its checkpoint at ``step`` and measure its calibration on
    ``n_sequences`` sequences of the run seed's held-out ``eval`` stream: (model, task, manifest, metrics)."""
    from geoprobe.models.checkpoint import load_run

    model, task, manifest = load_run(run_dir, step=step, device=device)
    seed = int(manifest.get("seed", 0))
    res = evaluate_model(model, ARCHS.get(manifest["arch"]), task, n_sequences=n_sequences, seed=seed,
                         device=device, progress=progress)
    metrics: dict[str, Any] = {"task": manifest["task"], "arch": manifest["arch"], "preset": manifest.get("preset"),
                               "seed": seed, "eval_stream": "eval", **({} if step is None else {"step": step}),
                               **res.to_dict()}
    return model, task, manifest, metrics


def evaluate_checkpoint(run_dir: str | Path, step: int, *, device: str = "auto", n_sequences: int = 2048
                        ) -> dict[str, Any]:
    """The calibration metrics of the run's checkpoint at ``step`` (0: the untrained initialisation), measured
    exactly as :func:`evaluate_run` measures the final model (same stream, seed and count); writes nothing."""
    return _evaluate_at(run_dir, step, resolve_device(device), n_sequences, False)[3]


def evaluate_run(run_dir: str | Path, *, lengths: list[int] | None = None, device: str = "auto",
                 n_sequences: int = 2048, progress: bool = False) -> dict[str, Any]:
    """(Re-)evaluate a saved run on the held-out stream; write ``metrics.json`` and ``report.html``."""
    from geoprobe.tunnel_report import write_calibration_report

    device = resolve_device(device)
    model, task, manifest, metrics = _evaluate_at(run_dir, None, device, n_sequences, progress)
    arch = ARCHS.get(manifest["arch"])
    seed = metrics["seed"]
    param = LENGTH_PARAM.get(task.name)
    if lengths is None and param is not None:
        from geoprobe.models.presets import PRESET_NAMES, get_preset

        if manifest.get("preset") in PRESET_NAMES:
            lengths = list(get_preset(task.name, manifest["preset"]).eval_lengths)
    if lengths and param is not None:
        metrics["length_generalisation"] = {
            "param": param,
            "results": length_generalisation(model, arch, task, param, lengths,
                                             max_positions=manifest["size"]["max_positions"],
                                             n_sequences=min(n_sequences, 1024), seed=seed, device=device,
                                             progress=progress),
        }
    write_json(Path(run_dir) / "metrics.json", metrics)
    manifest.update(status="finished", metrics={
        k: metrics[k] for k in ("entropy_mae_bits", "entropy_mae_mean_of_means_bits", "kl_bits",
                                "deterministic_accuracy", "latent_entropy_mae_bits") if k in metrics
    })
    write_calibration_report(Path(run_dir) / "report.html", manifest, metrics)
    write_manifest(run_dir, manifest)  # last: status "finished" means metrics and report are written
    return metrics


__all__ = ["train_tunnel", "evaluate_run", "resolve_device", "TrainConfig", "ModelSize", "Task"]
