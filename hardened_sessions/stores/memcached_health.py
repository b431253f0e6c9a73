"""Which memcached servers a process counts as failing or dead: the dead-server rule.

One view per process, shared by its threads, with pymemcache's meaning of
``retry_attempts``, ``retry_timeout`` and ``dead_timeout`` (defaults 2, 1 and 60 s):
a server whose connection fails is *failing*; after ``retry_timeout`` one request
tries it again (a *probe*); success brings it back, and ``retry_attempts`` failed
probes make it *dead*; while dead, one request tries it again every ``dead_timeout``.
A server that answers is live again at once.

:class:`Health` keeps that view and gives its verdict on a server before each command;
what the store does with each verdict (503, a miss, another key) is in
:mod:`hardened_sessions.stores.memcached`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

__all__ = ["DEAD", "FAILING", "FAILURE_OPTIONS", "LIVE", "PROBE", "Health"]

logger = logging.getLogger("hardened_sessions")

# The failure options of OPTIONS, with pymemcache's defaults.
FAILURE_OPTIONS = {"retry_attempts": 2, "retry_timeout": 1, "dead_timeout": 60}

LIVE, PROBE, FAILING, DEAD = range(4)


class _Down:
    """A server this process saw fail: since when, how many retries failed, dead or not."""

    __slots__ = ("attempts", "dead", "since")

    def __init__(self, since: float, attempts: int, dead: bool) -> None:
        self.since = since
        self.attempts = attempts
        self.dead = dead


class Health:
    """Which servers are failing or dead, for every thread of the process."""

    def __init__(self, names: list[str], options: Mapping[str, Any]) -> None:
        self.names = names
        self.retry_attempts = options.get("retry_attempts", FAILURE_OPTIONS["retry_attempts"])
        self.retry_timeout = options.get("retry_timeout", FAILURE_OPTIONS["retry_timeout"])
        self.dead_timeout = options.get("dead_timeout", FAILURE_OPTIONS["dead_timeout"])
        self.down: list[_Down | None] = [None] * len(names)
        self._lock = threading.Lock()

    def verdict(self, i: int) -> int:
        """``LIVE``, ``FAILING``, ``DEAD``, or ``PROBE``: the caller tries the server
        again, and its outcome counts (the others keep waiting another period meanwhile)."""
        if self.down[i] is None:
            return LIVE
        with self._lock:
            state = self.down[i]
            if state is None:
                return LIVE
            now = time.time()
            elapsed = now - state.since
            # A clock that went backwards makes the server due for a retry, not stuck.
            if 0 <= elapsed <= (self.dead_timeout if state.dead else self.retry_timeout):
                return DEAD if state.dead else FAILING
            state.since = now
            return PROBE

    def failed(self, i: int, probe: bool) -> None:
        with self._lock:
            state = self.down[i]
            now = time.time()
            if state is None:
                dead = self.retry_attempts <= 0
                self.down[i] = _Down(now, 0, dead)
            elif probe:
                state.since = now
                if not state.dead:
                    state.attempts += 1
                    dead = state.dead = state.attempts >= self.retry_attempts
                else:
                    return
            else:
                return  # already failing: one failure seen by several threads counts once
        if dead:
            logger.warning("memcached server %s is declared dead.", self.names[i])
        else:
            logger.warning("memcached server %s is failing.", self.names[i])

    def answered(self, i: int) -> None:
        if self.down[i] is None:
            return
        with self._lock:
            was, self.down[i] = self.down[i], None
        if was is not None:
            logger.info("memcached server %s answers again.", self.names[i])

    def renew_lock(self) -> None:
        # In a forked child: another thread of the parent may have held the lock.
        self._lock = threading.Lock()

    def any_up(self, but: int) -> bool:
        return any(state is None for n, state in enumerate(self.down) if n != but)
