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
# state lives in that folder (storage/testing.py): every process of a test (machine A,
# machine B, their upload processes) meets the same Hub, with its limits.
_HUB = os.environ.get("OPTUNA_SEARCH_TEST_HUB")
if _HUB:
    try:
        from optuna_search.storage.remote import use_hub_client
        from optuna_search.storage.testing import SimulatedHub
    except ImportError:  # a process of the test that is no optuna-search (pip, before the install)
        pass
    else:
        use_hub_client(lambda: SimulatedHub(_HUB))

# With OPTUNA_SEARCH_TEST_SKEW=<regex>=<seconds>, the clock that decides a session's time
# budget (the trainer's and the scheduler's time.monotonic) jumps <seconds> ahead at the
# first optuna-search log line matching <regex>: the test decides when the budget is
# spent, whatever the machine's speed, and nothing sleeps.
_SKEW = os.environ.get("OPTUNA_SEARCH_TEST_SKEW")
if _SKEW:
    import importlib.abc
    import importlib.machinery
    import logging
    import re
    import sys
    import time
    import types

    _rx, _ahead = re.compile(_SKEW.rsplit("=", 1)[0]), float(_SKEW.rsplit("=", 1)[1])
    _jump = [0.0]
    _clock = types.SimpleNamespace(**{k: getattr(time, k) for k in dir(time) if not k.startswith("_")})
    _clock.monotonic = lambda: time.monotonic() + _jump[0]
    _CLOCKED = ("optuna_search.objectives._trainer", "optuna_search.search.loop._scheduler")

    class _Skew(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            if not _jump[0] and _rx.search(record.getMessage()):
                _jump[0] = _ahead
            return True

    class _Clocked(importlib.abc.MetaPathFinder):
        """The budget's modules, once imported, read the skewed clock."""

        def find_spec(self, name, path, target=None):
            if name not in _CLOCKED:
                return None
            spec = importlib.machinery.PathFinder.find_spec(name, path)
            if spec is None or spec.loader is None:
                return spec
            run = spec.loader.exec_module

            def exec_module(module, run=run):
                run(module)
                module.time = _clock

            spec.loader.exec_module = exec_module
            return spec

    sys.meta_path.insert(0, _Clocked())
    logging.getLogger("optuna_search").addFilter(_Skew())
