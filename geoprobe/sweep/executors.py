"""Executors: run a list of independent jobs serially in this process (``local``) or as Ray tasks (``ray``).

A :class:`Job` is a picklable spec plus a module-level function ``fn(spec)`` that writes its result into the
sweep's output folder itself (atomically, so a half-finished job leaves nothing that looks finished) and
returns a small picklable record. Both executors give the same contract:

- every job ends ``done`` or ``failed``, with the number of ``attempts`` it took; nothing is dropped;
- a job that raises (or whose worker process dies) is run again, at most ``max_retries`` more times; an error
  the user must fix (:class:`~geoprobe.errors.GeoprobeError`, e.g. a missing model) is not retried, since
  another attempt would fail the same way;
- ``on_result(outcome)`` is called in the calling process as each job ends (e.g. to rewrite a progress table);
- progress lines ``sweep: D/N done, R running, F failed`` go to ``progress`` (a callable taking a line);
- SIGINT/SIGTERM (:mod:`geoprobe.interrupts`) stop the sweep: finished jobs are kept, Ray tasks still out are
  cancelled and a local Ray instance is stopped.

``ray`` submits each job as a Ray task with its resource request: one CPU, plus ``num_gpus=1`` when the job
runs on CUDA (its device is ``cuda...``, or ``auto`` on a cluster that has GPUs). It connects to the cluster at
``address`` (else ``RAY_ADDRESS``); without either it starts a local Ray instance, which :meth:`close` stops
again. When this process is already connected to Ray (``ray.init`` called before), that connection is used and
left open. Connected to an existing cluster, the geoprobe package of this process is shipped to the workers
(Ray ``runtime_env`` ``py_modules``), so workers run exactly the driver's code; they still need an environment
with geoprobe's dependencies (torch, transformers, ...). Models and data are never shipped: jobs load them on
the worker from their paths or the hub.
"""

from __future__ import annotations

import math
import os
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geoprobe.errors import ConfigError, GeoprobeError, JobInterrupted
from geoprobe.interrupts import StopRequest
from geoprobe.interrupts import check as check_interrupt
from geoprobe.interrupts import reclaim as reclaim_signals

EXECUTORS = ("local", "ray")
DEFAULT_MAX_RETRIES = 2
INSTALL_HINT = "pip install 'geoprobe[ray]'"


class SweepError(GeoprobeError):
    """Some jobs of a sweep failed after every attempt (finished jobs are kept; a rerun retries the rest)."""


class RayMissingError(GeoprobeError):
    """``--executor ray`` without Ray installed."""


class RayConnectError(GeoprobeError):
    """The Ray cluster named by ``--ray-address`` / ``RAY_ADDRESS`` cannot be reached."""


@dataclass(frozen=True)
class Job:
    """One unit of a sweep.

    Attributes:
        key: unique name, also used in progress lines and the manifest (e.g. ``bijection/mlp/seed0``).
        fn: a module-level function ``fn(spec) -> record`` (pickled by reference for Ray).
        spec: the picklable argument of ``fn`` (paths and settings, never a model).
        device: the device the job computes on (``cpu``, ``cuda[:N]`` or ``auto``): decides its GPU request.
        cpus: CPUs the job asks for (Ray).
    """

    key: str
    fn: Callable[[Any], Any]
    spec: Any
    device: str = "cpu"
    cpus: float = 1.0


@dataclass
class Outcome:
    """How a job ended: ``status`` is ``done`` or ``failed``; ``attempts`` counts the runs it took."""

    key: str
    status: str
    attempts: int
    result: Any = None
    error: str | None = None
    seconds: float = math.nan
    errors: list[str] = field(default_factory=list)
    #: the last failure's traceback (worker side for Ray), kept in the manifest for debugging
    detail: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "status": self.status, "attempts": self.attempts, "error": self.error,
                "attempt_errors": list(self.errors), "traceback": self.detail,
                "seconds": None if not math.isfinite(self.seconds) else round(self.seconds, 3)}


def _check_jobs(jobs: Sequence[Job], max_retries: int) -> None:
    keys = [j.key for j in jobs]
    if len(set(keys)) != len(keys):
        dup = sorted({k for k in keys if keys.count(k) > 1})
        raise ConfigError(f"sweep jobs must have distinct keys; repeated: {', '.join(dup)}")
    if int(max_retries) < 0:
        raise ConfigError(f"--max-retries must be >= 0, got {max_retries}")


#: longest traceback kept per failed job in the manifest (characters, the end of it)
MAX_TRACEBACK = 8000


def _traceback(exc: BaseException) -> str:
    """The exception's text with its traceback (a Ray task error carries the worker's), at most the last
    :data:`MAX_TRACEBACK` characters."""
    text = "".join(traceback.format_exception(exc)).rstrip()
    return text[-MAX_TRACEBACK:]


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


class _Progress:
    """Counts and prints ``sweep [t] D/N done, R running, F failed`` lines (``, Q queued`` when jobs wait for
    a free worker: Ray does not report which submitted task has started, so ``running`` is the number in flight
    capped by the cluster's job slots, the rest ``queued``)."""

    def __init__(self, total: int, sink: Callable[[str], None] | None, slots: int | None = None) -> None:
        self.total, self.sink, self.slots = total, sink, slots
        self.done = self.running = self.failed = 0
        self.t0 = time.perf_counter()

    def line(self, event: str) -> None:
        if self.sink is None:
            return
        running = self.running if self.slots is None else min(self.running, self.slots)
        queued = self.running - running
        self.sink(f"sweep [{time.perf_counter() - self.t0:7.1f}s] {self.done}/{self.total} done, {running} running, "
                  + (f"{queued} queued, " if queued else "") + f"{self.failed} failed | {event}")


def stderr_progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class LocalExecutor:
    """Run the jobs one after another in this process (the behaviour before executors existed)."""

    name = "local"

    def describe(self) -> dict[str, Any]:
        return {"executor": self.name}

    def run(self, jobs: Sequence[Job], *, max_retries: int = DEFAULT_MAX_RETRIES,
            on_result: Callable[[Outcome], None] | None = None,
            progress: Callable[[str], None] | None = None) -> list[Outcome]:
        _check_jobs(jobs, max_retries)
        prog = _Progress(len(jobs), progress)
        outcomes = []
        for job in jobs:
            check_interrupt()  # a signal held while the last job put its result in place stops the sweep here
            errors: list[str] = []
            t0 = time.perf_counter()
            outcome = None
            for attempt in range(1, int(max_retries) + 2):
                prog.running = 1
                prog.line(f"{job.key} started (attempt {attempt})")
                try:
                    result = job.fn(job.spec)  # KeyboardInterrupt / TrainingInterrupted stop the sweep
                except GeoprobeError as exc:  # the user's to fix: another attempt fails the same way
                    errors.append(_one_line(exc))
                    outcome = Outcome(job.key, "failed", attempt, error=str(exc), errors=errors,
                                      seconds=time.perf_counter() - t0)
                    break
                except Exception as exc:  # noqa: BLE001 - recorded, retried, reported
                    errors.append(_one_line(exc))
                    if attempt <= int(max_retries):
                        prog.line(f"{job.key} attempt {attempt} failed ({errors[-1]}); retrying")
                        continue
                    outcome = Outcome(job.key, "failed", attempt, error=_one_line(exc), errors=errors,
                                      seconds=time.perf_counter() - t0, detail=_traceback(exc))
                    break
                outcome = Outcome(job.key, "done", attempt, result=result, errors=errors,
                                  seconds=time.perf_counter() - t0)
                break
            prog.running = 0
            if outcome.status == "done":
                prog.done += 1
            else:
                prog.failed += 1
            prog.line(f"{job.key} {outcome.status} after {outcome.attempts} attempt(s), {outcome.seconds:.1f} s"
                      + (f": {outcome.error}" if outcome.error else ""))
            outcomes.append(outcome)
            if on_result is not None:
                on_result(outcome)
        return outcomes

    def close(self) -> None:
        pass

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def worker_info(_spec: Any = None) -> dict[str, Any]:
    """Where a job runs: host, pid, the geoprobe package it imports, its CPU threads and visible GPUs (a
    cluster check: ``RayExecutor().run([Job("info", worker_info, None)])``)."""
    import socket

    import geoprobe

    return {"host": socket.gethostname(), "pid": os.getpid(), "geoprobe": str(Path(geoprobe.__file__).parent),
            "pythonpath": os.environ.get("PYTHONPATH"), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}


def require_ray() -> Any:
    """The ``ray`` module, or :class:`RayMissingError` saying how to install it."""
    try:
        import ray
    except ImportError:
        raise RayMissingError(f"--executor ray needs Ray, which is not installed; install it with: "
                              f"{INSTALL_HINT}") from None
    return ray


def _geoprobe_package_dir() -> str:
    import geoprobe

    return str(Path(geoprobe.__file__).resolve().parent)


def _call(fn: Callable[[Any], Any], spec: Any) -> Any:
    """The body of every Ray task: ``fn(spec)`` (a plain function, so Ray pickles ``fn`` by reference)."""
    return fn(spec)


class RayExecutor:
    """Run the jobs as Ray tasks (module docstring: resources, cluster address, what is shipped).

    Args:
        address: a Ray cluster address (``ray://host:10001`` or ``host:6379``); default ``RAY_ADDRESS``; neither:
            start a local instance (stopped by :meth:`close`).
        num_cpus: CPUs of a local instance (default: all of this machine's).
        ship_package: send this process's geoprobe package to the workers; default: only when connecting to an
            existing cluster (a local instance's workers import it from this process's environment).
        object_store_mb: object store of a local instance in MiB (jobs return small records, so it stays small).
    """

    name = "ray"

    def __init__(self, address: str | None = None, *, num_cpus: int | None = None,
                 ship_package: bool | None = None, object_store_mb: int = 100) -> None:
        ray = require_ray()
        self.ray = ray
        self.address = address or os.environ.get("RAY_ADDRESS") or None
        self._owns = False
        self.started_local = False
        if ray.is_initialized():  # a connection made by the caller (e.g. a notebook): use it, leave it open
            self.mode = "existing connection"
        else:
            ship = bool(self.address) if ship_package is None else ship_package
            runtime_env = {"py_modules": [_geoprobe_package_dir()]} if ship else None
            kwargs: dict[str, Any] = {"runtime_env": runtime_env, "log_to_driver": False,
                                      "configure_logging": False}
            if self.address:
                try:
                    ray.init(address=self.address, **kwargs)
                except (ConnectionError, OSError, RuntimeError, ValueError) as exc:
                    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                    raise RayConnectError(
                        f"cannot connect to the Ray cluster at {self.address!r} (--ray-address or RAY_ADDRESS): "
                        f"{first} A head started with `ray start --head` listens on HOST:6379; without an "
                        "address geoprobe starts a local Ray instance") from None
                self.mode = "cluster"
            else:
                ray.init(address="local", num_cpus=num_cpus, include_dashboard=False,
                         object_store_memory=int(object_store_mb) * 1024 * 1024, **kwargs)
                self.mode = "local instance"
                self.started_local = True
            self._owns = True
            reclaim_signals()  # ray.init replaced the SIGTERM handler with sys.exit: a signal stops the sweep cleanly
        resources = ray.cluster_resources()
        self.cluster_cpus = float(resources.get("CPU", 0))
        self.cluster_gpus = float(resources.get("GPU", 0))
        self._remote = ray.remote(_call)

    def describe(self) -> dict[str, Any]:
        return {"executor": self.name, "mode": self.mode, "address": self.address,
                "cluster_cpus": self.cluster_cpus, "cluster_gpus": self.cluster_gpus}

    def gpus_for(self, job: Job) -> int:
        """1 for a job on CUDA (``cuda...``, or ``auto`` when the cluster has GPUs), else 0."""
        dev = str(job.device)
        return int(dev.startswith("cuda") or (dev == "auto" and self.cluster_gpus > 0))

    def slots(self, jobs: Sequence[Job]) -> int:
        """How many of these jobs the cluster can run at once (by CPUs, and GPUs for GPU jobs)."""
        if not jobs:
            return 1
        n = int(self.cluster_cpus // max(j.cpus for j in jobs)) if self.cluster_cpus else 1
        if any(self.gpus_for(j) for j in jobs):
            n = min(n, int(self.cluster_gpus))
        return max(1, n)

    def _submit(self, job: Job) -> Any:
        return self._remote.options(num_cpus=job.cpus, num_gpus=self.gpus_for(job), max_retries=0,
                                    retry_exceptions=False, name=f"geoprobe:{job.key}").remote(job.fn, job.spec)

    def run(self, jobs: Sequence[Job], *, max_retries: int = DEFAULT_MAX_RETRIES,
            on_result: Callable[[Outcome], None] | None = None,
            progress: Callable[[str], None] | None = None) -> list[Outcome]:
        _check_jobs(jobs, max_retries)
        ray = self.ray
        from ray.exceptions import RayError, RayTaskError

        prog = _Progress(len(jobs), progress, slots=self.slots(jobs))
        for job in jobs:
            if self.gpus_for(job) and self.cluster_gpus <= 0:
                raise ConfigError(f"job {job.key} asks for a GPU (device {job.device}) but the Ray cluster has "
                                  "none; use --device cpu or a cluster with GPUs")
        outcomes: dict[str, Outcome] = {}
        pending: dict[Any, tuple[Job, int, float, list[str]]] = {}
        for job in jobs:
            pending[self._submit(job)] = (job, 1, time.perf_counter(), [])
        prog.running = len(pending)
        prog.line(f"submitted {len(jobs)} job(s) to Ray ({self.mode}, {self.cluster_cpus:g} CPUs, "
                  f"{self.cluster_gpus:g} GPUs)")
        stop = StopRequest().__enter__()  # SIGINT/SIGTERM as a flag, acted on between waits (not inside Ray's C code)
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=0.25)
                stop.deliver()  # a signal came: the guard (or Python's default) acts now
                if not ready:
                    continue
                ref = ready[0]
                job, attempt, t0, errors = pending.pop(ref)
                try:
                    result = ray.get(ref)
                except RayError as exc:
                    cause = exc.cause if isinstance(exc, RayTaskError) and exc.cause is not None else exc
                    errors.append(_one_line(cause))
                    if not isinstance(cause, GeoprobeError) and attempt <= int(max_retries):
                        prog.line(f"{job.key} attempt {attempt} failed ({errors[-1]}); retrying")
                        pending[self._submit(job)] = (job, attempt + 1, t0, errors)
                        continue
                    msg = str(cause) if isinstance(cause, GeoprobeError) else _one_line(cause)
                    outcome = Outcome(job.key, "failed", attempt, error=msg, errors=errors,
                                      seconds=time.perf_counter() - t0, detail=_traceback(exc))
                    prog.failed += 1
                else:
                    outcome = Outcome(job.key, "done", attempt, result=result, errors=errors,
                                      seconds=time.perf_counter() - t0)
                    prog.done += 1
                prog.running = len(pending)
                prog.line(f"{job.key} {outcome.status} after {outcome.attempts} attempt(s), "
                          f"{outcome.seconds:.1f} s" + (f": {outcome.error}" if outcome.error else ""))
                outcomes[job.key] = outcome
                if on_result is not None:
                    on_result(outcome)
        except BaseException as exc:
            for ref in pending:  # interrupted (Ctrl-C, SIGTERM) or a failing callback: stop the tasks still out there
                try:
                    ray.cancel(ref, force=True)
                except Exception:  # noqa: BLE001, S110 - best effort while stopping
                    pass
            if isinstance(exc, SystemError) and isinstance(exc.__context__, (KeyboardInterrupt, JobInterrupted)):
                raise exc.__context__ from None  # raised by a handler inside Ray's C code (a second Ctrl-C)
            raise
        finally:
            stop.__exit__(None, None, None)
        return [outcomes[j.key] for j in jobs]

    def close(self) -> None:
        """Disconnect; a local instance this executor started is stopped (its processes end)."""
        if self._owns and self.ray.is_initialized():
            self.ray.shutdown()
        self._owns = False

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def check_executor(name: str, ray_address: str | None = None) -> None:
    """One line when ``name`` is not an executor, or when ``ray_address`` is given without the ``ray`` executor
    (commands call it before writing anything; :func:`make_executor` calls it too)."""
    if name not in EXECUTORS:
        raise ConfigError(f"unknown executor {name!r}; valid choices: {', '.join(EXECUTORS)}")
    if name == "local" and ray_address:
        raise ConfigError("--ray-address applies to --executor ray")


def make_executor(name: str, *, ray_address: str | None = None, **ray_kwargs: Any) -> LocalExecutor | RayExecutor:
    """``local`` or ``ray`` (one line naming the choices otherwise; without Ray, how to install it)."""
    check_executor(name, ray_address)
    if name == "local":
        return LocalExecutor()
    return RayExecutor(ray_address, **ray_kwargs)


def sweep_manifest(executor: LocalExecutor | RayExecutor, outcomes: Sequence[Outcome], *, max_retries: int,
                   reused: Sequence[str] = (), **extra: Any) -> dict[str, Any]:
    """The sweep's record: the executor, the retry bound, and every cell with its status and attempts.

    Cells finished by an earlier call (``reused``) are listed as ``done`` with 0 attempts and ``reused: true``.
    """
    cells = [{"key": k, "status": "done", "attempts": 0, "reused": True, "error": None, "attempt_errors": [],
              "seconds": None} for k in reused]
    cells += [{**o.to_dict(), "reused": False} for o in outcomes]
    counts = {s: sum(c["status"] == s for c in cells) for s in ("done", "failed")}
    return {"kind": "geoprobe-sweep", **executor.describe(), "max_retries": int(max_retries),
            "counts": counts, **extra, "cells": cells}


def raise_failures(outcomes: Sequence[Outcome], what: str, *, rerun: str) -> None:
    """One line naming every failed job (after its attempts), or nothing when all are done."""
    failed = [o for o in outcomes if o.status != "done"]
    if not failed:
        return
    names = "; ".join(f"{o.key} ({o.attempts} attempt(s)): {o.error}" for o in failed)
    raise SweepError(f"{len(failed)} of {len(outcomes)} {what} failed: {names}; finished ones are kept, {rerun}")
