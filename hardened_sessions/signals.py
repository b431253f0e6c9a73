"""Signals sent by hardened_sessions.

``session_rejected(sender, key_hash_prefix, reason)``
    A stored record was refused on load: bad signature, corrupt, oversize, or
    past one of its deadlines. ``key_hash_prefix`` is the first 8 hex digits of
    the store key (never the session key); ``reason`` is a short text.

``session_revoked(sender, key_hash_prefix, user_id, reason)``
    A session was ended on purpose by a revocation helper or an admin action.
"""

from __future__ import annotations

from django.dispatch import Signal

__all__ = ["session_rejected", "session_revoked"]

session_rejected = Signal()
session_revoked = Signal()
