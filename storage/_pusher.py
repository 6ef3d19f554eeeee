"""Pushes in a process of their own.

The uploader thread (``_sync.Uploader``) decides what to push and when; the push itself
(freezing the files, hashing them, the object store client's requests) runs in a child
process, and the thread waits for its answer on a pipe, without the interpreter lock. In
the training process the client's Python work (botocore signs and parses every request)
would otherwise take the lock from the training loop between its kernels
(``benchmarks/remote_sync.py``, a demo trial with a checkpoint every 0.3 s on S3: 1.16 x
its time without a remote with the client in the training process, 1.06 x with this).

The child runs at a lower CPU priority (nice 10: a free core uploads, a busy one
trains), ignores SIGINT and SIGTERM (the run decides when uploads stop, and finishes
them), dies with its parent (``PR_SET_PDEATHSIG`` on Linux; elsewhere it stops at the
end of its pipe), and logs nothing: it answers each push with its bytes or its error.

Protocol, one JSON object a line. Parent to child: the sync's settings, then
``{"unit": ...}`` per push. Child to parent: ``{"bytes": n}`` or ``{"error": type,
"message": text}``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import IO, Any

from optuna_search.storage._remote import Remote
from optuna_search.storage._sync import LocalStudy, StudySync


class PushFailed(Exception):
    """A push that failed in the child, named as the child's exception was."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class PushProcess:
    """The parent's side: ``push(unit)`` as ``StudySync.push`` does it, in the child
    (started at once). A child that ended (killed, crashed) is started again on the next
    push."""

    def __init__(self, sync: StudySync) -> None:
        local = sync.local
        self._settings = {
            "url": sync.remote.url,
            "name": local.name,
            "checkpoints": str(local.checkpoints),
            "artifacts": str(local.artifacts),
            "db": None if local.db is None else str(local.db),
            "writer": sync.writer,
            "gc_grace_s": sync.gc_grace_s,
            "parent": os.getpid(),
        }
        self._proc: subprocess.Popen[str] | None = None
        self._closed = False
        self._child()  # started now: its imports and client overlap the run's start, not its training

    def _child(self) -> subprocess.Popen[str]:
        if self._closed:
            raise PushFailed("PushProcessClosed", "the run has stopped uploading")
        if self._proc is not None and self._proc.poll() is None:
            return self._proc
        self._proc = subprocess.Popen(
            [sys.executable, "-c", "from optuna_search.storage._pusher import main; main()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self._send(self._proc, self._settings)  # on stdin, never on the command line (a URL may hold a key)
        return self._proc

    @staticmethod
    def _send(proc: subprocess.Popen[str], message: dict[str, Any]) -> None:
        assert proc.stdin is not None
        proc.stdin.write(json.dumps(message) + "\n")
        proc.stdin.flush()

    def push(self, unit: str) -> int:
        proc = self._child()
        try:
            self._send(proc, {"unit": unit})
            assert proc.stdout is not None
            line = proc.stdout.readline()
        except (OSError, ValueError) as e:  # a pipe that broke, or was closed by close()
            raise PushFailed("PushProcessEnded", f"the upload process ended ({e})") from None
        if not line:
            code = proc.wait()
            raise PushFailed("PushProcessEnded", f"the upload process ended (exit code {code})")
        answer = json.loads(line)
        if "error" in answer:
            raise PushFailed(answer["error"], answer["message"])
        return int(answer["bytes"])

    def close(self, timeout_s: float = 2.0) -> None:
        """The child stops at the end of its pipe; killed if it does not within
        ``timeout_s`` (a push in flight when the run gives up on the remote: the unit's
        previous manifest stays valid). No push starts a child after this."""
        self._closed = True
        proc = self._proc
        if proc is None:
            return
        try:
            if proc.stdin is not None:
                proc.stdin.close()
            proc.wait(timeout=timeout_s)
        except (OSError, ValueError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()


def _in_the_background(parent: int) -> None:
    """Below the training in the CPU's queue (uploads wait for a free core, the training
    does not wait for them), deaf to Ctrl-C and SIGTERM, and dead with its parent."""
    with contextlib.suppress(OSError, AttributeError):
        os.nice(10)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before the line above
        sys.exit(0)


def _serve(stdin: IO[str], stdout: IO[str]) -> None:
    first = stdin.readline()
    if not first:
        return
    s = json.loads(first)
    _in_the_background(s["parent"])
    db = None if s["db"] is None else Path(s["db"])
    local = LocalStudy(s["name"], Path(s["checkpoints"]), Path(s["artifacts"]), db)
    sync = StudySync(Remote(s["url"]), local, writer=s["writer"], gc_grace_s=s["gc_grace_s"])
    for line in stdin:
        unit = json.loads(line)["unit"]
        try:
            answer: dict[str, Any] = {"bytes": sync.push(unit)}
        except Exception as e:
            answer = {"error": type(e).__name__, "message": str(e)}
        stdout.write(json.dumps(answer) + "\n")
        stdout.flush()


def main() -> None:
    """The child's entry point (its parent starts it; not a command of its own)."""
    with contextlib.suppress(BrokenPipeError):
        _serve(sys.stdin, sys.stdout)
