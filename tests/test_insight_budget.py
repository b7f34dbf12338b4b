"""The process's budgets for summaries: at most MAX_LOOP_SHARE of each second of the loop,
and at most MAX_PENDING_SKETCH_BYTES of sketches held between flushes.

The server's own Insight, feed and connection objects with no socket; a clock the
test moves for the loop budget, and a real Redis for the flush the sketch cap triggers.  What the
budget prevents, the loop held for seconds and every stream closed, is shown by
``python -m bench.insight --sockets`` (bench/results/insight.json).
"""

from __future__ import annotations

import time

import redis.asyncio as aioredis

from flagwire.core.protocol import Identify, Summary
from flagwire.core.reports import VariationStats
from flagwire.core.sketch import DENSE_BYTES, Registers
from flagwire_server.config import Settings
from flagwire_server.observability.metrics import Metrics
from flagwire_server.store.insight import DAY_MS, InsightStore
from flagwire_server.store.keyspace import Keyspace
from flagwire_server.stream.conn import Conn
from flagwire_server.stream.feed import EnvFeed
from flagwire_server.stream.reports import LOOP_WINDOW, MAX_LOOP_SHARE, Insight
from tests.support.polling import poll


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_summaries_past_the_loop_share_are_dropped_unread_until_the_second_ends() -> None:
    metrics = Metrics()
    feed = EnvFeed("e", settings=Settings(), metrics=metrics, on_acks=lambda: None)
    feed.mirror.load("x", 1, {"f": {"key": "f"}}, {})
    clock = Clock()
    store = InsightStore(aioredis.Redis(), Keyspace("unused"), retention_days=30)  # not called
    insight = Insight(
        store,
        metrics,
        lambda: {"e": feed},
        instance_id="t",
        flush_interval=5,
        max_series=10,
        clock=clock,
    )
    conn = Conn("k", None)
    insight.receive(feed, conn, Identify("test", "1", "app"), 10)
    summary = Summary(0, 1, {"f": {0: VariationStats({"FALLTHROUGH": 3})}})

    def count(result: str) -> float:
        value = metrics.registry.get_sample_value(
            "flagwire_insight_summaries_total", {"result": result}
        )
        return value or 0.0

    step = MAX_LOOP_SHARE * LOOP_WINDOW * 0.6  # each summary takes 60% of the budget
    assert insight.admit()
    clock.now += step
    insight.receive(feed, conn, summary, 100)
    assert insight.admit()  # 60% spent: one more may start
    clock.now += step
    insight.drop("invalid")  # a bad one costs its decode too
    assert not insight.admit()  # 120% spent
    assert not insight.admit()
    assert count("overload") == 2
    assert count("accepted") == 1
    assert count("invalid") == 1
    assert insight._pending["e"]["f"].variations[0].reasons == {"FALLTHROUGH": 3}

    clock.now += LOOP_WINDOW  # the next second
    assert insight.admit()
    clock.now += 0.001
    insight.receive(feed, conn, summary, 100)
    assert count("accepted") == 2
    assert insight._pending["e"]["f"].variations[0].reasons == {"FALLTHROUGH": 6}


async def test_pending_sketches_are_capped_for_all_flags_and_the_cap_flushes_at_once(
    redis_url: str, redis_prefix: str
) -> None:
    metrics = Metrics()
    feed = EnvFeed("e", settings=Settings(), metrics=metrics, on_acks=lambda: None)
    feed.mirror.load("x", 1, {k: {"key": k} for k in ("f", "g")}, {})
    redis = aioredis.Redis.from_url(redis_url)
    ks = Keyspace(redis_prefix)
    insight = Insight(
        InsightStore(redis, ks, retention_days=30),
        metrics,
        lambda: {"e": feed},
        instance_id="t",
        flush_interval=60,  # the test ends long before: only the cap can flush
        max_series=10,
        max_pending_sketch_bytes=3 * DENSE_BYTES,
    )
    conn = Conn("k", None)
    insight.receive(feed, conn, Identify("test", "1", "app"), 10)
    await insight.start()
    try:
        # Three dense sketches of 3,000 contexts each and a sparse one of 50, over two
        # flags, no await between: the third reaches the cap; the fourth is not kept.
        for i in range(4):
            regs = Registers()
            for u in range(3_000 if i < 3 else 50):
                regs.add_key(f"{i}-{u}")
            key = "fg"[i % 2]
            summary = Summary(0, 1, {key: {0: VariationStats({"FALLTHROUGH": 1}, regs.sketch())}})
            insight.receive(feed, conn, summary, 100)
        assert insight._sketch_bytes == 3 * DENSE_BYTES
        dropped = metrics.insight_sketches_dropped._value.get()
        assert dropped == 1

        async def counted(key: str) -> int:
            day = int(time.time() * 1000) // DAY_MS
            return int(await redis.pfcount(ks.insight("e", f"u:{key}:{day}:0")))

        await poll(lambda: counted("f"), within=10, what="the cap's flush, not the 60 s one")
        assert abs(await counted("f") - 6_000) <= 0.03 * 6_000
        assert abs(await counted("g") - 3_000) <= 0.03 * 3_000
        assert insight._sketch_bytes == 0
        assert not await redis.exists(ks.insight("e", "merge"))  # the scratch key is gone
    finally:
        await insight.stop()
        async for k in redis.scan_iter(match=f"{redis_prefix}:*"):
            await redis.delete(k)
        await redis.aclose()
