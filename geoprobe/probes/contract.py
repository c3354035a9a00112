"""The probe contract: what a probe declares, what the engine hands it, and what it returns.

A probe is one :class:`Probe` object registered in :data:`PROBES` (one module per probe; the built-in ones sit
next to their maths). The engine (:func:`geoprobe.probes.suite.run_probes`) asks every requested
*observational* probe for its :class:`Need`s, runs **one** streaming forward pass per batch for the union of
them, and hands each probe a :class:`Collected` view of the reduced activations. What the probes' nulls read
from the model at initialisation (``Probe.init_needs``) is collected the same way, in one more pass over that
model shared by all of them. *Intervention* probes (ablations, entropy-axis cuts, checkpoint dynamics) run their
own forward passes on top.

Adding a probe::

    import geoprobe as gp

    def run(state: gp.ProbeState, acts: gp.Collected) -> gp.ProbeOutput:
        v = acts.get("resid_post", "final")          # {layer: [N, d_model]}
        rows = [gp.ResultRow("resid_norm", "mean_norm", float(x.norm(dim=-1).mean()), layer=layer)
                for layer, x in v.items()]
        return gp.ProbeOutput(rows, {"layers": len(rows)})

    gp.register_probe(gp.Probe(
        name="resid_norm", run=run,
        needs=lambda s: [gp.Need("resid_post", s.all_layers, "final")], needs_attention=False))

Positions a :class:`Need` can ask for: ``"final"`` (each row's final real token), ``"all"`` (every position),
``"samples"`` (wind tunnels: the supervised positions, subsampled to ``max_samples`` with the run's seed), or any
other name together with a ``reduce`` function ``SiteActivation -> Tensor``. A need with ``pair=SITE`` reduces
two sites of the same layer and batch together, ``reduce(act, paired_act)`` (e.g. the final query's attention
entropy per head from ``rot_q`` and ``rot_k``, without the attention pattern). Needs with the same
(site, positions) are computed once and shared between probes.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from geoprobe.errors import ConfigError
from geoprobe.registry import Registry
from geoprobe.results import ResultRow

if TYPE_CHECKING:
    from geoprobe.backends.handle import ModelHandle
    from geoprobe.probes.targets import ProbeTarget

STANDARD_POSITIONS = ("final", "all", "samples")
KINDS = ("tunnel", "llm")


@dataclass(frozen=True)
class ProbeOptions:
    """Options shared by the built-in probes (a suite's ``[options]`` table sets them)."""

    n_boot: int = 1000
    seed: int = 0
    #: value-manifold / entropy-axis samples for tunnels (supervised positions, subsampled)
    max_samples: int = 2000
    #: layers for value_manifold / entropy_axis (None: every layer for tunnels, the last for LLMs)
    layers: tuple[int, ...] | None = None
    #: value-manifold variant: "values" (default, Paper III) or "residual" (the residual stream after the block)
    manifold_site: str = "values"
    #: value-manifold positions: None = "all_positions" for tunnels, "final" for LLMs
    manifold_positions: str | None = None
    #: linear probes: cross-validation folds and shuffled-label control draws
    cv_folds: int = 5
    n_shuffles: int = 5
    #: linear probes: sites read ("resid_post", "v")
    linear_sites: tuple[str, ...] = ("resid_post",)
    #: entropy_axis: random control directions per edit, matched in displacement variance to the axis edit
    n_controls: int = 20
    #: attention_focusing: "qk" (from post-rotary q/k, the model keeps its SDPA kernel) or "pattern" (the
    #: eager attention pattern row)
    attention_path: str = "qk"


@dataclass
class ProbeOutput:
    """What a probe returns: tidy rows, a JSON-able summary, and ``data`` for its figure / later probes."""

    rows: list[ResultRow] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    data: Any = None
    figures: dict[str, Any] = field(default_factory=dict)
    #: sample-level tables its figures draw (kept in the Report, so a saved report rebuilds its figures)
    tables: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Need:
    """One reduced activation an observational probe reads from the shared forward pass.

    Attributes:
        site: canonical site (:mod:`geoprobe.backends.sites`).
        layers: block indices (non-negative).
        positions: ``"final"``, ``"all"``, ``"samples"`` or the name of ``reduce``.
        reduce: for custom positions: ``SiteActivation -> Tensor`` with the batch rows first; with ``pair``:
            ``(SiteActivation of site, SiteActivation of pair) -> Tensor`` (same layer, same batch).
        pair: a second site read together with ``site`` (custom positions only).
        positional: the reduced tensor keeps the sequence axis at dim 1, indexed by position (like
            ``"all"``); when the engine trims padding columns of a length-bucketed batch it pads this axis
            back to the full input length with NaN, so rows of every batch line up.
        bucket_safe: ``reduce`` locates positions only through the batch's mask / final index (never by a fixed
            column), so the engine may sort rows by length and trim all-padding columns. A custom need without
            it makes its pass run unbucketed (every column, input order).
    """

    site: str
    layers: tuple[int, ...]
    positions: str = "final"
    reduce: Callable[..., torch.Tensor] | None = None
    pair: str | None = None
    positional: bool = False
    bucket_safe: bool = False

    def __post_init__(self) -> None:
        if self.positions not in STANDARD_POSITIONS and self.reduce is None:
            raise ConfigError(f"need {self.site}/{self.positions}: custom positions need a reduce function; "
                              f"standard positions: {', '.join(STANDARD_POSITIONS)}")
        if self.pair is not None and self.positions in STANDARD_POSITIONS:
            raise ConfigError(f"need {self.site}/{self.positions}: a paired need ({self.site} + {self.pair}) "
                              "needs custom positions and a reduce function")
        object.__setattr__(self, "layers", tuple(sorted({int(x) for x in self.layers})))

    @property
    def key(self) -> tuple[str, str]:
        return (self.site, self.positions)


class Collected(Mapping):
    """``{(site, positions): {layer: tensor}}`` from the shared pass, rows in input order (float32, CPU)."""

    def __init__(self, data: dict[tuple[str, str], dict[int, torch.Tensor]] | None = None) -> None:
        self._data = data or {}

    def get(self, site: str, positions: str = "final") -> dict[int, torch.Tensor]:  # type: ignore[override]
        try:
            return self._data[(site, positions)]
        except KeyError:
            have = ", ".join(f"{s}/{p}" for s, p in self._data) or "nothing"
            raise ConfigError(f"activation {site}/{positions} was not collected (collected: {have}); "
                              "declare it in the probe's needs") from None

    def __getitem__(self, key: tuple[str, str]) -> dict[int, torch.Tensor]:
        return self.get(*key)

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)


@dataclass
class ProbeState:
    """Typed state of one :func:`run_probes` call, shared by its probes (replaces an untyped dict).

    Attributes:
        target: the model and its inputs.
        options: the probe options.
        init_handle: the same architecture at initialisation (key-orthogonality baseline), or None.
        outputs: outputs of the probes that already ran, by name (e.g. entropy_axis reads value_manifold's).
        probes: names of the run's probes (whose ``init_needs`` share the initial model's pass).
    """

    target: ProbeTarget
    options: ProbeOptions
    init_handle: ModelHandle | None = None
    outputs: dict[str, ProbeOutput] = field(default_factory=dict)
    _samples: tuple[torch.Tensor, torch.Tensor] | None = None
    probes: tuple[str, ...] = ()
    #: (probe names covered, those that read something, the initial model's activations) of
    #: :func:`geoprobe.probes.suite.init_collected`
    _init_acts: tuple[frozenset[str], tuple[str, ...], Collected] | None = None

    @property
    def kind(self) -> str:
        return self.target.kind

    @property
    def n_layers(self) -> int:
        return self.target.handle.info.n_layers

    @property
    def all_layers(self) -> tuple[int, ...]:
        return tuple(range(self.n_layers))

    @property
    def samples(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(row, position) of the supervised positions used by ``"samples"`` needs (deterministic subsample)."""
        if self._samples is None:
            from geoprobe.probes.common import supervised_samples

            self._samples = supervised_samples(self.target, self.options.max_samples, self.options.seed)
        return self._samples


@dataclass(frozen=True)
class Probe:
    """One geometric probe.

    Attributes:
        name: registry name (also the ``probe`` column of its rows).
        run: ``(state, collected) -> ProbeOutput``: rows and summary from the collected activations.
        needs: ``state -> [Need]``: what it reads from the shared pass (empty for intervention probes).
        init_needs: ``init_state -> [Need]``: what its nulls read from the model at initialisation (same inputs;
            ``init_state.target`` holds the initial model). The engine collects every requested probe's
            ``init_needs`` in ONE streaming pass per batch over the initial model, the first time a probe asks
            (:func:`geoprobe.probes.suite.init_collected`). None: it reads nothing there.
        kinds: targets it applies to (``tunnel``, ``llm``).
        needs_attention: whether it needs attention heads.
        intervention: it runs forward passes of its own (ablations, axis cuts, checkpoints).
        default_for: kinds for which it runs when no probe list is given.
        claims: the paper's claim per kind, shown beside the measurement (pass thresholds live in suites).
        figures: ``ProbeOutput -> {title: figure}`` built with :mod:`geoprobe.plots`.
        requires: probes whose outputs it reads when they ran (it computes them itself otherwise).
        description: one line for listings.
    """

    name: str
    run: Callable[[ProbeState, Collected], ProbeOutput]
    needs: Callable[[ProbeState], Sequence[Need]] = lambda state: ()
    init_needs: Callable[[ProbeState], Sequence[Need]] | None = None
    kinds: tuple[str, ...] = KINDS
    needs_attention: bool = True
    intervention: bool = False
    default_for: tuple[str, ...] = ()
    claims: Mapping[str, str] = field(default_factory=dict)
    figures: Callable[[ProbeOutput], dict[str, Any]] | None = None
    requires: tuple[str, ...] = ()
    description: str = ""

    def check(self, target: ProbeTarget) -> None:
        """Raise :class:`ConfigError` when this probe cannot run on ``target``."""
        if target.kind not in self.kinds:
            what = {"tunnel": "a wind-tunnel run folder", "llm": "a language-model target"}
            raise ConfigError(f"probe {self.name!r} needs {' or '.join(what[k] for k in self.kinds)}; "
                              f"{target.name} is a {target.kind} target")
        if self.needs_attention and not target.handle.info.has_attention:
            raise ConfigError(f"probe {self.name!r} needs attention heads; {target.name} "
                              f"({target.handle.info.family}) has none")


#: the built-in probe modules (each registers its :class:`Probe` on import)
BUILTIN_MODULES = ("key_orthogonality", "qk_alignment", "attention_focusing", "value_manifold", "ablation",
                   "entropy_axis", "dynamics", "linear_probe")


class ProbeRegistry(Registry[Probe]):
    """The probe registry; built-in probes load on first lookup (so importing geoprobe stays cheap)."""

    _loaded = False

    def _ensure(self) -> None:
        if not ProbeRegistry._loaded:
            ProbeRegistry._loaded = True
            for mod in BUILTIN_MODULES:
                importlib.import_module(f"geoprobe.probes.{mod}")

    def get(self, name: str) -> Probe:
        self._ensure()
        return super().get(name)

    def names(self) -> list[str]:
        self._ensure()
        return super().names()

    def __contains__(self, name: object) -> bool:
        self._ensure()
        return super().__contains__(name)

    def unregister(self, name: str) -> None:
        """Remove a probe (tests and notebooks re-registering one)."""
        self._items.pop(name, None)


PROBES = ProbeRegistry("probe")


def register_probe(probe: Probe, *, replace: bool = False) -> Probe:
    """Register ``probe`` under ``probe.name`` (``replace=True`` overwrites one of the same name)."""
    if not isinstance(probe, Probe):
        raise ConfigError(f"register_probe expects a geoprobe Probe, got {type(probe).__name__}")
    if replace:
        PROBES.unregister(probe.name)
    elif probe.name in PROBES._items:
        raise ConfigError(f"a probe named {probe.name!r} is already registered; pick another name or pass "
                          "replace=True")
    PROBES.register(probe.name, probe)
    return probe


def default_probes(kind: str) -> list[str]:
    """Probes run when none are named, in registry order of the built-in list."""
    if kind not in KINDS:
        raise ConfigError(f"unknown target kind {kind!r}; valid choices: {', '.join(KINDS)}")
    PROBES._ensure()
    order = {m: i for i, m in enumerate(BUILTIN_MODULES)}
    names = [n for n in PROBES._items if kind in PROBES._items[n].default_for]
    return sorted(names, key=lambda n: order.get(n, len(order)))


class _DefaultProbes(Mapping):
    """``DEFAULT_PROBES[kind]``: read-only view derived from each probe's ``default_for``."""

    def __getitem__(self, kind: str) -> list[str]:
        return default_probes(kind)

    def __iter__(self) -> Iterator[str]:
        return iter(KINDS)

    def __len__(self) -> int:
        return len(KINDS)


DEFAULT_PROBES: Mapping[str, list[str]] = _DefaultProbes()
