"""The one place where hardened_sessions reads its settings.

``HARDENED_SESSIONS`` is a dict; unknown keys and bad values are reported by the
system checks in :mod:`hardened_sessions.checks`, which call :func:`validate`.
At run time :func:`get_config` returns the parsed settings, cached until a
``setting_changed`` signal (``override_settings`` in tests) says otherwise.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver

__all__ = ["DEFAULTS", "Config", "get_config", "signing_secrets", "validate"]

DEFAULTS: dict[str, Any] = {
    "MAX_BYTES": 65536,
    "IDLE_TIMEOUT": None,
    "ABSOLUTE_TIMEOUT": None,
    "TOUCH_INTERVAL": None,
    "KEY_ATTEMPTS": 10,
    "FAILURE_VIEW": None,
    "DEVICE_METADATA": False,
    "MAX_SESSIONS_PER_USER": None,
    "REVOKE_ON_PASSWORD_CHANGE": True,
}

# Bounds that keep a typo from turning into a denial of service or a no-op.
MIN_MAX_BYTES = 256
MAX_MAX_BYTES = 16 * 1024 * 1024
MAX_KEY_ATTEMPTS = 100
MAX_TIMEOUT = 10 * 365 * 24 * 3600


@dataclass(frozen=True)
class Config:
    max_bytes: int
    idle_timeout: int | None
    absolute_timeout: int | None
    touch_interval: int | None
    key_attempts: int
    failure_view: str | None
    device_metadata: bool = False
    max_sessions_per_user: int | None = None
    revoke_on_password_change: bool = True


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def validate(raw: Any) -> list[str]:
    """Return one message per problem in a ``HARDENED_SESSIONS`` value (empty when fine)."""
    if raw is None:
        return []
    if not isinstance(raw, dict):
        return [f"HARDENED_SESSIONS must be a dict, not {type(raw).__name__}."]
    problems = []
    for key in sorted(set(raw) - set(DEFAULTS)):
        problems.append(
            f"HARDENED_SESSIONS has an unknown key {key!r}; known keys: {', '.join(DEFAULTS)}."
        )
    merged = {**DEFAULTS, **raw}
    max_bytes = merged["MAX_BYTES"]
    if not _is_int(max_bytes) or not MIN_MAX_BYTES <= max_bytes <= MAX_MAX_BYTES:
        problems.append(
            f"HARDENED_SESSIONS['MAX_BYTES'] must be an integer from {MIN_MAX_BYTES} to "
            f"{MAX_MAX_BYTES}, not {max_bytes!r}."
        )
    for name in ("IDLE_TIMEOUT", "ABSOLUTE_TIMEOUT", "TOUCH_INTERVAL"):
        value = merged[name]
        if value is not None and (not _is_int(value) or not 0 < value <= MAX_TIMEOUT):
            problems.append(
                f"HARDENED_SESSIONS[{name!r}] must be None or a number of seconds from 1 to "
                f"{MAX_TIMEOUT} (ten years), not {value!r}."
            )
    attempts = merged["KEY_ATTEMPTS"]
    if not _is_int(attempts) or not 1 <= attempts <= MAX_KEY_ATTEMPTS:
        problems.append(
            f"HARDENED_SESSIONS['KEY_ATTEMPTS'] must be an integer from 1 to "
            f"{MAX_KEY_ATTEMPTS}, not {attempts!r}."
        )
    view = merged["FAILURE_VIEW"]
    if view is not None and (not isinstance(view, str) or "." not in view):
        problems.append(
            "HARDENED_SESSIONS['FAILURE_VIEW'] must be None or the dotted path of a view, "
            f"not {view!r}."
        )
    for name in ("DEVICE_METADATA", "REVOKE_ON_PASSWORD_CHANGE"):
        if not isinstance(merged[name], bool):
            problems.append(
                f"HARDENED_SESSIONS[{name!r}] must be True or False, not {merged[name]!r}."
            )
    cap = merged["MAX_SESSIONS_PER_USER"]
    if cap is not None and (not _is_int(cap) or cap < 1):
        problems.append(
            "HARDENED_SESSIONS['MAX_SESSIONS_PER_USER'] must be None or a positive integer, "
            f"not {cap!r}."
        )
    idle, touch = merged["IDLE_TIMEOUT"], merged["TOUCH_INTERVAL"]
    if touch is not None and _is_int(touch):
        if idle is None:
            problems.append(
                "HARDENED_SESSIONS['TOUCH_INTERVAL'] needs IDLE_TIMEOUT: without an idle "
                "timeout there is no activity to record."
            )
        elif _is_int(idle) and touch >= idle:
            problems.append(
                f"HARDENED_SESSIONS['TOUCH_INTERVAL'] ({touch}) must be below IDLE_TIMEOUT "
                f"({idle}), or an active session would be timed out between two touches."
            )
    return problems


_lock = threading.Lock()
_cached: Config | None = None


def get_config() -> Config:
    """The parsed ``HARDENED_SESSIONS``; raises ``ImproperlyConfigured`` if it is invalid."""
    global _cached
    config = _cached
    if config is not None:
        return config
    raw = getattr(settings, "HARDENED_SESSIONS", None)
    problems = validate(raw)
    if problems:
        from django.core.exceptions import ImproperlyConfigured

        raise ImproperlyConfigured(" ".join(problems))
    merged = {**DEFAULTS, **(raw or {})}
    config = Config(
        max_bytes=merged["MAX_BYTES"],
        idle_timeout=merged["IDLE_TIMEOUT"],
        absolute_timeout=merged["ABSOLUTE_TIMEOUT"],
        touch_interval=merged["TOUCH_INTERVAL"],
        key_attempts=merged["KEY_ATTEMPTS"],
        failure_view=merged["FAILURE_VIEW"],
        device_metadata=merged["DEVICE_METADATA"],
        max_sessions_per_user=merged["MAX_SESSIONS_PER_USER"],
        revoke_on_password_change=merged["REVOKE_ON_PASSWORD_CHANGE"],
    )
    with _lock:
        _cached = config
    return config


@receiver(setting_changed)
def _reset(*, setting: str, **kwargs: Any) -> None:
    global _cached
    if setting == "HARDENED_SESSIONS":
        with _lock:
            _cached = None


def signing_secrets() -> list[str | bytes]:
    """``SECRET_KEY`` first, then ``SECRET_KEY_FALLBACKS``: records are signed with the
    first and verified against all of them, so a key rotation logs nobody out."""
    return [settings.SECRET_KEY, *getattr(settings, "SECRET_KEY_FALLBACKS", ())]
