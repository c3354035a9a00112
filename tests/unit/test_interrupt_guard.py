"""geoprobe.interrupts in this process: the job-wide guard, a held signal in a job's last step, a second Ctrl-C,
ignored signals, nesting with training's flag mode, and the command line the CLI prints to continue."""

from __future__ import annotations

import os
import signal
import time

import pytest

from geoprobe.errors import JobInterrupted, TrainingInterrupted
from geoprobe.interrupts import StopRequest, check, finishing, guard, reclaim


def _kill_self(signum: int) -> None:
    os.kill(os.getpid(), signum)
    time.sleep(0.05)  # the handler runs at the next bytecode boundary; never reached when it raises


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_guard_raises_at_once_with_the_signal_and_restores_the_handlers(signum):
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    reached = []
    with pytest.raises(JobInterrupted) as info:
        with guard("{signal} received: job x stopped", continue_with="same"):
            _kill_self(signum)
            reached.append(True)
    assert reached == []
    exc = info.value
    assert (exc.signum, str(exc), exc.continue_with) == (signum, f"{signal.Signals(signum).name} received: job x "
                                                                 "stopped", "same")
    assert exc.body == "job x stopped" and not isinstance(exc, TrainingInterrupted)
    assert {s: signal.getsignal(s) for s in before} == before


def test_last_step_finishes_and_the_held_signal_stops_the_next_job():
    order = []
    with pytest.raises(JobInterrupted) as info:
        with guard("{signal} received: sweep stopped"):
            with finishing():
                _kill_self(signal.SIGTERM)
                order.append("last step finished")
            order.append("job returned")  # the job counts as finished
            check()  # the sweep's next job boundary
            order.append("next job")
    assert order == ["last step finished", "job returned"]
    assert info.value.signum == signal.SIGTERM


def test_local_executor_stops_before_the_next_job_on_a_held_signal():
    from geoprobe.sweep.executors import Job, LocalExecutor

    ran = []

    def job(key):
        ran.append(key)
        if key == "a":
            with finishing():  # e.g. a finished training run swapped into place
                _kill_self(signal.SIGINT)
        return key

    with pytest.raises(JobInterrupted) as info, guard("{signal} received: sweep stopped"):
        LocalExecutor().run([Job("a", job, "a"), Job("b", job, "b")])
    assert ran == ["a"] and info.value.signum == signal.SIGINT


def test_second_ctrl_c_in_a_last_step_stops_at_once():
    reached = []
    with pytest.raises(KeyboardInterrupt), guard("{signal} received: x"), finishing():
        _kill_self(signal.SIGINT)
        reached.append("first taken")
        _kill_self(signal.SIGINT)
        reached.append("second ignored")
    assert reached == ["first taken"]


def test_training_flag_mode_nests_in_the_guard():
    """Inside the guard, training's StopRequest takes the signal as a flag (the step finishes); an exception
    raised on it is training's own; after the block the guard is back."""
    with guard("{signal} received: grid stopped"):
        with StopRequest() as stop:
            _kill_self(signal.SIGTERM)
            assert stop.signum == signal.SIGTERM  # no exception: the loop decides
        with pytest.raises(JobInterrupted) as info:
            _kill_self(signal.SIGINT)
    assert str(info.value) == "SIGINT received: grid stopped"


def test_an_ignored_signal_stays_ignored_and_reclaim_reinstalls_the_guard():
    term = signal.getsignal(signal.SIGTERM)
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a background job (cmd &): Ctrl-C is not for it
    try:
        with guard("{signal} received: x") as g:
            assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
            signal.signal(signal.SIGTERM, lambda *a: None)  # e.g. ray.init's own SIGTERM handler
            reclaim()
            assert signal.getsignal(signal.SIGTERM) == g._handler
            assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) == term
    finally:
        signal.signal(signal.SIGINT, old)


def test_training_interruption_keeps_its_message_and_type():
    exc = TrainingInterrupted(signal.SIGTERM, "SIGTERM received: training stopped at step 3; continue with --resume")
    assert isinstance(exc, JobInterrupted) and exc.says_how_to_continue and exc.continue_with == "resume"
    assert StopRequest(immediate="{signal} received during x").interruption(signal.SIGINT).__class__ \
        is TrainingInterrupted


def test_cli_prints_the_command_that_continues():
    from geoprobe.cli import _continue_hint
    from geoprobe.interrupts import restate

    base = JobInterrupted(signal.SIGTERM, "SIGTERM received: x")
    argv = ["scan", "my model", "--out", "o", "--overwrite"]
    assert _continue_hint(restate(base, "kept", "resume"), argv) == \
        "; continue with: geoprobe scan 'my model' --out o --resume"
    assert _continue_hint(restate(base, "kept", "same"), argv) == \
        "; continue with: geoprobe scan 'my model' --out o --overwrite"
    assert _continue_hint(restate(base, "nothing", None), ["probe", "m", "--out", "o"]) == \
        "; start it again with: geoprobe probe m --out o"
    assert _continue_hint(TrainingInterrupted(signal.SIGINT, "... continue with --resume"), argv) == ""
