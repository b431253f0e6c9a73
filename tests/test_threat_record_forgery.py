"""Threat: a forged, tampered, transplanted or hostile stored record.

Whoever can write to the session store (a leaked database password, a shared
Redis, a backup restored by the wrong person) must not be able to make a
session say something the application did not sign for, and whatever bytes
sit in the store, loading them must end in ``CorruptRecord`` (the engine then
treats the session as missing), never in another exception, never in pickle.

Hostile payloads are signed correctly here (with the module's own signing
helper), so that they reach the parser: a test whose record failed on the
signature would prove nothing about parsing. Those tests therefore check that
the rejection reason is *not* the signature.
"""

from __future__ import annotations

import ast
import base64
import contextlib
import hashlib
import json
import logging
import pickle
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from django.conf import settings
from django.test import override_settings
from django.utils import timezone
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

import hardened_sessions
from hardened_sessions import keys, record
from hardened_sessions.backends.db import SessionStore
from hardened_sessions.buffers import RecordBuffer
from hardened_sessions.models import HardenedSession
from hardened_sessions.record import MAX_DEPTH, PREFIX, CorruptRecord, Record
from tests.support.helpers import buffer_array

NOW = 1_700_000_000
STORE_KEY = hashlib.sha256(b"the victim's session key").hexdigest()
OTHER_STORE_KEY = hashlib.sha256(b"the attacker's session key").hexdigest()
# Large enough for every hostile payload below: the size bound has its own tests, and
# these must reach the signature check and the parser.
BIG = 16 * 1024 * 1024

on_every_database = pytest.mark.django_db(transaction=True, databases="__all__")
# Every case holds whichever JSON path writes and reads the record.
pytestmark = pytest.mark.usefixtures("json_backend")
fuzz = hypothesis_settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


# ---------------------------------------------------------------------------- helpers


def make_record(data: dict[str, Any], **fields: Any) -> Record:
    values: dict[str, Any] = {
        "version": 1,
        "created": NOW,
        "activity": NOW,
        "expiry": NOW + 1_209_600,
        "idle_deadline": None,
        "absolute_deadline": None,
    }
    values.update(fields)
    return Record(data=data, **values)


def encoded(rec: Record, store_key: str = STORE_KEY, max_bytes: int = BIG) -> bytes:
    buf = RecordBuffer()
    size = record.encode(rec, store_key, buf, max_bytes)
    raw = buf.getvalue()
    assert size == len(raw)
    return raw


def sign(payload: bytes, store_key: str = STORE_KEY, secret: str | None = None) -> bytes:
    """A record around ``payload`` whose signature verifies (forged with the module's helper)."""
    key = settings.SECRET_KEY if secret is None else secret
    return PREFIX + payload + b"." + record._signature(store_key, payload, key)


def payload(*, drop: tuple[str, ...] = (), extra: str = "", **fields: str) -> bytes:
    """Payload JSON text, field by field, so that invalid JSON can be written too."""
    values = {
        "n": "1",
        "c": str(NOW),
        "a": str(NOW),
        "e": str(NOW + 1_209_600),
        "i": "null",
        "x": "null",
        "d": '{"k":"v"}',
    }
    values.update(fields)
    parts = [f'"{name}":{value}' for name, value in values.items() if name not in drop]
    return ("{" + ",".join(parts) + extra + "}").encode("utf-8")


def nested_dicts(depth: int) -> str:
    """JSON text of an object nested ``depth`` levels deep (``{}`` is one level)."""
    return '{"k":' * (depth - 1) + "{}" + "}" * (depth - 1)


def nested_data(depth: int, container: type = dict) -> Any:
    """A Python value nested ``depth`` levels deep, built without recursion."""
    value: Any = container()
    for _ in range(depth - 1):
        value = {"k": value} if container is dict else container([value])
    return value


def rejected(raw: bytes, store_key: str = STORE_KEY, max_bytes: int = BIG) -> CorruptRecord:
    with pytest.raises(CorruptRecord) as info:
        record.decode(raw, store_key, max_bytes)
    return info.value


def rejected_after_signature(raw: bytes) -> CorruptRecord:
    """The record is refused by the parser or the type checks, not by the signature."""
    exc = rejected(raw)
    assert exc.reason != "bad signature", "the forged record did not even verify"
    return exc


def key_of(session: SessionStore) -> str:
    key = session.session_key
    assert key is not None
    return key


def row_count(alias: str) -> int:
    return HardenedSession.objects.using(alias).count()


# ---------------------------------------------------------------------------- round trip


def test_round_trip_keeps_data_and_metadata() -> None:
    rec = make_record(
        {"user": "alice", "n": 3, "f": 1.5, "ok": True, "none": None, "l": [1, {"a": "é"}]},
        version=7,
        idle_deadline=NOW + 600,
        absolute_deadline=NOW + 3600,
    )
    raw = encoded(rec)
    assert raw.startswith(PREFIX)
    back = record.decode(raw, STORE_KEY, len(raw))
    assert back == rec
    assert back.data == rec.data


def test_forging_helper_makes_records_that_verify() -> None:
    # The control for every "signed but hostile" test below: a well-formed payload signed
    # with the helper loads, so their rejections come from the parser.
    back = record.decode(sign(payload()), STORE_KEY, BIG)
    assert back.data == {"k": "v"}
    assert back.version == 1


# ---------------------------------------------------------------------------- tampering


@pytest.fixture(scope="module")
def stored() -> bytes:
    return encoded(make_record({"_auth_user_id": "42", "role": "user", "cart": [1, 2, 3]}))


@fuzz
@given(data=st.data())
def test_any_single_flipped_byte_is_rejected(stored: bytes, data: st.DataObject) -> None:
    position = data.draw(st.integers(0, len(stored) - 1), label="position")
    flip = data.draw(st.integers(1, 255), label="xor")
    tampered = bytearray(stored)
    tampered[position] ^= flip
    rejected(bytes(tampered))


def test_every_position_is_covered_by_the_signature(stored: bytes) -> None:
    # Exhaustive over positions (one flip each), so no byte is left out by chance.
    for position in range(len(stored)):
        tampered = bytearray(stored)
        tampered[position] ^= 0x01
        rejected(bytes(tampered))


@fuzz
@given(cut=st.integers(min_value=1), tail=st.binary(max_size=8))
def test_truncated_or_extended_record_is_rejected(stored: bytes, cut: int, tail: bytes) -> None:
    rejected(stored[: len(stored) - 1 - cut % len(stored)])
    rejected(stored + (tail or b"\x00"))


def test_copy_under_another_store_key_does_not_verify(stored: bytes) -> None:
    assert record.decode(stored, STORE_KEY, BIG).data["_auth_user_id"] == "42"
    assert rejected(stored, store_key=OTHER_STORE_KEY).reason == "bad signature"


def test_rewritten_payload_with_the_old_signature_is_rejected(stored: bytes) -> None:
    forged = stored.replace(b'"role":"user"', b'"role":"root"')
    assert forged != stored and len(forged) == len(stored)
    assert rejected(forged).reason == "bad signature"


# ---------------------------------------------------------------------------- key rotation

OLD_SECRET = "old-secret-key-" + "o" * 50
NEW_SECRET = "new-secret-key-" + "n" * 50


def test_record_signed_with_a_fallback_key_verifies() -> None:
    with override_settings(SECRET_KEY=OLD_SECRET, SECRET_KEY_FALLBACKS=[]):
        raw = encoded(make_record({"who": "alice"}))
    with override_settings(SECRET_KEY=NEW_SECRET, SECRET_KEY_FALLBACKS=[OLD_SECRET]):
        assert record.decode(raw, STORE_KEY, BIG).data == {"who": "alice"}
        # New records are signed with the current key, not with a fallback...
        fresh = encoded(make_record({"who": "bob"}))
    with override_settings(SECRET_KEY=NEW_SECRET, SECRET_KEY_FALLBACKS=[]):
        assert record.decode(fresh, STORE_KEY, BIG).data == {"who": "bob"}
        # ...and once the old key is retired, its records stop verifying.
        assert rejected(raw).reason == "bad signature"


def test_record_signed_with_an_unrelated_secret_does_not_verify() -> None:
    raw = sign(payload(), secret="an-attacker-guessed-this-" + "x" * 40)
    with override_settings(SECRET_KEY=NEW_SECRET, SECRET_KEY_FALLBACKS=[OLD_SECRET]):
        assert rejected(raw).reason == "bad signature"
    assert rejected(raw).reason == "bad signature"


def test_record_signed_with_the_secret_but_another_salt_does_not_verify() -> None:
    # Another feature's HMAC over the same bytes (Django's own signing salt) is no session.
    from django.utils.crypto import salted_hmac

    body = payload()
    mac = salted_hmac("django.core.signing", STORE_KEY, algorithm="sha256")
    mac.update(b"\n")
    mac.update(body)
    signature = base64.urlsafe_b64encode(mac.digest())[:43]
    assert rejected(PREFIX + body + b"." + signature).reason == "bad signature"


# ---------------------------------------------------------------------------- hostile payloads

DEEP = 100_000

HOSTILE_PAYLOADS = {
    # nesting: far past the parser's recursion limit, and just past the data bound
    "100k nested lists in data": payload(d='{"k":' + "[" * DEEP + "]" * DEEP + "}"),
    "100k nested objects in data": payload(d='{"k":' * DEEP + "1" + "}" * DEEP),
    "100k nested lists as version": payload(n="[" * DEEP + "]" * DEEP),
    "100k unclosed brackets": payload(d="[" * DEEP),
    "data nested MAX_DEPTH levels": payload(d=nested_dicts(MAX_DEPTH)),
    "data nested MAX_DEPTH+1 levels": payload(d=nested_dicts(MAX_DEPTH + 1)),
    "lists nested MAX_DEPTH+1 levels": payload(d='{"k":' + "[" * MAX_DEPTH + "]" * MAX_DEPTH + "}"),
    # numbers
    "5000-digit version": payload(n="9" * 5000),
    "5000-digit created": payload(c="1" * 5000),
    "5000-digit integer in data": payload(d='{"k":' + "9" * 5000 + "}"),
    "5000-digit negative integer in data": payload(d='{"k":-' + "9" * 5000 + "}"),
    "NaN in data": payload(d='{"k":NaN}'),
    "Infinity in data": payload(d='{"k":Infinity}'),
    "-Infinity in data": payload(d='{"k":-Infinity}'),
    "1e999 in data": payload(d='{"k":1e999}'),
    "-1e999 in data": payload(d='{"k":-1e999}'),
    "NaN as expiry": payload(e="NaN"),
    "1e999 as expiry": payload(e="1e999"),
    # wrong types
    "data is a list": payload(d="[]"),
    "data is a string": payload(d='"{}"'),
    "data is null": payload(d="null"),
    "data is a number": payload(d="1"),
    "version is true": payload(n="true"),
    "version is false": payload(n="false"),
    "version is negative": payload(n="-1"),
    "version is null": payload(n="null"),
    "version is a string": payload(n='"1"'),
    "version is a float": payload(n="1.0"),
    "created is negative": payload(c="-5"),
    "expiry is an object": payload(e="{}"),
    "idle deadline is true": payload(i="true"),
    "absolute deadline is negative": payload(x="-1"),
    "absolute deadline is a string": payload(x='"tomorrow"'),
    "missing data": payload(drop=("d",)),
    "missing version": payload(drop=("n",)),
    "missing absolute deadline": payload(drop=("x",)),
    "extra field": payload(extra=',"z":1'),
    "extra field replacing one": payload(drop=("x",), extra=',"X":null'),
    "payload is a list": b"[1,2,3,4,5,6,7]",
    "payload is a string": b'"hs1"',
    "payload is null": b"null",
    "payload is empty object": b"{}",
    # not JSON
    "trailing garbage": payload() + b"x",
    "two documents": payload() + payload(),
    "truncated document": payload()[:-1],
    "single quotes": payload().replace(b'"', b"'"),
    "control character in a string": payload(d='{"k":"a\x01b"}'),
    "utf-8 byte order mark": b"\xef\xbb\xbf" + payload(),
    # not UTF-8
    "invalid byte 0xff": payload(d='{"k":"#"}').replace(b"#", b"\xff"),
    "overlong encoding of /": payload(d='{"k":"#"}').replace(b"#", b"\xc0\xaf"),
    "utf-8 encoded surrogate": payload(d='{"k":"#"}').replace(b"#", b"\xed\xa0\x80"),
    "truncated multibyte sequence": payload(d='{"k":"#"}').replace(b"#", b"\xe2\x82"),
    "latin-1 text": payload(d='{"k":"#"}').replace(b"#", "é".encode("latin-1")),
    "utf-16": payload().decode("ascii").encode("utf-16"),
    "NUL bytes": b"\x00" * 64,
}


@pytest.mark.parametrize("body", HOSTILE_PAYLOADS.values(), ids=HOSTILE_PAYLOADS.keys())
def test_signed_hostile_payload_is_corrupt_never_a_crash(body: bytes) -> None:
    rejected_after_signature(sign(body))


def test_data_nested_at_the_bound_is_accepted() -> None:
    # The boundary control for the nesting cases above: MAX_DEPTH - 1 levels load.
    back = record.decode(sign(payload(d=nested_dicts(MAX_DEPTH - 1))), STORE_KEY, BIG)
    assert back.data == nested_data(MAX_DEPTH - 1)


def test_the_utf8_cases_differ_from_a_valid_record_only_in_their_encoding() -> None:
    # Their control: the same payload with the character well encoded loads.
    for text in ("#", "é", "\u2603", "\U0001f512"):
        body = payload(d='{"k":"#"}').replace(b"#", text.encode("utf-8"))
        assert record.decode(sign(body), STORE_KEY, BIG).data == {"k": text}


def test_brackets_inside_strings_are_not_nesting() -> None:
    text = json.dumps({"k": "[{" * 200})
    back = record.decode(sign(payload(d=text)), STORE_KEY, BIG)
    assert back.data == {"k": "[{" * 200}


# ---------------------------------------------------------------------------- size before signature


def test_oversize_record_is_rejected_before_its_signature_is_checked(stored: bytes) -> None:
    with mock.patch.object(record, "_signature", wraps=record._signature) as signature:
        exc = rejected(stored, max_bytes=len(stored) - 1)
        assert "MAX_BYTES" in exc.reason
        signature.assert_not_called()
        exc = rejected(b"\x00" * (BIG + 1), max_bytes=BIG)
        signature.assert_not_called()
        # Control: at the limit the same record is verified (so the spy does see calls).
        record.decode(stored, STORE_KEY, len(stored))
        assert signature.call_count >= 1


# ---------------------------------------------------------------------------- no pickle

PICKLE_CALLS: list[str] = []


def _record_unpickling(marker: str) -> str:
    PICKLE_CALLS.append(marker)
    return marker


class _PickleBomb:
    """Unpickling this calls :func:`_record_unpickling`: proof that pickle ran."""

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (_record_unpickling, ("unpickled",))


def _pickle_payloads() -> dict[str, bytes]:
    bomb = pickle.dumps(
        {"_auth_user_id": "1", "x": _PickleBomb()}, protocol=pickle.HIGHEST_PROTOCOL
    )
    legacy = base64.b64encode(b"0123456789abcdef0123456789abcdef01234567:" + bomb)
    return {
        "raw pickle": bomb,
        "raw pickle protocol 0": pickle.dumps(_PickleBomb(), protocol=0),
        "django legacy base64(hash:pickle)": legacy,
        "hs1 prefix around a pickle": PREFIX + bomb + b"." + b"A" * 43,
    }


@pytest.fixture
def pickle_forbidden(monkeypatch: pytest.MonkeyPatch) -> None:
    import _pickle

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("pickle must never be used on a session record")

    for module in (pickle, _pickle):
        for name in ("loads", "load", "Unpickler"):
            monkeypatch.setattr(module, name, refuse)
    PICKLE_CALLS.clear()


@pytest.mark.usefixtures("pickle_forbidden")
@pytest.mark.parametrize("raw", _pickle_payloads().values(), ids=_pickle_payloads().keys())
def test_pickle_payload_is_rejected_and_never_unpickled(raw: bytes) -> None:
    rejected(raw)
    # Even correctly signed, a pickle is not a payload.
    if raw.startswith(PREFIX):
        raw = raw[len(PREFIX) : -44]
    rejected_after_signature(sign(raw))
    assert PICKLE_CALLS == []


UNPICKLERS = {"pickle", "_pickle", "cPickle", "marshal", "shelve", "dill", "cloudpickle"}
COMPRESSORS = {"zlib", "gzip", "bz2", "lzma", "zipfile", "tarfile"}


def _imports(source: Path) -> Iterator[tuple[set[str], set[str]]]:
    """(modules imported, attribute and names used) for each node of ``source``."""
    tree = ast.parse(source.read_text(encoding="utf-8"), filename=str(source))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield {alias.name.split(".")[0] for alias in node.names}, set()
        elif isinstance(node, ast.ImportFrom):
            yield {(node.module or "").split(".")[0]}, {alias.name for alias in node.names}
        elif isinstance(node, ast.Attribute):
            yield set(), {node.attr}
        elif isinstance(node, ast.Name):
            yield set(), {node.id}


def test_the_package_never_unpickles_nor_decompresses() -> None:
    package = Path(hardened_sessions.__file__).parent
    sources = sorted(package.rglob("*.py"))
    assert len(sources) > 10
    # Where records are built, stored and read, no compression module at all.
    record_path = {"record.py", "buffers.py", "keys.py", "backends", "stores", "redis_cluster.py"}
    for source in sources:
        where = source.relative_to(package)
        for modules, names in _imports(source):
            assert not modules & UNPICKLERS, f"{where} imports {modules}"
            assert not {n for n in names if "decompress" in n.lower()}, f"{where} decompresses"
            if where.parts[0] in record_path:
                assert not modules & COMPRESSORS, f"{where} imports {modules}"


# ---------------------------------------------------------------------------- encode refuses what decode would refuse


def test_encode_refuses_data_nested_deeper_than_the_bound() -> None:
    buf = RecordBuffer()
    with pytest.raises(ValueError, match="nested"):
        record.encode(make_record({"k": nested_data(MAX_DEPTH - 1)}), STORE_KEY, buf, BIG)
    assert len(buf) == 0
    assert not any(buffer_array(buf))
    with pytest.raises(ValueError):
        record.encode_data(make_record(nested_data(MAX_DEPTH)))
    with pytest.raises(ValueError):
        record.encode_data(make_record({"k": nested_data(MAX_DEPTH, list)}))
    # At the bound it is stored, and it loads back.
    raw = encoded(make_record(nested_data(MAX_DEPTH - 1)))
    assert record.decode(raw, STORE_KEY, BIG).data == nested_data(MAX_DEPTH - 1)


def test_encode_refuses_data_nested_past_the_interpreter_recursion_limit() -> None:
    buf = RecordBuffer()
    with pytest.raises(ValueError):
        record.encode(make_record({"k": nested_data(DEEP, list)}), STORE_KEY, buf, BIG)
    assert len(buf) == 0


def test_encode_refuses_tuples_nested_deeper_than_the_bound() -> None:
    rec = make_record({"k": nested_data(MAX_DEPTH, tuple)})
    try:
        raw = encoded(rec)
    except ValueError:
        return
    # Whatever encode accepts, decode must accept too.
    try:
        record.decode(raw, STORE_KEY, BIG)
    except CorruptRecord as exc:
        raise AssertionError(f"encode stored a record that decode refuses: {exc.reason}") from exc


@on_every_database
def test_too_deep_session_is_not_written(db_alias: str) -> None:
    session = SessionStore()
    session["deep"] = nested_data(MAX_DEPTH)
    with pytest.raises(ValueError):
        session.save()
    assert row_count(db_alias) == 0
    assert session.session_key is None

    session = SessionStore()
    session["shallow"] = 1
    session.save()
    before = bytes(HardenedSession.objects.using(db_alias).get().data)
    session["deep"] = nested_data(MAX_DEPTH)
    with pytest.raises(ValueError):
        session.save()
    assert bytes(HardenedSession.objects.using(db_alias).get().data) == before
    assert SessionStore(session.session_key).load() == {"shallow": 1}


# ---------------------------------------------------------------------------- in the real store


def _store_raw(alias: str, session_key: str, raw: bytes) -> None:
    """Put ``raw`` in the row of ``session_key``, as someone with write access to the store could."""
    now = timezone.now()
    HardenedSession.objects.using(alias).update_or_create(
        key_hash=keys.store_key(session_key),
        defaults={
            "data": raw,
            "expire_date": now + timedelta(days=1),
            "created": now,
            "last_activity": now,
            "size": len(raw),
            "version": 1,
        },
    )


@on_every_database
def test_record_copied_into_another_row_does_not_load(
    db_alias: str, caplog: pytest.LogCaptureFixture
) -> None:
    victim = SessionStore()
    victim["_auth_user_id"] = "1"
    victim["is_admin"] = True
    victim.save()
    attacker = SessionStore()
    attacker["_auth_user_id"] = "666"
    attacker.save()
    victim_row = HardenedSession.objects.using(db_alias).get(pk=keys.store_key(key_of(victim)))
    _store_raw(db_alias, key_of(attacker), bytes(victim_row.data))

    caplog.set_level(logging.WARNING, logger="django.security.SuspiciousSession")
    loaded = SessionStore(attacker.session_key)
    assert loaded.load() == {}
    assert loaded.session_key is None
    assert any(r.name == "django.security.SuspiciousSession" for r in caplog.records)
    assert SessionStore(victim.session_key).load()["is_admin"] is True


@on_every_database
@pytest.mark.parametrize("position", [0, 4, 20, -44, -1])
def test_tampered_row_loads_as_no_session(db_alias: str, position: int) -> None:
    session = SessionStore()
    session["_auth_user_id"] = "7"
    session.save()
    key = key_of(session)
    row = HardenedSession.objects.using(db_alias).get(pk=keys.store_key(key))
    tampered = bytearray(bytes(row.data))
    tampered[position] ^= 0x20
    _store_raw(db_alias, key, bytes(tampered))

    fresh = SessionStore(key)
    assert fresh.get("_auth_user_id") is None
    assert not fresh.exists(key)
    fresh["after"] = 1
    fresh.save()
    assert fresh.session_key != key


@on_every_database
@pytest.mark.usefixtures("pickle_forbidden")
@pytest.mark.parametrize("raw", _pickle_payloads().values(), ids=_pickle_payloads().keys())
def test_pickle_in_the_store_loads_as_no_session(db_alias: str, raw: bytes) -> None:
    key = keys.generate_key()
    _store_raw(db_alias, key, raw)
    session = SessionStore(key)
    assert session.load() == {}
    assert not session.exists(key)
    assert PICKLE_CALLS == []


# ---------------------------------------------------------------------------- properties

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(alphabet=st.characters(exclude_categories=["Cs"]))
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=25,
)
session_dicts = st.dictionaries(st.text(max_size=20), json_values, max_size=8)
timestamps = st.integers(min_value=0, max_value=record.MAX_TIMESTAMP)


@fuzz
@given(raw=st.binary(max_size=4096))
def test_arbitrary_bytes_never_raise_anything_but_corrupt_record(raw: bytes) -> None:
    with contextlib.suppress(CorruptRecord):
        record.decode(raw, STORE_KEY, 65536)


@fuzz
@given(body=st.binary(max_size=512), signature=st.binary(min_size=43, max_size=43))
def test_arbitrary_framed_bytes_never_raise_anything_but_corrupt_record(
    body: bytes, signature: bytes
) -> None:
    with contextlib.suppress(CorruptRecord):
        record.decode(PREFIX + body + b"." + signature, STORE_KEY, 65536)


def _valid(value: Any, *, nullable: bool = False) -> bool:
    if value is None:
        return nullable
    return type(value) is int and value >= 0


field_values: st.SearchStrategy[Any] = (
    json_values
    | st.integers(min_value=-(2**64), max_value=2**64)
    | st.sampled_from([0, 1, -1, True, False, None, 1.0, "1", [], {}])
)


@fuzz
@given(
    fields=st.fixed_dictionaries(
        {name: field_values for name in "ncaeix"}, optional={"d": session_dicts | json_values}
    ),
    extra=st.dictionaries(st.sampled_from(["z", "N", "", "dd"]), json_values, max_size=1),
)
def test_signed_payload_loads_exactly_when_every_field_is_well_typed(
    fields: dict[str, Any], extra: dict[str, Any]
) -> None:
    # An oracle written from the documented format, against the decoder.
    document = {**fields, **extra}
    body = json.dumps(document, separators=(",", ":")).encode("utf-8")
    expected = (
        not extra
        and "d" in fields
        and isinstance(fields["d"], dict)
        and all(_valid(fields[name]) for name in "ncae")
        and all(_valid(fields[name], nullable=True) for name in "ix")
    )
    try:
        back = record.decode(sign(body), STORE_KEY, BIG)
    except CorruptRecord as exc:
        assert exc.reason != "bad signature"
        assert not expected, f"a well-formed payload was refused: {exc.reason}"
    else:
        assert expected, "a payload with a wrong field loaded"
        assert back.data == fields["d"]
        assert (back.version, back.created, back.activity, back.expiry) == (
            fields["n"],
            fields["c"],
            fields["a"],
            fields["e"],
        )


json_tokens = st.sampled_from(
    [
        "{", "}", "[", "]", ",", ":", '"n"', '"c"', '"a"', '"e"', '"i"', '"x"', '"d"',
        "0", "1", "-1", "1.5", "1e999", "-0", "9" * 5000, "NaN", "Infinity", "-Infinity",
        "true", "false", "null", '"s"', '"\\ud800"', '"\\u0000"', '"\\x"', " ", "\n",
        "\xff", "é", "\u2028",
    ]
)  # fmt: skip


@fuzz
@given(
    tokens=st.lists(json_tokens, max_size=60),
    junk=st.binary(max_size=8),
    prefix_fields=st.booleans(),
)
def test_signed_garbage_never_raises_anything_but_corrupt_record(
    tokens: list[str], junk: bytes, prefix_fields: bool
) -> None:
    text = "".join(tokens)
    if prefix_fields:
        # Start like a real payload so the fuzzing reaches the field checks too.
        text = payload(d="{}").decode()[:-1] + "," + text
    body = text.encode("utf-8", "surrogatepass") + junk
    try:
        back = record.decode(sign(body), STORE_KEY, BIG)
    except CorruptRecord as exc:
        assert exc.reason != "bad signature"
    else:
        assert isinstance(back.data, dict)


@fuzz
@given(body=st.binary(min_size=2, max_size=512))
def test_signed_arbitrary_bytes_never_raise_anything_but_corrupt_record(body: bytes) -> None:
    try:
        back = record.decode(sign(body), STORE_KEY, BIG)
    except CorruptRecord as exc:
        assert exc.reason != "bad signature"
    else:
        assert isinstance(back.data, dict)


@fuzz
@given(
    data=session_dicts,
    version=st.integers(min_value=1, max_value=2**63 - 1),
    created=timestamps,
    activity=timestamps,
    expiry=timestamps,
    idle=st.none() | timestamps,
    absolute=st.none() | timestamps,
)
def test_any_json_session_round_trips(
    data: dict[str, Any],
    version: int,
    created: int,
    activity: int,
    expiry: int,
    idle: int | None,
    absolute: int | None,
) -> None:
    rec = make_record(
        data,
        version=version,
        created=created,
        activity=activity,
        expiry=expiry,
        idle_deadline=idle,
        absolute_deadline=absolute,
    )
    raw = encoded(rec)
    back = record.decode(raw, STORE_KEY, len(raw))
    assert back.data == data
    assert back == rec
    rejected(raw, store_key=OTHER_STORE_KEY)
