"""A simulated Hugging Face Hub: the ``HfApi`` calls a remote makes, with the Hub's
documented limits, for the tests and for planning a budget (``benchmarks/hub_budget.py``)
where the Hub cannot be reached.

What it enforces, on its own clock (``clock``: ``time.time`` or a simulated one):
- a repo's commits: at most ``commits_per_hour`` (128) in any rolling hour; past that a
  429 whose ``Retry-After`` says when the oldest commit leaves the window;
- API requests: at most ``requests_per_5min`` (1,000) in any 5 minutes (a free
  account's), 429 likewise;
- ``create_commit(parent_commit=...)``: 412 when the head moved since;
- git history: every blob a commit adds stays in ``history_bytes`` until
  ``super_squash_history``; a bucket keeps no history.

Its state lives in a folder (``root``) under a lock, so that several processes (machine A
and machine B of a test) see one Hub. It answers as ``huggingface_hub`` does: the same
method names and arguments, ``HfHubHTTPError`` with a real HTTP response for errors.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

COMMITS_PER_HOUR = 128
REQUESTS_PER_5MIN = 1000


@dataclass
class _File:
    path: str
    size: int
    blob_id: str
    xet_hash: str = ""
    mtime: float | None = None
    uploaded_at: float | None = None
    type: str = "file"


@dataclass
class _Info:
    sha: str
    id: str


@dataclass
class _CommitInfo:
    oid: str
    commit_url: str


class SimulatedHub:
    """An ``HfApi`` stand-in (see the module docstring)."""

    def __init__(
        self,
        root: str | Path,
        *,
        clock: Callable[[], float] = time.time,
        commits_per_hour: int = COMMITS_PER_HOUR,
        requests_per_5min: int = REQUESTS_PER_5MIN,
        **_: Any,
    ) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "blobs").mkdir(exist_ok=True)
        self.clock = clock
        self.commits_per_hour, self.requests_per_5min = commits_per_hour, requests_per_5min

    # -- state -----------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _state(self) -> Iterator[dict[str, Any]]:
        with open(self.root / "lock", "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            path = self.root / "state.json"
            state = json.loads(path.read_text()) if path.exists() else {}
            state.setdefault("repos", {})
            state.setdefault("buckets", {})
            state.setdefault("requests", [])
            state.setdefault("throttled", 0)
            yield state
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(state))
            tmp.replace(path)
            fcntl.flock(lock, fcntl.LOCK_UN)

    def _request(self, state: dict[str, Any]) -> None:
        now = self.clock()
        recent = [t for t in state["requests"] if t > now - 300]
        if len(recent) >= self.requests_per_5min:
            state["requests"] = recent
            state["throttled"] += 1
            self._refuse(
                429, recent[0] + 300 - now, "You have exceeded the rate limit for API requests (1000 per 5 minutes)"
            )
        recent.append(now)
        state["requests"] = recent
        state["max_5min"] = max(state.get("max_5min", 0), len(recent))
        state["total_requests"] = state.get("total_requests", 0) + 1

    def _refuse(self, status: int, retry_after: float, message: str) -> None:
        import httpx2
        from huggingface_hub.errors import HfHubHTTPError

        headers = {"Retry-After": str(max(1, int(retry_after + 0.999)))} if status == 429 else {}
        response = httpx2.Response(
            status, headers=headers, request=httpx2.Request("POST", "https://huggingface.co/api")
        )
        raise HfHubHTTPError(f"{status} Client Error: {message}", response=response)

    def _missing(self, what: str) -> None:
        import httpx2
        from huggingface_hub.errors import RemoteEntryNotFoundError

        response = httpx2.Response(404, request=httpx2.Request("GET", "https://huggingface.co/api"))
        raise RemoteEntryNotFoundError(f"404 Client Error: {what} not found", response=response)

    def _blob(self, source: Any) -> tuple[str, int]:
        if isinstance(source, (bytes, bytearray)):
            data = bytes(source)
        else:
            data = Path(source).read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        target = self.root / "blobs" / digest
        if not target.exists():
            tmp = target.with_name(f"{digest}.{uuid.uuid4().hex}")
            tmp.write_bytes(data)
            tmp.replace(target)
        return digest, len(data)

    def _repo(self, state: dict[str, Any], repo_id: str) -> dict[str, Any]:
        repos = state["repos"]
        if repo_id not in repos:
            repos[repo_id] = {"files": {}, "head": uuid.uuid4().hex, "commits": [], "history": {}}
        return repos[repo_id]

    # -- repos ---------------------------------------------------------------------------------------
    def repo_info(self, repo_id: str, *, repo_type: str | None = None, **_: Any) -> _Info:
        with self._state() as s:
            self._request(s)
            return _Info(self._repo(s, repo_id)["head"], repo_id)

    def get_paths_info(
        self, repo_id: str, paths: list[str] | str, *, revision: str | None = None, **_: Any
    ) -> list[_File]:
        wanted = [paths] if isinstance(paths, str) else list(paths)
        with self._state() as s:
            self._request(s)
            files = self._repo(s, repo_id)["files"]
            return [_File(p, files[p]["size"], files[p]["sha"]) for p in wanted if p in files]

    def hf_hub_download(
        self, repo_id: str, filename: str, *, revision: str | None = None, local_dir: str | Path | None = None, **_: Any
    ) -> str:
        with self._state() as s:
            self._request(s)
            # Only the head is kept: a read at an older revision sees the head's files.
            entry = self._repo(s, repo_id)["files"].get(filename)
            if entry is None:
                self._missing(filename)
        target = Path(local_dir or self.root / "downloads") / filename
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.root / "blobs" / entry["sha"], target)
        return str(target)

    def list_repo_tree(
        self, repo_id: str, path_in_repo: str | None = None, *, recursive: bool = False, **_: Any
    ) -> list[_File]:
        with self._state() as s:
            self._request(s)
            files = self._repo(s, repo_id)["files"]
        prefix = (path_in_repo.rstrip("/") + "/") if path_in_repo else ""
        out = [_File(p, e["size"], e["sha"]) for p, e in sorted(files.items()) if p.startswith(prefix)]
        if path_in_repo and not out:
            self._missing(path_in_repo)
        return out

    def create_commit(
        self,
        repo_id: str,
        operations: Any,
        *,
        commit_message: str = "",
        parent_commit: str | None = None,
        **_: Any,
    ) -> _CommitInfo:
        ops = list(operations)
        prepared = []
        for op in ops:
            if type(op).__name__ == "CommitOperationAdd":
                prepared.append(("add", op.path_in_repo, *self._blob(op.path_or_fileobj)))
            else:
                prepared.append(("delete", op.path_in_repo, "", 0))
        with self._state() as s:
            self._request(s)
            repo = self._repo(s, repo_id)
            now = self.clock()
            window = [t for t in repo["commits"] if t > now - 3600]
            if len(window) >= self.commits_per_hour:
                s["throttled"] += 1
                self._refuse(
                    429,
                    window[0] + 3600 - now,
                    "You have exceeded the rate limit for repository commits (128 per hour)",
                )
            if parent_commit is not None and parent_commit != repo["head"]:
                self._refuse(412, 0, "A commit has happened since. Please refresh and try again.")
            for kind, path, digest, size in prepared:
                if kind == "add":
                    repo["files"][path] = {"sha": digest, "size": size}
                    repo["history"][digest] = size
                elif path in repo["files"]:
                    del repo["files"][path]
                else:
                    self._missing(path)
            repo["commits"] = [*window, now]
            repo.setdefault("log", []).append([now, commit_message[:80]])
            repo["head"] = uuid.uuid4().hex
            return _CommitInfo(repo["head"], f"https://huggingface.co/datasets/{repo_id}/commit/{repo['head']}")

    def super_squash_history(self, repo_id: str, *, repo_type: str | None = None, **_: Any) -> None:
        with self._state() as s:
            self._request(s)
            repo = self._repo(s, repo_id)
            repo["history"] = {e["sha"]: e["size"] for e in repo["files"].values()}
            repo["head"] = uuid.uuid4().hex
            repo["squashes"] = repo.get("squashes", 0) + 1

    # -- buckets ---------------------------------------------------------------------------------------
    def _bucket(self, state: dict[str, Any], bucket_id: str) -> dict[str, Any]:
        return state["buckets"].setdefault(bucket_id, {"files": {}})

    def batch_bucket_files(
        self, bucket_id: str, *, add: list[tuple[Any, str]] | None = None, delete: list[str] | None = None, **_: Any
    ) -> None:
        blobs = [(dest, *self._blob(src)) for src, dest in (add or [])]
        with self._state() as s:
            self._request(s)
            files = self._bucket(s, bucket_id)["files"]
            now = self.clock()
            for dest, digest, size in blobs:
                files[dest] = {"sha": digest, "size": size, "mtime": now}
            for path in delete or []:
                files.pop(path, None)

    def list_bucket_tree(
        self, bucket_id: str, prefix: str | None = None, *, recursive: bool | None = None, **_: Any
    ) -> list[_File]:
        with self._state() as s:
            self._request(s)
            files = self._bucket(s, bucket_id)["files"]
        start = (prefix.rstrip("/") + "/") if prefix else ""
        return [
            _File(p, e["size"], e["sha"], xet_hash=e["sha"], mtime=e["mtime"])
            for p, e in sorted(files.items())
            if p.startswith(start)
        ]

    def download_bucket_files(
        self, bucket_id: str, files: list[tuple[Any, str | Path]], *, raise_on_missing_files: bool = False, **_: Any
    ) -> None:
        with self._state() as s:
            self._request(s)
            have = dict(self._bucket(s, bucket_id)["files"])
        for src, dest in files:
            path = src if isinstance(src, str) else src.path
            if path not in have:
                if raise_on_missing_files:
                    self._missing(path)
                continue
            Path(dest).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self.root / "blobs" / have[path]["sha"], dest)

    def bucket_info(self, bucket_id: str, **_: Any) -> dict[str, Any]:
        with self._state() as s:
            self._request(s)
            files = self._bucket(s, bucket_id)["files"]
            return {"id": bucket_id, "size": sum(e["size"] for e in files.values()), "total_files": len(files)}

    # -- what a benchmark reads -------------------------------------------------------------------------
    def figures(self, repo_id: str | None = None) -> dict[str, Any]:
        with self._state() as s:
            out: dict[str, Any] = {
                "throttled": s["throttled"],
                "max_requests_5min": s.get("max_5min", 0),
                "requests": s.get("total_requests", 0),
            }
            if repo_id is not None and repo_id in s["repos"]:
                repo = s["repos"][repo_id]
                out["history_bytes"] = sum(repo["history"].values())
                out["live_bytes"] = sum(e["size"] for e in repo["files"].values())
                out["commit_times"] = [t for t, _ in repo.get("log", [])]
                out["squashes"] = repo.get("squashes", 0)
            return out
