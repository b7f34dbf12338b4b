"""The change-log reader of one environment: the I/O loop that feeds an :class:`EnvFeed`.

It blocks reading the environment's change log (through
:class:`~flagwire_server.store.changelog.ChangeLog`, on a Redis connection
of its own) from the version the mirror has, applies each change in order,
and about once a second compares the store's identity with what the mirror
was loaded from.  What it finds (``docs/storage.md``, "When Redis goes
away"):

* Redis unreachable: keep serving the mirror, retry with :class:`RetryDelay`,
  resume from the same version; :attr:`ChangeReader.last_ok` stops moving,
  which the fan-out's watchdog turns into 1013 closes.
* a gap the log no longer covers, or an undecodable entry: reload the
  environment and send every stream a fresh snapshot;
* the environment deleted: close its streams (4000) and forget the feed;
  recreated (new epoch): reload and close its streams (4000) so they resync;
* the store's identity gone or changed, or the version gone backwards: a
  *store reset*: the mirror is kept and served, nothing from the reset store
  is streamed, and ``/readyz`` reports ``store_reset``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Final

from flagwire.core.errors import ProtocolError
from flagwire.core.protocol import CloseCode
from flagwire_server.background import stop_requested
from flagwire_server.store.types import StoreUnavailable
from flagwire_server.stream.backoff import RetryDelay

if TYPE_CHECKING:
    from flagwire_server.observability.metrics import Metrics
    from flagwire_server.store.changelog import Change, ChangeLog
    from flagwire_server.store.types import EnvState
    from flagwire_server.stream.feed import EnvFeed

__all__ = ["CHECK_EVERY_S", "READ_BLOCK_MS", "ChangeReader"]

log = logging.getLogger("flagwire.fanout")

#: Blocking read time; also how often an idle reader checks the store's identity.
READ_BLOCK_MS: Final = 1000
CHECK_EVERY_S: Final = 1.0


class ChangeReader:
    """Reads one environment's change log into its feed.

    Args:
        feed: the feed to apply changes to.
        changelog: opens the reader's change log (a connection of its own).
        load_env: reads the whole environment from the store.
        store_epoch: the store identity this process started with.
        on_gone: the environment was deleted (the fan-out forgets the feed).
        metrics: the process's metrics.
    """

    def __init__(
        self,
        feed: EnvFeed,
        *,
        changelog: Callable[[], ChangeLog],
        load_env: Callable[[str], Awaitable[EnvState]],
        store_epoch: Callable[[], str | None],
        on_gone: Callable[[EnvFeed], None],
        metrics: Metrics,
    ) -> None:
        self.feed = feed
        self.env = feed.env
        self._open = changelog
        self._load_env = load_env
        self._store_epoch = store_epoch
        self._on_gone = on_gone
        self.metrics = metrics
        #: When the reader last heard from Redis (monotonic); see the fan-out's watchdog.
        self.last_ok = time.monotonic()
        self.error: str | None = None
        self.reset_reason: str | None = None
        self.task: asyncio.Task[None] | None = None
        self._reset_logged = 0.0

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
        changelog = self._open()
        delay = RetryDelay()
        next_check = 0.0
        try:
            while not stop_requested():
                try:
                    if time.monotonic() >= next_check or self.reset_reason:
                        if await self._check(changelog) == "gone" or stop_requested():
                            return
                        next_check = time.monotonic() + CHECK_EVERY_S
                        self.last_ok = time.monotonic()
                    if self.reset_reason:
                        await asyncio.sleep(CHECK_EVERY_S)
                        continue
                    changes = await changelog.read(
                        self.env, self.feed.version, count=1000, block_ms=READ_BLOCK_MS
                    )
                    if self.error is not None:
                        log.warning("change reader recovered", extra={"env": self.env})
                        self.error = None
                    self.last_ok = time.monotonic()
                    delay.reset()
                    await self._apply(changelog, changes)
                except asyncio.CancelledError:
                    raise
                except StoreUnavailable as exc:
                    self.metrics.redis_errors.labels("xread").inc()
                    if self.error is None:
                        log.warning(
                            "change reader lost Redis; serving cached state",
                            extra={"env": self.env, "error": str(exc)},
                        )
                    self.error = str(exc)
                    next_check = 0.0
                    await asyncio.sleep(delay.next())
                except Exception as exc:  # a bug must not kill the reader silently
                    log.exception("change reader failed", extra={"env": self.env})
                    self.error = f"{type(exc).__name__}: {exc}"
                    next_check = 0.0
                    await asyncio.sleep(delay.next())
        finally:
            with contextlib.suppress(Exception):
                await changelog.aclose()

    async def _apply(self, changelog: ChangeLog, changes: list[Change]) -> None:
        feed = self.feed
        for change in changes:
            if change.version <= feed.version:
                continue
            if change.version != feed.version + 1:
                log.warning(
                    "change log gap; reloading",
                    extra={"env": self.env, "have": feed.version, "next": change.version},
                )
                await self._reload(changelog, "gap")
                return
            try:
                feed.apply(change)
            except ProtocolError as exc:
                log.error(
                    "undecodable change log entry; reloading",
                    extra={"env": self.env, "version": change.version, "error": str(exc)},
                )
                await self._reload(changelog, "corrupt")
                return

    async def _reload(self, changelog: ChangeLog, reason: str) -> None:
        state = await self._load_env(self.env)
        feed = self.feed
        if state.epoch != feed.epoch or int(state.version) < feed.version:
            await self._check(changelog)  # a reset or a recreated env, handled there
            return
        feed.load(state)
        feed.resnapshot_all(reason)

    async def _check(self, changelog: ChangeLog) -> str:
        """Compare the store's identity with ours; returns "ok", "reset" or "gone"."""
        feed = self.feed
        ident = await changelog.identity(self.env)
        if ident.store_epoch is None or ident.store_epoch != self._store_epoch():
            return self._store_reset(
                "the store lost its identity (Redis restarted empty?)"
                if ident.store_epoch is None
                else "the store's identity changed (a different Redis or a restore?)"
            )
        if ident.env_epoch is None:
            log.warning("environment deleted; closing its streams", extra={"env": self.env})
            feed.close_all(CloseCode.RESYNC, "environment deleted")
            self._on_gone(feed)
            return "gone"
        if ident.env_epoch != feed.epoch:
            log.warning("environment recreated; clients resync", extra={"env": self.env})
            feed.load(await self._load_env(self.env))
            feed.close_all(CloseCode.RESYNC, "environment recreated")
            self._clear_reset()
            return "ok"
        if ident.env_version < feed.version:
            return self._store_reset(
                f"the environment's version went back from {feed.version} to {ident.env_version}"
            )
        self._clear_reset()
        if ident.env_version > feed.version:
            first = await changelog.first_after(self.env, feed.version)
            if first != feed.version + 1:
                log.warning(
                    "change log no longer covers our version; reloading",
                    extra={"env": self.env, "have": feed.version, "store": ident.env_version},
                )
                await self._reload(changelog, "gap")
        return "ok"

    def _store_reset(self, why: str) -> str:
        now = time.monotonic()
        if self.reset_reason is None or now - self._reset_logged > 60:
            log.error(
                "STORE RESET DETECTED: %s; serving the last known flags (version %d), "
                "not the store's; /readyz is failing until the store is restored or the "
                "server is restarted",
                why,
                self.feed.version,
                extra={"env": self.env, "version": self.feed.version},
            )
            self._reset_logged = now
        self.reset_reason = why
        self.metrics.store_reset.labels(self.env).set(1)
        return "reset"

    def _clear_reset(self) -> None:
        if self.reset_reason is not None:
            log.warning("store identity is back; resuming", extra={"env": self.env})
            self.reset_reason = None
            self.metrics.store_reset.labels(self.env).set(0)
