"""Sweeps: lists of independent jobs (grid cells, checkpoints) run one after another or on a Ray cluster.

* :mod:`geoprobe.sweep.executors` -- the ``local`` and ``ray`` executors, jobs, retries, progress and the sweep
  manifest.
"""

from geoprobe.sweep.executors import (
    EXECUTORS,
    Job,
    LocalExecutor,
    Outcome,
    RayExecutor,
    SweepError,
    make_executor,
    require_ray,
    sweep_manifest,
)

__all__ = ["EXECUTORS", "Job", "Outcome", "LocalExecutor", "RayExecutor", "SweepError", "make_executor",
           "require_ray", "sweep_manifest"]
