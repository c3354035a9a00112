"""Tidy result rows shared by every probe.

Every probe returns a list of :class:`ResultRow`; :func:`rows_to_frame` turns any list of rows into one tidy
``pandas.DataFrame`` (one row per statistic per layer/head/position), which reports and plots consume.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

FRAME_COLUMNS = ["probe", "layer", "head", "position", "statistic", "value", "ci_low", "ci_high", "variant",
                 "hook"]


def _plain(x: Any) -> Any:
    """Convert 0-d tensors / numpy scalars to Python numbers (leave everything else alone)."""
    if x is None:
        return None
    item = getattr(x, "item", None)
    if callable(item) and getattr(x, "ndim", 0) == 0:
        return item()
    return x


@dataclass
class ResultRow:
    """One measured statistic.

    Args:
        probe: probe name ("key_orthogonality", "attention_focusing", ...).
        statistic: what ``value`` is ("mean_abs_offdiag_cos", "pc1_share", ...).
        value: the number (float; NaN when undefined).
        layer, head, position: where it was measured (None = aggregated over that axis).
        ci_low, ci_high: confidence interval bounds where one was computed.
        variant: the named variant used; "default" when the probe has a single reading.
        meta: anything else worth recording (n, seeds, baselines, whether KV heads were expanded, ...).
        hook: the TransformerLens hook name of the site the statistic was measured at (e.g.
            ``blocks.3.attn.hook_rot_k``; ``blocks.*.attn.hook_pattern`` for statistics across layers).
    """

    probe: str
    statistic: str
    value: float
    layer: int | None = None
    head: int | None = None
    position: int | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    variant: str = "default"
    meta: dict[str, Any] = field(default_factory=dict)
    hook: str | None = None

    def __post_init__(self) -> None:
        v = _plain(self.value)
        self.value = float(v) if v is not None else math.nan
        self.layer = None if self.layer is None else int(_plain(self.layer))
        self.head = None if self.head is None else int(_plain(self.head))
        self.position = None if self.position is None else int(_plain(self.position))
        self.ci_low = None if self.ci_low is None else float(_plain(self.ci_low))
        self.ci_high = None if self.ci_high is None else float(_plain(self.ci_high))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def typed_frame(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` (a frame of result rows, records with the row columns) with the row dtypes, in place: ``layer``,
    ``head``, ``position`` as nullable ``Int64`` (None -> <NA>), ``value``, ``ci_low``, ``ci_high`` as float64."""
    for c in ("layer", "head", "position"):
        df[c] = df[c].astype("Int64")
    for c in ("value", "ci_low", "ci_high"):
        df[c] = df[c].astype("float64")
    return df


def rows_to_frame(rows: Iterable[ResultRow], include_meta: bool = False) -> pd.DataFrame:
    """Tidy DataFrame with columns probe, layer, head, position, statistic, value, ci_low, ci_high, variant,
    hook.

    Integer location columns use pandas' nullable ``Int64`` (None -> <NA>). With ``include_meta`` the ``meta``
    dicts are kept as one object column ``meta``.
    """
    rows = list(rows)
    records = []
    for r in rows:
        rec = {c: getattr(r, c) for c in FRAME_COLUMNS}
        if include_meta:
            rec["meta"] = dict(r.meta)
        records.append(rec)
    columns = FRAME_COLUMNS + (["meta"] if include_meta else [])
    df = typed_frame(pd.DataFrame.from_records(records, columns=columns))
    for c in ("probe", "statistic", "variant", "hook"):
        df[c] = df[c].astype("object")
    return df


def _json_default(obj: Any) -> Any:
    v = _plain(obj)
    if v is not obj:
        return v
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


def frame_to_csv(df: pd.DataFrame) -> str:
    """CSV text of a result frame; a ``meta`` column of dicts is written as one JSON object per row (so the
    baselines, checkpoint steps, metrics ... that figures read survive a save)."""
    out = df.copy()
    if "meta" in out:
        out["meta"] = [json.dumps(m if isinstance(m, dict) else {}, sort_keys=True, default=_json_default)
                       for m in out["meta"]]
    return out.to_csv(index=False)


def frame_from_csv(path: str | Path) -> pd.DataFrame:
    """Read :func:`frame_to_csv` output back: the same dtypes as :func:`rows_to_frame` and ``meta`` as dicts."""
    df = pd.read_csv(path, keep_default_na=True)
    for c in ("layer", "head", "position"):
        if c in df:
            df[c] = df[c].astype("Int64")
    for c in ("value", "ci_low", "ci_high"):
        if c in df:
            df[c] = df[c].astype("float64")
    for c in ("probe", "statistic", "variant", "hook"):
        if c in df:
            df[c] = df[c].astype("object").where(df[c].notna(), None)
    if "meta" in df:
        df["meta"] = [json.loads(m) if isinstance(m, str) and m else {} for m in df["meta"]]
    return df
