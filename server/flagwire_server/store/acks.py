"""Acknowledgement tracking: how many clients applied a change, and how fast.

When a process fans out environment version ``V`` it opens a :class:`Tally`:
``sent`` is the number of its connections that were written the change and
``t_ms`` the commit time from the change log.  Each connection's ``ack``
advances its acknowledged version, adding one ``acked`` (and a latency from
commit to ack receipt, in µs) to every tracked version it covers; a
connection that goes away first adds one ``lost`` to each version it had not
acknowledged.

Every process publishes its tallies to ``P:{env}:acks:<V>`` (HASH, field =
instance id, JSON ``{sent, acked, lost, lat_us, t}``, 1 h expiry), batched
every few milliseconds while something changed.  Which processes are alive,
and from which version each reports (its *floor*), is
:mod:`flagwire_server.store.presence`.  :meth:`AckReporter.propagation`
merges the reports of every instance: a change is *complete* when every live
instance whose floor is below it reported it and, in each report,
``acked + lost == sent``.  A report
of an instance that died counts its unresolved clients as lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any, Final

import orjson
import redis.asyncio as aioredis
import redis.exceptions

from flagwire_server.background import stop_requested
from flagwire_server.store.keyspace import Keyspace
from flagwire_server.store.presence import Presence
from flagwire_server.store.types import as_str

__all__ = ["AckBook", "AckReporter", "Tally", "merge_reports"]

log = logging.getLogger("flagwire.acks")

#: Versions each environment keeps tallies for (older acks are ignored).
TRACKED_VERSIONS: Final = 256
REPORT_TTL_S: Final = 3600
FLUSH_INTERVAL_S: Final = 0.005


class Tally:
    """One process's figures for one environment version."""

    __slots__ = ("acked", "lat_us", "lost", "sent", "t_ms")

    def __init__(self, sent: int, t_ms: int) -> None:
        self.sent = sent
        self.acked = 0
        self.lost = 0
        self.t_ms = t_ms
        self.lat_us: list[int] = []

    def report(self) -> bytes:
        return orjson.dumps(
            {
                "sent": self.sent,
                "acked": self.acked,
                "lost": self.lost,
                "lat_us": self.lat_us,
                "t": self.t_ms,
            }
        )


class AckBook:
    """The tallies of one environment in one process (pure bookkeeping, no I/O)."""

    __slots__ = ("dirty", "env", "tallies")

    def __init__(self, env: str) -> None:
        self.env = env
        self.tallies: dict[int, Tally] = {}
        self.dirty: set[int] = set()

    def sent(self, version: int, count: int, t_ms: int) -> None:
        self.tallies[version] = Tally(count, t_ms)
        self.dirty.add(version)
        if len(self.tallies) > TRACKED_VERSIONS:
            for old in sorted(self.tallies)[: len(self.tallies) - TRACKED_VERSIONS]:
                del self.tallies[old]
                self.dirty.discard(old)

    def _versions(self, above: int, upto: int | None) -> Iterable[int]:
        if upto is not None and upto - above <= len(self.tallies):
            return (v for v in range(above + 1, upto + 1) if v in self.tallies)
        return [v for v in self.tallies if v > above and (upto is None or v <= upto)]

    def acked(self, above: int, upto: int, now_ms: float) -> list[float]:
        """A connection acknowledged ``(above, upto]``; returns the latencies in seconds."""
        if upto == above + 1:  # the usual ack: the one change just sent (once per client)
            tally = self.tallies.get(upto)
            if tally is None:
                return []
            lat = max(0, int((now_ms - tally.t_ms) * 1000))
            tally.acked += 1
            tally.lat_us.append(lat)
            self.dirty.add(upto)
            return [lat / 1e6]
        out: list[float] = []
        for v in self._versions(above, upto):
            tally = self.tallies[v]
            lat = max(0, int((now_ms - tally.t_ms) * 1000))
            tally.acked += 1
            tally.lat_us.append(lat)
            self.dirty.add(v)
            out.append(lat / 1e6)
        return out

    def lost(self, above: int) -> None:
        """A connection went away having acknowledged only up to ``above``."""
        for v in self._versions(above, None):
            self.tallies[v].lost += 1
            self.dirty.add(v)


def _pct(sorted_values: list[int], q: float) -> float | None:
    if not sorted_values:
        return None
    idx = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return round(sorted_values[idx] / 1000, 3)


def merge_reports(
    version: int,
    reports: dict[str, dict[str, Any]],
    live: set[str],
    required: set[str] | None = None,
) -> dict[str, Any]:
    """Combine per-instance reports into the propagation figures of one version.

    ``required``: the live instances that must report (by default all live
    ones); an instance that loaded the environment at or after ``version``
    never fans it out and has no client that missed it.
    """
    connected = acked = lost = 0
    lats: list[int] = []
    must = live if required is None else required
    complete = all(inst in reports for inst in must)
    for inst, rep in reports.items():
        sent, a, lo = int(rep.get("sent", 0)), int(rep.get("acked", 0)), int(rep.get("lost", 0))
        if inst not in live:
            lo = max(lo, sent - a)  # its clients went with it
        elif a + lo < sent:
            complete = False
        connected += sent
        acked += a
        lost += lo
        lats.extend(int(x) for x in rep.get("lat_us", ()))
    lats.sort()
    return {
        "version": version,
        "connected": connected,
        "acknowledged": acked,
        "lost": lost,
        "complete": complete and (bool(reports) or not must),
        "p50_ms": _pct(lats, 0.5),
        "p99_ms": _pct(lats, 0.99),
        "max_ms": round(lats[-1] / 1000, 3) if lats else None,
        "instances": len(reports),
    }


class AckReporter:
    """Publishes this process's tallies and heartbeat; reads everyone's."""

    def __init__(
        self,
        redis: aioredis.Redis,
        keyspace: Keyspace,
        instance_id: str,
        books: Callable[[], Iterable[AckBook]] = tuple,
        connected: Callable[[], dict[str, int]] = dict,
        on_error: Callable[[str, BaseException], None] | None = None,
    ) -> None:
        self.redis = redis
        self.ks = keyspace
        self.instance_id = instance_id
        self.presence = Presence(redis, keyspace, instance_id)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.bind(books, connected, on_error)

    def bind(
        self,
        books: Callable[[], Iterable[AckBook]],
        connected: Callable[[], dict[str, int]],
        on_error: Callable[[str, BaseException], None] | None = None,
    ) -> None:
        """Say where this process's tallies and connection counts come from."""
        self._books, self._connected, self._on_error = books, connected, on_error
        self.presence.connected, self.presence.on_error = connected, on_error

    async def set_floor(self, env: str, version: int) -> None:
        """See :meth:`Presence.set_floor <flagwire_server.store.presence.Presence.set_floor>`."""
        await self.presence.set_floor(env, version)

    async def start(self) -> None:
        await self.presence.start()
        self._task = asyncio.create_task(self._flush_loop(), name="flagwire-acks-flush")

    async def stop(self) -> None:
        await self.presence.stop()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        with contextlib.suppress(Exception):
            await self.flush()
            await self.presence.withdraw(self._connected())

    def poke(self) -> None:
        """Something changed: flush soon."""
        self._wake.set()

    async def flush(self) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pending: list[tuple[AckBook, int]] = []
        for book in self._books():
            for v in book.dirty:
                tally = book.tallies.get(v)
                if tally is None:
                    continue
                key = self.ks.acks(book.env, v)
                pipe.hset(key, self.instance_id, tally.report())
                pipe.expire(key, REPORT_TTL_S)
                pending.append((book, v))
            book.dirty.clear()
        if not pending:
            return
        try:
            await pipe.execute()
        except BaseException:
            for book, v in pending:  # try again next time
                book.dirty.add(v)
            raise

    async def _flush_loop(self) -> None:
        delay = FLUSH_INTERVAL_S
        while not stop_requested():
            await self._wake.wait()
            self._wake.clear()
            await asyncio.sleep(delay)
            try:
                await self.flush()
                delay = FLUSH_INTERVAL_S
            except (redis.exceptions.RedisError, OSError) as exc:
                if self._on_error:
                    self._on_error("acks", exc)
                delay = min(1.0, delay * 4)
                self._wake.set()

    async def propagation(self, env: str, version: int) -> dict[str, Any]:
        """Figures for ``version`` of ``env`` merged over every instance (see module doc)."""
        await self.flush()
        live = await self.presence.live_instances()
        raw = await self.redis.hgetall(self.ks.acks(env, version))
        floors = await self.presence.floors(env)
        reports: dict[str, dict[str, Any]] = {}
        for k, v in raw.items():
            with contextlib.suppress(orjson.JSONDecodeError):
                reports[as_str(k)] = orjson.loads(v)
        required = {i for i, f in floors.items() if i in live and f < version}
        return merge_reports(version, reports, live, required)

    async def wait_for(self, env: str, version: int, seconds: float) -> dict[str, Any]:
        """Poll :meth:`propagation` every ~5 ms until complete or ``seconds`` passed."""
        deadline = time.monotonic() + max(0.0, seconds)
        while True:
            result = await self.propagation(env, version)
            if result["complete"] or time.monotonic() >= deadline:
                return result
            await asyncio.sleep(FLUSH_INTERVAL_S)

    async def connected_all(self, env: str) -> int:
        """Connected clients of ``env`` over every live instance (heartbeat-fresh, ~1 s)."""
        return await self.presence.connected_all(env)
