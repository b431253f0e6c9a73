"""The one place where hardened_sessions reads its settings.

``HARDENED_SESSIONS`` is a dict; unknown keys and bad values are reported by the
system checks in :mod:`hardened_sessions.checks`, which call :func:`validate`.
At run time :func:`get_config` returns the parsed settings, cached until a
``setting_changed`` signal (``override_settings`` in tests) says otherwise.

Django's own ``SESSION_COOKIE_*`` settings end up verbatim in a ``Set-Cookie``
header, so :func:`cookie_problems` checks that each can only mean what it says
(RFC 6265), and :func:`cookie_settings` refuses them at run time, even when the
system checks were silenced: a cookie attribute is never injected through a setting.
"""

from __future__ import annotations

import importlib.util
import re
import threading
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver

__all__ = [
    "DEFAULTS",
    "Config",
    "CookieProblem",
    "CookieSettings",
    "cookie_problems",
    "cookie_settings",
    "get_config",
    "signing_secrets",
    "validate",
]

DEFAULTS: dict[str, Any] = {
    "MAX_BYTES": 65536,
    "IDLE_TIMEOUT": None,
    "ABSOLUTE_TIMEOUT": None,
    "TOUCH_INTERVAL": None,
    "KEY_ATTEMPTS": 10,
    "FAILURE_VIEW": None,
    "DEVICE_METADATA": False,
    "METADATA_RETENTION": None,
    "MAX_SESSIONS_PER_USER": None,
    "MAX_SESSIONS_POLICY": "end_oldest",
    "REVOKE_ON_PASSWORD_CHANGE": True,
    "REAUTH_MAX_AGE": 900,
    "REAUTH_URL": None,
    "END_SESSIONS_ON_DEACTIVATION": True,
    "REDIS_WAIT_REPLICAS": 0,
    "REDIS_WAIT_TIMEOUT_MS": 500,
    "METRICS": False,
}

# Bounds that keep a typo from turning into a denial of service or a no-op.
MIN_MAX_BYTES = 256
MAX_MAX_BYTES = 16 * 1024 * 1024
MAX_KEY_ATTEMPTS = 100
MAX_TIMEOUT = 10 * 365 * 24 * 3600
MAX_WAIT_REPLICAS = 100
MAX_WAIT_TIMEOUT_MS = 60_000
# MAX_SESSIONS_POLICY: a login over MAX_SESSIONS_PER_USER ends the user's oldest
# sessions, or is refused.
MAX_SESSIONS_POLICIES = ("end_oldest", "refuse")


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


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# DEVICE_METADATA: what each part may keep (device.py says what each choice keeps).
DEVICE_IP_CHOICES = ("full", "network", None)
DEVICE_USER_AGENT_CHOICES = ("raw", "parsed", None)
# What True means (it kept the whole address before the choices came: CHANGELOG).
DEVICE_METADATA_ON = {"IP": "network", "USER_AGENT": "raw"}


def _device_problems(value: Any) -> list[str]:
    if isinstance(value, bool):
        return []
    if not isinstance(value, dict):
        return [
            "HARDENED_SESSIONS['DEVICE_METADATA'] must be True, False or a dict "
            f'{{"IP": ..., "USER_AGENT": ...}}, not {value!r}.'
        ]
    problems = []
    if set(value) != {"IP", "USER_AGENT"}:
        problems.append(
            "HARDENED_SESSIONS['DEVICE_METADATA'] as a dict must have exactly the keys "
            f"'IP' and 'USER_AGENT', not {sorted(map(repr, value))}."
        )
    for key, choices in (("IP", DEVICE_IP_CHOICES), ("USER_AGENT", DEVICE_USER_AGENT_CHOICES)):
        choice = value.get(key)
        if key in value and (
            not (choice is None or isinstance(choice, str)) or choice not in choices
        ):
            problems.append(
                f"HARDENED_SESSIONS['DEVICE_METADATA'][{key!r}] must be one of "
                f"{', '.join(map(repr, choices))}, not {choice!r}."
            )
    return problems


def _device_choices(value: bool | dict[str, Any]) -> dict[str, Any]:
    if value is True:
        return DEVICE_METADATA_ON
    if value is False:
        return {"IP": None, "USER_AGENT": None}
    return value


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
    problems.extend(_device_problems(merged["DEVICE_METADATA"]))
    retention = merged["METADATA_RETENTION"]
    if retention is not None and (not _is_int(retention) or not 0 < retention <= MAX_TIMEOUT):
        problems.append(
            "HARDENED_SESSIONS['METADATA_RETENTION'] must be None or a number of seconds "
            f"from 1 to {MAX_TIMEOUT} (ten years), not {retention!r}."
        )
    for name in ("REVOKE_ON_PASSWORD_CHANGE", "END_SESSIONS_ON_DEACTIVATION"):
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
    policy = merged["MAX_SESSIONS_POLICY"]
    if policy not in MAX_SESSIONS_POLICIES:
        problems.append(
            "HARDENED_SESSIONS['MAX_SESSIONS_POLICY'] must be one of "
            f"{', '.join(repr(p) for p in MAX_SESSIONS_POLICIES)}, not {policy!r}."
        )
    reauth_age = merged["REAUTH_MAX_AGE"]
    if not _is_int(reauth_age) or not 0 < reauth_age <= MAX_TIMEOUT:
        problems.append(
            "HARDENED_SESSIONS['REAUTH_MAX_AGE'] must be a number of seconds from 1 to "
            f"{MAX_TIMEOUT} (ten years), not {reauth_age!r}."
        )
    reauth_url = merged["REAUTH_URL"]
    if reauth_url is not None and (not isinstance(reauth_url, str) or not reauth_url):
        problems.append(
            "HARDENED_SESSIONS['REAUTH_URL'] must be None or a URL or URL name, "
            f"not {reauth_url!r}."
        )
    wait = merged["REDIS_WAIT_REPLICAS"]
    if not _is_int(wait) or not 0 <= wait <= MAX_WAIT_REPLICAS:
        problems.append(
            "HARDENED_SESSIONS['REDIS_WAIT_REPLICAS'] must be an integer from 0 (off) to "
            f"{MAX_WAIT_REPLICAS}, not {wait!r}."
        )
    wait_ms = merged["REDIS_WAIT_TIMEOUT_MS"]
    # 0 would be Redis's "wait forever": a lost replica would hang every request.
    if not _is_int(wait_ms) or not 0 < wait_ms <= MAX_WAIT_TIMEOUT_MS:
        problems.append(
            "HARDENED_SESSIONS['REDIS_WAIT_TIMEOUT_MS'] must be a number of milliseconds "
            f"from 1 to {MAX_WAIT_TIMEOUT_MS}, not {wait_ms!r}."
        )
    metrics = merged["METRICS"]
    if not isinstance(metrics, bool):
        problems.append(f"HARDENED_SESSIONS['METRICS'] must be True or False, not {metrics!r}.")
    elif metrics and importlib.util.find_spec("prometheus_client") is None:
        problems.append(
            "HARDENED_SESSIONS['METRICS'] is True but prometheus_client is not installed: "
            "pip install django-hardened-sessions[metrics]."
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
    device = _device_choices(merged["DEVICE_METADATA"])
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
    global _cached, _cookie_cached
    if setting == "HARDENED_SESSIONS":
        with _lock:
            _cached = None
    elif setting.startswith("SESSION_COOKIE_"):
        with _lock:
            _cookie_cached = None


# --- Django's cookie settings -----------------------------------------------------------

# RFC 6265 section 4.1.1: cookie-name is an RFC 2616 token, i.e. visible US-ASCII except
# the separators. (Python's http.cookies also takes ":", which is a separator.)
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# path-value is any CHAR except CTLs and ";" (RFC 6265 section 4.1.1). Narrower here, on
# purpose: a space, '"' and '\' make Python's own cookie parser drop the attribute or
# the whole cookie, and "," is where parsers that split a folded Set-Cookie header cut
# it. A browser ignores a Path that does not start with "/" (section 5.2.4).
_PATH = re.compile(r"/[!#$%&'()*+\-./0-9:<=>?@A-Z\[\]^_`a-z{|}~]*")
# A host name: dot-separated labels of letters, digits and "-" (not at either end of a
# label), optionally after a leading "." (ignored by browsers, section 5.2.3).
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DOMAIN = re.compile(rf"\.?{_LABEL}(?:\.{_LABEL})*")
_SAMESITE = ("lax", "strict", "none")
# Cookie attribute names: Python's cookie library refuses them as a cookie's name
# (``http.cookies.Morsel``; "partitioned" since Python 3.14), so every response that sets
# the cookie would raise.
_ATTRIBUTE_NAMES = frozenset(
    {
        "comment",
        "domain",
        "expires",
        "httponly",
        "max-age",
        "partitioned",
        "path",
        "samesite",
        "secure",
        "version",
    }
)
# RFC 6265bis: user agents ignore a cookie whose attribute value is longer than this.
MAX_ATTRIBUTE_LENGTH = 1024


@dataclass(frozen=True)
class CookieProblem:
    """One bad ``SESSION_COOKIE_*`` setting: the check id it is reported under."""

    id: str
    msg: str
    hint: str


def cookie_problems() -> list[CookieProblem]:
    """Problems of ``SESSION_COOKIE_NAME``, ``_PATH``, ``_DOMAIN``, ``_SAMESITE`` and
    ``_AGE``: values that would inject or break a ``Set-Cookie`` attribute, crash the
    response, or make every session dead on arrival."""
    problems = []
    name = settings.SESSION_COOKIE_NAME
    if not isinstance(name, str) or not _TOKEN.fullmatch(name) or name.lower() in _ATTRIBUTE_NAMES:
        problems.append(
            CookieProblem(
                "hardened_sessions.E101",
                f"SESSION_COOKIE_NAME is {name!r}, which is not a cookie name: it must be "
                "letters, digits and !#$%&'*+-.^_`|~ only (an RFC 2616 token), and not "
                "the name of a cookie attribute.",
                'Spaces, control characters, non-ASCII and ()<>@,;:\\"/[]?={} would '
                "break or extend the Set-Cookie header; an attribute's name (Path, "
                "Expires, Secure, ...) makes Python's cookie library refuse the cookie.",
            )
        )
    path = settings.SESSION_COOKIE_PATH
    if not isinstance(path, str) or not _PATH.fullmatch(path) or len(path) > MAX_ATTRIBUTE_LENGTH:
        problems.append(
            CookieProblem(
                "hardened_sessions.E102",
                f"SESSION_COOKIE_PATH is {path!r}, which cannot be a cookie's Path: it must "
                "start with '/' and hold no ';', ',', space, quote, backslash, control or "
                f"non-ASCII character, in at most {MAX_ATTRIBUTE_LENGTH} characters.",
                "Percent-encode such characters as the URLs do (e.g. %20), or set '/'.",
            )
        )
    domain = settings.SESSION_COOKIE_DOMAIN
    if (
        domain is not None
        and domain != ""
        and (not isinstance(domain, str) or not _DOMAIN.fullmatch(domain) or len(domain) > 253)
    ):
        problems.append(
            CookieProblem(
                "hardened_sessions.E103",
                f"SESSION_COOKIE_DOMAIN is {domain!r}, which is not a host name: it must be "
                "labels of letters, digits and '-' separated by dots (a leading dot is "
                "allowed).",
                "Use None (the cookie then goes to the exact host only), or a name such as "
                "'example.com'; write international names in their xn-- (punycode) form.",
            )
        )
    samesite = settings.SESSION_COOKIE_SAMESITE
    # False, or None as Django took it before False: no SameSite attribute.
    if (
        samesite is not False
        and samesite is not None
        and (not isinstance(samesite, str) or samesite.lower() not in _SAMESITE)
    ):
        problems.append(
            CookieProblem(
                "hardened_sessions.E006",
                f"SESSION_COOKIE_SAMESITE is {samesite!r}; use 'Lax', 'Strict', 'None' or False.",
                "Django refuses any other value when it sets the cookie.",
            )
        )
    age = settings.SESSION_COOKIE_AGE
    if not _is_int(age) or not 0 < age <= MAX_TIMEOUT:
        problems.append(
            CookieProblem(
                "hardened_sessions.E104",
                f"SESSION_COOKIE_AGE is {age!r}; it must be a whole number of seconds from 1 "
                f"to {MAX_TIMEOUT} (ten years).",
                "Zero or less makes every session expire as it is created; beyond the bound "
                "the stores' expiry dates overflow (browsers keep a cookie 400 days at most).",
            )
        )
    return problems


# Problems that would put another attribute into the header or make Django raise while
# emitting it: refused at run time as well (the others are check errors only).
RUNTIME_COOKIE_CHECKS = frozenset(
    {
        "hardened_sessions.E101",
        "hardened_sessions.E102",
        "hardened_sessions.E103",
        "hardened_sessions.E006",
    }
)


@dataclass(frozen=True)
class CookieSettings:
    name: str
    path: str
    domain: str | None
    samesite: str | bool
    secure: bool
    httponly: bool


_cookie_cached: CookieSettings | None = None


def cookie_settings() -> CookieSettings:
    """Django's ``SESSION_COOKIE_*`` settings, validated; ``ImproperlyConfigured`` when
    one of them would inject or break a ``Set-Cookie`` attribute (see
    :func:`cookie_problems`), whether or not the system checks ran."""
    global _cookie_cached
    cached = _cookie_cached
    if cached is not None:
        return cached
    refused = [p for p in cookie_problems() if p.id in RUNTIME_COOKIE_CHECKS]
    if refused:
        from django.core.exceptions import ImproperlyConfigured

        raise ImproperlyConfigured(" ".join(f"{p.msg} ({p.id})" for p in refused))
    cached = CookieSettings(
        name=settings.SESSION_COOKIE_NAME,
        path=settings.SESSION_COOKIE_PATH,
        domain=settings.SESSION_COOKIE_DOMAIN or None,
        samesite=settings.SESSION_COOKIE_SAMESITE,
        secure=bool(settings.SESSION_COOKIE_SECURE),
        httponly=bool(settings.SESSION_COOKIE_HTTPONLY),
    )
    with _lock:
        _cookie_cached = cached
    return cached


def signing_secrets() -> list[str | bytes]:
    """``SECRET_KEY`` first, then ``SECRET_KEY_FALLBACKS``: records are signed with the
    first and verified against all of them, so a key rotation logs nobody out."""
    return [settings.SECRET_KEY, *getattr(settings, "SECRET_KEY_FALLBACKS", ())]
