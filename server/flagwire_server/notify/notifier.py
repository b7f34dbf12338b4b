"""The notifier: reads events from Redis and POSTs them to webhooks, in the background.

Why it never slows a write: flag and segment writes are not touched at all;
their events are read afterwards from the audit stream the write already
appends to.  Schedule and plan events are handed to :meth:`Notifier.emit`,
which only puts them on a bounded in-memory queue (full: the event is
dropped, counted and logged) that a task appends to Redis.

Why memory stays bounded: the reader takes new entries from Redis only while
fewer than ``max_inflight`` deliveries are in progress in this process, and no
more than there is room for (or one per stream); the rest wait in Redis.  A
receiver that is slow or down holds at most that many deliveries (each waits
for its retry in a sleeping task), and at most ``max_requests`` requests are
open at once (``sender.py``, which reads at most 1 KiB of each answer).

How it reads: one blocking ``XREADGROUP`` over every watched environment, on a
connection of its own (the ``waiter``), so an event is read within
milliseconds and an idle server sends one command a second.  On a Redis
Cluster the environments' streams are in different slots and one read cannot
span them: each environment is then read every ``poll`` seconds.

Exactly once per fleet: the consumer group (``store/webhooks.py``) hands each
entry to one server, which acknowledges it when every delivery of it ended
(delivered, refused, or out of attempts).  A server that dies leaves its
entries pending; another claims them after :attr:`Notifier.reclaim_after`
seconds and delivers them again with the same event id (at least once, then:
receivers dedupe on ``Flagwire-Event-Id``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from flagwire_server.background import stop_requested
from flagwire_server.notify import events, retry
from flagwire_server.notify.events import Event
from flagwire_server.notify.sender import DeliveryPolicy, Sender
from flagwire_server.store.types import NotFound, StoreError
from flagwire_server.store.webhooks import CrossSlotRead, Entry, Source, WebhookStore

__all__ = ["DeliveryPolicy", "Notifier"]

log = logging.getLogger("flagwire.webhooks")

#: Events :meth:`Notifier.emit` holds before they reach Redis; past it they are dropped.
EMIT_QUEUE: Final = 1000
#: Seconds :meth:`Notifier.stop` spends writing the events still queued to Redis.
DRAIN_S: Final = 1.0
#: Longest wait of one blocking read; a newly watched environment joins the next.
_BLOCK_MS: Final = 1000


@dataclass(slots=True)
class _Pending:
    """An entry whose deliveries are in progress; acknowledged when ``left`` reaches 0."""

    env: str
    source: Source
    entry_id: str
    left: int


class Notifier:
    """Delivers this process's share of the fleet's webhook events.

    Args:
        store: webhooks, event streams and delivery logs in Redis.
        owner: this process's instance id (its consumer name in the group).
        policy: timeouts, attempts and backoff.
        on_outcome: called with ``(env, outcome)`` for each attempt's outcome
            (``delivered``, ``retrying``, ``failed``, ``refused``) and each
            dropped event (``dropped``): the metrics.
        poll: seconds between two looks at Redis when nothing came (without a
            ``waiter``, or on a cluster where one blocking read cannot span
            environments).
        max_inflight: deliveries in progress in this process at most.
        max_requests: requests open at once at most.
        rng: the backoff's random source (tests pass their own).
        waiter: the same store on a connection of its own, for a blocking read
            over every watched environment (an event is then read within
            milliseconds, and an idle server sends one command a second).
    """

    def __init__(
        self,
        store: WebhookStore,
        *,
        owner: str,
        policy: DeliveryPolicy | None = None,
        on_outcome: Callable[[str, str], None] | None = None,
        poll: float = 0.25,
        max_inflight: int = 256,
        max_requests: int = 16,
        rng: Callable[[], float] = random.random,
        waiter: WebhookStore | None = None,
    ) -> None:
        self.store = store
        self.waiter = waiter
        self.owner = owner
        self.policy = policy or DeliveryPolicy()
        self.on_outcome = on_outcome
        self.poll = poll
        self.max_inflight = max_inflight
        self.rng = rng
        #: Seconds an entry stays pending before another server delivers it again.
        self.reclaim_after = self.policy.longest_ms / 1000 + 30
        self.sender = Sender(self.policy, max_requests)
        self._room = asyncio.Event()
        self._room.set()
        self._emitted: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue(EMIT_QUEUE)
        self._jobs: set[asyncio.Task[None]] = set()
        self._loops: list[asyncio.Task[None]] = []

    # --- lifecycle --------------------------------------------------------------------

    def start(self) -> None:
        self.sender.start()
        self._loops = [
            asyncio.create_task(self._read_loop(), name="webhooks-read"),
            asyncio.create_task(self._publish_loop(), name="webhooks-publish"),
        ]

    async def stop(self) -> None:
        """Stop reading and cancel deliveries in progress (their entries stay pending).

        Schedule and plan events still queued are written to Redis first, for up
        to :data:`DRAIN_S` seconds, so another server delivers them.
        """
        tasks = [*self._loops, *self._jobs]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._loops = []
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._drain(), DRAIN_S)
        await self.sender.aclose()
        if self.waiter is not None:
            with contextlib.suppress(Exception):
                await self.waiter.redis.aclose()

    @property
    def inflight(self) -> int:
        return len(self._jobs)

    # --- events from the release layer -------------------------------------------------

    def emit(self, env: str, event: dict[str, Any]) -> None:
        """Queue a schedule or plan event for ``env``'s webhooks; never blocks, never raises."""
        try:
            self._emitted.put_nowait((env, event))
        except asyncio.QueueFull:
            self._count(env, "dropped")
            log.warning("webhooks: event queue full, dropped a %s event", event.get("type"))

    async def schedule_finished(self, env: str, record: dict[str, Any]) -> None:
        """The scheduler's ``on_finish``: a ``schedule.executed`` event."""
        self.emit(env, events.schedule_event(record, int(time.time() * 1000)))

    def plan_event(self, plan: dict[str, Any], event: dict[str, Any]) -> None:
        """The release runner's ``on_plan_event``: a ``plan.*`` event."""
        published = events.plan_event(plan, event)
        if published is not None:
            self.emit(str(plan.get("env", "")), published)

    async def _publish_loop(self) -> None:
        while not stop_requested():
            await self._publish(*await self._emitted.get())

    async def _publish(self, env: str, event: dict[str, Any]) -> None:
        try:
            await self.store.publish(env, event)
        except StoreError as exc:
            self._count(env, "dropped")
            log.warning("webhooks: could not store a %s event: %s", event.get("type"), exc)

    async def _drain(self) -> None:
        while not self._emitted.empty():
            await self._publish(*self._emitted.get_nowait())

    # --- reading ------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        last_reclaim = 0.0
        blocking = self.waiter is not None
        while not stop_requested():
            got = 0
            try:
                await self._room.wait()
                reclaim = time.monotonic() - last_reclaim > min(30.0, self.reclaim_after / 2)
                envs = await self.store.envs()
                waited = None
                if blocking and envs and not reclaim:
                    try:
                        waited = await self._wait_any(envs)
                    except CrossSlotRead as exc:  # a cluster: poll each environment
                        blocking = False
                        log.info("webhooks: polling each environment (%s)", exc)
                if waited is None:  # look at each (repairing groups, reclaiming)
                    for env in envs:
                        got += await self._read_env(env, reclaim=reclaim)
                    if reclaim:
                        last_reclaim = time.monotonic()
                else:
                    got = -1  # the blocking read was the wait
            except StoreError as exc:
                log.warning("webhooks: cannot read events: %s", exc)
            except Exception:
                log.exception("webhooks: reader failed")
            if not got:
                await asyncio.sleep(self.poll)

    async def _wait_any(self, envs: list[str]) -> int | None:
        """One blocking read over ``envs`` (None: not possible now; read them one by one)."""
        assert self.waiter is not None
        room = self.max_inflight - len(self._jobs)
        if room <= 0:
            return 0
        # Per stream, two per environment: at most ``room`` in all (or one per stream).
        count = max(1, min(100, room // (2 * len(envs))))
        got = await self.waiter.wait_any(envs, self.owner, count, _BLOCK_MS)
        if got is None:
            return None
        by_env: dict[str, list[Entry]] = {}
        for env, entry in got:
            by_env.setdefault(env, []).append(entry)
        for env, entries in by_env.items():
            await self._dispatch_all(env, entries)
        return len(got)

    async def _read_env(self, env: str, *, reclaim: bool) -> int:
        """One look at ``env``: one ``XREADGROUP`` when nothing happened there."""
        room = self.max_inflight - len(self._jobs)
        if room <= 0:
            return 0
        entries = await self.store.read(env, self.owner, max(1, min(100, room // 2)))
        if reclaim:
            idle_ms = int(self.reclaim_after * 1000)
            entries += await self.store.reclaim(env, self.owner, idle_ms, 100)
        await self._dispatch_all(env, entries)
        return len(entries)

    async def _dispatch_all(self, env: str, entries: list[Entry]) -> None:
        if not entries:
            return
        # Read when there is something to send, so a webhook made a moment ago counts.
        hooks = [h for h in await self.store.list_webhooks(env) if h.get("enabled", True)]
        for entry in entries:
            await self._dispatch(env, entry, hooks)

    async def _dispatch(self, env: str, entry: Entry, hooks: list[dict[str, Any]]) -> None:
        source, entry_id, fields = entry
        parse = events.from_audit if source == "audit" else events.from_published
        event = parse(env, entry_id, fields)
        wanted = [h for h in hooks if event and events.matches(h.get("events", []), event.type)]
        if event is None or not wanted:
            await self.store.ack(env, source, entry_id)
            return
        pending = _Pending(env, source, entry_id, len(wanted))
        for hook in wanted:
            task = asyncio.create_task(self._deliver(hook, event, pending))
            self._jobs.add(task)
            task.add_done_callback(self._job_done)
        if len(self._jobs) >= self.max_inflight:
            self._room.clear()

    def _job_done(self, task: asyncio.Task[None]) -> None:
        self._jobs.discard(task)
        if len(self._jobs) < self.max_inflight:
            self._room.set()

    # --- delivering -----------------------------------------------------------------------

    async def _deliver(self, hook: dict[str, Any], event: Event, pending: _Pending) -> None:
        body = event.body(str(hook["id"]))
        delivery = "dlv_" + event.id[4:16] + str(hook["id"])[3:]
        try:
            for attempt in range(1, self.policy.attempts + 1):
                outcome = await self._attempt(hook, event, body, delivery, attempt)
                if outcome != "retrying":
                    break
                wait = retry.backoff(
                    attempt, base=self.policy.retry_base, cap=self.policy.retry_cap, rng=self.rng
                )
                await asyncio.sleep(wait)
                # Read again: a webhook deleted, disabled or moved meanwhile is obeyed.
                try:
                    hook = await self.store.get(event.env, str(hook["id"]))
                except NotFound:
                    break
                if not hook.get("enabled", True):
                    break
        except asyncio.CancelledError:
            raise  # shutting down: the entry stays pending for another server
        except Exception:
            log.exception("webhooks: delivery of %s to %s failed", event.id, hook.get("id"))
        pending.left -= 1
        if pending.left == 0:
            with contextlib.suppress(StoreError):
                await self.store.ack(pending.env, pending.source, pending.entry_id)

    async def _attempt(
        self, hook: dict[str, Any], event: Event, body: bytes, delivery: str, attempt: int
    ) -> str:
        got = await self.sender.send(
            str(hook["url"]),
            str(hook["secret"]),
            body,
            {
                "Flagwire-Event": event.type,
                "Flagwire-Event-Id": event.id,
                "Flagwire-Delivery": delivery,
                "Flagwire-Delivery-Attempt": str(attempt),
                "Flagwire-Webhook-Id": str(hook["id"]),
            },
        )
        verdict = retry.verdict(got.status)
        if got.refused:
            outcome = "refused"
        elif verdict == "delivered":
            outcome = "delivered"
        elif verdict == "retry" and attempt < self.policy.attempts:
            outcome = "retrying"
        else:
            outcome = "failed"
        self._count(event.env, outcome)
        entry = {
            "delivery": delivery,
            "event_id": event.id,
            "event": event.type,
            "attempt": attempt,
            "at": events.iso_ms(int(time.time() * 1000)),
            "status": got.status,
            "duration_ms": got.duration_ms,
            "response": got.response,
            "error": got.error,
            "outcome": outcome,
            "by": self.owner,
        }
        try:
            await self.store.log(event.env, str(hook["id"]), entry)
        except StoreError as exc:
            log.warning("webhooks: could not log a delivery: %s", exc)
        if outcome != "delivered":
            log.info(
                "webhook %s: %s %s",
                hook["id"],
                event.type,
                outcome,
                extra={"env": event.env, "status": got.status, "error": got.error},
            )
        return outcome

    def _count(self, env: str, outcome: str) -> None:
        if self.on_outcome is not None:
            self.on_outcome(env, outcome)
