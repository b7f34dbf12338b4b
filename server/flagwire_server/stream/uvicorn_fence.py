"""Every touch of uvicorn's and Starlette's internals, fenced in one module.

Why internals at all: writing each change's pre-built frame straight to every
connection's transport is the measured floor of the fan-out (issue 6), and
uvicorn's ASGI ``send`` costs a task wake-up and a copy per client.  So this
module, and no other, reads and writes the private state of uvicorn's
``websockets-sansio`` protocol (and finds it behind Starlette's ``WebSocket``).
``pyproject.toml`` caps uvicorn and Starlette below their next minor/major
release, and ``tests/test_uvicorn_fence.py`` fails with a plain message when
an attribute or method relied on here changes.  Everything else reaches the
protocol through :func:`protocol_of`, :func:`transport_of`,
:func:`close_sent` and :func:`close_now`.

uvicorn's ``websockets-sansio`` protocol (and, item 8, its httptools protocol) with the
changes flagwire needs:

1. The protocol object is put in the ASGI scope (``scope["flagwire.protocol"]``)
   so the fan-out can write pre-built frames straight to the connection's
   transport — one ``transport.write`` per client and change, the measured
   floor (issue 6) — and can see how much is buffered for a slow client.
2. Client frames can be handed to ``on_message`` synchronously as they are
   parsed instead of through the ASGI receive queue: the stream endpoint
   installs it after accept, so an ack costs a decode and a counter, not a
   queue, a task wake-up and a pause/resume of reading.
3. On server shutdown, streams are closed with 1001 "going away" (clients
   reconnect elsewhere and resume) instead of uvicorn's 1012.
4. A handshake refused with a denial response (the ASGI
   ``websocket.http.response`` extension) counts as finished: uvicorn would
   otherwise log "ASGI callable returned without completing handshake" at
   ERROR for every refusal.
5. A stream's transport reads at most :data:`READ_SIZE` bytes per call
   instead of asyncio's 256 KiB.  asyncio allocates a buffer of that size for
   every read and shrinks it to what arrived; 256 KiB is above the mmap
   threshold the server pins at 128 KiB
   (:func:`flagwire_server.process.fix_mmap_threshold`), so whenever the
   heap's top cannot hold it, each read is an mmap, two page faults and an
   munmap: 18-24 us instead of 1.5-1.9 us (same machine, same sitting).
   Every client acknowledges every change, so that is one read per client
   per change.  Reads under the threshold always come from the heap.
6. While ``on_message`` is installed and websockets' parser is between
   frames, complete small client text frames (FIN, no extension bits,
   masked, under 126 bytes: every ack) at the front of what arrived are
   unmasked here and handed to ``on_message`` without going through the
   parser's generators, the events list and uvicorn's dispatch; anything
   else (control frames, fragments, a partial frame, big frames) and
   everything after it goes to websockets as before, so its state machine
   sees every frame it must.  Parsing acks was a quarter of the server's
   time at 10,000 clients (bench/results/profile-10000.txt).
7. A plain upgrade request (:func:`flagwire_server.stream.upgrade.read_upgrade`)
   is read without websockets' HTTP parser, and its accept writes a 101
   spelled directly instead of building and serialising websockets'
   ``Response``; websockets' parser is moved straight to frames and its state
   to OPEN, as its own handshake would.  Any other request goes to websockets
   as before, so refusals are unchanged.  Each reconnect of a storm paid for
   that parse and that response (bench/results/SUMMARY.md, "What bounds the
   storm").
8. :class:`FlagwireHttpProtocol`, uvicorn's httptools protocol, hands a
   plain upgrade that is a connection's first request straight to item 7,
   instead of httptools' parse (a Python callback per header), the scope
   uvicorn builds for it, and the request re-serialised for the WebSocket
   protocol to read again.  Anything else is httptools' as before; it also
   takes both addresses from the transport, as item 7 does.
9. :func:`accept_now` accepts a plain upgrade's stream without the ASGI
   round trip and hands back the 101 instead of writing it, so the stream
   endpoint sends it with ``hello`` in one write: one system call per
   resume, not two (and one read for the client).

Server frames are unmasked and uncompressed (``ws_per_message_deflate`` is
off), so writing a frame built elsewhere never disturbs the sans-I/O state
machine; only close frames go through it.

Select it with
``uvicorn.Config(ws="flagwire_server.stream.uvicorn_fence:FlagwireWebSocketProtocol")``
(``flagwire serve`` does).
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
from asyncio import BaseTransport
from collections.abc import Callable
from typing import Final, cast
from urllib.parse import unquote

from starlette.websockets import WebSocket, WebSocketState
from uvicorn._types import ASGISendEvent, WebSocketAcceptEvent
from uvicorn.logging import TRACE_LOG_LEVEL
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.utils import get_client_addr, get_path_with_query_string, is_ssl
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.datastructures import Headers
from websockets.http11 import Request, Response
from websockets.protocol import Protocol, State
from websockets.utils import apply_mask

from flagwire_server.observability.logs import handshake_lines_dropped
from flagwire_server.stream.upgrade import Upgrade, read_upgrade, switching_protocols

__all__ = [
    "READ_SIZE",
    "SCOPE_KEY",
    "FlagwireHttpProtocol",
    "FlagwireWebSocketProtocol",
    "accept_now",
    "close_now",
    "close_sent",
    "protocol_of",
    "transport_of",
]

SCOPE_KEY: Final = "flagwire.protocol"
#: Seconds a closing peer gets to read what is buffered and echo the close.
CLOSE_GRACE: Final = 2.0
#: Bytes a stream's transport asks for per read (see the module docstring, item 5).
READ_SIZE: Final = 64 * 1024


class FlagwireWebSocketProtocol(WebSocketsSansIOProtocol):
    """See the module docstring."""

    #: Receives each complete client message (text or binary) instead of the app.
    on_message: Callable[[str | bytes], None] | None = None
    #: The ``Sec-WebSocket-Accept`` of a plain upgrade (item 7) until its 101 is written.
    _accept: bytes | None = None

    def connection_made(self, transport: BaseTransport) -> None:
        """uvicorn's, with both addresses from the transport, not two more system calls.

        asyncio read them when it made the transport, and uvicorn's HTTP
        protocol again before the upgrade; uvicorn asks the socket a third time.
        """
        self.connections.add(self)
        self.transport = cast(asyncio.Transport, transport)
        self.server = _address(transport.get_extra_info("sockname"), local=True)
        self.client = _address(transport.get_extra_info("peername"), local=False)  # type: ignore[assignment]
        self.scheme = "wss" if is_ssl(self.transport) else "ws"
        if self.logger.level <= TRACE_LOG_LEVEL:
            prefix = f"{self.client[0]}:{self.client[1]} - " if self.client else ""
            self.logger.log(TRACE_LOG_LEVEL, "%sWebSocket connection made", prefix)
        # asyncio's selector transport reads ``self.max_size`` bytes per recv();
        # other transports (uvloop, proactor) have no such attribute to shadow.
        if hasattr(transport, "max_size"):
            transport.max_size = READ_SIZE

    def data_received(self, data: bytes) -> None:
        if not self.handshake_initiated:
            upgrade = None if self.config.ws_per_message_deflate else read_upgrade(data)
            if upgrade is not None:
                self._connect(upgrade)
                return
        hook = self.on_message
        if hook is not None and not self.close_sent and _between_frames(self):
            data = self._small_text_frames(data, hook)
            if not data:
                return
        super().data_received(data)

    def _small_text_frames(self, data: bytes, hook: Callable[[str | bytes], None]) -> bytes:
        """Hand the complete small text frames at the front of ``data`` to ``hook``; the rest."""
        pos, n = 0, len(data)
        while n - pos >= 6:
            b1 = data[pos + 1]
            # 0x81: FIN, no RSV bits, text.  0x80..0xFD: masked, payload length 0..125.
            if data[pos] != 0x81 or not 0x80 <= b1 <= 0xFD:
                break
            end = pos + 6 + (b1 & 0x7F)
            if end > n:
                break
            payload = apply_mask(data[pos + 6 : end], data[pos + 2 : pos + 6])
            pos = end
            hook(payload)
            if self.close_sent or self.on_message is not hook:
                break
        return data[pos:] if pos else data

    def send_receive_event_to_app(self) -> None:
        hook = self.on_message
        if hook is None or self.close_sent:
            super().send_receive_event_to_app()
            return
        frames = self.frames
        self.frames = []
        data = frames[0] if len(frames) == 1 else b"".join(frames)
        # Text frames stay bytes: the decoder takes UTF-8 bytes and refuses invalid ones.
        hook(bytes(data))

    def _connect(self, upgrade: Upgrade) -> None:
        """uvicorn's ``handle_connect`` for a plain upgrade, without websockets' Request."""
        conn = self.conn
        # What websockets' parser does after reading a request: parse frames.  The
        # state stays CONNECTING until the 101 is written, as websockets keeps it.
        conn.parser = Protocol.parse(conn)
        next(conn.parser)
        self.handshake_initiated = True
        self._accept = upgrade.accept
        raw_path, _, query_string = upgrade.target.partition("?")
        self.scope = {
            "type": "websocket",
            "asgi": {"version": self.asgi_version, "spec_version": "2.4"},
            "http_version": "1.1",
            "scheme": self.scheme,
            "server": self.server,
            "client": self.client,
            "root_path": self.root_path,
            "path": self.root_path + unquote(raw_path),
            "raw_path": self.root_path.encode("ascii") + raw_path.encode("ascii"),
            "query_string": query_string.encode("ascii"),
            "headers": upgrade.headers,
            "subprotocols": [],
            "state": self.app_state.copy(),
            "extensions": {"websocket.http.response": {}},
        }
        scope: dict[str, object] = self.scope  # type: ignore[assignment]
        scope[SCOPE_KEY] = self
        self.queue.put_nowait({"type": "websocket.connect"})
        task = self.loop.create_task(self.run_asgi())
        task.add_done_callback(self.on_task_complete)
        self.tasks.add(task)

    async def send(self, message: ASGISendEvent) -> None:
        if self._accept is not None and message["type"] == "websocket.accept":
            await self.writable.wait()
            if self._accept_pending():
                head = self._accept_head(message)
                if head is not None:
                    if head:
                        self.transport.write(head)
                    return
        await super().send(message)
        if message["type"] == "websocket.http.response.body" and not message.get("more_body"):
            # The response is written and the transport closing: the handshake is over,
            # answered.  uvicorn only counts an accept as that, then logs an ERROR.
            self.handshake_complete = True

    def _accept_pending(self) -> bool:
        """A plain upgrade (item 7) not yet answered, on a connection still open."""
        return self._accept is not None and not (
            self.disconnected or self.handshake_complete or self.initial_response
        )

    def _accept_head(self, message: WebSocketAcceptEvent) -> bytes | None:
        """uvicorn's accept for a plain upgrade: the 101 spelled directly (item 7).

        Returns the 101 for the caller to write before anything else (``b""``
        when the transport is already closing), or None, with the response
        websockets would have built in place, for a subprotocol or a header
        that is not ASCII: uvicorn writes those.
        """
        accept, self._accept = self._accept, None
        assert accept is not None
        headers = self.default_headers + list(message.get("headers", []))
        if message.get("subprotocol") or not all(
            name.isascii() and value.isascii() for name, value in headers
        ):
            self.response = Response(
                101,
                "Switching Protocols",
                Headers(
                    Date=email.utils.formatdate(usegmt=True),
                    Upgrade="websocket",
                    Connection="Upgrade",
                ),
            )
            self.response.headers["Sec-WebSocket-Accept"] = accept.decode()
            return None
        # uvicorn's and websockets' line per accepted stream, unless the server's logging
        # would drop both (a record each, built for nothing, in every storm's resume).
        lines = not handshake_lines_dropped(self.logger)
        if lines and self.logger.isEnabledFor(logging.INFO):
            self.logger.info(
                '%s - "WebSocket %s" [accepted]',
                get_client_addr(self.scope),
                get_path_with_query_string(self.scope),
            )
        if self.transport.is_closing():
            return b""
        self.handshake_complete = True
        conn = self.conn
        conn.state = State.OPEN
        if lines:
            conn.logger.info("connection open")
        self.start_keepalive()
        return switching_protocols(accept, headers)

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        # The ASGI task was only scheduled; it sees this key when it runs.
        scope = getattr(self, "scope", None)
        if scope is not None and self.response.status_code == 101:
            scope[SCOPE_KEY] = self

    def shutdown(self) -> None:
        if self.handshake_complete and not self.close_sent and not self.disconnected:
            close_now(self, 1001, "server shutting down")
            # transport.close() flushes what is buffered, then closes; a peer
            # that does not read would hold that forever, hence the abort.
            self.transport.close()
            return
        super().shutdown()


class FlagwireHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with a plain upgrade handed straight over (item 8)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """uvicorn's, with both addresses from the transport (see the WebSocket protocol's)."""
        self.connections.add(self)
        self.transport = transport
        self.flow = FlowControl(transport)
        self.server = _address(transport.get_extra_info("sockname"), local=True)
        self.client = _address(transport.get_extra_info("peername"), local=False)  # type: ignore[assignment]
        self.scheme = "https" if is_ssl(transport) else "http"
        if self.logger.level <= TRACE_LOG_LEVEL:
            prefix = f"{self.client[0]}:{self.client[1]} - " if self.client else ""
            self.logger.log(TRACE_LOG_LEVEL, "%sHTTP connection made", prefix)

    def data_received(self, data: bytes) -> None:
        # The connection's first request (no scope yet), and flagwire's WebSocket protocol.
        if self.scope is None:
            ws_class = self.ws_protocol_class
            if (
                isinstance(ws_class, type)
                and issubclass(ws_class, FlagwireWebSocketProtocol)
                and not self.config.ws_per_message_deflate
            ):
                upgrade = read_upgrade(data)
                if upgrade is not None:
                    self._upgrade(ws_class, upgrade)
                    return
        super().data_received(data)

    def _upgrade(self, ws_class: type[FlagwireWebSocketProtocol], upgrade: Upgrade) -> None:
        """uvicorn's ``handle_websocket_upgrade`` for a request already read."""
        if self.logger.level <= TRACE_LOG_LEVEL:
            prefix = f"{self.client[0]}:{self.client[1]} - " if self.client else ""
            self.logger.log(TRACE_LOG_LEVEL, "%sUpgrading to WebSocket", prefix)
        self._unset_keepalive_if_required()
        self.connections.discard(self)
        protocol = ws_class(
            config=self.config, server_state=self.server_state, app_state=self.app_state
        )
        protocol.connection_made(self.transport)
        protocol._connect(upgrade)
        self.transport.set_protocol(protocol)


def accept_now(ws: WebSocket) -> bytes | None:
    """Accept ``ws`` without an await, if it is a plain upgrade on flagwire's protocol (item 9).

    Returns the 101, which the caller must write before any other byte and
    should write together with its first frames (``b""`` when the peer is
    already gone), or None when nothing was done: then ``await ws.accept()``.
    """
    proto = ws.scope.get(SCOPE_KEY)
    if (
        not isinstance(proto, FlagwireWebSocketProtocol)
        or not proto._accept_pending()
        or ws.client_state is not WebSocketState.CONNECTING
        or ws.application_state is not WebSocketState.CONNECTING
        or not proto.writable.is_set()
        or proto.queue.qsize() != 1
    ):
        return None
    head = proto._accept_head({"type": "websocket.accept", "subprotocol": None, "headers": []})
    if head is None:
        return None
    # What Starlette's accept does around the ASGI round trip: take the connect
    # event (the only one queued), then both sides are connected.
    proto.queue.get_nowait()
    ws.client_state = WebSocketState.CONNECTED
    ws.application_state = WebSocketState.CONNECTED
    return head


def _address(info: object, local: bool) -> tuple[str, int | None] | None:
    """uvicorn's ``get_local_addr`` / ``get_remote_addr`` of what ``getsockname`` /
    ``getpeername`` returned: (host, port) for IP, (path, None) for a local Unix socket."""
    if isinstance(info, tuple):
        return (str(info[0]), int(info[1]))
    if local and isinstance(info, str):
        return (info, None)
    return None


def _between_frames(proto: WebSocketsSansIOProtocol) -> bool:
    """websockets' parser is open, unfailed, outside a fragmented message and holds no bytes."""
    conn = proto.conn
    return (
        conn.state is State.OPEN
        and conn.parser_exc is None
        and conn.current_size is None
        and not conn.reader.buffer
    )


def protocol_of(ws: WebSocket) -> WebSocketsSansIOProtocol | None:
    """The uvicorn sans-I/O protocol behind a WebSocket, or None under other servers.

    flagwire's protocol puts itself in the scope; under plain uvicorn
    ``websockets-sansio`` the protocol is found as the owner of the ASGI
    ``send`` that Starlette keeps in ``WebSocket._send``.
    """
    proto = ws.scope.get(SCOPE_KEY)
    if proto is None:
        proto = getattr(getattr(ws, "_send", None), "__self__", None)
    return proto if isinstance(proto, WebSocketsSansIOProtocol) else None


def transport_of(proto: WebSocketsSansIOProtocol) -> asyncio.Transport:
    """The connection's asyncio transport (written to directly by the fan-out)."""
    return proto.transport


def close_sent(proto: WebSocketsSansIOProtocol) -> bool:
    """True once a close frame went out: nothing may be written after it."""
    return proto.close_sent


def close_now(
    proto: WebSocketsSansIOProtocol, code: int, reason: str, grace: float = CLOSE_GRACE
) -> bool:
    """Write a close frame now, without awaiting a writable transport.

    ``websocket.close`` through ASGI waits until the transport is writable,
    which for a client that stopped reading is never.  This queues the close
    behind what is buffered, tells the app the connection is gone, and aborts
    the transport if the peer has not completed the closing handshake within
    ``grace`` seconds.  Returns False when the connection was already closing.
    """
    transport = proto.transport
    if proto.close_sent or proto.disconnected or transport is None or transport.is_closing():
        return False
    proto.stop_keepalive()
    proto.conn.send_close(code, reason)
    transport.write(b"".join(proto.conn.data_to_send()))
    proto.close_sent = True
    proto.queue.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})
    if proto.read_paused:
        proto.read_paused = False
        transport.resume_reading()
    loop = asyncio.get_running_loop()
    proto.close_timer = loop.call_later(grace, transport.abort)
    return True
