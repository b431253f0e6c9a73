"""A stand-in clock for the package's ``time`` module, so tests move time, not sleep."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from unittest import mock

from hardened_sessions import timeutil


class Clock:
    """Stands in for the ``time`` module inside the package: ``time()`` is ours."""

    def __init__(self, now: float) -> None:
        self.now = float(now)

    def time(self) -> float:
        return self.now

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


@contextmanager
def clock_at(now: float) -> Iterator[Clock]:
    clock = Clock(now)
    with mock.patch.object(timeutil, "time", clock):
        yield clock
