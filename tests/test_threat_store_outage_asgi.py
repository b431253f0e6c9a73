"""``test_threat_store_outage``, again under ASGI.

The module was written against Django's sync test ``Client``; here its tests run
with :class:`tests.support.asgi_client.ASGIClient` in its place, so every request goes
through the ASGI handler and the middleware's ``__acall__``, which saves and
touches sessions through their async API. The same assertions must hold.
"""

from __future__ import annotations

import pytest

from tests import test_threat_store_outage
from tests.support.asgi_client import ASGIClient
from tests.test_threat_store_outage import *  # noqa: F403
from tests.test_threat_store_outage import _urls  # noqa: F401  (an autouse fixture)


@pytest.fixture(autouse=True)
def _through_asgi(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(test_threat_store_outage, "Client", ASGIClient)
