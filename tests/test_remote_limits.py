"""The remote within the real services' limits: a simulated Hugging Face Hub that enforces
the Hub's documented limits (128 commits per rolling hour per repo, 1,000 requests per 5
minutes, ``parent_commit``), Storage Buckets and dataset repos as remotes through it, a
commit budget that coalesces uploads, one writer by compare-and-swap on every store (two
processes released at the same instant on a stale lease: exactly one wins, every time),
a lease holder that lost the lease writing nothing more, and the upload process's
channel that a printing library cannot desynchronise."""

import itertools
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
from conftest import FAST, hold_env, run_main, wait_for_holds
from optuna.trial import TrialState

SMALL = [
    *FAST,
    "--set",
    "study.grid={lora_r=[4, 8]}",
    "--set",
    "train.epochs=1",
    "--set",
    "data.train_samples=160",
    "--set",
    "train.checkpoint_steps=5",
    "--set",
    "storage.heartbeat_interval=1",
    "--set",
    "storage.grace_period=3",
    "--set",
    "storage.remote_timeout=30",
    "--set",
    "storage.remote_commits_per_hour=3600",
]
CLI = [sys.executable, "-m", "optuna_search.search"]


class Clock:
    def __init__(self, t=1_000_000.0):
        self.t = t

    def __call__(self):
        return self.t


def _http_status(e):
    return e.response.status_code


def test_the_simulated_hub_refuses_commits_past_128_an_hour_with_retry_after(tmp_path):
    from huggingface_hub import CommitOperationAdd
    from huggingface_hub.errors import HfHubHTTPError

    from optuna_search.storage.testing import SimulatedHub

    clock = Clock()
    hub = SimulatedHub(tmp_path / "hub", clock=clock)
    for i in range(128):
        hub.create_commit("u/r", [CommitOperationAdd(f"f{i}", b"x")], commit_message="c")
        clock.t += 10
    with pytest.raises(HfHubHTTPError) as refused:
        hub.create_commit("u/r", [CommitOperationAdd("late", b"x")], commit_message="c")
    assert _http_status(refused.value) == 429 and "128 per hour" in str(refused.value)
    assert int(refused.value.response.headers["Retry-After"]) == 3600 - 1280  # the oldest leaves the window then
    clock.t += 3600 - 1280
    hub.create_commit("u/r", [CommitOperationAdd("late", b"x")], commit_message="c")
    # A commit on a head that moved is refused (412), as the Hub does with parent_commit.
    head = hub.repo_info("u/other").sha
    hub.create_commit("u/other", [CommitOperationAdd("a", b"1")], commit_message="c", parent_commit=head)
    with pytest.raises(HfHubHTTPError) as moved:
        hub.create_commit("u/other", [CommitOperationAdd("b", b"2")], commit_message="c", parent_commit=head)
    assert _http_status(moved.value) == 412


def test_the_simulated_hub_refuses_requests_past_1000_in_5_minutes(tmp_path):
    from huggingface_hub.errors import HfHubHTTPError

    from optuna_search.storage.testing import SimulatedHub

    clock = Clock()
    hub = SimulatedHub(tmp_path / "hub", clock=clock, requests_per_5min=20)
    for _ in range(20):
        hub.list_bucket_tree("u/b")
        clock.t += 1
    with pytest.raises(HfHubHTTPError) as refused:
        hub.list_bucket_tree("u/b")
    assert _http_status(refused.value) == 429 and int(refused.value.response.headers["Retry-After"]) == 280


def _checkpoint(folder, tag):
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("adapter_model.safetensors", "optimizer.pt", "scheduler.pt", "trainer_state.json"):
        (folder / name).write_bytes(f"{name} {tag}".encode())


def test_a_push_to_a_dataset_repo_is_one_commit_with_the_contents_and_manifests(hub, tmp_path):
    from optuna_search.storage import LocalStudy, Remote, StudySync
    from optuna_search.storage.testing import SimulatedHub

    point = tmp_path / "ckpt" / "s"
    _checkpoint(point / "lora_r-4" / "checkpoint-5", "a")
    _checkpoint(point / "lora_r-8" / "checkpoint-5", "b")
    sync = StudySync(Remote("hf://datasets/me/study"), LocalStudy("s", point, tmp_path / "art", None))
    sync.push_many(["points/s/lora_r-4", "points/s/lora_r-8"])
    figures = SimulatedHub(hub).figures("me/study")
    assert len(figures["commit_times"]) == 1  # two units, eight contents, two manifests: one commit
    _checkpoint(point / "lora_r-4" / "checkpoint-10", "c")
    sync.push_many(["points/s/lora_r-4", "points/s/lora_r-8"])  # r=8 unchanged: in no commit
    assert len(SimulatedHub(hub).figures("me/study")["commit_times"]) == 2
    # The old checkpoint's contents leave in one commit conditional on the head their
    # manifests were read at (at a squash, and at the run's end).
    assert sync.remote.collect_garbage(0) == 4
    assert len(SimulatedHub(hub).figures("me/study")["commit_times"]) == 3
    reader = Remote("hf://datasets/me/study")
    assert reader.verify() == []
    names = {e.sha256 for m in reader.manifests().values() for e in m.files.values()}
    assert {p.rsplit("/", 1)[-1] for p in reader.store.listing("objects")} == names
    m = reader.manifest("points/s/lora_r-4")
    assert {rel.split("/")[0] for rel in m.files} == {"checkpoint-10"}
    reader.pull(m, tmp_path / "pulled")
    assert (tmp_path / "pulled" / "checkpoint-10" / "optimizer.pt").read_bytes() == b"optimizer.pt c"


def test_a_bucket_remote_pushes_and_pulls_through_batch_calls(hub, tmp_path):
    from optuna_search.storage import LocalStudy, Remote, StudySync
    from optuna_search.storage.testing import SimulatedHub

    point = tmp_path / "ckpt" / "s"
    _checkpoint(point / "lora_r-4" / "checkpoint-5", "a")
    sync = StudySync(Remote("hf://buckets/me/ckpts/study-1"), LocalStudy("s", point, tmp_path / "art", None))
    before = sync.remote.store.costs.requests
    sync.push_many(["points/s/lora_r-4"])
    # The lease (the epoch it names), list objects, list manifests, contents, manifests.
    assert sync.remote.store.costs.requests - before <= 5
    reader = Remote("hf://buckets/me/ckpts/study-1")
    m = reader.manifest("points/s/lora_r-4")
    reader.pull(m, tmp_path / "pulled")
    assert (tmp_path / "pulled" / "checkpoint-5" / "scheduler.pt").read_bytes() == b"scheduler.pt a"
    assert SimulatedHub(hub).bucket_info("me/ckpts")["total_files"] == 5  # 4 contents + 1 manifest


class FakePusher:
    """An upload process stand-in: records (when, units) of each push, answers with ``answer(calls)``."""

    def __init__(self, answer):
        self.answer, self.calls = answer, []

    def push(self, units):
        self.calls.append((time.monotonic(), sorted(units)))
        return self.answer(self.calls)

    def renew(self):
        from optuna_search.storage.remote._sync import Pushed

        return Pushed(0, 0, 0)

    def close(self):
        pass


def test_a_throttled_hub_is_waited_out_by_its_retry_after_while_marks_coalesce(hub, tmp_path):
    """A 429 becomes Throttled with the server's Retry-After; the uploader keeps the
    units and pushes them once, together, when the wait is over."""
    from optuna_search.storage import Cadence, LocalStudy, Remote, StudySync, Throttled, Uploader
    from optuna_search.storage.remote._sync import Pushed

    gate = threading.Event()

    def throttled_once(calls):
        if len(calls) == 1:
            gate.set()
            raise Throttled("429: commits", retry_after=1.0)
        return Pushed(10, 1, 1)

    pusher = FakePusher(throttled_once)
    calls = pusher.calls
    sync = StudySync(Remote(str(tmp_path / "r")), LocalStudy("s", tmp_path / "c", tmp_path / "a", None))
    up = Uploader(sync, pusher, Cadence(None, 60))
    up.mark("points/s/a")
    assert gate.wait(10)
    up.mark("points/s/b")
    up.mark("points/s/a")
    assert up._idle.wait(20)
    assert len(calls) == 2 and sorted(calls[1][1]) == ["points/s/a", "points/s/b"]
    assert calls[1][0] - calls[0][0] >= 1.0  # not before the server's Retry-After
    up.finish(5, lambda _: None)


def test_a_commit_budget_coalesces_what_waits(tmp_path):
    """At most one commit per 3600/budget seconds: marks that come faster are gathered
    into the next commit (the newest files of each unit), never lost."""
    from optuna_search.storage import Cadence, LocalStudy, Remote, StudySync, Uploader
    from optuna_search.storage.remote._sync import Pushed

    pusher = FakePusher(lambda calls: Pushed(1, 1, 1))
    calls = pusher.calls
    sync = StudySync(Remote(str(tmp_path / "r")), LocalStudy("s", tmp_path / "c", tmp_path / "a", None))
    up = Uploader(sync, pusher, Cadence(1800, 600))  # one commit per 2 s
    for i in range(10):
        up.mark(f"points/s/p{i % 3}")
        time.sleep(0.1)
    assert up._idle.wait(20)
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(calls)]
    assert all(g >= 2.0 - 0.05 for g in gaps), gaps
    assert set().union(*(set(u) for _, u in calls)) == {"points/s/p0", "points/s/p1", "points/s/p2"}
    assert len(calls) <= 2
    up.finish(5, lambda _: None)


def _race(url, env, barrier, results, grace):
    os.environ.update(env)
    from optuna_search.core import UserError
    from optuna_search.storage import Remote
    from optuna_search.storage.remote._replica import new_holder

    remote = Remote(url)
    barrier.wait()
    try:
        remote.take_lease(new_holder(), grace)
        results.put("won")
    except UserError as e:
        results.put("refused: " + str(e))


def _stale_lease(url):
    from optuna_search.storage import Remote
    from optuna_search.storage.remote._replica import Lease

    remote = Remote(url)  # a lease silent for an hour, written as its holder last wrote it
    current = remote.read_lease()
    stale = Lease("dead:1:x", "dead-host", 1, time.time() - 3600)
    remote.store.swap("lease.json", stale.to_bytes(), None if current is None else current[1])


@pytest.mark.parametrize("kind", ["folder", "s3", "repo"])
def test_two_machines_taking_over_a_stale_lease_at_the_same_instant_one_wins(kind, tmp_path, request):
    env: dict = {}
    if kind == "folder":
        url = str(tmp_path / "remote")
    elif kind == "s3":
        _, env, _ = request.getfixturevalue("s3")
        url = f"s3://studies/race-{tmp_path.name}"
    else:
        request.getfixturevalue("hub")
        url = "hf://datasets/me/race"
        env = {"OPTUNA_SEARCH_TEST_HUB": os.environ["OPTUNA_SEARCH_TEST_HUB"]}
    ctx = multiprocessing.get_context("fork")
    for _ in range(6):  # every time, not once
        _stale_lease(url)
        barrier, results = ctx.Barrier(2), ctx.Queue()
        procs = [ctx.Process(target=_race, args=(url, env, barrier, results, 60)) for _ in range(2)]
        for p in procs:
            p.start()
        outcomes = sorted(results.get(timeout=60) for _ in procs)
        for p in procs:
            p.join(30)
        assert outcomes[1] == "won" and outcomes[0].startswith("refused: "), outcomes
        assert "in use by" in outcomes[0] or "taken at the same instant" in outcomes[0]


@pytest.mark.parametrize("kind", ["folder", "s3", "repo"])
def test_a_holder_whose_lease_was_taken_over_writes_nothing_more(kind, tmp_path, request):
    from optuna_search.storage import LeaseLost, LocalStudy, Remote, StudySync
    from optuna_search.storage.remote._replica import new_holder

    if kind == "folder":
        url = str(tmp_path / "remote")
    elif kind == "s3":
        request.getfixturevalue("s3")
        url = f"s3://studies/lost-{tmp_path.name}"
    else:
        request.getfixturevalue("hub")
        url = "hf://datasets/me/lost"
    point = tmp_path / "ckpt" / "s"
    _checkpoint(point / "lora_r-4" / "checkpoint-5", "a")
    a_remote = Remote(url)
    a_lease = new_holder()
    a = StudySync(
        a_remote, LocalStudy("s", point, tmp_path / "art", None), lease=(a_lease, a_remote.take_lease(a_lease, 60))
    )
    a.push_many(["points/s/lora_r-4"])
    # A is frozen past the grace period; B takes the lease over.
    b_remote = Remote(url)
    b_lease = new_holder()
    b_remote.take_lease(b_lease, 0)
    _checkpoint(point / "lora_r-4" / "checkpoint-10", "b")
    with pytest.raises(LeaseLost, match="took the lease over"):
        a.push_many(["points/s/lora_r-4"])
    m = Remote(url).manifest("points/s/lora_r-4")
    assert {rel.split("/")[0] for rel in m.files} == {"checkpoint-5"}  # A's newer checkpoint never landed
    assert Remote(url).lease().holder == b_lease.holder


def test_the_upload_channel_survives_a_library_that_prints_and_a_child_that_hangs(tmp_path):
    """The child's stdout is not the channel: a library printing on import or during a
    push changes nothing. A child that stops answering is taken for hung after the timeout."""
    from optuna_search.storage import LocalStudy, Remote, StudySync
    from optuna_search.storage.remote._pusher import PushFailed, PushProcess, read_frame

    noisy = tmp_path / "noisy"
    noisy.mkdir()
    (noisy / "sitecustomize.py").write_text('print("{\\"uploaded_bytes\\": 999}\\n" * 50, flush=True)\n')
    _checkpoint(tmp_path / "ckpt" / "s" / "lora_r-4" / "checkpoint-5", "a")
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(noisy)
    try:
        sync = StudySync(
            Remote(str(tmp_path / "remote")), LocalStudy("s", tmp_path / "ckpt" / "s", tmp_path / "a", None)
        )
        pusher = PushProcess(sync, timeout_s=30)
        first = pusher.push(["points/s/lora_r-4"])
        checkpoint = tmp_path / "ckpt" / "s" / "lora_r-4" / "checkpoint-5"
        assert first.uploaded_bytes == sum(f.stat().st_size for f in checkpoint.iterdir())
        assert pusher.push(["points/s/lora_r-4"]).uploaded_bytes == 0
        pusher._proc.send_signal(signal.SIGSTOP)  # hung: never answers
        pusher.timeout_s = 1.0
        with pytest.raises(PushFailed, match="no answer") as hung:
            pusher.push(["points/s/lora_r-4"])
        assert hung.value.kind == "PushTimeout"
        pusher.timeout_s = 30
        assert pusher.push(["points/s/lora_r-4"]).uploaded_bytes == 0  # a new child answers
        pusher.close()
    finally:
        os.environ.pop("PYTHONPATH") if old is None else os.environ.__setitem__("PYTHONPATH", old)
    r, w = os.pipe()
    with pytest.raises(TimeoutError):
        read_frame(r, 0.2)
    os.close(r), os.close(w)


@pytest.mark.slow
@pytest.mark.parametrize("url", ["hf://buckets/me/ckpts/demo", "hf://datasets/me/demo-study"])
def test_a_killed_machine_is_finished_by_another_from_a_hub_remote(url, hub, tmp_path, demo_cache):
    """The kill-on-A, finish-on-B of test_remote.py on the simulated Hub: a Storage Bucket
    and a dataset repo (every push one commit, within the Hub's limits)."""
    from optuna_search.storage import Remote
    from optuna_search.storage.testing import SimulatedHub

    a, b = tmp_path / "machine-a", tmp_path / "machine-b"
    a.mkdir(), b.mkdir()
    proc = subprocess.Popen(
        [*CLI, "run", *SMALL, "--remote", url, "--progress-interval", "0"],
        cwd=a,
        env=hold_env(r"lora_r=8\] .*step 1[2-4]/"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_holds(proc)
    t0 = time.monotonic()
    while not ((m := Remote(url).manifest("points/demo/lora_r-8")) and "checkpoint-10/trainer_state.json" in m.files):
        assert time.monotonic() - t0 < 120, "the step-10 checkpoint never reached the remote"
        time.sleep(0.3)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    shutil.rmtree(a)
    time.sleep(3.5)  # its lease goes stale (storage.grace_period = 3 s)
    done = run_main("run", *SMALL, "--remote", url, "--set", "train.output_dir='elsewhere'", cwd=b)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "took over the lease" in done.stderr and "pulled the study" in done.stderr
    study = optuna.load_study(study_name="demo", storage=f"sqlite:///{b / 'optuna-search-demo.db'}")
    complete = [t for t in study.get_trials() if t.state == TrialState.COMPLETE]
    assert sorted(t.params["lora_r"] for t in complete) == [4, 8]
    assert next(t for t in complete if t.params["lora_r"] == 8).user_attrs["resumed_from_step"] == 10
    figures = SimulatedHub(hub).figures("me/demo-study")
    assert figures["throttled"] == 0
    if "datasets" in url:
        assert len(figures["commit_times"]) < 128
    status = run_main("status", "--remote", url, cwd=tmp_path)
    assert status.returncode == 0 and "2/2 grid points complete" in status.stdout, status.stderr


@pytest.mark.slow
def test_a_run_frozen_past_the_grace_period_stops_writing_once_taken_over(tmp_path, demo_cache):
    """A is frozen (SIGSTOP: a laptop lid, a frozen VM) past the grace period; B takes the
    lease over and finishes the study; A wakes: it writes nothing more to the remote,
    stops training at its next step and exits 5 saying why. The remote holds B's study."""
    from optuna_search.storage import Remote

    url = str(tmp_path / "remote")
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    env = {**hold_env(r"lora_r=4\] .*step 7/"), "OPTUNA_SEARCH_TEST_HOLD_SECONDS": "2"}
    proc = subprocess.Popen(
        [*CLI, "run", *SMALL, "--remote", url, "--progress-interval", "0"],
        cwd=a,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_holds(proc)
    os.kill(proc.pid, signal.SIGSTOP)
    time.sleep(3.5)  # past storage.grace_period = 3 s
    done = run_main("run", *SMALL, "--remote", url, cwd=b)
    assert done.returncode == 0 and "took over the lease" in done.stderr, done.stderr[-3000:]
    written = {u: (m.generation, m.writer) for u, m in Remote(url).manifests().items()}
    os.kill(proc.pid, signal.SIGCONT)
    _out, err = proc.communicate(timeout=300)
    assert proc.returncode == 5, err[-3000:]
    assert "took the lease over" in err and "stopped writing the remote" in err and "Traceback" not in err
    assert "lora_r=8" not in err  # it started no further point
    after = {u: (m.generation, m.writer) for u, m in Remote(url).manifests().items()}
    assert after == written  # not one manifest of A's after the takeover
    status = run_main("status", "--remote", url, cwd=tmp_path)
    assert "2/2 grid points complete" in status.stdout, status.stderr


def test_status_says_when_any_machine_last_wrote_the_remote_and_the_commits_of_the_hour(tmp_path, monkeypatch):
    """A machine that only reads a remote says when (and by whom) it was last written,
    not "nothing pushed"; a dataset repo's commits in the last hour against its budget."""
    import optuna_search
    from optuna_search.search.front._status import remote_line
    from optuna_search.search.remote._remote import local_study
    from optuna_search.storage import SyncStatus
    from optuna_search.storage.remote._replica import Manifest

    monkeypatch.chdir(tmp_path)
    config = optuna_search.load_config(preset="demo", sets="storage.remote='hf://datasets/me/study'")
    st = SyncStatus("hf://datasets/me/study", commit_budget=40)
    now = time.time()
    st.commits = [now - 4000, now - 600, now - 300, now - 10]
    written = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(now - 120))
    st.seen({"study": Manifest("study", 3, {}, "kaggle-a:12:ab", written)})
    import hashlib

    tag = hashlib.sha256(b"hf://datasets/me/study").hexdigest()[:8]
    st.save(local_study(config).state_file(f"{tag}.remote-status.json"))
    line = remote_line(config, now)
    assert "last written" in line and "(2 min ago) by kaggle-a" in line
    assert "3 commits from here in the last hour (this study's budget: 40 an hour)" in line
    assert "nothing pushed" not in line and "refuses" not in line
    st.refused_until = now + 3592  # a 429 said: not for another hour
    st.save(local_study(config).state_file(f"{tag}.remote-status.json"))
    assert "the remote refuses writes until" in remote_line(config, now)


def test_a_run_does_not_wait_for_a_remote_that_said_it_refuses_past_the_runs_wait(hub, tmp_path):
    """Seen: with the repo's 128 commits of the hour spent, `run` waited its whole
    storage.remote_timeout (900 s) at its end while the 429's Retry-After (3,592 s) said
    nothing could pass. It says so and stops waiting; what is left stays marked."""
    from optuna_search.storage import Cadence, LocalStudy, Remote, StudySync, Throttled, Uploader

    def spent(calls):
        raise Throttled("429: You have exceeded the rate limit for repository commits (128 per hour)", 3592.0)

    sync = StudySync(Remote(str(tmp_path / "r")), LocalStudy("s", tmp_path / "c", tmp_path / "a", None))
    up = Uploader(sync, FakePusher(spent), Cadence(None, 60))
    lines = []
    missing = up.finish(60, lines.append)  # returns once the first refusal is in: no 60 s wait
    assert missing == [sync.study_unit]
    assert any("refuses writes until" in line and "not waiting" in line for line in lines), lines
    assert sync.status.refused_until is not None and sync.status.refused_until > time.time() + 3000


def test_the_commit_budget_is_shared_by_the_studys_processes(tmp_path):
    from optuna_search.storage import CommitBudget

    path = tmp_path / ".study.commits.json"
    run, worker = CommitBudget(path, 4), CommitBudget(path, 4)  # two processes, one file
    t = 1_000_000.0
    assert run.wait_s(t) == 0
    run.record(now=t)
    assert worker.wait_s(t + 100) == pytest.approx(800)  # one commit every 900 s, whoever made the last
    for k in (1, 2, 3):
        worker.record(now=t + 900 * k)
    assert run.wait_s(t + 2800) == pytest.approx(800)  # four in the hour: the oldest must leave it first
    assert run.wait_s(t + 3600) == 0


def test_a_sibling_process_that_moved_the_repos_head_is_not_a_lost_lease(hub, tmp_path):
    """`run --workers 2` on a dataset repo: a worker's commit moves the head the run's lease
    version is tied to; the other's next push finds its own lease and goes on."""
    from optuna_search.storage import LocalStudy, Remote, StudySync
    from optuna_search.storage.remote._replica import new_holder

    url = "hf://datasets/me/workers"
    point = tmp_path / "ckpt" / "s"
    _checkpoint(point / "lora_r-4" / "checkpoint-5", "a")
    _checkpoint(point / "lora_r-8" / "checkpoint-5", "b")
    first = Remote(url)
    mine = new_holder()
    version = first.take_lease(mine, 60)
    local = LocalStudy("s", point, tmp_path / "art", None)
    w1 = StudySync(Remote(url), local, lease=(mine, version))
    w2 = StudySync(Remote(url), local, lease=(mine, version))
    w1.push_many(["points/s/lora_r-4"])
    w2.push_many(["points/s/lora_r-8"])  # the head moved under it: same holder, pushed anyway
    assert set(Remote(url).manifests()) == {"points/s/lora_r-4", "points/s/lora_r-8"}


def test_whichever_process_commits_next_pushes_what_its_siblings_wait_for(tmp_path):
    """Two workers' checkpoints in the same minute on a dataset repo: one commit carries
    both; the sibling drops what was pushed after its mark, keeps what was marked later."""
    from optuna_search.storage import CommitBudget

    path = tmp_path / ".study.commits.json"
    w1, w2 = CommitBudget(path, 40), CommitBudget(path, 40)
    w2.want({"points/s/lora_r-8": 100.0, "study": 100.0}, now=100.0)
    assert w1.claim(now=110.0) == ["points/s/lora_r-8", "study"]
    assert w1.claim(now=111.0) == []  # taken once
    mine = {"points/s/lora_r-8": 100.0, "study": 120.0}  # the study was marked again after the take
    assert w2.pushed_by_others(mine, now=130.0) == {"points/s/lora_r-8"}


@pytest.mark.parametrize(
    "url, needle",
    [
        ("s3:/x", "names no bucket"),
        ("s3://", "names no bucket"),
        ("ftp://x/y", "the scheme 'ftp://' is not one this tool writes to"),
        ("zip://x", "the scheme 'zip://' is not one"),
        ("sftp://h/x", "the scheme 'sftp://' is not one"),
        ("http://127.0.0.1:1/x", "the scheme 'http://' is not one"),
        ("hf://models/u/r", "is not a Hub bucket or dataset repo"),
        ("hf://user:hf_SECRETTOKEN@datasets/u/r", "holds credentials in the URL"),
        ("hf://buckets/u/x?token=hf_SECRETTOKEN", "has a query or fragment"),
        ("hf://buckets/u/x#hf_SECRETTOKEN", "has a query or fragment"),
        ("hf:///buckets/u/x", "'hf:///buckets/u/x' is not a Hub bucket or dataset repo"),
        ("hf://datasets/u/x@main", "a revision such as '@main' is no part of a remote"),
        ("hf://buckets/u/x/../y", "has '.' or '..' between its slashes"),
        ("hf://buckets/u/x/./p", "has '.' or '..' between its slashes"),
        ("s3://studies/../y", "has '.' or '..' between its slashes"),
        ("hf://buckets/u/my bucket", "has a space in it"),
    ],
)
def test_a_remote_url_nobody_meant_is_one_line_and_creates_nothing(tmp_path, url, needle):
    """Seen: `--remote 's3:/x'` created a local folder `./s3:/x`; ftp:// and zip://
    tracebacks; a token inside an hf:// URL printed back in the error."""
    from conftest import run_main

    proc = run_main("status", "--remote", url, cwd=tmp_path)
    assert proc.returncode == 2 and needle in proc.stderr and "Traceback" not in proc.stderr
    assert "SECRETTOKEN" not in proc.stderr + proc.stdout
    assert list(tmp_path.iterdir()) == []


def test_the_same_relative_remote_from_two_folders_is_two_remotes(tmp_path, monkeypatch):
    """Seen: `--remote ../r` typed in f1/w and in f2/w shared one cache (keyed by the URL as
    typed), so the second folder read the first one's study. A remote is named on this
    machine by what it is, a folder's resolved path, and its cache by that name."""
    from optuna_search.storage import Remote

    for d in ("f1/w", "f2/w", "f1/r", "f2/r"):
        (tmp_path / d).mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "f1" / "w")
    one = Remote("../r").identity
    monkeypatch.chdir(tmp_path / "f2" / "w")
    two = Remote("../r").identity
    assert one != two and one == str((tmp_path / "f1" / "r").resolve())
    monkeypatch.chdir(tmp_path / "f1")
    assert Remote("r").identity == one  # another spelling of the same folder: the same remote


@pytest.mark.parametrize("where", [".", "optuna-search-demo-checkpoints/remote", "optuna-search-demo-artifacts"])
def test_a_remote_inside_the_studys_own_folders_is_refused_before_anything_is_written(tmp_path, where):
    """Seen: a remote inside the checkpoints folder pushed its own folders as points;
    `--remote .` was accepted without a word."""
    from conftest import FAST, run_main

    proc = run_main("run", *FAST, "--remote", where, cwd=tmp_path)
    assert proc.returncode == 2 and "overlaps this study's own files" in proc.stderr, proc.stderr[-1000:]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("where", ["./backup", "drive/study", "../beside"])
def test_a_remote_in_a_subfolder_of_the_working_folder_is_the_users_choice(tmp_path, where, monkeypatch):
    """Seen: `--remote ./backup` (or a drive mounted at ./drive) refused as "overlapping the
    study's own files": overlap is the study's own files and folders, not their parent."""
    import optuna_search
    from optuna_search.search.remote import local_study
    from optuna_search.search.remote._remote import _refuse_overlap
    from optuna_search.storage import Remote

    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    _refuse_overlap(Remote(where), local_study(optuna_search.load_config(preset="demo")))  # no error


def test_a_read_only_cache_or_working_folder_under_a_remote_is_one_line(tmp_path, monkeypatch):
    """Seen: a read-only cache with `status --remote` (and a read-only working folder with
    `run --remote`) ended in tracebacks; without a remote the same was one line. Here the
    pull of a point into a read-only file system (EROFS, which PermissionError misses)."""
    import errno

    from test_remote import fake_checkpoint

    from optuna_search.core import UserError
    from optuna_search.search.remote._remote import _local_errors, pull_study
    from optuna_search.storage import LocalStudy, Remote, StudySync

    fake_checkpoint(tmp_path / "ckpt" / "s" / "lora_r-4" / "checkpoint-5")
    remote = Remote(str(tmp_path / "remote"))
    StudySync(remote, LocalStudy("s", tmp_path / "ckpt" / "s", tmp_path / "art", None)).push("points/s/lora_r-4")
    cache = tmp_path / "ro-cache"
    real_mkdir = Path.mkdir

    def read_only(self, *a, **kw):
        if str(self).startswith(str(cache)):
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real_mkdir(self, *a, **kw)

    monkeypatch.setattr(Path, "mkdir", read_only)
    reader = StudySync(remote, LocalStudy("s", cache / "s", cache / "art", None))
    with pytest.raises(UserError, match="cannot write .*Read-only file system.*writable folder"):
        _local_errors(lambda: pull_study(reader, "s", writing=True), reader.local)  # as reading_location does


def test_a_point_without_a_complete_checkpoint_is_not_pushed_and_an_empty_manifest_is_survived(tmp_path):
    """Seen: Ctrl-C at step 1 pushed a manifest with `"files": {}` for the point; `run` and
    `status` on every other machine then ended in a FileNotFoundError traceback."""
    import json

    from test_remote import fake_checkpoint

    from optuna_search.search.remote._remote import pull_study
    from optuna_search.storage import LocalStudy, Remote, StudySync

    point = tmp_path / "ckpt" / "s" / "lora_r-4"
    (point / "checkpoint-1").mkdir(parents=True)
    (point / "checkpoint-1" / "adapter.bin").write_bytes(b"cut short")  # killed mid-save
    remote = Remote(str(tmp_path / "remote"))
    writer = StudySync(remote, LocalStudy("s", tmp_path / "ckpt" / "s", tmp_path / "art", None))
    writer.push("points/s/lora_r-4")
    assert "points/s/lora_r-4" not in remote.manifests()
    # An empty manifest, as an earlier version wrote it: readers go on without the point.
    fake_checkpoint(tmp_path / "ckpt" / "s" / "lora_r-8" / "checkpoint-5")
    writer.push("points/s/lora_r-8")
    manifest = next((tmp_path / "remote" / "manifests").rglob("lora_r-8*"))
    m = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**m, "files": {}}))
    reader = StudySync(remote, LocalStudy("s", tmp_path / "b" / "s", tmp_path / "b" / "art", None))
    pull_study(reader, "s", writing=True)
    assert not (tmp_path / "b" / "s" / "lora_r-8").exists() or not any((tmp_path / "b" / "s" / "lora_r-8").iterdir())


def test_a_remote_with_points_but_no_study_is_refused_not_overwritten(tmp_path):
    """Seen: with `manifests/study.json` deleted, `run` from a fresh folder pulled nothing,
    trained every point from step 0 and overwrote the remote, exit 0."""
    from conftest import FAST, run_main
    from test_remote import fake_checkpoint

    from optuna_search.storage import LocalStudy, Remote, StudySync

    fake_checkpoint(tmp_path / "a" / "demo" / "lora_r-4" / "checkpoint-5")
    remote = Remote(str(tmp_path / "remote"))
    remote.write_meta("demo", "sqlite")
    StudySync(remote, LocalStudy("demo", tmp_path / "a" / "demo", tmp_path / "a" / "art", None)).push(
        "points/demo/lora_r-4"
    )

    def files():
        return sorted(
            str(p.relative_to(tmp_path))
            for p in (tmp_path / "remote").rglob("*")
            if not p.name.startswith("lease.json")
        )  # the lease taken, then released

    before = files()
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    proc = run_main("run", *FAST, "--remote", str(tmp_path / "remote"), cwd=fresh)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-1500:]
    assert "holds 1 points but no study database" in proc.stderr and "nothing was trained" in proc.stderr
    assert files() == before


def _owned_remote(tmp_path):
    """A machine that ran study 's' (its SQLite database and one point's checkpoint) and
    pushed both to a folder remote."""
    from test_remote import fake_checkpoint

    from optuna_search.storage import STUDY_UNIT, LocalStudy, Remote, StudySync

    home = tmp_path / "a"
    fake_checkpoint(home / "ckpt" / "lora_r-4" / "checkpoint-5", adapter=b"the trained adapter's bytes")
    db = home / "s.db"
    optuna.create_study(study_name="s", storage=f"sqlite:///{db}").enqueue_trial({"x": 1})
    remote = Remote(str(tmp_path / "remote"))
    remote.write_meta("s", "sqlite")
    owner = StudySync(remote, LocalStudy("s", home / "ckpt", home / "art", db))
    owner.push_many(["points/s/lora_r-4", STUDY_UNIT])
    entry = remote.manifests()["points/s/lora_r-4"].files["checkpoint-5/adapter.bin"]
    return owner, tmp_path / "remote" / "objects" / entry.sha256


def _fresh_reader(tmp_path, name):
    from optuna_search.storage import LocalStudy, Remote, StudySync

    home = tmp_path / name
    home.mkdir()
    return StudySync(Remote(str(tmp_path / "remote")), LocalStudy("s", home / "ckpt", home / "art", home / "s.db"))


def test_same_size_damage_is_found_by_the_machine_with_the_study_and_repaired(tmp_path):
    """Seen: 10 bytes overwritten in an object; the machine with the study compared sizes
    only, said "holds the whole study" and never repaired it; a fresh machine then refused
    the remote."""
    from optuna_search.core import UserError
    from optuna_search.search.remote._remote import pull_study

    owner, obj = _owned_remote(tmp_path)
    good = obj.read_bytes()
    obj.write_bytes(b"X" * 10 + good[10:])  # same size, other bytes
    with pytest.raises(UserError, match="does not verify|damaged"):
        pull_study(_fresh_reader(tmp_path, "b"), "s", writing=True)
    assert not (tmp_path / "b" / "ckpt" / "lora_r-4").exists()  # nothing half-pulled is taken for a checkpoint

    pull_study(owner, "s", writing=True, repair=True)  # what `run` does on the machine with the study
    assert obj.read_bytes() == good
    reader = _fresh_reader(tmp_path, "c")
    pull_study(reader, "s", writing=True)
    assert (tmp_path / "c" / "ckpt" / "lora_r-4" / "checkpoint-5" / "adapter.bin").read_bytes() == good


def test_the_remedy_the_damage_message_names_works_on_the_machine_with_the_study(tmp_path):
    """Seen: "run again on the machine that has the study" refused that machine with the
    same error. It now pushes again what is missing, and other machines read the remote."""
    from optuna_search.core import UserError
    from optuna_search.search.remote._remote import pull_study

    owner, obj = _owned_remote(tmp_path)
    good = obj.read_bytes()
    obj.unlink()
    with pytest.raises(UserError, match="run again on the machine that has the study") as refused:
        pull_study(_fresh_reader(tmp_path, "b"), "s", writing=True)
    assert "lora_r-4/checkpoint-5/adapter.bin: missing" in str(refused.value)

    pull_study(owner, "s", writing=True, repair=True)
    assert obj.read_bytes() == good
    pull_study(_fresh_reader(tmp_path, "c"), "s", writing=True)
    assert (tmp_path / "c" / "s.db").is_file()


def test_status_of_a_server_studys_remote_asks_for_its_database(tmp_path):
    """Seen: `status --remote R` on a PostgreSQL study's remote said "storage
    'sqlite:///optuna-search.db' ... does not exist". Its trials are in the server."""
    from conftest import run_main

    from optuna_search.storage import Remote

    Remote(str(tmp_path / "remote")).write_meta("pgstudy", "server")
    (tmp_path / "here").mkdir()
    proc = run_main("status", "--remote", str(tmp_path / "remote"), cwd=tmp_path / "here")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "server database" in proc.stderr and "--storage postgresql://" in proc.stderr
    assert "does not exist" not in proc.stderr and list((tmp_path / "here").iterdir()) == []


def test_no_network_to_the_hub_is_said_before_the_clients_retries(tmp_path):
    """Seen: without network, `run --remote hf://...` said so after 24 s of the client's
    retries. One connection to the endpoint says it first (here a port nobody listens on)."""
    import socket

    from conftest import run_cli

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    env = {"HF_ENDPOINT": f"http://127.0.0.1:{port}", "HF_TOKEN": "hf_test", "OPTUNA_SEARCH_TEST_HUB": ""}
    proc = run_cli("run", *FAST, "--remote", "hf://buckets/u/x", cwd=tmp_path, env_extra=env)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert f"could not connect to http://127.0.0.1:{port}" in proc.stderr and "network" in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_damaged_unfinished_checkpoint_can_be_dropped_and_a_refusal_leaves_nothing_pulled(tmp_path, caplog):
    """Seen: one damaged object in an unfinished point's checkpoint refused the whole remote
    on every machine but the study's own, and the refusing run left the points it had pulled
    in its folder. Now the refusal names `--drop-damaged`, leaves nothing pulled, and
    dropping is said: the point trains again from its start, its manifest emptied under
    the run's lease; the reading commands leave it out (they need no unfinished checkpoint)."""
    from test_remote import fake_checkpoint

    from optuna_search.core import UserError
    from optuna_search.search.remote._remote import pull_study
    from optuna_search.storage import STUDY_UNIT, Remote
    from optuna_search.storage.remote._replica import new_holder

    owner, obj = _owned_remote(tmp_path)
    fake_checkpoint(owner.local.checkpoints / "lora_r-2" / "checkpoint-5", adapter=b"another point, intact")
    owner.push_many(["points/s/lora_r-2", STUDY_UNIT])
    obj.write_bytes(b"X" * 10 + obj.read_bytes()[10:])  # same size, other bytes: found only while pulling
    reader = _fresh_reader(tmp_path, "b")
    with pytest.raises(UserError, match="does not verify") as refused:
        pull_study(reader, "s", writing=True)
    assert "`run --drop-damaged` drops it" in str(refused.value) and "lora_r-4" in str(refused.value)
    assert not (tmp_path / "b" / "ckpt").exists() or not any((tmp_path / "b" / "ckpt").iterdir())

    mine = new_holder()
    reader.lease = (mine, reader.remote.take_lease(mine, 0))
    with caplog.at_level("WARNING", logger="optuna_search"):
        pull_study(reader, "s", writing=True, drop_damaged=True)
    assert "lora_r-4's newest checkpoint is damaged; dropped (--drop-damaged)" in caplog.text
    assert (tmp_path / "b" / "ckpt" / "lora_r-2" / "checkpoint-5" / "adapter.bin").is_file()
    assert not (tmp_path / "b" / "ckpt" / "lora_r-4").exists() and (tmp_path / "b" / "s.db").is_file()
    assert Remote(str(tmp_path / "remote")).manifest("points/s/lora_r-4").files == {}  # no machine resumes from it
    assert Remote(str(tmp_path / "remote")).verify() == []
