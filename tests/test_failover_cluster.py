"""Redis Cluster failovers and a slot migration under load, with real processes.

Each test starts its own cluster of three primaries, each with a replica (two for the
kill with ``WAIT``; ``redis-cli --cluster create … --cluster-replicas N``), and the
cache engine on :class:`hardened_sessions.redis_cluster.RedisClusterCache`. Four long-lived
worker threads run the same load as the Sentinel tests
(``tests/test_failover_sentinel.py``) while the cluster changes under them:

* a polite failover: the replica of the busiest primary takes over with ``CLUSTER
  FAILOVER`` (the coordinated one: the primary stops its clients until the replica
  has caught up);
* a crash: the busiest primary is killed (``SIGKILL``) and the cluster promotes its
  replica once ``cluster-node-timeout`` (one second here) has passed. Redis replicates
  asynchronously, so without ``WAIT`` what the primary acknowledged last can be gone
  (measured and printed, with the replication lag at the moment of the kill); with
  ``WAIT`` nothing acknowledged is lost, and a logout and a rotation acknowledged just
  before the kill hold after it;
* a slot migration, by the protocol ``redis-cli --cluster reshard`` follows
  (``CLUSTER SETSLOT … IMPORTING/MIGRATING``, ``MIGRATE … KEYS``, ``CLUSTER SETSLOT …
  NODE`` on every primary), slowed down so the load runs for seconds against a slot
  split between two nodes: reads and single-key writes of keys already moved, or new,
  are redirected with ``ASK``; a script over two keys of which one is on each side
  (a delete and its tombstone) is refused with ``TRYAGAIN``. The ``KEY_PREFIX`` holds a
  hash tag, so every key of the load is in the one slot that moves. Logouts and a
  rotation made while the slot is split succeed (the delete is then a plain ``DEL``)
  and hold, for a session on either side.

Held in every test: errors are ``SessionStoreUnavailable`` (503s) only; the same threads
recover without a restart; afterwards no load is served by the demoted, dead or former
owner. Held with ``WAIT``, and by the migration in both modes: no acknowledged save is
lost or reversed; an acknowledged logout never comes back. With ``WAIT`` the writes go to
the owning primary's own connection pool (``WAIT`` must follow the write on one
connection); a write that a node refuses with "moved" goes once to the owner it names.

As in the Sentinel tests, ``HS_FAILOVER_TESTS=all`` runs both modes of everything; the
other environments run the ``WAIT`` failovers and the migration without ``WAIT`` (the
default configuration, on redis-py's own redirection handling).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings as django_settings

from hardened_sessions import keys
from hardened_sessions.backends.cache import SessionStore
from hardened_sessions.exceptions import SessionStoreUnavailable
from hardened_sessions.stores import KEY_NAMESPACE
from tests.support.servers import RUN_TOKEN, Server, ServerSet, sessions_cache
from tests.support.servers_scaleout import _binary, _cluster_node_command, slot_owner_in, wait_for
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

# How long the cluster waits before it calls a silent primary failed and promotes its
# replica (Redis's default is 15 s).
NODE_TIMEOUT_MS = 1000
# How long the slot stays split between its two owners before and after its keys move.
MIGRATION_PAUSE = 1.0


def _raw(server: Server) -> Any:
    import redis

    return redis.Redis(host=server.host, port=server.port, socket_timeout=5)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class ReplicatedCluster:
    """Three primaries with ``replicas`` replicas each, ``cluster_state:ok`` on each."""

    def __init__(self, base: Path, *, replicas: int = 1, node_timeout_ms: int = 0) -> None:
        self.launcher = ServerSet(base)
        extra = ("--cluster-node-timeout", str(node_timeout_ms)) if node_timeout_ms else ()
        command = _cluster_node_command(_binary("redis-server"), self.launcher.base_dir, *extra)
        self.nodes = [self.launcher.launch("redis", command) for _ in range(3 * (1 + replicas))]
        created = subprocess.run(
            [_binary("redis-cli"), "--cluster", "create", *(n.address for n in self.nodes)]
            + ["--cluster-replicas", str(replicas), "--cluster-yes"],
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
        pairs = (line.split(":", 1) for line in _text(text).splitlines() if ":" in line)
        return {k.strip(): v.strip() for k, v in pairs}

    def healthy(self) -> bool:
        for node in self.nodes:
            info = self.cluster_info(node)
            if info.get("cluster_state") != "ok" or info.get("cluster_known_nodes") != str(
                len(self.nodes)
            ):
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

    def replicas_of(self, primary: Server) -> list[Server]:
        found = []
        for node in self.nodes:
            info = self.info(node, "replication")
            if info.get("role") == "slave" and int(info.get("master_port", 0)) == primary.port:
                found.append(node)
        assert found, f"no replica of {primary}"
        return found

    def replica_of(self, primary: Server) -> Server:
        return self.replicas_of(primary)[0]

    def fail_over(self, new: Server, old: Server) -> None:
        """``CLUSTER FAILOVER`` on ``new``, a replica of ``old``, until ``new`` is the
        primary and ``old`` its replica. Sent again when Redis gave the first one up (a
        manual failover ends after 5 s if the replica has not caught up by then, which
        a machine busy with other work can make happen)."""
        deadline = time.monotonic() + SWITCH_TIMEOUT
        while self.role(new) != "master":
            assert self.command(new, "CLUSTER FAILOVER") in (b"OK", "OK", True)
            with suppress(AssertionError):
                wait_for(lambda: self.role(new) == "master", timeout=6, what="the failover")
            assert time.monotonic() < deadline, "the replica never took over"
        wait_for(lambda: self.role(old) == "slave", timeout=SWITCH_TIMEOUT, what="the demotion")

    def replication_lag(self, primary: Server, replicas: list[Server]) -> int:
        """Bytes of the replication stream the furthest-behind replica has not received
        (its offset read first, the primary's after: an upper bound)."""
        received = min(int(self.info(r, "replication")["slave_repl_offset"]) for r in replicas)
        return max(0, int(self.info(primary, "replication")["master_repl_offset"]) - received)

    def reads(self, node: Server) -> dict[str, int]:
        stats = self.info(node, "commandstats")
        return {
            name.removeprefix("cmdstat_"): int(value["calls"])
            for name, value in stats.items()
            if name.removeprefix("cmdstat_") in READS_COMMANDS
        }

    def errors(self, node: Server) -> dict[str, int]:
        """Error replies ``node`` gave, by their first word (``ASK``, ``TRYAGAIN``, …)."""
        stats = self.info(node, "errorstats")
        return {
            name.removeprefix("errorstat_"): int(value["count"]) for name, value in stats.items()
        }

    def keys(self, node: Server) -> int:
        client = _raw(node)
        try:
            return int(client.dbsize())
        finally:
            client.close()

    def node_id(self, node: Server) -> str:
        return _text(self.command(node, "CLUSTER MYID"))

    def slot_owner(self, slot: int) -> Server:
        """The primary that serves ``slot``, as the first live node's ``CLUSTER SLOTS`` says."""
        live = next(n for n in self.nodes if n.running())
        return slot_owner_in(self.command(live, "CLUSTER SLOTS"), slot, self.nodes)

    def migrate_slot(
        self, slot: int, source: Server, target: Server, during: Callable[[], None]
    ) -> int:
        """Moves ``slot`` from ``source`` to ``target`` as ``redis-cli --cluster reshard``
        does, slowly: the slot stays split for :data:`MIGRATION_PAUSE` before the keys
        move (``during()`` runs then), they move a few at a time, and it stays split as
        long again after. Returns the number of keys moved."""
        source_id, target_id = self.node_id(source), self.node_id(target)
        assert self.command(target, "CLUSTER SETSLOT", slot, "IMPORTING", source_id)
        assert self.command(source, "CLUSTER SETSLOT", slot, "MIGRATING", target_id)
        split = time.monotonic()
        during()
        time.sleep(max(0.0, split + MIGRATION_PAUSE - time.monotonic()))
        moved = 0
        while batch := self.command(source, "CLUSTER GETKEYSINSLOT", slot, 5):
            self.command(source, "MIGRATE", target.host, target.port, "", 0, 5000, "KEYS", *batch)
            moved += len(batch)
            time.sleep(0.02)
        time.sleep(MIGRATION_PAUSE)
        # The new owner first, then the old one, then the others (redis-cli's order).
        others = [p for p in self.primaries() if p not in (source, target)]
        for node in (target, source, *others):
            assert self.command(node, "CLUSTER SETSLOT", slot, "NODE", target_id)
        return moved

    def count_in_slot(self, node: Server, slot: int) -> int:
        return int(self.command(node, "CLUSTER COUNTKEYSINSLOT", slot))

    def urls(self) -> list[str]:
        return [f"redis://{n.address}" for n in self.nodes]

    def shutdown(self) -> None:
        self.launcher.shutdown()


@pytest.fixture
def cluster_factory(tmp_path: Path) -> Iterator[Callable[..., ReplicatedCluster]]:
    clusters: list[ReplicatedCluster] = []

    def make(*, replicas: int = 1, node_timeout_ms: int = 0) -> ReplicatedCluster:
        cluster = ReplicatedCluster(
            tmp_path / f"cluster{len(clusters)}", replicas=replicas, node_timeout_ms=node_timeout_ms
        )
        clusters.append(cluster)
        return cluster

    with ExitStack() as stack:
        stack.callback(lambda: [c.shutdown() for c in clusters])
        yield make


@contextmanager
def engine_on(cluster: ReplicatedCluster, *, wait: bool, prefix: str) -> Iterator[Any]:
    """The cache engine on ``cluster`` (with ``REDIS_WAIT_REPLICAS`` when ``wait``);
    yields the ``RedisClusterCache`` that the session store uses."""
    from django.core.cache import caches

    hardened = dict(getattr(django_settings, "HARDENED_SESSIONS", None) or {})
    if wait:
        hardened.update(WAIT_SETTINGS)
    config = {
        "BACKEND": "hardened_sessions.redis_cluster.RedisClusterCache",
        "LOCATION": cluster.urls(),
        "KEY_PREFIX": prefix,
        "OPTIONS": {"socket_timeout": 2, "socket_connect_timeout": 2},
    }
    with sessions_cache(
        config, SESSION_ENGINE="hardened_sessions.backends.cache", HARDENED_SESSIONS=hardened
    ) as alias:
        try:
            # The session store (one per alias and process, over the cache object of the
            # thread that first needs it) is made here, so the cache yielded is the one
            # whose cluster client every thread's sessions go through.
            SessionStore().exists("0" * 32)
            yield caches[alias]
        finally:
            caches[alias].close_client()


def modes(*always: str) -> list[Any]:
    """``wait`` / ``no-wait`` parameters: the ``always`` ones run in every environment,
    the others with ``HS_FAILOVER_TESTS=all`` only."""
    skip = pytest.mark.skipif(not FULL, reason="set HS_FAILOVER_TESTS=all for the full set")
    return [
        pytest.param(mode == "wait", id=mode, marks=() if mode in always else skip)
        for mode in ("wait", "no-wait")
    ]


def record_key(cache: Any, session_key: str) -> str:
    return str(cache.make_key(KEY_NAMESPACE + keys.store_key(session_key)))


def until_reachable(read: Callable[[], Any]) -> Any:
    """``read()``, again while it answers 503 (until the client finds the new owner)."""
    deadline = time.monotonic() + RECOVERY_TIMEOUT
    while True:
        try:
            return read()
        except SessionStoreUnavailable:
            assert time.monotonic() < deadline, "the new owner was never reached"
            time.sleep(0.1)


# --- the tests ------------------------------------------------------------------------


@pytest.mark.parametrize("wait", modes("wait"))
def test_polite_cluster_failover_loses_nothing_and_reads_only_the_new_primary(
    wait: bool, cluster_factory: Callable[..., ReplicatedCluster]
) -> None:
    cluster = cluster_factory()
    with engine_on(cluster, wait=wait, prefix=f"hs{RUN_TOKEN}-cfo"):
        with Load() as load:
            wait_for(lambda: load.ops() > 100, timeout=RECOVERY_TIMEOUT, what="the load to start")
            old = max(cluster.primaries(), key=cluster.keys)
            new = cluster.replica_of(old)
            started = time.monotonic()
            cluster.fail_over(new, old)
            switched = time.monotonic() - started
            until_recovered(load)
            before = cluster.reads(old)
            done = load.ops()
            wait_for(lambda: load.ops() > done + 200, timeout=RECOVERY_TIMEOUT, what="more load")
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


@pytest.mark.parametrize("wait", modes("wait"))
def test_a_killed_cluster_primary_is_replaced_and_errors_are_503s(
    wait: bool, cluster_factory: Callable[..., ReplicatedCluster]
) -> None:
    # WAIT for one replica needs one left after the failover: with a single replica per
    # primary, every write to the killed primary's slots would (rightly) answer 503
    # until another replica joins. The second replica follows the promoted one.
    cluster = cluster_factory(replicas=2 if wait else 1, node_timeout_ms=NODE_TIMEOUT_MS)
    with engine_on(cluster, wait=wait, prefix=f"hs{RUN_TOKEN}-ckill") as cache:
        client = cache.get_client()
        with Load() as load:
            wait_for(lambda: load.ops() > 100, timeout=RECOVERY_TIMEOUT, what="the load to start")
            old = max(cluster.primaries(), key=cluster.keys)
            heirs = cluster.replicas_of(old)

            def on_old() -> SessionStore:
                """A new session whose record the primary about to die holds."""
                while True:
                    session = SessionStore()
                    session["n"] = 7
                    session.save()
                    assert session.session_key is not None
                    owner = client.get_node_from_key(record_key(cache, session.session_key))
                    if owner.port == old.port:
                        return session

            # A logout and a rotation of sessions on that primary, acknowledged just
            # before it dies.
            ended, rotated = on_old(), on_old()
            ended_key, rotated_from = ended.session_key, rotated.session_key
            assert ended_key is not None and rotated_from is not None
            ended.flush()
            rotated.cycle_key()
            rotated.save()
            rotated_to = rotated.session_key
            assert rotated_to is not None
            lag = cluster.replication_lag(old, heirs)
            started = time.monotonic()
            old.kill()
            wait_for(
                lambda: any(
                    cluster.role(h) == "master"
                    and cluster.cluster_info(h).get("cluster_state") == "ok"
                    for h in heirs
                ),
                timeout=SWITCH_TIMEOUT,
                what="the cluster to promote a replica of the killed primary",
            )
            switched = time.monotonic() - started
            until_recovered(load)
            recovered = time.monotonic() - started
            # Each thread has a cache object, and so a cluster client, of its own: every
            # one of them goes on (a client that still sent a key of the dead node's
            # slots there would answer 503; the load's keys are spread over all slots).
            unavailable = [ledger.unavailable for ledger in load.ledgers]
            done = [ledger.ops for ledger in load.ledgers]
            wait_for(
                lambda: all(
                    ledger.ops > ops + 50 for ledger, ops in zip(load.ledgers, done, strict=True)
                ),
                timeout=RECOVERY_TIMEOUT,
                what="more load on every thread",
            )
            assert [ledger.unavailable for ledger in load.ledgers] == unavailable, (
                "503s after the recovery"
            )
        no_other_errors(load)
        logout_held = until_reachable(lambda: dict(SessionStore(ended_key).items()) == {})
        rotation_held = until_reachable(
            lambda: (
                dict(SessionStore(rotated_from).items()) == {}
                and SessionStore(rotated_to).get("n") == 7
            )
        )
        # The client of the load (and of the reads just above) has forgotten the dead node.
        assert old.port not in {node.port for node in client.get_primaries()}
        state = final_state(load)
        # Asynchronous replication: what the old primary acknowledged but had not passed
        # on is gone. Measured and shown without WAIT (docs/engines.rst).
        figures = report(
            f"cluster primary killed, {'WAIT' if wait else 'no WAIT'}",
            load,
            state,
            switch=f"{switched:.1f} s",
            recovered=f"{recovered:.1f} s",
            operations=load.ops(),
            **{
                "not replicated at the kill": f"{lag} bytes",
                "logout held": logout_held,
                "rotation held": rotation_held,
            },
        )
        assert figures["unavailable (503)"] > 0, "the kill was not noticed at all"
        if wait:
            assert logout_held, "an acknowledged logout came back after the kill"
            assert rotation_held, "an acknowledged rotation was undone by the kill"
            assert_nothing_acknowledged_was_lost(load, state)


@pytest.mark.parametrize("wait", modes("no-wait"))
def test_a_slot_migration_under_load_loses_nothing_and_ends_on_the_new_owner(
    wait: bool, cluster_factory: Callable[..., ReplicatedCluster]
) -> None:
    cluster = cluster_factory()
    # A hash tag in the prefix puts every key of the load (records, tombstones) in one slot.
    with engine_on(cluster, wait=wait, prefix=f"hs{RUN_TOKEN}-{{cmig}}") as cache:
        client = cache.get_client()
        slot = int(client.keyslot(cache.make_key("any")))
        source = cluster.slot_owner(slot)
        target = next(p for p in cluster.primaries() if p.port != source.port)

        def new_session() -> SessionStore:
            session = SessionStore()
            session["n"] = 7
            session.save()
            assert session.session_key is not None
            return session

        # While the slot is split: a logout of a session still on the old owner (its
        # delete script names the record, there, and a tombstone that is nowhere yet:
        # TRYAGAIN), a logout of one already moved (ASK, then TRYAGAIN on the new
        # owner), and a session created then (on the new owner, through ASK) and rotated.
        staying, moving = new_session(), new_session()
        ended: list[str] = []
        rotated: list[tuple[str, str]] = []

        def during_the_split() -> None:
            key = record_key(cache, str(moving.session_key))
            cluster.command(source, "MIGRATE", target.host, target.port, key, 0, 5000)
            for session in (staying, moving):
                ended.append(str(session.session_key))
                session.flush()
            fresh = new_session()
            before_rotation = str(fresh.session_key)
            fresh.cycle_key()
            fresh.save()
            rotated.append((before_rotation, str(fresh.session_key)))

        with Load() as load:
            wait_for(lambda: load.ops() > 100, timeout=RECOVERY_TIMEOUT, what="the load to start")
            assert cluster.count_in_slot(source, slot) > 0
            started = time.monotonic()
            moved = cluster.migrate_slot(slot, source, target, during=during_the_split)
            migrated = time.monotonic() - started
            until_recovered(load)
            before = cluster.reads(source), cluster.reads(target)
            done = load.ops()
            wait_for(lambda: load.ops() > done + 200, timeout=RECOVERY_TIMEOUT, what="more load")
            after = cluster.reads(source), cluster.reads(target)
        no_other_errors(load)
        assert cluster.slot_owner(slot).port == target.port
        assert cluster.count_in_slot(source, slot) == 0
        assert after[0] == before[0], f"the former owner served reads: {before[0]} -> {after[0]}"
        assert after[1] != before[1], "the new owner served no reads"
        redirections = {
            "ASK": cluster.errors(source).get("ASK", 0),
            "TRYAGAIN": sum(cluster.errors(n).get("TRYAGAIN", 0) for n in (source, target)),
        }
        state = final_state(load)
        report(
            f"slot migration, {'WAIT' if wait else 'no WAIT'}",
            load,
            state,
            migration=f"{migrated:.1f} s",
            **{"keys moved": moved},
            **redirections,
            operations=load.ops(),
        )
        assert redirections["ASK"] > 0, "the load never met the split slot"
        assert_nothing_acknowledged_was_lost(load, state)
        assert all(dict(SessionStore(key).items()) == {} for key in ended)
        for old_key, new_key in rotated:
            assert dict(SessionStore(old_key).items()) == {}
            assert SessionStore(new_key).get("n") == 7
