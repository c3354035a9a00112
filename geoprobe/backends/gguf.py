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

``geoprobe-gguf.json`` is written last and lists every file of the conversion with its size and sha256; a
cached folder is used only when that record is present and every file still matches it (hashes memoised the
same way). A folder that is incomplete, edited, truncated or from an older geoprobe is rebuilt from the
.gguf with a warning. Only a .gguf that cannot itself be read is reported as a bad GGUF file; a cache that
cannot be written is reported as such.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from pathlib import Path
from typing import Any

from geoprobe.backends.errors import ModelLoadError
from geoprobe.io import atomic_dir, write_json
from geoprobe.logs import quiet_libraries

META = "geoprobe-gguf.json"


def default_cache_dir() -> Path:
    env = os.environ.get("GEOPROBE_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "geoprobe"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def file_sha256(path: Path, cache_dir: Path) -> str:
    """sha256 of ``path``, memoised by (resolved path, size, mtime_ns)."""
    path = Path(path).resolve()
    st = path.stat()
    key = f"{path}|{st.st_size}|{st.st_mtime_ns}"
    memo_path = cache_dir / "gguf" / "hashes.json"
    try:
        memo = json.loads(memo_path.read_text())
    except (OSError, ValueError):
        memo = {}
    if not isinstance(memo, dict):  # a damaged memo is only a cache: start it again
        memo = {}
    if isinstance(memo.get(key), str):
        return memo[key]
    memo[key] = _sha256(path)
    write_json(memo_path, memo)
    return memo[key]


def cached_conversion(folder: Path, cache_dir: Path) -> tuple[dict[str, Any] | None, str]:
    """``(meta, "")`` when ``folder`` holds a complete conversion whose files all match the sizes and sha256
    recorded in its ``geoprobe-gguf.json``; else ``(None, why)``."""
    if not folder.is_dir():
        return None, "not converted yet"
    try:
        meta = json.loads((folder / META).read_text())
    except (OSError, ValueError):
        return None, f"{META} is missing or unreadable (an unfinished or older conversion)"
    files = meta.get("files") if isinstance(meta, dict) else None
    if not isinstance(files, dict) or "config.json" not in files:
        return None, f"{META} lists no files (written by an older geoprobe)"
    for name, want in files.items():
        f = folder / name
        try:
            ok = (isinstance(want, dict) and f.stat().st_size == want.get("size")
                  and file_sha256(f, cache_dir) == want.get("sha256"))
        except OSError:
            ok = False
        if not ok:
            return None, f"{name} is missing or differs from the conversion record"
    return meta, ""


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
    try:
        sha = file_sha256(path, cache)
    except OSError as exc:
        if not os.access(path, os.R_OK):
            raise ModelLoadError(f"cannot read GGUF file {path}: {exc.strerror or exc}") from None
        raise ModelLoadError(f"cannot use the GGUF cache {cache / 'gguf'}: {exc}; pass cache_dir= or set "
                             "GEOPROBE_CACHE_DIR to a writable folder") from None
    folder = cache / "gguf" / f"{path.stem}-{sha[:16]}"
    meta, why = cached_conversion(folder, cache)
    if meta is not None:
        return folder, meta
    if folder.exists():
        warnings.warn(f"geoprobe: the cached conversion {folder} is damaged ({why}); rebuilding it from {path}",
                      stacklevel=2)

    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    try:
        tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name, trust_remote_code=False)
        quant = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32,
                                                     trust_remote_code=False)  # a GGUF file carries no code
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
        meta["files"] = {f.name: {"size": f.stat().st_size, "sha256": _sha256(f)}
                         for f in sorted(tmp.iterdir()) if f.is_file()}
        meta["converted_s"] = round(time.perf_counter() - t0, 2)
        (tmp / META).write_text(json.dumps(meta, indent=2))  # last: its presence means the folder is complete

    try:
        atomic_dir(folder, write)
    except OSError as exc:
        raise ModelLoadError(f"cannot write the converted model to {folder}: {exc.strerror or exc}; pass "
                             "cache_dir= or set GEOPROBE_CACHE_DIR to a writable folder with space") from None
    return folder, meta
