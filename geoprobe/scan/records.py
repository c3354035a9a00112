"""``prompts.jsonl``: one JSON object per prompt the scan used, so anyone can recompute every number.

Each line is a :class:`PromptRecord`: ``id``, ``text``, ``pool`` (``math`` ... ``mixed``, ``file``, ``dataset``,
``sula``), ``domain``, ``quintile`` (0-based entropy bin, or null when not stratified), ``entropy_bits`` (the
model's next-token entropy at the final token, or null when not measured), ``selected`` (whether the prompt
entered the measured set), and ``extra`` (a dict: e.g. the SULA condition, k and Bayes entropy). Lines are
written in the given order, UTF-8, keys sorted, no NaN (``allow_nan=False``; missing values are null), and the
file is written to a temporary name and renamed, so a finished file is never half-written.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from geoprobe.errors import ConfigError
from geoprobe.io import decode_utf8
from geoprobe.scan.pools.base import Candidate
from geoprobe.scan.sources import PromptSourceError

FIELDS = ("id", "text", "pool", "domain", "quintile", "entropy_bits", "selected", "extra")


@dataclass(frozen=True)
class PromptRecord:
    """One line of ``prompts.jsonl`` (see the module docstring)."""

    id: str
    text: str
    pool: str
    domain: str
    quintile: int | None = None
    entropy_bits: float | None = None
    selected: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def records_from_candidates(candidates: Sequence[Candidate], entropies: Sequence[float] | np.ndarray | None = None,
                            quintiles: Sequence[int] | np.ndarray | None = None,
                            selected: Iterable[int] | None = None) -> list[PromptRecord]:
    """One record per candidate, with its entropy, bin and whether its index is in ``selected``."""
    n = len(candidates)
    for name, arr in (("entropies", entropies), ("quintiles", quintiles)):
        if arr is not None and len(arr) != n:
            raise ConfigError(f"{name} has {len(arr)} values for {n} candidates")
    sel = set(int(i) for i in selected) if selected is not None else set()
    out = []
    for i, c in enumerate(candidates):
        extra = {k: v for k, v in (("template", c.template), ("ending", c.ending)) if v}
        out.append(PromptRecord(c.id, c.text, c.pool, c.domain,
                                None if quintiles is None else int(quintiles[i]),
                                None if entropies is None else float(entropies[i]), i in sel, extra))
    return out


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, np.generic):
        return _clean(value.item())
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def write_prompts_jsonl(path: str | Path, records: Iterable[PromptRecord]) -> Path:
    """Write ``records`` to ``path`` atomically (temporary file + rename); returns the path."""
    p = Path(path)
    tmp = p.with_name(p.name + ".partial")
    with open(tmp, "w", encoding="utf-8", newline="\n") as fh:
        for r in records:
            fh.write(json.dumps(_clean(r.to_dict()), sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n")
    os.replace(tmp, p)
    return p


def read_prompts_jsonl(path: str | Path) -> list[PromptRecord]:
    """Read a ``prompts.jsonl`` back; one clear error for a line that is not a record."""
    p = Path(path)
    if not p.is_file():
        raise PromptSourceError(f"{str(p)!r} does not exist")
    text = decode_utf8(p.read_bytes(), str(p), error=PromptSourceError)
    out = []
    for lineno, line in enumerate(text.split("\n"), start=1):  # not splitlines(): U+2028 may be in a text
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise PromptSourceError(f"{p.name} line {lineno} is not valid JSON: {e.msg}") from None
        if not isinstance(row, dict) or set(row) != set(FIELDS):
            got = sorted(row) if isinstance(row, dict) else type(row).__name__
            raise PromptSourceError(f"{p.name} line {lineno} is not a prompt record: fields {got}, "
                                    f"expected {list(FIELDS)}")
        out.append(PromptRecord(**row))
    return out
