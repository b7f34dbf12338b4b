"""Fan-out: one change-log reader per environment per process, one write per client.

Per process and environment an :class:`~flagwire_server.stream.feed.EnvFeed` keeps

* a mirror of the environment (raw flag and segment documents, version, epoch)
  and, built lazily once per version, the encoded ``hello`` and ``snapshot``
  frames;
* a ring of the last ``ring_size`` changes as ready-to-write WebSocket frames,
  so a client resuming with ``since`` gets only what it missed;
* the set of its open streams (:class:`~flagwire_server.stream.conn.Conn`);
* a reader task (:class:`~flagwire_server.stream.reader.ChangeReader`) blocking
  on the environment's change log from the last version it applied, on a
  Redis connection of its own.

The mirror, ring and stream set are the pure
:class:`~flagwire_server.stream.mirror.Mirror`; the feed writes what it
decides to the connections.

A change is decoded once (to update the mirror), framed once, and the same
bytes are written to every stream in a plain synchronous loop: one
``transport.write`` per client, no task, queue or ``await`` per client
(issue 6: that is the measured floor; per-connection tasks cost 2.7x the CPU
and awaiting sends lets one stalled client freeze everyone).  A client whose
transport already buffers more than ``max_buffer`` bytes is closed with 4000
"too slow; resync" instead, so memory per client stays bounded.

Because :meth:`Mirror.attach <flagwire_server.stream.mirror.Mirror.attach>`
reads the mirror and says what a new stream gets (``hello`` plus the
snapshot or the missed changes) and the feed writes it and registers the stream
without an ``await``, a change is either in what the client got on connect or among the
live changes it gets after — never both, never neither.

Redis trouble (see ``docs/storage.md``, "When Redis goes away"): the feed keeps
serving its mirror, ``/readyz`` says not ready, the reader retries with
backoff and resumes from its last id; a gap the log no longer covers reloads
the environment and sends every client a fresh snapshot; an environment or
store epoch that vanished or changed, or a version that went backwards, is a
*store reset*: the mirror is kept and served, nothing from the reset store is
streamed, and ``/readyz`` reports ``store_reset`` until the store comes back
or the process is restarted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final

from flagwire.core.protocol import CloseCode
from flagwire_server.background import stop_requested
from flagwire_server.store.acks import AckReporter
from flagwire_server.store.changelog import ChangeLog
from flagwire_server.store.types import EnvState, NotFound, StoreUnavailable
from flagwire_server.stream.feed import EnvFeed, EnvNotFound
from flagwire_server.stream.reader import READ_BLOCK_MS, ChangeReader

if TYPE_CHECKING:
    from flagwire_server.config import Settings
    from flagwire_server.observability.metrics import Metrics

__all__ = ["READ_BLOCK_MS", "EnvFeed", "EnvNotFound", "Fanout"]

log = logging.getLogger("flagwire.fanout")

DISCOVER_EVERY_S: Final = 2.0


class Fanout:
    """Every environment's feed in this process, plus acknowledgement reporting.

    Args:
        settings: server settings (ring size, buffer limit, heartbeat).
        changelog: change-log and store-identity reads on the shared client.
        reporter: publishes this process's acknowledgements, heartbeat and floors.
        load_env: reads one environment from the store (raises ``NotFound``).
        list_envs: the names of every environment in the store.
        metrics: the process's metrics.
        reader_changelog: opens the change log of one reader (a connection of its own).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        changelog: ChangeLog,
        reporter: AckReporter,
        load_env: Callable[[str], Awaitable[EnvState]],
        list_envs: Callable[[], Awaitable[list[str]]],
        metrics: Metrics,
        reader_changelog: Callable[[], ChangeLog],
    ) -> None:
        self.settings = settings
        self.changelog = changelog
        self.reporter = reporter
        self.metrics = metrics
        self._load_env = load_env
        self._list_envs = list_envs
        self._reader_changelog = reader_changelog
        self.feeds: dict[str, EnvFeed] = {}
        self.store_epoch: str | None = None
        self.started = False
        self.discover_error: str | None = None
        self._loading: dict[str, asyncio.Future[EnvFeed]] = {}
        self._discover: asyncio.Task[None] | None = None
        self._watch: asyncio.Task[None] | None = None
        #: A feed that has not heard from Redis for this long cannot vouch for its data.
        self.stale_after = settings.heartbeat + READ_BLOCK_MS / 1000
        reporter.bind(
            books=lambda: [f.book for f in self.feeds.values()],
            connected=lambda: {env: len(f.conns) for env, f in self.feeds.items()},
            on_error=self._redis_error,
        )

    def _redis_error(self, op: str, exc: BaseException) -> None:
        self.metrics.redis_errors.labels(op).inc()

    # --- lifecycle ------------------------------------------------------------

    async def start(self) -> None:
        self.store_epoch = await self.changelog.store_epoch()
        for env in await self._list_envs():
            with contextlib.suppress(EnvNotFound):
                await self.ensure(env)
        await self.reporter.start()
        self._discover = asyncio.create_task(self._discover_loop(), name="flagwire-discover")
        self._watch = asyncio.create_task(self._watchdog(), name="flagwire-watchdog")
        self.started = True

    async def stop(
        self, code: int = CloseCode.GOING_AWAY, reason: str = "server shutting down"
    ) -> None:
        self.close_all(code, reason)
        for task in (self._discover, self._watch):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        for feed in list(self.feeds.values()):
            if feed.reader is not None:
                await feed.reader.stop()
        await self.reporter.stop()
        self.started = False

    async def _watchdog(self) -> None:
        """Close the streams of feeds cut off from Redis for longer than ``stale_after``.

        A process that cannot read the change log cannot tell whether it is
        behind (writes may go through other processes), and a client must never
        believe it is current while it is behind for longer than its timeout.
        So past the heartbeat (``FLAGWIRE_HEARTBEAT``) plus the read block its streams are
        closed with 1013 "try again later" and new ones are refused with 503
        until the reader is back; clients keep evaluating their last flags and
        resume with ``since``.  A store reset is different: the process knows
        what it has is the last truth, and keeps serving it.
        """
        while not stop_requested():
            await asyncio.sleep(0.25)
            now = time.monotonic()
            for feed in list(self.feeds.values()):
                reader = feed.reader
                if reader is None:
                    continue
                stale = reader.reset_reason is None and now - reader.last_ok > self.stale_after
                if stale and not feed.stale:
                    log.warning(
                        "cut off from Redis for %.1fs: closing streams (1013) until "
                        "the change log can be read again",
                        now - reader.last_ok,
                        extra={"env": feed.env, "streams": len(feed.conns)},
                    )
                elif feed.stale and not stale:
                    log.warning(
                        "change log readable again; accepting streams", extra={"env": feed.env}
                    )
                feed.stale = stale
                if stale and feed.conns:
                    feed.close_all(
                        CloseCode.TRY_AGAIN_LATER, "flag store unreachable; try again later"
                    )

    async def _discover_loop(self) -> None:
        while not stop_requested():
            await asyncio.sleep(DISCOVER_EVERY_S)
            try:
                for env in await self._list_envs():
                    if env not in self.feeds:
                        with contextlib.suppress(EnvNotFound):
                            await self.ensure(env)
                self.discover_error = None
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.metrics.redis_errors.labels("discover").inc()
                self.discover_error = f"{type(exc).__name__}: {exc}"

    async def ensure(self, env: str) -> EnvFeed:
        """The feed of ``env``, loading it (and starting its reader) on first use.

        Raises:
            EnvNotFound: no such environment.
            StoreUnavailable (or another store error): the store could not be read.
        """
        feed = self.feeds.get(env)
        if feed is not None:
            return feed
        pending = self._loading.get(env)
        if pending is not None:
            return await asyncio.shield(pending)
        fut: asyncio.Future[EnvFeed] = asyncio.get_running_loop().create_future()
        self._loading[env] = fut
        try:
            try:
                state = await self._load_env(env)
            except NotFound:
                raise EnvNotFound(env) from None
            feed = EnvFeed(
                env, settings=self.settings, metrics=self.metrics, on_acks=self.reporter.poke
            )
            feed.load(state)
            feed.reader = ChangeReader(
                feed,
                changelog=self._reader_changelog,
                load_env=self._load_env,
                store_epoch=lambda: self.store_epoch,
                on_gone=self.forget,
                metrics=self.metrics,
            )
            # Published before any client can attach: this process fans out, and
            # reports acknowledgements of, versions above this one only.
            with contextlib.suppress(StoreUnavailable):
                await self.reporter.set_floor(env, feed.version)
            self.feeds[env] = feed
            feed.reader.start()
            fut.set_result(feed)
            return feed
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # retrieved: waiters re-raise it
            raise
        finally:
            del self._loading[env]

    def forget(self, feed: EnvFeed) -> None:
        if self.feeds.get(feed.env) is feed:
            del self.feeds[feed.env]

    # --- queries ------------------------------------------------------------

    def feed(self, env: str) -> EnvFeed | None:
        return self.feeds.get(env)

    def connected(self, env: str | None = None) -> int:
        """Open streams in this process (of ``env``, or of all environments)."""
        if env is None:
            return sum(len(f.conns) for f in self.feeds.values())
        feed = self.feeds.get(env)
        return len(feed.conns) if feed else 0

    async def connected_all(self, env: str) -> int:
        """Open streams of ``env`` across every live instance (about a second fresh)."""
        return await self.reporter.connected_all(env)

    async def propagation(self, env: str, version: int) -> dict[str, Any]:
        """Propagation figures of one change version over every live instance."""
        return await self.reporter.propagation(env, version)

    async def wait_for(self, env: str, version: int, seconds: float) -> dict[str, Any]:
        """Wait until every client connected at ``version``'s fan-out acked it, or ``seconds``."""
        return await self.reporter.wait_for(env, version, seconds)

    def not_ready(self) -> list[dict[str, str]]:
        """Reasons this process cannot vouch for its data (empty: ready)."""
        reasons: list[dict[str, str]] = []
        if not self.started:
            reasons.append({"reason": "starting", "detail": "fan-out not started"})
        for env, feed in sorted(self.feeds.items()):
            reader = feed.reader
            if reader is not None and reader.reset_reason:
                reasons.append({"reason": "store_reset", "env": env, "detail": reader.reset_reason})
            elif feed.stale:
                reasons.append(
                    {
                        "reason": "stale",
                        "env": env,
                        "detail": f"change log unread for over {self.stale_after:.0f}s",
                    }
                )
            elif reader is None or not reader.running:
                reasons.append({"reason": "reader_stopped", "env": env, "detail": "no reader"})
            elif reader.error:
                reasons.append({"reason": "reader_error", "env": env, "detail": reader.error})
        return reasons

    # --- control ------------------------------------------------------------

    def close_all(self, code: int, reason: str) -> None:
        for feed in self.feeds.values():
            feed.close_all(code, reason)

    def end_event_streams(self) -> None:
        """End every open OFREP event stream (the server is exiting; they reconnect)."""
        for feed in self.feeds.values():
            feed.listeners.close_all()

    async def revoke(self, key_id: str) -> None:
        """A key was revoked: close its streams with 4001 (do not retry).

        Keys also "disappear" when Redis comes back empty; closing every stream
        with "do not retry" then would turn a store reset into an outage, so a
        revocation is only honoured while the store's identity is intact.
        """
        with contextlib.suppress(StoreUnavailable):
            epoch = await self.changelog.store_epoch()
            if epoch is None or epoch != self.store_epoch:
                log.error(
                    "ignoring the revocation of key %s: the store lost its identity (reset?)",
                    key_id,
                )
                return
        self.close_key(key_id)

    def close_key(self, key_id: str) -> None:
        """Close every stream of ``key_id`` with 4001."""
        for feed in list(self.feeds.values()):
            for conn in [c for c in feed.conns if c.key_id == key_id]:
                feed.close(conn, CloseCode.UNAUTHORIZED, "key revoked")
            feed.listeners.close_key(key_id)
