"""One environment in one process: its mirror, change ring, streams and change-log reader.

The hot path lives here: :meth:`EnvFeed.broadcast` writes one pre-built frame
to every stream in a synchronous loop, and :meth:`EnvFeed.attach` registers a
stream in the same synchronous step that sends it ``hello`` and its snapshot.
See :mod:`flagwire_server.stream.fanout` for the design and the reasons.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Iterator
from itertools import islice
from typing import TYPE_CHECKING, Any, Final

import redis.asyncio as aioredis
import redis.exceptions
from websockets.frames import Frame, Opcode

from flagwire.core.errors import ProtocolError
from flagwire.core.protocol import CloseCode, Delete, Hello, Patch, Snapshot, decode, encode
from flagwire_server.store.acks import AckBook
from flagwire_server.store.documents import StoreUnavailable
from flagwire_server.stream.uvicorn_fence import close_now

if TYPE_CHECKING:
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

    from flagwire_server.stream.fanout import Fanout

__all__ = ["READ_BLOCK_MS", "Backoff", "Conn", "EnvFeed", "EnvNotFound", "frame_of", "payload_of"]

log = logging.getLogger("flagwire.fanout")

#: XREAD block time; also how often an idle reader checks the store's identity.
READ_BLOCK_MS: Final = 1000
CHECK_EVERY_S: Final = 1.0
REDIS_ERRORS = (redis.exceptions.RedisError, OSError, StoreUnavailable)
_REDIS_ERRORS = REDIS_ERRORS


class EnvNotFound(LookupError):
    """The environment does not exist in the store."""


def frame_of(payload: bytes) -> bytes:
    """The complete unmasked WebSocket text frame carrying ``payload``."""
    return bytes(Frame(Opcode.TEXT, payload).serialize(mask=False, extensions=[]))


def payload_of(frame: bytes) -> bytes:
    """Inverse of :func:`frame_of` (for the fallback path only)."""
    n = frame[1] & 0x7F
    return frame[2:] if n < 126 else frame[4:] if n == 126 else frame[10:]


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Backoff:
    """Exponential backoff with full jitter, 50 ms to 2 s."""

    def __init__(self, first: float = 0.05, cap: float = 2.0) -> None:
        self.first, self.cap, self.current = first, cap, first

    def next(self) -> float:
        delay = random.uniform(self.current / 2, self.current)
        self.current = min(self.cap, self.current * 2)
        return delay

    def reset(self) -> None:
        self.current = self.first


class Conn:
    """One open stream as the fan-out sees it.

    ``proto``/``transport`` are uvicorn's sans-I/O protocol and its asyncio
    transport; when they are not reachable (another ASGI server) ``ws`` is
    used instead through a small bounded per-connection queue — slower, but
    correct and still bounded.
    """

    __slots__ = (
        "acked",
        "attached",
        "base",
        "closed",
        "env",
        "feed",
        "key_id",
        "out",
        "out_bytes",
        "out_task",
        "proto",
        "stamp",
        "tokens",
        "transport",
        "ws",
    )

    def __init__(
        self,
        feed: EnvFeed,
        key_id: str,
        proto: WebSocketsSansIOProtocol | None,
        ws: Any = None,
    ) -> None:
        self.feed = feed
        self.env = feed.env
        self.key_id = key_id
        self.proto = proto
        self.transport: asyncio.Transport | None = proto.transport if proto is not None else None
        self.ws = ws
        self.base = 0
        self.acked = 0
        self.attached = False
        self.closed = False
        self.tokens = 0.0
        self.stamp = 0.0
        # Only the fallback path queues; the fast path never allocates a queue.
        self.out: deque[bytes] | None = None
        self.out_bytes = 0
        self.out_task: asyncio.Task[None] | None = None

    # --- writing ----------------------------------------------------------

    def write(self, frame: bytes) -> bool:
        """Write one frame now (no buffer check); False when the stream is closing."""
        if self.closed:
            return False
        t = self.transport
        if t is not None:
            if t.is_closing() or (self.proto is not None and self.proto.close_sent):
                return False
            t.write(frame)
            return True
        return self.push(frame, limit=None)

    def buffered(self) -> int:
        t = self.transport
        return t.get_write_buffer_size() if t is not None else self.out_bytes

    def push(self, frame: bytes, limit: int | None) -> bool:
        # Fallback path (transport not reachable): a bounded queue drained by one task.
        if limit is not None and self.out_bytes > limit:
            return False
        if self.out is None:
            self.out = deque()
        self.out.append(frame)
        self.out_bytes += len(frame)
        if self.out_task is None:
            self.out_task = asyncio.get_running_loop().create_task(self._drain())
        return True

    async def _drain(self) -> None:
        try:
            while self.out and not self.closed:
                frame = self.out.popleft()
                self.out_bytes -= len(frame)
                await self.ws.send_text(payload_of(frame).decode())
        except Exception:  # the peer went away; the endpoint notices and detaches
            self.out = None
            self.out_bytes = 0
        finally:
            self.out_task = None

    # --- closing ----------------------------------------------------------

    def close(self, code: int, reason: str) -> None:
        """Close from the server side, now, without awaiting a slow peer."""
        if self.closed:
            return
        self.feed.detach(self)
        self.closed = True
        self.feed.fanout.metrics.disconnects.labels(str(code)).inc()
        if self.proto is not None:
            close_now(self.proto, code, reason)
        elif self.ws is not None:
            self.out = None
            self.out_bytes = 0
            ws = self.ws
            task = asyncio.get_running_loop().create_task(ws.close(code, reason))
            self.feed.fanout.hold(task)

    def ack(self, version: int) -> None:
        feed = self.feed
        if version > feed.version:
            version = feed.version
        above = max(self.acked, self.base)
        if version > above:
            for lat in feed.book.acked(above, version, time.time() * 1000):
                feed.fanout.metrics.propagation.observe(lat)
            feed.fanout.reporter_poke()
        if version > self.acked:
            self.acked = version


class EnvFeed:
    """The mirror, ring, streams and reader of one environment in this process."""

    def __init__(self, fanout: Fanout, env: str) -> None:
        self.fanout = fanout
        self.env = env
        self.epoch = ""
        self.version = 0
        self.flags: dict[str, dict[str, Any]] = {}
        self.segments: dict[str, dict[str, Any]] = {}
        self.ring: deque[tuple[int, bytes]] = deque(maxlen=fanout.settings.ring_size)
        self.conns: set[Conn] = set()
        self.book = AckBook(env)
        self.limit = fanout.settings.max_buffer
        self.last_id = "0-0"
        self.reset_reason: str | None = None
        #: When the reader last heard from Redis (monotonic); see Fanout._watchdog.
        self.last_ok = time.monotonic()
        self.stale = False
        self.reader_error: str | None = None
        self.task: asyncio.Task[None] | None = None
        self._frames_cache: tuple[int, bytes, bytes] | None = None
        self._reset_logged = 0.0
        self._changes_key = fanout.keyspace.changes(env)
        self._meta_key = fanout.keyspace.meta(env)
        self._labels = (
            fanout.metrics.messages_sent.labels(env, "change"),
            fanout.metrics.changes_applied.labels(env),
            fanout.metrics.connected.labels(env),
        )

    # --- state --------------------------------------------------------------

    def load(self, state: Any) -> None:
        """Replace the mirror with a store ``EnvState`` (the ring starts empty)."""
        self.epoch = state.epoch
        self.version = int(state.version)
        self.flags = dict(state.flags)
        self.segments = dict(state.segments)
        self.ring.clear()
        self.last_id = f"{self.version}-0"
        self._frames_cache = None

    def frames(self) -> tuple[bytes, bytes]:
        """``(hello, snapshot)`` frames of the current version, built once per version."""
        cache = self._frames_cache
        if cache is None or cache[0] != self.version:
            hello = frame_of(
                encode(
                    Hello(
                        env=self.env,
                        epoch=self.epoch,
                        version=self.version,
                        heartbeat=self.fanout.settings.heartbeat,
                    )
                )
            )
            snap = frame_of(
                encode(
                    Snapshot(
                        env=self.env,
                        epoch=self.epoch,
                        version=self.version,
                        flags=self.flags,
                        segments=self.segments,
                    )
                )
            )
            cache = self._frames_cache = (self.version, hello, snap)
            # A big snapshot must not by itself make a client look slow.
            self.limit = max(self.fanout.settings.max_buffer, 2 * len(snap))
        return cache[1], cache[2]

    def covers(self, since: int) -> bool:
        """True when the ring holds every change after ``since`` (or there are none)."""
        if since == self.version:
            return True
        if since > self.version or since < 0 or not self.ring:
            return False
        return self.ring[0][0] <= since + 1

    def missed(self, since: int) -> Iterator[bytes]:
        start = since + 1 - self.ring[0][0] if self.ring else 0
        return (frame for _v, frame in islice(self.ring, max(0, start), None))

    # --- streams --------------------------------------------------------------

    def attach(self, conn: Conn, since: int | None, epoch: str | None) -> str:
        """Send hello + snapshot (or the missed changes) and register; no await inside."""
        hello, snap = self.frames()
        conn.write(hello)
        sent = "snapshot"
        if since is not None and epoch == self.epoch and self.covers(since):
            for frame in self.missed(since):
                conn.write(frame)
            sent = "resume"
        else:
            conn.write(snap)
        conn.base = conn.acked = self.version
        conn.attached = True
        self.conns.add(conn)
        self._labels[2].inc()
        self.fanout.metrics.messages_sent.labels(self.env, sent).inc()
        return sent

    def detach(self, conn: Conn) -> None:
        if not conn.attached:
            return
        conn.attached = False
        self.conns.discard(conn)
        self._labels[2].dec()
        self.book.lost(max(conn.acked, conn.base))
        self.fanout.reporter_poke()

    def resnapshot(self, conn: Conn, reason: str = "resync") -> None:
        """Send ``conn`` a fresh snapshot, in order with the live changes."""
        _hello, snap = self.frames()
        if conn.buffered() > self.limit:
            conn.close(CloseCode.RESYNC, "too slow; resync")
            return
        conn.write(snap)
        conn.base = max(conn.base, self.version)
        self.fanout.metrics.resyncs.labels(self.env, reason).inc()

    def resnapshot_all(self, reason: str) -> None:
        for conn in list(self.conns):
            self.resnapshot(conn, reason)

    def close_all(self, code: int, reason: str) -> None:
        for conn in list(self.conns):
            conn.close(code, reason)

    def broadcast(self, frame: bytes) -> int:
        """Write ``frame`` to every stream; returns how many got it.

        The hot loop: no await, no per-client allocation.
        """
        limit = self.limit
        n = 0
        drop: list[Conn] | None = None
        for c in self.conns:
            t = c.transport
            if t is not None:
                if t.is_closing() or t.get_write_buffer_size() > limit:
                    if drop is None:
                        drop = []
                    drop.append(c)
                    continue
                t.write(frame)
                n += 1
            elif c.push(frame, limit):  # fallback path
                n += 1
            else:
                if drop is None:
                    drop = []
                drop.append(c)
        if drop:
            for c in drop:
                t = c.transport
                if t is not None and t.is_closing():
                    self.detach(c)  # already going; the endpoint will notice
                else:
                    log.info(
                        "stream too slow, closing",
                        extra={"env": self.env, "buffered": c.buffered(), "key_id": c.key_id},
                    )
                    c.close(CloseCode.RESYNC, "too slow; resync")
        return n

    def apply(self, version: int, message: bytes, t_ms: int) -> None:
        """Apply one change (``version == self.version + 1``) and fan it out."""
        msg = decode(message)
        if isinstance(msg, Patch):
            (self.flags if msg.kind == "flag" else self.segments)[msg.key] = msg.data
        elif isinstance(msg, Delete):
            (self.flags if msg.kind == "flag" else self.segments).pop(msg.key, None)
        else:
            raise ProtocolError(f"change log entry is a {msg.type}, not a patch or delete")
        if getattr(msg, "version", version) != version:
            raise ProtocolError(f"entry {version} carries version {msg.version}")
        self.version = version
        self.last_id = f"{version}-0"
        frame = frame_of(message)
        self.ring.append((version, frame))
        started = time.perf_counter()
        n = self.broadcast(frame)
        fanout = self.fanout
        fanout.metrics.fanout_duration.observe(time.perf_counter() - started)
        self.book.sent(version, n, t_ms)
        fanout.reporter_poke()
        self._labels[0].inc(n)
        self._labels[1].inc()

    # --- the reader -----------------------------------------------------------

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name=f"flagwire-reader-{self.env}")

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task
            self.task = None

    @property
    def running(self) -> bool:
        return self.task is not None and not self.task.done()

    async def _run(self) -> None:
        fanout = self.fanout
        r = fanout.reader_factory()
        backoff = Backoff()
        next_check = 0.0
        try:
            while True:
                try:
                    if time.monotonic() >= next_check or self.reset_reason:
                        if await self._check(r) == "gone":
                            return
                        next_check = time.monotonic() + CHECK_EVERY_S
                        self.last_ok = time.monotonic()
                    if self.reset_reason:
                        await asyncio.sleep(CHECK_EVERY_S)
                        continue
                    resp: Any = await r.xread(
                        {self._changes_key: self.last_id}, count=1000, block=READ_BLOCK_MS
                    )
                    if self.reader_error is not None:
                        log.warning("change reader recovered", extra={"env": self.env})
                        self.reader_error = None
                    self.last_ok = time.monotonic()
                    backoff.reset()
                    for stream in resp or ():
                        await self._entries(stream[1])
                except asyncio.CancelledError:
                    raise
                except _REDIS_ERRORS as exc:
                    fanout.metrics.redis_errors.labels("xread").inc()
                    if self.reader_error is None:
                        log.warning(
                            "change reader lost Redis; serving cached state",
                            extra={"env": self.env, "error": str(exc)},
                        )
                    self.reader_error = f"{type(exc).__name__}: {exc}"
                    next_check = 0.0
                    await asyncio.sleep(backoff.next())
                except Exception as exc:  # a bug must not kill the reader silently
                    log.exception("change reader failed", extra={"env": self.env})
                    self.reader_error = f"{type(exc).__name__}: {exc}"
                    next_check = 0.0
                    await asyncio.sleep(backoff.next())
        finally:
            with contextlib.suppress(Exception):
                await r.aclose()

    async def _entries(self, entries: list[Any]) -> None:
        for entry_id, fields in entries:
            version = int(_s(entry_id).split("-", 1)[0])
            if version <= self.version:
                continue
            if version != self.version + 1:
                log.warning(
                    "change log gap; reloading",
                    extra={"env": self.env, "have": self.version, "next": version},
                )
                await self._reload("gap")
                return
            message = fields.get(b"m", fields.get("m"))
            t_ms = int(_s(fields.get(b"t", fields.get("t", 0))))
            try:
                self.apply(version, bytes(message) if message is not None else b"", t_ms)
            except ProtocolError as exc:
                log.error(
                    "undecodable change log entry; reloading",
                    extra={"env": self.env, "version": version, "error": str(exc)},
                )
                await self._reload("corrupt")
                return

    async def _reload(self, reason: str) -> None:
        state = await self.fanout.store.load_env(self.env)
        if state.epoch != self.epoch or int(state.version) < self.version:
            await self._check(self.fanout.redis)  # a reset or a recreated env, handled there
            return
        self.load(state)
        self.resnapshot_all(reason)

    async def _check(self, r: aioredis.Redis) -> str:
        """Compare the store's identity with ours; returns "ok", "reset" or "gone"."""
        ks = self.fanout.keyspace
        pipe = r.pipeline(transaction=False)
        pipe.hmget(self._meta_key, ["epoch", "version"])
        pipe.hget(ks.store, "epoch")
        (epoch_raw, version_raw), store_raw = await pipe.execute()
        store_epoch = _s(store_raw) if store_raw is not None else None
        if store_epoch is None or store_epoch != self.fanout.store_epoch:
            return self._store_reset(
                "the store lost its identity (Redis restarted empty?)"
                if store_epoch is None
                else "the store's identity changed (a different Redis or a restore?)"
            )
        if epoch_raw is None:
            log.warning("environment deleted; closing its streams", extra={"env": self.env})
            self.close_all(CloseCode.RESYNC, "environment deleted")
            self.fanout.forget(self)
            return "gone"
        epoch, version = _s(epoch_raw), int(_s(version_raw or b"0"))
        if epoch != self.epoch:
            log.warning("environment recreated; clients resync", extra={"env": self.env})
            self.load(await self.fanout.store.load_env(self.env))
            self.close_all(CloseCode.RESYNC, "environment recreated")
            self._clear_reset()
            return "ok"
        if version < self.version:
            return self._store_reset(
                f"the environment's version went back from {self.version} to {version}"
            )
        self._clear_reset()
        if version > self.version:
            first = await r.xrange(self._changes_key, min=f"({self.last_id}", max="+", count=1)
            if not first or int(_s(first[0][0]).split("-", 1)[0]) != self.version + 1:
                log.warning(
                    "change log no longer covers our version; reloading",
                    extra={"env": self.env, "have": self.version, "store": version},
                )
                await self._reload("gap")
        return "ok"

    def _store_reset(self, why: str) -> str:
        now = time.monotonic()
        if self.reset_reason is None or now - self._reset_logged > 60:
            log.error(
                "STORE RESET DETECTED: %s; serving the last known flags (version %d), "
                "not the store's; /readyz is failing until the store is restored or the "
                "server is restarted",
                why,
                self.version,
                extra={"env": self.env, "version": self.version},
            )
            self._reset_logged = now
        self.reset_reason = why
        self.fanout.metrics.store_reset.labels(self.env).set(1)
        return "reset"

    def _clear_reset(self) -> None:
        if self.reset_reason is not None:
            log.warning("store identity is back; resuming", extra={"env": self.env})
            self.reset_reason = None
            self.fanout.metrics.store_reset.labels(self.env).set(0)
