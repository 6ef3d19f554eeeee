"""SIGTERM handling: a requested stop lets training checkpoint, bounded by a grace timer;
the parent of several workers stops at once (see also test_resume's SIGTERM test)."""

import os
import signal
import time

import pytest

from optuna_search.search.loop import _signals


@pytest.fixture
def restore_signals(monkeypatch):
    old = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGALRM)
    monkeypatch.setattr(_signals, "_requested", False)
    yield
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGTERM, old[0])
    signal.signal(signal.SIGALRM, old[1])


def test_sigterm_requests_a_stop_and_the_grace_timer_bounds_it(restore_signals, monkeypatch):
    monkeypatch.setattr(_signals, "GRACE_S", 0.3)
    _signals.handle_sigterm()
    os.kill(os.getpid(), signal.SIGTERM)
    assert _signals.stop_requested()  # training sees it at its next step end
    t0 = time.monotonic()
    with pytest.raises(_signals.Terminated):
        time.sleep(5)  # nothing checkpointed and stopped: the timer ends it
    assert time.monotonic() - t0 < 2


def test_a_handled_stop_disarms_the_timer(restore_signals, monkeypatch):
    monkeypatch.setattr(_signals, "GRACE_S", 0.3)
    _signals.handle_sigterm()
    os.kill(os.getpid(), signal.SIGTERM)
    with pytest.raises(_signals.Terminated):
        _signals.raise_if_stop_requested()  # between trials: start nothing new
    time.sleep(0.6)  # the timer was cancelled: no second interrupt while the trial is marked


def test_a_second_sigterm_is_ignored_while_the_first_is_handled(restore_signals, monkeypatch):
    monkeypatch.setattr(_signals, "GRACE_S", 0.3)
    _signals.handle_sigterm()
    os.kill(os.getpid(), signal.SIGTERM)
    os.kill(os.getpid(), signal.SIGTERM)
    _signals.disarm()
    time.sleep(0.5)
    assert _signals.stop_requested()


def test_the_workers_parent_stops_at_once(restore_signals):
    _signals.handle_sigterm(graceful=False)
    with pytest.raises(_signals.Terminated):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
    assert not _signals.stop_requested()
