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

from optuna_search.search._errors import UserError

log = logging.getLogger("optuna_search")


def serve_dashboard(config: Any, host: str = "127.0.0.1", port: int = 8080) -> None:
    import optuna_dashboard

    from optuna_search.storage._storages import artifact_store, make_storage, redact_url

    storage = make_storage(config.storage.url, read_only=True)
    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("dashboard bound to %s: anyone who can reach this machine can read and edit the study", host)
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}/dashboard"
    print(f"optuna-dashboard for {redact_url(config.storage.url)} at {url} (Ctrl-C to stop)", flush=True)
    try:
        optuna_dashboard.run_server(storage, host=host, port=port, artifact_store=artifact_store(config.storage.artifacts))
    except OSError as e:
        raise UserError(f"cannot listen on {host}:{port} ({e.strerror}); choose another --port") from None
    except KeyboardInterrupt:
        print("dashboard stopped", file=sys.stderr)
