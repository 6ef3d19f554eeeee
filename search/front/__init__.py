"""The front doors: the command line (``_cli``; ``python -m optuna_search.search`` and the
``optuna-search`` script run it), the run request both it and the Python API build
(``_request``), the configuration's layers (``_config``), `validate`, and what `run`
and `status` print (``_summary``, ``_status``)."""

from optuna_search.search.front._cli import build_parser, main, parse_duration
from optuna_search.search.front._config import load_config
from optuna_search.search.front._request import RunRequest, execute
from optuna_search.search.front._status import status
from optuna_search.search.front._summary import Summary, print_summary, summarize
from optuna_search.search.front._validate import validate

__all__ = [
    "RunRequest",
    "Summary",
    "build_parser",
    "execute",
    "load_config",
    "main",
    "parse_duration",
    "print_summary",
    "status",
    "summarize",
    "validate",
]
