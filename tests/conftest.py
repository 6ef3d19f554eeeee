"""Shared fixtures: paths to ../shared, the demo cache, and one finished demo study."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

# A suite started in the background (`nohup ... &`, `cmd &` in a script) inherits SIGINT
# ignored, and so would every run a test starts: the Ctrl-C tests then wait for a run that
# cannot hear it (seen: the two-worker Ctrl-C test hung). They need what a terminal gives.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    # Under pytest-xdist the workers share the cores: torch's intra-op threads (and those of
    # the CLI processes a test starts, which inherit this) split them instead of each
    # worker oversubscribing every core.
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _WORKERS)))

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
GAME_BUGS = SHARED / "data" / "game-bugs"
MISTRAL_TOKENIZER = SHARED / "tokenizers" / "mistral-7b-instruct-v0.2"
FAST_CONFIG = REPO / "tests" / "fast.toml"
FAST = ["--preset", "demo", "--config", str(FAST_CONFIG)]
"""The tests' study: the demo preset with fewer examples and steps (tests/fast.toml)."""
TPE_SETS = [
    "study.sampler='tpe'",
    "study.grid={}",
    "study.schedule='trials'",
    "study.prune_on='accuracy'",
    "study.search_space={lora_r=[2, 4, 8, 12, 16, 24, 32], learning_rate={low=1e-3, high=1e-2, log=true}}",
    "study.n_trials=12",
    "study.pruner='hyperband'",
    "train.validations_per_epoch=2",
]
"""demo-search as a TPE search over a continuous space (its preset is a grid searched by
successive halving)."""
TPE = ["--preset", "demo-search", *[a for s in TPE_SETS for a in ("--set", s)]]


LONGEST_FIRST = (
    "test_the_kaggle_cells_as_written_over_four_sessions_and_a_kill",
    "test_the_installed_wheel_runs_what_a_user_runs",
    "test_two_workers_share_the_grid_and_ctrl_c_stops_both_resumably",
    "test_sigkill_at_any_moment_loses_nothing_and_resumes",
    "test_a_benchmark_runs_to_its_last_line_at_smoke_size",
    "test_real_model_converted_once_trains_in_nf4_and_answers_in_the_format",
    "test_the_readmes_example_runs_where_the_quickstart_ran",
    "test_a_user_follows_the_page_from_their_own_data_to_a_prediction",
    "test_an_endpoint_that_goes_away_mid_run_and_the_next_run_that_finishes_the_upload",
    "test_one_trial_on_two_ranks_cpu",
    "test_successive_halving_with_cool_down_branches_on_two_ranks_cpu",
    "test_a_run_frozen_past_the_grace_period_stops_writing_once_taken_over",
    "test_warm_start_copies_the_grid_into_a_search_and_refuses_other_examples",
)
"""The suite's longest tests (``--durations``), handed out first: under xdist a long test
started last keeps one worker busy while the other has nothing left to take."""


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: item.originalname not in LONGEST_FIRST)  # stable: otherwise as collected
    # Tests that read the real data or tokenizer in ../shared skip, with the reason, on a
    # checkout that has no ../shared beside it.
    if not (GAME_BUGS.exists() and MISTRAL_TOKENIZER.exists()):
        skip_shared = pytest.mark.skip(
            reason=f"needs the real data and tokenizer in {SHARED} (not beside this checkout)"
        )
        for item in items:
            if _uses_shared(item):
                item.add_marker(skip_shared)
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except Exception:
        has_gpu = False
    if not has_gpu:
        skip = pytest.mark.skip(reason="needs a CUDA GPU")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


SHARED_NAMES = ("GAME_BUGS", "MISTRAL_TOKENIZER", "_data_args", "_game_bugs_config")
SHARED_FIXTURES = {"mistral", "train"}


def _uses_shared(item) -> bool:
    import inspect

    try:
        source = inspect.getsource(item.function)
    except (OSError, TypeError, AttributeError):
        return False
    return any(n in source for n in SHARED_NAMES) or bool(SHARED_FIXTURES & set(getattr(item, "fixturenames", ())))


@pytest.fixture(scope="session")
def demo_cache(tmp_path_factory) -> Path:
    """One demo model/data cache for the whole session, shared by the xdist workers (built
    once, ~10 s; the cache publishes each build with a rename, so two builders never
    clash). The shared studies below name their data by its path in this cache."""
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    path = Path(os.environ.get("OPTUNA_SEARCH_TEST_CACHE") or shared / "demo-cache")
    path.mkdir(exist_ok=True)
    os.environ["OPTUNA_SEARCH_CACHE"] = str(path)
    return path


@pytest.fixture(scope="session")
def demo_model_dir(demo_cache) -> Path:
    from optuna_search.objectives._demo import ensure_demo_model

    return ensure_demo_model()


def run_cli(*args: str, cwd: Path, env_extra: dict | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    """Run `optuna-search` as a user would: a fresh process, stdout/stderr captured."""
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-m", "optuna_search.search", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_main(*args: str, cwd: Path, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    """`optuna-search` in this process (its libraries are imported once for the whole
    suite): what a subprocess shows, stdout, stderr with our log lines, and the exit
    code. For everything that needs no process of its own (signals, kills, workers)."""
    import contextlib
    import io
    import logging

    from optuna_search.search.front._cli import main

    out, err = io.StringIO(), io.StringIO()
    handler = logging.StreamHandler(err)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    logger = logging.getLogger("optuna_search")
    logger.addHandler(handler)
    old, saved = os.getcwd(), {k: os.environ.get(k) for k in env_extra or {}}
    os.chdir(cwd)
    os.environ.update(env_extra or {})
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as e:  # argparse: --version, --help, usage errors
                code = e.code if isinstance(e.code, int) else 2
    finally:
        os.chdir(old)
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
        logger.removeHandler(handler)
    return subprocess.CompletedProcess(["optuna-search", *args], code, out.getvalue(), err.getvalue())


HOOKS = REPO / "tests" / "hooks"


def hold_env(pattern: str, env: dict | None = None) -> dict:
    """The environment of a process that holds at its first log line matching
    ``pattern`` (tests/hooks/sitecustomize.py) until it is signalled."""
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join([str(HOOKS), *filter(None, [env.get("PYTHONPATH")])])
    env["OPTUNA_SEARCH_TEST_HOLD"] = pattern
    return env


def wait_for_holds(proc: subprocess.Popen, n: int = 1, lines: list | None = None) -> list[str]:
    """Read ``proc``'s stderr until ``n`` processes said TEST-HOLD (they stay there until
    signalled: no race with their progress); returns the lines read."""
    seen = [] if lines is None else lines
    held = 0
    for line in proc.stderr:
        seen.append(line)
        held += "TEST-HOLD: " in line
        if held == n:
            return seen
    raise AssertionError(f"exited with {proc.wait()} before {n} hold(s):\n" + "".join(seen[-30:]))


def start_cli_until(*args: str, pattern: str, cwd: Path, env: dict | None = None, **popen) -> subprocess.Popen:
    """Start `optuna-search` and return once it holds at its first log line matching
    ``pattern`` (the rest of stderr is left to read)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "optuna_search.search", *args, "--progress-interval", "0"],
        cwd=cwd,
        env=hold_env(pattern, env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )
    wait_for_holds(proc)
    return proc


def _built_once(tmp_path_factory, name: str, build) -> tuple[Path, dict]:
    """A study folder built once for the whole test session, however many xdist workers
    ask for it: the first builds it under a file lock in the workers' shared temporary
    folder, and each worker gets its own copy (the study's paths are relative to its
    folder). Returns the copy and what ``build`` returned (JSON)."""
    import json

    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    built = shared / f"built-{name}"
    with FileLock(str(built) + ".lock"):
        if not (built / ".built.json").exists():
            shutil.rmtree(built, ignore_errors=True)
            built.mkdir()
            result = build(built)
            (built / ".built.json").write_text(json.dumps(result))
    work = tmp_path_factory.mktemp(name)
    shutil.copytree(built, work, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".built.json"))
    return work, json.loads((built / ".built.json").read_text())


@pytest.fixture(scope="session")
def demo_study(tmp_path_factory, demo_cache):
    """The demo study, run once through the real CLI (the README's main job)."""

    def build(work: Path) -> dict:
        proc = run_cli("run", "--preset", "demo", cwd=work)
        return {"returncode": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr}

    work, r = _built_once(tmp_path_factory, "demo-study", build)
    return work, subprocess.CompletedProcess(
        ["optuna-search", "run", "--preset", "demo"], r["returncode"], r["stdout"], r["stderr"]
    )


@pytest.fixture(scope="session")
def scored_study(tmp_path_factory, demo_cache):
    """The tests' study evaluated by label scoring (probabilities: soft voting, predict)."""

    def build(work: Path) -> dict:
        proc = run_main("run", *FAST, "--set", "eval.method='score'", cwd=work)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return {}

    return _built_once(tmp_path_factory, "scored", build)[0]


def _pg_bin() -> Path | None:
    for root in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (root / "initdb").exists():
            return root
    return None


@pytest.fixture(scope="session")
def postgres(tmp_path_factory):
    """A throwaway PostgreSQL server on 127.0.0.1 (Debian's postgresql package)."""
    bin_dir = _pg_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries not installed (.ci/run installs Debian's postgresql)")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("psycopg is not installed (pip install -e '.[test]')")
    # Not under pytest's tmp dir: that is private to root, and the server runs as postgres.
    data = Path(tempfile.mkdtemp(prefix="optuna-search-pg-"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb refuses root
        shutil.chown(data, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    run = lambda *cmd: subprocess.run([*as_user, *cmd], check=True, capture_output=True, text=True)  # noqa: E731
    run(str(bin_dir / "initdb"), "-D", str(data / "db"), "--auth=trust", "-U", "postgres")
    # One role with a password (to see a wrong one refused); everyone else is trusted.
    hba = data / "db" / "pg_hba.conf"
    hba.write_text("host all pwuser 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
    run(
        str(bin_dir / "pg_ctl"),
        "-D",
        str(data / "db"),
        "-w",
        "-l",
        str(data / "log"),
        "-o",
        f"-p {port} -k {data} -c listen_addresses=127.0.0.1 -c max_connections=100",
        "start",
    )
    for db in ("optuna_test", "empty_db", "crm"):
        run(str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", db)
    psql = [str(bin_dir / "psql"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-q"]
    run(*psql, "crm", "-c", "CREATE TABLE customers (id int)")
    run(*psql, "postgres", "-c", "CREATE ROLE pwuser LOGIN PASSWORD 'right-pw'")
    yield f"postgresql://postgres@127.0.0.1:{port}/optuna_test", port
    run(str(bin_dir / "pg_ctl"), "-D", str(data / "db"), "-m", "immediate", "stop")
    shutil.rmtree(data, ignore_errors=True)


def _atomic_conditional_writes(server_mod):
    """moto's server, with S3's documented atomicity of conditional writes. moto checks
    ``If-Match`` / ``If-None-Match`` and then writes, in separate steps on separate request
    threads, so two PUTs with the same precondition can both succeed; S3 itself answers one
    and refuses the other with 412. Conditional requests are serialised here (the rest
    stays concurrent), so the tests meet S3's contract rather than moto's race."""
    lock = threading.Lock()

    def serialised(app):
        def call(environ, start_response):
            if "HTTP_IF_MATCH" not in environ and "HTTP_IF_NONE_MATCH" not in environ:
                return app(environ, start_response)
            with lock:
                return list(app(environ, start_response))

        return call

    from moto.moto_server import threaded_moto_server as threaded

    class Server(server_mod.ThreadedMotoServer):
        def _server_entry(self):
            app = serialised(threaded.DomainDispatcherApplication(threaded.create_backend_app))
            self._server = threaded.make_server(
                self._ip_address, self._port, app, True, request_handler=threaded.MotoRequestHandler
            )
            self._server_ready_event.set()
            self._server.serve_forever()

    return Server


@pytest.fixture(scope="module")
def s3():
    """A real S3 endpoint (moto's server) on 127.0.0.1, and the environment that reaches it."""
    pytest.importorskip("s3fs")
    server_mod = pytest.importorskip("moto.server")
    server = _atomic_conditional_writes(server_mod)(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import boto3

    boto3.client("s3").create_bucket(Bucket="studies")
    holder = {"server": server}
    yield holder, env, (host, port)
    holder["server"].stop()
    for k, v in old.items():
        os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


@pytest.fixture
def hub(tmp_path, monkeypatch, request):
    """The simulated Hub for this process and every process it starts."""
    from optuna_search.storage.remote import use_hub_client
    from optuna_search.storage.testing import SimulatedHub

    root = tmp_path / "hub"
    use_hub_client(lambda: SimulatedHub(root))
    request.addfinalizer(lambda: use_hub_client(None))
    monkeypatch.setenv("OPTUNA_SEARCH_TEST_HUB", str(root))
    # Not huggingface.co: a test may set storage.remote_commits_per_hour above the 128 that
    # huggingface.co allows (the simulated Hub still enforces its own limit).
    monkeypatch.setenv("HF_ENDPOINT", "http://simulated-hub.invalid")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(HOOKS), *filter(None, [os.environ.get("PYTHONPATH")])]))
    return root
