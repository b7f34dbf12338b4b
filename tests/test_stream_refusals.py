"""Refused stream handshakes are answers: an HTTP status with a problem body, logged at info,
summarised under a flood (issue 10, item 9).

A real ``flagwire serve`` and real WebSocket handshakes; the log is the server's own output.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections import Counter
from typing import Any

import pytest
import websockets
from websockets.exceptions import InvalidStatus

from flagwire_server.observability.refusals import RefusalLog
from tests.support.server import ServerProcess

pytestmark = pytest.mark.timeout(90)


async def _refused(url: str, headers: dict[str, str]) -> tuple[int, dict[str, str], Any]:
    try:
        async with websockets.connect(url, additional_headers=headers, open_timeout=20):
            pass
    except InvalidStatus as exc:
        r = exc.response
        return r.status_code, dict(r.headers), json.loads(r.body or b"null")
    raise AssertionError("the handshake was accepted")


async def test_a_flood_of_bad_keys_gets_answers_and_a_few_info_lines(server: ServerProcess) -> None:
    n = 200
    sem = asyncio.Semaphore(20)

    async def one(i: int) -> tuple[int, dict[str, str], Any]:
        async with sem:
            return await _refused(server.ws_url, {"Authorization": f"Bearer fw_sdk_bogus{i}"})

    t0 = time.monotonic()
    answers = await asyncio.gather(*(one(i) for i in range(n)))
    elapsed = time.monotonic() - t0
    statuses = Counter(status for status, _, _ in answers)
    # 401 until this address has failed too often in a minute, then 429
    assert set(statuses) <= {401, 429}, statuses
    assert statuses[401] >= 1
    assert statuses[429] >= 1
    for status, headers, body in answers:
        assert headers["content-type"] == "application/problem+json"
        assert body["status"] == status
        assert body["detail"]
        assert body["code"] in ("unauthorized", "rate_limited")
        if status == 429:
            assert int(headers["retry-after"]) > 0

    await asyncio.sleep(1.5)  # the summary of the last second is written when it ends
    records = server.log_records()
    errors = [r for r in records if r["level"] in ("error", "critical")]
    assert errors == []
    refusals = [r for r in records if r["logger"] == "flagwire.stream" and "refused" in r["msg"]]
    assert all(r["level"] == "info" for r in refusals)
    # every refusal is accounted for, in far fewer lines than refusals
    assert sum(int(r.get("count", 1)) for r in refusals) == n
    # at most 10 single lines and one summary per second of the flood
    assert len(refusals) <= 11 * math.ceil(elapsed + 1), [r["msg"] for r in refusals]
    assert len(refusals) < n / 2, f"{len(refusals)} lines for {n} refusals in {elapsed:.1f}s"
    summaries = [r for r in refusals if int(r.get("count", 1)) > 1]
    assert summaries, "no summary line under the flood"
    assert "401" in summaries[0]["msg"] or "429" in summaries[0]["msg"]
    # uvicorn's and websockets' own line per refusal are not repeated
    per_refusal = [r for r in records if "connection rejected" in r["msg"]]
    assert per_refusal == []


async def test_an_admin_key_without_env_is_told_why(server: ServerProcess) -> None:
    status, headers, body = await _refused(
        server.ws_url, {"Authorization": f"Bearer {server.admin_key}"}
    )
    assert status == 400
    assert headers["content-type"] == "application/problem+json"
    assert body["code"] == "env_required"
    assert "?env=NAME" in body["detail"]
    await asyncio.sleep(0.2)
    records = server.log_records()
    assert not [r for r in records if r["level"] == "error"]
    line = [r for r in records if r["logger"] == "flagwire.stream" and "refused" in r["msg"]]
    assert len(line) == 1
    assert line[0]["level"] == "info"
    assert line[0]["status"] == 400


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Lines:
    def __init__(self) -> None:
        self.lines: list[tuple[str, dict[str, Any]]] = []

    def info(self, msg: str, *args: Any, extra: dict[str, Any]) -> None:
        self.lines.append((msg % args, extra))


def test_refusal_log_is_each_line_while_few_then_a_count_per_window() -> None:
    clock, out = Clock(), Lines()
    rl = RefusalLog(out, each=3, window=1.0, clock=clock)  # type: ignore[arg-type]
    for i in range(10):
        rl.record(401, "unauthorized", f"10.0.0.{i}", "unknown or revoked key")
    rl.record(429, "rate_limited", "10.0.0.1", "too many")
    assert len(out.lines) == 3
    assert all(extra["count"] == 1 for _, extra in out.lines)
    clock.now += 1.0
    rl.flush()
    msg, extra = out.lines[-1]
    assert extra["count"] == 8
    assert extra["statuses"] == {"401": 7, "429": 1}
    assert "8" in msg
    assert "401" in msg
    rl.flush()  # nothing held: no line
    assert len(out.lines) == 4
    # a new window logs its first refusals in full again
    clock.now += 5.0
    rl.record(403, "forbidden", "10.0.0.9", "wrong env")
    assert out.lines[-1][1]["status"] == 403
    assert sum(extra["count"] for _, extra in out.lines) == 12


def test_refusal_log_flushes_a_held_window_when_the_next_one_starts() -> None:
    clock, out = Clock(), Lines()
    rl = RefusalLog(out, each=1, window=1.0, clock=clock)  # type: ignore[arg-type]
    rl.record(401, "unauthorized", "a", "x")
    rl.record(401, "unauthorized", "a", "x")
    clock.now += 2.0
    rl.record(401, "unauthorized", "a", "x")
    assert [extra["count"] for _, extra in out.lines] == [1, 1, 1]


def test_monotonic_default_clock() -> None:
    rl = RefusalLog(Lines(), each=1)  # type: ignore[arg-type]
    assert rl.window_started <= time.monotonic()
