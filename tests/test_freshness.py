"""Coalesced store-version reads: each caller gets a read that started after it asked."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from flagwire_server.api.freshness import VersionReads


async def test_callers_share_reads_that_started_after_them() -> None:
    version = 0
    started: list[int] = []
    gate = asyncio.Event()
    reached = asyncio.Event()

    async def read(env: str) -> dict[str, Any]:
        seen = version  # what the store holds when the read reaches it
        started.append(seen)
        reached.set()
        await gate.wait()
        gate.clear()
        return {"version": seen}

    reads = VersionReads()
    first = asyncio.create_task(reads.read("prod", read))
    await reached.wait()  # the first read has reached the store
    version = 1  # a write answered while the first read is in flight
    late = [asyncio.create_task(reads.read("prod", read)) for _ in range(50)]
    await asyncio.sleep(0)
    gate.set()
    assert (await first)["version"] == 0
    await asyncio.sleep(0)
    gate.set()
    answers = await asyncio.gather(*late)
    # The 50 late callers shared one new read, which saw the write.
    assert started == [0, 1]
    assert {a["version"] for a in answers} == {1}
    assert reads._running == {}


async def test_errors_reach_every_caller_and_the_next_read_starts_fresh() -> None:
    calls = 0

    async def read(env: str) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)
        if calls == 1:
            raise LookupError(env)
        return {"version": 7}

    reads = VersionReads()
    results = await asyncio.gather(
        reads.read("gone", read), reads.read("gone", read), return_exceptions=True
    )
    assert isinstance(results[0], LookupError)
    assert results[1] == {"version": 7}
    assert await reads.read("gone", read) == {"version": 7}
    with pytest.raises(LookupError):
        await VersionReads().read("x", _fail)


async def _fail(env: str) -> dict[str, Any]:
    raise LookupError(env)
