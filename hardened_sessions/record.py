"""The session record: one versioned, signed envelope shared by every engine.

Layout (bytes)::

    hs1:<payload JSON>.<signature>

* ``payload`` is UTF-8 JSON: ``{"n": version, "c": created, "a": last activity,
  "e": expiry, "i": idle deadline, "x": absolute deadline, "d": session dict}``,
  times in whole seconds since the epoch, ``i``/``x`` null when not configured.
* ``signature`` is 43 characters of unpadded URL-safe base64 of an HMAC-SHA256
  keyed from ``SECRET_KEY`` through :func:`django.utils.crypto.salted_hmac`,
  computed over the store key *and* the raw payload bytes: a record copied
  under another session's store key does not verify. Verification also tries
  ``SECRET_KEY_FALLBACKS``.

JSON only: no pickle, no compression (so no decompression bomb), no base64 of
the payload. Loading checks the size bound before anything else, then the
signature, and only then parses; nesting deeper than :data:`MAX_DEPTH`,
integers longer than Python's digit limit, ``NaN``/``Infinity`` and wrong types
make the record corrupt (:class:`CorruptRecord`), never a crash. The JSON itself is
written and read by :mod:`hardened_sessions.payload_json` (orjson where its answer is
the standard library's, the standard library otherwise).
"""

from __future__ import annotations

import base64
import hmac
from dataclasses import dataclass, field
from typing import Any

from django.utils.crypto import salted_hmac

from . import payload_json
from .buffers import RecordBuffer
from .conf import signing_secrets
from .exceptions import SessionTooLarge

__all__ = [
    "MAX_DEPTH",
    "MAX_TIMESTAMP",
    "PREFIX",
    "CorruptRecord",
    "Record",
    "decode",
    "encode",
    "encode_data",
    "peek_version",
    "version_head",
]

PREFIX = b"hs1:"
_SEPARATOR = b"."
_SEPARATOR_BYTE = _SEPARATOR[0]
_SIG_LEN = 43  # unpadded base64 of 32 bytes
_OVERHEAD = len(PREFIX) + len(_SEPARATOR) + _SIG_LEN
_SALT = "hardened_sessions.record.hs1"
MAX_DEPTH = 64
_FIELDS = frozenset(("n", "c", "a", "e", "i", "x", "d"))


class CorruptRecord(ValueError):
    """A stored record that must be treated as no session; ``reason`` says why (for logs)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


@dataclass(slots=True)
class Record:
    data: dict[str, Any]
    version: int
    created: int
    activity: int
    expiry: int
    idle_deadline: int | None = None
    absolute_deadline: int | None = None
    # The payload JSON this record was decoded from or encoded to, kept so that a
    # version conflict can tell what the request changed without a deep copy.
    payload: bytes | memoryview = field(default=b"", repr=False, compare=False)
    # The user the data named when it was encoded or decoded (Django's auth key), for
    # the store's user column: computed once, because ``data`` stays live afterwards.
    user_id: str | None = field(default=None, compare=False)

    @property
    def deadline(self) -> int:
        """The earliest of the record's deadlines: the moment it stops being a session."""
        deadline = self.expiry
        if self.idle_deadline is not None and self.idle_deadline < deadline:
            deadline = self.idle_deadline
        if self.absolute_deadline is not None and self.absolute_deadline < deadline:
            deadline = self.absolute_deadline
        return deadline

    def expired(self, now: float) -> bool:
        return now >= self.deadline


# Django's auth keeps the user's pk under this key (django.contrib.auth.SESSION_KEY).
AUTH_USER_KEY = "_auth_user_id"


def user_id_of(data: dict[str, Any]) -> str | None:
    value = data.get(AUTH_USER_KEY)
    return None if value is None else str(value)[:255]


# Timestamps beyond this (the year 5138) are corrupt, not far-future sessions.
MAX_TIMESTAMP = 10**11


def encode_data(record: Record) -> bytes:
    """The payload JSON of ``record`` (raises ``TypeError``/``ValueError`` for data JSON can't hold)."""
    for moment in (
        record.created,
        record.activity,
        record.expiry,
        record.idle_deadline or 0,
        record.absolute_deadline or 0,
    ):
        if not 0 <= moment <= MAX_TIMESTAMP:
            raise ValueError(f"A session timestamp ({moment}) is out of range.")
    payload = {
        "n": record.version,
        "c": record.created,
        "a": record.activity,
        "e": record.expiry,
        "i": record.idle_deadline,
        "x": record.absolute_deadline,
        "d": record.data,
    }
    return payload_json.dumps(payload, record.data, MAX_DEPTH - 1)


# One keyed HMAC per secret, built by Django's salted_hmac and copied per use: the
# key derivation and HMAC key setup run once instead of on every load and save.
_keyed_macs: dict[str | bytes, Any] = {}


def _signature(store_key: str, payload: bytes | memoryview, secret: str | bytes) -> bytes:
    """``salted_hmac(_SALT, store_key, secret)`` over ``"\\n" + payload``, base64url."""
    keyed = _keyed_macs.get(secret)
    if keyed is None:
        keyed = salted_hmac(_SALT, b"", secret=secret, algorithm="sha256")
        if len(_keyed_macs) >= 8:  # a handful of secrets (fallbacks); never unbounded
            _keyed_macs.clear()
        _keyed_macs[secret] = keyed
    mac = keyed.copy()
    mac.update(store_key.encode("ascii"))
    mac.update(b"\n")
    mac.update(payload)
    return base64.urlsafe_b64encode(mac.digest())[:_SIG_LEN]


def encode(record: Record, store_key: str, buf: RecordBuffer, max_bytes: int) -> int:
    """Encode and sign ``record`` into ``buf``; return the record's size in bytes.

    The size bound is checked on the exact bytes that will be stored, before the
    signature is even computed; ``SessionTooLarge`` leaves ``buf`` empty.
    """
    body = encode_data(record)
    size = len(body) + _OVERHEAD
    if size > max_bytes:
        raise SessionTooLarge(size, max_bytes)
    record.payload = body
    buf.write(PREFIX)
    buf.write(body)
    buf.write(_SEPARATOR)
    buf.write(_signature(store_key, body, signing_secrets()[0]))
    return size


def _time(name: str, value: Any) -> int:
    # type() is int, not isinstance(): True and False are ints to isinstance().
    if type(value) is not int or not 0 <= value <= MAX_TIMESTAMP:
        raise CorruptRecord(f"field {name!r} is not a time in range")
    return value


def _checked(payload: dict[str, Any]) -> tuple[int, int, int, int, int | None, int | None]:
    """The version and the five times of a payload, each a sane non-negative int."""
    version = payload["n"]
    if type(version) is not int or version < 0:
        raise CorruptRecord("field 'n' is not a non-negative integer")
    idle, absolute = payload["i"], payload["x"]
    return (
        version,
        _time("c", payload["c"]),
        _time("a", payload["a"]),
        _time("e", payload["e"]),
        None if idle is None else _time("i", idle),
        None if absolute is None else _time("x", absolute),
    )


def decode(raw: bytes | bytearray | memoryview, store_key: str, max_bytes: int) -> Record:
    """Verify and parse a stored record, or raise :class:`CorruptRecord`."""
    size = len(raw)
    if size > max_bytes:
        raise CorruptRecord(f"stored record of {size} bytes is over MAX_BYTES ({max_bytes})")
    if size < _OVERHEAD + 2:
        raise CorruptRecord("stored record is too short")
    # A view into immutable bytes can be kept (as the record's payload); anything else
    # is copied once, so a reused buffer can't change the payload afterwards.
    if not isinstance(raw, bytes):
        raw = bytes(raw)
    if not raw.startswith(PREFIX) or raw[-_SIG_LEN - 1] != _SEPARATOR_BYTE:
        raise CorruptRecord("not an hs1 record")
    body = memoryview(raw)[len(PREFIX) : -_SIG_LEN - 1]
    signature = raw[-_SIG_LEN:]
    current, *fallbacks = signing_secrets()
    if not hmac.compare_digest(_signature(store_key, body, current), signature) and not any(
        hmac.compare_digest(_signature(store_key, body, secret), signature) for secret in fallbacks
    ):
        raise CorruptRecord("bad signature")
    fields = _parse_fast(body)
    if fields is None:
        fields = _parse_reference(body)
    payload, data, (version, created, activity, expiry, idle, absolute) = fields
    return Record(
        data=data,
        version=version,
        created=created,
        activity=activity,
        expiry=expiry,
        idle_deadline=idle,
        absolute_deadline=absolute,
        payload=body,  # a view of the stored bytes, for a later merge
        user_id=user_id_of(data),
    )


_Fields = tuple[dict[str, Any], dict[str, Any], tuple[int, int, int, int, int | None, int | None]]


def _fields(payload: Any) -> _Fields:
    if not isinstance(payload, dict) or payload.keys() != _FIELDS:
        raise CorruptRecord("payload does not have the hs1 fields")
    data = payload["d"]
    if not isinstance(data, dict):
        raise CorruptRecord("session data is not an object")
    return payload, data, _checked(payload)


def _parse_fast(body: memoryview) -> _Fields | None:
    """orjson's reading of a verified payload, when it is exactly json's; else ``None``."""
    payload = payload_json.fast_loads(body)
    if payload is None:
        return None
    try:
        fields = _fields(payload)
    except CorruptRecord:
        return None  # json gives the verdict (and the reason)
    if payload_json.needs_reference(fields[1], MAX_DEPTH - 1):
        return None
    return fields


def _parse_reference(body: memoryview) -> _Fields:
    try:
        payload = payload_json.reference_loads(body)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise CorruptRecord(f"payload is not valid JSON ({exc.__class__.__name__})") from None
    fields = _fields(payload)
    if payload_json.too_deep(fields[1], MAX_DEPTH - 1):
        raise CorruptRecord(f"session data nests deeper than {MAX_DEPTH - 1} levels")
    return fields


def decode_payload_data(payload: bytes | memoryview) -> dict[str, Any]:
    """The session dict of a payload this process encoded or verified earlier."""
    fields = _parse_fast(memoryview(payload))
    if fields is None:
        fields = _parse_reference(memoryview(payload))
    return fields[1]


_VERSION_HEAD = PREFIX + b'{"n":'


def peek_version(raw: bytes | bytearray | memoryview) -> int | None:
    """The version number at the head of a record, read without verifying it.

    Stores use it as a compare-and-set token only; what the record says is
    trusted after :func:`decode`, never from here.
    """
    head = bytes(raw[: len(_VERSION_HEAD) + 21])
    if not head.startswith(_VERSION_HEAD):
        return None
    digits = head[len(_VERSION_HEAD) :].split(b",", 1)[0]
    if not digits.isdigit() or len(digits) > 20:
        return None
    return int(digits)


def version_head(version: int) -> bytes:
    """The exact bytes a record of ``version`` starts with."""
    return _VERSION_HEAD + str(version).encode("ascii") + b","
