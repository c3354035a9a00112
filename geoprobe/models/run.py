"""Train a wind tunnel end to end: sample, optimise, checkpoint, evaluate, report; resumable."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from geoprobe.errors import CheckpointError, ConfigError
from geoprobe.io import prepare_output_dir, write_json
from geoprobe.models.architectures import ARCHS, ModelSize, n_params
from geoprobe.models.checkpoint import (
    MANIFEST,
    checkpoint_dir,
    new_manifest,
    read_manifest,
    save_model_folder,
    write_manifest,
)
from geoprobe.models.evaluate import evaluate_model, length_generalisation
from geoprobe.models.presets import LENGTH_PARAM, Preset
from geoprobe.models.training import (
    JsonlLog,
    TrainConfig,
    checkpoint_steps,
    load_trainer_state,
    lr_factor,
    make_optimizer,
    optimisation_step,
    save_trainer_state,
    timer,
)
from geoprobe.tasks.base import Task, make_generator, make_task

STATE_FILE = Path("state") / "trainer.pt"


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when available else ``cpu``; a clear error for an unavailable CUDA request."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' requested but no CUDA GPU is available; use --device cpu or auto")
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise ConfigError(f"unknown device {device!r}; valid choices: auto, cpu, cuda, cuda:N")
    return device


def train_tunnel(out: str | Path, task_name: str, preset: Preset, *, arch_name: str = "transformer",
                 seed: int = 0, device: str = "auto", resume: bool = False, overwrite: bool = False,
                 task_overrides: dict[str, Any] | None = None, progress: bool = True,
                 eval_sequences_final: int | None = None, stop_after: int | None = None,
                 manifest_extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train ``arch_name`` on ``task_name`` with ``preset`` into the run folder ``out``; return final metrics.

    With ``resume=True`` an interrupted run continues from its last saved trainer state (same task, size,
    schedule and seed, checked against the manifest). ``stop_after`` ends this call after that many
    optimisation steps with the trainer state saved (time-sliced jobs); the returned dict then holds
    ``{"status": "paused", "step": ...}``. Resuming reproduces an uninterrupted run exactly on CPU.
    ``manifest_extra`` adds keys to the run's manifest (e.g. the time-budget plan of ``tunnel compare``).
    """
    arch = ARCHS.get(arch_name)  # validate names before touching the disk
    device = resolve_device(device)
    task = make_task(task_name, **{**preset.task_params, **(task_overrides or {})})
    size = preset.size
    if task.seq_len > size.max_positions:
        size = replace(size, max_positions=task.seq_len)
    cfg = preset.train
    target = cfg.target or task.default_target
    run_dir = prepare_output_dir(out, resume=resume, overwrite=overwrite, marker=MANIFEST)
    manifest = new_manifest(task, arch_name, size, preset.name, seed, {**cfg.to_dict(), "target": target},
                            device)
    if resume and (run_dir / MANIFEST).exists():
        old = read_manifest(run_dir)
        for key in ("task", "arch", "size", "seed"):
            if old.get(key) != manifest.get(key):
                raise CheckpointError(
                    f"cannot resume {run_dir}: its {key} is {old.get(key)!r}, this command asks for "
                    f"{manifest.get(key)!r}"
                )
        manifest = {**old, "train": manifest["train"], "device": device}
    manifest.update(manifest_extra or {})
    model = arch.build(task.vocab_size, size, seed, n_features=task.n_features).to(device)
    manifest["n_params"] = n_params(model)
    opt = make_optimizer(model, cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, cfg))
    gen = make_generator(seed, "train")
    start, wall_before = 0, 0.0
    state_path = run_dir / STATE_FILE
    if resume and state_path.exists():
        state = load_trainer_state(state_path)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        gen.set_state(state["generator"])
        start, wall_before = state["step"], state.get("wall_time_s", 0.0)
    write_manifest(run_dir, manifest)
    log = JsonlLog(run_dir / "log.jsonl")
    ckpts = set(checkpoint_steps(cfg.steps, cfg.n_checkpoints))
    eval_gen = make_generator(seed, "eval")
    n_eval = cfg.eval_sequences
    eval_batches = [task.sample(min(256, n_eval - i), eval_gen) for i in range(0, n_eval, 256)]

    def save_state(step: int, wall: float) -> None:
        save_trainer_state(state_path, model=model.state_dict(), optimizer=opt.state_dict(),
                           scheduler=sched.state_dict(), generator=gen.get_state(), step=step,
                           wall_time_s=wall)

    t0 = timer()
    step = start
    if start == 0 and 0 in ckpts:
        save_model_folder(checkpoint_dir(run_dir, 0), arch_name, model, task)
    bar = tqdm(total=cfg.steps, initial=start, desc=f"train {task_name}/{arch_name}", disable=not progress,
               dynamic_ncols=True)
    mae = float("nan")
    end = cfg.steps if stop_after is None else min(cfg.steps, start + stop_after)
    try:
        model.train()
        while step < end:
            batch = task.sample(cfg.batch_size, gen).to(device)
            loss, grad_norm = optimisation_step(arch, model, opt, batch, target, cfg, device)
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
    except KeyboardInterrupt:
        save_state(step, wall_before + timer() - t0)
        bar.close()
        raise
    bar.close()
    wall = wall_before + timer() - t0
    save_state(step, wall)
    if step < cfg.steps:
        return {"status": "paused", "step": step}
    save_model_folder(run_dir / "model", arch_name, model, task)
    manifest.update(status="trained", step=step, train_wall_time_s=wall)
    write_manifest(run_dir, manifest)
    metrics = evaluate_run(run_dir, device=device, n_sequences=eval_sequences_final or max(n_eval, 2048),
                           progress=progress)
    shutil.rmtree(run_dir / "state", ignore_errors=True)  # finished: the resume state is no longer needed
    return metrics


def evaluate_run(run_dir: str | Path, *, lengths: list[int] | None = None, device: str = "auto",
                 n_sequences: int = 2048, progress: bool = False) -> dict[str, Any]:
    """(Re-)evaluate a saved run on the held-out stream; write ``metrics.json`` and ``report.html``."""
    from geoprobe.models.checkpoint import load_run
    from geoprobe.tunnel_report import write_calibration_report

    device = resolve_device(device)
    model, task, manifest = load_run(run_dir, device=device)
    arch = ARCHS.get(manifest["arch"])
    seed = int(manifest.get("seed", 0))
    res = evaluate_model(model, arch, task, n_sequences=n_sequences, seed=seed, device=device,
                         progress=progress)
    metrics: dict[str, Any] = {
        "task": manifest["task"],
        "arch": manifest["arch"],
        "preset": manifest.get("preset"),
        "seed": seed,
        "eval_stream": "eval",
        **res.to_dict(),
    }
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
                                "deterministic_accuracy")
    })
    write_manifest(run_dir, manifest)
    write_calibration_report(Path(run_dir) / "report.html", manifest, metrics)
    return metrics


__all__ = ["train_tunnel", "evaluate_run", "resolve_device", "TrainConfig", "ModelSize", "Task"]
