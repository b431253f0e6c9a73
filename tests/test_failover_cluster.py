"""A Redis Cluster failover under load, with real processes.

Each test starts its own cluster of three primaries, each with a replica
(``redis-cli --cluster create … --cluster-replicas 1``), and the cache engine on
:class:`hardened_sessions.cache.RedisClusterCache`. Four long-lived worker threads run
the same load as the Sentinel tests (``tests/test_failover_sentinel.py``), and the
replica of the busiest primary takes over with ``CLUSTER FAILOVER`` (the polite,
coordinated one: the primary stops its clients until the replica has caught up).

Held, with and without ``REDIS_WAIT_REPLICAS``: after the switch no load is served by
the demoted node; no acknowledged save is lost or reversed; an acknowledged logout
never comes back; the only errors are ``SessionStoreUnavailable`` (503s); the same
threads recover without a restart. With ``WAIT`` the writes go to the owning
primary's own connection pool (``WAIT`` must follow the write on one connection); a
write that the demoted node refuses ("moved") goes once to the owner it names.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings as django_settings

from tests.servers import RUN_TOKEN, Server, ServerSet, sessions_cache
from tests.servers_scaleout import _binary, _cluster_node_command, wait_for
from tests.test_failover_sentinel import (
    FULL,
    READS_COMMANDS,
    RECOVERY_TIMEOUT,
    SWITCH_TIMEOUT,
    WAIT_SETTINGS,
    Load,
    assert_nothing_acknowledged_was_lost,
    final_state,
    no_other_errors,
    report,
    until_recovered,
)

pytestmark = [pytest.mark.timeout(180)]


def _raw(server: Server) -> Any:
    import redis

    return redis.Redis(host=server.host, port=server.port, socket_timeout=5)


class ReplicatedCluster:
    """Three primaries and three replicas, ``cluster_state:ok`` on each."""

    def __init__(self, base: Path) -> None:
        self.launcher = ServerSet(base)
        command = _cluster_node_command(_binary("redis-server"), self.launcher.base_dir)
        self.nodes = [self.launcher.launch("redis", command) for _ in range(6)]
        created = subprocess.run(
            [_binary("redis-cli"), "--cluster", "create", *(n.address for n in self.nodes)]
            + ["--cluster-replicas", "1", "--cluster-yes"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert created.returncode == 0, f"redis-cli --cluster create failed: {created.stdout}"
        wait_for(self.healthy, timeout=SWITCH_TIMEOUT, what="cluster_state:ok on every node")

    def command(self, node: Server, *args: Any) -> Any:
        client = _raw(node)
        try:
            return client.execute_command(*args)
        finally:
            client.close()

    def info(self, node: Server, section: str) -> dict[str, Any]:
        client = _raw(node)
        try:
            return dict(client.info(section))
        finally:
            client.close()

    def cluster_info(self, node: Server) -> dict[str, str]:
        text = self.command(node, "CLUSTER INFO")
        if isinstance(text, dict):
            return {str(k): str(v) for k, v in text.items()}
        if isinstance(text, bytes):
            text = text.decode()
        pairs = (line.split(":", 1) for line in text.splitlines() if ":" in line)
        return {k.strip(): v.strip() for k, v in pairs}

    def healthy(self) -> bool:
        for node in self.nodes:
            info = self.cluster_info(node)
            if info.get("cluster_state") != "ok" or info.get("cluster_known_nodes") != "6":
                return False
        return all(
            self.info(n, "replication").get("master_link_status") == "up"
            for n in self.nodes
            if self.role(n) == "slave"
        )

    def role(self, node: Server) -> str | None:
        try:
            return str(self.info(node, "replication").get("role"))
        except Exception:
            return None

    def primaries(self) -> list[Server]:
        return [n for n in self.nodes if self.role(n) == "master"]

    def replica_of(self, primary: Server) -> Server:
        for node in self.nodes:
            info = self.info(node, "replication")
            if info.get("role") == "slave" and int(info.get("master_port", 0)) == primary.port:
                return node
        raise AssertionError(f"no replica of {primary}")

    def reads(self, node: Server) -> dict[str, int]:
        stats = self.info(node, "commandstats")
        return {
            name.removeprefix("cmdstat_"): int(value["calls"])
            for name, value in stats.items()
            if name.removeprefix("cmdstat_") in READS_COMMANDS
        }

    def keys(self, node: Server) -> int:
        client = _raw(node)
        try:
            return int(client.dbsize())
        finally:
            client.close()

    def urls(self) -> list[str]:
        return [f"redis://{n.address}" for n in self.nodes]

    def shutdown(self) -> None:
        self.launcher.shutdown()


@pytest.fixture
def replicated_cluster(tmp_path: Path) -> Iterator[ReplicatedCluster]:
    cluster = ReplicatedCluster(tmp_path / "cluster")
    try:
        yield cluster
    finally:
        cluster.shutdown()


def modes() -> list[Any]:
    skip = pytest.mark.skipif(not FULL, reason="set HS_FAILOVER_TESTS=all for the full set")
    return [
        pytest.param(True, id="wait"),
        pytest.param(False, id="no-wait", marks=skip),
    ]


@pytest.mark.parametrize("wait", modes())
def test_polite_cluster_failover_loses_nothing_and_reads_only_the_new_primary(
    wait: bool, replicated_cluster: ReplicatedCluster
) -> None:
    cluster = replicated_cluster
    hardened = dict(getattr(django_settings, "HARDENED_SESSIONS", None) or {})
    if wait:
        hardened.update(WAIT_SETTINGS)
    config = {
        "BACKEND": "hardened_sessions.cache.RedisClusterCache",
        "LOCATION": cluster.urls(),
        "KEY_PREFIX": f"hs{RUN_TOKEN}-cfo",
        "OPTIONS": {"socket_timeout": 2, "socket_connect_timeout": 2},
    }
    with sessions_cache(
        config, SESSION_ENGINE="hardened_sessions.backends.cache", HARDENED_SESSIONS=hardened
    ) as alias:
        from django.core.cache import caches

        try:
            with Load() as load:
                wait_for(
                    lambda: load.ops() > 100, timeout=RECOVERY_TIMEOUT, what="the load to start"
                )
                old = max(cluster.primaries(), key=cluster.keys)
                new = cluster.replica_of(old)
                started = time.monotonic()
                assert cluster.command(new, "CLUSTER FAILOVER") in (b"OK", "OK", True)
                wait_for(
                    lambda: cluster.role(new) == "master" and cluster.role(old) == "slave",
                    timeout=SWITCH_TIMEOUT,
                    what="the failover to complete",
                )
                switched = time.monotonic() - started
                until_recovered(load)
                before = cluster.reads(old)
                done = load.ops()
                wait_for(
                    lambda: load.ops() > done + 200, timeout=RECOVERY_TIMEOUT, what="more load"
                )
                after = cluster.reads(old)
            no_other_errors(load)
            assert after == before, f"the demoted node served reads: {before} -> {after}"
            state = final_state(load)
            report(
                f"cluster failover, {'WAIT' if wait else 'no WAIT'}",
                load,
                state,
                switch=f"{switched:.1f} s",
                operations=load.ops(),
            )
            assert_nothing_acknowledged_was_lost(load, state)
        finally:
            caches[alias].close_client()
