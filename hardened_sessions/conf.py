"""The one place where hardened_sessions reads its settings.

``HARDENED_SESSIONS`` is a dict; unknown keys and bad values are reported by the
system checks in :mod:`hardened_sessions.checks`, which call :func:`validate`
(:mod:`hardened_sessions.conf_validate` says what each key may hold). At run time
:func:`get_config` returns the parsed settings, cached until a ``setting_changed``
signal (``override_settings`` in tests) says otherwise.

Django's own ``SESSION_COOKIE_*`` settings end up verbatim in a ``Set-Cookie``
header, so :func:`cookie_problems` checks that each can only mean what it says
(RFC 6265), and :func:`cookie_settings` refuses them at run time, even when the
system checks were silenced: a cookie attribute is never injected through a setting
(both in :mod:`hardened_sessions.conf_cookie`).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver

from .conf_cookie import CookieProblem, CookieSettings, cookie_problems, cookie_settings
from .conf_validate import DEFAULTS, MAX_TIMEOUT, device_choices, validate

__all__ = [
    "DEFAULTS",
    "MAX_TIMEOUT",
    "Config",
    "CookieProblem",
    "CookieSettings",
    "cookie_problems",
    "cookie_settings",
    "get_config",
    "signing_secrets",
    "validate",
]


@dataclass(frozen=True)
class Config:
    max_bytes: int
    idle_timeout: int | None
    absolute_timeout: int | None
    touch_interval: int | None
    key_attempts: int
    failure_view: str | None
    device_metadata: bool = False  # whether anything of the device is kept
    device_ip: str | None = None  # "full", "network" or None (DEVICE_METADATA["IP"])
    device_user_agent: str | None = None  # "raw", "parsed" or None
    metadata_retention: int | None = None
    max_sessions_per_user: int | None = None
    max_sessions_policy: str = "end_oldest"
    revoke_on_password_change: bool = True
    reauth_max_age: int = 900
    reauth_url: str | None = None
    end_sessions_on_deactivation: bool = True
    redis_wait_replicas: int = 0
    redis_wait_timeout_ms: int = 500
    metrics: bool = False


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
    device = device_choices(merged["DEVICE_METADATA"])
    config = Config(
        max_bytes=merged["MAX_BYTES"],
        idle_timeout=merged["IDLE_TIMEOUT"],
        absolute_timeout=merged["ABSOLUTE_TIMEOUT"],
        touch_interval=merged["TOUCH_INTERVAL"],
        key_attempts=merged["KEY_ATTEMPTS"],
        failure_view=merged["FAILURE_VIEW"],
        device_metadata=any(device.values()),
        device_ip=device["IP"],
        device_user_agent=device["USER_AGENT"],
        metadata_retention=merged["METADATA_RETENTION"],
        max_sessions_per_user=merged["MAX_SESSIONS_PER_USER"],
        max_sessions_policy=merged["MAX_SESSIONS_POLICY"],
        revoke_on_password_change=merged["REVOKE_ON_PASSWORD_CHANGE"],
        reauth_max_age=merged["REAUTH_MAX_AGE"],
        reauth_url=merged["REAUTH_URL"],
        end_sessions_on_deactivation=merged["END_SESSIONS_ON_DEACTIVATION"],
        redis_wait_replicas=merged["REDIS_WAIT_REPLICAS"],
        redis_wait_timeout_ms=merged["REDIS_WAIT_TIMEOUT_MS"],
        metrics=merged["METRICS"],
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
