"""Scale-out servers for the tests: a Redis Cluster and Redis Sentinel.

Registered as a pytest plugin by ``tests/conftest.py``, next to ``tests.support.servers``
(whose :class:`~tests.support.servers.Server` handles these reuse). Every process runs on free
loopback ports, in a temporary directory, and is stopped at the end of the run:

* ``redis_cluster``: three ``redis-server`` processes in cluster mode, joined with
  ``redis-cli --cluster create … --cluster-replicas 0`` into one cluster whose
  16384 slots are spread over the three primaries; the fixture waits until every
  node reports ``cluster_state:ok``. (Each node's cluster bus gets a free port of
  its own with ``--cluster-port``, instead of Redis's default of the port + 10000,
  which need not be free, or even exist.)
* ``redis_sentinel``: one primary ``redis-server`` and one ``redis-server
  --sentinel`` monitoring it as :data:`SENTINEL_SERVICE` (quorum 1, a low
  ``down-after-milliseconds``); the fixture waits until the sentinel names the
  primary.

(The black hole, an address that accepts connections and never answers, is a
:class:`tests.support.faults.FaultProxy`: the ``black_hole`` fixture.)

None of these can be named instead of started: without ``redis-server`` (or
``redis-cli``) the tests give up through ``tests.conftest.require_server`` (a skip on
a developer's machine, a failure under ``CI=true``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require_server
from tests.support.servers import LOOPBACK, Server, ServerSet, free_port

__all__ = [
    "SENTINEL_SERVICE",
    "RedisClusterHandle",
    "SentinelHandle",
    "wait_for",
]

#: The name under which the sentinel monitors its primary (``redis://<name>/<db>``).
SENTINEL_SERVICE = "mymaster"
READY_TIMEOUT = 30.0


def wait_for(condition: Callable[[], Any], *, timeout: float, what: str) -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        outcome = condition()
        if outcome:
            return outcome
        if time.monotonic() >= deadline:
            raise AssertionError(f"gave up after {timeout} s waiting for {what}")
        time.sleep(0.05)


def _binary(name: str) -> str:
    path = shutil.which(name, path=f"{os.environ.get('PATH', '')}:/usr/sbin:/usr/bin")
    if path is None:
        require_server(name, f"{name} is not installed")
    assert path is not None
    return path


def _raw(host: str, port: int) -> Any:
    """A plain redis-py client on one process (no cluster routing, no serializer)."""
    import redis

    return redis.Redis(host=host, port=port, socket_timeout=5, socket_connect_timeout=5)


# --- Redis Cluster ----------------------------------------------------------------------


def slot_owner_in(ranges: Any, slot: int, nodes: list[Server]) -> Server:
    """The node of ``nodes`` that a ``CLUSTER SLOTS`` reply names as ``slot``'s primary."""
    by_port = {node.port: node for node in nodes}
    if isinstance(ranges, dict):  # redis-py may parse the reply into a mapping
        for (start, end), info in ranges.items():
            if int(start) <= slot <= int(end):
                return by_port[int(info["primary"][1])]
    else:
        for entry in ranges:
            if int(entry[0]) <= slot <= int(entry[1]):
                return by_port[int(entry[2][1])]
    raise AssertionError(f"no node serves slot {slot}")


class RedisClusterHandle:
    """Three cluster primaries: their :class:`Server` handles and plain clients."""

    def __init__(self, nodes: list[Server]) -> None:
        self.nodes = nodes

    @property
    def urls(self) -> list[str]:
        """Seed URLs for ``RedisClusterCache``'s ``LOCATION``."""
        return [f"redis://{node.address}" for node in self.nodes]

    def raw(self, node: Server) -> Any:
        return _raw(node.host, node.port)

    def info(self, node: Server) -> dict[str, str]:
        client = self.raw(node)
        try:
            text = client.execute_command("CLUSTER INFO")
        finally:
            client.close()
        if isinstance(text, bytes):
            text = text.decode()
        if isinstance(text, dict):
            return {str(k): str(v) for k, v in text.items()}
        pairs = (line.split(":", 1) for line in text.splitlines() if ":" in line)
        return {k.strip(): v.strip() for k, v in pairs}

    def healthy(self) -> bool:
        for node in self.nodes:
            info = self.info(node)
            if info.get("cluster_state") != "ok" or info.get("cluster_known_nodes") != "3":
                return False
            if info.get("cluster_slots_ok") != "16384":
                return False
        return True

    def keyslot(self, key: str) -> int:
        client = self.raw(self.nodes[0])
        try:
            return int(client.execute_command("CLUSTER KEYSLOT", key))
        finally:
            client.close()

    def slot_owner(self, slot: int) -> Server:
        """The primary serving ``slot``, as its own ``CLUSTER SLOTS`` map says."""
        client = self.raw(self.nodes[0])
        try:
            ranges = client.execute_command("CLUSTER SLOTS")
        finally:
            client.close()
        return slot_owner_in(ranges, slot, self.nodes)

    def owner_of(self, key: str) -> Server:
        return self.slot_owner(self.keyslot(key))

    def get(self, node: Server, key: str) -> bytes | None:
        """``GET key`` on ``node`` itself (it must serve the key's slot)."""
        client = self.raw(node)
        try:
            value = client.get(key)
        finally:
            client.close()
        return None if value is None else bytes(value)

    def dbsizes(self) -> dict[int, int]:
        sizes = {}
        for node in self.nodes:
            client = self.raw(node)
            try:
                sizes[node.port] = int(client.dbsize())
            finally:
                client.close()
        return sizes

    def flush(self) -> None:
        for node in self.nodes:
            if not node.running():
                continue
            client = self.raw(node)
            try:
                client.flushall()
            finally:
                client.close()


def _cluster_node_command(binary: str, workdir: Path, *extra: str) -> Callable[[int], list[str]]:
    """The command line of one cluster node; ``extra``: more ``--option value`` pairs
    (``--cluster-node-timeout 1000`` for a test that waits for a failover)."""

    def command(port: int) -> list[str]:
        node_dir = workdir / f"node-{port}"
        node_dir.mkdir(parents=True, exist_ok=True)
        return [
            binary,
            "--port", str(port),
            "--bind", LOOPBACK,
            "--cluster-enabled", "yes",
            "--cluster-config-file", str(node_dir / f"nodes-{port}.conf"),
            "--cluster-port", str(free_port()),
            "--save", "",
            "--appendonly", "no",
            "--dir", str(node_dir),
            "--logfile", str(node_dir / "redis.log"),
            "--daemonize", "no",
            "--protected-mode", "yes",
            *extra,
        ]  # fmt: skip

    return command


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterHandle]:
    """A three-primary Redis Cluster on free loopback ports, ``cluster_state:ok``."""
    server_binary = _binary("redis-server")
    cli = _binary("redis-cli")
    launcher = ServerSet(tmp_path_factory.mktemp("redis-cluster"))
    try:
        command = _cluster_node_command(server_binary, launcher.base_dir)
        nodes = [launcher.launch("redis", command) for _ in range(3)]
        created = subprocess.run(
            [cli, "--cluster", "create", *(n.address for n in nodes)]
            + ["--cluster-replicas", "0", "--cluster-yes"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert created.returncode == 0, f"redis-cli --cluster create failed: {created.stdout}"
        handle = RedisClusterHandle(nodes)
        wait_for(handle.healthy, timeout=READY_TIMEOUT, what="cluster_state:ok on every node")
        yield handle
    finally:
        launcher.shutdown()


# --- Redis Sentinel -------------------------------------------------------------------


class SentinelHandle:
    """A primary and the sentinel that monitors it as :data:`SENTINEL_SERVICE`."""

    def __init__(self, primary: Server, sentinel: Server) -> None:
        self.primary = primary
        self.sentinel = sentinel
        self.service = SENTINEL_SERVICE

    @property
    def sentinels(self) -> list[tuple[str, int]]:
        return [(self.sentinel.host, self.sentinel.port)]

    def master_address(self) -> tuple[str, int] | None:
        client = _raw(self.sentinel.host, self.sentinel.port)
        try:
            found = client.execute_command("SENTINEL GET-MASTER-ADDR-BY-NAME", self.service)
        finally:
            client.close()
        if not found:
            return None
        host, port = (v.decode() if isinstance(v, bytes) else str(v) for v in found)
        return host, int(port)


@pytest.fixture(scope="session")
def redis_sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelHandle]:
    """A primary ``redis-server`` and one ``redis-server --sentinel`` monitoring it."""
    binary = _binary("redis-server")
    launcher = ServerSet(tmp_path_factory.mktemp("redis-sentinel"))
    try:
        primary = launcher.redis()

        def sentinel_command(port: int) -> list[str]:
            workdir = launcher.base_dir / f"sentinel-{port}"
            workdir.mkdir(parents=True, exist_ok=True)
            config = workdir / "sentinel.conf"  # the sentinel rewrites it: a file of its own
            config.write_text(
                f"port {port}\n"
                f"bind {LOOPBACK}\n"
                f"dir {workdir}\n"
                f"logfile {workdir / 'sentinel.log'}\n"
                "daemonize no\n"
                f"sentinel monitor {SENTINEL_SERVICE} {primary.host} {primary.port} 1\n"
                f"sentinel down-after-milliseconds {SENTINEL_SERVICE} 1000\n"
                f"sentinel failover-timeout {SENTINEL_SERVICE} 5000\n",
                encoding="utf-8",
            )
            return [binary, str(config), "--sentinel"]

        sentinel = launcher.launch("redis-sentinel", sentinel_command)
        handle = SentinelHandle(primary, sentinel)
        wait_for(
            lambda: handle.master_address() == (primary.host, primary.port),
            timeout=READY_TIMEOUT,
            what=f"the sentinel to name the primary of {SENTINEL_SERVICE!r}",
        )
        yield handle
    finally:
        launcher.shutdown()
