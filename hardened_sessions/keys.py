"""Session keys: drawn from the operating system's random source, stored only as a hash.

A session key is 32 characters of ``[a-z0-9]`` (Django's alphabet and length,
about 165 bits). It exists only in the cookie and in memory: stores see
:func:`store_key`, the SHA-256 hex digest of it, so a dump of the database or
the cache yields no usable cookie.

The random bytes come from :func:`secrets.token_bytes`, which reads
``random._urandom`` (bound to ``os.urandom`` when :mod:`random` is imported).
When the source raises, or hands out the same draw twice in a row, no key is
issued: :class:`~hardened_sessions.exceptions.SessionKeyUnavailable` is raised
and there is no fallback to a weaker source.
"""

from __future__ import annotations

import hashlib
import secrets
import threading

from .exceptions import SessionKeyUnavailable

__all__ = ["KEY_ALPHABET", "KEY_LENGTH", "generate_key", "is_well_formed", "store_key"]

KEY_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
KEY_LENGTH = 32
_ALLOWED = frozenset(KEY_ALPHABET)
# Bytes below this bound map uniformly onto the 36 characters (252 = 7 * 36).
_UNIFORM_BOUND = 256 - 256 % len(KEY_ALPHABET)
# Each draw takes enough bytes that rejection sampling almost never needs a second one.
_DRAW_BYTES = 48
_MAX_DRAWS_PER_KEY = 4

_last_draw_lock = threading.Lock()
_last_draw: bytes | None = None


def _draw(nbytes: int) -> bytes:
    """One read of the random source; a failure or a repeat of the last read is fatal."""
    global _last_draw
    try:
        data = secrets.token_bytes(nbytes)
    except (OSError, NotImplementedError) as exc:
        raise SessionKeyUnavailable(
            f"The operating system's random source failed ({exc.__class__.__name__}); "
            "no session key was issued."
        ) from exc
    if not isinstance(data, bytes) or len(data) != nbytes:
        raise SessionKeyUnavailable("The random source returned a short or malformed read.")
    with _last_draw_lock:
        repeated = data == _last_draw
        _last_draw = data
    if repeated:
        raise SessionKeyUnavailable(
            "The random source returned the same bytes twice in a row; no session key was issued."
        )
    return data


def generate_key() -> str:
    """Return a fresh session key, or raise ``SessionKeyUnavailable``."""
    chars: list[str] = []
    for _ in range(_MAX_DRAWS_PER_KEY):
        for byte in _draw(_DRAW_BYTES):
            if byte < _UNIFORM_BOUND:
                chars.append(KEY_ALPHABET[byte % len(KEY_ALPHABET)])
                if len(chars) == KEY_LENGTH:
                    return "".join(chars)
    # Only a source stuck on values >= 252 gets here.
    raise SessionKeyUnavailable("The random source kept returning unusable bytes.")


def is_well_formed(key: object) -> bool:
    """True when ``key`` has exactly the length and alphabet of the keys this package issues."""
    return (
        isinstance(key, str)
        and len(key) == KEY_LENGTH
        and key.isascii()
        and _ALLOWED.issuperset(key)
    )


def store_key(session_key: str) -> str:
    """The name a session is stored under: the SHA-256 hex digest of its key."""
    return hashlib.sha256(session_key.encode("ascii")).hexdigest()
