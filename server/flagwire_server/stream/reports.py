"""Fleet insight on the server: client summaries aggregated in memory, flushed to Redis.

The endpoint hands each ``identify`` and ``summary`` to :meth:`Insight.receive`
(synchronous, no I/O); every ``FLAGWIRE_INSIGHT_FLUSH`` seconds one task
writes what this process gathered, one pipeline per environment
(:class:`~flagwire_server.store.insight.InsightStore`), refreshes the SDK
inventory and pushes a changed watch list to the environment's streams.
10,000 clients reporting every 10 s are then 1,000 summaries a second into
memory and one Redis write per environment per flush, not 1,000 writes.

A summary never breaks the stream: one that is invalid, too big, too
frequent or sent before ``identify`` is dropped and counted in
``flagwire_insight_summaries{result=...}``.  Nor does the sum of them break
the process: decoding and aggregating summaries may take at most
:data:`MAX_LOOP_SHARE` of the event loop's time in each second (the endpoint
asks :meth:`Insight.admit` before decoding one); past it they are dropped
unread as ``overload`` until the second ends.  Why: 10,000 clients with 50
flags every 10 s want about one core of decoding (``bench/results/insight.json``);
without a budget the backlog held the loop for seconds at a time, the
change-log reader's Redis calls timed out and every stream was closed (1013).

A summary carries no environment: it counts for the environment of the
stream it arrived on, and only for flags that exist there, so no client can
write into another environment or grow Redis with invented keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final

from flagwire.core.protocol import Identify, Summary, Watch, encode
from flagwire.core.reports import MAX_SUMMARY_FRAME
from flagwire.core.sketch import DENSE_BYTES, Registers, Sketch
from flagwire_server.background import stop_requested
from flagwire_server.store.insight import FlagBatch, InsightStore, VariationBatch
from flagwire_server.store.types import StoreUnavailable
from flagwire_server.stream.frames import frame_of

if TYPE_CHECKING:
    from flagwire_server.observability.metrics import Metrics
    from flagwire_server.stream.conn import Conn
    from flagwire_server.stream.feed import EnvFeed

__all__ = [
    "LOOP_WINDOW",
    "MAX_LOOP_SHARE",
    "MAX_PENDING_SKETCH_BYTES",
    "SUMMARY_BURST",
    "SUMMARY_RATE",
    "ConnReport",
    "Insight",
]

log = logging.getLogger("flagwire.insight")

#: Summary bytes a stream may send per second, sustained (a client sends one every 10 s;
#: a busy one, 100 flag variations with a dense sketch each, 1.6 MB).
SUMMARY_RATE: Final = 256 * 1024
#: ... and at once (a client with many flags splits a summary into several frames).
SUMMARY_BURST: Final = 16 * MAX_SUMMARY_FRAME
#: Share of the event loop's time, per second, that summaries may take (decode + aggregate).
MAX_LOOP_SHARE: Final = 0.5
#: The budget's window (seconds).
LOOP_WINDOW: Final = 1.0
#: Memory that sketches may hold between two flushes, all flags together: sparse ones are
#: merged as they come (about 64 bytes a register, at most 16 KiB a variation), dense
#: ones kept for Redis to merge (12 KiB each).  Reaching it flushes at once; until that
#: flush lands, more sketches are not kept (``flagwire_insight_sketches_dropped``), so
#: distinct counts are then a lower bound.
MAX_PENDING_SKETCH_BYTES: Final = 64 * 1024 * 1024


class ConnReport:
    """What one stream said about itself, and its summary budget."""

    __slots__ = ("connected_ms", "id", "identity", "stamp", "tokens")

    def __init__(self, stream_id: str, identity: Identify) -> None:
        self.id = stream_id
        self.identity = identity
        self.connected_ms = int(time.time() * 1000)
        self.tokens = float(SUMMARY_BURST)
        self.stamp = time.monotonic()


class Insight:
    """This process's fleet-insight aggregation and its flush task.

    Args:
        store: where aggregates go.
        metrics: the process's metrics (summary results, per-flag counters).
        feeds: the fan-out's feeds by environment (read at each flush).
        instance_id: names this process in stream ids.
        flush_interval: seconds between flushes.
        max_series: label sets of the per-flag counters before ``flag="_other"``.
        clock: seconds, for the loop-share budget (``time.perf_counter``; tests pass theirs).
        max_pending_sketch_bytes: :data:`MAX_PENDING_SKETCH_BYTES` (tests pass a small one).
    """

    def __init__(
        self,
        store: InsightStore,
        metrics: Metrics,
        feeds: Callable[[], Mapping[str, EnvFeed]],
        *,
        instance_id: str,
        flush_interval: float,
        max_series: int,
        clock: Callable[[], float] = time.perf_counter,
        max_pending_sketch_bytes: int = MAX_PENDING_SKETCH_BYTES,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.feeds = feeds
        self.instance_id = instance_id
        self.flush_interval = flush_interval
        self.max_series = max_series
        self._ids = itertools.count(1)
        self._pending: dict[str, dict[str, FlagBatch]] = {}
        self._series: set[tuple[str, str]] = set()
        self._watched: dict[str, tuple[str, ...]] = {}
        self._watch_frames: dict[str, bytes] = {}
        self._reported: dict[str, set[str]] = {}
        self._task: asyncio.Task[None] | None = None
        self._clock = clock
        self._window = clock()
        self._spent = 0.0
        self._admitted: float | None = None
        self.max_pending_sketch_bytes = max_pending_sketch_bytes
        self._sketch_bytes = 0  # what sketches in _pending hold, all flags together
        self._wake = asyncio.Event()  # set: flush now, without waiting for the interval

    # --- from the endpoint (synchronous) ------------------------------------------------

    def admit(self) -> bool:
        """May one more summary be decoded now?  False (counted as ``overload``) once
        summaries took :data:`MAX_LOOP_SHARE` of this second."""
        now = self._clock()
        if now - self._window >= LOOP_WINDOW:
            self._window, self._spent = now, 0.0
        if self._spent >= MAX_LOOP_SHARE * LOOP_WINDOW:
            self.metrics.insight_summaries.labels("overload").inc()
            return False
        self._admitted = now
        return True

    def drop(self, reason: str) -> None:
        """Count a summary's end (accepted, or why not) and charge its time to the budget."""
        if self._admitted is not None:
            # admit → decode → receive/drop run with no await between: this is their time.
            self._spent += self._clock() - self._admitted
            self._admitted = None
        self.metrics.insight_summaries.labels(reason).inc()

    def receive(self, feed: EnvFeed, conn: Conn, msg: Identify | Summary, size: int) -> None:
        """Take one ``identify`` or ``summary`` from ``conn``, a stream of ``feed``."""
        if isinstance(msg, Identify):
            conn.insight = ConnReport(f"{self.instance_id}:{next(self._ids)}", msg)
            frame = self._watch_frames.get(feed.env)
            if frame is not None:
                conn.write(frame)
            return
        report = conn.insight
        if report is None:
            self.drop("unidentified")
            return
        now = time.monotonic()
        report.tokens = min(SUMMARY_BURST, report.tokens + (now - report.stamp) * SUMMARY_RATE)
        report.stamp = now
        if report.tokens < size:
            self.drop("rate")
            return
        report.tokens -= size
        self._add(feed, report.identity.app, msg)
        self.drop("accepted")

    def _add(self, feed: EnvFeed, app: str, summary: Summary) -> None:
        env = feed.env
        known = feed.flags
        now_ms = int(time.time() * 1000)
        minute = now_ms // 60_000  # the server's clock: a client's may be wrong
        pending = self._pending.setdefault(env, {})
        for key, variations in summary.flags.items():
            if key not in known:
                continue
            batch = pending.get(key)
            if batch is None:
                batch = pending[key] = FlagBatch()
            batch.last_ms = now_ms
            batch.apps[app] = now_ms
            per = batch.variations
            for index, stats in variations.items():
                vb = per.get(index)
                if vb is None:
                    vb = per[index] = VariationBatch()
                # Runs per variation of every summary: locals, no property call, the events
                # loop skipped when empty (receive: 1.29 M -> 1.12 M instructions, callgrind).
                n = 0
                reasons = vb.reasons
                for reason, count in stats.reasons.items():
                    reasons[reason] = reasons.get(reason, 0) + count
                    n += count
                if n:
                    minutes = vb.minutes
                    minutes[minute] = minutes.get(minute, 0) + n
                if stats.sketch:
                    self._add_sketch(vb, stats.sketch)
                if not stats.events:
                    continue
                for name, (count, total) in stats.events.items():
                    sq = stats.squares.get(name, 0.0)
                    pair = vb.events.get(name)
                    if pair is None:
                        vb.events[name] = [count, total, sq]
                    else:
                        pair[0] += count
                        pair[1] += total
                        pair[2] += sq

    def _add_sketch(self, vb: VariationBatch, sketch: Sketch) -> None:
        if self._sketch_bytes >= self.max_pending_sketch_bytes:
            self.metrics.insight_sketches_dropped.inc()
            return
        if type(sketch) is bytes:
            vb.dense.append(sketch)
            self._sketch_bytes += DENSE_BYTES
        else:
            registers = vb.registers
            if registers is None:
                registers = vb.registers = Registers()
            before = registers.nbytes
            registers.merge(sketch)
            self._sketch_bytes += registers.nbytes - before
        if self._sketch_bytes >= self.max_pending_sketch_bytes:
            self._wake.set()

    def _label(self, env: str, flag: str) -> str:
        pair = (env, flag)
        if pair in self._series:
            return flag
        if len(self._series) < self.max_series:
            self._series.add(pair)
            return flag
        return "_other"

    # --- the flush task ---------------------------------------------------------------

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="insight-flush")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(StoreUnavailable, OSError):
            await self.flush()

    async def _loop(self) -> None:
        while not stop_requested():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.flush_interval)
            self._wake.clear()
            try:
                await self.flush()
            except (StoreUnavailable, OSError) as exc:
                log.warning("insight flush failed", extra={"error": str(exc)})
                self.metrics.redis_errors.labels("insight").inc()

    def _count(self, env: str, flags: dict[str, FlagBatch]) -> None:
        """Prometheus, once per flag and variation per flush (``labels()`` is not cheap)."""
        evaluations = self.metrics.flag_evaluations
        events = self.metrics.flag_events
        for key, batch in flags.items():
            label = self._label(env, key)
            for index, vb in batch.variations.items():
                n = sum(vb.minutes.values())
                if n:
                    evaluations.labels(env, label, str(index)).inc(n)
                for name, (count, _total, _sq) in vb.events.items():
                    events.labels(env, label, str(index), name).inc(count)

    async def flush(self) -> None:
        """Write the aggregates, refresh the inventory, push changed watch lists."""
        pending, self._pending = self._pending, {}
        self._sketch_bytes = 0
        for env, flags in pending.items():
            self._count(env, flags)
            await self.store.write(env, flags)
        feeds = dict(self.feeds())
        for env, feed in feeds.items():
            await self._inventory(env, feed)
            await self._push_watched(env, feed)
        for env in set(self._reported) - set(feeds):
            await self.store.forget_clients(env, self._reported.pop(env))

    async def _inventory(self, env: str, feed: EnvFeed) -> None:
        entries: dict[str, dict[str, Any]] = {}
        version = feed.version
        for conn in feed.conns:
            report = conn.insight
            if report is None:
                continue
            ident = report.identity
            applied = max(conn.acked, conn.base)
            entries[report.id] = {
                "app": ident.app,
                "instance": ident.instance,
                "sdk": ident.sdk,
                "sdk_version": ident.sdk_version,
                "host": ident.host,
                "pid": ident.pid,
                "connected_since": report.connected_ms,
                "applied_version": applied,
                "env_version": version,
                "lag": max(0, version - applied),
                "server": self.instance_id,
            }
        gone = self._reported.get(env, set()) - set(entries)
        self._reported[env] = set(entries)
        await self.store.forget_clients(env, gone)
        await self.store.report_clients(env, entries)

    async def _push_watched(self, env: str, feed: EnvFeed) -> None:
        watched = tuple(await self.store.watched(env))
        if watched == self._watched.get(env, ()):
            return
        self._watched[env] = watched
        frame = frame_of(encode(Watch(watched)))
        self._watch_frames[env] = frame
        for conn in list(feed.conns):
            if conn.insight is not None:
                conn.write(frame)
