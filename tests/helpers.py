"""Small helpers shared by the test modules."""

from __future__ import annotations

from typing import Any


def new_session(store_cls: Any, data: dict[str, Any]) -> str:
    """The key of a new session of ``store_cls`` saved with ``data``."""
    session = store_cls()
    session.update(data)
    session.save()
    assert session.session_key is not None
    key: str = session.session_key
    return key
