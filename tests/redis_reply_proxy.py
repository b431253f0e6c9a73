"""A TCP relay in front of Redis that lets a command through and loses its reply.

``ReplyLosingProxy(server)`` forwards ``127.0.0.1:port`` to the server. After
``lose_reply_to(*markers)``, the next chunk a client sends that contains a marker still
reaches Redis (the command runs), but everything Redis answers on that connection is
thrown away: the client waits until its ``socket_timeout`` and, if its retry policy
says so, reconnects and sends the command again — the "already ran, reply lost" case
a client-side retry turns into a second run. ``lost`` counts the replies lost so far,
``writes`` the chunks clients sent (about one per round trip for small commands).
"""

from __future__ import annotations

import selectors
import socket
import threading
from contextlib import suppress

from tests.servers import Server

__all__ = ["ReplyLosingProxy"]


class ReplyLosingProxy:
    def __init__(self, upstream: Server) -> None:
        self.upstream = upstream
        self.lost = 0
        self.writes = 0
        self._markers: tuple[bytes, ...] = ()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sockets: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)
        self.port: int = self._listener.getsockname()[1]
        self._spawn(self._accept)

    @property
    def server(self) -> Server:
        """The relay as an external :class:`Server` (for ``cache_settings``)."""
        return Server("redis", "127.0.0.1", self.port, url=f"redis://127.0.0.1:{self.port}/0")

    def lose_reply_to(self, *markers: bytes) -> None:
        with self._lock:
            self._markers = markers

    def _spawn(self, target: object, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except (TimeoutError, OSError):
                continue
            upstream = socket.create_connection((self.upstream.host, self.upstream.port), 5)
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.settimeout(None)
            with self._lock:
                self._sockets.update((client, upstream))
            self._spawn(self._pump, client, upstream)

    def _pump(self, client: socket.socket, upstream: socket.socket) -> None:
        swallowing = False
        with selectors.DefaultSelector() as selector:
            selector.register(client, selectors.EVENT_READ)
            selector.register(upstream, selectors.EVENT_READ)
            while not self._stop.is_set():
                try:
                    for key, _ in selector.select(timeout=0.05):
                        data = key.fileobj.recv(65536)  # type: ignore[union-attr]
                        if not data:
                            raise OSError("closed")
                        if key.fileobj is client:
                            with self._lock:
                                self.writes += 1
                                if any(marker in data for marker in self._markers):
                                    self._markers = ()
                                    self.lost += 1
                                    swallowing = True
                            upstream.sendall(data)
                        elif not swallowing:
                            client.sendall(data)
                except (OSError, ValueError):
                    break
        with self._lock:
            for sock in (client, upstream):
                self._sockets.discard(sock)
                with suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                sock.close()
            self._sockets.clear()
