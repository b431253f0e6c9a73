"""What ``HARDENED_SESSIONS["DEVICE_METADATA"]`` keeps of a client, and nothing more.

The db engines store a session's device metadata through :func:`stored_ip` and
:func:`stored_user_agent`, the one place where it is reduced before it is written:

* ``IP``: ``"full"`` keeps the address; ``"network"`` (what ``True`` means) keeps its
  network, ``/24`` for IPv4 and ``/48`` for IPv6, written as the network's first address
  (``203.0.113.0``, ``2001:db8:1::``); an IPv4-mapped IPv6 address (``::ffff:1.2.3.4``)
  is an IPv4 client and is kept as IPv4, and so is, for ``"network"``, a 6to4 one
  (``2002:0102:0304::/48`` holds the whole IPv4 address). ``None`` keeps nothing.
  Whatever is not an IP address (``unix:/run/app.sock``, ``1.2.3.4:80``, an empty
  ``REMOTE_ADDR``) is ``None``.
* ``USER_AGENT``: ``"raw"`` (what ``True`` means) keeps the header's first
  :data:`USER_AGENT_MAX` printable characters; ``"parsed"`` keeps only the browser and
  operating system with their major versions (``"Firefox 120 / Windows 10"``), through
  ``ua-parser`` (the ``useragent`` extra); ``None`` keeps nothing.

The system check ``hardened_sessions.E020`` refuses ``"parsed"`` when ``ua-parser`` is
not installed; should it be missing anyway (checks silenced), nothing is kept of the
user agent rather than the raw header.

A login from a new device sends ``session_new_device`` (:func:`notify_new_device`), on
the engines that keep device metadata (db, cached_db). Two devices are the same
(:func:`same_device`) when, of what is kept:

* the browser family and the operating system family are the same (``"Firefox 120 /
  Windows 10"`` and ``"Firefox 121 / Windows 10"`` are one device: the major versions
  are dropped). A raw user agent is parsed into both families when ua-parser is
  installed; without it, or when it recognises neither, the raw headers (as stored:
  the first 300 printable characters) must be equal;
* the IP addresses are in the same network (``/24``, ``/48``) when ``"IP"`` is
  ``"full"`` or ``"network"``; with ``"IP": None`` the network is not compared.

The cache engine keeps no device metadata (its per-user index holds key hashes only),
so it never sends the signal; the system check ``hardened_sessions.W403`` says so when
``DEVICE_METADATA`` is on there.
"""

from __future__ import annotations

import functools
import importlib
import ipaddress
import logging
import re
from collections.abc import Mapping
from typing import Any

from django.core.checks import CheckMessage, Error, Tags, register
from django.core.checks import Warning as CheckWarning

from .conf import get_config, validate

__all__ = [
    "IPV4_PREFIX",
    "IPV6_PREFIX",
    "USER_AGENT_MAX",
    "check_cache_engine_device_metadata",
    "check_user_agent_parser",
    "device_key",
    "notify_new_device",
    "parse_user_agent",
    "same_device",
    "stored_ip",
    "stored_user_agent",
]

logger = logging.getLogger("hardened_sessions")

IPV4_PREFIX = 24
IPV6_PREFIX = 48
# The ``user_agent`` column's length (models.HardenedSession).
USER_AGENT_MAX = 300
# Each part of a parsed user agent (family, version): ua-parser copies them from the
# header, so a crafted header could otherwise fill the column through them.
_PART_MAX = 60


def stored_ip(value: Any, mode: str | None) -> str | None:
    """What is stored of the address ``value`` under the ``IP`` choice ``mode``."""
    if mode is None or not isinstance(value, str) or not value:
        return None
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        elif address.sixtofour is not None and mode == "network":
            # 2002:cb00:7109::/48 is 6to4's prefix for 203.0.113.9: its /48 is the
            # whole IPv4 address.
            address = address.sixtofour
        elif address.scope_id:
            if mode == "full":
                return None  # fe80::1%eth0: no inet column takes it
            address = ipaddress.IPv6Address(int(address))  # the network has no zone
    if mode == "full":
        return str(address)
    prefix = IPV4_PREFIX if address.version == 4 else IPV6_PREFIX
    network = ipaddress.ip_network(f"{address}/{prefix}", strict=False)
    return str(network.network_address)


def stored_user_agent(value: Any, mode: str | None) -> str:
    """What is stored of the ``User-Agent`` header ``value`` under the ``USER_AGENT``
    choice ``mode`` (``""`` for nothing, as the column's default)."""
    if mode is None or not isinstance(value, str) or not value:
        return ""
    # Control characters: PostgreSQL refuses NUL in text, which would make every save of
    # the session fail; none of them belongs in a header.
    text = "".join(ch for ch in value if ch.isprintable())
    if mode == "parsed":
        return parse_user_agent(text)
    return text[:USER_AGENT_MAX]


def _parser() -> Any:
    """The ``ua_parser`` module (1.0 or later), or ``None``."""
    try:
        module = importlib.import_module("ua_parser")
    except ImportError:
        return None
    # ua-parser before 1.0 has neither: its API was user_agent_parser.Parse().
    if not (hasattr(module, "parse_user_agent") and hasattr(module, "parse_os")):
        return None
    return module


@functools.cache
def _missing_parser() -> None:
    # Once per process: the system check E020 says it at start-up already.
    logger.error(
        "DEVICE_METADATA asks for the parsed user agent but ua-parser 1.0 or later is not "
        'installed (pip install "django-hardened-sessions[useragent]"); not storing it.'
    )


def _part(family: Any, major: Any) -> str:
    if not family or family == "Other":
        return ""
    text = str(family)[:_PART_MAX]
    if major:
        text = f"{text} {str(major)[:_PART_MAX]}"
    return text


def parse_user_agent(value: str) -> str:
    """``"<browser> <major> / <os> <major>"`` (the parts ua-parser recognises), or ``""``."""
    parser = _parser()
    if parser is None:
        _missing_parser()
        return ""
    agent = parser.parse_user_agent(value)
    system = parser.parse_os(value)
    parts = [
        _part(getattr(agent, "family", None), getattr(agent, "major", None)),
        _part(getattr(system, "family", None), getattr(system, "major", None)),
    ]
    return " / ".join(part for part in parts if part)[:USER_AGENT_MAX]


@register(Tags.security, "sessions")
def check_user_agent_parser(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """E020: ``"USER_AGENT": "parsed"`` without ua-parser (1.0 or later) installed."""
    from django.conf import settings

    if validate(getattr(settings, "HARDENED_SESSIONS", None)):
        return []  # E001 reports the setting itself
    if get_config().device_user_agent != "parsed" or _parser() is not None:
        return []
    return [
        Error(
            "HARDENED_SESSIONS['DEVICE_METADATA'] asks for the parsed user agent "
            '("USER_AGENT": "parsed") but ua-parser 1.0 or later is not installed.',
            hint='pip install "django-hardened-sessions[useragent]", or choose "raw" or None.',
            id="hardened_sessions.E020",
        )
    ]


# --- the same device -------------------------------------------------------------------

# The " <major>" that parse_user_agent() puts after a family ("Firefox 120", "Windows 10").
_MAJOR = re.compile(r" [0-9][0-9A-Za-z._-]*$")


def _families(agent: str, mode: str | None) -> str:
    """The browser and operating system families in ``agent`` (a stored user agent)."""
    if mode is None or not agent:
        return ""
    if mode == "parsed":
        return " / ".join(_MAJOR.sub("", part) for part in agent.split(" / "))
    parser = _parser()
    if parser is None:
        return agent  # no parser: the raw header compares whole
    browser = getattr(parser.parse_user_agent(agent), "family", None)
    system = getattr(parser.parse_os(agent), "family", None)
    parts = [str(p)[:_PART_MAX] for p in (browser, system) if p and p != "Other"]
    return " / ".join(parts) if parts else agent


def device_key(
    ip_address: str | None, user_agent: str, choices: Mapping[str, str | None]
) -> tuple[str | None, str]:
    """What two devices are compared by: the network of ``ip_address`` (``None`` when
    the address is not kept) and the families of ``user_agent``, both as stored under
    ``choices`` (``{"IP": ..., "USER_AGENT": ...}``)."""
    network = None
    if choices.get("IP") is not None and ip_address:
        network = stored_ip(ip_address, "network")
    return network, _families(user_agent or "", choices.get("USER_AGENT"))


def same_device(
    first: tuple[str | None, str],
    second: tuple[str | None, str],
    choices: Mapping[str, str | None],
) -> bool:
    """Whether two stored ``(ip_address, user_agent)`` pairs are one device under
    ``choices`` (the module's docstring says what that means)."""
    return device_key(*first, choices) == device_key(*second, choices)


def _model_backed_engine() -> Any:
    """The configured engine's ``SessionStore`` when it keeps device metadata, else None."""
    from django.conf import settings

    from .capabilities import Capability, capabilities_of

    try:
        store_class = importlib.import_module(settings.SESSION_ENGINE).SessionStore
    except (ImportError, AttributeError):
        return None
    if Capability.ROWS in capabilities_of(store_class):
        return store_class
    return None


def notify_new_device(sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
    """``user_logged_in`` receiver: send ``session_new_device`` when the device of this
    login matches none of the user's other live sessions.

    Only on engines that keep device metadata (db, cached_db) and with
    ``DEVICE_METADATA`` on. A user with no other live session that has device metadata
    (a first login, or every other session ended or cleared by ``METADATA_RETENTION``)
    gets no signal: there is nothing the device could be new against. Ended sessions
    do not count. The device of this login is reduced as the middleware's is before it
    is stored, so it compares with the stored rows as equals. A failure to list the
    sessions is logged and the login goes on."""
    from . import keys, revoke
    from .signals import session_new_device

    config = get_config()
    if not config.device_metadata or request is None or user is None:
        return
    store_class = _model_backed_engine()
    session = getattr(request, "session", None)
    session_key = getattr(session, "session_key", None)
    if store_class is None or not session_key or not keys.is_well_formed(session_key):
        return
    if not session_new_device.has_listeners(store_class):
        return
    current = keys.store_key(session_key)
    choices = {"IP": config.device_ip, "USER_AGENT": config.device_user_agent}
    meta = getattr(request, "META", {})
    this = device_key(
        stored_ip(meta.get("REMOTE_ADDR", ""), config.device_ip),
        stored_user_agent(meta.get("HTTP_USER_AGENT", ""), config.device_user_agent),
        choices,
    )
    try:
        others = [s for s in revoke.user_sessions(user) if s.key_hash != current]
    except Exception:  # noqa: BLE001 -- a notice must never stop a login
        logger.warning("Could not list the sessions of user %s to compare devices.", user.pk)
        return
    known = {
        device_key(s.ip_address, s.user_agent, choices)
        for s in others
        if s.ip_address or s.user_agent
    }
    if not known or this in known:
        return
    from .views_sessions import handle_of

    session_new_device.send(
        sender=store_class, user=user, request=request, session_handle=handle_of(current)
    )


@register(Tags.security, "sessions")
def check_cache_engine_device_metadata(
    app_configs: Any = None, **kwargs: Any
) -> list[CheckMessage]:
    """W403: ``DEVICE_METADATA`` is on but the engine is the cache engine, which keeps
    none (neither the sessions page nor ``session_new_device`` see a device)."""
    from django.conf import settings

    from .capabilities import Capability, engine_capabilities

    if validate(getattr(settings, "HARDENED_SESSIONS", None)):
        return []  # E001 reports the setting itself
    if not get_config().device_metadata:
        return []
    caps = engine_capabilities()
    if Capability.CACHE not in caps or Capability.ROWS in caps:
        return []
    return [
        CheckWarning(
            "HARDENED_SESSIONS['DEVICE_METADATA'] is on, but the cache engine keeps no device "
            "metadata (its per-user index holds key hashes only): the sessions pages show "
            "no device and session_new_device is never sent.",
            hint="Use the db or cached_db engine to keep device metadata, or set "
            "DEVICE_METADATA to False.",
            id="hardened_sessions.W403",
        )
    ]
