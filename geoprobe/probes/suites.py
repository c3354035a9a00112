"""Probe suites: declarative TOML files naming probes, options, prompt sources and pass criteria.

A suite file (see the commented ``probes/my-suite.toml``)::

    name = "paper3-llm"
    kind = "llm"                                  # optional: the target kind it is written for
    probes = ["key_orthogonality", "attention_focusing", "value_manifold"]

    [options]                                     # ProbeOptions fields
    n_boot = 1000

    [prompts]                                     # LLM prompt source (the CLI's --prompts/--n win)
    path = "prompts.txt"                          # relative to the suite file; omit for the built-in set
    n = 75

    [claims]                                      # text shown beside each probe's measurement
    value_manifold = "Paper III: PC1 or PC1+PC2 > 30%"

    [[criteria]]
    name = "value manifold"
    probe = "value_manifold"
    statistic = ["pc1_share", "pc12_share"]       # summary keys (dotted paths allowed)
    combine = "any"                               # several statistics: any / all must pass
    op = ">"                                      # <, <=, >, >=, ==
    threshold = 0.30

    [[criteria]]
    name = "key orthogonality"
    probe = "key_orthogonality"
    statistic = "weights_layer_mean_abs_cos"      # a list: each element is compared ...
    op = "<"
    threshold = 0.20
    min_fraction = 0.5                            # ... and at least this fraction must pass

    [verdict]
    labels = { "3" = "Bayesian geometric signatures", "2" = "partial" }   # by number passed ("all" allowed)
    otherwise = "not observed"

The verdict is computed from a run's summary by :meth:`Suite.verdict` with these thresholds only; no pass
threshold lives in the probe code. Built-in suites (``paper1-tunnels``, ``paper3-llm``, ``my-suite``) ship with
the package and are the same files as the repository's top-level ``probes/`` folder.
"""

from __future__ import annotations

import math
import operator
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from geoprobe.errors import ConfigError
from geoprobe.probes.contract import ProbeOptions

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

OPS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge, "==": operator.eq}
BUILTIN_SUITES = ("paper1-tunnels", "paper3-llm", "my-suite")
DEFAULT_SUITE = {"tunnel": "paper1-tunnels", "llm": "paper3-llm"}


@dataclass(frozen=True)
class Criterion:
    """One pass criterion: ``statistic op threshold`` on a probe's summary.

    A list-valued statistic passes when at least ``min_fraction`` of its elements pass (NaN/None elements
    fail); several statistics combine with ``any`` or ``all``.
    """

    name: str
    probe: str
    statistic: tuple[str, ...]
    op: str
    threshold: float | bool
    min_fraction: float = 1.0
    combine: str = "all"
    claim: str = ""

    def _one(self, value: Any) -> tuple[bool, Any]:
        cmp = OPS[self.op]
        if isinstance(value, (list, tuple)):
            ok = [v is not None and not (isinstance(v, float) and math.isnan(v)) and bool(cmp(v, self.threshold))
                  for v in value]
            frac = sum(ok) / len(ok) if ok else 0.0
            return bool(ok) and frac >= self.min_fraction, {"fraction_passing": frac}
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return False, value
        return bool(cmp(value, self.threshold)), value

    def evaluate(self, summary: Mapping[str, Any]) -> dict[str, Any]:
        """``{"passed": bool, "observed": {...}, "rule": str}`` for this criterion on a run's summary."""
        probe_summary = summary[self.probe]
        results, observed = [], {}
        for stat in self.statistic:
            value = _lookup(probe_summary, stat, self.probe)
            ok, seen = self._one(value)
            results.append(ok)
            observed[stat] = seen
        passed = any(results) if self.combine == "any" else all(results)
        rule = f"{' or ' if self.combine == 'any' else ' and '}".join(self.statistic) + f" {self.op} " \
               f"{self.threshold}" + (f" in >= {self.min_fraction:.0%} of elements" if self.min_fraction < 1 else "")
        return {"passed": bool(passed), "observed": observed, "rule": rule}


def _lookup(summary: Mapping[str, Any], path: str, probe: str) -> Any:
    cur: Any = summary
    for part in path.split("."):
        if not isinstance(cur, Mapping) or part not in cur:
            have = ", ".join(sorted(k for k in summary if k != "paper_claim"))
            raise ConfigError(f"suite criterion reads {probe}.{path}, which the {probe} summary lacks "
                              f"(it has: {have})")
        cur = cur[part]
    return cur


@dataclass(frozen=True)
class Suite:
    """A parsed probe suite (see the module docstring for the file format)."""

    name: str
    probes: tuple[str, ...] = ()
    kind: str | None = None
    description: str = ""
    options: ProbeOptions = field(default_factory=ProbeOptions)
    prompts: Mapping[str, Any] = field(default_factory=dict)
    claims: Mapping[str, str] = field(default_factory=dict)
    criteria: tuple[Criterion, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    otherwise: str = "not observed"
    path: Path | None = None

    def verdict(self, summary: Mapping[str, Any]) -> dict[str, Any] | None:
        """Apply the criteria to a run's summary; None when a criterion's probe did not run (or none exist)."""
        if not self.criteria or not all(c.probe in summary for c in self.criteria):
            return None
        by = {c.name: c.evaluate(summary) for c in self.criteria}
        n = sum(r["passed"] for r in by.values())
        total = len(self.criteria)
        label = self.labels.get("all") if n == total and "all" in self.labels else None
        label = label or self.labels.get(str(n), self.otherwise)
        return {"suite": self.name, "criteria_passed": n, "of": total, "label": label,
                "by_criterion": {k: r["passed"] for k, r in by.items()},
                "details": {k: {"rule": r["rule"], "observed": r["observed"]} for k, r in by.items()}}


def _options(raw: Mapping[str, Any], where: str) -> ProbeOptions:
    valid = {f.name for f in fields(ProbeOptions)}
    bad = sorted(set(raw) - valid)
    if bad:
        raise ConfigError(f"{where}: unknown option(s) {', '.join(bad)}; valid: {', '.join(sorted(valid))}")
    kw = dict(raw)
    if kw.get("layers") is not None:
        kw["layers"] = tuple(int(x) for x in kw["layers"])
    if kw.get("linear_sites") is not None:
        kw["linear_sites"] = tuple(str(x) for x in kw["linear_sites"])
    return ProbeOptions(**kw)


def _criterion(raw: Mapping[str, Any], i: int, where: str) -> Criterion:
    need = ("probe", "statistic", "op", "threshold")
    missing = [k for k in need if k not in raw]
    if missing:
        raise ConfigError(f"{where}: criteria[{i}] lacks {', '.join(missing)}")
    allowed = {"name", "probe", "statistic", "op", "threshold", "min_fraction", "combine", "claim"}
    bad = sorted(set(raw) - allowed)
    if bad:
        raise ConfigError(f"{where}: criteria[{i}] has unknown key(s) {', '.join(bad)}; valid: "
                          f"{', '.join(sorted(allowed))}")
    if raw["op"] not in OPS:
        raise ConfigError(f"{where}: criteria[{i}] op {raw['op']!r} is not one of {', '.join(OPS)}")
    combine = raw.get("combine", "all")
    if combine not in ("any", "all"):
        raise ConfigError(f"{where}: criteria[{i}] combine {combine!r}; valid choices: any, all")
    stat = raw["statistic"]
    stats = (stat,) if isinstance(stat, str) else tuple(stat)
    mf = float(raw.get("min_fraction", 1.0))
    if not 0.0 <= mf <= 1.0:
        raise ConfigError(f"{where}: criteria[{i}] min_fraction {mf} is not in [0, 1]")
    thr = raw["threshold"]
    return Criterion(name=str(raw.get("name", f"{raw['probe']}:{','.join(stats)}")), probe=str(raw["probe"]),
                     statistic=stats, op=raw["op"], threshold=thr if isinstance(thr, bool) else float(thr),
                     min_fraction=mf, combine=combine, claim=str(raw.get("claim", "")))


def parse_suite(data: Mapping[str, Any], *, name: str = "suite", path: Path | None = None) -> Suite:
    """A :class:`Suite` from parsed TOML (validated: unknown probes, keys and operators raise ConfigError)."""
    from geoprobe.probes.contract import KINDS, PROBES

    where = str(path or name)
    allowed = {"name", "description", "kind", "probes", "options", "prompts", "claims", "criteria", "verdict"}
    bad = sorted(set(data) - allowed)
    if bad:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(bad)}; valid: {', '.join(sorted(allowed))}")
    probes = tuple(data.get("probes", ()))
    for p in probes:
        PROBES.get(p)  # unknown names list the valid ones
    kind = data.get("kind")
    if kind is not None and kind not in KINDS:
        raise ConfigError(f"{where}: kind {kind!r}; valid choices: {', '.join(KINDS)}")
    criteria = tuple(_criterion(c, i, where) for i, c in enumerate(data.get("criteria", ())))
    for c in criteria:
        PROBES.get(c.probe)
    verdict = data.get("verdict", {})
    claims = {**{c.probe: c.claim for c in criteria if c.claim}, **dict(data.get("claims", {}))}
    return Suite(name=str(data.get("name", name)), probes=probes, kind=kind,
                 description=str(data.get("description", "")),
                 options=_options(data.get("options", {}), where), prompts=dict(data.get("prompts", {})),
                 claims=claims, criteria=criteria, labels={str(k): str(v) for k, v in
                                                           verdict.get("labels", {}).items()},
                 otherwise=str(verdict.get("otherwise", "not observed")), path=path)


def builtin_suite_path(name: str) -> Path:
    """Path of a built-in suite file."""
    from importlib.resources import files

    if name not in BUILTIN_SUITES:
        raise ConfigError(f"unknown built-in suite {name!r}; valid choices: {', '.join(BUILTIN_SUITES)} "
                          "(or the path of a .toml file)")
    return Path(str(files("geoprobe.assets").joinpath("suites", f"{name}.toml")))


def load_suite(suite: Suite | str | Path) -> Suite:
    """A :class:`Suite` from a Suite, a ``.toml`` path, or a built-in suite name."""
    if isinstance(suite, Suite):
        return suite
    p = Path(suite)
    if p.suffix != ".toml" and not p.exists():
        p = builtin_suite_path(str(suite))
    if not p.is_file():
        raise ConfigError(f"suite file {p} does not exist")
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p} is not valid TOML: {exc}") from None
    return parse_suite(data, name=p.stem, path=p)


def default_suite(kind: str) -> Suite:
    """The built-in suite whose criteria judge a target of ``kind`` when none is given."""
    return load_suite(DEFAULT_SUITE[kind])


def suite_prompts_path(suite: Suite) -> Path | None:
    """The suite's prompt file (relative paths resolve against the suite file's folder), or None."""
    raw = suite.prompts.get("path")
    if raw is None:
        return None
    p = Path(raw)
    if not p.is_absolute() and suite.path is not None:
        p = suite.path.parent / p
    return p


def criteria_table(suites: Sequence[Suite]) -> list[dict[str, Any]]:
    """Flat rows (suite, criterion, probe, rule) for listings."""
    return [{"suite": s.name, "criterion": c.name, "probe": c.probe,
             "rule": f"{'/'.join(c.statistic)} {c.op} {c.threshold}"} for s in suites for c in s.criteria]
