"""FlagClient against a scripted server: exact control of what the server says.

Covers what a well-behaved server rarely does: gaps, rewinds, malformed
frames, refusals, a dead connection.  The real-server tests are in
``test_client_server.py``.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
from collections.abc import Callable
from typing import Any

import pytest

from flagwire import (
    AuthenticationError,
    BackoffSettings,
    ClientStatus,
    ErrorKind,
    FlagClient,
    Reason,
    RefusedError,
)
from tests.support.builders import flag
from tests.support.polling import poll
from tests.support.proxy import FaultProxy
from tests.support.scripted import ScriptedConn, ScriptedServer

CTX = {"key": "u1"}
FAST = BackoffSettings(initial=0.05, cap=0.2, going_away=0.1)


async def until(predicate: Callable[[], object], within: float = 5.0) -> None:
    """:func:`tests.support.polling.poll` with this module's deadline."""
    await poll(predicate, within, "condition", 0.01)


def client(url: str, **kw: Any) -> FlagClient:
    kw.setdefault("backoff", FAST)
    kw.setdefault("start_timeout", 3.0)
    return FlagClient(url, "sdk-test-key", **kw)


async def serve_v1(conn: ScriptedConn) -> None:
    await conn.hello(1)
    await conn.snapshot(1, {"a": flag("a", version=1)})


async def test_ready_sends_key_and_acks() -> None:
    async with ScriptedServer(serve_v1) as server:
        flags = client(server.url)
        assert flags.bool_variation("a", CTX, False) is False
        detail = flags.variation_detail("a", CTX, False)
        assert detail.reason == Reason.ERROR
        assert detail.error_kind == ErrorKind.CLIENT_NOT_READY
        async with flags:
            assert flags.start_status is ClientStatus.READY
            assert flags.status is ClientStatus.READY
            assert flags.data_age == 0.0
            assert flags.bool_variation("a", CTX, False) is True
            conn = server.connections[0]
            assert conn.path == "/api/v1/stream"
            assert conn.headers["Authorization"] == "Bearer sdk-test-key"
            assert conn.query == {}
            assert (await conn.expect("ack"))["version"] == 1
        assert flags.status is ClientStatus.CLOSED
        # after close the last data still answers
        assert flags.bool_variation("a", CTX, False) is True


async def test_live_patch_changes_and_watch() -> None:
    go = asyncio.Event()

    async def script(conn: ScriptedConn) -> None:
        await serve_v1(conn)
        await go.wait()
        await conn.patch(flag("a", on=False, version=2), 2)

    async with ScriptedServer(script) as server, client(server.url) as flags:
        seen: list[Any] = []
        flags.on_change(seen.append, key="a")
        stream = flags.changes()
        watch = flags.watch("a", CTX, default="d")
        assert await anext(watch) is True
        go.set()
        change = await asyncio.wait_for(anext(stream), 5)
        assert (change.key, change.old_version, change.new_version) == ("a", 1, 2)
        assert await asyncio.wait_for(anext(watch), 5) is False
        assert seen == [change]
        assert flags.bool_variation("a", CTX, True) is False
        assert (await server.connections[0].expect("ack"))["version"] == 1
        assert (await server.connections[0].expect("ack"))["version"] == 2
    # iterators end when the client closes
    assert [c async for c in stream] == []


async def test_gap_sends_resync_and_takes_the_snapshot() -> None:
    async def script(conn: ScriptedConn) -> None:
        await serve_v1(conn)
        await conn.patch(flag("a", on=False, version=3), 3)  # version 2 never came
        await conn.expect("resync")
        await conn.snapshot(3, {"a": flag("a", on=False, version=3)})

    async with ScriptedServer(script) as server, client(server.url) as flags:
        await until(lambda: flags.version == 3, 5)
        assert flags.bool_variation("a", CTX, True) is False
        assert any(m["type"] == "resync" for m in server.connections[0].received)


@pytest.mark.parametrize(
    "garbage",
    [
        "{not json",
        b"\x00\x01binary",
        '{"type": "patch", "kind": "flag", "key": "a", "data": {"key": "b"}, "version": 2}',
        '{"type": "mystery"}',
        '{"type": "hello", "protocol": 1, "env": "prod", "epoch": "e1", "version": 1}',
        '{"type": "ack", "version": 2}',
        "[1, 2, 3]",
    ],
)
async def test_malformed_message_reconnects_for_a_snapshot(
    garbage: str | bytes, caplog: pytest.LogCaptureFixture
) -> None:
    async def script(conn: ScriptedConn) -> None:
        if len(server.connections) == 1:
            await serve_v1(conn)
            await conn.expect("ack")
            await conn.send(garbage)
        else:
            await conn.hello(2)
            await conn.snapshot(2, {"a": flag("a", on=False, version=2)})

    caplog.set_level(logging.ERROR, "flagwire")
    async with ScriptedServer(script) as server, client(server.url) as flags:
        second = await server.wait_connections(2)
        assert second.query == {}  # no since: a fresh snapshot, not a resume
        await until(lambda: flags.version == 2, 5)
        assert flags.bool_variation("a", CTX, True) is False
        assert flags.status is ClientStatus.READY
        assert server.connections[0].ws.close_code == 4002
    assert "malformed message" in caplog.text


async def test_reconnect_resumes_with_since_and_epoch() -> None:
    async def script(conn: ScriptedConn) -> None:
        if len(server.connections) == 1:
            await serve_v1(conn)
            await conn.expect("ack")
            await conn.close(1011, "boom")
        else:
            await conn.hello(2)
            await conn.patch(flag("a", on=False, version=2), 2)

    async with ScriptedServer(script) as server, client(server.url) as flags:
        second = await server.wait_connections(2)
        assert second.query == {"since": "1", "epoch": "e1"}
        await flags.wait_for_status(ClientStatus.READY, timeout=5)
        await until(lambda: flags.version == 2, 5)


async def test_close_4000_reconnects_without_since() -> None:
    async def script(conn: ScriptedConn) -> None:
        if len(server.connections) == 1:
            await serve_v1(conn)
            await conn.expect("ack")
            await conn.close(4000, "fell behind")
        else:
            await serve_v1(conn)

    async with ScriptedServer(script) as server, client(server.url):
        second = await server.wait_connections(2)
        assert second.query == {}


async def test_rewound_store_is_accepted_and_counted() -> None:
    async def script(conn: ScriptedConn) -> None:
        if len(server.connections) == 1:
            await conn.hello(5)
            await conn.snapshot(5, {"a": flag("a", version=4), "b": flag("b", version=1)})
            await conn.expect("ack")
            await conn.close(1012, "restart")
        else:
            await conn.hello(1, epoch="e2")
            await conn.snapshot(1, {"a": flag("a", on=False, version=1)}, epoch="e2")

    async with ScriptedServer(script) as server, client(server.url) as flags:
        assert flags.version == 5
        second = await server.wait_connections(2)
        assert second.query == {"since": "5", "epoch": "e1"}
        await until(lambda: flags.rewinds != 0, 5)
        assert flags.version == 1
        assert flags.snapshot is not None
        assert flags.snapshot.epoch == "e2"
        assert flags.bool_variation("b", CTX, False) is False


@pytest.mark.parametrize("how", ["http401", "close4001"])
async def test_refused_key_is_unauthorized_and_not_retried(how: str) -> None:
    async def script(conn: ScriptedConn) -> None:
        await conn.close(4001, "key revoked")

    async with ScriptedServer(script, reject=401 if how == "http401" else None) as server:
        flags = client(server.url)
        status = await flags.start()
        assert status is ClientStatus.UNAUTHORIZED
        assert flags.status is ClientStatus.UNAUTHORIZED
        msg = flags.status_message
        assert ("401" in msg and "unknown or revoked SDK key" in msg) or "4001" in msg, msg
        await asyncio.sleep(0.5)  # several backoff periods
        assert server.handshakes == 1
        assert flags.connection_attempts == 1
        assert flags.bool_variation("a", CTX, False) is False
        await flags.close()


async def test_server_error_status_is_retried() -> None:
    async with ScriptedServer(serve_v1, reject=503) as server:
        flags = client(server.url, start_timeout=0.5)
        assert await flags.start() is ClientStatus.INITIALIZING
        assert "503" in flags.status_message
        assert server.handshakes >= 2
        await flags.close()


async def test_dead_connection_detected_through_a_paused_proxy() -> None:
    async with ScriptedServer(serve_v1) as server, FaultProxy("127.0.0.1", server.port) as proxy:
        flags = client(proxy.url, heartbeat_timeout=0.6, open_timeout=0.5)
        async with flags:
            assert flags.status is ClientStatus.READY
            proxy.pause()
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            await flags.wait_for_status(ClientStatus.STALE, timeout=3)
            assert loop.time() - t0 <= 0.6 + 0.3
            assert flags.bool_variation("a", CTX, False) is True  # cached
            age = flags.data_age
            assert age is not None
            assert age >= 0
            proxy.resume()
            await flags.wait_for_status(ClientStatus.READY, timeout=5)
            assert len(server.connections) >= 2


async def test_acks_are_coalesced_in_a_burst() -> None:
    """600 changes in a burst: one ack per interval, the last one for the last version."""

    async def script(conn: ScriptedConn) -> None:
        await serve_v1(conn)
        for v in range(2, 602):
            await conn.patch(flag("a", on=v % 2 == 0, version=v), v)

    async with ScriptedServer(script) as server, client(server.url) as flags:
        await until(lambda: flags.version == 601, 5)
        conn = server.connections[0]
        await until(lambda: bool(conn.received) and conn.received[-1].get("version") == 601, 2)
        acks = [m["version"] for m in conn.received if m["type"] == "ack"]
        assert acks == sorted(acks)
        assert len(acks) < 60  # far below the server's 50 messages/s with a burst of 250
        await asyncio.sleep(0.2)
        assert [m["version"] for m in conn.received if m["type"] == "ack"] == acks


ENV_REQUIRED = "an admin key or console session must pass ?env=NAME"


@pytest.mark.parametrize(
    ("status", "code", "detail"),
    [
        (400, "env_required", ENV_REQUIRED),
        (404, "not_found", "environment 'prod' does not exist"),
    ],
)
async def test_a_refusal_retrying_cannot_fix_stops_with_the_servers_reason(
    status: int, code: str, detail: str
) -> None:
    async with ScriptedServer(
        serve_v1, reject=status, reject_code=code, reject_detail=detail
    ) as server:
        flags = client(server.url, start_timeout=5.0)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        assert await flags.start() is ClientStatus.UNAUTHORIZED
        assert loop.time() - t0 < 1.0  # at once, not after the start timeout
        assert detail in flags.status_message
        assert str(status) in flags.status_message
        refusal = flags.refusal
        assert isinstance(refusal, RefusedError)
        assert not isinstance(refusal, AuthenticationError)
        assert (refusal.status, refusal.code, refusal.detail) == (status, code, detail)
        with pytest.raises(RefusedError, match=re.escape(detail)):
            await flags.wait_for_status(ClientStatus.READY, timeout=1)
        await asyncio.sleep(0.5)  # several backoff periods
        assert server.handshakes == 1
        await flags.close()

        failing = client(server.url, fail_on_timeout=True)
        with pytest.raises(RefusedError) as info:
            await failing.start()
        assert info.value.status == status
        assert info.value.detail == detail
        assert failing.status is ClientStatus.CLOSED


async def test_a_refused_key_is_an_authentication_error_with_the_reason() -> None:
    async with ScriptedServer(serve_v1, reject=401, reject_code="unauthorized") as server:
        flags = client(server.url, fail_on_timeout=True)
        with pytest.raises(AuthenticationError, match="unknown or revoked SDK key") as info:
            await flags.start()
        assert isinstance(info.value, RefusedError)
        assert (info.value.status, info.value.code) == (401, "unauthorized")


@pytest.mark.parametrize(("status", "retry_after"), [(503, 1), (429, 2)])
async def test_a_shedding_server_is_retried_when_its_retry_after_says(
    status: int, retry_after: int
) -> None:
    async with ScriptedServer(
        serve_v1,
        reject=status,
        reject_detail="the flag store is unavailable; retry",
        reject_headers={"Retry-After": str(retry_after)},
    ) as server:
        flags = client(server.url, start_timeout=0.3)  # FAST: the cap alone would be 0.2 s
        assert await flags.start() is ClientStatus.INITIALIZING
        assert str(status) in flags.status_message
        assert "the flag store is unavailable" in flags.status_message
        await until(lambda: server.handshakes >= 3, within=4 * retry_after + 2)
        gaps = [b - a for a, b in itertools.pairwise(server.handshake_times)]
        assert all(retry_after <= g <= retry_after + max(1.0, retry_after / 2) + 0.3 for g in gaps)
        assert flags.refusal is None
        await flags.close()


@pytest.mark.parametrize(
    ("code", "reason"),
    [(1013, "store unreachable; retry-after=1"), (1001, "moving; retry-after=1")],
)
async def test_a_close_reason_with_a_retry_hint_is_honoured(code: int, reason: str) -> None:
    async def script(conn: ScriptedConn) -> None:
        await conn.hello(1)
        await conn.snapshot(1, {"a": flag("a", version=1)})
        await conn.close(code, reason)

    async with ScriptedServer(script) as server:
        flags = client(server.url)
        await flags.start()
        await server.wait_connections(2, within=5)
        t = server.handshake_times
        assert 1.0 <= t[1] - t[0] <= 2.3
        await flags.close()


async def test_close_1012_service_restart_reconnects_soon() -> None:
    async def script(conn: ScriptedConn) -> None:
        await serve_v1(conn)
        if len(conn.received) == 0 and conn.query.get("since") is None:
            await conn.close(1012, "service restart")

    async with ScriptedServer(script) as server:
        flags = client(server.url)
        async with flags:
            await server.wait_connections(2, within=3)
            await flags.wait_for_status(ClientStatus.READY, timeout=3)
            t = server.handshake_times
            assert t[1] - t[0] <= 0.1 + 0.2  # FAST.going_away, not an error's backoff
