"""One TCP relay that puts network faults between the tests and a real server.

Registered as a pytest plugin by ``tests/conftest.py``. A :class:`FaultProxy` listens
on a free loopback port and relays every connection to its upstream server; the test
points a client at the proxy (``as_server()``, ``port``) and injects a fault while the
server behind keeps running with all it holds:

* ``cut()``: the server goes away. Open connections drop; new ones are accepted and
  closed at once (``attempts`` still counts them).
* ``refuse()``: a partition that refuses. Open connections drop and the proxy stops
  listening, so new connections are refused, as by a host with nothing on the port.
* ``black_hole()``: a partition that drops packets. Connections opened from now on
  are accepted and never answered (what they send is read and thrown away), so only
  the clients' socket timeouts end a request; open connections keep being relayed.
  ``FaultProxy(None)`` is a black hole from the start, with no server behind it.
* ``lose_reply_to(*markers)``: the command is run, its reply is lost. The next chunk a
  client sends that contains a marker still reaches the server, but everything the
  server answers on that connection is thrown away: the client waits until its
  socket timeout and, if its retry policy says so, sends the command again.
* ``drop(open_sockets())`` breaks only the connections open at that moment;
  ``redirect(upstream)`` relays connections opened from now on elsewhere.
* ``restore()`` relays again (listening again on the same port after ``refuse()``).

Counters: ``attempts`` (connections clients opened), ``writes`` (chunks clients sent,
about one per round trip for small commands), ``lost`` (replies lost so far);
``received`` is set once a client has sent anything.

``sessions_through_proxy()`` points the configured ``postgresql`` alias at a proxy
(its test database stays the same) and routes the ``hardened_sessions`` models to it.
A configured alias, rather than one added on the fly, is what a real deployment has:
Django's test case only lets a test use configured aliases, and
``close_old_connections()`` only looks after those.

Fixtures: ``fault_proxy(server)`` and ``black_hole()`` make proxies that are closed
after the test.
"""

from __future__ import annotations

import copy
import selectors
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress

import pytest
from django.conf import settings
from django.db import connections
from django.test import override_settings

from tests.conftest import require_server
from tests.support.routers import SessionsAliasRouter
from tests.support.servers import LOOPBACK, Server

__all__ = ["PROXY_ALIAS", "FaultProxy", "sessions_through_proxy"]

PROXY_ALIAS = "postgresql"
_REPOINTED = ("HOST", "PORT", "OPTIONS", "CONN_MAX_AGE")
_JOIN_TIMEOUT = 5.0
_POLL = 0.05

# What the proxy does with a connection a client opens.
_RELAY = "relay"
_RESET = "reset"  # accept, then close at once
_HOLD = "hold"  # accept, never answer


def _shut(sock: socket.socket) -> None:
    with suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


class FaultProxy:
    """A relay from ``127.0.0.1:port`` to ``upstream`` (a :class:`Server` or a
    ``(host, port)`` pair; ``None`` for a black hole), with the faults of the module
    docstring. ``kind`` (``"redis"``/``"memcached"``) defaults to the upstream's."""

    def __init__(
        self, upstream: Server | tuple[str, int] | None, *, kind: str | None = None
    ) -> None:
        self.upstream: tuple[str, int] | None = (
            (upstream.host, upstream.port) if isinstance(upstream, Server) else upstream
        )
        self.kind = kind or (upstream.kind if isinstance(upstream, Server) else None)
        self.host = LOOPBACK
        self.attempts = 0
        self.writes = 0
        self.lost = 0
        self.received = threading.Event()
        self._mode = _RELAY if upstream is not None else _HOLD
        self._markers: tuple[bytes, ...] = ()
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._closed = False
        self._listener: socket.socket | None = None
        self._accepting: tuple[threading.Event, threading.Thread] | None = None
        self.port = 0
        self._listen()

    # --- addresses --------------------------------------------------------------------

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"redis://{self.address}/0" if self.kind == "redis" else self.address

    def as_server(self, kind: str | None = None) -> Server:
        """The proxy as an external :class:`Server` (for ``cache_settings``)."""
        kind = kind or self.kind
        if kind is None:
            raise ValueError("as_server() needs the kind of server the proxy stands for")
        url = f"redis://{self.address}/0" if kind == "redis" else None
        return Server(kind, self.host, self.port, url=url)

    # --- faults -----------------------------------------------------------------------

    def cut(self) -> None:
        """The server goes away: open connections drop, new ones are closed at once."""
        with self._lock:
            self._mode = _RESET
        self._drop_open()

    def refuse(self) -> None:
        """A partition: open connections drop and new ones are refused."""
        self._stop_listening()
        self._drop_open()

    def black_hole(self) -> None:
        """Connections opened from now on are accepted and never answered."""
        with self._lock:
            self._mode = _HOLD

    def lose_reply_to(self, *markers: bytes) -> None:
        """Lose the server's replies on the connection whose next chunk holds a marker."""
        with self._lock:
            self._markers = markers

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

    def restore(self) -> None:
        """Relay again: the faults above end (lost replies already lost stay lost)."""
        with self._lock:
            if self.upstream is not None:
                self._mode = _RELAY
        self._listen()

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self._stop_listening()
        self._drop_open()
        with self._lock:
            threads, self._threads = self._threads, []
        for thread in threads:
            thread.join(_JOIN_TIMEOUT)
        with self._lock:
            sockets = list(self._open)
            self._open.clear()
        for sock in sockets:
            sock.close()

    # --- the relay --------------------------------------------------------------------

    def _spawn(self, target: Callable[..., None], *args: object) -> threading.Thread:
        thread = threading.Thread(target=target, args=args, daemon=True)
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
        thread.start()
        return thread

    def _listen(self) -> None:
        with self._lock:
            if self._listener is not None or self._closed:
                return
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, self.port))  # port 0 the first time, the same one after
        listener.listen(128)
        listener.settimeout(_POLL)
        self.port = listener.getsockname()[1]
        stop = threading.Event()
        with self._lock:
            self._listener = listener
        self._accepting = (stop, self._spawn(self._accept, listener, stop))

    def _stop_listening(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            accepting, self._accepting = self._accepting, None
        if accepting is not None:
            stop, thread = accepting
            stop.set()
            thread.join(_JOIN_TIMEOUT)
        if listener is not None:
            listener.close()

    def _drop_open(self) -> None:
        with self._lock:
            sockets = list(self._open)
        for sock in sockets:
            _shut(sock)

    def _accept(self, listener: socket.socket, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.attempts += 1
                mode, upstream = self._mode, self.upstream
            if mode == _RESET or upstream is None and mode == _RELAY:
                _shut(client)
                client.close()
                continue
            server: socket.socket | None = None
            if mode == _RELAY:
                assert upstream is not None
                try:
                    server = socket.create_connection(upstream, timeout=5)
                except OSError:
                    client.close()
                    continue
            ends = [client] if server is None else [client, server]
            for sock in ends:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.settimeout(None)
            with self._lock:
                refused = self._closed or (server is not None and self._mode == _RESET)
                if not refused:
                    self._open.update(ends)
            if refused:
                for sock in ends:
                    _shut(sock)
                    sock.close()
                continue
            self._spawn(self._pump, client, server)

    def _pump(self, client: socket.socket, server: socket.socket | None) -> None:
        """Relay one connection (or, without ``server``, read and discard what the
        client sends) until either end closes or the connection is dropped."""
        ends = [client] if server is None else [client, server]
        losing = False
        with selectors.DefaultSelector() as selector:
            for sock in ends:
                selector.register(sock, selectors.EVENT_READ)
            while True:
                with self._lock:
                    if self._closed:
                        break
                try:
                    for key, _ in selector.select(timeout=_POLL):
                        data = key.fileobj.recv(65536)  # type: ignore[union-attr]
                        if not data:
                            raise OSError("closed")
                        if key.fileobj is client:
                            self.received.set()
                            with self._lock:
                                self.writes += 1
                                if any(marker in data for marker in self._markers):
                                    self._markers = ()
                                    self.lost += 1
                                    losing = True
                            if server is not None:
                                server.sendall(data)
                        elif not losing:
                            client.sendall(data)
                except (OSError, ValueError):
                    break
        # Either direction ending ends the connection.
        with self._lock:
            for sock in ends:
                self._open.discard(sock)
        for sock in ends:
            _shut(sock)
            sock.close()


# --- fixtures and the database alias ------------------------------------------------------


@pytest.fixture
def fault_proxy() -> Iterator[Callable[[Server], FaultProxy]]:
    """``fault_proxy(server)``: a :class:`FaultProxy` in front of ``server``, closed
    after the test."""
    proxies: list[FaultProxy] = []

    def make(server: Server) -> FaultProxy:
        proxy = FaultProxy(server)
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        proxy.close()


@pytest.fixture
def black_hole() -> Iterator[Callable[[], FaultProxy]]:
    """``black_hole()``: a :class:`FaultProxy` with nothing behind it, which accepts
    connections and never answers; closed after the test."""
    holes: list[FaultProxy] = []

    def make() -> FaultProxy:
        hole = FaultProxy(None)
        holes.append(hole)
        return hole

    yield make
    for hole in holes:
        hole.close()


@contextmanager
def sessions_through_proxy(*, conn_max_age: int | None = 0) -> Iterator[FaultProxy]:
    """Point the ``postgresql`` alias at a :class:`FaultProxy` and route the session
    models to it.

    Needs a test that may use that alias
    (``@pytest.mark.django_db(transaction=True, databases="__all__")``). The alias
    keeps its test database; only the address it connects to changes, until exit.
    """
    if PROXY_ALIAS not in settings.DATABASES:
        require_server("postgresql", "the store-outage proxy needs HS_TEST_POSTGRES_URL")
    connection = connections[PROXY_ALIAS]
    config = connection.settings_dict  # NAME is the test database by now
    saved = {name: copy.deepcopy(config.get(name)) for name in _REPOINTED}
    proxy = FaultProxy((config["HOST"] or "127.0.0.1", int(config["PORT"] or 5432)))
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
