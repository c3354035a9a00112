"""User prompt sources: a prompt file (text or JSONL) and the ``datasets`` library.

* :func:`read_prompt_file` -- ``--prompts FILE``. A ``.jsonl``/``.ndjson`` file (or any file when ``field`` is
  given) is JSON Lines: one object per non-blank line, the prompt in ``field`` (default ``"text"``). Any other
  file is plain text: one prompt per line, the line exactly as written minus its line ending (``\\n`` or
  ``\\r\\n``); blank lines separate nothing and are skipped, and how many were skipped is recorded (as is a
  removed UTF-8 byte-order mark). Use JSONL for prompts that contain newlines. Files must be strict UTF-8;
  otherwise the error names the byte offset.
* :func:`load_dataset_prompts` -- ``--dataset NAME_OR_PATH[:config:split:field]`` through the optional
  ``datasets`` package (``pip install 'geoprobe[scan]'``): a local ``.json``/``.jsonl``/``.csv``/``.parquet``
  file or a dataset folder, or a hub dataset (streamed; needs network). Defaults: config none, split
  ``train``, field ``text``. ``limit`` keeps the first rows only and is recorded.

Both return a :class:`PromptSet`: the candidates (pool ``file``/``dataset``, the domain you give, ids
``<source stem>-<row>`` with 1-based line numbers for files and 0-based row numbers for datasets) and a
provenance dict (path or name, sha256 of a local file, format, field, counts) for the run manifest.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geoprobe.errors import ConfigError, GeoprobeError
from geoprobe.io import decode_utf8
from geoprobe.scan.pools.base import Candidate

JSONL_SUFFIXES = (".jsonl", ".ndjson")
DATASET_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
DEFAULT_FIELD = "text"
DEFAULT_SPLIT = "train"


class PromptSourceError(GeoprobeError, ValueError):
    """A prompt file or dataset that cannot be read as prompts (encoding, JSON, missing field, empty)."""


class MissingDependencyError(GeoprobeError, ImportError):
    """An optional package that this feature needs is not installed."""


@dataclass
class PromptSet:
    """Candidates read from a user source plus where they came from (for the manifest)."""

    candidates: list[Candidate]
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def texts(self) -> list[str]:
        return [c.text for c in self.candidates]


def read_prompt_file(path: str | Path, *, field: str | None = None, domain: str = "custom") -> PromptSet:
    """Read prompts from a text or JSONL file (see the module docstring).

    Raises:
        PromptSourceError: missing file, invalid UTF-8 (with byte offset), invalid JSON or missing/non-string
            field (with line number), or no prompts at all.
    """
    p = Path(path)
    if not p.is_file():
        raise PromptSourceError(f"prompt file {str(p)!r} does not exist or is not a file")
    data = p.read_bytes()
    text = decode_utf8(data, f"prompt file {str(p)!r}", error=PromptSourceError)
    bom = data.startswith(b"\xef\xbb\xbf")  # an encoding mark, not part of the first prompt (recorded)
    is_jsonl = field is not None or p.suffix.lower() in JSONL_SUFFIXES
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the file's final newline ends the last line; it does not start a new one
    cands: list[Candidate] = []
    blank = 0
    key = field or DEFAULT_FIELD
    for lineno, raw in enumerate(lines, start=1):
        line = raw[:-1] if raw.endswith("\r") else raw
        if not line.strip():
            blank += 1
            continue
        if is_jsonl:
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise PromptSourceError(f"{p.name} line {lineno} is not valid JSON: {e.msg}") from None
            if not isinstance(row, dict):
                raise PromptSourceError(f"{p.name} line {lineno} is a JSON {type(row).__name__}, not an object")
            if key not in row:
                raise PromptSourceError(f"{p.name} line {lineno} has no field {key!r}; its fields: "
                                        f"{', '.join(map(str, row)) or '(none)'}")
            value = row[key]
            if not isinstance(value, str) or not value.strip():
                raise PromptSourceError(f"{p.name} line {lineno}: field {key!r} is not a non-empty string")
            line = value
        cands.append(Candidate(f"{p.stem}-{lineno}", line, "file", domain))
    if not cands:
        raise PromptSourceError(f"prompt file {str(p)!r} holds no prompts")
    prov = {"source": "file", "path": str(p.resolve()), "sha256": hashlib.sha256(data).hexdigest(),
            "format": "jsonl" if is_jsonl else "text", "field": key if is_jsonl else None,
            "n_prompts": len(cands), "n_blank_lines_skipped": blank, "utf8_bom_removed": bom}
    return PromptSet(cands, prov)


def parse_dataset_spec(spec: str) -> tuple[str, str | None, str, str]:
    """``NAME_OR_PATH[:config:split:field]`` -> (name, config or None, split, field); empty parts take defaults."""
    parts = str(spec).split(":")
    if len(parts) > 4 or not parts[0]:
        raise PromptSourceError(f"dataset spec {spec!r} is not NAME_OR_PATH[:config:split:field]")
    parts += [""] * (4 - len(parts))
    name, config, split, fld = parts
    return name, (config or None), (split or DEFAULT_SPLIT), (fld or DEFAULT_FIELD)


def _import_datasets():
    try:
        import datasets
    except ImportError:
        raise MissingDependencyError("reading prompts with --dataset needs the optional package 'datasets': "
                                     "pip install 'geoprobe[scan]' (or pip install datasets)") from None
    return datasets


def load_dataset_prompts(spec: str, *, domain: str = "custom", limit: int | None = None,
                         streaming: bool | None = None) -> PromptSet:
    """Read prompts through ``datasets.load_dataset`` (see the module docstring).

    Args:
        spec: ``NAME_OR_PATH[:config:split:field]``.
        domain: domain recorded on every candidate.
        limit: keep only the first ``limit`` rows (recorded in the provenance); default all rows, so pass one
            for a large hub dataset.
        streaming: stream rows (default: True for hub datasets, False for local files).

    Raises:
        MissingDependencyError: ``datasets`` is not installed (says how to install it).
        PromptSourceError: unknown file type, unknown split/field (listing the valid ones), unreachable dataset,
            non-string or empty rows, or no rows.
    """
    name, config, split, fld = parse_dataset_spec(spec)
    if limit is not None and int(limit) < 1:
        raise ConfigError(f"limit must be >= 1, got {limit}")
    ds_lib = _import_datasets()
    p = Path(name)
    prov: dict[str, Any] = {"source": "dataset", "spec": spec, "config": config, "split": split, "field": fld,
                            "limit": limit}
    if p.is_file():
        builder = DATASET_BUILDERS.get(p.suffix.lower())
        if builder is None:
            raise PromptSourceError(f"cannot read {p.name!r} as a dataset: unsupported file type "
                                    f"{p.suffix!r}; valid: {', '.join(DATASET_BUILDERS)}")
        args: tuple[Any, ...] = (builder,)
        kwargs: dict[str, Any] = {"data_files": {split: str(p)}}
        prov.update(path=str(p.resolve()), sha256=hashlib.sha256(p.read_bytes()).hexdigest(), builder=builder)
        stream = bool(streaming)
        stem = p.stem
    else:
        args, kwargs = (str(p) if p.is_dir() else name, config), {}
        stream = (not p.is_dir()) if streaming is None else bool(streaming)
        stem = p.name if p.is_dir() else name.rsplit("/", 1)[-1]
        prov["path" if p.is_dir() else "name"] = str(p.resolve()) if p.is_dir() else name
    prov["streaming"] = stream
    try:
        ds = ds_lib.load_dataset(*args, split=split, streaming=stream, **kwargs)
    except ValueError as e:  # unknown split / config
        raise PromptSourceError(f"cannot load dataset {name!r} (config {config}, split {split!r}): "
                                f"{str(e).splitlines()[0]}") from None
    except (FileNotFoundError, ConnectionError, OSError) as e:
        raise PromptSourceError(f"dataset {name!r} is not a local file or folder and could not be reached on the "
                                f"hub ({type(e).__name__}); check the name or go online") from None
    except Exception as e:  # datasets raises its own classes (DatasetNotFoundError, ...); keep it one line
        raise PromptSourceError(f"cannot load dataset {name!r}: {type(e).__name__}: "
                                f"{str(e).splitlines()[0] if str(e) else ''}") from None
    columns = getattr(ds, "column_names", None)
    if columns is not None and fld not in columns:
        raise PromptSourceError(f"dataset {name!r} has no field {fld!r}; its fields: {', '.join(columns)}")
    cands: list[Candidate] = []
    for i, row in enumerate(ds):
        if limit is not None and i >= int(limit):
            break
        if fld not in row:
            raise PromptSourceError(f"dataset {name!r} has no field {fld!r}; its fields: {', '.join(row)}")
        value = row[fld]
        if not isinstance(value, str) or not value.strip():
            raise PromptSourceError(f"dataset {name!r} row {i}: field {fld!r} is not a non-empty string")
        cands.append(Candidate(f"{stem}-{i}", value, "dataset", domain))
    if not cands:
        raise PromptSourceError(f"dataset {name!r} split {split!r} holds no rows")
    prov["n_prompts"] = len(cands)
    return PromptSet(cands, prov)
