"""Storages opened for what a command does: reading commands never write, other
applications' databases are refused, damage is named, schema creation never races."""

import os
import sqlite3
import subprocess
import sys

import pytest
from conftest import REPO, run_main

from optuna_search.core import UserError
from optuna_search.storage.study._storages import check_storage_url, open_storage


def _snapshot(path):
    return path.read_bytes() if path.exists() else None


@pytest.mark.parametrize(
    "url,needle",
    [
        ("sqlite://x.db", "sqlite:///x.db"),
        ("mysql://u@localhost/db", "pip install pymysql"),
    ],
)
def test_misleading_urls_get_the_right_advice(tmp_path, url, needle):
    with pytest.raises(UserError, match=needle.replace(".", r"\.")):
        check_storage_url(url)


def test_a_directory_is_not_a_database(tmp_path):
    with pytest.raises(UserError, match="is a directory"):
        check_storage_url(f"sqlite:///{tmp_path}")


def test_reading_commands_never_write_to_other_files(tmp_path):
    other = tmp_path / "app.db"
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE invoices (id INTEGER)")
    con.commit()
    con.close()
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    for db in (other, empty):
        before = _snapshot(db)
        for cmd in (["status"], ["report", "-o", str(tmp_path / "r")]):
            proc = run_main(*cmd, "--storage", f"sqlite:///{db}", cwd=tmp_path)
            assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert _snapshot(db) == before, f"{db.name} was modified"
        assert not (tmp_path / f"{db.name}-wal").exists()
    assert "another application (tables: invoices)" in proc.stderr or "holds no Optuna study" in proc.stderr
    assert not (tmp_path / "optuna-search-artifacts").exists() and not (tmp_path / "r").exists()


def test_run_refuses_another_applications_database(tmp_path):
    other = tmp_path / "app.db"
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE invoices (id INTEGER)")
    con.commit()
    con.close()
    with pytest.raises(UserError, match=r"another application \(tables: invoices\)"):
        open_storage(f"sqlite:///{other}", mode="create")


def test_a_damaged_database_is_named_with_the_way_out(tmp_path):
    import optuna

    db = tmp_path / "study.db"
    study = optuna.create_study(storage=open_storage(f"sqlite:///{db}", mode="create"), study_name="s")
    for i in range(30):
        study.enqueue_trial({"x": i}, user_attrs={"note": "x" * 500})
    from optuna_search.storage.study._internals import engine_of

    engine_of(study).dispose()
    con = sqlite3.connect(db)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.execute("PRAGMA journal_mode=DELETE")
    con.close()
    raw = bytearray(db.read_bytes())
    page = 4096
    assert len(raw) > 8 * page
    for p in range(2, len(raw) // page):  # damage every page but the first (the header stays valid)
        raw[p * page + 8 : p * page + 200] = os.urandom(192)
    db.write_bytes(bytes(raw))
    proc = run_main("status", "--storage", f"sqlite:///{db}", cwd=tmp_path)
    assert proc.returncode == 2 and "damaged" in proc.stderr and ".recover" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_two_processes_creating_the_schema_at_once_never_collide(tmp_path):
    code = (
        "import sys\nfrom optuna_search.storage.study._storages import open_storage\n"
        "open_storage(sys.argv[1], mode='create')\n"
    )
    for i in range(4):
        url = f"sqlite:///{tmp_path / f'race{i}.db'}"
        procs = [
            subprocess.Popen([sys.executable, "-c", code, url], stderr=subprocess.PIPE, text=True, cwd=REPO)
            for _ in range(3)
        ]
        errs = [p.communicate(timeout=120)[1] for p in procs]
        assert all(p.returncode == 0 for p in procs), errs


def test_a_file_that_looks_damaged_only_to_a_lock_free_read_is_not_called_damaged(tmp_path, monkeypatch):
    """Seen with three `run` creating one new file at once: the file, read as immutable
    (no locks) while another process was still writing it, looked malformed, and a sound
    study was called damaged. Damage is now said only when a locking read agrees."""
    from optuna_search.storage.study import _storages

    db = tmp_path / "study.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE studies (id int)")
    con.commit()
    con.close()
    real, reads = _storages._tables_checked, []

    def mid_write(uri):
        reads.append(uri)
        if "immutable=1" in uri:
            raise sqlite3.DatabaseError("database disk image is malformed")
        return real(uri)

    monkeypatch.setattr(_storages, "_tables_checked", mid_write)
    assert _storages.sqlite_tables(db, "sqlite:///study.db") == {"studies"}
    assert ["immutable=1" in u for u in reads] == [True, False]  # lock-free first, then with locks

    db.write_bytes(b"SQLite format 3\x00" + os.urandom(4000))  # damaged for any reader
    monkeypatch.setattr(_storages, "_tables_checked", real)
    with pytest.raises(UserError, match="is damaged"):
        _storages.sqlite_tables(db, "sqlite:///study.db")


def test_creating_a_study_says_nothing_of_optunas_own(tmp_path, capfd):
    """Seen: Optuna's "A new study created in RDB with name: ..." on stderr from the Python
    API, beside our own lines (the CLI silenced it; the API did not)."""
    import optuna

    from optuna_search.storage import create_study

    optuna.logging.set_verbosity(optuna.logging.INFO)
    try:
        create_study("quiet", f"sqlite:///{tmp_path / 'q.db'}", None, None, ["maximize"], ["overall_accuracy"])
    finally:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
    assert "A new study created" not in capfd.readouterr().err
