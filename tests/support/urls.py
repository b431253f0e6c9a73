"""Root URLconf of the test suite (``ROOT_URLCONF = "tests.support.urls"``).

Empty on purpose. A test module that needs views either appends its patterns here
(``urlpatterns.append(path(...))`` at import time) or, better, defines its own
``urlpatterns`` and uses ``@override_settings(ROOT_URLCONF=__name__)`` or
``@pytest.mark.urls(__name__)``.
"""

from __future__ import annotations

from django.urls import URLPattern, URLResolver

urlpatterns: list[URLPattern | URLResolver] = []
