"""The remote's room of storage/: a study's copy in a folder, S3, GCS or the Hugging Face
Hub (the ``Store`` protocol, one module per backend in ``backends/``), its manifests and
single-writer lease with fencing epochs (``Remote``), the sync of a local study with it
(pushes in a child process, pulls, the commit budget) and bundles of earlier versions. It
reads the study room through that room's face."""

from optuna_search.storage.remote._bundle import import_bundle
from optuna_search.storage.remote._hub import use_hub_client
from optuna_search.storage.remote._open import known_backends, open_store, supported
from optuna_search.storage.remote._pusher import PushProcess
from optuna_search.storage.remote._replica import (
    META,
    STUDY_UNIT,
    Damaged,
    Entry,
    Lease,
    LeaseLost,
    Manifest,
    Remote,
    point_unit,
)
from optuna_search.storage.remote._store import Backend, Batch, Conflict, Options, Store, Throttled
from optuna_search.storage.remote._sync import (
    STATUS,
    Cadence,
    CommitBudget,
    LeaseKeeper,
    LocalStudy,
    StudySync,
    SyncStatus,
    Uploader,
    cadence_for,
)

__all__ = [
    "META",
    "STATUS",
    "STUDY_UNIT",
    "Backend",
    "Batch",
    "Cadence",
    "CommitBudget",
    "Conflict",
    "Damaged",
    "Entry",
    "Lease",
    "LeaseKeeper",
    "LeaseLost",
    "LocalStudy",
    "Manifest",
    "Options",
    "PushProcess",
    "Remote",
    "Store",
    "StudySync",
    "SyncStatus",
    "Throttled",
    "Uploader",
    "cadence_for",
    "import_bundle",
    "known_backends",
    "open_store",
    "point_unit",
    "supported",
    "use_hub_client",
]
