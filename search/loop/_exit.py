"""`optuna-search` exit codes (the CLI reference generates its table from the docstrings here)."""

import signal

EXIT_OK = 0
"""The study is complete / the command succeeded."""
EXIT_INCOMPLETE = 1
"""The study is not complete: a point failed (listed), or `status` of a study still running."""
EXIT_USAGE = 2
"""Bad input: the message names the problem and the fix; nothing was written."""
EXIT_BUDGET = 3
"""The time budget was reached; the same command in a new session resumes."""
EXIT_DISK_FULL = 4
"""No space left on the device; free some and run the same command (the trial resumes)."""
EXIT_REMOTE = 5
"""The run ended but its remote lacks part of the study (named); the same command finishes the upload."""
EXIT_INTERRUPTED = 128 + signal.SIGINT
"""Interrupted (Ctrl-C): the running trial paused at its checkpoint; the same command resumes it."""
EXIT_TERMINATED = 128 + signal.SIGTERM
"""Terminated (SIGTERM: a preempted or timed-out session): as Ctrl-C, checkpointed and resumable."""
