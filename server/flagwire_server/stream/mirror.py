"""One environment's mirror, change ring and stream set, sans-I/O.

:class:`Mirror` is what :mod:`flagwire_server.stream.feed` knows about an
environment with every socket and Redis call taken out, as
:class:`flagwire.core.subscription.StreamState` is for a stream's reader:

* its state is a core :class:`~flagwire.core.evaluation.Snapshot`, so it holds
  each flag as its JSON (about 0.6 KiB at 10,000 flags, against 3.3 KiB decoded),
  a change costs what it costs a client, and the evaluate endpoint evaluates
  on it directly (compiling each flag on its first use);
* :meth:`Mirror.apply` takes one change-log entry and returns the frame to
  write to every stream (the same bytes for all: serialise once, send many);
* :meth:`Mirror.attach` registers a stream and returns what it must be sent
  first: ``hello`` plus the snapshot, or only the changes it missed when it
  resumes with ``since`` and the ring covers them.

Both run without an ``await`` in between, which is what makes a change
either part of what a new client got on connect or among the live changes
it gets after, never both and never neither.  Streams are opaque objects
here; the caller writes the frames.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from itertools import islice
from typing import Any, Generic, TypeVar

from flagwire.core.errors import ProtocolError
from flagwire.core.evaluation import Snapshot
from flagwire.core.protocol import Delete, Hello, Patch, SnapshotMessage, decode, encode
from flagwire_server.stream.frames import frame_of

__all__ = ["Greeting", "Mirror"]

C = TypeVar("C")


@dataclass(frozen=True, slots=True)
class Greeting:
    """What a newly attached stream is sent, in order; ``kind`` is "snapshot" or "resume"."""

    frames: list[bytes]
    kind: str
    version: int


class Mirror(Generic[C]):
    """The flags, segments, version, recent changes and open streams of one environment.

    Args:
        env: the environment's name.
        ring_size: changes kept (as frames) for resumes with ``since``.
        heartbeat: seconds announced in ``hello``.
        max_buffer: bytes a stream may have queued before it counts as slow;
            :attr:`limit` raises it to twice the snapshot, so a big snapshot
            alone never makes a client look slow.
    """

    def __init__(self, env: str, *, ring_size: int, heartbeat: float, max_buffer: int) -> None:
        self.env = env
        self.epoch = ""
        self.version = 0
        self.snapshot = Snapshot()
        self.ring: deque[tuple[int, bytes]] = deque(maxlen=ring_size)
        self.conns: set[C] = set()
        self.heartbeat = heartbeat
        self.max_buffer = max_buffer
        self.limit = max_buffer
        self._frames: tuple[int, str, bytes, bytes] | None = None

    # --- state ----------------------------------------------------------------

    def load(
        self,
        epoch: str,
        version: int,
        flags: Mapping[str, dict[str, Any]],
        segments: Mapping[str, dict[str, Any]],
    ) -> None:
        """Replace everything with a state read from the store (the ring starts empty)."""
        self.epoch = epoch
        self.version = int(version)
        self.snapshot = Snapshot(flags, segments, self.version, epoch)
        self.ring.clear()
        self._frames = None

    @property
    def flags(self) -> Mapping[str, dict[str, Any]]:
        """The flag documents (kept as JSON by :attr:`snapshot`; each read decodes a copy)."""
        return self.snapshot.flags

    @property
    def segments(self) -> Mapping[str, dict[str, Any]]:
        """The segment documents."""
        return self.snapshot.segments

    def frames(self) -> tuple[bytes, bytes]:
        """``(hello, snapshot)`` frames of the current version, built once per version."""
        cache = self._frames
        if cache is None or cache[0] != self.version or cache[1] != self.epoch:
            hello = frame_of(
                encode(
                    Hello(
                        env=self.env,
                        epoch=self.epoch,
                        version=self.version,
                        heartbeat=self.heartbeat,
                    )
                )
            )
            snap = frame_of(
                encode(
                    SnapshotMessage(
                        env=self.env,
                        epoch=self.epoch,
                        version=self.version,
                        flags=self.flags,
                        segments=self.segments,
                    )
                )
            )
            cache = self._frames = (self.version, self.epoch, hello, snap)
            self.limit = max(self.max_buffer, 2 * len(snap))
        return cache[2], cache[3]

    def snapshot_frame(self) -> bytes:
        """The snapshot of the current version (for a resync)."""
        return self.frames()[1]

    def covers(self, since: int) -> bool:
        """True when the ring holds every change after ``since`` (or there are none)."""
        if since == self.version:
            return True
        if since > self.version or since < 0 or not self.ring:
            return False
        return self.ring[0][0] <= since + 1

    def missed(self, since: int) -> Iterator[bytes]:
        """The frames of the changes after ``since`` (call :meth:`covers` first)."""
        start = since + 1 - self.ring[0][0] if self.ring else 0
        return (frame for _v, frame in islice(self.ring, max(0, start), None))

    def apply(self, version: int, message: bytes) -> bytes:
        """Apply change ``version`` (the encoded patch or delete) and return its frame.

        Raises:
            ProtocolError: the message is not a patch or delete, or carries
                another version; nothing changed.
        """
        msg = decode(message)
        if not isinstance(msg, Patch | Delete):
            raise ProtocolError(f"change log entry is a {msg.type}, not a patch or delete")
        if msg.version != version:
            raise ProtocolError(f"entry {version} carries version {msg.version}")
        snap = self.snapshot
        if isinstance(msg, Patch):
            if msg.kind == "flag":
                snap = snap.with_flag(msg.data, version)
            else:
                snap = snap.with_segment(msg.data, version)
        elif msg.kind == "flag":
            snap = snap.without_flag(msg.key, version)
        else:
            snap = snap.without_segment(msg.key, version)
        self.snapshot = snap
        self.version = version
        frame = frame_of(message)
        self.ring.append((version, frame))
        return frame

    # --- streams ----------------------------------------------------------------

    def attach(self, conn: C, since: int | None = None, epoch: str | None = None) -> Greeting:
        """Register ``conn`` and say what it must be sent before any live change."""
        hello, snap = self.frames()
        self.conns.add(conn)
        if since is not None and epoch == self.epoch and self.covers(since):
            return Greeting([hello, *self.missed(since)], "resume", self.version)
        return Greeting([hello, snap], "snapshot", self.version)

    def detach(self, conn: C) -> bool:
        """Forget ``conn``; False when it was not attached."""
        if conn in self.conns:
            self.conns.discard(conn)
            return True
        return False
