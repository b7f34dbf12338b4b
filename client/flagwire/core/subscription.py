"""The subscription state machine, sans-I/O: what a stream's messages mean.

:class:`StreamState` takes decoded server messages and says what they mean:
the new :class:`~flagwire.core.evaluation.Snapshot` to install, the changes to
announce, the version to acknowledge, whether to ask for a resync.  It never
touches a socket, so every ordering rule below is unit-tested directly.

It is in the public core, not the client, because more than one program
follows a stream: the client's connection loop and the server's
``flagwire watch`` both only move frames between a socket and this machine,
so they cannot disagree about ordering, gaps or what to acknowledge.

Rules (``docs/design.md``, wire protocol):

* Each connection starts with ``hello``; anything else first is a protocol error.
* A ``snapshot`` is the truth and replaces everything.  One whose epoch
  differs from ours, or whose version is below ours in the same epoch, means
  the store went back in time: it is still accepted, and reported.
* A ``patch``/``delete`` is applied only when its version is ours + 1.  Older
  or equal versions are duplicates and ignored.  A higher one is a gap: we
  stop applying and ask for a ``resync`` until a snapshot arrives — never
  continue on wrong state.
* Every applied version is acknowledged.
* A message that cannot be applied raises :class:`ProtocolError` *before*
  anything changed (snapshots are immutable), so nothing is half-applied.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from flagwire.core import protocol as proto
from flagwire.core.changes import FlagChange, change_of, diff
from flagwire.core.errors import ProtocolError
from flagwire.core.evaluation import Snapshot

__all__ = ["Outcome", "StreamState"]


@dataclass(slots=True)
class Outcome:
    """What one message means for the client."""

    snapshot: Snapshot | None = None  #: install this (None: nothing changed)
    changes: list[FlagChange] = field(default_factory=list)
    ack: int | None = None  #: acknowledge this version
    resync: bool = False  #: send ``resync{}``: we saw a gap
    gap: str | None = None  #: what the gap was, for the log
    rewound: str | None = None  #: the store went back in time (message for the log)
    caught_up: bool = False  #: this connection just reached the server's version
    error: proto.Error | None = None  #: the server reported an error


class StreamState:
    """What the client knows, and what it expects next on the current connection.

    Args:
        snapshot: data already held (from a persisted file or an earlier
            connection); None for a cold start.
    """

    def __init__(self, snapshot: Snapshot | None = None) -> None:
        self.snapshot = snapshot
        self.env: str | None = None
        self.hello: proto.Hello | None = None
        self._need_snapshot = snapshot is None
        self._resync_sent = False
        self._caught_up = False
        self._force_snapshot = False

    # --- per connection ----------------------------------------------------------

    def resume_query(self) -> dict[str, str]:
        """Query parameters for the next connection: resume from our version when we can."""
        snap = self.snapshot
        if snap is None or self._force_snapshot or self._need_snapshot or not snap.epoch:
            return {}
        return {"since": str(snap.version), "epoch": snap.epoch}

    def request_snapshot(self) -> None:
        """Make the next connection start from a fresh snapshot (after a bad message, 4000)."""
        self._force_snapshot = True

    def connection_opened(self) -> None:
        """Reset what we expect from the server; call when a new connection opens."""
        self.hello = None
        self._resync_sent = False
        self._caught_up = False
        if self._force_snapshot:
            self._need_snapshot = True
            self._force_snapshot = False

    @property
    def caught_up(self) -> bool:
        """The current connection has brought us to (at least) the server's version."""
        return self._caught_up

    # --- messages ----------------------------------------------------------------

    def receive(self, msg: proto.Message) -> Outcome:
        """Apply one decoded server message.

        Raises:
            ProtocolError: the message is out of place (no ``hello`` first, a
                client-only message) or cannot be applied.  Nothing has changed.
        """
        if isinstance(msg, proto.Hello):
            return self._on_hello(msg)
        if self.hello is None:
            raise ProtocolError(f"expected hello first, got {msg.type}")
        if isinstance(msg, proto.Patch | proto.Delete):
            return self._on_change(msg)
        if isinstance(msg, proto.SnapshotMessage):
            return self._on_snapshot(msg)
        if isinstance(msg, proto.Error):
            return Outcome(error=msg)
        if isinstance(msg, proto.Watch):  # fleet insight: the reporting side keeps it
            return Outcome()
        raise ProtocolError(f"unexpected {msg.type} message from the server")

    def _on_hello(self, msg: proto.Hello) -> Outcome:
        if self.hello is not None:
            raise ProtocolError("unexpected second hello")
        self.hello = msg
        self.env = msg.env
        snap = self.snapshot
        if snap is None or snap.epoch != msg.epoch or msg.version < snap.version:
            # The server owes us a snapshot; patches before it cannot be applied.
            self._need_snapshot = True
            return Outcome()
        return self._check_caught_up(Outcome())

    def _check_caught_up(self, out: Outcome) -> Outcome:
        snap, hello = self.snapshot, self.hello
        if (
            not self._caught_up
            and not self._need_snapshot
            and snap is not None
            and hello is not None
            and snap.version >= hello.version
        ):
            self._caught_up = True
            out.caught_up = True
        return out

    def _on_snapshot(self, msg: proto.SnapshotMessage) -> Outcome:
        old = self.snapshot
        try:
            new = Snapshot(msg.flags, msg.segments, msg.version, msg.epoch)
        except Exception as exc:
            raise ProtocolError(f"snapshot {msg.version} cannot be loaded: {exc}") from exc
        out = Outcome(snapshot=new, ack=msg.version)
        if old is not None and old.epoch and (msg.epoch != old.epoch or msg.version < old.version):
            out.rewound = (
                f"the store went back in time: we had epoch {old.epoch!r} version {old.version}, "
                f"the server sent epoch {msg.epoch!r} version {msg.version}; "
                "taking the server's snapshot as the truth"
            )
        out.changes = diff(old, new)
        self.snapshot = new
        self.env = msg.env
        self._need_snapshot = False
        self._resync_sent = False
        return self._check_caught_up(out)

    def _on_change(self, msg: proto.Patch | proto.Delete) -> Outcome:
        snap = self.snapshot
        if self._need_snapshot or snap is None:
            return self._gap(f"{msg.type} {msg.version} while waiting for a snapshot")
        if msg.version <= snap.version:
            return Outcome()  # a duplicate or an old message
        if msg.version != snap.version + 1:
            self._need_snapshot = True
            return self._gap(f"{msg.type} {msg.version} after version {snap.version}")
        try:
            if isinstance(msg, proto.Patch):
                if msg.kind == "flag":
                    old_doc = snap.flags.get(msg.key)
                    new = snap.with_flag(msg.data, msg.version)
                else:
                    old_doc = snap.segments.get(msg.key)
                    new = snap.with_segment(msg.data, msg.version)
                change = change_of(msg.kind, msg.key, old_doc, msg.data, msg.version)
            else:
                if msg.kind == "flag":
                    old_doc = snap.flags.get(msg.key)
                    new = snap.without_flag(msg.key, msg.version)
                else:
                    old_doc = snap.segments.get(msg.key)
                    new = snap.without_segment(msg.key, msg.version)
                change = change_of(msg.kind, msg.key, old_doc, None, msg.version)
        except Exception as exc:
            raise ProtocolError(f"{msg.type} {msg.version} cannot be applied: {exc}") from exc
        self.snapshot = new
        out = Outcome(snapshot=new, ack=msg.version)
        if old_doc is not None or change.new_version is not None:
            out.changes = [change]
        return self._check_caught_up(out)

    def _gap(self, what: str) -> Outcome:
        out = Outcome(gap=what)
        if not self._resync_sent:
            self._resync_sent = True
            out.resync = True
        return out
