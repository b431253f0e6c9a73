"""What ``HARDENED_SESSIONS`` may hold: its keys, their defaults and bounds, and the check.

:func:`validate` returns one message per problem of a ``HARDENED_SESSIONS`` value: an
unknown key, a value of the wrong type or out of its bounds, settings that contradict
each other. The system checks report them (``hardened_sessions.E001``) and
:func:`hardened_sessions.conf.get_config` refuses to run on them. The bounds keep a typo
from turning into a denial of service or a no-op.
"""

from __future__ import annotations

import importlib.util
from typing import Any

__all__ = [
    "DEFAULTS",
    "DEVICE_IP_CHOICES",
    "DEVICE_METADATA_ON",
    "DEVICE_USER_AGENT_CHOICES",
    "MAX_KEY_ATTEMPTS",
    "MAX_MAX_BYTES",
    "MAX_SESSIONS_POLICIES",
    "MAX_TIMEOUT",
    "MAX_WAIT_REPLICAS",
    "MAX_WAIT_TIMEOUT_MS",
    "MIN_MAX_BYTES",
    "device_choices",
    "is_int",
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


def is_int(value: Any) -> bool:
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


def device_choices(value: bool | dict[str, Any]) -> dict[str, Any]:
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
    if not is_int(max_bytes) or not MIN_MAX_BYTES <= max_bytes <= MAX_MAX_BYTES:
        problems.append(
            f"HARDENED_SESSIONS['MAX_BYTES'] must be an integer from {MIN_MAX_BYTES} to "
            f"{MAX_MAX_BYTES}, not {max_bytes!r}."
        )
    for name in ("IDLE_TIMEOUT", "ABSOLUTE_TIMEOUT", "TOUCH_INTERVAL"):
        value = merged[name]
        if value is not None and (not is_int(value) or not 0 < value <= MAX_TIMEOUT):
            problems.append(
                f"HARDENED_SESSIONS[{name!r}] must be None or a number of seconds from 1 to "
                f"{MAX_TIMEOUT} (ten years), not {value!r}."
            )
    attempts = merged["KEY_ATTEMPTS"]
    if not is_int(attempts) or not 1 <= attempts <= MAX_KEY_ATTEMPTS:
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
    if retention is not None and (not is_int(retention) or not 0 < retention <= MAX_TIMEOUT):
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
    if cap is not None and (not is_int(cap) or cap < 1):
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
    if not is_int(reauth_age) or not 0 < reauth_age <= MAX_TIMEOUT:
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
    if not is_int(wait) or not 0 <= wait <= MAX_WAIT_REPLICAS:
        problems.append(
            "HARDENED_SESSIONS['REDIS_WAIT_REPLICAS'] must be an integer from 0 (off) to "
            f"{MAX_WAIT_REPLICAS}, not {wait!r}."
        )
    wait_ms = merged["REDIS_WAIT_TIMEOUT_MS"]
    # 0 would be Redis's "wait forever": a lost replica would hang every request.
    if not is_int(wait_ms) or not 0 < wait_ms <= MAX_WAIT_TIMEOUT_MS:
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
    if touch is not None and is_int(touch):
        if idle is None:
            problems.append(
                "HARDENED_SESSIONS['TOUCH_INTERVAL'] needs IDLE_TIMEOUT: without an idle "
                "timeout there is no activity to record."
            )
        elif is_int(idle) and touch >= idle:
            problems.append(
                f"HARDENED_SESSIONS['TOUCH_INTERVAL'] ({touch}) must be below IDLE_TIMEOUT "
                f"({idle}), or an active session would be timed out between two touches."
            )
    return problems
