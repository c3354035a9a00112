"""geoprobe: does this model compute Bayesian posteriors, and does its internal geometry show it?

The flat API (imported lazily, so ``import geoprobe`` stays fast)::

    import geoprobe as gp

    handle = gp.load_model("EleutherAI/pythia-410m")          # or a TransformerBridge / HF model / nnsight object
    report = gp.run_probes(handle, suite="paper3-llm")         # one forward pass per batch for the observational probes
    report.summary["verdict"]
    report = gp.scan("EleutherAI/pythia-410m", domain="math")   # Paper III end to end (writes only with out=)

    task = gp.make_task("bijection", V=10, L=10)               # wind tunnels with exact posteriors
    gp.train_tunnel("runs/bij", "bijection", gp.get_preset("bijection", "cpu"))
    model, task, manifest = gp.load_run("runs/bij")

    gp.register_probe(gp.Probe(name="my_probe", run=..., needs=...))   # a new probe is one object
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: public name -> module that defines it
_EXPORTS: dict[str, str] = {
    # models in memory: loading, sites, activations
    "load_model": "geoprobe.backends.loading",
    "ModelHandle": "geoprobe.backends.handle",
    "ModelInfo": "geoprobe.backends.info",
    "Edit": "geoprobe.backends.handle",
    "Activations": "geoprobe.backends.sites",
    "ActivationCache": "geoprobe.backends.cache",
    "SITES": "geoprobe.backends.sites",
    "tl_hook_name": "geoprobe.backends.sites",
    # probes
    "run_probes": "geoprobe.probes.suite",
    "collect_needs": "geoprobe.probes.suite",
    "Probe": "geoprobe.probes.contract",
    "ProbeOptions": "geoprobe.probes.contract",
    "ProbeOutput": "geoprobe.probes.contract",
    "ProbeState": "geoprobe.probes.contract",
    "Need": "geoprobe.probes.contract",
    "Collected": "geoprobe.probes.contract",
    "PROBES": "geoprobe.probes.contract",
    "register_probe": "geoprobe.probes.contract",
    "default_probes": "geoprobe.probes.contract",
    "Suite": "geoprobe.probes.suites",
    "load_suite": "geoprobe.probes.suites",
    "ProbeTarget": "geoprobe.probes.targets",
    "make_target": "geoprobe.probes.targets",
    "tunnel_target": "geoprobe.probes.targets",
    "llm_target": "geoprobe.probes.targets",
    "load_prompts": "geoprobe.probes.targets",
    # results
    "Report": "geoprobe.report",
    "ResultRow": "geoprobe.results",
    "rows_to_frame": "geoprobe.results",
    # wind tunnels
    "make_task": "geoprobe.tasks.base",
    "TASKS": "geoprobe.tasks.base",
    "Task": "geoprobe.tasks.base",
    "TaskBatch": "geoprobe.tasks.base",
    "train_tunnel": "geoprobe.models.run",
    "evaluate_run": "geoprobe.models.run",
    "get_preset": "geoprobe.models.presets",
    "load_run": "geoprobe.models.checkpoint",
    "list_checkpoints": "geoprobe.models.checkpoint",
    # errors
    "GeoprobeError": "geoprobe.errors",
    "ConfigError": "geoprobe.errors",
}
#: aliases
_ALIASES: dict[str, str] = {}

__all__ = [
    "ActivationCache", "Activations", "Collected", "ConfigError", "Edit", "GeoprobeError", "ModelHandle",
    "ModelInfo", "Need", "PROBES", "Probe", "ProbeOptions", "ProbeOutput", "ProbeState", "ProbeTarget",
    "Report", "ResultRow", "SITES", "Suite", "TASKS", "Task", "TaskBatch", "__version__", "collect_needs",
    "default_probes", "evaluate_run", "get_preset", "list_checkpoints", "llm_target", "load_model",
    "load_prompts", "load_run", "load_suite", "make_target", "make_task", "register_probe", "rows_to_frame",
    "run_probes", "scan", "tl_hook_name", "train_tunnel", "tunnel_target",
]


def __getattr__(name: str) -> Any:
    target = _ALIASES.get(name, name)
    mod = _EXPORTS.get(target)
    if mod is None:
        if name in ("probes", "backends", "models", "tasks", "scan"):  # gp.scan(...) calls the scan driver
            return importlib.import_module(f"geoprobe.{name}")
        raise AttributeError(f"module 'geoprobe' has no attribute {name!r}")
    if target == "make_task" or target in ("TASKS",):
        importlib.import_module("geoprobe.tasks")  # registers the built-in tasks
    value = getattr(importlib.import_module(mod), target)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


if TYPE_CHECKING:  # static type checkers and IDEs see the real signatures
    from geoprobe.backends.handle import Edit, ModelHandle
    from geoprobe.backends.info import ModelInfo
    from geoprobe.backends.loading import load_model
    from geoprobe.backends.sites import SITES, Activations, tl_hook_name
    from geoprobe.errors import ConfigError, GeoprobeError
    from geoprobe.models.checkpoint import list_checkpoints, load_run
    from geoprobe.models.presets import get_preset
    from geoprobe.models.run import evaluate_run, train_tunnel
    from geoprobe.probes.contract import (
        PROBES,
        Collected,
        Need,
        Probe,
        ProbeOptions,
        ProbeOutput,
        ProbeState,
        default_probes,
        register_probe,
    )
    from geoprobe.probes.suite import collect_needs, run_probes
    from geoprobe.probes.suites import Suite, load_suite
    from geoprobe.probes.targets import ProbeTarget, llm_target, load_prompts, make_target, tunnel_target
    from geoprobe.report import Report
    from geoprobe.results import ResultRow, rows_to_frame
    from geoprobe.scan.driver import scan
    from geoprobe.tasks.base import TASKS, Task, TaskBatch, make_task
