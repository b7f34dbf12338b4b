"""Offline mode, persistence files, lifecycle and evaluation edge cases — no server."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import orjson
import pytest

from flagwire import (
    ClientClosedError,
    ClientError,
    ClientStatus,
    FlagClient,
    InitializationError,
    Reason,
    Snapshot,
)
from flagwire._connection import stream_url
from flagwire._persistence import load_snapshot, save_snapshot
from tests.support.builders import flag

CTX = {"key": "u1"}


async def test_offline_simple_values(tmp_path: Path) -> None:
    path = tmp_path / "flags.json"
    path.write_bytes(
        orjson.dumps(
            {"new-checkout": True, "theme": "dark", "limit": 5, "cfg": {"a": 1}, "list": [1, 2]}
        )
    )
    async with FlagClient(offline_path=path) as flags:
        assert flags.status is ClientStatus.READY
        assert flags.start_status is ClientStatus.READY
        assert flags.bool_variation("new-checkout", CTX, False) is True
        assert flags.string_variation("theme", CTX, "") == "dark"
        assert flags.number_variation("limit", CTX, 0) == 5
        assert flags.json_variation("cfg", CTX, {}) == {"a": 1}
        assert flags.json_variation("list", CTX, []) == [1, 2]
        assert flags.connection_attempts == 0
    assert asyncio.current_task() is not None
    leftovers = [t for t in asyncio.all_tasks() if t.get_name().startswith("flagwire")]
    assert leftovers == []


async def test_offline_snapshot_document(tmp_path: Path) -> None:
    path = tmp_path / "snap.json"
    save_snapshot(path, Snapshot({"a": flag("a", on=False)}, {}, 9, "e1"), "prod")
    async with FlagClient(offline_path=path) as flags:
        assert flags.version == 9
        assert flags.variation_detail("a", CTX, True).reason == Reason.OFF
    # the bare {"flags": ..., "segments": ...} form too
    path.write_bytes(orjson.dumps({"flags": {"b": flag("b")}, "segments": {}}))
    async with FlagClient(offline_path=path) as flags:
        assert flags.bool_variation("b", CTX, False) is True


async def test_offline_values_in_code() -> None:
    async with FlagClient(offline_values={"x": "y"}) as flags:
        assert flags.string_variation("x", CTX, "") == "y"


async def test_bad_offline_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text("{nope")
    with pytest.raises(ClientError, match="cannot read the offline flag file"):
        await FlagClient(offline_path=path).start()
    with pytest.raises(ClientError, match="cannot read"):
        await FlagClient(offline_path=tmp_path / "missing.json").start()


def test_persistence_is_atomic_and_round_trips(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "sub" / "flags.json"
    assert load_snapshot(path) is None
    snap = Snapshot({"a": flag("a", version=3)}, {"s": {"key": "s", "included": ["u1"]}}, 7, "ep")
    save_snapshot(path, snap, "prod")
    loaded = load_snapshot(path)
    assert loaded is not None
    again, env, saved_at = loaded
    assert (again.version, again.epoch, env) == (7, "ep", "prod")
    assert dict(again.flags) == dict(snap.flags)
    assert dict(again.segments) == dict(snap.segments)
    assert saved_at > 0
    assert [p.name for p in path.parent.iterdir()] == ["flags.json"]  # no temp files left

    # a failure before the rename leaves the old file whole and no temp file behind
    def broken_replace(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="No space"):
        save_snapshot(path, Snapshot({}, {}, 8, "ep"))
    monkeypatch.undo()
    survivor = load_snapshot(path)
    assert survivor is not None
    assert survivor[0].version == 7
    assert [p.name for p in path.parent.iterdir()] == ["flags.json"]


async def test_corrupt_persisted_file_is_ignored_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "flags.json"
    path.write_text("garbage")
    flags = FlagClient("http://127.0.0.1:9", "k", persist_path=path, start_timeout=0.2)
    assert await flags.start() is ClientStatus.INITIALIZING
    await flags.close()
    assert "ignoring the persisted snapshot" in caplog.text


async def test_unreachable_server_defaults_then_fail_on_timeout() -> None:
    flags = FlagClient("http://127.0.0.1:9", "k", start_timeout=0.3)
    assert await flags.start() is ClientStatus.INITIALIZING
    assert "no data from the server" in flags.status_message
    detail = flags.variation_detail("a", CTX, "dflt")
    assert (detail.value, detail.error_kind) == ("dflt", "CLIENT_NOT_READY")
    assert flags.all_flags(CTX) == {}
    assert flags.data_age is None
    assert flags.connection_attempts >= 1
    await flags.close()
    with pytest.raises(ClientClosedError):
        await flags.start()
    with pytest.raises(ClientClosedError):
        await flags.wait_for_status()

    failing = FlagClient("http://127.0.0.1:9", "k", start_timeout=0.3, fail_on_timeout=True)
    with pytest.raises(InitializationError, match=r"no data from the server within 0\.3s"):
        await failing.start()
    assert failing.status is ClientStatus.CLOSED


async def test_waiters_are_released_on_close() -> None:
    flags = FlagClient("http://127.0.0.1:9", "k", start_timeout=0.05)
    await flags.start()
    waiter = asyncio.create_task(flags.wait_for_status(ClientStatus.READY))
    closed = asyncio.create_task(flags.wait_for_status(ClientStatus.CLOSED))
    await asyncio.sleep(0.01)
    await flags.close()
    with pytest.raises(ClientClosedError):
        await waiter
    assert await closed is ClientStatus.CLOSED
    with pytest.raises(TimeoutError):
        await FlagClient(offline_values={}).wait_for_status(timeout=0.01)


def test_constructor_and_url_checks() -> None:
    with pytest.raises(ClientError, match="needs a url"):
        FlagClient()
    with pytest.raises(ClientError, match="http"):
        FlagClient("ftp://x", "k")
    assert stream_url("https://flags.example.com") == "wss://flags.example.com/api/v1/stream"
    assert stream_url("http://h:8080/base/", {"since": "3", "epoch": "e"}) == (
        "ws://h:8080/base/api/v1/stream?since=3&epoch=e"
    )
    assert stream_url("ws://h/api/v1/stream") == "ws://h/api/v1/stream"


def test_evaluation_never_raises_on_odd_input() -> None:
    flags = FlagClient(offline_values={})
    flags._install(Snapshot({"a": flag("a")}, {}, 1, "e"), [])
    weird: list[object] = [None, 42, {"key": 5}, {}, object()]
    for ctx in weird:
        assert flags.bool_variation("a", ctx, False) is False  # type: ignore[arg-type]
        assert flags.variation_detail("a", ctx, 1).reason == Reason.ERROR  # type: ignore[arg-type]
