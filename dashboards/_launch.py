"""Serve the real optuna-dashboard (its WSGI app) on a study's storage and artifact store.

Safe beside a running study on the same SQLite file (optuna-dashboard issue 545: a
dashboard holding the database lock crashed the study): the database is in WAL mode, so
the dashboard's reads never block the study's writes, and both sides wait up to 60 s on
a busy database instead of failing. The dashboard gets no heartbeat (it runs no trials).

The server is threaded and logs requests at debug level only. optuna-dashboard's own
`run_server` writes one access-log line per request to stderr from its single serving
thread: when nobody drains that stream (a supervisor, a pipe), the write blocks and every
later request hangs; a request that is slow to answer also held up all the others.
"""

from __future__ import annotations

import logging
import socket
import sys
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from optuna_search.core import Config, UserError
from optuna_search.storage import artifact_store, redact_url, storage_of

if TYPE_CHECKING:
    import optuna

log = logging.getLogger("optuna_search")
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def check_port(port: int) -> None:
    if not 1 <= port <= 65535:
        raise UserError(f"--port {port} is not a TCP port; use 1-65535 (e.g. 8080)")


def check_host(host: str) -> None:
    """The interface to bind must be an address or a name this machine resolves."""
    try:
        socket.getaddrinfo(host, None)
    except (socket.gaierror, UnicodeError):
        raise UserError(
            f"--host {host!r} is not an address or a name this machine can resolve; use 127.0.0.1 "
            "(this machine only, the default) or 0.0.0.0 (every interface)"
        ) from None


def serve_dashboard(study: optuna.Study, config: Config, host: str = "127.0.0.1", port: int = 8080) -> None:
    import optuna_dashboard

    check_port(port)
    check_host(host)
    if host not in LOOPBACK:
        log.warning("dashboard bound to %s: anyone who can reach this machine can read and edit the study", host)
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}/dashboard"
    print(f"optuna-dashboard for {redact_url(config.storage.url)}", flush=True)
    # The artifact store is opened only if it exists: looking must not create folders.
    app = optuna_dashboard.wsgi(
        storage_of(study), artifact_store=artifact_store(config.storage.artifacts, create=False)
    )
    try:
        server = make_server(host, port, app, server_class=_ThreadingServer, handler_class=_QuietHandler)
    except OSError as e:
        raise UserError(f"cannot listen on {host}:{port} ({e.strerror}); choose another --port") from None
    print(f"Listening on {url} (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("dashboard stopped", file=sys.stderr)
    finally:
        server.server_close()


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        log.debug("dashboard: %s", format % args)
