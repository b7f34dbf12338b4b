"""Outgoing webhooks in Redis: their records, the events to deliver, the delivery logs.

Per environment (one hash tag, so the commands work on a cluster):

* ``P:{env}:webhooks``            HASH id -> webhook (JSON, with its signing secret);
* ``P:{env}:webhooks:events``     STREAM of schedule and plan events (``MAXLEN ~``);
* ``P:{env}:webhooks:log:<id>``   LIST of the webhook's last delivery attempts, newest first;

and ``P:sys:webhooks:envs``, a SET naming the environments to watch.

Why a consumer group: every server of a fleet runs the notifier, and each
event must be delivered by exactly one of them.  Flag and segment changes are
read from the environment's audit stream (``P:{env}:audit``, written by
``write.lua`` in the same script as the change, with the documents before and
after), and schedule and plan events from ``P:{env}:webhooks:events``; both
streams carry the group ``webhooks``, created (at ``$``: only what happens
next) when the environment's first webhook is.  ``XREADGROUP`` hands each
entry to one server; the entry is acknowledged once its deliveries ended, and
an entry left pending by a server that died is claimed by another
(``XAUTOCLAIM``) after the idle time the notifier names.

Deleting the environment deletes all of it, the groups with their streams.
"""

from __future__ import annotations

import secrets
from typing import Any, Final, Literal

import orjson
import redis.asyncio as aioredis
import redis.exceptions

from flagwire_server.store.keyspace import Keyspace
from flagwire_server.store.types import NotFound, _loads, _translated, as_str

__all__ = [
    "EVENTS_MAXLEN",
    "GROUP",
    "LOG_KEEP",
    "CrossSlotRead",
    "Entry",
    "Source",
    "WebhookStore",
]

#: The consumer group on both streams.
GROUP: Final = "webhooks"
#: Schedule and plan events kept in an environment's stream (delivered or not).
EVENTS_MAXLEN: Final = 10_000
#: Delivery attempts kept per webhook.
LOG_KEEP: Final = 50

#: Which stream an entry came from: the audit stream (flag and segment changes)
#: or the webhook events stream (schedule executions and plan events).
Source = Literal["audit", "events"]
#: ``(source, entry id, fields)`` of one stream entry, the fields as text.
Entry = tuple[Source, str, dict[str, str]]

_UPDATE: Final = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"""


class CrossSlotRead(Exception):
    """One read cannot span the environments' streams: they are in different
    Redis Cluster slots (read each environment on its own instead)."""


class WebhookStore:
    """Webhooks, their event streams and their delivery logs, under one key prefix."""

    def __init__(self, redis: aioredis.Redis, keyspace: Keyspace) -> None:
        self.redis = redis
        self.keyspace = keyspace
        self._update = redis.register_script(_UPDATE)

    @staticmethod
    def new_id() -> str:
        return f"wh_{secrets.token_hex(6)}"

    def _streams(self, env: str) -> dict[Source, str]:
        return {"audit": self.keyspace.audit(env), "events": self.keyspace.webhook_events(env)}

    # --- records ---------------------------------------------------------------------

    @_translated
    async def create(self, env: str, record: dict[str, Any]) -> None:
        """Store a new webhook (``record`` has ``id``) and start watching ``env``.

        The first webhook of an environment moves the groups to the streams' end:
        what happened while it had none (the groups stayed where its last webhook
        left them) is no one's to receive.
        """
        await self.ensure_groups(env)
        if not await self.redis.exists(self.keyspace.webhooks(env)):
            for stream in self._streams(env).values():
                await self.redis.xgroup_setid(stream, GROUP, "$")
        # Two slots on a cluster, so two commands; the record first (see forget).
        await self.redis.hset(self.keyspace.webhooks(env), record["id"], orjson.dumps(record))
        await self.redis.sadd(self.keyspace.webhook_envs, env)

    @_translated
    async def get(self, env: str, webhook_id: str) -> dict[str, Any]:
        """One webhook, secret included (callers strip it before answering).

        Raises:
            NotFound: no such webhook in ``env``.
        """
        record = _loads(await self.redis.hget(self.keyspace.webhooks(env), webhook_id))
        if record is None:
            raise NotFound(f"webhook {webhook_id[:40]!r} does not exist in {env!r}")
        return record

    @_translated
    async def list_webhooks(self, env: str) -> list[dict[str, Any]]:
        """Every webhook of ``env`` (secrets included), oldest first."""
        raw = await self.redis.hgetall(self.keyspace.webhooks(env))
        out = [r for r in (_loads(v) for v in raw.values()) if r is not None]
        return sorted(out, key=lambda r: (str(r.get("created_at", "")), str(r.get("id"))))

    @_translated
    async def update(self, env: str, record: dict[str, Any]) -> None:
        """Replace a webhook that exists.

        Raises:
            NotFound: it was deleted meanwhile.
        """
        done = await self._update(
            keys=[self.keyspace.webhooks(env)], args=[record["id"], orjson.dumps(record)]
        )
        if not int(done):
            raise NotFound(f"webhook {record['id']!r} does not exist in {env!r}")

    @_translated
    async def delete(self, env: str, webhook_id: str) -> dict[str, Any]:
        """Delete a webhook and its delivery log; returns what it was.

        The environment's last webhook takes the environment off the read list.

        Raises:
            NotFound: no such webhook.
        """
        ks = self.keyspace
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hget(ks.webhooks(env), webhook_id)
            pipe.hdel(ks.webhooks(env), webhook_id)
            pipe.delete(ks.webhook_log(env, webhook_id))
            raw, _deleted, _log = await pipe.execute()
        record = _loads(raw)
        if record is None:
            raise NotFound(f"webhook {webhook_id[:40]!r} does not exist in {env!r}")
        await self.forget(env)
        return record

    # --- what the notifier reads -----------------------------------------------------

    @_translated
    async def envs(self) -> list[str]:
        """The environments to watch (some may have lost their last webhook)."""
        return sorted(as_str(e) for e in await self.redis.smembers(self.keyspace.webhook_envs))

    @_translated
    async def forget(self, env: str) -> bool:
        """Stop watching ``env`` if it has no webhook; a webhook made meanwhile keeps it.

        Not one script: the set and the environment's keys are in different
        cluster slots.  :meth:`create` stores the record before it adds the
        environment, and this looks again after removing it, so either this
        sees the new record and puts the environment back, or the creation's
        add comes after this removal.
        """
        ks = self.keyspace
        if await self.redis.exists(ks.webhooks(env)):
            return False
        await self.redis.srem(ks.webhook_envs, env)
        if await self.redis.exists(ks.webhooks(env)):
            await self.redis.sadd(ks.webhook_envs, env)
            return False
        return True

    @_translated
    async def ensure_groups(self, env: str) -> None:
        """Create the consumer group on both streams, at their end, where it is missing."""
        for stream in self._streams(env).values():
            try:
                await self.redis.xgroup_create(stream, GROUP, id="$", mkstream=True)
            except redis.exceptions.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    @_translated
    async def publish(self, env: str, event: dict[str, Any]) -> bool:
        """Append a schedule or plan event for ``env``'s webhooks (False: it has none)."""
        if not await self.redis.exists(self.keyspace.webhooks(env)):
            return False
        await self.redis.xadd(
            self.keyspace.webhook_events(env),
            {"event": orjson.dumps(event)},
            maxlen=EVENTS_MAXLEN,
            approximate=True,
        )
        return True

    @_translated
    async def read(self, env: str, consumer: str, count: int) -> list[Entry]:
        """New entries of both streams handed to ``consumer`` (none waits: no ``BLOCK``).

        ``count`` is per stream.

        A stream whose group is gone (Redis restarted empty, the audit stream was
        deleted by hand) gets it again, at its end, and this read returns nothing;
        an environment that is gone (deleted with its webhooks) is no longer read.
        """
        streams = self._streams(env)
        try:
            resp: Any = await self.redis.xreadgroup(
                GROUP, consumer, {name: ">" for name in streams.values()}, count=count
            )
        except redis.exceptions.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            if await self.redis.exists(self.keyspace.webhooks(env)):
                await self.ensure_groups(env)
            else:  # the environment was deleted, with its webhooks and streams
                await self.forget(env)
            return []
        return _entries(streams, resp)

    @_translated
    async def wait_any(
        self, envs: list[str], consumer: str, count: int, block_ms: int
    ) -> list[tuple[str, Entry]] | None:
        """New entries of every environment in ``envs``, waiting up to ``block_ms`` for one.

        One ``XREADGROUP ... BLOCK`` over both streams of each environment, on
        this store's client (give it a connection of its own whose timeout is
        longer than ``block_ms``).  None when that cannot work: a group is missing
        (a :meth:`read` per environment repairs it).  ``count`` is per stream.

        Raises:
            CrossSlotRead: the streams are in different cluster slots (read the
                environments one by one instead).
        """
        names: dict[str, tuple[str, Source]] = {}
        for env in envs:
            for source, stream in self._streams(env).items():
                names[stream] = (env, source)
        try:
            resp: Any = await self.redis.xreadgroup(
                GROUP, consumer, dict.fromkeys(names, ">"), count=count, block=block_ms
            )
        except redis.exceptions.RedisClusterException as exc:
            raise CrossSlotRead(f"one read over many environments: {exc}") from None
        except redis.exceptions.ResponseError as exc:
            if "CROSSSLOT" in str(exc):
                raise CrossSlotRead(f"one read over many environments: {exc}") from None
            if "NOGROUP" not in str(exc):
                raise
            return None
        out: list[tuple[str, Entry]] = []
        for stream_name, items in resp or ():
            env, source = names[as_str(stream_name)]
            out.extend(
                (env, e) for e in _entries({source: as_str(stream_name)}, [[stream_name, items]])
            )
        return out

    @_translated
    async def reclaim(self, env: str, consumer: str, min_idle_ms: int, count: int) -> list[Entry]:
        """Entries another consumer read but never acknowledged for ``min_idle_ms``."""
        out: list[Entry] = []
        for source, stream in self._streams(env).items():
            try:
                resp: Any = await self.redis.xautoclaim(
                    stream, GROUP, consumer, min_idle_ms, "0-0", count=count
                )
            except redis.exceptions.ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                continue
            claimed = resp[1] if resp else []
            out.extend(_entries({source: stream}, [[stream, claimed]]))
        return out

    @_translated
    async def ack(self, env: str, source: Source, entry_id: str) -> None:
        await self.redis.xack(self._streams(env)[source], GROUP, entry_id)

    @_translated
    async def pending(self, env: str) -> int:
        """Entries read by some server and not yet acknowledged, on both streams."""
        total = 0
        for stream in self._streams(env).values():
            try:
                info: Any = await self.redis.xpending(stream, GROUP)
            except redis.exceptions.ResponseError:
                continue
            total += int(info.get("pending", 0) if isinstance(info, dict) else 0)
        return total

    # --- delivery log ---------------------------------------------------------------------

    @_translated
    async def log(self, env: str, webhook_id: str, attempt: dict[str, Any]) -> None:
        """Record one delivery attempt; the log keeps the last :data:`LOG_KEEP`.

        Written only while the webhook exists, so a delivery that ends after its
        webhook was deleted leaves no log behind.
        """
        ks = self.keyspace
        if not await self.redis.hexists(ks.webhooks(env), webhook_id):
            return
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.lpush(ks.webhook_log(env, webhook_id), orjson.dumps(attempt))
            pipe.ltrim(ks.webhook_log(env, webhook_id), 0, LOG_KEEP - 1)
            await pipe.execute()

    @_translated
    async def deliveries(self, env: str, webhook_id: str, limit: int) -> list[dict[str, Any]]:
        """The last ``limit`` attempts, newest first."""
        raw = await self.redis.lrange(self.keyspace.webhook_log(env, webhook_id), 0, limit - 1)
        return [r for r in (_loads(v) for v in raw) if r is not None]


def _entries(streams: dict[Source, str], resp: Any) -> list[Entry]:
    by_name = {name: source for source, name in streams.items()}
    out: list[Entry] = []
    for stream_name, items in resp or ():
        source = by_name.get(as_str(stream_name))
        if source is None:
            continue
        for entry_id, fields in items or ():
            if fields is None:  # trimmed away while pending
                continue
            out.append(
                (source, as_str(entry_id), {as_str(k): as_str(v) for k, v in fields.items()})
            )
    return out
