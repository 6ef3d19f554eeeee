"""One writer per SQLite remote, as the store guarantees it, on every backend (a folder,
S3 through moto's server, a Hub bucket and a Hub dataset repo, simulated):

- the processes of one run (`run --workers`: the run and its workers, each with its
  upload process) push and renew at the same time and never take each other's renewals
  for a takeover;
- a holder frozen between its lease renewal and its manifest write (held there by the
  test) wakes after another machine took over, finished the point and collected the old
  contents: what it writes lands in an epoch nobody reads, the remote verifies, and its
  next renewal says it lost the lease;
- a run killed on this machine frees its lease at once (its pid is gone, or is another
  process now); a live one keeps it.
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import threading
import time

import pytest

BACKENDS = ["folder", "s3", "bucket", "repo"]


def _url(kind, tmp_path, request, name):
    if kind == "folder":
        return str(tmp_path / name)
    if kind == "s3":
        request.getfixturevalue("s3")
        return f"s3://studies/{name}-{tmp_path.name}"
    request.getfixturevalue("hub")
    return f"hf://{'buckets' if kind == 'bucket' else 'datasets'}/me/{name}"


def _checkpoint(folder, tag):
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("adapter.bin", "optimizer.pt", "scheduler.pt", "trainer_state.json"):
        (folder / name).write_text(f"{name} {tag}")


def _local(tmp_path, point_root):
    from optuna_search.storage import LocalStudy

    return LocalStudy("s", point_root, tmp_path / "art", None)


def _worker_pushes(url, env, lease, version, root, points, rounds, renews, barrier, results):
    """One process of the run: ``rounds`` checkpoints of each of its points, pushed as they
    come (renewing the lease in its pushes when it is the run's own process)."""
    os.environ.update(env)
    from pathlib import Path

    from optuna_search.storage import LeaseLost, LocalStudy, Remote, StudySync
    from optuna_search.storage.remote._replica import Lease, SameRunBusy

    local = LocalStudy("s", Path(root), Path(root) / "art", None)
    sync = StudySync(Remote(url), local, lease=(Lease(**lease), version), renews=renews)
    sync.remote.writing_epoch = lease["epoch"]
    barrier.wait()
    busy = 0
    try:
        for step in range(rounds):
            for point in points:
                _checkpoint(Path(root) / point / f"checkpoint-{step}", f"{point}-{step}")
                if step:
                    import shutil

                    shutil.rmtree(Path(root) / point / f"checkpoint-{step - 1}")
                for _ in range(20):  # SameRunBusy: the uploader tries again later
                    try:
                        sync.push_many([f"points/s/{point}"])
                        break
                    except SameRunBusy:
                        busy += 1
            if renews:
                sync.renew()
        results.put(("ok", busy))
    except LeaseLost as e:
        results.put(("lost", str(e)))


@pytest.mark.parametrize("kind", BACKENDS)
def test_the_processes_of_one_run_never_take_each_others_lease(kind, tmp_path, request):
    """Seen: `run --workers 2 --remote DIR` in 5 of 6 runs, a worker said its own run 'took
    the lease over' and quit. Here the run's process renews while two workers push, all
    at once, many times; none loses, every checkpoint lands, the remote verifies."""
    from optuna_search.storage import Remote
    from optuna_search.storage.remote._replica import new_holder

    url = _url(kind, tmp_path, request, "one-run")
    env = {k: v for k, v in os.environ.items() if k.startswith(("AWS_", "OPTUNA_SEARCH_TEST_HUB", "PYTHONPATH"))}
    remote = Remote(url)
    mine = new_holder()
    version = remote.take_lease(mine, 60)
    rounds = 3 if kind == "repo" else 6  # a repo's every write is a commit (and slower)
    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(3), ctx.Queue()
    roles = [(["lora_r-2"], True), (["lora_r-4", "lora_r-8"], False), (["lora_r-16"], False)]
    procs = [
        ctx.Process(
            target=_worker_pushes,
            args=(
                url,
                env,
                dict(mine.__dict__),
                version,
                str(tmp_path / f"p{i}"),
                pts,
                rounds,
                renews,
                barrier,
                results,
            ),
        )
        for i, (pts, renews) in enumerate(roles)
    ]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(30)
    assert [o[0] for o in outcomes] == ["ok"] * 3, outcomes
    reader = Remote(url)
    assert reader.verify() == []
    manifests = reader.manifests()
    for point in ("lora_r-2", "lora_r-4", "lora_r-8", "lora_r-16"):
        files = manifests[f"points/s/{point}"].files
        assert {rel.split("/")[0] for rel in files} == {f"checkpoint-{rounds - 1}"}, (point, sorted(files))
    assert reader.lease().holder == mine.holder  # still the run's


@pytest.mark.parametrize("kind", ["folder", "s3", "bucket"])
def test_a_holder_frozen_between_its_renewal_and_its_manifest_overwrites_nothing(kind, tmp_path, request):
    """A pushes a point's checkpoint-5; its lease renewal goes through and A is held right
    there, before the manifest. B takes the silent lease over, finishes the point (its
    final checkpoint) and collects the old contents. A wakes and its manifest lands: the
    remote still verifies and names B's checkpoint, every reader agrees, and A's next push
    says the lease was lost."""
    from optuna_search.storage import LeaseLost, Remote, StudySync
    from optuna_search.storage.remote._replica import new_holder

    url = _url(kind, tmp_path, request, "frozen")
    a_points, b_points = tmp_path / "a", tmp_path / "b"
    a = StudySync(Remote(url), _local(tmp_path, a_points))
    a_lease = new_holder()
    a.lease = (a_lease, a.remote.take_lease(a_lease, 60))
    _checkpoint(a_points / "lora_r-4" / "checkpoint-1", "a1")
    a.push_many(["points/s/lora_r-4"])

    held, release = threading.Event(), threading.Event()
    store = a.remote.store
    real_swap = store.swap

    def swap_then_hold(path, data, expected):
        version = real_swap(path, data, expected)
        if path == "lease.json" and not held.is_set():
            held.set()
            release.wait(60)  # frozen: renewed, manifest not yet written
        return version

    store.swap = swap_then_hold
    import shutil

    shutil.rmtree(a_points / "lora_r-4" / "checkpoint-1")
    _checkpoint(a_points / "lora_r-4" / "checkpoint-5", "a5")
    errors = []
    frozen = threading.Thread(target=lambda: _catch(errors, lambda: a.push_many(["points/s/lora_r-4"])))
    frozen.start()
    assert held.wait(60)

    b = StudySync(Remote(url), _local(tmp_path, b_points))
    b_lease = new_holder()
    b.lease = (b_lease, b.remote.take_lease(b_lease, 0))  # A is silent past a grace period of 0 s
    assert b_lease.epoch == a_lease.epoch + 1
    _checkpoint(b_points / "lora_r-4" / "checkpoint-9", "b9")
    b.push_many(["points/s/lora_r-4"])
    b.collect_garbage()

    release.set()
    frozen.join(60)
    assert not errors, errors  # A's push went through: the manifest write itself is not refused
    reader = Remote(url)
    assert reader.verify() == []
    m = reader.manifest("points/s/lora_r-4")
    assert {rel.split("/")[0] for rel in m.files} == {"checkpoint-9"}
    reader.pull(m, tmp_path / "pulled")
    assert (tmp_path / "pulled" / "checkpoint-9" / "adapter.bin").read_text() == "adapter.bin b9"
    store.swap = real_swap
    with pytest.raises(LeaseLost):
        a.push_many(["points/s/lora_r-4"])
    with pytest.raises(LeaseLost):
        a.collect_garbage()  # a holder that lost the lease deletes nothing
    assert Remote(url).verify() == []


def _catch(errors, fn):
    try:
        fn()
    except Exception as e:
        errors.append(repr(e))


def test_a_study_written_before_epochs_resumes_and_is_fenced_from_then_on(tmp_path):
    """A remote of the earlier layout (manifests/ at the top, a lease without an epoch)
    reads as epoch 0; a released lease is taken without a new epoch, a silent one with
    epoch 1, its manifests copied in, the old ones collected."""
    import json

    from optuna_search.storage import Remote, StudySync
    from optuna_search.storage.remote._replica import new_holder

    url = str(tmp_path / "remote")
    old = StudySync(Remote(url), _local(tmp_path, tmp_path / "old"))
    _checkpoint(tmp_path / "old" / "lora_r-4" / "checkpoint-3", "x")
    old.push_many(["points/s/lora_r-4"])
    (tmp_path / "remote" / "lease.json").write_text(
        json.dumps({"holder": "old:1:x", "host": "old", "pid": 1, "heartbeat": time.time() - 3600})
    )
    assert (tmp_path / "remote" / "manifests" / "points" / "s" / "lora_r-4.json").is_file()
    assert Remote(url).manifest("points/s/lora_r-4") is not None  # epoch 0 is the earlier layout
    new = StudySync(Remote(url), _local(tmp_path, tmp_path / "new"))
    mine = new_holder()
    new.lease = (mine, new.remote.take_lease(mine, 60))
    assert mine.epoch == 1 and mine.base is None
    assert {rel.split("/")[0] for rel in Remote(url).manifest("points/s/lora_r-4").files} == {"checkpoint-3"}
    new.collect_garbage()
    assert not (tmp_path / "remote" / "manifests" / "points" / "s" / "lora_r-4.json").exists()
    assert Remote(url).verify() == [] and Remote(url).manifest("points/s/lora_r-4") is not None


def test_a_run_killed_on_this_machine_frees_its_lease_at_once(tmp_path):
    """Seen: after a SIGKILL (or the OOM killer) the next run on the same machine waited the
    whole grace period ("in use by vm (pid N)", 180 s) with pid N long gone."""
    from optuna_search.core import UserError
    from optuna_search.storage import Remote
    from optuna_search.storage.remote._replica import Lease, new_holder

    url = str(tmp_path / "remote")
    took = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from optuna_search.storage import Remote; from optuna_search.storage.remote._replica import new_holder;"
            "Remote(sys.argv[1]).take_lease(new_holder(), 180)",
            url,
        ],
        capture_output=True,
        text=True,
    )
    assert took.returncode == 0, took.stderr
    remote = Remote(url)
    dead = remote.lease()
    assert dead.age() < 60 and dead.dead_here()
    mine = new_holder()
    remote.take_lease(mine, 180)  # no wait: its holder is gone
    assert remote.taken_over.pid == dead.pid

    live = Remote(url)
    with pytest.raises(UserError, match="in use by"):
        live.take_lease(new_holder(), 180)  # this process holds it, and lives
    reused = Lease("x", mine.host, os.getpid(), time.time(), started=(mine.started or 0) + 1, boot=mine.boot)
    assert reused.dead_here()  # the same pid, started at another time: another process
    elsewhere = Lease("x", "another-host", 1, time.time(), started=1, boot="another-boot")
    assert not elsewhere.dead_here()  # another machine's pids say nothing here


def test_two_workers_with_a_remote_finish_together_and_the_lease_stays_in_their_environment(tmp_path, demo_cache):
    """The command that showed it (`run --workers 2 --remote DIR`, 4 points, a checkpoint
    every 2 steps, a lease renewed every second): both workers train to the end, none says
    its run took the lease over, the remote holds every point's final adapter and verifies;
    the lease reached the workers through their own environment, not the parent's."""
    from conftest import FAST, run_main

    from optuna_search.search.remote._remote import LEASE_ENV
    from optuna_search.storage import Remote

    remote = tmp_path / "remote"
    proc = run_main(
        "run",
        *FAST,
        "--set",
        "study.grid={lora_r=[2, 4, 8, 16]}",
        "--set",
        "train.epochs=1",
        "--set",
        "data.train_samples=96",
        "--set",
        "train.checkpoint_steps=2",
        "--set",
        "storage.heartbeat_interval=1",
        "--set",
        "storage.grace_period=30",
        "--workers",
        "2",
        "--remote",
        str(remote),
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "took the lease over" not in proc.stderr and "stopped writing" not in proc.stderr
    assert "[worker 0]" in proc.stderr and "[worker 1]" in proc.stderr
    assert LEASE_ENV not in os.environ
    reader = Remote(str(remote))
    assert reader.verify() == []
    points = {u: m for u, m in reader.manifests().items() if u.startswith("points/")}
    assert len(points) == 4 and all(any(r.startswith("final-adapter/") for r in m.files) for m in points.values())
