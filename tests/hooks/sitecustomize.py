"""Test hook, loaded by the Python processes a test starts with this folder on
PYTHONPATH (``conftest.hold_env``): with ``OPTUNA_SEARCH_TEST_HOLD=<regex>`` set, the
first optuna-search log line matching it holds the process right there, after printing
``TEST-HOLD: <line>`` to stderr, until it is signalled (SIGINT, SIGKILL, or SIGTERM,
which lets the training go on to its checkpoint-and-stop), or, with
``OPTUNA_SEARCH_TEST_HOLD_SECONDS=S``, for S seconds, or, with
``OPTUNA_SEARCH_TEST_HOLD_RELEASE=<path>``, until that file exists (then it goes on). A
test then signals a process that is exactly where it wants it, or lets a deadline pass at
a known step, instead of racing its progress."""

import os

_PATTERN = os.environ.get("OPTUNA_SEARCH_TEST_HOLD")
_SECONDS = float(os.environ.get("OPTUNA_SEARCH_TEST_HOLD_SECONDS", "inf"))
_RELEASE = os.environ.get("OPTUNA_SEARCH_TEST_HOLD_RELEASE")

if _PATTERN:
    import logging
    import re
    import sys
    import time

    class _Hold(logging.Filter):
        def __init__(self) -> None:
            super().__init__()
            self.rx = re.compile(_PATTERN)
            self.held = False

        def filter(self, record: logging.LogRecord) -> bool:
            if not self.held and self.rx.search(record.getMessage()):
                self.held = True
                sys.stderr.write(f"TEST-HOLD: {record.getMessage()}\n")
                sys.stderr.flush()
                from optuna_search.search.loop._signals import stop_requested

                until = time.monotonic() + _SECONDS
                # SIGINT raises out of the sleep; SIGKILL ends the process here.
                released = lambda: bool(_RELEASE) and os.path.exists(_RELEASE)  # noqa: E731
                while not stop_requested() and time.monotonic() < until and not released():
                    time.sleep(0.02)
            return True

    logging.getLogger("optuna_search").addFilter(_Hold())

# With OPTUNA_SEARCH_TEST_HUB=<folder>, the Hugging Face Hub is the simulated one whose
# state lives in that folder (storage/_hub_sim.py): every process of a test (machine A,
# machine B, their upload processes) meets the same Hub, with its limits.
_HUB = os.environ.get("OPTUNA_SEARCH_TEST_HUB")
if _HUB:
    from optuna_search.storage import _hub
    from optuna_search.storage._hub_sim import SimulatedHub

    _hub.hub_api = lambda: SimulatedHub(_HUB)
