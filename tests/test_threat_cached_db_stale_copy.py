"""Threat: a stale cached copy keeps a logged-out (or changed) session alive.

Stock Django's ``cached_db`` deletes the database row first and the cached copy
second; when the cache delete fails (server down, network partition), the logout
"succeeds" or errors out with the row gone, and the copy keeps loading until it
expires. ``hardened_sessions.backends.cached_db`` deletes the copy first and gives up
with ``SessionStoreUnavailable`` if it cannot, keeps its copies in step with every
save, and treats the database as the truth.

Faults are real: a server fixture is stopped (a crash: the server comes back
empty), or a :class:`~tests.support.faults.FaultProxy` in front of it cuts the network
while the server keeps everything it holds (a partition: the dangerous case, since
the copy survives). The races between two requests are forced at the one seam
where timing cannot be arranged from outside: a wrapper around the engine's cache
store that runs the other request just before the copy is written.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from typing import Any

import pytest
from django.conf import settings
from django.contrib.sessions.backends.base import UpdateError
from django.db import connection, connections, transaction
from django.test import override_settings

from hardened_sessions import record
from hardened_sessions.backends.cached_db import SessionStore, fill_marker
from hardened_sessions.exceptions import SessionStoreUnavailable
from hardened_sessions.keys import store_key
from hardened_sessions.models import HardenedSession
from tests.conftest import require_server
from tests.support.faults import PROXY_ALIAS, FaultProxy, sessions_through_proxy
from tests.support.servers import (
    RawCache,
    Server,
    cache_settings,
    flush_variant,
    memcached_ttl,
    sessions_cache,
)

pytestmark = pytest.mark.django_db(transaction=True)

REAL_STORES = ["django-redis", "django-rediscache", "pymemcache"]
# pymemcache's retry window for a failing server (seconds), kept short.
RETRY_TIMEOUT = 0.3
# Short socket timeouts, so that an unreachable server fails a request quickly.
FAST_FAIL = {
    "django-redis": {"SOCKET_CONNECT_TIMEOUT": 1, "SOCKET_TIMEOUT": 1},
    "django-rediscache": {"socket_connect_timeout": 1, "socket_timeout": 1},
    "pymemcache": {
        "no_delay": True,
        "connect_timeout": 1,
        "timeout": 1,
        "retry_timeout": RETRY_TIMEOUT,
    },
}


# --- helpers -----------------------------------------------------------------------------


def row(session_key: str) -> HardenedSession | None:
    return HardenedSession.objects.filter(pk=store_key(session_key)).first()


def logged_in(data: dict[str, Any] | None = None) -> SessionStore:
    """A saved session whose copy is in the cache (a load after the save fills it)."""
    session = SessionStore()
    session.update(data if data is not None else {"_auth_user_id": "7", "sudo": True})
    session.save()
    assert SessionStore(session.session_key).load() == dict(session.items())
    return session


def attempt_delete(session_key: str) -> str:
    """One request's logout: 'deleted' or 'unavailable'."""
    try:
        SessionStore(session_key).delete()
    except SessionStoreUnavailable:
        return "unavailable"
    return "deleted"


def gone_everywhere(session_key: str, raw: RawCache) -> None:
    assert row(session_key) is None
    assert raw.get(raw.key(store_key(session_key))) is None
    fresh = SessionStore(session_key)
    assert fresh.load() == {}
    assert fresh.exists(session_key) is False


def real_servers(variant: str, request: pytest.FixtureRequest) -> dict[str, Any]:
    if variant == "pymemcache":
        return {"memcached": request.getfixturevalue("memcached_servers")}
    return {"redis": request.getfixturevalue("redis_server")}


def holder(raw: RawCache, session_key: str, servers: dict[str, Any]) -> Server:
    """The server that holds the session's cached copy."""
    key = raw.key(store_key(session_key))
    if "redis" in servers:
        return servers["redis"]  # type: ignore[no-any-return]
    for server in servers["memcached"]:
        if memcached_ttl(server, key) is not None:
            return server  # type: ignore[no-any-return]
    raise AssertionError("no memcached server holds the session's copy")


def settle(variant: str) -> None:
    """Let pymemcache's retry window for a failed server pass, so it is tried again."""
    if variant == "pymemcache":
        time.sleep(RETRY_TIMEOUT + 0.2)


class Partition:
    """The variant's cache reached through fault proxies: ``cut(server)`` partitions one."""

    def __init__(self, proxies: dict[str, FaultProxy]) -> None:
        self.proxies = proxies

    def cut(self, server: Server) -> None:
        self.proxies[server.address].refuse()

    def restore(self) -> None:
        for proxy in self.proxies.values():
            proxy.restore()


def variant_param() -> Any:
    return pytest.mark.parametrize(
        "variant", [pytest.param(variant, id=variant) for variant in REAL_STORES]
    )


@pytest.fixture
def direct_cache(
    variant: str, request: pytest.FixtureRequest
) -> Iterator[tuple[RawCache, dict[str, Any]]]:
    """The variant's cache on its servers directly (for stopping them)."""
    servers = real_servers(variant, request)
    config = cache_settings(variant, options=FAST_FAIL[variant], **servers)
    with sessions_cache(config) as alias:
        raw = RawCache(variant, servers, alias)
        flush_variant(variant, servers)
        yield raw, servers
    flush_variant(variant, servers)


@pytest.fixture
def partitioned_cache(
    variant: str,
    request: pytest.FixtureRequest,
    fault_proxy: Callable[[Server], FaultProxy],
) -> Iterator[tuple[RawCache, dict[str, Any], Partition]]:
    """The variant's cache reached through one fault proxy per server."""
    servers = real_servers(variant, request)
    for server in servers.get("memcached") or [servers.get("redis")]:
        if not server.managed:
            require_server(server.kind, "cutting the network needs servers started by the tests")
    proxies = {s.address: fault_proxy(s) for s in servers.get("memcached") or [servers["redis"]]}
    if variant == "pymemcache":
        proxied = {"memcached": [p.as_server() for p in proxies.values()]}
    else:
        proxied = {"redis": next(iter(proxies.values())).as_server()}
    config = cache_settings(variant, options=FAST_FAIL[variant], **proxied)
    with sessions_cache(config) as alias:
        raw = RawCache(variant, servers, alias)  # straight to the servers, past the proxies
        flush_variant(variant, servers)
        yield raw, servers, Partition(proxies)
    flush_variant(variant, servers)


# --- deletes fail closed -------------------------------------------------------------------


@variant_param()
def test_delete_while_the_cache_server_is_down_fails_and_keeps_the_row(
    variant: str,
    direct_cache: tuple[RawCache, dict[str, Any]],
    revive_servers: Callable[[Server], Server],
) -> None:
    raw, servers = direct_cache
    session = logged_in()
    key = session.session_key
    server = revive_servers(holder(raw, key, servers))

    server.stop()
    with pytest.raises(SessionStoreUnavailable):
        SessionStore(key).delete()
    # Nothing half-done: the row (the truth) is still there.
    assert row(key) is not None

    server.start()
    settle(variant)
    SessionStore(key).delete()
    gone_everywhere(key, raw)


@variant_param()
def test_delete_during_a_partition_never_succeeds_while_the_copy_survives(
    variant: str,
    partitioned_cache: tuple[RawCache, dict[str, Any], Partition],
) -> None:
    raw, servers, partition = partitioned_cache
    session = logged_in({"_auth_user_id": "7", "sudo": True})
    key = session.session_key
    partition.cut(holder(raw, key, servers))

    # The user presses "log out" three times while the cache is unreachable.
    outcomes = [attempt_delete(key) for _ in range(3)]

    partition.restore()
    settle(variant)
    loaded = SessionStore(key).load()
    still_in_db = row(key) is not None
    assert still_in_db or loaded == {}, (
        f"logout reported {outcomes} and removed the row, but the cached copy still loads: {loaded}"
    )
    assert outcomes == ["unavailable"] * 3
    # The logout never happened: the session is whole and consistent.
    assert loaded == {"_auth_user_id": "7", "sudo": True}

    SessionStore(key).delete()
    gone_everywhere(key, raw)


@variant_param()
def test_a_failing_cache_node_answers_unavailable_never_a_miss_or_a_crash(
    variant: str,
    partitioned_cache: tuple[RawCache, dict[str, Any], Partition],
) -> None:
    raw, servers, partition = partitioned_cache
    session = logged_in({"_auth_user_id": "7"})
    key = session.session_key
    partition.cut(holder(raw, key, servers))

    results = []
    for _ in range(3):
        try:
            results.append(SessionStore(key).load())
        except SessionStoreUnavailable:
            results.append("unavailable")
    assert results == ["unavailable"] * 3


# --- saves keep the copy in step -----------------------------------------------------------


@variant_param()
def test_a_save_the_cache_missed_leaves_no_older_copy_behind(
    variant: str,
    partitioned_cache: tuple[RawCache, dict[str, Any], Partition],
) -> None:
    raw, servers, partition = partitioned_cache
    session = logged_in({"_auth_user_id": "7", "sudo": True})
    key = session.session_key
    request = SessionStore(key)
    assert request["sudo"] is True
    partition.cut(holder(raw, key, servers))

    del request["sudo"]  # sudo mode ends
    with suppress(SessionStoreUnavailable):  # reported is fine, if what loads is consistent
        request.save()

    partition.restore()
    settle(variant)
    in_db = record.decode(bytes(row(key).data), store_key(key), 65536).data  # type: ignore[union-attr]
    assert SessionStore(key).load() == in_db


def test_a_save_writes_through_to_the_cached_copy(raw_session_cache: RawCache) -> None:
    session = logged_in({"_auth_user_id": "7", "sudo": True})
    key = session.session_key
    cache_key = raw_session_cache.key(store_key(key))
    before = record.peek_version(raw_session_cache.get(cache_key) or b"")

    request = SessionStore(key)
    del request["sudo"]
    request["step"] = 2
    request.save()

    copy = raw_session_cache.get(cache_key)
    assert copy is not None
    assert record.peek_version(copy) == before + 1 == row(key).version  # type: ignore[operator, union-attr]
    assert record.decode(copy, store_key(key), 65536).data == {"_auth_user_id": "7", "step": 2}
    assert bytes(row(key).data) == copy  # type: ignore[union-attr]
    assert SessionStore(key).load() == {"_auth_user_id": "7", "step": 2}


def test_racing_saves_leave_the_newest_version_in_the_cache(raw_session_cache: RawCache) -> None:
    session = logged_in({"_auth_user_id": "7", "sudo": True, "cart": 1})
    key = session.session_key
    cache_key = raw_session_cache.key(store_key(key))
    first, second = SessionStore(key), SessionStore(key)
    assert first["sudo"] is True and second["sudo"] is True

    del second["sudo"]  # e.g. sudo mode ends
    second.save()
    first["cart"] = 2  # an older request, loaded before that
    first.save()

    copy = raw_session_cache.get(cache_key)
    assert copy is not None
    assert record.peek_version(copy) == row(key).version  # type: ignore[union-attr]
    expected = {"_auth_user_id": "7", "cart": 2}
    assert record.decode(copy, store_key(key), 65536).data == expected
    assert SessionStore(key).load() == expected


class BeforeCacheAdd:
    """Wraps a session's cache store: runs ``other`` right before the copy is added.

    That is the moment a concurrent request can act between this request's database
    read and its cache fill; nothing outside the process can hold it there.
    """

    def __init__(self, store: Any, other: Callable[[], None]) -> None:
        self._store = store
        self._other = other

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def add(self, *args: Any) -> Any:
        other, self._other = self._other, lambda: None
        other()
        return self._store.add(*args)


def test_an_older_copy_is_not_served_after_a_newer_save(raw_session_cache: RawCache) -> None:
    session = SessionStore()
    session.update({"_auth_user_id": "7", "sudo": True})
    session.save()
    key = session.session_key
    other = SessionStore(key)
    assert other["sudo"] is True  # another request loads it (and fills the cache) ...
    raw_session_cache.delete(raw_session_cache.key(store_key(key)))  # ... then it's evicted

    def end_sudo() -> None:
        del other["sudo"]
        other.save()

    slow = SessionStore(key)
    slow._cache = BeforeCacheAdd(slow._cache, end_sudo)
    slow.load()  # reads version 1 from the database, then the other request saves

    assert SessionStore(key).load() == {"_auth_user_id": "7"}


def test_a_deleted_session_is_not_put_back_by_a_concurrent_load(
    raw_session_cache: RawCache,
) -> None:
    session = SessionStore()
    session.update({"_auth_user_id": "7"})
    session.save()
    key = session.session_key

    slow = SessionStore(key)
    slow._cache = BeforeCacheAdd(slow._cache, lambda: SessionStore(key).delete())
    slow.load()  # reads the row, then the user logs out in another request

    assert row(key) is None
    assert SessionStore(key).load() == {}


def test_a_logout_between_a_saves_commit_and_its_copy_leaves_no_copy(
    raw_session_cache: RawCache,
) -> None:
    """A save commits its row; before it puts the record's copy in the cache, another
    request logs the session out (or a login of the same user ends it at the cap):
    the copy must not land, or the ended session loads from the cache until it
    expires."""
    session = logged_in({"_auth_user_id": "7"})
    key = session.session_key
    saving = SessionStore(key)
    saving["cart"] = 1
    saving._cache = AfterUpdate(saving._cache, lambda: SessionStore(key).delete())
    saving.save()

    gone_everywhere(key, raw_session_cache)


def test_a_logout_between_a_commit_and_its_copy_leaves_no_copy_inside_a_transaction(
    raw_session_cache: RawCache,
) -> None:
    """The same, with the save inside the caller's transaction (its copy is written when
    the transaction commits)."""
    session = logged_in({"_auth_user_id": "7"})
    key = session.session_key
    saving = SessionStore(key)
    saving["cart"] = 1
    saving._cache = AfterUpdate(saving._cache, lambda: SessionStore(key).delete())
    with transaction.atomic():
        saving.save()

    gone_everywhere(key, raw_session_cache)


def test_a_cap_trim_between_a_commit_and_its_copy_leaves_no_copy(
    raw_session_cache: RawCache,
) -> None:
    """With ``MAX_SESSIONS_PER_USER = 1`` a login elsewhere ends the session being saved,
    between the save's commit and its copy."""
    with override_settings(HARDENED_SESSIONS={"MAX_SESSIONS_PER_USER": 1}):
        session = logged_in({"_auth_user_id": "7"})
        key = session.session_key

        def login_elsewhere() -> None:
            other = SessionStore()
            other["_auth_user_id"] = "7"
            other.save()

        saving = SessionStore(key)
        saving["cart"] = 1
        saving._cache = AfterUpdate(saving._cache, login_elsewhere)
        saving.save()

        gone_everywhere(key, raw_session_cache)


def test_a_save_whose_copy_fails_after_its_marker_was_replaced_leaves_no_older_copy(
    raw_session_cache: RawCache,
) -> None:
    """Between the save's marker and its commit a load put the older record's copy in
    the marker's place (the marker expired in a long transaction, or a fill deleted it);
    then the cache fails the save's compare-and-set. The older copy must not stay: the
    save deletes it, or fails (503)."""
    session = logged_in({"_auth_user_id": "7", "sudo": True})
    key = session.session_key
    cache_key = raw_session_cache.key(store_key(key))
    older = raw_session_cache.get(cache_key)
    assert older is not None

    class ReplacedThenFailing(AfterUpdate):
        def cas(self, *args: Any, **kwargs: Any) -> Any:
            raw_session_cache.delete(cache_key)  # the marker ...
            raw_session_cache.set(cache_key, older)  # ... gave way to the older copy
            raise SessionStoreUnavailable("the cache failed the compare-and-set")

    saving = SessionStore(key)
    del saving["sudo"]
    saving._cache = ReplacedThenFailing(saving._cache, lambda: None)
    with suppress(SessionStoreUnavailable):
        saving.save()

    assert SessionStore(key).load() == {"_auth_user_id": "7"}


class AfterUpdate:
    """Wraps a saving session's cache store: runs ``other`` once the save's ``UPDATE``
    has committed, right before the save writes the cache again (whatever it writes:
    the moment is the same)."""

    def __init__(self, store: Any, other: Callable[[], None]) -> None:
        self._store = store
        self._other = other

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def _before(self) -> None:
        # The saved session is the only row; the save's UPDATE moves it past version 1.
        if HardenedSession.objects.filter(version__gt=1).exists():
            other, self._other = self._other, lambda: None
            other()

    def add(self, *args: Any, **kwargs: Any) -> Any:
        self._before()
        return self._store.add(*args, **kwargs)

    def cas(self, *args: Any, **kwargs: Any) -> Any:
        self._before()
        return self._store.cas(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> Any:
        self._before()
        return self._store.delete(*args, **kwargs)


# --- the database is the truth -------------------------------------------------------------


def test_deleting_the_row_and_the_copy_ends_the_session(raw_session_cache: RawCache) -> None:
    session = logged_in()
    key = session.session_key
    HardenedSession.objects.filter(pk=store_key(key)).delete()
    raw_session_cache.delete(raw_session_cache.key(store_key(key)))

    gone_everywhere(key, raw_session_cache)


def test_a_save_never_recreates_a_row_deleted_behind_the_cache(
    raw_session_cache: RawCache,
) -> None:
    session = logged_in({"_auth_user_id": "7"})
    key = session.session_key
    request = SessionStore(key)
    assert request["_auth_user_id"] == "7"  # loaded from the cached copy

    HardenedSession.objects.filter(pk=store_key(key)).delete()  # e.g. an admin's revoke
    request["step"] = 2
    with pytest.raises(UpdateError):
        request.save()
    assert row(key) is None


# --- the stock failure mode, for comparison ------------------------------------------------


@pytest.fixture
def stock_sessions_app() -> Iterator[Any]:
    """django.contrib.sessions installed for one test, with its table created."""
    apps = [*settings.INSTALLED_APPS, "django.contrib.sessions"]
    with override_settings(INSTALLED_APPS=apps):
        from django.contrib.sessions.models import Session

        with connection.schema_editor() as editor:
            editor.create_model(Session)
        try:
            yield Session
        finally:
            with connection.schema_editor() as editor:
                editor.delete_model(Session)


@pytest.mark.parametrize("variant", ["django-rediscache"])
def test_stock_cached_db_keeps_a_logged_out_session_in_the_cache(
    variant: str,
    partitioned_cache: tuple[RawCache, dict[str, Any], Partition],
    stock_sessions_app: Any,
) -> None:
    from django.contrib.sessions.backends.cached_db import SessionStore as StockStore

    _raw, servers, partition = partitioned_cache
    session = StockStore()
    session.update({"_auth_user_id": "7"})
    session.save()
    key = session.session_key

    partition.cut(servers["redis"])
    logout = StockStore(key)
    with pytest.raises(Exception) as failure:  # noqa: PT011 - whatever the client raises
        logout.flush()  # what django.contrib.auth.logout() calls
    assert "redis" in type(failure.value).__module__
    assert not stock_sessions_app.objects.filter(pk=key).exists()  # the row is gone

    partition.restore()
    # ... but the copy still loads: the logged-out session is alive again.
    assert StockStore(key).load() == {"_auth_user_id": "7"}


# --- a cache fill that meets a logout ------------------------------------------------------


class AroundFill:
    """Wraps a session's cache store: at the fill's first ``add``, runs ``before`` (a
    concurrent request), lets the add through, then runs ``after`` (a fault)."""

    def __init__(self, store: Any, before: Callable[[], None], after: Callable[[], None]) -> None:
        self._store = store
        self._before: Callable[[], None] | None = before
        self._after = after

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def add(self, *args: Any) -> Any:
        if self._before is None:
            return self._store.add(*args)
        before, self._before = self._before, None
        before()
        try:
            return self._store.add(*args)
        finally:
            self._after()


def loads_nothing(session_key: str) -> None:
    """The old cookie loads no session: ``{}``, or a 503 while a store is unreachable."""
    try:
        loaded = SessionStore(session_key).load()
    except SessionStoreUnavailable:
        return
    assert loaded == {}, f"a logged-out session still loads: {loaded}"


@variant_param()
def test_a_fill_racing_a_logout_leaves_no_copy_when_the_cache_then_fails(
    variant: str,
    partitioned_cache: tuple[RawCache, dict[str, Any], Partition],
) -> None:
    raw, servers, partition = partitioned_cache
    session = logged_in({"_auth_user_id": "7", "sudo": True})
    key = session.session_key
    raw.delete(raw.key(store_key(key)))  # the copy is evicted: the next load fills

    slow = SessionStore(key)
    slow._cache = AroundFill(
        slow._cache,
        before=lambda: SessionStore(key).delete(),  # the user logs out meanwhile
        after=lambda: partition.cut(holder(raw, key, servers)),  # then the cache fails
    )
    slow.load()  # read the row before the logout; the fill's clean-up can't reach the cache
    assert row(key) is None

    loads_nothing(key)  # during the fault
    partition.restore()
    settle(variant)
    for _ in range(3):  # after it heals, again and again
        assert SessionStore(key).load() == {}
    assert SessionStore(key).exists(key) is False


@variant_param()
@pytest.mark.postgresql
@pytest.mark.django_db(transaction=True, databases="__all__")
def test_a_fill_whose_version_recheck_fails_leaves_no_unchecked_copy(
    variant: str,
    direct_cache: tuple[RawCache, dict[str, Any]],
) -> None:
    raw, _servers = direct_cache
    with sessions_through_proxy() as proxy:
        session = logged_in({"_auth_user_id": "7", "sudo": True})
        key = session.session_key
        raw.delete(raw.key(store_key(key)))

        slow = SessionStore(key)
        slow._cache = AroundFill(
            slow._cache,
            before=lambda: SessionStore(key).delete(),  # the user logs out meanwhile
            after=proxy.cut,  # then the database fails: the re-check can't answer
        )
        slow.load()
        loads_nothing(key)  # during the fault
        proxy.restore()
        connections[PROXY_ALIAS].close()  # as a new request would (close_old_connections)
        for _ in range(3):
            assert SessionStore(key).load() == {}
        assert SessionStore(key).exists(key) is False


class BeforeCas:
    """Wraps a session's cache store: runs ``other`` right before the fill's
    compare-and-set, after its re-check of the row passed."""

    def __init__(self, store: Any, other: Callable[[], None]) -> None:
        self._store = store
        self._other = other

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    ran = False

    def cas(self, *args: Any, **kwargs: Any) -> Any:
        other, self._other = self._other, lambda: None
        other()
        self.ran = True
        return self._store.cas(*args, **kwargs)


def test_a_load_fills_the_cache_with_the_rows_record(raw_session_cache: RawCache) -> None:
    session = logged_in({"_auth_user_id": "7"})
    key = session.session_key
    cache_key = raw_session_cache.key(store_key(key))
    raw_session_cache.delete(cache_key)

    assert SessionStore(key).load() == {"_auth_user_id": "7"}
    assert raw_session_cache.get(cache_key) == bytes(row(key).data)  # type: ignore[union-attr]


def test_a_fill_marker_is_never_served(raw_session_cache: RawCache) -> None:
    session = logged_in({"_auth_user_id": "7"})
    key = session.session_key
    cache_key = raw_session_cache.key(store_key(key))
    _version, marker = fill_marker()
    raw_session_cache.delete(cache_key)
    raw_session_cache.set(cache_key, marker)

    assert SessionStore(key).load() == {"_auth_user_id": "7"}  # from the database
    HardenedSession.objects.filter(pk=store_key(key)).delete()
    assert SessionStore(key).load() == {}
    assert SessionStore(key).exists(key) is False


@pytest.mark.parametrize("other", ["logout", "save"])
def test_a_fill_lands_its_copy_only_over_its_own_marker(
    raw_session_cache: RawCache, other: str
) -> None:
    session = logged_in({"_auth_user_id": "7", "sudo": True})
    key = session.session_key
    concurrent = SessionStore(key)
    assert concurrent["sudo"] is True
    raw_session_cache.delete(raw_session_cache.key(store_key(key)))  # evicted

    def end_sudo() -> None:
        del concurrent["sudo"]
        concurrent.save()

    slow = SessionStore(key)
    slow._cache = BeforeCas(slow._cache, concurrent.delete if other == "logout" else end_sudo)
    assert slow.load() == {"_auth_user_id": "7", "sudo": True}  # read before the other
    assert isinstance(slow._cache, BeforeCas) and slow._cache.ran  # the fill got that far

    expected = {} if other == "logout" else {"_auth_user_id": "7"}
    for _ in range(2):
        assert SessionStore(key).load() == expected


class LogoutCacheSteps:
    """Wraps a logout's cache store: after its first delete runs ``after_first``; before
    its second (the clean-up after the row delete) runs ``before_second``."""

    def __init__(
        self, store: Any, after_first: Callable[[], None], before_second: Callable[[], None]
    ) -> None:
        self._store = store
        self._steps = [after_first, before_second]
        self.deletes = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def delete(self, *args: Any) -> Any:
        self.deletes += 1
        if self.deletes == 2:
            self._steps[1]()
        result = self._store.delete(*args)
        if self.deletes == 1:
            self._steps[0]()
        return result


@variant_param()
def test_a_logout_whose_clean_up_fails_answers_503_and_a_retry_ends_the_session(
    variant: str,
    partitioned_cache: tuple[RawCache, dict[str, Any], Partition],
) -> None:
    """The one gap docs/engines.rst (cached_db) names: a copy put back between a logout's two cache
    deletes outlives a failing second delete. The logout must not report success, and
    a retried logout must end the session everywhere."""
    raw, servers, partition = partitioned_cache
    session = logged_in({"_auth_user_id": "7", "sudo": True})
    key = session.session_key
    concurrent = SessionStore(key)
    assert concurrent["sudo"] is True

    def concurrent_save() -> None:  # lands the copy of its new version
        concurrent["step"] = 2
        concurrent.save()

    logout = SessionStore(key)
    logout._cache = LogoutCacheSteps(
        logout._cache,
        after_first=concurrent_save,
        before_second=lambda: partition.cut(holder(raw, key, servers)),
    )
    with pytest.raises(SessionStoreUnavailable):
        logout.delete()
    assert row(key) is None

    partition.restore()
    settle(variant)
    assert attempt_delete(key) == "deleted"  # the user tries again
    for _ in range(2):
        assert SessionStore(key).load() == {}
    gone_everywhere(key, raw)
