"""Stopping long jobs cleanly on SIGINT (Ctrl-C) and SIGTERM.

A stopped job keeps what it finished, leaves nothing half-written that looks finished, and says in one line
what was kept and how to continue; the CLI then exits 128 + the signal number (130 for SIGINT, 143 for
SIGTERM). The pieces, all inert outside the main thread (Python delivers signals there only):

- :class:`StopRequest` turns the signals into a flag (:attr:`StopRequest.signum`) that a loop checks between
  units of work, so a unit (a training step) is never cut in half; a second SIGINT raises
  :class:`KeyboardInterrupt` at once. With ``immediate=`` a signal raises at once instead.
- :func:`guard` is the job-wide handler (the CLI installs it around a command): a signal raises
  :class:`~geoprobe.errors.JobInterrupted` at once, wherever the job is, like Ctrl-C raises
  :class:`KeyboardInterrupt`. Every result file is written atomically (:mod:`geoprobe.io`), so stopping
  anywhere loses only the unit in progress. Layers that know what they have saved catch the exception and
  raise it again with that said (:func:`restate`, :func:`reporting`).
- :meth:`StopRequest.deliver` acts on a flag as the handler outside would have, for loops that wait in C code
  that must not have an exception raised inside it (``ray.wait``); :func:`reclaim` re-installs the guard after
  a library replaced its handler (``ray.init`` installs its own SIGTERM handler).
- Signals the process ignores (``SIG_IGN``: a background job started with ``cmd &`` or ``nohup``) stay ignored.
- :func:`finishing` is a job's short last step (swapping its finished result into place): a signal waits until
  it is done and the job counts as finished. The guard keeps such a signal (as it keeps one that came while a
  finished training run was put in place); :func:`check` raises it at the next job boundary of a sweep, so
  the sweep still stops.
"""

from __future__ import annotations

import contextlib
import functools
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

from geoprobe.errors import JobInterrupted, TrainingInterrupted

SIGNALS = (signal.SIGINT, signal.SIGTERM)

#: guards in force, innermost last (main thread only)
_GUARDS: list[StopRequest] = []


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


class StopRequest:
    """Context manager turning SIGINT/SIGTERM into a flag (:attr:`signum`) that a loop checks between units of
    work. A second SIGINT raises :class:`KeyboardInterrupt` at once (the last periodic save then serves, as
    after ``kill -9``). Outside the main thread it does nothing.

    With ``immediate`` (a message in which ``{signal}`` stands for the signal's name) a signal raises ``error``
    (default :class:`~geoprobe.errors.TrainingInterrupted`) at once instead: for work that only reads saved state and
    writes atomically, so stopping anywhere loses nothing.

    In flag mode, a signal that was taken but not acted on when the block ends cleanly is handed to the
    :func:`guard` outside (if any), which raises it at the next :func:`check`."""

    SIGNALS = SIGNALS

    def __init__(self, immediate: str | None = None, *, error: type[JobInterrupted] = TrainingInterrupted,
                 continue_with: str | None = None) -> None:
        self.signum: int | None = None
        self.immediate = immediate
        self.error = error
        self.continue_with = continue_with
        #: a signal handed over by an inner flag-mode StopRequest (guards only)
        self.pending: int | None = None
        self._old: dict[int, Any] = {}

    def interruption(self, signum: int) -> JobInterrupted:
        """The exception this guard raises for ``signum``."""
        message = (self.immediate or "{signal} received").replace("{signal}", signal_name(signum))
        if self.error is TrainingInterrupted:
            return TrainingInterrupted(signum, message)
        return self.error(signum, message, self.continue_with)

    def _handler(self, signum: int, frame: Any) -> None:
        if self.immediate is not None:
            raise self.interruption(signum)
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def deliver(self) -> None:
        """Act on a taken signal as the handler outside this block would have (flag mode): a guard raises its
        :class:`~geoprobe.errors.JobInterrupted`, Python's default SIGINT handler :class:`KeyboardInterrupt`;
        under the default SIGTERM action the process ends. For loops that wait in C code, such as
        ``ray.wait``, which must not have an exception raised inside them."""
        signum, self.signum = self.signum, None
        if signum is None:
            return
        outer = self._old.get(signum)
        if callable(outer):
            outer(signum, None)
        elif outer == signal.SIG_DFL:
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)

    def install(self) -> None:
        """(Re)install this object's handler for the signals (e.g. after a library replaced them). A signal the
        process ignores (``SIG_IGN``: a background job started with ``cmd &`` or ``nohup``) stays ignored."""
        for s in self.SIGNALS:
            if s not in self._old and signal.getsignal(s) == signal.SIG_IGN:
                continue
            old = signal.signal(s, self._handler)
            self._old.setdefault(s, old)

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            self.install()
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        outer = self._old.get(self.signum) if self.signum is not None else None
        for s, handler in self._old.items():
            signal.signal(s, handler)
        self._old = {}
        if self.signum is None or self.immediate is not None or exc_type is not None:
            return
        owner = getattr(outer, "__self__", None)
        if isinstance(owner, StopRequest) and owner in _GUARDS:
            owner.pending = self.signum


@contextlib.contextmanager
def guard(message: str, *, error: type[JobInterrupted] = JobInterrupted,
          continue_with: str | None = None) -> Iterator[StopRequest]:
    """Job-wide handler: SIGINT/SIGTERM raise ``error(signum, message, continue_with)`` at once (``{signal}`` in
    ``message`` stands for the signal's name). Main thread only; elsewhere the block runs unguarded."""
    stop = StopRequest(immediate=message, error=error, continue_with=continue_with)
    with stop:
        _GUARDS.append(stop)
        try:
            yield stop
        finally:
            _GUARDS.remove(stop)


def check() -> None:
    """Raise the signal a guard holds for later (see the module docstring); nothing when there is none."""
    if _GUARDS and _GUARDS[-1].pending is not None:
        g = _GUARDS[-1]
        signum, g.pending = g.pending, None
        raise g.interruption(signum)


def reclaim() -> None:
    """Install the innermost guard's handler again (after a library such as Ray replaced it)."""
    if _GUARDS and threading.current_thread() is threading.main_thread():
        _GUARDS[-1].install()


def finishing() -> StopRequest:
    """Context manager for a job's short last step (putting its finished result in place): SIGINT/SIGTERM wait
    until the block is done, and the job then counts as finished; a guard keeps the signal for the next
    :func:`check` (when a sweep has more jobs to run). A second SIGINT stops at once."""
    return StopRequest()


def restate(exc: JobInterrupted, body: str, continue_with: str | None) -> JobInterrupted:
    """``exc`` told again: ``"<SIGNAL> received: <body>"``, with how to continue."""
    return JobInterrupted(exc.signum, f"{signal_name(exc.signum)} received: {body}", continue_with)


def reporting(describe: Callable[..., JobInterrupted]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: an interruption of the decorated job is told again by ``describe(exc, *args, **kwargs)``
    (called with the job's own arguments; it looks at what is on disk and says what was kept)."""

    def decorate(job: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(job)
        def run(*args: Any, **kwargs: Any) -> Any:
            try:
                return job(*args, **kwargs)
            except JobInterrupted as exc:
                raise describe(exc, *args, **kwargs) from None

        return run

    return decorate
