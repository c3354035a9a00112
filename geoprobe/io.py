"""Atomic file output: results are written to a temporary file in the same folder and renamed into place,
so an interrupted job never leaves a half-written file behind."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from geoprobe.errors import OutputExistsError

_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: str | Path, writer: Callable[[Path], None]) -> Path:
    """Call ``writer(tmp_path)`` and atomically rename ``tmp_path`` to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        writer(Path(tmp))
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; results are ordinary user files
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def _default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_json(path: str | Path, data: Any) -> Path:
    return write_text(path, json.dumps(data, indent=2, default=_default) + "\n")


def atomic_dir(final: str | Path, writer: Callable[[Path], None]) -> Path:
    """Build a folder with ``writer(tmp_dir)`` and rename it to ``final`` (replacing an old one)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    os.chmod(tmp, 0o777 & ~_UMASK)
    try:
        writer(tmp)
        if final.exists():
            old = final.with_name(f".{final.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def prepare_output_dir(path: str | Path, *, resume: bool = False, overwrite: bool = False,
                       marker: str | None = None) -> Path:
    """Create ``path`` for a new job, refusing to clobber finished work.

    An existing non-empty folder is an error unless ``resume`` (keep it and continue) or ``overwrite``
    (delete it first) is given. ``marker`` names a file that must be present to resume.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputExistsError(f"output path {path} exists and is not a folder")
    non_empty = path.is_dir() and any(path.iterdir())
    if non_empty and overwrite:
        shutil.rmtree(path)
    elif non_empty and not resume:
        raise OutputExistsError(
            f"output folder {path} already holds results; pass --resume to continue it or --overwrite to replace it"
        )
    elif resume and marker and non_empty and not (path / marker).exists():
        raise OutputExistsError(f"cannot resume {path}: it holds no {marker} (not a geoprobe run folder?)")
    path.mkdir(parents=True, exist_ok=True)
    return path
