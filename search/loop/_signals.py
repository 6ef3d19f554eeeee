"""SIGTERM: checkpoint if it takes a few seconds, then stop like Ctrl-C.

``docker stop``, Kaggle's "stop session" and most schedulers send SIGTERM, then SIGKILL
some seconds later (10 s for ``docker stop``). Python's default would die at once and
leave the trial RUNNING until its heartbeat went stale (the next run waiting out the
grace period). Instead:

- while a trial trains, the stop is *requested*: the training callback checkpoints at
  the end of the current optimizer step and stops (``stop_requested``), the trial is
  marked FAIL and resumes from exactly that step at the next run;
- a timer of ``GRACE_S`` seconds bounds the wait: if the step and its checkpoint take
  longer (a 7B step on a T4 does), or nothing is training (model loading, evaluation,
  waiting for other workers), the signal becomes :class:`Terminated` (a
  KeyboardInterrupt) and the trial resumes from its last periodic checkpoint. A kill
  during the checkpoint's write is safe: resume skips a checkpoint cut short.

Further SIGTERMs are ignored while that happens. The parent of ``run --workers`` stops at
once instead (``graceful=False``): its job is to pass the signal on to the workers.
"""

from __future__ import annotations

import signal

EXIT_TERMINATED = 128 + signal.SIGTERM
GRACE_S = 5.0
"""Seconds a SIGTERM may wait for the current step and its checkpoint."""

_requested = False


class Terminated(KeyboardInterrupt):
    """The process received SIGTERM."""


def stop_requested() -> bool:
    """True once SIGTERM asked the running trial to checkpoint and stop."""
    return _requested


def request_stop() -> None:
    """Ask the running trial to checkpoint at its next step and stop, as SIGTERM does but
    without its timer (the remote's lease was lost: training on would write nowhere)."""
    global _requested
    _requested = True


def disarm() -> None:
    """Cancel the grace timer: the stop is being handled (the trial is being marked)."""
    if hasattr(signal, "setitimer"):
        signal.setitimer(signal.ITIMER_REAL, 0)


def raise_if_stop_requested() -> None:
    """Between trials: a requested stop ends the run before the next trial starts."""
    if _requested:
        disarm()
        raise Terminated()


def _on_alarm(_signum, _frame) -> None:
    raise Terminated()


def _graceful(_signum, _frame) -> None:
    global _requested
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _requested = True
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, GRACE_S)


def _immediate(_signum, _frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Terminated()


def handle_sigterm(*, graceful: bool = True) -> None:
    # setitimer is POSIX; elsewhere the stop is immediate.
    signal.signal(signal.SIGTERM, _graceful if graceful and hasattr(signal, "setitimer") else _immediate)
