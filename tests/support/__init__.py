"""What the tests use and that is not a test itself.

Settings and URL configurations (``settings``, ``urls``, ``urls_admin``, ``routers``,
``views_http``, ``reauth_site``, ``channels_site``), the servers the tests start (``servers``,
``servers_scaleout``), the fault proxy in front of them (``faults``), stand-in clocks,
clients and engines (``clock``, ``asgi_client``, ``engine_custom_hardened``,
``engine_custom_stock``, ``http_fault_engine``, ``helpers``), Django's own session
tests fetched from its sdist (``django_suite``), and the worker scripts that tests run
in a subprocess (``gevent_worker``, ``threat_memcached_pool_worker``,
``threat_sqlite_worker``). pytest collects nothing here: no module is named
``test_*.py``.
"""
