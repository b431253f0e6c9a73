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
"""

from __future__ import annotations

import functools
import importlib
import ipaddress
import logging
from typing import Any

from django.core.checks import CheckMessage, Error, Tags, register

from .conf import get_config, validate

__all__ = [
    "IPV4_PREFIX",
    "IPV6_PREFIX",
    "USER_AGENT_MAX",
    "check_user_agent_parser",
    "parse_user_agent",
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
