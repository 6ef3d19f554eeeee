"""``python -m optuna_search.search``: the ``optuna-search`` command."""

import sys

from optuna_search.search.front import main

sys.exit(main())
