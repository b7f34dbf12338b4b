"""One environment in one process: its mirror written to its open streams.

:class:`EnvFeed` moves bytes between the pure :class:`~flagwire_server.stream.mirror.Mirror`
and the connections; the change-log reader (:mod:`flagwire_server.stream.reader`)
feeds it.  The hot path lives here: :meth:`EnvFeed.broadcast` writes one
pre-built frame to every stream in a synchronous loop, and
:meth:`EnvFeed.attach` registers a stream in the same synchronous step that
sends it ``hello`` and its snapshot.  See :mod:`flagwire_server.stream.fanout`
for the design and the reasons.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final

from flagwire.core.protocol import CloseCode
from flagwire_server.store.acks import AckBook
from flagwire_server.stream.conn import Conn
from flagwire_server.stream.mirror import Mirror
from flagwire_server.stream.ofrep_events import Listeners

if TYPE_CHECKING:
    from flagwire.core.evaluation import Snapshot
    from flagwire_server.config import Settings
    from flagwire_server.observability.metrics import Metrics
    from flagwire_server.store.changelog import Change
    from flagwire_server.store.types import EnvState
    from flagwire_server.stream.reader import ChangeReader

__all__ = ["EnvFeed", "EnvNotFound"]

log = logging.getLogger("flagwire.fanout")

#: Bytes of greeting joined into one write with the handshake's 101: a resume's
#: ``hello`` and missed changes, a small snapshot; not a big snapshot's copy.
_JOINED: Final = 64 * 1024


class EnvNotFound(LookupError):
    """The environment does not exist in the store."""


class EnvFeed:
    """The mirror, streams and acknowledgement book of one environment in this process.

    Args:
        env: the environment.
        settings: ring size, heartbeat and buffer limit.
        metrics: the process's metrics.
        on_acks: called when acknowledgement figures changed (the reporter flushes soon).
    """

    def __init__(
        self, env: str, *, settings: Settings, metrics: Metrics, on_acks: Callable[[], None]
    ) -> None:
        self.env = env
        self.mirror: Mirror[Conn] = Mirror(
            env,
            ring_size=settings.ring_size,
            heartbeat=settings.heartbeat,
            max_buffer=settings.max_buffer,
        )
        self.book = AckBook(env)
        self.metrics = metrics
        self._on_acks = on_acks
        #: Set by the watchdog while the change log cannot be read (streams refused with 503).
        self.stale = False
        #: The change-log reader feeding this mirror (set by the fan-out).
        self.reader: ChangeReader | None = None
        #: OFREP event streams told of every change (``api/ofrep.py`` adds them).
        self.listeners = Listeners()
        self._sent_change = metrics.messages_sent.labels(env, "change")
        self._applied = metrics.changes_applied.labels(env)
        self._connected = metrics.connected.labels(env)

    # --- the mirror, as the API reads it ------------------------------------------

    @property
    def version(self) -> int:
        return self.mirror.version

    @property
    def epoch(self) -> str:
        return self.mirror.epoch

    @property
    def flags(self) -> Mapping[str, dict[str, Any]]:
        return self.mirror.flags

    @property
    def segments(self) -> Mapping[str, dict[str, Any]]:
        return self.mirror.segments

    @property
    def snapshot(self) -> Snapshot:
        """The environment at :attr:`version`, compiled on use (the evaluate endpoint's)."""
        return self.mirror.snapshot

    @property
    def conns(self) -> set[Conn]:
        return self.mirror.conns

    def load(self, state: EnvState) -> None:
        """Replace the mirror with a state read from the store (the ring starts empty)."""
        self.mirror.load(state.epoch, state.version, state.flags, state.segments)

    # --- streams --------------------------------------------------------------

    def attach(self, conn: Conn, since: int | None, epoch: str | None, head: bytes = b"") -> str:
        """Send ``head``, hello and the snapshot (or the missed changes), and register.

        No await inside.  ``head`` is the handshake's 101 when the stream was
        accepted with :func:`~flagwire_server.stream.uvicorn_fence.accept_now`;
        a greeting up to :data:`_JOINED` bytes goes out in one write with it.
        """
        greeting = self.mirror.attach(conn, since, epoch)
        frames = greeting.frames
        # (Only the transport takes joined frames: the fallback queue sends one per message.)
        if conn.transport is not None and sum(map(len, frames)) <= _JOINED:
            conn.write(b"".join((head, *frames)))
        else:  # nor is a big snapshot copied once more to save one system call
            if head:
                conn.write(head)
            for frame in frames:
                conn.write(frame)
        conn.base = conn.acked = greeting.version
        conn.attached = True
        self._connected.inc()
        self.metrics.messages_sent.labels(self.env, greeting.kind).inc()
        return greeting.kind

    def detach(self, conn: Conn) -> None:
        if not conn.attached:
            return
        conn.attached = False
        self.mirror.detach(conn)
        self._connected.dec()
        self.book.lost(max(conn.acked, conn.base))
        self._on_acks()

    def close(self, conn: Conn, code: int, reason: str) -> None:
        """Close ``conn`` from the server side, now, and stop writing to it."""
        if conn.closed:
            return
        self.detach(conn)
        conn.shut(code, reason)
        self.metrics.disconnects.labels(str(code)).inc()

    def close_all(self, code: int, reason: str) -> None:
        for conn in list(self.mirror.conns):
            self.close(conn, code, reason)
        self.listeners.close_all()

    def ack(self, conn: Conn, version: int) -> None:
        """``conn`` applied everything up to ``version``."""
        version = min(version, self.mirror.version)
        above = max(conn.acked, conn.base)
        if version > above:
            for lat in self.book.acked(above, version, time.time() * 1000):
                self.metrics.propagation.observe(lat)
            self._on_acks()
        if version > conn.acked:
            conn.acked = version

    def resnapshot(self, conn: Conn, reason: str = "resync") -> None:
        """Send ``conn`` a fresh snapshot, in order with the live changes."""
        snap = self.mirror.snapshot_frame()
        if conn.buffered() > self.mirror.limit:
            self.close(conn, CloseCode.RESYNC, "too slow; resync")
            return
        conn.write(snap)
        conn.base = max(conn.base, self.mirror.version)
        self.metrics.resyncs.labels(self.env, reason).inc()

    def resnapshot_all(self, reason: str) -> None:
        for conn in list(self.mirror.conns):
            self.resnapshot(conn, reason)
        self.listeners.notify(self.mirror.epoch, self.mirror.version)

    def broadcast(self, frame: bytes) -> int:
        """Write ``frame`` to every stream; returns how many got it.

        The hot loop: no await, no per-client allocation.
        """
        limit = self.mirror.limit
        n = 0
        drop: list[Conn] | None = None
        for c in self.mirror.conns:
            t = c.transport
            if t is not None:
                if t.is_closing() or t.get_write_buffer_size() > limit:
                    if drop is None:
                        drop = []
                    drop.append(c)
                    continue
                t.write(frame)
                n += 1
            elif c.push(frame, limit):  # fallback path
                n += 1
            else:
                if drop is None:
                    drop = []
                drop.append(c)
        if drop:
            for c in drop:
                t = c.transport
                if t is not None and t.is_closing():
                    self.detach(c)  # already going; the endpoint will notice
                else:
                    log.info(
                        "stream too slow, closing",
                        extra={"env": self.env, "buffered": c.buffered(), "key_id": c.key_id},
                    )
                    self.close(c, CloseCode.RESYNC, "too slow; resync")
        return n

    def apply(self, change: Change) -> None:
        """Apply the next change (``version == self.version + 1``) and fan it out.

        Raises:
            ProtocolError: the entry is not a valid change; nothing was applied.
        """
        frame = self.mirror.apply(change.version, change.message)
        started = time.perf_counter()
        n = self.broadcast(frame)
        self.metrics.fanout_duration.observe(time.perf_counter() - started)
        self.book.sent(change.version, n, change.t_ms)
        self._on_acks()
        self._sent_change.inc(n)
        self._applied.inc()
        self.listeners.notify(self.mirror.epoch, change.version, change.t_ms)
