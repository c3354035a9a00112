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

    [[criteria]]                                  # a null-calibrated criterion, reported beside the verdict
    name = "key orthogonality (null-calibrated)"
    probe = "key_orthogonality"
    role = "calibrated"                           # "verdict" (default: counts for the label) or "calibrated"
    statistic = "weights_layer_mean_abs_cos"
    op = "<"
    threshold = "weights_layer_random_baseline"   # a string threshold is a summary key, compared elementwise
    min_fraction = 0.5
    null = { init = "weights_layer_init" }        # the same rule on what a null model gets (below)

    [verdict]
    labels = { "3" = "Bayesian geometric signatures", "2" = "partial" }   # by number passed ("all" allowed)
    otherwise = "not observed"

Nulls. ``null`` maps a null model's name (``random``, ``init``, ``isotropic``, ``permutation`` ...) to the
summary key(s) holding the value that model gets under the same code, one key per statistic. The criterion's
rule is applied to those values too: ``nulls[name]["passed"]`` says whether the null model would pass, and a
criterion that passes for any null model is reported as **vacuous** (``details[criterion]["vacuous"]``,
``verdict["vacuous"]``): it cannot tell the model from the null. A null whose value is missing (None) is
reported as unavailable and never makes a criterion vacuous.

Thresholds may be numbers, booleans, or strings naming summary keys (a list threshold is compared elementwise
with a list statistic; a list of thresholds pairs with a list of statistics). Criteria with
``role = "calibrated"`` do not count for the paper's label; the verdict reports them separately under
``calibrated`` (passed, of, by_criterion, and ``label`` from the same labels when they are as many as the
verdict criteria).

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
    threshold: float | bool | str | tuple[float | bool | str, ...]
    min_fraction: float = 1.0
    combine: str = "all"
    claim: str = ""
    #: null model name -> summary keys (one per statistic) holding what that null model gets
    null: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    #: "verdict" (counts for the label) or "calibrated" (reported beside it)
    role: str = "verdict"

    def _thresholds(self, probe_summary: Mapping[str, Any]) -> list[Any]:
        thr = self.threshold if isinstance(self.threshold, tuple) else (self.threshold,) * len(self.statistic)
        return [_lookup(probe_summary, t, self.probe) if isinstance(t, str) else t for t in thr]

    def _one(self, value: Any, threshold: Any) -> tuple[bool, Any]:
        cmp = OPS[self.op]

        def ok(v: Any, t: Any) -> bool:
            bad = [x for x in (v, t) if x is None or (isinstance(x, float) and math.isnan(x))]
            return not bad and bool(cmp(v, t))

        if isinstance(value, (list, tuple)):
            if isinstance(threshold, (list, tuple)):
                if len(threshold) != len(value):
                    raise ConfigError(f"criterion {self.name!r}: threshold has {len(threshold)} elements for "
                                      f"{len(value)} values")
                oks = [ok(v, t) for v, t in zip(value, threshold, strict=True)]
            else:
                oks = [ok(v, threshold) for v in value]
            frac = sum(oks) / len(oks) if oks else 0.0
            return bool(oks) and frac >= self.min_fraction, {"fraction_passing": frac}
        if isinstance(threshold, (list, tuple)):
            raise ConfigError(f"criterion {self.name!r}: a list threshold needs a list statistic")
        return ok(value, threshold), value

    def _apply(self, values: Sequence[Any], thresholds: Sequence[Any]) -> tuple[bool, dict[str, Any]]:
        results, observed = [], {}
        for stat, value, thr in zip(self.statistic, values, thresholds, strict=True):
            passed, seen = self._one(value, thr)
            results.append(passed)
            observed[stat] = seen
        return (any(results) if self.combine == "any" else all(results)), observed

    def evaluate(self, summary: Mapping[str, Any]) -> dict[str, Any]:
        """``{"passed", "observed", "rule", "nulls", "vacuous"}`` for this criterion on a run's summary.

        ``nulls[name]`` = ``{"passed": bool | None, "observed": {...}}`` (None: the null's value is missing);
        ``vacuous`` = some null model passes the same rule.
        """
        probe_summary = summary[self.probe]
        thresholds = self._thresholds(probe_summary)
        passed, observed = self._apply([_lookup(probe_summary, s, self.probe) for s in self.statistic], thresholds)
        nulls: dict[str, Any] = {}
        for name, keys in self.null.items():
            vals = [_lookup(probe_summary, k, self.probe) for k in keys]
            if any(v is None for v in vals):
                nulls[name] = {"passed": None, "observed": None, "statistic": list(keys)}
                continue
            npassed, nobs = self._apply(vals, thresholds)
            nulls[name] = {"passed": bool(npassed), "observed": dict(zip(keys, nobs.values(), strict=True)),
                           "statistic": list(keys)}
        thr = self.threshold if isinstance(self.threshold, tuple) else (self.threshold,)
        rule = f"{' or ' if self.combine == 'any' else ' and '}".join(self.statistic) + f" {self.op} " \
               f"{'/'.join(str(t) for t in thr)}" + \
               (f" in >= {self.min_fraction:.0%} of elements" if self.min_fraction < 1 else "")
        return {"passed": bool(passed), "observed": observed, "rule": rule, "nulls": nulls,
                "vacuous": any(n["passed"] for n in nulls.values())}


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
        main = [c.name for c in self.criteria if c.role == "verdict"]
        cal = [c.name for c in self.criteria if c.role == "calibrated"]
        n = sum(by[k]["passed"] for k in main)
        out = {"suite": self.name, "criteria_passed": n, "of": len(main), "label": self._label(n, len(main)),
               "by_criterion": {k: by[k]["passed"] for k in main},
               "details": {k: {"rule": r["rule"], "observed": r["observed"], "nulls": r["nulls"],
                               "vacuous": r["vacuous"]} for k, r in by.items()},
               "vacuous": [k for k, r in by.items() if r["vacuous"]]}
        if cal:
            nc = sum(by[k]["passed"] for k in cal)
            out["calibrated"] = {"criteria_passed": nc, "of": len(cal),
                                 "by_criterion": {k: by[k]["passed"] for k in cal},
                                 "label": self._label(nc, len(cal)) if len(cal) == len(main) else None}
        return out

    def _label(self, n: int, total: int) -> str:
        label = self.labels.get("all") if n == total and "all" in self.labels else None
        return label or self.labels.get(str(n), self.otherwise)


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
    allowed = {"name", "probe", "statistic", "op", "threshold", "min_fraction", "combine", "claim", "null", "role"}
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
    def one_threshold(t: Any) -> float | bool | str:
        if isinstance(t, (bool, str)):
            return t
        if isinstance(t, (int, float)):
            return float(t)
        raise ConfigError(f"{where}: criteria[{i}] threshold {t!r} is not a number, boolean or summary key")

    thr = raw["threshold"]
    if isinstance(thr, list):
        if len(thr) != len(stats):
            raise ConfigError(f"{where}: criteria[{i}] has {len(thr)} thresholds for {len(stats)} statistics")
        threshold: Any = tuple(one_threshold(t) for t in thr)
    else:
        threshold = one_threshold(thr)
    null_raw = raw.get("null", {})
    if not isinstance(null_raw, Mapping):
        raise ConfigError(f"{where}: criteria[{i}] null must be a table {{name = \"summary key\"}}")
    null = {}
    for k, v in null_raw.items():
        keys = (v,) if isinstance(v, str) else tuple(v)
        if len(keys) != len(stats):
            raise ConfigError(f"{where}: criteria[{i}] null {k!r} names {len(keys)} statistic(s) for "
                              f"{len(stats)}")
        null[str(k)] = keys
    role = raw.get("role", "verdict")
    if role not in ("verdict", "calibrated"):
        raise ConfigError(f"{where}: criteria[{i}] role {role!r}; valid choices: verdict, calibrated")
    return Criterion(name=str(raw.get("name", f"{raw['probe']}:{','.join(stats)}")), probe=str(raw["probe"]),
                     statistic=stats, op=raw["op"], threshold=threshold, min_fraction=mf, combine=combine,
                     claim=str(raw.get("claim", "")), null=null, role=role)


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
