"""``MAX_SESSIONS_PER_USER`` on Redis: the cap's arguments to a login's script, and what
its reply says (sync and asyncio stores alike).

The script that writes a login's record (``ADD_SCRIPT``, ``STAGED_CAS_SCRIPT`` in
:mod:`.redis_scripts`) also ends the user's oldest sessions beyond the cap, or refuses
the login under the refuse policy; these are its last, optional arguments (none: no
cap), and its reply lists the sessions it ended.
"""

from __future__ import annotations

from typing import Any

from ..cap import UserCap
from ..exceptions import SessionLimitReached
from .redis_scripts import TOMBSTONE_TTL, nonce, text

__all__ = ["cap_args", "capped"]


def cap_args(cap: UserCap | None, keys: list[str], template: tuple[str, str] | None) -> list[Any]:
    """The cap's script arguments (see ``redis_scripts._CAP_FUNCTIONS_LUA``): none without
    a cap, without the user's index among ``keys``, or without ``template``, the
    ``(prefix, suffix)`` around a member in its record's name."""
    if cap is None or len(keys) < 2 or template is None:
        return []
    prefix, suffix = template
    return [cap.limit, int(cap.refuse), prefix, suffix, nonce(), TOMBSTONE_TTL]


def capped(reply: Any, cap: UserCap | None) -> Any:
    """A script's reply with the members the cap ended moved into ``cap``;
    ``SessionLimitReached`` when the cap refused the login."""
    if cap is None:
        return reply
    if isinstance(reply, list):
        cap.ended.extend(text(member) for member in reply[1:])
        return reply[0]
    if reply == -2:
        raise SessionLimitReached(cap.limit)
    return reply
