"""Every engine against a plain-Python model of what the contract promises.

A Hypothesis ``RuleBasedStateMachine`` drives several sessions and several
"requests" (session objects loaded at different moments, so that stale saves
happen naturally) through loads, sets, deletes, saves, flushes, rotations,
revocations, ``exists`` checks, clock jumps past the idle and absolute deadlines,
and store faults injected into any store access of an operation. A small model
says what each operation must do; after every step every session the model knows
is loaded afresh and compared with it.

The invariants:

* no session ever loads another's data (a load returns exactly the model's data);
* no ended session (flushed, revoked, rotated away, past a deadline) loads again;
* no change acknowledged by a save is lost;
* a store fault never yields "no session" for a live one: the operation raises
  ``SessionStoreUnavailable`` (or ``SessionRotationFailed``), and what it reports
  is what happened.

The losses the contract accepts are part of the model, each named where it applies:

* ``LATER_END_WINS``: a later flush, revoke or rotation ends the session, whatever
  was saved before it; a save from a request that loaded it before then raises
  ``UpdateError`` instead of bringing it back;
* ``LAST_WRITER_WINS``: two saves that change the same key: the later one stands;
* ``ROTATION_AFTER_REVOKE_STARTS_EMPTY``: ``cycle_key`` after a concurrent end of
  the session carries nothing over;
* ``ROTATION_CARRIES_ITS_VIEW``: ``cycle_key`` moves the rotating request's own view
  of the data (as Django's does): a key another request saved after this one loaded
  is not carried to the new key;
* ``DEAD_NODE_IS_MISSING`` (memcached) is not exercised here: faults are injected at
  the engine's store seam, where a fault is always an error; the memcached pool's
  dead-node rule has its own tests (tests/test_scaleout.py).

Faults are injected at the one seam every engine shares, the store primitives of
:class:`hardened_sessions.backends.base.HardenedSessionBase` (``_read``,
``_write_new``, ``_write_update``, ``_remove``, ``_read_for_update``): the n-th
access of an operation raises ``SessionStoreUnavailable`` before it touches the
store. Real outages (stopped servers, cut connections) are covered by
tests/test_threat_store_outage.py and tests/test_threat_cache_outage.py.

CI runs ``HS_TEST_MODEL_EXAMPLES`` (default 100) examples of ``HS_TEST_MODEL_STEPS``
(default 25) steps per engine. A longer run, for example before a release::

    HS_TEST_MODEL_EXAMPLES=2000 HS_TEST_MODEL_STEPS=60 pytest tests/test_stateful_model.py
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from importlib import import_module
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.contrib.sessions.backends.base import UpdateError
from django.test import override_settings
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from hardened_sessions import keys
from hardened_sessions.exceptions import SessionRotationFailed, SessionStoreUnavailable
from hardened_sessions.stores.redis_async import native_async_supported
from tests.conftest import require_server
from tests.support.clock import clock_at
from tests.support.routers import SessionsAliasRouter
from tests.support.servers import variant_cache

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")

EXAMPLES = int(os.environ.get("HS_TEST_MODEL_EXAMPLES", "100"))
STEPS = int(os.environ.get("HS_TEST_MODEL_STEPS", "25"))

IDLE = 600
ABSOLUTE = 3600
CONFIG = {"IDLE_TIMEOUT": IDLE, "ABSOLUTE_TIMEOUT": ABSOLUTE}

# engine id -> (SESSION_ENGINE, database alias or None, cache variant or None)
ENGINES: dict[str, tuple[str, str | None, str | None]] = {
    "db-sqlite": ("hardened_sessions.backends.db", "default", None),
    "db-postgresql": ("hardened_sessions.backends.db", "postgresql", None),
    "cache-locmem": ("hardened_sessions.backends.cache", None, "locmem"),
    "cache-redis": ("hardened_sessions.backends.cache", None, "django-redis"),
    "cache-memcached": ("hardened_sessions.backends.cache", None, "pymemcache"),
    "cached_db-redis": ("hardened_sessions.backends.cached_db", "default", "django-redis"),
    # The same model through the async API (aload, asave, acycle_key, ...), which runs
    # the policy on the event loop: Redis through its asyncio store, memcached through
    # its bounded thread pool, LocMemCache inline.
    "cache-redis-async": ("hardened_sessions.backends.cache", None, "django-redis"),
    "cache-rediscache-async": ("hardened_sessions.backends.cache", None, "django-rediscache"),
    "cache-memcached-async": ("hardened_sessions.backends.cache", None, "pymemcache"),
    "cache-locmem-async": ("hardened_sessions.backends.cache", None, "locmem"),
}

PRIMITIVES = ("_read", "_write_new", "_write_update", "_remove", "_read_for_update")
DATA_KEYS = ("a", "b", "c")


# ----------------------------------------------------------------------- fault seam


@dataclass
class Faults:
    """Fail the n-th store access from now (``countdown``); ``hit`` names the one
    that failed."""

    countdown: int | None = None
    hit: str | None = None

    def arm(self, nth: int | None) -> None:
        self.countdown = nth
        self.hit = None

    def check(self, name: str) -> None:
        if self.countdown is None:
            return
        if self.countdown == 0:
            self.countdown = None
            self.hit = name
            raise SessionStoreUnavailable(f"injected fault in {name}")
        self.countdown -= 1


def faulty_store_class(engine: str, faults: Faults) -> type:
    base: type = import_module(engine).SessionStore

    def wrap(name: str) -> Any:
        original = getattr(base, name)

        def primitive(self: Any, *args: Any) -> Any:
            faults.check(name)
            return original(self, *args)

        primitive.__name__ = name
        return primitive

    namespace = {name: wrap(name) for name in PRIMITIVES if hasattr(base, name)}
    return type(f"Faulty{base.__name__}", (base,), namespace)


class EventLoop:
    """One event loop in a thread of its own, for the async-driven model: every call
    runs on it (as under an ASGI server), so the asyncio store keeps one pool."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=60)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def async_driven_store_class(engine: str, faults: Faults, loop: EventLoop) -> type:
    """The engine, its sync API answered by its async one (``load`` by ``aload``...),
    with the faults injected into the async primitives under the sync names."""
    base: type = import_module(engine).SessionStore

    def wrap(name: str) -> Any:
        original = getattr(base, "_a" + name[1:])

        async def primitive(self: Any, *args: Any) -> Any:
            faults.check(name)
            return await original(self, *args)

        primitive.__name__ = "_a" + name[1:]
        return primitive

    def driven(name: str) -> Any:
        twin = getattr(base, "a" + name)

        def method(self: Any, *args: Any) -> Any:
            assert self.native_async, "the async model needs a store with an asyncio client"
            return loop.run(twin(self, *args))

        method.__name__ = name
        return method

    namespace = {"_a" + name[1:]: wrap(name) for name in PRIMITIVES}
    for name in ("load", "exists", "create", "save", "delete", "flush", "cycle_key", "touch"):
        namespace[name] = driven(name)
    return type(f"AsyncDriven{base.__name__}", (base,), namespace)


# ----------------------------------------------------------------------- the model


@dataclass
class Session:
    data: dict[str, Any]
    created: int
    activity: int
    ended: bool = False


@dataclass
class Request:
    """A request's session object and what the model expects it to hold."""

    obj: Any
    key: str | None  # the key it holds now (None: keyless, a save creates one)
    base: dict[str, Any] | None  # the data as last loaded or saved (None: no record)
    view: dict[str, Any] = field(default_factory=dict)


def diff(old: dict[str, Any], new: dict[str, Any]) -> tuple[dict[str, Any], set[str]]:
    return {k: v for k, v in new.items() if old.get(k, object()) != v}, set(old) - set(new)


class EngineModel(RuleBasedStateMachine):
    """Bound to one engine by :func:`machine_for`."""

    store_class: type
    faults: Faults
    clock: Any

    def __init__(self) -> None:
        super().__init__()
        self.sessions: dict[str, Session] = {}
        self.requests: list[Request] = []
        self.owners = 0
        # Each example starts at the real time (stores' own TTLs count from it).
        self.clock.now = time.time()

    # -- helpers -----------------------------------------------------------------

    def now(self) -> float:
        return float(self.clock.now)

    def alive(self, key: str) -> bool:
        s = self.sessions[key]
        if s.ended:
            return False
        now = self.now()
        return now < s.activity + IDLE and now < s.created + ABSOLUTE

    def add_session(self, key: str, data: dict[str, Any]) -> None:
        assert key not in self.sessions, "a fresh key was issued twice"
        now = int(self.now())
        self.sessions[key] = Session(dict(data), created=now, activity=now)

    def end(self, key: str | None) -> None:
        if key is not None and key in self.sessions:
            self.sessions[key].ended = True

    def pick(self, data: st.DataObject, items: list[Any]) -> Any:
        return items[data.draw(st.integers(0, len(items) - 1))]

    def fault_plan(self, data: st.DataObject) -> int | None:
        """None (no fault), or which store access of the operation fails."""
        return data.draw(st.one_of(st.none(), st.integers(0, 2)), label="fault at access")

    def drop(self, request: Request) -> None:
        # A request that met a store failure or an interrupted session ends (503/400).
        self.requests.remove(request)

    # -- rules -------------------------------------------------------------------

    @rule(values=st.dictionaries(st.sampled_from(DATA_KEYS), st.integers(0, 9), max_size=3))
    def new_session(self, values: dict[str, int]) -> None:
        self.owners += 1
        data = {"owner": self.owners, **values}
        obj = self.store_class()
        obj.update(data)
        obj.save()
        self.add_session(obj.session_key, data)
        self.requests.append(Request(obj, obj.session_key, dict(data), dict(data)))

    @rule(data=st.data())
    def open_request(self, data: st.DataObject) -> None:
        """A new request loads a known session (live or ended) or an unknown key."""
        choices = [*self.sessions, None]
        key = self.pick(data, choices) or keys.generate_key()
        nth = self.fault_plan(data)
        obj = self.store_class(key)
        self.faults.arm(nth)
        try:
            loaded = dict(obj.items())
        except SessionStoreUnavailable:
            assert self.faults.hit is not None, "a store failure nobody injected"
            return
        finally:
            self.faults.arm(None)
        known = key in self.sessions
        if known and self.alive(key):
            assert loaded == self.sessions[key].data, "a load returned other data"
            self.requests.append(Request(obj, key, dict(loaded), dict(loaded)))
        else:
            assert loaded == {}, "an ended or unknown session loaded data"
            assert obj.session_key is None
            if known:
                self.end(key)  # past a deadline: gone for good
            self.requests.append(Request(obj, None, None, {}))

    @rule(data=st.data(), value=st.integers(0, 9))
    def set_value(self, data: st.DataObject, value: int) -> None:
        if not self.requests:
            return
        request = self.pick(data, self.requests)
        name = data.draw(st.sampled_from(DATA_KEYS))
        request.obj[name] = value
        request.view[name] = value

    @rule(data=st.data())
    def delete_value(self, data: st.DataObject) -> None:
        candidates = [r for r in self.requests if set(r.view) & set(DATA_KEYS)]
        if not candidates:
            return
        request = self.pick(data, candidates)
        name = self.pick(data, sorted(set(request.view) & set(DATA_KEYS)))
        del request.obj[name]
        del request.view[name]

    @rule(data=st.data())
    def save(self, data: st.DataObject) -> None:
        candidates = [r for r in self.requests if r.base is not None or r.view]
        if not candidates:
            return
        request = self.pick(data, candidates)
        self.save_request(request, self.fault_plan(data))

    def save_request(self, request: Request, nth: int | None) -> None:
        self.faults.arm(nth)
        try:
            request.obj.save()
        except SessionStoreUnavailable:
            # Nothing was written: the failing access never reached the store, and
            # every write is the last access of its attempt.
            assert self.faults.hit is not None, "a store failure nobody injected"
            self.drop(request)
            return
        except UpdateError:
            # LATER_END_WINS: the session ended after this request loaded it.
            assert request.key is not None and not self.alive(request.key), (
                "a save of a live session was refused"
            )
            self.drop(request)
            return
        finally:
            self.faults.arm(None)
        if request.base is None:
            # No record behind this request: the save created a fresh session.
            assert request.obj.session_key != request.key
            request.key = request.obj.session_key
            self.add_session(request.key, request.view)
        else:
            assert request.key is not None
            assert self.alive(request.key), "a save brought an ended session back"
            session = self.sessions[request.key]
            changed, deleted = diff(request.base, request.view)
            # LAST_WRITER_WINS for the keys this save changed.
            session.data.update(changed)
            for name in deleted:
                session.data.pop(name, None)
            session.activity = int(self.now())
            request.view = dict(session.data)
        request.base = dict(request.view)
        assert dict(request.obj.items()) == request.view, "memory differs from what was saved"

    @rule(
        data=st.data(),
        first=st.dictionaries(st.sampled_from(DATA_KEYS), st.none() | st.integers(0, 9)),
        second=st.dictionaries(st.sampled_from(DATA_KEYS), st.none() | st.integers(0, 9)),
    )
    def stale_save(
        self, data: st.DataObject, first: dict[str, int | None], second: dict[str, int | None]
    ) -> None:
        """Two requests load one session; the first saves, then the second (stale) one.

        Each change maps a key to a value, or to None for "delete it".
        """
        live = [key for key in self.sessions if self.alive(key)]
        if not live:
            return
        key = self.pick(data, live)
        pair = [Request(self.store_class(key), key, None) for _ in range(2)]
        for request in pair:
            request.view = dict(request.obj.items())
            request.base = dict(request.view)
            self.requests.append(request)
        for request, changes in zip(pair, (first, second), strict=True):
            for name, value in changes.items():
                if value is None:
                    request.obj.pop(name, None)
                    request.view.pop(name, None)
                else:
                    request.obj[name] = value
                    request.view[name] = value
        self.save_request(pair[0], None)
        self.save_request(pair[1], None)

    @rule(data=st.data())
    def flush(self, data: st.DataObject) -> None:
        if not self.requests:
            return
        request = self.pick(data, self.requests)
        self.faults.arm(self.fault_plan(data))
        try:
            request.obj.flush()
        except SessionStoreUnavailable:
            assert self.faults.hit == "_remove", f"unexpected failure in {self.faults.hit}"
            self.drop(request)  # the session stays as it was
            return
        finally:
            self.faults.arm(None)
        if request.base is not None:
            self.end(request.key)
        request.key, request.base, request.view = None, None, {}

    @rule(data=st.data())
    def cycle_key(self, data: st.DataObject) -> None:
        if not self.requests:
            return
        request = self.pick(data, self.requests)
        old = request.key if request.base is not None else None
        was_alive = old is not None and self.alive(old)
        self.faults.arm(self.fault_plan(data))
        try:
            request.obj.cycle_key()
        except SessionRotationFailed:
            hit = self.faults.hit
            assert hit is not None, "a rotation failure nobody injected"
            if hit != "_remove":
                # The old record was deleted, the new one could not be stored: the
                # session is empty and keyless, and the request answers 503.
                self.end(old)
            self.drop(request)
            return
        finally:
            self.faults.arm(None)
        new = request.obj.session_key
        assert keys.is_well_formed(new) and new != old
        self.end(old)
        if old is not None and not was_alive:
            # ROTATION_AFTER_REVOKE_STARTS_EMPTY
            request.view = {}
        # ROTATION_CARRIES_ITS_VIEW: the request's own view moves to the new key.
        self.add_session(new, request.view)
        request.key, request.base = new, dict(request.view)
        assert dict(request.obj.items()) == request.view

    @rule(data=st.data())
    def revoke(self, data: st.DataObject) -> None:
        if not self.sessions:
            return
        key = self.pick(data, list(self.sessions))
        self.faults.arm(self.fault_plan(data))
        try:
            existed = self.store_class().revoke(keys.store_key(key))
        except SessionStoreUnavailable:
            assert self.faults.hit is not None
            return  # reported as failed: the session stays as it was
        finally:
            self.faults.arm(None)
        if not self.sessions[key].ended and self.alive(key):
            assert existed, "a live session's revoke found nothing"
        self.end(key)

    @rule(data=st.data())
    def exists(self, data: st.DataObject) -> None:
        if not self.sessions:
            return
        key = self.pick(data, list(self.sessions))
        self.faults.arm(self.fault_plan(data))
        try:
            answer = self.store_class().exists(key)
        except SessionStoreUnavailable:
            assert self.faults.hit is not None
            return
        finally:
            self.faults.arm(None)
        assert answer == self.alive(key)

    @rule(seconds=st.integers(1, 20))
    def tick(self, seconds: int) -> None:
        """Time passes within a request: nothing reaches a deadline."""
        self.clock.now += seconds

    @rule(seconds=st.sampled_from([400, 650, 4000]))
    def jump(self, seconds: int) -> None:
        """Time passes between requests: idle (600 s) and absolute (3600 s) deadlines
        fall for the sessions they concern. Requests in flight end first."""
        self.requests.clear()
        self.clock.now += seconds

    # -- invariants ----------------------------------------------------------------

    @invariant()
    def every_session_loads_as_the_model_says(self) -> None:
        for key in list(self.sessions):
            loaded = dict(self.store_class(key).items())
            if self.alive(key):
                assert loaded == self.sessions[key].data, (
                    f"a live session lost or gained data: {loaded} != {self.sessions[key].data}"
                )
            else:
                assert loaded == {}, "an ended session loaded again"
                self.sessions[key].ended = True


# ----------------------------------------------------------------------- the test


@contextmanager
def engine_settings(engine_id: str, request: pytest.FixtureRequest) -> Iterator[None]:
    engine, alias, variant = ENGINES[engine_id]
    with ExitStack() as stack:
        if alias is not None and alias not in django_settings.DATABASES:
            require_server(alias, f"the {engine_id} model needs the {alias!r} database")
        if alias not in (None, "default"):
            stack.enter_context(override_settings(DATABASE_ROUTERS=[SessionsAliasRouter(alias)]))
        if variant is not None:
            stack.enter_context(variant_cache(variant, request))
        stack.enter_context(override_settings(SESSION_ENGINE=engine, HARDENED_SESSIONS=CONFIG))
        yield


@pytest.mark.timeout(600)
@pytest.mark.parametrize("engine_id", list(ENGINES))
def test_engine_behaves_as_the_model(engine_id: str, request: pytest.FixtureRequest) -> None:
    with ExitStack() as stack:
        stack.enter_context(engine_settings(engine_id, request))
        clock = stack.enter_context(clock_at(time.time()))
        faults = Faults()
        if engine_id.endswith("-async"):
            if "redis" in engine_id and not native_async_supported():
                # Not a missing server: on this redis-py the async API runs the sync
                # policy in a thread, which the cache-redis model already checks.
                pytest.skip("redis-py before 5.0.1: no asyncio client for the store")
            loop = EventLoop()
            stack.callback(loop.close)
            store_class = async_driven_store_class(ENGINES[engine_id][0], faults, loop)
        else:
            store_class = faulty_store_class(ENGINES[engine_id][0], faults)
        machine = type(
            "Model",
            (EngineModel,),
            {
                "store_class": store_class,
                "faults": faults,
                "clock": clock,
            },
        )
        run_state_machine_as_test(
            machine,
            settings=settings(
                max_examples=EXAMPLES,
                stateful_step_count=STEPS,
                deadline=None,
                database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
            ),
        )
