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
make the record corrupt (:class:`CorruptRecord`), never a crash.
"""

from __future__ import annotations

import base64
import hmac
import json
import math
from dataclasses import dataclass, field
from typing import Any

from django.utils.crypto import salted_hmac

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


def _reject_constant(name: str) -> Any:
    raise CorruptRecord(f"non-finite number {name}")


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise CorruptRecord("non-finite number")
    return value


_decoder = json.JSONDecoder(parse_float=_parse_float, parse_constant=_reject_constant)
_encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
_ascii_encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True, allow_nan=False)
# Timestamps beyond this (the year 5138) are corrupt, not far-future sessions.
MAX_TIMESTAMP = 10**11


def _depth_exceeds(value: Any, limit: int) -> bool:
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(node, dict):
            stack.extend(
                (child, depth + 1)
                for child in node.values()
                if isinstance(child, (dict, list, tuple))
            )
        elif isinstance(node, (list, tuple)):
            stack.extend(
                (child, depth + 1) for child in node if isinstance(child, (dict, list, tuple))
            )
    return False


def _may_be_too_deep(payload: bytes) -> bool:
    # Cheap, conservative pre-check: fewer opening brackets than the limit (brackets in
    # strings included) cannot nest past it, which spares the walk for typical sessions.
    return payload.count(b"[") + payload.count(b"{") > MAX_DEPTH


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
    try:
        text = _encoder.encode(payload)
    except RecursionError:
        raise ValueError("The session data is nested too deeply to be stored.") from None
    try:
        body = text.encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate (from json.loads of a request body, say) has no UTF-8 form:
        # escape it as JSON does, which reads back to the same string.
        body = _ascii_encoder.encode(payload).encode("ascii")
    if _may_be_too_deep(body) and _depth_exceeds(record.data, MAX_DEPTH - 1):
        raise ValueError(f"The session data is nested deeper than {MAX_DEPTH - 1} levels.")
    return body


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


def _checked(payload: dict[str, Any]) -> tuple[int, int, int, int, int | None, int | None]:
    """The version and the five times of a payload, each a sane non-negative int."""
    version, created, activity, expiry = payload["n"], payload["c"], payload["a"], payload["e"]
    idle, absolute = payload["i"], payload["x"]
    # type() is int, not isinstance(): True and False are ints to isinstance().
    if type(version) is not int or version < 0:
        raise CorruptRecord("field 'n' is not a non-negative integer")
    for name, value in (
        ("c", created),
        ("a", activity),
        ("e", expiry),
        ("i", idle),
        ("x", absolute),
    ):
        if value is None and name in "ix":
            continue
        if type(value) is not int or not 0 <= value <= MAX_TIMESTAMP:
            raise CorruptRecord(f"field {name!r} is not a time in range")
    return version, created, activity, expiry, idle, absolute


def decode(raw: bytes | bytearray | memoryview, store_key: str, max_bytes: int) -> Record:
    """Verify and parse a stored record, or raise :class:`CorruptRecord`."""
    size = len(raw)
    if size > max_bytes:
        raise CorruptRecord(f"stored record of {size} bytes is over MAX_BYTES ({max_bytes})")
    if size < _OVERHEAD + 2:
        raise CorruptRecord("stored record is too short")
    # A view into immutable bytes can be kept (as the record's payload); anything else
    # is copied once, so a reused buffer can't change the payload afterwards.
    view = memoryview(raw if isinstance(raw, bytes) else bytes(raw))
    if view[: len(PREFIX)] != PREFIX or view[-_SIG_LEN - 1 : -_SIG_LEN] != _SEPARATOR:
        raise CorruptRecord("not an hs1 record")
    body = view[len(PREFIX) : -_SIG_LEN - 1]
    signature = view[-_SIG_LEN:]
    if not any(
        hmac.compare_digest(_signature(store_key, body, secret), signature)
        for secret in signing_secrets()
    ):
        raise CorruptRecord("bad signature")
    try:
        text = str(body, "utf-8")  # straight from the stored bytes: no intermediate copy
        payload = _decoder.decode(text)
    except CorruptRecord:
        raise
    except (ValueError, RecursionError, UnicodeDecodeError) as exc:
        raise CorruptRecord(f"payload is not valid JSON ({exc.__class__.__name__})") from None
    if not isinstance(payload, dict) or payload.keys() != _FIELDS:
        raise CorruptRecord("payload does not have the hs1 fields")
    data = payload["d"]
    if not isinstance(data, dict):
        raise CorruptRecord("session data is not an object")
    if text.count("[") + text.count("{") > MAX_DEPTH and _depth_exceeds(data, MAX_DEPTH - 1):
        raise CorruptRecord(f"session data nests deeper than {MAX_DEPTH - 1} levels")
    version, created, activity, expiry, idle, absolute = _checked(payload)
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


def decode_payload_data(payload: bytes | memoryview) -> dict[str, Any]:
    """The session dict of a payload this process encoded or verified earlier."""
    data = _decoder.decode(str(payload, "utf-8"))["d"]
    assert isinstance(data, dict)
    return data


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
