"""``flagwire watch``'s view of a stream, fed through the core's state machine, no socket.

The end-to-end runs (a real server, the ``flagwire`` process) are in
tests/test_cli.py; these pin what the watch shows for the orderings a socket
test cannot produce on demand: duplicates, gaps, a resync snapshot.
"""

from __future__ import annotations

from typing import Any

from flagwire.core import protocol as proto
from flagwire.core.subscription import StreamState
from flagwire_server.cli.watch import describe
from tests.support.builders import flag


def feed(state: StreamState, msg: proto.Message) -> tuple[list[str], int | None, bool]:
    before = state.snapshot
    out = state.receive(msg)
    return describe(msg, out, before), out.ack, out.resync


def doc(key: str, version: int, on: bool = True) -> dict[str, Any]:
    return flag(key, on=on, version=version, updated_by="ann")


def patch(key: str, env_version: int, version: int, on: bool = True) -> proto.Patch:
    return proto.Patch(kind="flag", key=key, data=doc(key, version, on), version=env_version)


def started(version: int = 3) -> StreamState:
    state = StreamState()
    state.connection_opened()
    assert feed(state, proto.Hello(env="prod", epoch="e1", version=version)) == (
        [f"connected to prod at version {version}"],
        None,
        False,
    )
    snap = proto.SnapshotMessage(
        env="prod", epoch="e1", version=version, flags={"a": doc("a", 1)}, segments={}
    )
    # The first snapshot is where the watch starts: a summary, not a list of changes.
    assert feed(state, snap) == ([f"v{version} snapshot: 1 flags, 0 segments"], version, False)
    return state


def test_changes_are_shown_and_acknowledged_once() -> None:
    state = started()
    assert feed(state, patch("a", 4, 2, on=False)) == (
        ["v4 flag a off (version 2, by ann)"],
        4,
        False,
    )
    # The same version again (a resumed stream overlapping) is neither shown nor acknowledged.
    assert feed(state, patch("a", 4, 2, on=False)) == ([], None, False)
    delete = proto.Delete(kind="flag", key="a", version=5)
    assert feed(state, delete) == (["v5 flag a deleted"], 5, False)


def test_a_gap_asks_once_for_a_snapshot_and_the_snapshot_shows_what_was_missed() -> None:
    state = started()
    lines, ack, resync = feed(state, patch("b", 6, 1))
    assert (ack, resync) == (None, True)
    assert lines == ["gap: patch 6 after version 3; asking for a snapshot"]
    lines, ack, resync = feed(state, patch("b", 7, 2))
    assert (ack, resync) == (None, False)
    assert lines == ["gap: patch 7 while waiting for a snapshot; waiting for the snapshot"]
    snap = proto.SnapshotMessage(
        env="prod", epoch="e1", version=7, flags={"b": doc("b", 2, on=False)}, segments={}
    )
    lines, ack, resync = feed(state, snap)
    assert ack == 7
    assert lines == [
        "v7 snapshot: 1 flags, 0 segments",
        "v7 flag a deleted",
        "v7 flag b off (version 2, by ann)",
    ]


def test_a_rewound_store_is_reported() -> None:
    state = started()
    state.connection_opened()
    feed(state, proto.Hello(env="prod", epoch="e2", version=1))
    snap = proto.SnapshotMessage(env="prod", epoch="e2", version=1, flags={}, segments={})
    lines, ack, _ = feed(state, snap)
    assert ack == 1
    assert lines[0] == "v1 snapshot: 0 flags, 0 segments"
    assert lines[1].startswith("note: the store went back in time")
    assert lines[2] == "v1 flag a deleted"


def test_server_errors_are_shown() -> None:
    state = started()
    lines, ack, _ = feed(state, proto.Error(code="overloaded", message="try later"))
    assert (lines, ack) == (["server error overloaded: try later"], None)
