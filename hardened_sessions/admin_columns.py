"""What the sessions admin shows of a session: its columns, with the values redacted.

A row shows a short prefix of the key hash (never a usable key), the user, the times,
the size and whether the session is still active. The detail page decodes and
verifies the record and lists its keys with the type and length of each value
(:func:`describe_value`); the values themselves are never shown. A record that fails
its checks shows why it was rejected, not its content.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.contrib.auth import get_user_model
from django.utils.html import format_html_join
from django.utils.safestring import SafeString
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from . import record
from .admin_rows import SessionModelAdmin, row_id
from .conf import get_config
from .models import HardenedSession

__all__ = ["SessionColumnsAdmin", "describe_value"]


def describe_value(value: Any) -> str:
    """Type and size of a session value, never the value itself."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return ngettext("string, %d character", "string, %d characters", len(value)) % len(value)
    if isinstance(value, list):
        return ngettext("list, %d item", "list, %d items", len(value)) % len(value)
    if isinstance(value, dict):
        return ngettext("object, %d key", "object, %d keys", len(value)) % len(value)
    return type(value).__name__


class SessionColumnsAdmin(SessionModelAdmin):
    """The computed columns and fields of a session row."""

    @admin.display(description=_("session"), ordering="key_hash")
    def key_prefix(self, obj: HardenedSession) -> str:
        return f"{row_id(obj)}…"

    @admin.display(description=_("user"), ordering="user_id")
    def user_display(self, obj: HardenedSession) -> str:
        if obj.user_id is None:
            return "—"
        try:
            user = get_user_model()._default_manager.filter(pk=obj.user_id).first()
        except (ValueError, TypeError):  # a pk column that can't hold this value
            user = None
        return f"{user.get_username()} ({obj.user_id})" if user else obj.user_id

    @admin.display(description=_("active"), boolean=True)
    def is_active(self, obj: HardenedSession) -> bool:
        return not obj.is_expired

    @admin.display(description=_("data (values redacted)"))
    def data_summary(self, obj: HardenedSession) -> SafeString | str:
        raw = (
            HardenedSession.objects.using(obj._state.db)
            .filter(pk=obj.pk)
            .values_list("data", flat=True)
            .first()
        )
        if raw is None:
            return "—"
        try:
            rec = record.decode(bytes(raw), obj.key_hash, get_config().max_bytes)
        except record.CorruptRecord as exc:
            return f"rejected: {exc.reason}"
        if not rec.data:
            return "(empty)"
        return format_html_join(
            "",
            "<div><code>{}</code>: {}</div>",
            ((key, describe_value(value)) for key, value in sorted(rec.data.items())),
        )
