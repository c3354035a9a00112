"""Key frames saved with each revision's scan, and their overlap with the final revision's.

Each revision's scan folder holds ``key_frames.safetensors``: per layer ``layer_<l>`` the rank-r key frames of
its key heads, [n_kv_heads, d_model, r] float32 (:func:`geoprobe.probes.key_frame.key_frame_bases`, r =
min(``DEFAULT_RANK``, d_head)), with the rank, d_model and definition in the file's metadata. The final
revision's folder also holds ``key_frames_init.safetensors``: the same for a freshly initialised model of the
same configuration (seeded), the initial-weights floor of the overlap. These few megabytes are all the trajectory
needs: it never reloads a model.

Per (revision s, layer l, key head h): overlap_s(l, h) = ||U_s^T U_final||_F^2 / r (mean squared cosine of the
principal angles; 1 = the final frame, r / d_model expected for a random subspace), with ``random_null`` = r /
d_model, ``null_normalised`` = (overlap - r/d) / (1 - r/d) and ``init_overlap`` = the overlap of the fresh
initialisation with the final frame.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import torch

from geoprobe.errors import ConfigError

FILE = "key_frames.safetensors"
INIT_FILE = "key_frames_init.safetensors"
#: at most this many leading singular directions per key head are kept (all of them when d_head is smaller)
DEFAULT_RANK = 16
DEFINITION = "top-r left singular vectors of W_K^h [d_model, d_head] per key head (weights)"


def handle_key_frames(handle: Any, rank: int = DEFAULT_RANK) -> dict[str, torch.Tensor] | None:
    """``{"layer_<l>": [n_kv_heads, d_model, r] float32}`` of a loaded model; None for an attention-free one."""
    from geoprobe.probes.key_frame import key_frame_bases

    if not handle.info.has_attention:
        return None
    return {f"layer_{i}": key_frame_bases(handle.attention_weights(i).W_K, rank).to(torch.float32).contiguous()
            for i in range(int(handle.info.n_layers))}


def _save(frames: dict[str, torch.Tensor], path: Path, note: str, init_file: str) -> None:
    from safetensors.torch import save_file

    from geoprobe.io import atomic_write

    first = next(iter(frames.values()))
    meta = {"definition": DEFINITION, "rank": str(first.shape[-1]), "d_model": str(first.shape[-2]),
            "n_layers": str(len(frames)), "weights": note, "init_file": init_file}
    atomic_write(path, lambda p: save_file(frames, str(p), metadata=meta))


def save_key_frames(handle: Any, folder: str | Path, *, init: bool = False, seed: int = 0,
                    rank: int = DEFAULT_RANK) -> list[str]:
    """Write :data:`FILE` (and with ``init`` :data:`INIT_FILE`, from
    :func:`geoprobe.probes.key_orthogonality.initialised_handle` with ``seed``) into ``folder``; returns the
    names written (none for an attention-free model, no init file for a model without a config to
    re-initialise: :data:`FILE`'s metadata ``init_file`` says which)."""
    frames = handle_key_frames(handle, rank)
    if frames is None:
        return []
    folder = Path(folder)
    written, init_file = [], "not requested"
    if init:
        from geoprobe.probes.key_orthogonality import initialised_handle

        fresh = initialised_handle(handle, seed=seed)
        if fresh is None:
            init_file = "none (the model has no config to initialise afresh)"
        else:
            note = f"same config, fresh weights (from_config, seed {seed})"
            _save(handle_key_frames(fresh, rank), folder / INIT_FILE, note, INIT_FILE)
            written.append(INIT_FILE)
            init_file = INIT_FILE
    _save(frames, folder / FILE, "the checkpoint's", init_file)  # last: its presence means the pair is complete
    return [FILE, *written]


def file_metadata(path: str | Path) -> dict[str, str]:
    """The metadata of a key-frame file."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def load_key_frames(path: str | Path) -> tuple[torch.Tensor, dict[str, str]]:
    """(frames [n_layers, n_kv_heads, d_model, r] float64, metadata) from a file of :func:`save_key_frames`."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata() or {})
        names = sorted(f.keys(), key=lambda k: int(k.split("_")[1]))
        if [int(k.split("_")[1]) for k in names] != list(range(len(names))):
            raise ConfigError(f"{path}: layers {names} are not 0..{len(names) - 1}")
        return torch.stack([f.get_tensor(k) for k in names]).to(torch.float64), meta


def overlap_table(frames: list[torch.Tensor], names: list[str], steps: list[int],
                  init: torch.Tensor | None = None) -> pd.DataFrame:
    """Per (revision, layer, key head): the overlap with the last frame, its nulls (module docstring).

    ``frames``: one [n_layers, n_kv_heads, d_model, r] tensor per revision, in order; the last is the final.
    """
    from geoprobe.probes.key_frame import frame_overlaps, null_normalised, random_overlap

    final = frames[-1]
    L, H, d, r = final.shape
    base = random_overlap(r, d)
    init_ov = frame_overlaps(init, final) if init is not None else None
    rows = []
    for name, step, f in zip(names, steps, frames, strict=True):
        ov = frame_overlaps(f, final)  # [L, H]
        for layer in range(L):
            for h in range(H):
                v = float(ov[layer, h])
                rows.append({"revision": name, "step": step, "layer": layer, "kv_head": h, "overlap": v,
                             "rank": r, "d_model": d, "random_null": base,
                             "null_normalised": null_normalised(v, r, d),
                             "init_overlap": None if init_ov is None else float(init_ov[layer, h])})
    return pd.DataFrame(rows)


def unit_curves(table: pd.DataFrame, steps: list[int]) -> torch.Tensor:
    """[n_units, n_steps] overlap per (layer, key head) unit: the rows of the bootstrap over units."""
    wide = table.pivot_table(index=["layer", "kv_head"], columns="step", values="overlap")[steps]
    return torch.tensor(wide.to_numpy(), dtype=torch.float64)
