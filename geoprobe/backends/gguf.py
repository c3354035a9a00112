"""GGUF files -> cached plain Hugging Face folders that every backend (and TransformerBridge) can boot.

``transformers`` reads a GGUF file directly (``from_pretrained(folder, gguf_file=NAME)``, needs the ``gguf``
package) and dequantises it (about 20 s for SmolLM2-135M on 2 cores), but the result carries a
``quantization_config`` and refuses ``save_pretrained``. We rebuild the same architecture from the config
without ``quantization_config``, load the dequantised state dict strictly, and save it (float32, the exact
dequantised values) with the tokenizer from the GGUF file into::

    CACHE/gguf/<file stem>-<sha256[:16]>/   config.json, model.safetensors, tokenizer files, geoprobe-gguf.json

The folder is keyed by the file's content hash, so the second load skips the conversion (a few seconds).
Hashing is itself memoised in ``CACHE/gguf/hashes.json`` by (path, size, mtime), so an unchanged file is
not re-read either. ``CACHE`` is ``$GEOPROBE_CACHE_DIR`` or ``~/.cache/geoprobe``.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

from geoprobe.backends.errors import ModelLoadError
from geoprobe.io import atomic_dir, write_json
from geoprobe.logs import quiet_libraries

META = "geoprobe-gguf.json"


def default_cache_dir() -> Path:
    env = os.environ.get("GEOPROBE_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "geoprobe"


def file_sha256(path: Path, cache_dir: Path) -> str:
    """sha256 of ``path``, memoised by (resolved path, size, mtime_ns)."""
    path = Path(path).resolve()
    st = path.stat()
    key = f"{path}|{st.st_size}|{st.st_mtime_ns}"
    memo_path = cache_dir / "gguf" / "hashes.json"
    try:
        memo = json.loads(memo_path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        memo = {}
    if key in memo:
        return memo[key]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    memo[key] = h.hexdigest()
    write_json(memo_path, memo)
    return memo[key]


@quiet_libraries()
def gguf_to_hf_folder(path: str | Path, cache_dir: str | Path | None = None) -> tuple[Path, dict[str, Any]]:
    """The cached plain-HF folder for GGUF file ``path`` (converted on first use) and its provenance."""
    path = Path(path).expanduser().resolve()
    cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    if not path.is_file():
        raise ModelLoadError(f"GGUF file {path} does not exist")
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise ModelLoadError("reading GGUF files needs the 'gguf' package: pip install 'geoprobe[gguf]'") from None
    sha = file_sha256(path, cache)
    folder = cache / "gguf" / f"{path.stem}-{sha[:16]}"
    meta_path = folder / META
    if meta_path.is_file() and (folder / "config.json").is_file():
        return folder, json.loads(meta_path.read_text())

    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    try:
        tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        quant = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    except Exception as exc:  # unreadable / unsupported GGUF architecture
        raise ModelLoadError(f"cannot read GGUF file {path}: {str(exc).splitlines()[0]}") from None
    cfg_dict = quant.config.to_dict()
    cfg_dict.pop("quantization_config", None)
    cfg_dict.pop("_name_or_path", None)
    cfg = type(quant.config).from_dict(cfg_dict)
    cfg.dtype = torch.float32
    plain = type(quant)(cfg)
    missing, unexpected = plain.load_state_dict(quant.state_dict(), strict=False)
    tied = {"lm_head.weight"} if getattr(cfg, "tie_word_embeddings", False) else set()
    if set(missing) - tied or unexpected:
        raise ModelLoadError(f"GGUF conversion of {path} lost tensors: missing={missing[:5]} "
                             f"unexpected={unexpected[:5]}")
    if tied:
        plain.tie_weights()
    meta = {
        "gguf_file": str(path), "sha256": sha, "size": path.stat().st_size,
        "architecture": type(quant).__name__, "dtype": "float32",
        "transformers": transformers.__version__, "converted_s": None,
    }
    del quant

    def write(tmp: Path) -> None:
        plain.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        meta["converted_s"] = round(time.perf_counter() - t0, 2)
        (tmp / META).write_text(json.dumps(meta, indent=2))

    atomic_dir(folder, write)
    return folder, meta
