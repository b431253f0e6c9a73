"""A small TCP proxy in front of the PostgreSQL test server, to cut the store mid-test.

``sessions_through_proxy()`` points the configured ``postgresql`` alias at the proxy
(its test database stays the same) and routes the ``hardened_sessions`` models to
it, so a test can drop every connection (``proxy.cut()``), count connection attempts
(``proxy.attempts``) and bring the store back (``proxy.restore()``) without touching
the server. A configured alias, rather than one added on the fly, is what a real
deployment has: Django's test case only lets a test use configured aliases, and
``close_old_connections()`` only looks after those.
"""

from __future__ import annotations

import copy
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress

from django.conf import settings
from django.db import connections
from django.test import override_settings

from tests.conftest import require_server
from tests.routers import SessionsAliasRouter

__all__ = ["PROXY_ALIAS", "TcpProxy", "sessions_through_proxy"]

PROXY_ALIAS = "postgresql"
_REPOINTED = ("HOST", "PORT", "OPTIONS", "CONN_MAX_AGE")
_JOIN_TIMEOUT = 2.0


def _shut(sock: socket.socket) -> None:
    with suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


class TcpProxy:
    """Forwards 127.0.0.1:``port`` to ``upstream``.

    ``cut()`` drops every open connection and, until ``restore()``, accepts new ones
    only to close them at once (the server "goes away"); ``attempts`` counts every
    connection a client opened to the proxy.
    """

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.attempts = 0
        self._cut = False
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._stopped = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)
        self.port: int = self._listener.getsockname()[1]
        self._start(self._accept_loop)

    def _start(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        with self._lock:
            self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.attempts += 1
                refuse = self._cut or self._stopped.is_set()
            if refuse:
                _shut(client)
                client.close()
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            client.settimeout(None)
            server.settimeout(None)
            with self._lock:
                if self._cut or self._stopped.is_set():
                    refuse = True
                else:
                    self._open.update((client, server))
            if refuse:
                for sock in (client, server):
                    _shut(sock)
                    sock.close()
                continue
            pending = [2]  # pumps still running on this connection; the last one closes it
            self._start(self._pump, client, server, pending)
            self._start(self._pump, server, client, pending)

    def _pump(self, source: socket.socket, target: socket.socket, pending: list[int]) -> None:
        try:
            while True:
                chunk = source.recv(65536)
                if not chunk:
                    break
                target.sendall(chunk)
        except OSError:
            pass
        finally:
            # Either direction ending ends the connection; shutting down (rather than
            # only closing) wakes the pump blocked on the other direction.
            for sock in (source, target):
                _shut(sock)
            with self._lock:
                pending[0] -= 1
                last = pending[0] == 0
                if last:
                    self._open.discard(source)
                    self._open.discard(target)
            if last:
                source.close()
                target.close()

    def _drop_open(self) -> None:
        with self._lock:
            sockets = list(self._open)
        for sock in sockets:
            _shut(sock)

    def cut(self) -> None:
        """The server goes away: open connections drop, new ones are closed at once."""
        with self._lock:
            self._cut = True
        self._drop_open()

    def restore(self) -> None:
        with self._lock:
            self._cut = False

    def open_sockets(self) -> frozenset[socket.socket]:
        """Both ends of every connection open right now (for ``drop()``)."""
        with self._lock:
            return frozenset(self._open)

    def drop(self, sockets: frozenset[socket.socket]) -> None:
        """Drop only the connections among ``sockets`` (from ``open_sockets()``); the
        others stay up and new ones are accepted: one client's connection breaks."""
        with self._lock:
            doomed = [sock for sock in sockets if sock in self._open]
        for sock in doomed:
            _shut(sock)

    def redirect(self, upstream: tuple[str, int]) -> None:
        """Relay connections opened from now on to ``upstream`` (open ones keep theirs)."""
        with self._lock:
            self.upstream = upstream

    def close(self) -> None:
        self._stopped.set()
        self._drop_open()
        self._listener.close()
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(_JOIN_TIMEOUT)
        with self._lock:
            sockets = list(self._open)
            self._open.clear()
        for sock in sockets:
            sock.close()


@contextmanager
def sessions_through_proxy(*, conn_max_age: int | None = 0) -> Iterator[TcpProxy]:
    """Point the ``postgresql`` alias at a ``TcpProxy`` and route the session models to it.

    Needs a test that may use that alias
    (``@pytest.mark.django_db(transaction=True, databases="__all__")``). The alias
    keeps its test database; only the address it connects to changes, until exit.
    """
    if PROXY_ALIAS not in settings.DATABASES:
        require_server("postgresql", "the store-outage proxy needs HS_TEST_POSTGRES_URL")
    connection = connections[PROXY_ALIAS]
    config = connection.settings_dict  # NAME is the test database by now
    saved = {name: copy.deepcopy(config.get(name)) for name in _REPOINTED}
    proxy = TcpProxy((config["HOST"] or "127.0.0.1", int(config["PORT"] or 5432)))
    connection.close()
    config["HOST"] = "127.0.0.1"
    config["PORT"] = str(proxy.port)
    config["CONN_MAX_AGE"] = conn_max_age
    # One TCP connection per connection attempt (no SSL or GSS retry on a second one),
    # and a bound on how long an attempt may wait.
    config["OPTIONS"] = {
        **(config.get("OPTIONS") or {}),
        "sslmode": "disable",
        "gssencmode": "disable",
        "connect_timeout": 3,
    }
    try:
        with override_settings(DATABASE_ROUTERS=[SessionsAliasRouter(PROXY_ALIAS)]):
            yield proxy
    finally:
        with suppress(Exception):
            connection.close()
        config.update(saved)
        proxy.close()
