"""Django's ``SessionTestsMixin`` run against the hardened engines.

Every test of the mixin runs unchanged, except the deliberate deviations
overridden below, each with its reason.
"""

from __future__ import annotations

from django.test import TransactionTestCase

from hardened_sessions.backends.db import SessionStore as DBStore
from tests.django_suite import load_mixin

SessionTestsMixin = load_mixin()


class HardenedDBSessionConformance(SessionTestsMixin, TransactionTestCase):  # type: ignore[misc, valid-type]
    backend = DBStore
