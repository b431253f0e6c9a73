"""A db engine whose store primitives can be made to fail, for rotation faults.

``SESSION_ENGINE = "tests.support.http_fault_engine"``. A failure between the two steps of
``cycle_key()`` (delete the old record, store the new one) cannot be produced from
outside a single request, so this is the one seam the rotation tests cut at. Set
``SessionStore.failing`` to the primitives that must raise ``SessionStoreUnavailable``
("remove", "write_new"); the ``fault_engine`` fixtures reset it.
"""

from __future__ import annotations

from typing import Any, ClassVar

from hardened_sessions.backends import db
from hardened_sessions.exceptions import SessionStoreUnavailable

__all__ = ["SessionStore"]


class SessionStore(db.SessionStore):
    failing: ClassVar[set[str]] = set()
    calls: ClassVar[list[str]] = []

    def _fail(self, primitive: str) -> None:
        type(self).calls.append(primitive)
        if primitive in type(self).failing:
            raise SessionStoreUnavailable(f"injected failure of {primitive}")

    def _remove(self, store_key: str) -> bool:
        self._fail("remove")
        return super()._remove(store_key)

    def _write_new(self, store_key: str, data: memoryview, rec: Any) -> Any:
        self._fail("write_new")
        return super()._write_new(store_key, data, rec)
