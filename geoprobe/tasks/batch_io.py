"""Save a :class:`~geoprobe.tasks.base.TaskBatch` to a folder of ``.npy`` files and read it back exactly.

Layout of ``folder``: one ``<field>.npy`` per tensor field (``tokens``, ``loss_mask``, ``target_probs``,
``bayes_entropy``, ``labels``, ``step``, ``readout_ids``, ``features`` when present), ``extras.<name>.npy`` per
extra tensor, and ``batch.json`` (the list of files, their dtypes and shapes, plus whatever ``meta`` the caller
records, e.g. the task, its config and the seed the sequences were drawn with). Arrays are written and read
with ``allow_pickle=False``: the folder holds plain numbers, never pickles. A saved batch loads back
bit-identical (same dtypes, same values).
"""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from geoprobe.errors import ConfigError
from geoprobe.tasks.base import TaskBatch

INDEX = "batch.json"
_EXTRA = "extras."


def _fields() -> list[str]:
    return [f.name for f in fields(TaskBatch) if f.name != "extras"]


def save_batch(folder: str | Path, batch: TaskBatch, meta: dict[str, Any] | None = None) -> Path:
    """Write ``batch`` into ``folder`` (created) as described in the module docstring; returns ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {name: getattr(batch, name) for name in _fields() if getattr(batch, name) is not None}
    arrays.update({f"{_EXTRA}{k}": v for k, v in batch.extras.items()})
    files = {}
    for name, tensor in arrays.items():
        a = tensor.detach().cpu().numpy()
        np.save(folder / f"{name}.npy", a, allow_pickle=False)
        files[name] = {"file": f"{name}.npy", "dtype": str(a.dtype), "shape": list(a.shape)}
    (folder / INDEX).write_text(json.dumps({"arrays": files, "meta": meta or {}}, indent=2) + "\n")
    return folder


def read_batch_meta(folder: str | Path) -> dict[str, Any]:
    """The ``meta`` recorded with a saved batch."""
    return json.loads((Path(folder) / INDEX).read_text())["meta"]


def load_batch(folder: str | Path) -> TaskBatch:
    """The batch saved by :func:`save_batch` in ``folder`` (a missing or malformed file: one-line error)."""
    folder = Path(folder)
    try:
        index = json.loads((folder / INDEX).read_text())["arrays"]
        arrays = {name: torch.from_numpy(np.load(folder / spec["file"], allow_pickle=False))
                  for name, spec in index.items()}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{folder} does not hold a saved task batch ({type(exc).__name__}: {exc})") from None
    missing = [n for n in _fields() if n != "features" and n not in arrays]
    if missing:
        raise ConfigError(f"{folder} lacks {', '.join(missing)} of a saved task batch")
    extras = {k[len(_EXTRA):]: v for k, v in arrays.items() if k.startswith(_EXTRA)}
    return TaskBatch(**{n: arrays.get(n) for n in _fields()}, extras=extras)
