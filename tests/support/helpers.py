"""Small helpers shared by the test modules."""

from __future__ import annotations

from typing import Any

from hardened_sessions.buffers import RecordBuffer


def new_session(store_cls: Any, data: dict[str, Any]) -> str:
    """The key of a new session of ``store_cls`` saved with ``data``."""
    session = store_cls()
    session.update(data)
    session.save()
    assert session.session_key is not None
    key: str = session.session_key
    return key


def buffer_array(buf: RecordBuffer) -> bytearray:
    """The whole array ``buf`` writes into (the bytes written and the spare capacity),
    reached through its public read-only view, so that a test can check every byte of it
    was wiped."""
    with buf.view() as view:
        array = view.obj
    assert isinstance(array, bytearray)
    return array
