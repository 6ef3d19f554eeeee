"""Pushes in a process of their own.

The uploader thread (``_sync.Uploader``) decides what to push and when; the push itself
(freezing the files, hashing them, the object store client's requests) runs in a child
process, and the thread waits for its answer on a pipe, without the interpreter lock. In
the training process the client's Python work (botocore signs and parses every request)
would otherwise take the lock from the training loop between its kernels
(``benchmarks/remote_sync.py``).

The child runs at a lower CPU priority (nice 10: a free core uploads, a busy one
trains), ignores SIGINT and SIGTERM (the run decides when uploads stop, and finishes
them), dies with its parent (``PR_SET_PDEATHSIG`` on Linux; elsewhere it stops at the
end of its pipe), and logs nothing: it answers each request with its figures or its error.

The channel is two pipes of its own, not the child's stdin/stdout: a library that prints
cannot desynchronise it. Each message is a frame: 4 bytes of length (big-endian), then
that many bytes of JSON (``Request`` and ``Answer``). Every read of an answer has a
timeout: a child that hangs is killed and started again.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import struct
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from optuna_search.core import redact_remote
from optuna_search.storage.remote._replica import Lease, LeaseLost, Remote
from optuna_search.storage.remote._store import Throttled
from optuna_search.storage.remote._sync import LocalStudy, Pushed, StudySync

PUSH_TIMEOUT_S = 3600.0
"""The longest a push may take before its child is taken for hung (a merged 7B export is
~14 GB: about an hour at 30 MB/s)."""


class PushFailed(Exception):
    """A push that failed in the child, named as the child's exception was."""

    def __init__(self, kind: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.retry_after = retry_after


@dataclass(frozen=True)
class Settings:
    url: str
    name: str
    checkpoints: str
    artifacts: str
    db: str | None
    writer: str
    gc_grace_s: float
    parent: int
    lease: dict[str, Any] | None
    lease_version: str | None
    renews: bool = True


@dataclass(frozen=True)
class Request:
    op: str
    """"push" (``units``) or "renew" (the lease alone)."""
    units: tuple[str, ...] = ()


@dataclass(frozen=True)
class Answer:
    uploaded_bytes: int = 0
    commits: int = 0
    requests: int = 0
    lease_version: str | None = None
    error: str | None = None
    message: str = ""
    retry_after: float | None = None
    holder: dict[str, Any] | None = None
    """With error "LeaseLost": who holds the lease now."""


# -- frames -------------------------------------------------------------------------------------
def write_frame(fd: int, message: dict[str, Any]) -> None:
    data = json.dumps(message).encode()
    view = memoryview(struct.pack(">I", len(data)) + data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def read_frame(fd: int, timeout_s: float | None) -> dict[str, Any] | None:
    """One frame (None at the end of the pipe); ``TimeoutError`` past ``timeout_s``."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    header = _read_exactly(fd, 4, deadline)
    if header is None:
        return None
    (size,) = struct.unpack(">I", header)
    body = _read_exactly(fd, size, deadline)
    if body is None:
        return None
    out = json.loads(body)
    if not isinstance(out, dict):
        raise ValueError("a frame that is not a JSON object")
    return out


def _read_exactly(fd: int, n: int, deadline: float | None) -> bytes | None:
    chunks = bytearray()
    while len(chunks) < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise TimeoutError("no answer from the upload process")
        chunk = os.read(fd, n - len(chunks))
        if not chunk:
            return None
        chunks += chunk
    return bytes(chunks)


# -- the parent's side ----------------------------------------------------------------------------
class PushProcess:
    """``push(units)`` as ``StudySync.push_many`` does it, in the child (started at once).
    A child that ended (killed, crashed, hung) is started again on the next request."""

    def __init__(self, sync: StudySync, timeout_s: float = PUSH_TIMEOUT_S) -> None:
        local = sync.local
        lease = sync.lease
        self._settings = Settings(
            url=sync.remote.url,
            name=local.name,
            checkpoints=str(local.checkpoints),
            artifacts=str(local.artifacts),
            db=None if local.db is None else str(local.db),
            writer=sync.writer,
            gc_grace_s=sync.gc_grace_s,
            parent=os.getpid(),
            lease=None if lease is None else dict(lease[0].__dict__),
            lease_version=None if lease is None else lease[1],
            renews=sync.renews,
        )
        self.timeout_s = timeout_s
        self._proc: subprocess.Popen[bytes] | None = None
        self._to: int | None = None
        self._from: int | None = None
        self._closed = False
        self._child()  # started now: its imports and client overlap the run's start, not its training

    def _child(self) -> subprocess.Popen[bytes]:
        if self._closed:
            raise PushFailed("PushProcessClosed", "the run has stopped uploading")
        if self._proc is not None and self._proc.poll() is None:
            return self._proc
        self._close_fds()
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        self._proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                f"from optuna_search.storage.remote._pusher import main; main({to_child_r}, {from_child_w})",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,  # a library that prints goes nowhere, and never into the channel
            pass_fds=(to_child_r, from_child_w),
        )
        os.close(to_child_r)
        os.close(from_child_w)
        self._to, self._from = to_child_w, from_child_r
        # On the channel, never on the command line (a URL may hold a key).
        write_frame(self._to, asdict(self._settings))
        return self._proc

    def _close_fds(self) -> None:
        for fd in (self._to, self._from):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._to = self._from = None

    def _ask(self, request: Request) -> Pushed:
        proc = self._child()
        assert self._to is not None and self._from is not None
        try:
            write_frame(self._to, asdict(request))
            frame = read_frame(self._from, self.timeout_s)
        except TimeoutError:
            proc.kill()
            proc.wait()
            raise PushFailed("PushTimeout", f"the upload process gave no answer in {self.timeout_s:.0f} s") from None
        except (OSError, ValueError) as e:  # a pipe that broke, or was closed by close()
            raise PushFailed("PushProcessEnded", f"the upload process ended ({e})") from None
        if frame is None:
            code = proc.wait()
            raise PushFailed("PushProcessEnded", f"the upload process ended (exit code {code})")
        answer = Answer(**frame)
        if answer.error == "LeaseLost":
            holder = Lease(**answer.holder) if answer.holder else None
            raise LeaseLost(self._shown(), holder)
        if answer.error is not None:
            raise PushFailed(answer.error, answer.message, answer.retry_after)
        return Pushed(answer.uploaded_bytes, answer.commits, answer.requests, answer.lease_version)

    def _shown(self) -> str:
        return redact_remote(self._settings.url)

    def push(self, units: list[str]) -> Pushed:
        return self._ask(Request("push", tuple(units)))

    def renew(self) -> Pushed:
        return self._ask(Request("renew"))

    def close(self, timeout_s: float = 2.0) -> None:
        """The child stops at the end of its pipe; killed if it does not within
        ``timeout_s`` (a push in flight when the run gives up on the remote: the unit's
        previous manifest stays valid). No push starts a child after this."""
        self._closed = True
        proc = self._proc
        if self._to is not None:
            with contextlib.suppress(OSError):
                os.close(self._to)
            self._to = None
        if proc is not None:
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._close_fds()


# -- the child's side -------------------------------------------------------------------------------
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


def _sync_of(s: Settings) -> StudySync:
    db = None if s.db is None else Path(s.db)
    local = LocalStudy(s.name, Path(s.checkpoints), Path(s.artifacts), db)
    lease = None if s.lease is None or s.lease_version is None else (Lease(**s.lease), s.lease_version)
    return StudySync(Remote(s.url), local, writer=s.writer, gc_grace_s=s.gc_grace_s, lease=lease, renews=s.renews)


def _answer(sync: StudySync, request: Request) -> Answer:
    before = sync.remote.store.costs.requests
    try:
        if request.op == "renew":
            sync.renew()
            result = None
        else:
            result = sync.push_many(list(request.units))
    except LeaseLost as e:
        return Answer(error="LeaseLost", message=str(e), holder=None if e.other is None else dict(e.other.__dict__))
    except Throttled as e:
        return Answer(error="Throttled", message=str(e), retry_after=e.retry_after)
    except Exception as e:
        return Answer(error=type(e).__name__, message=str(e))
    used = sync.remote.store.costs.requests - before
    version = None if sync.lease is None else sync.lease[1]
    if result is None:
        return Answer(commits=1 if sync.remote.store.commits_are_scarce else 0, requests=used, lease_version=version)
    return Answer(result.uploaded_bytes, result.commits, used, version)


def main(inbox: int, outbox: int) -> None:
    """The child's entry point (its parent starts it; not a command of its own)."""
    first = read_frame(inbox, None)
    if first is None:
        return
    s = Settings(**first)
    _in_the_background(s.parent)
    sync = _sync_of(s)
    with contextlib.suppress(BrokenPipeError):
        while (frame := read_frame(inbox, None)) is not None:
            request = Request(frame["op"], tuple(frame.get("units", ())))
            write_frame(outbox, asdict(_answer(sync, request)))
