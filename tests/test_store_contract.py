"""The store contract: one compare-and-set token type, and stores that never parse records.

Every store's ``get`` answers ``(bytes, handle)`` (its own compare-and-set handle, or
``None``); ``add`` and ``cas`` answer a :class:`~hardened_sessions.stores.token.Token`
or ``None``; the engine builds the token of a loaded record once it verified, and hands
``cas`` the head bytes the stored record must start with, so no module under
``hardened_sessions/stores/`` reads the record layout.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

import hardened_sessions
from hardened_sessions import keys
from hardened_sessions.backends.base import Token as EngineToken
from hardened_sessions.backends.cache import SessionStore as CacheSession
from hardened_sessions.backends.db import SessionStore as DBSession
from hardened_sessions.record import version_head
from hardened_sessions.stores import store_for_cache
from hardened_sessions.stores.token import Token
from tests.support.helpers import new_session

STORES = Path(hardened_sessions.__file__).parent / "stores"
# ``from ..record import x``, ``from .. import record``, ``from hardened_sessions.record
# import x``, ``import hardened_sessions.record``, ``from hardened_sessions import record``.
RECORD_IMPORT = re.compile(
    r"^\s*(from\s+(\.\.record|hardened_sessions\.record)\b"
    r"|from\s+(\.\.|hardened_sessions)\s+import\s+.*\brecord\b"
    r"|import\s+hardened_sessions\.record\b)",
    re.MULTILINE,
)


def key(n: int) -> str:
    return f"{n:064x}"


def value(version: int, body: bytes = b'"p":1}') -> memoryview:
    return memoryview(version_head(version) + body)


def test_no_store_module_imports_the_record_layout() -> None:
    modules = sorted(STORES.glob("*.py"))
    assert modules, STORES
    offenders = [
        f"{path.name}: {match.group(0).strip()}"
        for path in modules
        for match in RECORD_IMPORT.finditer(path.read_text())
    ]
    assert offenders == []


def test_the_pattern_catches_every_way_of_importing_the_record_module() -> None:
    for line in (
        "from ..record import peek_version",
        "from hardened_sessions.record import version_head",
        "from .. import keys, record",
        "from hardened_sessions import record",
        "import hardened_sessions.record",
        "    from ..record import version_head  # inside a function",
    ):
        assert RECORD_IMPORT.search(line), line
    for line in ("from ..cap import UserCap", "from .redis_cap import capped", "# record"):
        assert not RECORD_IMPORT.search(line), line


def test_the_token_is_a_frozen_value_with_an_optional_handle() -> None:
    token = Token(3)
    assert token == Token(3, None) and token != Token(3, 17) and token != Token(4)
    assert hash(token) == hash(Token(3))
    assert not hasattr(token, "__dict__")  # slots
    with pytest.raises(dataclasses.FrozenInstanceError):
        token.version = 4  # type: ignore[misc]


def test_engines_and_stores_share_one_token_type() -> None:
    assert EngineToken is Token


def memcached(request: pytest.FixtureRequest) -> bool:
    return bool(request.node.callspec.params["session_cache"] == "pymemcache")


def test_every_store_answers_handles_and_tokens(
    session_cache: str, request: pytest.FixtureRequest
) -> None:
    store = store_for_cache(session_cache)
    assert store.get(key(1)) is None
    assert store.add(key(1), value(1), 60, 1) == Token(1)
    assert store.add(key(1), value(1, b'"p":2}'), 60, 1) is None  # taken

    found = store.get(key(1))
    assert found is not None
    raw, handle = found
    assert raw == bytes(value(1))
    # memcached's cas unique; the other stores need no more than the version.
    assert isinstance(handle, (bytes, int)) if memcached(request) else handle is None
    read = Token(1, handle)

    assert store.cas(key(1), value(2), 60, read, 2, head=version_head(1)) == Token(2)
    # The token read before that write names a record that is gone.
    assert store.cas(key(1), value(3), 60, read, 3, head=version_head(1)) is None
    # A token without a handle (right after a write): the head decides.
    assert store.cas(key(1), value(3), 60, Token(1), 3, head=version_head(1)) is None
    assert store.cas(key(1), value(3), 60, Token(2), 3, head=version_head(2)) == Token(3)
    assert store.get(key(1)) is not None
    assert store.get(key(1))[0] == bytes(value(3))  # type: ignore[index]


def test_a_store_compares_the_head_the_engine_hands_it(session_cache: str) -> None:
    """The store compares bytes it is given: a head that is no record's works too."""
    store = store_for_cache(session_cache)
    assert store.add(key(2), memoryview(b"opaque:7|rest"), 60, 7) == Token(7)
    assert store.cas(key(2), memoryview(b"x"), 60, Token(7), 8, head=b"opaque:6|") is None
    assert store.cas(key(2), memoryview(b"x"), 60, Token(7), 8, head=b"opaque:7|") == Token(8)


def test_the_cache_engine_keeps_a_token_of_each_record(
    session_cache: str, request: pytest.FixtureRequest
) -> None:
    session = CacheSession()
    session["a"] = 1
    session.save()
    assert session._token == Token(1)
    session["a"] = 2
    session.save()
    assert session._token == Token(2)

    loaded = CacheSession(session.session_key)
    loaded.load()
    token = loaded._token
    assert isinstance(token, Token) and token.version == 2
    assert (token.cas is not None) is memcached(request)
    loaded["a"] = 3
    loaded.save()  # with the cas unique it read (memcached), or the head of version 2
    assert loaded._token == Token(3)


@pytest.mark.django_db
def test_the_db_engine_keeps_a_token_with_the_rows_version() -> None:
    key_ = new_session(DBSession, {"a": 1})
    loaded = DBSession(key_)
    loaded.load()
    assert loaded._token == Token(1, 1)  # the handle: the row's version column
    loaded["a"] = 2
    loaded.save()
    assert loaded._token == Token(2)
    assert keys.is_well_formed(loaded.session_key)
