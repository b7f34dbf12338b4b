"""The subscription state machine, sans-I/O: ordering, gaps, resyncs, rewinds."""

from __future__ import annotations

from typing import Any

import pytest

from flagwire.core import protocol as proto
from flagwire.core.errors import ProtocolError
from flagwire.core.evaluation import Snapshot
from flagwire.core.subscription import StreamState
from tests.support.builders import flag

CTX = {"key": "u1"}


def hello(version: int, epoch: str = "e1") -> proto.Hello:
    return proto.Hello(env="prod", epoch=epoch, version=version)


def snapshot(version: int, epoch: str = "e1", **flags: dict[str, Any]) -> proto.SnapshotMessage:
    return proto.SnapshotMessage(
        env="prod", epoch=epoch, version=version, flags=dict(flags), segments={}
    )


def patch(key: str, version: int, on: bool = True) -> proto.Patch:
    return proto.Patch(
        kind="flag", key=key, data=flag(key, on=on, version=version), version=version
    )


def value(state: StreamState, key: str) -> Any:
    assert state.snapshot is not None
    return state.snapshot.evaluate(key, CTX, "default").value


def connected(state: StreamState, version: int = 1, epoch: str = "e1") -> StreamState:
    state.connection_opened()
    state.receive(hello(version, epoch))
    return state


def test_cold_start_hello_then_snapshot() -> None:
    state = StreamState()
    assert state.resume_query() == {}
    state.connection_opened()
    out = state.receive(hello(3))
    assert out.snapshot is None
    assert not out.caught_up
    out = state.receive(snapshot(3, a=flag("a", version=1)))
    assert out.snapshot is not None
    assert out.ack == 3
    assert out.caught_up
    assert [c.key for c in out.changes] == ["a"]
    assert state.resume_query() == {"since": "3", "epoch": "e1"}
    assert value(state, "a") is True


def test_next_patch_applies_and_is_acked() -> None:
    state = StreamState()
    connected(state, 1)
    state.receive(snapshot(1, a=flag("a", version=1)))
    out = state.receive(patch("a", 2, on=False))
    assert out.ack == 2
    assert out.changes[0].key == "a"
    assert out.changes[0].old_version == 1
    assert out.changes[0].new_version == 2
    assert value(state, "a") is False


def test_duplicates_and_old_versions_are_ignored() -> None:
    state = StreamState()
    connected(state, 1)
    state.receive(snapshot(1, a=flag("a", version=1)))
    state.receive(patch("a", 2, on=False))
    for version in (1, 2):
        out = state.receive(patch("a", version, on=True))
        assert out.snapshot is None
        assert out.ack is None
    assert value(state, "a") is False


def test_gap_asks_for_resync_once_and_applies_nothing_until_the_snapshot() -> None:
    state = StreamState()
    connected(state, 1)
    state.receive(snapshot(1, a=flag("a", version=1)))
    out = state.receive(patch("a", 3, on=False))
    assert out.resync
    assert out.snapshot is None
    assert out.gap
    out = state.receive(patch("a", 4, on=False))
    assert not out.resync  # asked already
    assert out.snapshot is None
    assert value(state, "a") is True  # never continued on wrong state
    assert state.resume_query() == {}  # a reconnect now would also ask for a snapshot
    out = state.receive(snapshot(4, a=flag("a", on=False, version=3)))
    assert out.snapshot is not None
    assert value(state, "a") is False
    assert state.receive(patch("a", 5)).ack == 5


def test_resume_with_replay_catches_up_at_the_hello_version() -> None:
    state = StreamState()
    connected(state, 1)
    state.receive(snapshot(1, a=flag("a", version=1)))
    state.connection_opened()
    out = state.receive(hello(3))
    assert not out.caught_up
    assert not state.receive(patch("a", 2)).caught_up
    assert state.receive(patch("a", 3, on=False)).caught_up


def test_resume_when_nothing_changed_is_caught_up_at_hello() -> None:
    state = StreamState()
    connected(state, 1)
    state.receive(snapshot(1, a=flag("a", version=1)))
    state.connection_opened()
    assert state.receive(hello(1)).caught_up


@pytest.mark.parametrize(("epoch", "version"), [("e2", 5), ("e1", 1)])
def test_store_went_back_in_time_snapshot_wins_and_is_reported(epoch: str, version: int) -> None:
    state = StreamState()
    connected(state, 3)
    state.receive(snapshot(3, a=flag("a", version=2), b=flag("b", version=1)))
    state.connection_opened()
    state.receive(hello(version, epoch))
    # patches before the snapshot cannot be applied to our (other) history
    assert state.receive(patch("a", 4)).snapshot is None
    out = state.receive(snapshot(version, epoch, a=flag("a", on=False, version=1)))
    assert out.rewound
    assert out.snapshot is not None
    assert value(state, "a") is False
    assert value(state, "b") == "default"  # gone in the store: gone here
    assert {c.key for c in out.changes} == {"a", "b"}
    assert state.resume_query() == {"since": str(version), "epoch": epoch}


def test_delete_and_segments() -> None:
    state = StreamState()
    connected(state, 1)
    state.receive(snapshot(1, a=flag("a", version=1)))
    out = state.receive(proto.Delete(kind="flag", key="a", version=2))
    assert out.changes[0].new_version is None
    assert value(state, "a") == "default"
    out = state.receive(
        proto.Patch(kind="segment", key="s", data={"key": "s", "included": ["u1"]}, version=3)
    )
    assert out.changes[0].kind == "segment"
    out = state.receive(proto.Delete(kind="segment", key="s", version=4))
    assert out.ack == 4
    # deleting what is not there still moves the version, announces nothing
    out = state.receive(proto.Delete(kind="flag", key="zz", version=5))
    assert out.ack == 5
    assert out.changes == []


def test_out_of_place_messages_are_protocol_errors() -> None:
    state = StreamState()
    state.connection_opened()
    with pytest.raises(ProtocolError, match="hello first"):
        state.receive(snapshot(1))
    state.receive(hello(1))
    with pytest.raises(ProtocolError, match="second hello"):
        state.receive(hello(1))
    with pytest.raises(ProtocolError, match="unexpected ack"):
        state.receive(proto.Ack(version=1))


def test_error_message_is_reported() -> None:
    state = connected(StreamState(), 1)
    out = state.receive(proto.Error(code="overloaded", message="slow down"))
    assert out.error is not None
    assert out.error.code == "overloaded"


def test_request_snapshot_drops_since_for_the_next_connection() -> None:
    state = StreamState(Snapshot({}, {}, 7, "e1"))
    assert state.resume_query() == {"since": "7", "epoch": "e1"}
    state.request_snapshot()
    assert state.resume_query() == {}
    state.connection_opened()
    state.receive(hello(7))
    # even at the same version we wait for the snapshot we asked for
    assert state.receive(patch("a", 8)).snapshot is None
    assert state.receive(snapshot(8, a=flag("a", version=1))).caught_up


def test_persisted_snapshot_resumes() -> None:
    state = StreamState(Snapshot({"a": flag("a", version=1)}, {}, 4, "e1"))
    assert state.resume_query() == {"since": "4", "epoch": "e1"}
    state.connection_opened()
    state.receive(hello(5))
    out = state.receive(patch("a", 5, on=False))
    assert out.caught_up
    assert value(state, "a") is False
