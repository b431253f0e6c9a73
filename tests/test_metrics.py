"""Prometheus metrics (``HARDENED_SESSIONS["METRICS"] = True``).

Lifecycle events are counted by event, reason and engine; each store access is timed
by engine and operation; store failures met through the engine are counted, with a
real fault (the Redis server stopped). With the setting off (the default) nothing is
measured and ``prometheus_client`` is not even imported, which a fresh interpreter
serving a full request cycle shows.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from django.conf import settings
from django.test import override_settings
from prometheus_client import REGISTRY

from hardened_sessions import conf, keys
from hardened_sessions.backends.cache import SessionStore as CacheStore
from hardened_sessions.backends.db import SessionStore as DBStore
from hardened_sessions.exceptions import SessionStoreUnavailable
from hardened_sessions.revoke import revoke_sessions
from hardened_sessions.signals import Reason
from tests.conftest import require_server
from tests.support.clock import clock_at
from tests.support.servers import Server, cache_settings, sessions_cache

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parent.parent
EVENTS = "hardened_sessions_events_total"
ERRORS = "hardened_sessions_store_errors_total"
SECONDS = "hardened_sessions_store_operation_seconds"


@pytest.fixture
def metrics_on() -> Iterator[None]:
    with override_settings(HARDENED_SESSIONS={"METRICS": True}):
        yield


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


class Delta:
    """Samples before and after: ``delta(name, **labels)`` is how much each moved."""

    def __init__(self) -> None:
        self.before = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for metric in REGISTRY.collect()
            if metric.name.startswith("hardened_sessions_")
            for s in metric.samples
        }

    def __call__(self, name: str, **labels: str) -> float:
        return sample(name, **labels) - self.before.get((name, tuple(sorted(labels.items()))), 0.0)


def event(name: str, reason: str, engine: str = "db") -> tuple[str, dict[str, str]]:
    return EVENTS, {"event": name, "reason": reason, "engine": engine}


def test_events_are_counted(metrics_on: None) -> None:
    delta = Delta()
    session = DBStore()
    session["a"] = 1
    session.save()
    session.cycle_key()
    key = session.session_key
    assert key is not None
    other = DBStore(key)
    other.load()
    session["b"] = 2
    session.save()
    other["c"] = 3
    other.save()  # a conflict, merged
    session.flush()
    expired = DBStore()
    expired.save()
    assert expired.session_key is not None
    with clock_at(time.time() + 10 * settings.SESSION_COOKIE_AGE):
        assert DBStore(expired.session_key).load() == {}
    stored = DBStore()
    stored.save()
    assert stored.session_key is not None
    assert revoke_sessions([keys.store_key(stored.session_key)], reason=Reason.ADMIN) == 1

    for name, reason, count in [
        ("created", "created", 3),
        ("rotated", "rotation", 1),
        ("conflict_merged", "conflict", 1),
        ("revoked", "logout", 1),
        ("revoked", "admin", 1),
        ("expired", "load", 1),
        ("rejected", "past_deadline", 1),
    ]:
        metric, labels = event(name, reason)
        assert delta(metric, **labels) == count, (name, reason)


def test_sweep_counts_each_expired_session(metrics_on: None) -> None:
    with clock_at(time.time() - 10 * settings.SESSION_COOKIE_AGE):
        for _ in range(3):
            DBStore().save()
    delta = Delta()
    assert DBStore.delete_expired(batch_size=2) == 3
    metric, labels = event("expired", "sweep")
    assert delta(metric, **labels) == 3


def test_store_operations_are_timed(metrics_on: None) -> None:
    delta = Delta()
    session = DBStore()
    session["a"] = 1
    session.save()
    session["a"] = 2
    session.save()
    assert session.session_key is not None
    assert DBStore(session.session_key).load() == {"a": 2}
    session.delete()
    for operation in ("write_new", "write_update", "read", "remove"):
        labels = {"engine": "db", "operation": operation}
        assert delta(f"{SECONDS}_count", **labels) == 1, operation
        assert delta(f"{SECONDS}_sum", **labels) > 0, operation
        assert delta(f"{SECONDS}_bucket", le="+Inf", **labels) == 1, operation


def test_store_errors_are_counted(
    metrics_on: None,
    request: pytest.FixtureRequest,
    revive_servers: Callable[[Server], Server],
) -> None:
    """A real fault: the Redis server behind the cache engine is stopped."""
    server: Server = request.getfixturevalue("redis_server")
    if not server.managed:
        require_server("redis", "stopping a server needs one started by the tests")
    options = {"SOCKET_CONNECT_TIMEOUT": 1, "SOCKET_TIMEOUT": 1}
    config = cache_settings("django-redis", redis=server, options=options)
    with sessions_cache(config, SESSION_ENGINE="hardened_sessions.backends.cache"):
        session = CacheStore()
        session["a"] = 1
        session.save()
        key = session.session_key
        delta = Delta()
        revive_servers(server)
        with server.stopped():
            loading = CacheStore(key)
            with pytest.raises(SessionStoreUnavailable):
                loading.load()
            # Remembered for the rest of the request: no second store access, no count.
            with pytest.raises(SessionStoreUnavailable):
                loading.load()
    labels = {"engine": "cache", "operation": "read"}
    assert delta(ERRORS, **labels) == 1
    assert delta(f"{SECONDS}_count", **labels) == 1


def test_the_setting_is_validated() -> None:
    assert conf.validate({"METRICS": False}) == []
    assert conf.validate({"METRICS": True}) == []
    (problem,) = conf.validate({"METRICS": "yes"})
    assert "METRICS" in problem


def test_nothing_is_measured_when_off() -> None:
    delta = Delta()
    session = DBStore()
    session["a"] = 1
    session.save()
    session.cycle_key()
    session.flush()
    moved = {
        (s.name, tuple(sorted(s.labels.items())))
        for metric in REGISTRY.collect()
        if metric.name.startswith("hardened_sessions_")
        for s in metric.samples
        if delta(s.name, **s.labels) != 0 and not s.name.endswith("_created")
    }
    assert moved == set()


# A fresh interpreter: the test settings, the cache engine, two requests through the
# middleware and a view that writes the session. It prints whether prometheus_client
# was imported.
REQUEST_CYCLE = """
import sys
import django
django.setup()
from django.http import HttpResponse
from django.test import Client, override_settings
from django.urls import path

def view(request):
    request.session["n"] = request.session.get("n", 0) + 1
    return HttpResponse(str(request.session["n"]))

urlpatterns = [path("", view)]
with override_settings(
    ROOT_URLCONF="__main__",
    SESSION_ENGINE="hardened_sessions.backends.cache",
    HARDENED_SESSIONS={"METRICS": sys.argv[1] == "on"},
):
    client = Client()
    assert client.get("/").content == b"1"
    assert client.get("/").content == b"2"
print("prometheus_client" in sys.modules)
"""


def request_cycle_imports_prometheus(state: str) -> bool:
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.support.settings"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-c", REQUEST_CYCLE, state],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1] == "True"


@pytest.mark.django_db(transaction=False)
def test_prometheus_client_is_not_imported_when_off() -> None:
    assert request_cycle_imports_prometheus("off") is False
    # The same script does import it with the setting on: the check can fail.
    assert request_cycle_imports_prometheus("on") is True


def test_engine_labels() -> None:
    from hardened_sessions.backends.cached_db import SessionStore as CachedDBStore
    from hardened_sessions.metrics import engine_label

    assert [engine_label(c) for c in (DBStore, CacheStore, CachedDBStore)] == [
        "db",
        "cache",
        "cached_db",
    ]

    class Custom(DBStore):
        pass

    assert engine_label(Custom()) == f"{__name__}.{Custom.__qualname__}"
