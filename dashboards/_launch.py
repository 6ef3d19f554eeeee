"""Start the real optuna-dashboard on a study's storage and artifact store.

Safe beside a running study on the same SQLite file (optuna-dashboard issue 545: a
dashboard holding the database lock crashed the study): the database is in WAL mode, so
the dashboard's reads never block the study's writes, and both sides wait up to 60 s on
a busy database instead of failing. The dashboard gets no heartbeat (it runs no trials).
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from optuna_search.core import Config, UserError
from optuna_search.storage._artifacts import artifact_store
from optuna_search.storage._internals import storage_of
from optuna_search.storage._storages import redact_url

log = logging.getLogger("optuna_search")
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def check_port(port: int) -> None:
    if not 1 <= port <= 65535:
        raise UserError(f"--port {port} is not a TCP port; use 1-65535 (e.g. 8080)")


def serve_dashboard(study: Any, config: Config, host: str = "127.0.0.1", port: int = 8080) -> None:
    import optuna_dashboard

    check_port(port)
    if host not in LOOPBACK:
        log.warning("dashboard bound to %s: anyone who can reach this machine can read and edit the study", host)
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}/dashboard"
    print(f"optuna-dashboard for {redact_url(config.storage.url)} at {url} (Ctrl-C to stop)", flush=True)
    # The artifact store is opened only if it exists: looking must not create folders.
    store = artifact_store(config.storage.artifacts, create=False)
    try:
        optuna_dashboard.run_server(storage_of(study), host=host, port=port, artifact_store=store)
    except OSError as e:
        raise UserError(f"cannot listen on {host}:{port} ({e.strerror}); choose another --port") from None
    except KeyboardInterrupt:
        print("dashboard stopped", file=sys.stderr)
