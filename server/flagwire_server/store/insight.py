"""Fleet-insight aggregates in Redis: evaluations, distinct contexts, events, SDK inventory.

Layout (all under the environment's hash tag, so an environment's insight
lives in its slot and ``delete_env``'s pattern removes it; ``docs/insight.md``):

* ``P:{env}:ins:m:<flag>:<day>`` HASH ``<minute of day>:<variation>`` → evaluations,
  kept :data:`MINUTE_DAYS` days after the day ends;
* ``P:{env}:ins:h:<flag>:<day>`` HASH ``<hour>:<variation>`` → evaluations,
  ``r:<variation>:<reason>`` → evaluations, ``e:<variation>:<event>:n``/``:s``/``:q`` →
  event count / value sum / sum of squared values; kept the retention (default 30 days)
  after the day ends;
* ``P:{env}:ins:u:<flag>:<day>:<variation>`` HyperLogLog of the contexts, merged from client
  sketches (same TTL; ``P:{env}:ins:merge`` is the merge script's scratch key);
* ``P:{env}:ins:last`` HASH flag → last evaluated (ms); ``P:{env}:ins:apps:<flag>`` HASH
  application → last evaluated (ms), at most :data:`MAX_APPS_PER_FLAG` applications, the
  others counted in ``P:{env}:ins:appsx:<flag>`` (HyperLogLog of their names);
* ``P:{env}:ins:clients`` HASH stream id → JSON of the SDK and its stream,
  ``P:{env}:ins:seen`` ZSET stream id → last report (ms); entries not refreshed for
  :data:`CLIENT_TTL_MS` are removed when the inventory is read;
* ``P:{env}:ins:watched`` SET of the flags ``track`` attributes events to.

Why this memory is bounded per flag: minute buckets exist for at most
``MINUTE_DAYS + 1`` days (1,440 fields per variation per day), hourly ones for
the retention (24 per variation per day), and a HyperLogLog is at most 12 KiB
whatever the number of contexts; the applications of a flag are at most
:data:`MAX_APPS_PER_FLAG` fields, whatever clients call themselves.  Writes
are one pipeline per environment per flush (``stream/reports.py`` aggregates in
memory between flushes), so the Redis cost grows with flags, not with clients.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

import orjson
import redis.asyncio as aioredis
import redis.exceptions

from flagwire.core.sketch import Registers
from flagwire_server.store.hll import DENSE_HEADER, redis_hll
from flagwire_server.store.keyspace import Keyspace
from flagwire_server.store.types import StoreUnavailable, _script, as_str

__all__ = [
    "CLIENT_TTL_MS",
    "DAY_MS",
    "MAX_APPS_PER_FLAG",
    "MINUTE_DAYS",
    "FlagBatch",
    "InsightStore",
    "VariationBatch",
]

DAY_MS: Final = 86_400_000
#: Days after its day ends that a minute bucket is kept (finer steps over older windows
#: are answered from hourly buckets).
MINUTE_DAYS: Final = 2
#: Applications listed per flag; more are counted (``apps_over_cap``), not listed.  A client
#: names its application itself, so without a cap any client could grow a flag's list.
MAX_APPS_PER_FLAG: Final = 100
#: An SDK stream not reported for this long has gone from the inventory.
CLIENT_TTL_MS: Final = 60_000


@dataclass(slots=True)
class VariationBatch:
    """One variation of one flag since the last flush of this process."""

    minutes: dict[int, int] = field(default_factory=dict)  #: minute (epoch ms // 60000) → n
    reasons: dict[str, int] = field(default_factory=dict)
    #: Sparse sketches merged as they come; dense ones as they came, for Redis to merge.
    registers: Registers | None = None
    dense: list[bytes] = field(default_factory=list)
    #: name → [count, sum, sum of squares]
    events: dict[str, list[float]] = field(default_factory=dict)


@dataclass(slots=True)
class FlagBatch:
    """One flag since the last flush: its variations, the applications, the last evaluation."""

    variations: dict[int, VariationBatch] = field(default_factory=dict)
    apps: dict[str, int] = field(default_factory=dict)  #: application → last ms
    last_ms: int = 0


class InsightStore:
    """Writes and reads the fleet-insight keys of every environment.

    Args:
        redis: the shared client.
        keyspace: where the keys are.
        retention_days: how long hourly aggregates are kept.
    """

    def __init__(self, redis: aioredis.Redis, keyspace: Keyspace, retention_days: int) -> None:
        self.redis = redis
        self.ks = keyspace
        self.retention_days = retention_days
        self._apps = redis.register_script(_script("insight_apps"))
        self._merge = redis.register_script(_script("insight_merge"))

    def _key(self, env: str, suffix: str) -> str:
        return self.ks.insight(env, suffix)

    # --- writing ----------------------------------------------------------------------

    async def write(self, env: str, flags: dict[str, FlagBatch]) -> None:
        """Add one flush's aggregates of ``env`` (one pipeline, no transaction needed:
        every command is an increment, so a retried or partial flush only undercounts).

        Raises:
            StoreUnavailable: Redis did not answer.
        """
        pipe = self.redis.pipeline(transaction=False)
        expiries: dict[str, int] = {}
        for flag, batch in flags.items():
            for index, vb in batch.variations.items():
                days: set[int] = set()
                for minute, n in vb.minutes.items():
                    ms = minute * 60_000
                    day = ms // DAY_MS
                    days.add(day)
                    of_day = (ms % DAY_MS) // 60_000
                    mkey = self._key(env, f"m:{flag}:{day}")
                    hkey = self._key(env, f"h:{flag}:{day}")
                    pipe.hincrby(mkey, f"{of_day}:{index}", n)
                    pipe.hincrby(hkey, f"{of_day // 60}:{index}", n)
                    expiries[mkey] = (day + 1 + MINUTE_DAYS) * DAY_MS
                    expiries[hkey] = (day + 1 + self.retention_days) * DAY_MS
                # Reasons, contexts and events count on the day of the flush's last minute.
                last_day = max(days) if days else batch.last_ms // DAY_MS
                hkey = self._key(env, f"h:{flag}:{last_day}")
                expiries[hkey] = (last_day + 1 + self.retention_days) * DAY_MS
                for reason, n in vb.reasons.items():
                    pipe.hincrby(hkey, f"r:{index}:{reason}", n)
                for name, (count, total, squares) in vb.events.items():
                    pipe.hincrby(hkey, f"e:{index}:{name}:n", int(count))
                    if total:
                        pipe.hincrbyfloat(hkey, f"e:{index}:{name}:s", total)
                    if squares:
                        pipe.hincrbyfloat(hkey, f"e:{index}:{name}:q", squares)
                hlls = [DENSE_HEADER + d for d in vb.dense]
                if vb.registers is not None and len(vb.registers):
                    hlls.append(redis_hll(vb.registers.sketch()))
                if hlls:
                    ukey = self._key(env, f"u:{flag}:{last_day}:{index}")
                    scratch = self._key(env, "merge")
                    await self._merge(keys=[ukey, scratch], args=hlls, client=pipe)  # queued
                    expiries[ukey] = (last_day + 1 + self.retention_days) * DAY_MS
            if batch.last_ms:
                pipe.hset(self._key(env, "last"), flag, batch.last_ms)
            if batch.apps:
                args: list[str | int] = [
                    MAX_APPS_PER_FLAG,
                    batch.last_ms + self.retention_days * DAY_MS,
                ]
                for app, ms in batch.apps.items():
                    args += [app, ms]
                keys = [self._key(env, f"apps:{flag}"), self._key(env, f"appsx:{flag}")]
                await self._apps(keys=keys, args=args, client=pipe)  # queued, not run
        for key, at in expiries.items():
            pipe.pexpireat(key, at)
        await self._run(pipe)

    async def report_clients(self, env: str, clients: dict[str, dict[str, Any]]) -> None:
        """Refresh the inventory entries of this process's streams of ``env``."""
        if not clients:
            return
        now = int(time.time() * 1000)
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(
            self._key(env, "clients"), mapping={k: orjson.dumps(v) for k, v in clients.items()}
        )
        pipe.zadd(self._key(env, "seen"), dict.fromkeys(clients, now))
        await self._run(pipe)

    async def forget_clients(self, env: str, ids: Iterable[str]) -> None:
        ids = list(ids)
        if not ids:
            return
        pipe = self.redis.pipeline(transaction=False)
        pipe.hdel(self._key(env, "clients"), *ids)
        pipe.zrem(self._key(env, "seen"), *ids)
        await self._run(pipe)

    async def watch(self, env: str, flag: str) -> bool:
        """Add ``flag`` to the watched set; False if it was there already (a release
        plan's event guards watch their flag, and unwatch it only if they added it)."""
        return bool(await self._call(self.redis.sadd(self._key(env, "watched"), flag)))

    async def unwatch(self, env: str, flag: str) -> None:
        await self._call(self.redis.srem(self._key(env, "watched"), flag))

    async def set_watched(self, env: str, flags: Iterable[str]) -> None:
        key = self._key(env, "watched")
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(key)
        flags = sorted(set(flags))
        if flags:
            pipe.sadd(key, *flags)
        await self._run(pipe)

    # --- reading ----------------------------------------------------------------------

    async def watched(self, env: str) -> list[str]:
        members = await self._call(self.redis.smembers(self._key(env, "watched")))
        return sorted(as_str(m) for m in members)

    async def clients(self, env: str) -> list[dict[str, Any]]:
        """The environment's SDK streams reported in the last :data:`CLIENT_TTL_MS`."""
        now = int(time.time() * 1000)
        gone = await self._call(
            self.redis.zrangebyscore(self._key(env, "seen"), "-inf", now - CLIENT_TTL_MS)
        )
        if gone:
            await self.forget_clients(env, [as_str(g) for g in gone])
        raw = await self._call(self.redis.hgetall(self._key(env, "clients")))
        out = []
        for k, v in raw.items():
            entry = orjson.loads(v)
            entry["id"] = as_str(k)
            out.append(entry)
        out.sort(key=lambda e: (e.get("app", ""), e.get("instance", ""), e["id"]))
        return out

    async def last_evaluated(self, env: str) -> dict[str, int]:
        raw = await self._call(self.redis.hgetall(self._key(env, "last")))
        return {as_str(k): int(v) for k, v in raw.items()}

    async def apps(self, env: str, flag: str) -> dict[str, int]:
        """The applications listed for ``flag`` (at most :data:`MAX_APPS_PER_FLAG`)."""
        raw = await self._call(self.redis.hgetall(self._key(env, f"apps:{flag}")))
        return {as_str(k): int(v) for k, v in raw.items()}

    async def apps_over_cap(self, env: str, flag: str) -> int:
        """Distinct applications of ``flag`` not listed for the cap (an estimate)."""
        return int(await self._call(self.redis.pfcount(self._key(env, f"appsx:{flag}"))))

    async def series(
        self, env: str, flag: str, start_ms: int, end_ms: int, step_s: int
    ) -> dict[int, list[int]]:
        """Evaluations per variation in buckets of ``step_s`` from ``start_ms`` (``end`` excluded).

        Minute buckets while they are kept and the step is under an hour, hourly
        ones otherwise (a step under an hour over hourly data puts each hour's
        count in the bucket where the hour starts).
        """
        now = int(time.time() * 1000)
        fine = step_s < 3600 and start_ms >= (now // DAY_MS - MINUTE_DAYS) * DAY_MS
        unit = 60_000 if fine else 3_600_000
        n = max(1, -(-(end_ms - start_ms) // (step_s * 1000)))
        out: dict[int, list[int]] = {}
        for day in range(start_ms // DAY_MS, (end_ms - 1) // DAY_MS + 1):
            raw = await self._call(
                self.redis.hgetall(self._key(env, f"{'m' if fine else 'h'}:{flag}:{day}"))
            )
            for f, v in raw.items():
                name = as_str(f)
                if name.startswith(("r:", "e:")):
                    continue
                slot, _, index = name.partition(":")
                at = day * DAY_MS + int(slot) * unit
                if not start_ms <= at < end_ms:
                    continue
                row = out.setdefault(int(index), [0] * n)
                row[(at - start_ms) // (step_s * 1000)] += int(v)
        return out

    async def totals(
        self, env: str, flag: str, start_ms: int, end_ms: int
    ) -> dict[int, dict[str, Any]]:
        """Per variation over the days of the window: reasons, events and distinct contexts."""
        days = range(start_ms // DAY_MS, (end_ms - 1) // DAY_MS + 1)
        out: dict[int, dict[str, Any]] = {}

        def entry(index: int) -> dict[str, Any]:
            return out.setdefault(index, {"reasons": {}, "events": {}, "contexts": 0})

        for day in days:
            raw = await self._call(self.redis.hgetall(self._key(env, f"h:{flag}:{day}")))
            for f, v in raw.items():
                name = as_str(f)
                if name.startswith("r:"):
                    _, index, reason = name.split(":", 2)
                    r = entry(int(index))["reasons"]
                    r[reason] = r.get(reason, 0) + int(v)
                elif name.startswith("e:"):
                    _, index, rest = name.split(":", 2)
                    event, _, what = rest.rpartition(":")
                    ev = entry(int(index))["events"].setdefault(event, {"count": 0, "sum": 0.0})
                    if what == "n":
                        ev["count"] += int(v)
                    elif what == "s":
                        ev["sum"] += float(v)
        for variation in list(out):
            keys = [self._key(env, f"u:{flag}:{day}:{variation}") for day in days]
            out[variation]["contexts"] = int(await self._call(self.redis.pfcount(*keys)))
        # Variations seen only in HyperLogLogs (no reasons recorded) are not reported.
        return out

    async def counts_since(self, env: str, flag: str, day: int) -> dict[str, dict[str, Any]]:
        """Running totals per variation from ``day`` (a day number) to today.

        ``{"<variation>": {"n": evaluations, "e": {event: count}, "s": {event: sum},
        "q": {event: sum of squares}}}``: every field
        only grows until it expires, so two reads subtracted are what happened in
        between (release-plan guards read one at a stage's start and one per check).
        """
        today = int(time.time() * 1000) // DAY_MS
        pipe = self.redis.pipeline(transaction=False)
        for d in range(day, max(day, today) + 1):
            pipe.hgetall(self._key(env, f"h:{flag}:{d}"))
        out: dict[str, dict[str, Any]] = {}
        for raw in await self._run(pipe):
            for f, v in raw.items():
                name = as_str(f)
                if name.startswith("r:"):
                    _, index, _reason = name.split(":", 2)
                    entry = out.setdefault(index, {"n": 0, "e": {}})
                    entry["n"] += int(v)
                elif name.startswith("e:"):
                    _, index, rest = name.split(":", 2)
                    event, _, what = rest.rpartition(":")
                    entry = out.setdefault(index, {"n": 0, "e": {}})
                    if what == "n":
                        entry["e"][event] = entry["e"].get(event, 0) + int(v)
                    elif what in ("s", "q"):
                        part = entry.setdefault(what, {})
                        part[event] = part.get(event, 0.0) + float(v)
        return out

    async def variations_since(self, env: str, flag: str, since_ms: int) -> set[int]:
        """Variations with evaluations since ``since_ms`` (hourly data, whole hours)."""
        now = int(time.time() * 1000)
        served: set[int] = set()
        for day in range(since_ms // DAY_MS, now // DAY_MS + 1):
            raw = await self._call(self.redis.hgetall(self._key(env, f"h:{flag}:{day}")))
            for f, v in raw.items():
                name = as_str(f)
                if name.startswith(("r:", "e:")) or not int(v):
                    continue
                slot, _, index = name.partition(":")
                if day * DAY_MS + (int(slot) + 1) * 3_600_000 > since_ms:
                    served.add(int(index))
        return served

    # --- plumbing ---------------------------------------------------------------------

    async def _run(self, pipe: Any) -> list[Any]:
        try:
            result: list[Any] = await pipe.execute()
            return result
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            raise StoreUnavailable(str(exc)) from exc

    async def _call(self, awaitable: Any) -> Any:
        try:
            return await awaitable
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            raise StoreUnavailable(str(exc)) from exc
