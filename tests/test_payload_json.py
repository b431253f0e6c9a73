"""The record's JSON: orjson only where its answer is exactly the json module's.

``hardened_sessions.payload_json`` encodes and parses with orjson when it can and
with the json module otherwise. These tests hold the two paths to one standard: for
any session data, and any signed payload, the engine must end up with the same data
(or the same refusal) whichever path ran, so that a fleet where some processes have
orjson and some don't reads every record alike.
"""

from __future__ import annotations

import datetime
import enum
import hashlib
import json
import math
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from hardened_sessions import payload_json, record
from hardened_sessions.buffers import RecordBuffer
from hardened_sessions.record import MAX_DEPTH, PREFIX, CorruptRecord, Record

from .conftest import running_under_ci

STORE_KEY = hashlib.sha256(b"payload json tests").hexdigest()
BIG = 16 * 1024 * 1024
NOW = 1_700_000_000
fuzz = hypothesis_settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

if payload_json.orjson is None:  # pragma: no cover - orjson is an install requirement
    if running_under_ci():
        pytest.fail("orjson is required when CI is set", pytrace=False)
    pytest.skip("orjson is not installed: there is only one path", allow_module_level=True)


# ---------------------------------------------------------------------------- helpers


class Colour(enum.Enum):
    RED = "red"


class Level(enum.IntEnum):
    HIGH = 3


class Tag(str):
    pass


class Count(int):
    pass


class Ratio(float):
    pass


class Bag(dict):  # type: ignore[type-arg]
    pass


class Items(list):  # type: ignore[type-arg]
    pass


def run(path: str, fn: Any, *args: Any) -> tuple[str, Any]:
    """``fn(*args)`` on one JSON path: ("ok", result) or ("error", exception class)."""
    with pytest.MonkeyPatch.context() as patch:
        if path == "json":
            patch.setattr(payload_json, "orjson", None)
        try:
            return "ok", fn(*args)
        except CorruptRecord as exc:
            return "corrupt", exc.reason
        except (TypeError, ValueError) as exc:
            return "error", type(exc)


def strict_equal(a: Any, b: Any) -> bool:
    """Equal, with the same types all the way down (1 is not 1.0 or True, -0.0 is not 0.0)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(strict_equal(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(strict_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float):
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    return bool(a == b)


def make_record(data: Any) -> Record:
    return Record(data=data, version=1, created=NOW, activity=NOW, expiry=NOW + 3600)


def encode_data(data: Any) -> bytes:
    return record.encode_data(make_record(data))


def roundtrip(data: Any) -> Any:
    buf = RecordBuffer()
    record.encode(make_record(data), STORE_KEY, buf, BIG)
    return record.decode(buf.getvalue(), STORE_KEY, BIG).data


def sign(body: bytes) -> bytes:
    secret = record.signing_secrets()[0]
    return PREFIX + body + b"." + record._signature(STORE_KEY, body, secret)


def decode_signed(body: bytes) -> Any:
    return record.decode(sign(body), STORE_KEY, BIG).data


# ---------------------------------------------------------------------------- strategies

keys_ = st.one_of(
    st.text(max_size=8),
    st.integers(-(2**70), 2**70),
    st.booleans(),
    st.none(),
    st.floats(allow_nan=False, allow_infinity=False),
)
leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),  # beyond 64 bits too
    st.integers(-(2**66), 2**66),
    st.floats(),  # NaN and infinities too
    st.text(),  # lone surrogates too
    st.sampled_from(
        [
            Colour.RED,
            Level.HIGH,
            Tag("tag"),
            Count(7),
            Ratio(0.5),
            uuid.UUID(int=1),
            datetime.datetime(2026, 1, 1),
            datetime.date(2026, 1, 1),
            b"bytes",
            {1, 2},
            object(),
        ]
    ),
)
values = st.recursive(
    leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.lists(children, max_size=4).map(tuple),
        st.lists(children, max_size=4).map(Items),
        st.dictionaries(keys_, children, max_size=4),
        st.dictionaries(st.text(max_size=4), children, max_size=4).map(Bag),
    ),
    max_leaves=20,
)
session_data = st.dictionaries(st.text(max_size=12), values, max_size=6)


# ---------------------------------------------------------------------------- encoding


@fuzz
@given(data=session_data)
@example(data={"k": float("nan")})
@example(data={"k": float("inf")})
@example(data={"k": 2**64})
@example(data={"k": -(2**63) - 1})
@example(data={"k": "\ud800"})
@example(data={"k": {1: "one", None: "n", 1.5: "f"}, "b": {True: "t"}})
@example(data={"k": uuid.UUID(int=1)})
@example(data={"k": Colour.RED})
@example(data={"k": Level.HIGH})
@example(data={"k": datetime.datetime(2026, 1, 1)})
@example(data={"k": Tag("t"), "c": Count(2), "r": Ratio(0.25), "b": Bag(a=1)})
@example(data={"k": (1, [2, (3,)])})
@example(data={"k": 1.5e-7, "big": 1e300, "neg": -0.0})
def test_both_paths_store_the_same_data_or_refuse_alike(data: dict[str, Any]) -> None:
    fast = run("orjson", encode_data, data)
    reference = run("json", encode_data, data)
    assert fast[0] == reference[0], (fast, reference)
    if fast[0] == "error":
        assert fast[1] is reference[1], (fast, reference)
        return
    # Bytes may spell a float differently; what they read back as may not differ.
    read = json.loads(fast[1].decode("utf-8", "surrogatepass"))
    assert strict_equal(read, json.loads(reference[1].decode("utf-8", "surrogatepass")))
    # And each path reads what either path wrote exactly as the json module does.
    for body in (fast[1], reference[1]):
        expected = run("json", decode_signed, body)
        assert expected[0] == "ok", expected
        got = run("orjson", decode_signed, body)
        assert got[0] == "ok", got
        assert strict_equal(got[1], expected[1])


def test_the_fast_path_is_taken_for_plain_data(monkeypatch: pytest.MonkeyPatch) -> None:
    # The control of the differential test: orjson does encode and parse plain sessions.
    calls = {"dumps": 0, "loads": 0}
    real = payload_json.orjson

    class Spy:
        JSONEncodeError = real.JSONEncodeError
        JSONDecodeError = real.JSONDecodeError
        OPT_PASSTHROUGH_SUBCLASS = real.OPT_PASSTHROUGH_SUBCLASS

        @staticmethod
        def dumps(*args: Any, **kwargs: Any) -> bytes:
            calls["dumps"] += 1
            return bytes(real.dumps(*args, **kwargs))

        @staticmethod
        def loads(*args: Any) -> Any:
            calls["loads"] += 1
            return real.loads(*args)

    monkeypatch.setattr(payload_json, "orjson", Spy)
    data = {"_auth_user_id": "1", "cart": [{"sku": "A-1", "qty": 2, "price": 9.5}], "x": None}
    assert strict_equal(roundtrip(data), data)
    assert calls == {"dumps": 1, "loads": 1}


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (float("nan"), ValueError),
        (float("-inf"), ValueError),
        (uuid.UUID(int=5), TypeError),
        (Colour.RED, TypeError),
        (datetime.datetime(2026, 1, 1), TypeError),
        (datetime.date(2026, 1, 1), TypeError),
        (b"bytes", TypeError),
        ({1, 2}, TypeError),
        ({"nested": {(1, 2): "tuple key"}}, TypeError),
    ],
    ids=["nan", "-inf", "uuid", "enum", "datetime", "date", "bytes", "set", "tuple-key"],
)
def test_what_json_refuses_is_refused_with_orjson_installed(value: Any, error: type) -> None:
    # orjson alone would write NaN as null and UUIDs, enums and dates as strings.
    with pytest.raises(error):
        encode_data({"k": value})


@pytest.mark.parametrize(
    "data",
    [
        {"k": 2**64},
        {"k": -(2**63) - 1},
        {"k": 10**100},
        {"k": [1, 2**70, {"deep": -(2**80)}]},
        {"k": "\ud800 lone surrogate"},
        {"k": {1: "int key", None: "none key"}},
        {"k": Level.HIGH},
        {"k": OrderedDict(a=1)},
    ],
    ids=[
        "2**64",
        "-2**63-1",
        "googol",
        "nested-long-ints",
        "surrogate",
        "keys",
        "intenum",
        "odict",
    ],
)
def test_what_orjson_cannot_hold_round_trips_as_json_has_it(data: dict[str, Any]) -> None:
    expected = run("json", roundtrip, data)
    assert expected[0] == "ok"
    assert strict_equal(roundtrip(data), expected[1])


# ---------------------------------------------------------------------------- decoding

json_fragments = st.sampled_from(
    [
        "0",
        "-0",
        "1",
        "-1",
        "1.0",
        "-0.0",
        "1e5",
        "1E-5",
        "2.5e-400",
        "1e999",
        "-1e999",
        "18446744073709551615",
        "18446744073709551616",
        "-9223372036854775808",
        "-9223372036854775809",
        "9" * 30,
        "9" * 5000,
        "NaN",
        "Infinity",
        "true",
        "false",
        "null",
        '"s"',
        '"\\ud800"',
        '"\\udc00\\ud800"',
        '"\\u0000"',
        '"\\/"',
        '"\u00e9"',
        '"\\"',
        "[",
        "]",
        "{",
        "}",
        ",",
        ":",
        '"k"',
        " ",
        "\n",
        "01",
        "1.",
        ".5",
        "+1",
    ]
)
hostile_data = st.lists(json_fragments, max_size=12).map("".join)


def payload_with(d: str) -> bytes:
    text = f'{{"n":1,"c":{NOW},"a":{NOW},"e":{NOW + 60},"i":null,"x":null,"d":{d}}}'
    return text.encode("utf-8", "surrogatepass")


@fuzz
@given(d=hostile_data)
@example(d='{"k":18446744073709551616}')
@example(d='{"k":[-9223372036854775809]}')
@example(d='{"k":1e19}')
@example(d='{"k":"\\ud800"}')
@example(d='{"k":1,"k":2}')
@example(d='{"k":' + "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1) + "}")
@example(d='{"k":' + "[" * MAX_DEPTH + "]" * MAX_DEPTH + "}")
def test_both_paths_read_a_signed_payload_alike(d: str) -> None:
    body = payload_with("{" + d + "}" if d[:1] == '"' else d)
    fast = run("orjson", decode_signed, body)
    reference = run("json", decode_signed, body)
    if fast[0] == "ok":
        assert reference[0] == "ok", (fast, reference)
        assert strict_equal(fast[1], reference[1])
    else:
        assert fast == reference  # the same verdict, for the same reason


@pytest.mark.parametrize("field", ["n", "c", "e"], ids=["version", "created", "expiry"])
def test_a_long_integer_in_an_envelope_field_gets_the_reference_verdict(field: str) -> None:
    values = {"n": "1", "c": str(NOW), "a": str(NOW), "e": str(NOW + 60)}
    values[field] = "18446744073709551616"
    body = ",".join(f'"{name}":{values.get(name, "null")}' for name in "ncaeix").encode()
    body = b"{" + body + b',"d":{}}'
    assert run("orjson", decode_signed, body) == run("json", decode_signed, body)


# ---------------------------------------------------------------------------- the survey


def nested(depth: int, kind: Any = dict) -> Any:
    value: Any = {}
    for _ in range(depth - 1):
        value = kind(k=value) if issubclass(kind, dict) else kind([value])
    return value


@pytest.mark.parametrize("kind", [dict, list, tuple, Bag, Items], ids=lambda k: k.__name__)
def test_survey_bounds_nesting_of_every_container_kind(kind: Any) -> None:
    assert not payload_json.too_deep(nested(10, kind), 10)
    assert payload_json.too_deep(nested(11, kind), 10)
    with pytest.raises(payload_json.TooDeep, match="nested deeper than 10 levels"):
        payload_json.survey(nested(11, kind), 10)


def test_survey_stops_at_a_cycle() -> None:
    loop: dict[str, Any] = {}
    loop["self"] = loop
    with pytest.raises(payload_json.TooDeep):
        payload_json.survey(loop, MAX_DEPTH - 1)
    with pytest.raises(ValueError, match="nested"):
        encode_data(loop)


@pytest.mark.parametrize(
    ("data", "plain"),
    [
        ({}, True),
        ({"a": [1, 2.5, None, True, "s", (1,)], "b": {"c": {}}}, True),
        ({"a": float("nan")}, False),
        ({"a": [1, [float("inf")]]}, False),
        ({"a": {1: 2}}, False),
        ({"a": Tag("x")}, False),
        ({"a": Bag()}, False),
        ({"a": [Items()]}, False),
        ({"a": uuid.UUID(int=0)}, False),
    ],
)
def test_survey_calls_plain_only_what_orjson_writes_as_json_does(data: Any, plain: bool) -> None:
    assert payload_json.survey(data, MAX_DEPTH - 1) is plain


@pytest.fixture
def no_orjson(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(payload_json, "orjson", None)
    yield


def test_without_orjson_the_json_module_does_everything(no_orjson: None) -> None:
    data = {"a": [1, 2.5, None], "b": "\u00e9", "c": 2**70}
    assert strict_equal(roundtrip(data), data)
    assert payload_json.fast_loads(b"{}") is None
