"""Turn ``name_or_path`` into a local Hugging Face folder (or a plain-torch run) before any backend boots.

Accepted sources, tried in this order:

1. an existing ``*.gguf`` file -> converted once into a cached plain HF folder (:mod:`geoprobe.backends.gguf`);
2. a geoprobe run folder (``manifest.json`` of kind ``geoprobe-tunnel-run`` + ``model/``), or a model folder
   inside one (``RUN/model``, a training checkpoint ``RUN/checkpoints/step_N``): the run's manifest comes
   with it and the step is recorded (``source_detail["checkpoint_step"]``, None for the final model);
3. a local HF folder (``config.json``);
4. a Hugging Face hub id (``org/name``, optional ``revision``), resolved to a local snapshot first so that no
   backend ever talks to the network itself. Offline (``HF_HUB_OFFLINE=1``) only the local cache is
   consulted; online, one metadata request (10 s timeout, no retries) tells missing, gated and wrong-revision
   repositories apart. Every failure is a one-line :class:`ModelLoadError` subclass, never a retry loop.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geoprobe.backends.errors import (
    GatedModelError,
    ModelLoadError,
    ModelNotFoundError,
    OfflineModelError,
)

RUN_KIND = "geoprobe-tunnel-run"
_STEP_DIR = re.compile(r"step_(\d+)")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken", "tokenizer*"]


@dataclass
class ResolvedSource:
    """A model located on disk.

    Attributes:
        kind: ``gguf``, ``run``, ``local`` or ``hub``.
        name: what the user passed.
        model_dir: the HF folder to load (None for plain-torch runs).
        revision: hub revision asked for (hub only).
        manifest: the run manifest (runs only).
        detail: provenance (paths, sha256, snapshot commit) recorded in ``ModelInfo.source_detail``.
    """

    kind: str
    name: str
    model_dir: Path | None
    revision: str | None = None
    manifest: dict[str, Any] | None = None
    detail: dict[str, Any] = field(default_factory=dict)


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is set, read at call time."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except ImportError:  # pragma: no cover
        return False


def _looks_like_path(name: str) -> bool:
    return (name.startswith(("/", "./", "../", "~")) or name.endswith(".gguf") or name.count("/") > 1
            or os.sep != "/" and os.sep in name)


def resolve_source(name_or_path: str | os.PathLike, *, revision: str | None = None,
                   cache_dir: str | Path | None = None) -> ResolvedSource:
    """Locate ``name_or_path`` on disk (see the module docstring); raise a clear error if impossible."""
    name = str(name_or_path)
    path = Path(name).expanduser()
    if path.exists():
        if revision is not None:
            raise ModelLoadError(f"revision={revision!r} only applies to hub ids, not to the local path {path}")
        if path.is_file():
            if path.suffix.lower() != ".gguf":
                raise ModelLoadError(f"{path} is a file but not a .gguf model; pass a GGUF file, a model "
                                     "folder, a geoprobe run folder or a hub id")
            from geoprobe.backends.gguf import gguf_to_hf_folder

            folder, meta = gguf_to_hf_folder(path, cache_dir)
            return ResolvedSource("gguf", name, folder, detail={"path": str(path.resolve()), **meta,
                                                                 "hf_folder": str(folder)})
        run = run_of_folder(path)
        if run is not None:
            run_dir, step = run
            return _resolve_run(run_dir, name, None if run_dir == path else path, step)
        if (path / "config.json").is_file():
            return ResolvedSource("local", name, path, detail={"path": str(path.resolve())})
        ggufs = sorted(path.glob("*.gguf"))
        steps = sorted(p.name for p in path.glob("step_*") if _STEP_DIR.fullmatch(p.name))
        hint = f" (it holds {ggufs[0].name}: pass that file)" if ggufs else ""
        if steps and path.name == "checkpoints":
            hint = (f" (it holds training checkpoints {steps[0]} ... {steps[-1]}: pass one of them, or the run "
                    f"folder {path.parent})")
        raise ModelLoadError(f"folder {path} is neither a geoprobe run (manifest.json) nor a Hugging Face "
                             f"model folder (config.json){hint}")
    if _looks_like_path(name) or not _HUB_ID.match(name):
        raise ModelNotFoundError(f"no such file or folder: {path}")
    return _resolve_hub(name, revision)


def _run_manifest(path: Path) -> dict[str, Any] | None:
    """The manifest at ``path`` if it is a readable geoprobe wind-tunnel manifest, else None."""
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("kind") == RUN_KIND else None


def run_of_folder(path: str | os.PathLike) -> tuple[Path, int | None] | None:
    """The geoprobe run a folder belongs to: ``(RUN, None)`` for ``RUN`` itself (any folder with a
    ``manifest.json``) or ``RUN/model``, ``(RUN, N)`` for a training checkpoint ``RUN/checkpoints/step_N``;
    None for anything else. ``RUN/model`` and checkpoints count only when ``RUN/manifest.json`` is a
    wind-tunnel manifest."""
    p = Path(path).expanduser()
    if (p / "manifest.json").is_file():
        return p, None
    if p.name == "model" and _run_manifest(p.parent / "manifest.json") is not None:
        return p.parent, None
    m = _STEP_DIR.fullmatch(p.name)
    if m and p.parent.name == "checkpoints" and _run_manifest(p.parent.parent / "manifest.json") is not None:
        return p.parent.parent, int(m.group(1))
    return None


def _resolve_run(path: Path, name: str, model_dir: Path | None = None, step: int | None = None
                 ) -> ResolvedSource:
    """Run ``path`` with the weights of ``model_dir`` (default ``path/model``; a checkpoint for ``step``)."""
    try:
        manifest = json.loads((path / "manifest.json").read_text())
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"{path / 'manifest.json'} is corrupted: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("kind") != RUN_KIND:
        kind = manifest.get("kind") if isinstance(manifest, dict) else type(manifest).__name__
        raise ModelLoadError(f"{path / 'manifest.json'} is not a geoprobe wind-tunnel manifest (kind={kind!r})")
    final = model_dir is None
    model_dir = path / "model" if model_dir is None else model_dir
    detail = {"path": str(path.resolve()), "arch": manifest.get("arch"), "task": manifest.get("task"),
              "model_folder": str(model_dir.resolve()), "checkpoint_step": step}
    if (model_dir / "config.json").is_file():
        return ResolvedSource("run", name, model_dir, manifest=manifest, detail=detail)
    if model_dir.is_dir():  # a plain-torch architecture (LSTM/MLP): loaded through the torch-hooks registry
        return ResolvedSource("run", name, None, manifest=manifest, detail=detail)
    if final:
        raise ModelLoadError(f"run folder {path} has no model/ folder (training unfinished? use a checkpoint "
                             f"folder under {path / 'checkpoints'})")
    raise ModelLoadError(f"{model_dir} is not a model folder")


def _resolve_hub(repo: str, revision: str | None) -> ResolvedSource:
    from huggingface_hub import snapshot_download

    rev = f" (revision {revision})" if revision else ""
    def from_cache(why: str) -> ResolvedSource:
        """The cached snapshot, or one line saying why the model cannot be had (never a network retry)."""
        try:
            folder = snapshot_download(repo, revision=revision, local_files_only=True,
                                       allow_patterns=_HUB_PATTERNS)
        except Exception:
            raise OfflineModelError(why) from None
        return _hub_result(repo, revision, Path(folder), offline=True)

    if hub_offline():
        return from_cache(f"model {repo!r}{rev} is not in the local Hugging Face cache and HF_HUB_OFFLINE is "
                          "set; download it once online (gated models: huggingface-cli login first), or pass a "
                          "local folder, GGUF file or geoprobe run")
    from huggingface_hub import HfApi
    from huggingface_hub import errors as hf_errors

    try:
        info = HfApi().model_info(repo, revision=revision, timeout=10)
    except hf_errors.GatedRepoError:
        raise GatedModelError(f"model {repo!r} is gated: accept its licence on huggingface.co and log in "
                              "(huggingface-cli login or HF_TOKEN)") from None
    except hf_errors.RevisionNotFoundError:
        raise ModelNotFoundError(f"model {repo!r} has no revision {revision!r}") from None
    except hf_errors.RepositoryNotFoundError:
        raise ModelNotFoundError(f"no model {repo!r} on the Hugging Face hub (or it is private: log in with "
                                 "huggingface-cli login or HF_TOKEN)") from None
    except Exception as exc:  # network down, DNS, timeout: fall back to the cache once, never retry
        return from_cache(f"cannot reach the Hugging Face hub for {repo!r}{rev} ({type(exc).__name__}) and it "
                          "is not in the local cache; set HF_HUB_OFFLINE=1 and pass a local folder, or retry "
                          "online")
    files = {s.rfilename for s in (info.siblings or [])}
    patterns = list(_HUB_PATTERNS)
    if not any(f.endswith(".safetensors") for f in files):
        patterns.append("*.bin")
    try:
        folder = snapshot_download(repo, revision=revision, allow_patterns=patterns)
    except Exception as exc:
        raise ModelLoadError(f"downloading {repo!r}{rev} failed: {str(exc).splitlines()[0]}") from None
    return _hub_result(repo, revision, Path(folder), offline=False, sha=info.sha)


def _hub_result(repo: str, revision: str | None, folder: Path, *, offline: bool, sha: str | None = None
                ) -> ResolvedSource:
    if not (folder / "config.json").is_file():
        raise ModelLoadError(f"hub model {repo!r} has no config.json (not a transformers model?)")
    return ResolvedSource("hub", repo, folder, revision=revision,
                          detail={"repo": repo, "revision": revision, "commit": sha or folder.name,
                                  "snapshot": str(folder), "offline": offline})
