"""A study that lives in a remote: a folder, and a real S3 server (moto's, on 127.0.0.1,
through s3fs). Machine A is killed in the middle of a point and its folder deleted;
machine B (another folder, another output_dir, nothing local) finishes with the same
command: every point COMPLETE once, the killed point resumed from A's checkpoint with the
numbers of an uninterrupted run, no finished point trained again. A kill between an
upload's files and its manifest, an endpoint that goes away mid-run, wrong credentials, a
manifest edited by hand, two runs on one SQLite remote; and two machines on one
PostgreSQL study and one S3 remote."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from conftest import FAST, hold_env, run_main, wait_for_holds
from optuna.trial import TrialState

pytestmark = pytest.mark.slow
# Two points of 20 optimizer steps, a checkpoint every 5; a dead run noticed in 3 s.
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
]
CLI = [sys.executable, "-m", "optuna_search.search"]


def _study(work, name="demo", url=None):
    return optuna.load_study(study_name=name, storage=url or f"sqlite:///{work / 'optuna-search-demo.db'}")


@pytest.fixture(params=["folder", "s3"])
def remote(request, tmp_path):
    if request.param == "folder":
        return str(tmp_path / "remote"), {}
    _, env, _ = request.getfixturevalue("s3")
    return f"s3://studies/{tmp_path.name}", env


def _manifest(url, unit):
    from optuna_search.storage import Remote

    return Remote(url).manifest(unit)


def _wait_for(predicate, what, timeout=120):
    t0 = time.monotonic()
    while not predicate():
        assert time.monotonic() - t0 < timeout, f"timed out waiting for {what}"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, demo_cache):
    """The same two points trained without interruption (no remote): what B must reproduce."""
    work = tmp_path_factory.mktemp("reference")
    proc = run_main("run", *SMALL, cwd=work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {t.params["lora_r"]: t.user_attrs["train_loss_per_epoch"] for t in _study(work).get_trials()}


def test_a_killed_machine_is_finished_by_another_from_the_remote(remote, tmp_path, demo_cache, reference):
    url, env = remote
    a, b = tmp_path / "machine-a", tmp_path / "machine-b"
    a.mkdir(), b.mkdir()
    # A: the first point completes, the second is killed at step 12 once its step-10
    # checkpoint is in the remote.
    proc = subprocess.Popen(
        [*CLI, "run", *SMALL, "--remote", url, "--progress-interval", "0"],
        cwd=a,
        env=hold_env(r"lora_r=8\] .*step 1[2-4]/", {**os.environ, **env}),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_holds(proc)
    _wait_for(
        lambda: (
            (m := _manifest(url, "points/demo/lora_r-8")) is not None and "checkpoint-10/trainer_state.json" in m.files
        ),
        "the step-10 checkpoint in the remote",
    )
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    shutil.rmtree(a)  # the machine is gone, and its disk with it
    time.sleep(3.5)  # its lease and its trial's heartbeat go stale (storage.grace_period = 3 s)
    done = run_main("run", *SMALL, "--remote", url, "--set", "train.output_dir='elsewhere'", cwd=b, env_extra=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "took over the lease" in done.stderr and "pulled the study" in done.stderr
    trials = _study(b).get_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert sorted(t.params["lora_r"] for t in complete) == [4, 8]  # each point once
    assert [t.params["lora_r"] for t in trials].count(4) == 1  # the finished point was not trained again
    resumed = next(t for t in complete if t.params["lora_r"] == 8)
    assert resumed.user_attrs["resumed_from_step"] == 10 and "elsewhere" in resumed.user_attrs["adapter_dir"]
    assert resumed.user_attrs["train_loss_per_epoch"] == pytest.approx(reference[8], rel=1e-6)
    # The remote holds the whole study: a third machine reads it without a copy step.
    c = tmp_path / "machine-c"
    c.mkdir()
    shutil.rmtree(b)  # B's session ended too
    status = run_main("status", "--remote", url, cwd=c, env_extra=env)
    assert status.returncode == 0 and "2/2 grid points complete" in status.stdout, status.stderr
    # Its adapter is named where it is on this machine, never at machine B's path; the
    # commands it suggests address the remote, not this machine's cache of it.
    assert str(b) not in status.stdout
    assert "export-model --remote " in status.stdout and "--storage" not in status.stdout, status.stdout
    named = [
        line.split("its adapter: ")[1].split(";")[0] for line in status.stdout.splitlines() if "its adapter: " in line
    ]
    assert all(Path(n, "adapter_config.json").is_file() for n in named), status.stdout


def fake_checkpoint(folder, adapter=b"adapter", step_state="{}"):
    """The files a resume needs, as Trainer writes them (small stand-ins)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter.bin").write_bytes(adapter)
    (folder / "optimizer.pt").write_bytes(b"optimizer " + adapter)
    (folder / "scheduler.pt").write_bytes(b"scheduler")
    (folder / "trainer_state.json").write_text(step_state)


CKPT = ("adapter.bin", "optimizer.pt", "scheduler.pt", "trainer_state.json")


def test_a_kill_between_an_uploads_files_and_its_manifest_leaves_the_remote_valid(tmp_path, monkeypatch):
    from optuna_search.core import UserError
    from optuna_search.storage import LocalStudy, Remote, StudySync
    from optuna_search.storage.remote.backends.folder import FolderStore

    point = tmp_path / "ckpt" / "s" / "lora_r-4"
    fake_checkpoint(point / "checkpoint-5", b"five")
    url = str(tmp_path / "remote")
    sync = StudySync(Remote(url), LocalStudy("s", tmp_path / "ckpt" / "s", tmp_path / "art", None))
    sync.push("points/s/lora_r-4")
    fake_checkpoint(point / "checkpoint-10", b"ten")
    real_write = FolderStore.write

    def killed_before_the_manifest(self, path, data):
        if path.startswith("manifests/"):
            raise SystemExit("killed")  # the process dies after the files, before the manifest
        return real_write(self, path, data)

    monkeypatch.setattr(FolderStore, "write", killed_before_the_manifest)
    with pytest.raises(SystemExit):
        sync.push("points/s/lora_r-4")
    monkeypatch.setattr(FolderStore, "write", real_write)
    remote = Remote(url)
    assert remote.verify() == []
    m = remote.manifest("points/s/lora_r-4")
    assert m.generation == 1 and set(m.files) == {f"checkpoint-5/{f}" for f in CKPT}
    pulled = tmp_path / "pulled"
    remote.pull(m, pulled)
    assert (pulled / "checkpoint-5" / "adapter.bin").read_bytes() == b"five"
    # The next push replaces it; the contents no manifest names are collected.
    sync.push_all(["points/s/lora_r-4"])
    assert set(remote.manifest("points/s/lora_r-4").files) == {f"checkpoint-10/{f}" for f in CKPT}
    assert len(list((tmp_path / "remote" / "objects").iterdir())) == 4  # checkpoint-10's: the old one pruned
    # A manifest edited by hand is refused with the reason, before anything is pulled.
    path = tmp_path / "remote" / "manifests" / "points" / "s" / "lora_r-4.json"
    edited = json.loads(path.read_text())
    edited["files"]["../../etc/passwd"] = {"sha256": "0" * 64, "bytes": 1}
    path.write_text(json.dumps(edited))
    with pytest.raises(UserError, match="manifest of points/s/lora_r-4 is not one this tool writes"):
        Remote(url).manifests()


def test_the_database_snapshot_never_holds_a_trial_without_its_point(tmp_path):
    """The uploader snapshots the database while the study loop creates trials: a trial
    caught between its creation and its params would reach a fresh machine without a point."""
    import threading

    from optuna_search.storage import LocalStudy, Remote, StudySync
    from optuna_search.storage.study._claim import file_lock, lock_path

    db = tmp_path / "study.db"
    study = optuna.create_study(study_name="s", storage=f"sqlite:///{db}")
    sync = StudySync(Remote(str(tmp_path / "remote")), LocalStudy("s", tmp_path / "ckpt", tmp_path / "art", db))
    snapshot: dict = {}
    with file_lock(lock_path(db)):  # the study loop, creating a trial
        trial = study.ask()  # the trial exists, its point not yet
        uploader = threading.Thread(target=lambda: snapshot.update(sync.study_files(tmp_path / "staging")))
        uploader.start()
        uploader.join(timeout=1.0)
        trial.suggest_categorical("lora_r", [4, 8])
    uploader.join()
    copy = optuna.load_study(study_name="s", storage=f"sqlite:///{snapshot['study.db']}")
    assert [t.params for t in copy.get_trials()] == [trial.params]


def _alive(pid):
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"  # a zombie has ended; only its exit code waits for a reaper


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_pushes_run_in_a_child_that_outlives_ctrl_c_and_dies_with_its_run(tmp_path):
    """The uploads' process: a Ctrl-C (the whole terminal's process group) leaves it
    pushing for the run's final upload; a killed run takes it along (no orphan writing
    into a remote that another machine has taken over); its errors come back named."""
    fake_checkpoint(tmp_path / "ckpt" / "lora_r-4" / "checkpoint-5", b"x")
    script = f"""
import os, signal, sys, time
from pathlib import Path
from optuna_search.storage import LocalStudy, Remote, StudySync
from optuna_search.storage.remote._pusher import PushProcess
sync = StudySync(Remote({str(tmp_path / "remote")!r}), LocalStudy("s", Path({str(tmp_path / "ckpt")!r}), Path("art"), None))
pusher = PushProcess(sync)
import shutil
unit = ["points/s/lora_r-4"]
print(pusher.push(unit).uploaded_bytes, pusher._proc.pid, flush=True)
os.kill(pusher._proc.pid, signal.SIGINT)
os.kill(pusher._proc.pid, signal.SIGTERM)
print(pusher.push(unit).uploaded_bytes, pusher._proc.pid, flush=True)
pusher._proc.kill(); pusher._proc.wait()
print(pusher.push(unit).uploaded_bytes, pusher._proc.pid, flush=True)  # a new child
shutil.rmtree(sync.remote.root)
os.chmod({str(tmp_path)!r}, 0o500)
try:
    print("pushed", pusher.push(unit).uploaded_bytes, flush=True)
except Exception as e:
    print("failed", e.kind, flush=True)
finally:
    os.chmod({str(tmp_path)!r}, 0o700)
time.sleep(600)
"""
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    first, second, third = (proc.stdout.readline().split() for _ in range(3))
    assert int(first[0]) > 0 and second[0] == "0" and second[1] == first[1]  # pushed; then nothing new; the same child
    assert third[1] != first[1] and third[0] == "0"  # a killed child is replaced (and finds the unit pushed)
    failed = proc.stdout.readline().split()
    if os.geteuid() != 0:  # root writes anywhere
        assert failed[:2] == ["failed", "PermissionError"]
    child = int(third[1])
    assert _alive(child)
    proc.kill()
    proc.wait()
    _wait_for(lambda: not _alive(child), "the upload process to end with its run", timeout=30)


def test_an_edited_remote_is_refused_before_anything_is_trained(tmp_path, demo_cache):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    url = str(tmp_path / "remote")
    one = [*SMALL, "--set", "study.grid={lora_r=[4]}"]
    assert run_main("run", *one, "--remote", url, cwd=a).returncode == 0
    m = json.loads((tmp_path / "remote" / "manifests" / "study.json").read_text())
    m["files"]["study.db"]["sha256"] = "f" * 64  # points at contents that are not there
    (tmp_path / "remote" / "manifests" / "study.json").write_text(json.dumps(m))
    proc = run_main("run", *one, "--remote", url, cwd=b)
    assert proc.returncode == 2 and "does not verify" in proc.stderr and "study/study.db: missing" in proc.stderr
    assert "Traceback" not in proc.stderr and not (b / "optuna-search-demo.db").exists()


def test_two_runs_on_one_sqlite_remote(tmp_path, demo_cache):
    url = str(tmp_path / "remote")
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    proc = subprocess.Popen(
        [*CLI, "run", *SMALL, "--remote", url, "--progress-interval", "0"],
        cwd=a,
        env=hold_env(r"step 3/"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_holds(proc)
    second = run_main("run", *SMALL, "--remote", url, cwd=b)
    assert second.returncode == 2 and "is in use by" in second.stderr and "last heartbeat" in second.stderr
    assert not (b / "optuna-search-demo.db").exists()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def test_an_endpoint_that_goes_away_mid_run_and_the_next_run_that_finishes_the_upload(s3, tmp_path, demo_cache):
    """Training goes on while uploads fail (retried, said once); at the end the run waits
    storage.remote_timeout, names what the remote lacks and exits 5; the same command with
    the endpoint back uploads it without training anything again."""
    holder, env, (host, port) = s3
    url = f"s3://studies/{tmp_path.name}"
    work = tmp_path / "w"
    work.mkdir()
    one = [*SMALL, "--set", "study.grid={lora_r=[4]}", "--set", "storage.remote_timeout=10"]
    proc = subprocess.Popen(
        [*CLI, "run", *one, "--remote", url, "--progress-interval", "0"],
        cwd=work,
        env={**hold_env(r"step 3/", {**os.environ, **env}), "OPTUNA_SEARCH_TEST_HOLD_SECONDS": "5"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines = wait_for_holds(proc)
    holder["server"].stop()  # during the 5 s hold: every upload after it fails
    out, err = proc.communicate(timeout=300)
    err = "".join(lines) + err
    assert proc.returncode == 5, err[-3000:]
    assert "upload of" in err and "failed" in err and "1/1 grid points complete" in out
    assert "lacks" in err and "run the same command again" in err
    from moto.server import ThreadedMotoServer

    holder["server"] = ThreadedMotoServer(ip_address=host, port=port, verbose=False)  # the same endpoint, back
    holder["server"].start()
    again = run_main("run", *one, "--remote", url, cwd=work, env_extra=env)
    assert again.returncode == 0 and "nothing to run" in again.stdout, again.stderr[-3000:]
    assert "holds the whole study" in again.stderr
    from optuna_search.storage import Remote

    assert Remote(url).verify() == [] and Remote(url).manifest("points/demo/lora_r-4") is not None


def test_wrong_credentials_are_one_line_before_any_model(s3, tmp_path, monkeypatch):
    import moto.settings

    monkeypatch.setattr(moto.settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)  # from now on, keys are checked
    _, env, _ = s3
    proc = run_main(
        "run",
        *SMALL,
        "--remote",
        "s3://studies/x",
        cwd=tmp_path,
        env_extra={**env, "AWS_ACCESS_KEY_ID": "AKIAWRONG", "AWS_SECRET_ACCESS_KEY": "wrong"},
    )
    assert proc.returncode == 2 and "cannot be written" in proc.stderr and "AWS_ACCESS_KEY_ID" in proc.stderr
    assert "Traceback" not in proc.stderr and "loaded base model" not in proc.stderr and "wrong" not in proc.stderr
    assert not (tmp_path / "optuna-search-demo.db").exists()


def test_two_machines_on_one_postgresql_study_and_one_s3_remote(postgres, s3, tmp_path, demo_cache):
    """Successive halving over two configurations, rungs 1/2 and 1: machine A pauses both at
    the first rung and is killed as the second pauses, before the rung is decided; B
    (nothing local) records that pause from A's checkpoint, decides the rung, and trains
    the promoted configuration on from A's checkpoint to the end."""
    url, _ = postgres
    _, env, _ = s3
    remote = f"s3://studies/{tmp_path.name}"
    halving = [
        *SMALL,
        "--storage",
        url,
        "--study-name",
        f"pg-{tmp_path.name}"[:60],
        "--set",
        "study.schedule='successive_halving'",
        "--set",
        "study.rungs=[0.5, 1.0]",
        "--set",
        "study.eta=2",
        "--set",
        "study.prune_on='accuracy'",
    ]
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    proc = subprocess.Popen(
        [*CLI, "run", *halving, "--remote", remote, "--progress-interval", "0"],
        cwd=a,
        env=hold_env(r"lora_r=8\].* paused at step 10/20", {**os.environ, **env}),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_holds(proc)
    _wait_for(
        lambda: (
            (m := _manifest(remote, "points/pg-" + tmp_path.name[:57] + "/lora_r-8")) is not None
            and "checkpoint-10/trainer_state.json" in m.files
        ),
        "A's rung checkpoint in the remote",
    )
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    shutil.rmtree(a)
    done = run_main("run", *halving, "--remote", remote, "--set", "train.output_dir='b-ckpt'", cwd=b, env_extra=env)
    assert done.returncode == 0, done.stderr[-3000:]
    study = _study(b, f"pg-{tmp_path.name}"[:60], url.replace("postgresql://", "postgresql+psycopg://"))
    states = sorted(t.state.name for t in study.get_trials())
    assert states.count("COMPLETE") == 1 and states.count("PRUNED") == 1
    assert "pulled" in done.stderr and "rung 1 (50% of training) decided" in done.stderr
    winner = next(t for t in study.get_trials() if t.state == TrialState.COMPLETE)
    assert winner.user_attrs["resumed_from_step"] == 10  # from A's checkpoint, through the remote


def test_a_wrong_postgresql_password_writes_nothing_to_the_remote(postgres, tmp_path, demo_cache):
    """Seen: with a wrong PostgreSQL password, `run` wrote remote.json into the remote
    before it refused."""
    _, port = postgres
    remote = tmp_path / "remote"
    url = f"postgresql+psycopg://pwuser:wrong-pw@127.0.0.1:{port}/optuna_test"
    proc = run_main("run", *SMALL, "--storage", url, "--remote", str(remote), cwd=tmp_path)
    assert proc.returncode == 2 and "cannot open storage" in proc.stderr and "Traceback" not in proc.stderr
    assert "wrong-pw" not in proc.stderr  # the password is never shown
    assert not remote.exists() or not any(remote.iterdir())
