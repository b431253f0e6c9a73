"""Threat: an embedded SQLite store under concurrent writers, and a locked database.

SQLite is the default store, and it has one writer at a time. Under load, a store
that is not set up for that ("database is locked" on the first busy moment, a read
transaction upgraded into a deadlock) fails requests or, worse, reports a locked
database as a missing session, which logs the user out or hands out an empty one.
The contract (docs/settings.rst): with the recommended ``OPTIONS`` (WAL,
``transaction_mode="IMMEDIATE"``, a busy ``timeout``) concurrent writers simply
queue; a locked database is retried within a bound, then ``SessionStoreUnavailable``
(503), never "no session" and never a lost or deleted record.

* several processes and several threads writing one session: no error, no lost write;
* the same on Django's default options (no ``OPTIONS``, as ``startproject`` writes):
  16 threads of one process, and a few processes; a caller's open transaction
  (``ATOMIC_REQUESTS``) never queues behind the engine's in-process write queue;
  ``hardened_sessions.W030`` belongs to ``check --deploy`` only;
* a database held by another connection's ``BEGIN EXCLUSIVE``, with the engine's busy
  timeout lowered to 0.1 s: bounded retries, then ``SessionStoreUnavailable``; once the
  lock is released the same operation succeeds.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections, transaction
from django.test import override_settings

from hardened_sessions import keys, record
from hardened_sessions.backends.db import SessionStore
from hardened_sessions.conf import get_config
from hardened_sessions.exceptions import SessionRotationFailed, SessionStoreUnavailable
from hardened_sessions.models import HardenedSession
from tests.support.routers import SessionsAliasRouter
from tests.support.settings import SQLITE_OPTIONS

REPO_ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).parent / "support" / "threat_sqlite_worker.py"
TABLE = HardenedSession._meta.db_table

N_PROCESSES = 8
PROCESS_WRITES = 500
OWN_EVERY = 100  # each process also creates a session of its own this often
N_THREADS = 8
THREAD_WRITES = 200
THREAD_TIMEOUT = 120.0


def decode_row(raw: bytes, store_key: str) -> record.Record:
    return record.decode(raw, store_key, get_config().max_bytes)


# --------------------------------------------------------------------------- (a) processes


def _worker_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


def _worker_config(database: Path, options: dict[str, Any], **extra: Any) -> str:
    return json.dumps(
        {
            "database": str(database),
            "options": options,
            "secret_key": settings.SECRET_KEY,
            **extra,
        }
    )


@pytest.mark.parametrize(
    ("options", "processes", "writes", "own_every"),
    [
        (SQLITE_OPTIONS, N_PROCESSES, PROCESS_WRITES, OWN_EVERY),
        # Django's defaults (no OPTIONS: rollback journal, deferred transactions, a 5 s
        # busy timeout): fewer writes, but across processes too the merge after a
        # conflict waits for the write lock instead of failing on a lock upgrade.
        ({}, 4, 100, 50),
    ],
    ids=["recommended-options", "django-defaults"],
)
def test_processes_writing_one_session_on_one_sqlite_file(
    tmp_path: Path, options: dict[str, Any], processes: int, writes: int, own_every: int
) -> None:
    database = tmp_path / "sessions.sqlite3"
    env = _worker_env()
    setup = subprocess.run(
        [sys.executable, str(WORKER), _worker_config(database, options, mode="setup")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert setup.returncode == 0, setup.stderr
    key = json.loads(setup.stdout.splitlines()[-1])["key"]

    workers = []
    for i in range(processes):
        config = _worker_config(
            database,
            options,
            mode="hammer",
            index=i,
            iterations=writes,
            key=key,
            own_every=own_every,
        )
        stderr = (tmp_path / f"worker{i}.stderr").open("w")
        workers.append(
            (
                subprocess.Popen(
                    [sys.executable, str(WORKER), config],
                    env=env,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=stderr,
                    text=True,
                ),
                stderr,
            )
        )
    try:
        for process, stderr in workers:
            assert process.stdout is not None
            ready = process.stdout.readline().strip()
            assert ready == "ready", Path(stderr.name).read_text()
        started = time.perf_counter()
        for process, _ in workers:  # every process starts writing at once
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.flush()
        reports = []
        for process, stderr in workers:
            out, _ = process.communicate(timeout=240)
            stderr.close()
            assert process.returncode == 0, Path(stderr.name).read_text()
            reports.append(json.loads(out.splitlines()[-1]))
        elapsed = time.perf_counter() - started
    finally:
        for process, stderr in workers:
            if process.poll() is None:
                process.kill()
                process.wait()
            stderr.close()

    print(f"{processes} processes x {writes} writes: {elapsed:.1f} s")
    assert [(r["index"], r["errors"], r["first_errors"]) for r in reports] == [
        (i, 0, []) for i in range(processes)
    ]

    store_key = keys.store_key(key)
    with sqlite3.connect(database) as conn:
        raw, version = conn.execute(
            f"SELECT data, version FROM {TABLE} WHERE key_hash = ?", (store_key,)
        ).fetchone()
        rows = {h for (h,) in conn.execute(f"SELECT key_hash FROM {TABLE}")}
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    conn.close()
    rec = decode_row(raw, store_key)
    assert rec.data == {
        "owner": "shared",
        **{f"p{i}": writes - 1 for i in range(processes)},
    }
    assert version == rec.version == 1 + processes * writes
    own = {keys.store_key(k) for r in reports for k in r["own"]}
    assert len(own) == processes * (writes // own_every)
    assert rows == own | {store_key}


# --------------------------------------------------------------------------- (b) threads


@pytest.mark.django_db(transaction=True)
def test_threads_writing_one_session_on_the_sqlite_alias() -> None:
    assert connections[DEFAULT_DB_ALIAS].vendor == "sqlite"
    first = SessionStore()
    first["owner"] = "shared"
    first.save()
    key = first.session_key
    assert key is not None

    errors: list[str] = []
    go = threading.Barrier(N_THREADS, timeout=THREAD_TIMEOUT)

    def writer(i: int) -> None:
        mine = f"t{i}"
        try:
            go.wait()
            for n in range(THREAD_WRITES):
                try:
                    session = SessionStore(key)
                    expected = n - 1 if n else None
                    if session.get(mine) != expected:
                        errors.append(f"{mine} cycle {n}: lost its own previous write")
                    session[mine] = n
                    session.save()
                except Exception as exc:  # every failure counts
                    errors.append(f"{mine} cycle {n}: {exc.__class__.__name__}: {exc}")
        finally:
            connections.close_all()

    threads = [threading.Thread(target=writer, args=(i,), daemon=True) for i in range(N_THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(THREAD_TIMEOUT)
    assert not any(thread.is_alive() for thread in threads)

    assert errors == []
    row = HardenedSession.objects.get(pk=keys.store_key(key))
    rec = decode_row(bytes(row.data), row.pk)
    assert rec.data == {"owner": "shared", **{f"t{i}": THREAD_WRITES - 1 for i in range(N_THREADS)}}
    assert row.version == rec.version == 1 + N_THREADS * THREAD_WRITES
    assert HardenedSession.objects.count() == 1


# --------------------------------------------------------------------------- (c) a locked database

LOCKED_ALIAS = "hs_threat_locked_sqlite"
BUSY_TIMEOUT = 0.1  # the engine's connection gives up waiting for a lock after this
FAIL_WITHIN = 3.0  # seconds: the retries and their pauses (about 0.75 s) stay well inside
MAX_ATTEMPTS = 10


@dataclass
class ShortTimeoutSQLite:
    """A session database of its own (alias, file) whose busy timeout is 0.1 s."""

    alias: str
    path: Path
    journal_mode: str
    statements: list[str] = field(default_factory=list)

    @contextmanager
    def exclusive_lock(self) -> Iterator[sqlite3.Connection]:
        """Another connection holds ``BEGIN EXCLUSIVE`` on the file."""
        holder = sqlite3.connect(self.path, isolation_level=None, timeout=5)
        try:
            holder.execute("BEGIN EXCLUSIVE")
            self.statements.clear()
            yield holder
        finally:
            holder.execute("ROLLBACK")
            holder.close()

    def attempts(self) -> int:
        """Statements the engine started on the sessions table (or a transaction to
        write it) since the lock was taken: one per attempt while it is locked."""
        return sum(
            1
            for s in self.statements
            if TABLE in s or s.upper().startswith(("BEGIN", "INSERT", "UPDATE", "DELETE"))
        )

    def rows(self, conn: sqlite3.Connection | None = None) -> dict[str, tuple[bytes, int]]:
        own = conn is None
        conn = conn or sqlite3.connect(self.path, timeout=5)
        try:
            return {
                h: (bytes(d), v)
                for h, d, v in conn.execute(f"SELECT key_hash, data, version FROM {TABLE}")
            }
        finally:
            if own:
                conn.close()


@pytest.fixture(params=["wal", "delete"])
def short_timeout_sqlite(
    request: pytest.FixtureRequest, tmp_path: Path, django_db_blocker: Any
) -> Iterator[ShortTimeoutSQLite]:
    mode: str = request.param
    path = tmp_path / f"sessions-{mode}.sqlite3"
    options = {
        **SQLITE_OPTIONS,
        "init_command": f"PRAGMA journal_mode={mode}; PRAGMA synchronous=NORMAL;",
        "timeout": BUSY_TIMEOUT,
    }
    configured = connections.configure_settings(
        {
            DEFAULT_DB_ALIAS: {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"},
            LOCKED_ALIAS: {
                "ENGINE": "django.db.backends.sqlite3",
                "NAME": str(path),
                "OPTIONS": options,
            },
        }
    )
    connections.settings[LOCKED_ALIAS] = configured[LOCKED_ALIAS]
    db = ShortTimeoutSQLite(LOCKED_ALIAS, path, mode)
    try:
        with (
            django_db_blocker.unblock(),
            override_settings(DATABASE_ROUTERS=[SessionsAliasRouter(LOCKED_ALIAS)]),
        ):
            connection = connections[LOCKED_ALIAS]
            with connection.schema_editor() as editor:
                editor.create_model(HardenedSession)
            with connection.cursor() as cursor:
                cursor.execute("PRAGMA journal_mode")
                assert cursor.fetchone()[0].lower() == mode
            connection.connection.set_trace_callback(db.statements.append)
            yield db
    finally:
        connections[LOCKED_ALIAS].close()
        del connections[LOCKED_ALIAS]
        del connections.settings[LOCKED_ALIAS]


def _new_session() -> str:
    session = SessionStore()
    session.update({"user": "alice", "otp_verified": True})
    session.save()
    assert session.session_key is not None
    return session.session_key


def _loaded(key: str) -> SessionStore:
    session = SessionStore(key)
    assert session.get("user") == "alice"
    return session


def _new_data(key: str) -> SessionStore:
    session = SessionStore()
    session["user"] = "bob"
    return session


def _save(session: SessionStore) -> None:
    session["cart"] = ["apple"]
    session.save()


def _check_saved(db: ShortTimeoutSQLite, key: str, before: Any, session: SessionStore) -> None:
    raw, version = db.rows()[keys.store_key(key)]
    assert version == before[1] + 1
    assert decode_row(raw, keys.store_key(key)).data["cart"] == ["apple"]


def _check_created(db: ShortTimeoutSQLite, key: str, before: Any, session: SessionStore) -> None:
    assert session.session_key is not None
    assert set(db.rows()) == {keys.store_key(key), keys.store_key(session.session_key)}


def _check_flushed(db: ShortTimeoutSQLite, key: str, before: Any, session: SessionStore) -> None:
    assert db.rows() == {}


def _check_cycled(db: ShortTimeoutSQLite, key: str, before: Any, session: SessionStore) -> None:
    assert session.session_key not in (None, key)
    assert set(db.rows()) == {keys.store_key(session.session_key)}


# name: (the request up to the write, done before the lock; the write; the error it
# must raise while the database is locked; what it must have stored once unlocked)
OPERATIONS: dict[
    str,
    tuple[
        Callable[[str], SessionStore],
        Callable[[SessionStore], None],
        type[Exception],
        Callable[..., None],
    ],
] = {
    "save": (_loaded, _save, SessionStoreUnavailable, _check_saved),
    "create": (_new_data, SessionStore.save, SessionStoreUnavailable, _check_created),
    "flush": (_loaded, SessionStore.flush, SessionStoreUnavailable, _check_flushed),
    "cycle_key": (_loaded, SessionStore.cycle_key, SessionRotationFailed, _check_cycled),
}


@pytest.mark.parametrize("operation", list(OPERATIONS))
def test_locked_database_write_fails_closed_within_a_bound(
    short_timeout_sqlite: ShortTimeoutSQLite, operation: str
) -> None:
    db = short_timeout_sqlite
    prepare, write, expected_error, check_success = OPERATIONS[operation]
    key = _new_session()
    before = db.rows()[keys.store_key(key)]
    session = prepare(key)

    with db.exclusive_lock() as holder:
        started = time.perf_counter()
        with pytest.raises(expected_error) as caught:
            write(session)
        elapsed = time.perf_counter() - started
        attempts = db.attempts()
        # Nothing was written, nothing deleted (seen by the lock holder itself).
        assert db.rows(holder) == {keys.store_key(key): before}

    if expected_error is not SessionStoreUnavailable:
        assert isinstance(caught.value.__cause__, SessionStoreUnavailable)
    assert elapsed < FAIL_WITHIN, f"{operation} took {elapsed:.2f} s on a locked database"
    assert 2 <= attempts <= MAX_ATTEMPTS, (attempts, db.statements)
    assert db.rows() == {keys.store_key(key): before}

    # The lock is gone: the same operation, in a new request, succeeds.
    session = prepare(key)
    write(session)
    check_success(db, key, before, session)


@pytest.mark.parametrize("short_timeout_sqlite", ["delete"], indirect=True)
def test_locked_database_load_is_unavailable_not_an_empty_session(
    short_timeout_sqlite: ShortTimeoutSQLite,
) -> None:
    db = short_timeout_sqlite
    key = _new_session()
    before = db.rows()

    with db.exclusive_lock():
        session = SessionStore(key)
        started = time.perf_counter()
        with pytest.raises(SessionStoreUnavailable):
            session.load()
        elapsed = time.perf_counter() - started
        attempts = db.attempts()
        assert session.store_failure is not None
        assert session.session_key == key  # the cookie is not given up
        # The failure is remembered: the request's later accesses fail at once,
        # without waiting on the store again, and never look like an empty session.
        db.statements.clear()
        with pytest.raises(SessionStoreUnavailable):
            session.get("user")
        with pytest.raises(SessionStoreUnavailable):
            session.exists(key)
        assert db.attempts() == 0

    assert elapsed < FAIL_WITHIN, f"load took {elapsed:.2f} s on a locked database"
    assert 2 <= attempts <= MAX_ATTEMPTS, (attempts, db.statements)
    assert db.rows() == before  # not deleted as if it were dead or corrupt

    assert dict(SessionStore(key).items()) == {"user": "alice", "otp_verified": True}


@pytest.mark.parametrize("short_timeout_sqlite", ["wal"], indirect=True)
def test_wal_readers_load_while_a_writer_holds_the_lock(
    short_timeout_sqlite: ShortTimeoutSQLite,
) -> None:
    db = short_timeout_sqlite
    key = _new_session()
    with db.exclusive_lock():
        assert dict(SessionStore(key).items()) == {"user": "alice", "otp_verified": True}


def test_locked_database_at_the_merge_of_a_conflicting_save_fails_closed(
    short_timeout_sqlite: ShortTimeoutSQLite,
) -> None:
    """The lock is taken by another connection at the moment the stale request, its
    version-checked write refused, opens the transaction that merges its changes."""
    db = short_timeout_sqlite
    key = _new_session()
    store_key = keys.store_key(key)
    other = _loaded(key)
    stale = _loaded(key)
    other["theme"] = "dark"
    other.save()
    before = db.rows()[store_key]

    holder = sqlite3.connect(db.path, isolation_level=None, timeout=5)
    locked = threading.Event()

    def lock_at_merge(statement: str) -> None:
        db.statements.append(statement)
        if statement.upper().startswith("BEGIN") and not locked.is_set():
            holder.execute("BEGIN EXCLUSIVE")
            locked.set()

    connections[db.alias].connection.set_trace_callback(lock_at_merge)
    try:
        stale["cart"] = ["apple"]
        started = time.perf_counter()
        with pytest.raises(SessionStoreUnavailable):
            stale.save()
        elapsed = time.perf_counter() - started
        assert locked.is_set(), "the save never reached its merge"
        assert db.rows(holder) == {store_key: before}
    finally:
        connections[db.alias].connection.set_trace_callback(db.statements.append)
        if locked.is_set():
            holder.execute("ROLLBACK")
        holder.close()

    assert elapsed < FAIL_WITHIN
    assert db.rows() == {store_key: before}
    retry = _loaded(key)
    retry["cart"] = ["apple"]
    retry.save()
    data = decode_row(db.rows()[store_key][0], store_key).data
    assert data == {"user": "alice", "otp_verified": True, "theme": "dark", "cart": ["apple"]}


# --------------------------------------------------------------------------- (d) Django's defaults

DEFAULTS_ALIAS = "hs_threat_default_sqlite"
DEFAULT_THREADS = 16
DEFAULT_WRITES = 50


@pytest.fixture
def default_options_sqlite(tmp_path: Path, django_db_blocker: Any) -> Iterator[str]:
    """A session database as ``startproject`` writes it: an SQLite file, no ``OPTIONS``
    (rollback journal, deferred transactions, Python's 5 s busy timeout)."""
    path = tmp_path / "db.sqlite3"
    configured = connections.configure_settings(
        {
            DEFAULT_DB_ALIAS: {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"},
            DEFAULTS_ALIAS: {"ENGINE": "django.db.backends.sqlite3", "NAME": str(path)},
        }
    )
    assert configured[DEFAULTS_ALIAS]["OPTIONS"] == {}
    connections.settings[DEFAULTS_ALIAS] = configured[DEFAULTS_ALIAS]
    try:
        with (
            django_db_blocker.unblock(),
            override_settings(DATABASE_ROUTERS=[SessionsAliasRouter(DEFAULTS_ALIAS)]),
        ):
            connection = connections[DEFAULTS_ALIAS]
            with connection.schema_editor() as editor:
                editor.create_model(HardenedSession)
            with connection.cursor() as cursor:
                cursor.execute("PRAGMA journal_mode")
                assert cursor.fetchone()[0].lower() == "delete"
            yield DEFAULTS_ALIAS
    finally:
        connections[DEFAULTS_ALIAS].close()
        del connections[DEFAULTS_ALIAS]
        del connections.settings[DEFAULTS_ALIAS]


def test_threads_saving_on_djangos_default_sqlite_options(default_options_sqlite: str) -> None:
    """16 threads, each saving a session of its own and one shared session 50 times, on
    a plain ``startproject`` database: no "database is locked", no 503, no lost write."""
    first = SessionStore()
    first["owner"] = "shared"
    first.save()
    shared = first.session_key
    assert shared is not None

    errors: list[str] = []
    own_keys: list[str] = []
    go = threading.Barrier(DEFAULT_THREADS, timeout=THREAD_TIMEOUT)

    def writer(i: int) -> None:
        mine = f"t{i}"
        try:
            own = SessionStore()
            own["owner"] = mine
            own.save()
            assert own.session_key is not None
            own_keys.append(own.session_key)
            go.wait()
            for n in range(DEFAULT_WRITES):
                try:
                    session = SessionStore(shared)
                    if session.get(mine) != (n - 1 if n else None):
                        errors.append(f"{mine} cycle {n}: lost its own previous write")
                    session[mine] = n
                    session.save()
                    own = SessionStore(own.session_key)
                    own["n"] = n
                    own.save()
                except Exception as exc:  # every failure counts
                    errors.append(f"{mine} cycle {n}: {exc.__class__.__name__}: {exc}")
        except Exception as exc:
            errors.append(f"{mine} setup: {exc.__class__.__name__}: {exc}")
        finally:
            connections.close_all()

    threads = [
        threading.Thread(target=writer, args=(i,), daemon=True) for i in range(DEFAULT_THREADS)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(THREAD_TIMEOUT)
    assert not any(thread.is_alive() for thread in threads)

    assert errors[:5] == []
    assert len(errors) == 0
    rows = {
        row.pk: decode_row(bytes(row.data), row.pk).data
        for row in HardenedSession.objects.using(default_options_sqlite)
    }
    assert rows[keys.store_key(shared)] == {
        "owner": "shared",
        **{f"t{i}": DEFAULT_WRITES - 1 for i in range(DEFAULT_THREADS)},
    }
    assert len(rows) == 1 + DEFAULT_THREADS
    assert sorted(d["owner"] for k, d in rows.items() if k != keys.store_key(shared)) == sorted(
        f"t{i}" for i in range(DEFAULT_THREADS)
    )
    assert all(
        d.get("n") == DEFAULT_WRITES - 1 for k, d in rows.items() if k != keys.store_key(shared)
    )


def _w030_ids(*, deploy: bool) -> list[str]:
    from django.core.checks import run_checks

    return [
        m.id
        for m in run_checks(include_deployment_checks=deploy)
        if m.id == "hardened_sessions.W030"
    ]


def test_w030_is_a_deployment_check_only(default_options_sqlite: str) -> None:
    """One process on Django's defaults works, so a plain ``check`` (run before every
    management command) stays quiet; ``check --deploy`` names what several processes
    need."""
    assert _w030_ids(deploy=False) == []
    assert _w030_ids(deploy=True) == ["hardened_sessions.W030"]


def test_a_callers_open_transaction_never_waits_for_the_engines_queue(
    default_options_sqlite: str,
) -> None:
    """The in-process queue is not taken inside a caller's transaction.

    Thread A saves in an ``atomic()`` block (``ATOMIC_REQUESTS``): its transaction holds
    SQLite's write lock. Thread B saves outside any transaction: it takes the queue and
    waits for SQLite's lock. A then saves again before committing; had it queued behind
    B, the two would wait on each other until B's busy timeout (5 s here)."""
    alias = default_options_sqlite
    keys_: dict[str, str | None] = {}
    for name in ("a", "b"):
        session = SessionStore()
        session["n"] = 0
        session.save()
        keys_[name] = session.session_key
    a_holds = threading.Event()
    errors: list[str] = []
    took: dict[str, float] = {}

    def thread_a() -> None:
        try:
            with transaction.atomic(using=alias):
                first = SessionStore(keys_["a"])
                first["n"] = 1
                first.save()
                a_holds.set()
                time.sleep(0.3)  # B is now queued and waiting for SQLite's lock
                started = time.perf_counter()
                second = SessionStore(keys_["b"])
                second.load()
                first["n"] = 2
                first.save()
                took["a"] = time.perf_counter() - started
        except Exception as exc:
            errors.append(f"A: {exc.__class__.__name__}: {exc}")
        finally:
            connections.close_all()

    def thread_b() -> None:
        try:
            assert a_holds.wait(10)
            started = time.perf_counter()
            session = SessionStore(keys_["b"])
            session["n"] = 1
            session.save()
            took["b"] = time.perf_counter() - started
        except Exception as exc:
            errors.append(f"B: {exc.__class__.__name__}: {exc}")
        finally:
            connections.close_all()

    threads = [threading.Thread(target=t, daemon=True) for t in (thread_a, thread_b)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []
    assert took["a"] < 2.0, took
    assert took["b"] < 3.0, took
    assert SessionStore(keys_["a"]).load() == {"n": 2}
    assert SessionStore(keys_["b"]).load() == {"n": 1}
