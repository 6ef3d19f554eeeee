"""A study's remote side: the remote a run writes through (its lease, uploads and pulls),
the remote a reading command reads from, study bundles exported to and imported from a
folder (``_remote``: the same format and checks as every remote)."""

from optuna_search.search.remote._remote import (
    RemoteSession,
    export_to,
    import_remote,
    local_study,
    pull_study,
    reading_location,
    start_remote,
    write_through,
)

__all__ = [
    "RemoteSession",
    "export_to",
    "import_remote",
    "local_study",
    "pull_study",
    "reading_location",
    "start_remote",
    "write_through",
]
