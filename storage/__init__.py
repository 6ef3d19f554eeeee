"""storage/: where a study lives, in two rooms with faces of their own: the study database
(``storage.study``: Optuna storages, the ledger, records, artifacts, checkpoints) and its
remote copy (``storage.remote``: stores, manifests and the lease, sync). This module is
the one face the other folders use: it names what the two rooms' faces name (each name
is listed once, in its room). Imports nothing from search/ or objectives/; the simulated
Hub (``storage.testing``) is for tests and benchmarks, never imported here."""

from optuna_search.storage import remote, study
from optuna_search.storage.remote import *  # noqa: F403
from optuna_search.storage.study import *  # noqa: F403

__all__ = study.__all__ + remote.__all__
