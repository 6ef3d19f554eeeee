"""SIGTERM handled like Ctrl-C.

``docker stop``, Kaggle's "stop session" and most schedulers send SIGTERM, then SIGKILL
a few seconds later. Python's default would die at once and leave the trial RUNNING
until its heartbeat went stale (the next run waiting out the grace period); instead the
signal becomes :class:`Terminated` (a KeyboardInterrupt), the trial is marked FAIL and
resumes from its last checkpoint at the next run. Further signals are ignored while that
is written.
"""

from __future__ import annotations

import signal

EXIT_TERMINATED = 128 + signal.SIGTERM


class Terminated(KeyboardInterrupt):
    """The process received SIGTERM."""


def _on_sigterm(signum, frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Terminated()


def handle_sigterm() -> None:
    signal.signal(signal.SIGTERM, _on_sigterm)
