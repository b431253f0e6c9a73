"""Which async methods hop to a thread, and which do not (docs/engines.rst, "Async").

The cache engine runs its policy on the event loop on every cache it serves (Redis
through ``redis.asyncio``, memcached through its bounded pool, LocMemCache inline); the
db and cached_db engines run each whole operation as one ``sync_to_async`` hop, because
Django's async ORM is itself ``sync_to_async`` around each query. The last test here
fails once Django's async ORM stops hopping, so that the choice can be revisited.
"""

from __future__ import annotations

import asyncio
import inspect
from importlib import import_module
from typing import Any

import pytest
from django.db.models.query import QuerySet
from django.test import override_settings

import hardened_sessions.backends.base as base
from tests.support.servers import variant_cache


def test_the_cache_engine_is_native_on_every_cache(session_cache: str) -> None:
    with override_settings(SESSION_CACHE_ALIAS=session_cache):
        store = import_module("hardened_sessions.backends.cache").SessionStore()
        assert store.native_async


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("engine", ["db", "cached_db"])
def test_the_db_engines_hop_once_per_operation(
    engine: str, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    hops: list[str] = []
    original = base.sync_to_async

    def counting(function: Any, *args: Any, **kwargs: Any) -> Any:
        hops.append(function.__name__)
        return original(function, *args, **kwargs)

    monkeypatch.setattr(base, "sync_to_async", counting)
    with variant_cache("locmem", request) as alias, override_settings(SESSION_CACHE_ALIAS=alias):
        store_class = import_module(f"hardened_sessions.backends.{engine}").SessionStore

        async def scenario() -> None:
            session = store_class()
            assert not session.native_async
            await session.aset("a", 1)
            await session.asave()
            assert await store_class(session.session_key).aget("a") == 1
            await session.acycle_key()
            await session.aflush()

        asyncio.run(scenario())
    # A new session has nothing to load; the aget of another instance loads (one hop);
    # each other operation is one hop.
    assert hops == ["save", "load", "cycle_key", "flush"], hops


def test_djangos_async_orm_still_runs_each_query_in_a_thread() -> None:
    """Checked on Django 5.2.19, 6.0 and 6.1.3: ``QuerySet.aget`` and the other async
    ORM methods are ``sync_to_async`` around the sync ones. When this fails, Django has
    async database access: the db engines' async paths can then stop hopping
    (docs/engines.rst, "Async")."""
    for name in ("aget", "acreate", "aupdate", "adelete", "aexists"):
        source = inspect.getsource(getattr(QuerySet, name))
        assert "sync_to_async" in source, f"QuerySet.{name} no longer hops: revisit the db path"


def test_a_subclass_overriding_a_sync_primitive_alone_hops(
    monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    """A project's engine that changes ``_remove`` (say, to audit deletes) but not
    ``_aremove``: its async methods must still go through the override."""
    base_class = import_module("hardened_sessions.backends.cache").SessionStore
    removed: list[str] = []

    class Audited(base_class):  # type: ignore[misc,valid-type]
        def _remove(self, store_key: str) -> bool:
            removed.append(store_key)
            return bool(super()._remove(store_key))

    class AuditedBoth(Audited):
        async def _aremove(self, store_key: str) -> bool:
            removed.append("async:" + store_key)
            return bool(await super()._aremove(store_key))

    with variant_cache("locmem", request) as alias, override_settings(SESSION_CACHE_ALIAS=alias):
        assert not Audited().native_async
        assert AuditedBoth().native_async

        async def logout(store_class: Any) -> None:
            session = store_class()
            await session.aset("a", 1)
            await session.asave()
            await session.aflush()

        asyncio.run(logout(Audited))
        asyncio.run(logout(AuditedBoth))
    assert len(removed) == 2 and removed[1].startswith("async:"), removed
