"""Run folders: layout, manifest, strict save/load of wind-tunnel models.

A run folder written by ``geoprobe tunnel train``::

    RUN/manifest.json         what was trained and how (task, architecture, size, schedule, seed, versions,
                              status, metrics summary); the single source of truth for reloading
    RUN/model/                the final model (HF ``save_pretrained`` folder + a word-level tokenizer over the
                              task's token names, so TransformerLens can boot it like any HF model)
    RUN/checkpoints/step_NNNNNNN/  models along training, dense early (step 0 = initialisation)
    RUN/state/trainer.pt      model/optimiser/scheduler/generator state of one step, for --resume (read with
                              ``torch.load(weights_only=True)``; removed when the run is finished)
    RUN/log.jsonl             training and evaluation log (one record per evaluation step)
    RUN/metrics.json, RUN/report.html   calibration against the exact posterior
    RUN/.geoprobe             marker: geoprobe wrote this folder (``--overwrite`` may replace it)

The manifest's ``status`` is ``training`` (unfinished: ``--resume``), ``failed`` (non-finite loss; see
``failure``), ``trained`` (final evaluation pending: ``--resume`` runs it) or ``finished``.
"""

from __future__ import annotations

import platform
import time
from pathlib import Path
from typing import Any

import torch

from geoprobe.errors import CheckpointError
from geoprobe.io import atomic_dir, write_json
from geoprobe.logs import quiet_libraries
from geoprobe.models.architectures import ARCHS, ModelSize, read_json
from geoprobe.tasks.base import Task, make_task

MANIFEST = "manifest.json"
RUN_KIND = "geoprobe-tunnel-run"


def versions() -> dict[str, str]:
    """Versions of the software that produced a result."""
    import transformers

    import geoprobe

    return {
        "geoprobe": geoprobe.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }


def save_tokenizer(folder: Path, token_names: list[str]) -> None:
    """Save a word-level tokenizer whose ids are the task's token ids (names from ``Task.token_names``)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {name: i for i, name in enumerate(token_names)}
    if len(vocab) != len(token_names):
        raise ValueError("token names must be unique")
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=token_names[0]))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token=token_names[0])
    fast.save_pretrained(folder)


@quiet_libraries()
def save_model_folder(folder: Path, arch_name: str, model: torch.nn.Module, task: Task) -> Path:
    """Atomically write ``model`` (and, for HF architectures, the task tokenizer) to ``folder``."""
    arch = ARCHS.get(arch_name)

    def write(tmp: Path) -> None:
        arch.save(model, tmp)
        if arch.is_hf:
            save_tokenizer(tmp, task.token_names())

    return atomic_dir(folder, write)


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step_{step:07d}"


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, folder) of every saved training checkpoint, in step order."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    out = []
    for d in root.iterdir():
        if d.is_dir() and d.name.startswith("step_") and d.name[5:].isdigit():
            out.append((int(d.name[5:]), d))
    return sorted(out)


def new_manifest(task: Task, arch_name: str, size: ModelSize, preset: str, seed: int,
                 train_cfg: dict[str, Any], device: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "kind": RUN_KIND,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "task": {"name": task.name, "config": task.config()},
        "arch": arch_name,
        "size": {
            "n_layers": size.n_layers, "n_heads": size.n_heads, "d_model": size.d_model,
            "max_positions": size.max_positions, "d_mlp": size.d_mlp,
        },
        "preset": preset,
        "seed": seed,
        "train": train_cfg,
        "device": device,
        "versions": versions(),
        "status": "training",
        **(extra or {}),
    }


def read_manifest(run_dir: str | Path) -> dict[str, Any]:
    """The manifest of a run folder; a clear error if the folder is not a geoprobe run."""
    run_dir = Path(run_dir)
    if run_dir.is_file():
        raise CheckpointError(f"{run_dir} is a file, not a run folder")
    if not run_dir.is_dir():
        raise CheckpointError(f"run folder {run_dir} does not exist")
    path = run_dir / MANIFEST
    manifest = read_json(path)
    if not isinstance(manifest, dict):
        raise CheckpointError(f"{path} is not a geoprobe wind-tunnel manifest (a JSON {type(manifest).__name__}, "
                              "not an object)")
    if manifest.get("kind") != RUN_KIND:
        raise CheckpointError(f"{path} is not a geoprobe wind-tunnel manifest (kind {manifest.get('kind')!r})")
    for key in ("task", "arch", "size"):
        if key not in manifest:
            raise CheckpointError(f"{path} lacks {key!r}")
    task = manifest["task"]
    if not isinstance(task, dict) or not isinstance(task.get("name"), str) or not isinstance(task.get("config"), dict):
        raise CheckpointError(f"{path} lacks the task name and config (task must be {{\"name\": ..., \"config\": "
                              "{...}}})")
    if not isinstance(manifest["size"], dict) or not isinstance(manifest["arch"], str):
        raise CheckpointError(f"{path} has a malformed arch or size entry")
    return manifest


def is_finished_run(run_dir: str | Path) -> bool:
    """True when ``run_dir`` holds a run whose training finished (manifest status ``trained``/``finished``)."""
    return (Path(run_dir) / MANIFEST).exists() and read_manifest(run_dir).get("status") in ("trained", "finished")


def write_manifest(run_dir: str | Path, manifest: dict[str, Any]) -> None:
    write_json(Path(run_dir) / MANIFEST, manifest)


def task_from_manifest(manifest: dict[str, Any]) -> Task:
    return make_task(manifest["task"]["name"], **manifest["task"]["config"])


def load_run(run_dir: str | Path, *, step: int | None = None,
             device: str | torch.device = "cpu") -> tuple[torch.nn.Module, Task, dict[str, Any]]:
    """Strictly load a run's model (final, or the checkpoint at ``step``), its task and manifest.

    Raises :class:`CheckpointError` when files are missing or corrupted, or when the weights do not match the
    manifest (vocabulary, depth, width): a partially loaded model is never returned.
    """
    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir)
    task = task_from_manifest(manifest)
    folder = run_dir / "model" if step is None else checkpoint_dir(run_dir, step)
    if not folder.is_dir():
        steps = [s for s, _ in list_checkpoints(run_dir)]
        what = "final model" if step is None else f"checkpoint at step {step}"
        raise CheckpointError(f"{run_dir} has no {what}; saved checkpoint steps: {steps or 'none'}")
    arch = ARCHS.get(manifest["arch"])
    model = arch.load(folder, device=device)
    check_model_matches(model, manifest, task, folder)
    return model, task, manifest


def check_model_matches(model: torch.nn.Module, manifest: dict[str, Any], task: Task, folder: Path) -> None:
    """Raise if the loaded model's vocabulary, depth or width disagree with the manifest."""
    cfg = getattr(model, "config", None)
    size = manifest["size"]
    if cfg is None:
        return
    got = {
        "vocab_size": cfg.vocab_size,
        "n_layers": getattr(cfg, "num_hidden_layers", None),
        "d_model": getattr(cfg, "hidden_size", None),
    }
    want = {"vocab_size": task.vocab_size, "n_layers": size["n_layers"], "d_model": size["d_model"]}
    bad = {k: (got[k], want[k]) for k in want if got[k] is not None and got[k] != want[k]}
    if bad:
        detail = ", ".join(f"{k}: weights {g} vs manifest {w}" for k, (g, w) in bad.items())
        raise CheckpointError(f"model in {folder} does not match its manifest ({detail})")
