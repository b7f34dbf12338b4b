"""The per-environment mirror, sans-I/O: what a change sends and what a new stream gets.

No socket, no Redis: frames are decoded back to protocol messages and compared.
"""

from __future__ import annotations

from typing import Any

import pytest

from flagwire.core.errors import ProtocolError
from flagwire.core.protocol import Delete, Hello, Patch, SnapshotMessage, decode, encode
from flagwire_server.stream.backoff import RetryDelay
from flagwire_server.stream.frames import frame_of, payload_of
from flagwire_server.stream.mirror import Mirror
from tests.support.builders import flag, segment


def _mirror(ring: int = 10, max_buffer: int = 4096, version: int = 3) -> Mirror[str]:
    m: Mirror[str] = Mirror("prod", ring_size=ring, heartbeat=15.0, max_buffer=max_buffer)
    m.load("ep1", version, {"a": flag("a")}, {"s": segment("s")})
    return m


def _patch(version: int, key: str = "a", **fields: Any) -> bytes:
    return encode(Patch(kind="flag", key=key, data=flag(key, **fields), version=version))


def _msgs(frames: list[bytes]) -> list[Any]:
    return [decode(payload_of(f)) for f in frames]


def test_new_stream_gets_hello_then_snapshot_of_current_version() -> None:
    m = _mirror()
    g = m.attach("c1")
    hello, snap = _msgs(g.frames)
    assert g.kind == "snapshot"
    assert g.version == 3
    assert hello == Hello(env="prod", epoch="ep1", version=3, heartbeat=15.0)
    assert isinstance(snap, SnapshotMessage)
    assert (snap.version, snap.epoch, set(snap.flags), set(snap.segments)) == (
        3,
        "ep1",
        {"a"},
        {"s"},
    )
    assert m.conns == {"c1"}


def test_apply_returns_the_frame_of_the_message_bytes_unchanged() -> None:
    m = _mirror()
    message = _patch(4, "b")
    frame = m.apply(4, message)
    assert frame == frame_of(message)
    assert payload_of(frame) == message
    assert m.version == 4
    assert "b" in m.flags


def test_delete_removes_and_segments_are_kept_apart() -> None:
    m = _mirror()
    m.apply(4, encode(Delete(kind="flag", key="a", version=4)))
    m.apply(5, encode(Patch(kind="segment", key="t", data=segment("t"), version=5)))
    assert m.flags == {}
    assert set(m.segments) == {"s", "t"}


def test_a_change_is_in_the_snapshot_or_live_never_both() -> None:
    m = _mirror()
    before = m.attach("early")
    m.apply(4, _patch(4, "b"))
    after = m.attach("late")
    assert "b" not in _msgs(before.frames)[1].flags
    assert "b" in _msgs(after.frames)[1].flags
    assert after.version == 4
    # The live frame goes to every attached stream, including the late one.
    assert m.conns == {"early", "late"}


def test_resume_within_the_ring_gets_only_the_missed_changes() -> None:
    m = _mirror()
    for v in (4, 5, 6):
        m.apply(v, _patch(v, f"k{v}"))
    g = m.attach("c", since=4, epoch="ep1")
    assert g.kind == "resume"
    hello, *rest = _msgs(g.frames)
    assert isinstance(hello, Hello)
    assert [msg.version for msg in rest] == [5, 6]
    assert m.attach("d", since=6, epoch="ep1").frames[1:] == []


@pytest.mark.parametrize(
    ("since", "epoch"),
    [(4, "other"), (2, "ep1"), (9, "ep1"), (-1, "ep1"), (4, None)],
)
def test_resume_outside_the_ring_or_epoch_gets_a_snapshot(since: int, epoch: str | None) -> None:
    m = _mirror()
    for v in (4, 5, 6):
        m.apply(v, _patch(v, f"k{v}"))
    # since=2: the ring starts at 4 (loaded at 3), so 3 is missing.
    g = m.attach("c", since=since, epoch=epoch)
    assert g.kind == "snapshot"
    assert isinstance(_msgs(g.frames)[1], SnapshotMessage)


def test_ring_is_bounded_and_coverage_follows_it() -> None:
    m = _mirror(ring=3)
    for v in range(4, 10):
        m.apply(v, _patch(v))
    assert [v for v, _f in m.ring] == [7, 8, 9]
    assert m.covers(6)
    assert not m.covers(5)
    assert [msg.version for msg in _msgs(list(m.missed(7)))] == [8, 9]


def test_load_empties_the_ring() -> None:
    m = _mirror()
    m.apply(4, _patch(4))
    m.load("ep1", 10, {}, {})
    assert not m.ring
    assert m.covers(10)
    assert not m.covers(9)


@pytest.mark.parametrize(
    "message",
    [
        encode(Hello(env="prod", epoch="ep1", version=4, heartbeat=1.0)),
        b"not json",
        # Claims another version than its log entry.
        encode(Patch(kind="flag", key="x", data=flag("x"), version=7)),
    ],
)
def test_a_bad_entry_raises_and_changes_nothing(message: bytes) -> None:
    m = _mirror()
    hello, snap = m.frames()
    with pytest.raises(ProtocolError):
        m.apply(4, message)
    assert m.version == 3
    assert set(m.flags) == {"a"}
    assert not m.ring
    assert m.frames() == (hello, snap)


def test_frames_are_built_once_per_version() -> None:
    m = _mirror()
    first = m.frames()
    assert m.frames()[1] is first[1]
    m.apply(4, _patch(4, "b"))
    assert m.frames()[1] is not first[1]


def test_a_big_snapshot_raises_the_slow_client_limit() -> None:
    m = _mirror(max_buffer=4096)
    m.load("ep1", 1, {f"f{i}": flag(f"f{i}", description="x" * 500) for i in range(40)}, {})
    snap = m.snapshot_frame()
    assert len(snap) > 4096
    assert m.limit == 2 * len(snap)


def test_detach() -> None:
    m = _mirror()
    m.attach("c")
    assert m.detach("c")
    assert not m.detach("c")
    assert m.conns == set()


def test_retry_delay_is_exponential_with_equal_jitter() -> None:
    lo = RetryDelay(first=0.1, cap=0.4, rng=lambda: 0.0)
    hi = RetryDelay(first=0.1, cap=0.4, rng=lambda: 0.999999)
    assert [round(lo.next(), 3) for _ in range(4)] == [0.05, 0.1, 0.2, 0.2]
    assert [round(hi.next(), 3) for _ in range(4)] == [0.1, 0.2, 0.4, 0.4]
    lo.reset()
    assert lo.next() == pytest.approx(0.05)
