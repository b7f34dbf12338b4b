"""The contract of ``flagwire_server/stream/uvicorn_fence.py`` with uvicorn and Starlette.

The fence subclasses uvicorn's ``websockets-sansio`` protocol, reads and writes
its private state and finds it behind Starlette's ``WebSocket``.  These checks
fail with a plain message naming what changed, so an upgrade past the upper
bounds in pyproject.toml is reviewed instead of breaking the stream at runtime.
"""

from __future__ import annotations

import inspect
from typing import Any

import starlette
import uvicorn
from starlette.websockets import WebSocket
from uvicorn.config import Config
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import ServerState

from flagwire_server.stream import uvicorn_fence
from flagwire_server.stream.uvicorn_fence import FlagwireWebSocketProtocol

#: Methods the fence overrides or calls, with their parameters.
METHODS = {
    "send_receive_event_to_app": ["self"],
    "handle_connect": ["self", "event"],
    "shutdown": ["self"],
    "stop_keepalive": ["self"],
    "send": ["self", "message"],
    "connection_made": ["self", "transport"],
    "data_received": ["self", "data"],
    "run_asgi": ["self"],
    "on_task_complete": ["self", "task"],
    "start_keepalive": ["self"],
}
#: Instance state the fence reads or writes.
ATTRIBUTES = (
    "transport",
    "close_sent",
    "disconnected",
    "handshake_complete",
    "queue",
    "read_paused",
    "close_timer",
    "frames",
    "conn",
    # The plain-upgrade fast path (fence item 7) and connection_made.
    "handshake_initiated",
    "initial_response",
    "writable",
    "tasks",
    "connections",
    "default_headers",
    "app_state",
    "root_path",
    "asgi_version",
    "server",
    "client",
    "scheme",
)


def _broken(what: str) -> str:
    return (
        f"uvicorn {uvicorn.__version__} / starlette {starlette.__version__}: {what}. "
        "flagwire_server/stream/uvicorn_fence.py relies on it: adapt the fence, "
        "then move the upper bound in pyproject.toml"
    )


async def _app(scope: Any, receive: Any, send: Any) -> None:
    """Never called: the protocol only needs a loaded app."""


def _protocol(ws: str = "websockets-sansio") -> Any:
    config = Config(app=_app, ws=ws, ws_per_message_deflate=False, log_config=None)
    config.load()
    return config.ws_protocol_class(config, ServerState(), app_state={})  # type: ignore[misc]


def test_methods_the_fence_overrides_or_calls_keep_their_signatures() -> None:
    for name, params in METHODS.items():
        fn = getattr(WebSocketsSansIOProtocol, name, None)
        assert callable(fn), _broken(f"WebSocketsSansIOProtocol.{name} is gone")
        got = list(inspect.signature(fn).parameters)
        assert got == params, _broken(
            f"WebSocketsSansIOProtocol.{name} takes {got}, the fence passes {params}"
        )
    assert inspect.iscoroutinefunction(WebSocketsSansIOProtocol.send), _broken(
        "WebSocketsSansIOProtocol.send is no longer a coroutine function"
    )


async def test_state_the_fence_reads_and_writes_exists() -> None:
    proto = _protocol()
    for name in ATTRIBUTES:
        assert hasattr(proto, name), _broken(f"WebSocketsSansIOProtocol has no .{name}")
    assert (proto.close_sent, proto.disconnected, proto.read_paused) == (False, False, False), (
        _broken("close_sent / disconnected / read_paused no longer start False")
    )
    assert proto.frames == [], _broken(".frames no longer starts as an empty list")
    for name in ("send_close", "data_to_send"):
        assert callable(getattr(proto.conn, name, None)), _broken(
            f"the protocol's .conn (websockets' ServerProtocol) has no .{name}()"
        )
    assert callable(getattr(proto.queue, "put_nowait", None)), _broken(
        ".queue is not an asyncio.Queue any more"
    )


def test_handshake_still_sets_the_scope_and_response_the_fence_reads() -> None:
    source = inspect.getsource(WebSocketsSansIOProtocol.handle_connect)
    for name in ("self.scope", "self.response"):
        assert name in source, _broken(f"handle_connect no longer sets {name}")


async def test_uvicorn_loads_flagwire_protocol_by_its_dotted_name() -> None:
    from flagwire_server.cli.serve import WS_PROTOCOL

    proto = _protocol(WS_PROTOCOL)
    assert isinstance(proto, FlagwireWebSocketProtocol), _broken(
        f"Config(ws={WS_PROTOCOL!r}) did not load flagwire's protocol class"
    )
    assert uvicorn_fence.close_sent(proto) is False


def test_starlette_websocket_keeps_the_asgi_send_it_was_given() -> None:
    async def send(message: Any) -> None:
        pass

    async def receive() -> Any:
        return {}

    ws = WebSocket({"type": "websocket", "path": "/", "headers": []}, receive, send)
    assert getattr(ws, "_send", None) is send, _broken(
        "starlette's WebSocket no longer keeps the ASGI send as ._send "
        "(protocol_of's plain-uvicorn fallback finds the protocol through it)"
    )


def test_only_the_fence_touches_the_internals() -> None:
    """Other stream modules reach uvicorn's protocol through the fence's functions."""
    from pathlib import Path

    stream = Path(uvicorn_fence.__file__).parent
    for path in sorted(stream.glob("*.py")):
        if path.name == "uvicorn_fence.py":
            continue
        text = path.read_text()
        for needle in ("._send", ".close_sent", "proto.transport", "proto.conn", "proto.queue"):
            assert needle not in text, f"{path.name} touches {needle}: go through uvicorn_fence"


async def test_stream_transports_read_in_chunks_the_heap_can_serve() -> None:
    """Each asyncio read allocates ``max_size`` bytes: above the pinned mmap threshold
    that was an mmap, two page faults and an munmap per client ack (18-24 us, not 2)."""
    import asyncio
    import socket
    from asyncio import selector_events

    from flagwire_server.cli.serve import WS_PROTOCOL
    from flagwire_server.process import MMAP_THRESHOLD
    from flagwire_server.stream.uvicorn_fence import READ_SIZE

    reads = inspect.getsource(selector_events._SelectorSocketTransport._read_ready__data_received)
    assert "self._sock.recv(self.max_size)" in reads, (
        "asyncio's selector transport no longer reads self.max_size bytes per recv(): "
        "FlagwireWebSocketProtocol.connection_made shadows that attribute (fence item 5)"
    )
    assert READ_SIZE < MMAP_THRESHOLD
    ours, theirs = socket.socketpair()
    proto = _protocol(WS_PROTOCOL)
    transport, _ = await asyncio.get_running_loop().connect_accepted_socket(lambda: proto, ours)
    try:
        assert transport.max_size == READ_SIZE  # type: ignore[attr-defined]
    finally:
        transport.abort()
        theirs.close()


_HANDSHAKE = (
    b"GET /api/v1/stream HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def _client_frame(first: int, payload: bytes, mask: bytes = b"\x1f\x2e\x3d\x4c") -> bytes:
    from websockets.utils import apply_mask

    n = len(payload)
    head = bytes((first, 0x80 | n)) if n < 126 else bytes((first, 0xFE)) + n.to_bytes(2, "big")
    return head + mask + apply_mask(payload, mask)


async def test_small_text_frames_skip_the_parser_and_every_frame_still_arrives_in_order() -> None:
    """Fence item 6: however the bytes are cut, on_message gets the same messages in order,
    pings are still answered, and fragments, big frames and control frames go to websockets."""
    import asyncio
    import random
    import socket

    from flagwire_server.cli.serve import WS_PROTOCOL

    acks = [b'{"type":"ack","version":%d}' % v for v in range(1, 5)]
    big = b'{"type":"summary","pad":"' + b"x" * 200 + b'"}'
    fake = b"\x81\x80\0\0\0\0"
    trap = b"A" * 130 + fake + b"B" * 10
    stream = b"".join(
        [
            _client_frame(0x81, acks[0]),
            _client_frame(0x81, acks[1]),
            _client_frame(0x89, b"p"),  # ping
            _client_frame(0x81, acks[2]),
            _client_frame(0x01, b'{"type":'),  # a text message in two fragments
            _client_frame(0x80, b'"resync"}'),
            _client_frame(0x81, big),  # 16-bit length: not for the shortcut
            # A binary frame whose (unmasked) middle looks like a small text frame: cut
            # there, only the parser knows it is inside a frame.
            _client_frame(0x82, trap, mask=b"\0\0\0\0"),
            _client_frame(0x81, acks[3]),
        ]
    )
    want = [acks[0], acks[1], acks[2], b'{"type":"resync"}', big, trap, acks[3]]
    rng = random.Random(6)
    cuts: list[list[int]] = [[], list(range(1, len(stream))), [stream.index(fake)]]
    cuts += [sorted(rng.sample(range(1, len(stream)), k)) for k in (1, 2, 5, 20) for _ in range(5)]
    loop = asyncio.get_running_loop()
    for cut in cuts:
        proto = _protocol(WS_PROTOCOL)
        ours, theirs = socket.socketpair()
        theirs.setblocking(False)
        transport, _ = await loop.connect_accepted_socket(lambda p=proto: p, ours)
        try:
            proto.conn.receive_data(_HANDSHAKE)  # what uvicorn's handle_connect would do
            (request,) = proto.conn.events_received()
            proto.conn.send_response(proto.conn.accept(request))
            proto.conn.data_to_send()
            proto.handshake_complete = True
            got: list[bytes] = []
            proto.on_message = got.append
            for a, b in zip([0, *cut], [*cut, len(stream)], strict=True):
                proto.data_received(stream[a:b])
            assert [bytes(g) for g in got] == want, f"cut at {cut}"
            pong = await asyncio.wait_for(loop.sock_recv(theirs, 64), 5)
            assert pong == b"\x8a\x01p", f"cut at {cut}: the ping got {pong!r}"
        finally:
            transport.abort()
            theirs.close()


#: uvicorn's httptools protocol: what FlagwireHttpProtocol overrides or calls (item 8).
HTTP_METHODS = {
    "connection_made": ["self", "transport"],
    "data_received": ["self", "data"],
    "_unset_keepalive_if_required": ["self"],
}
HTTP_ATTRIBUTES = (
    "scope",
    "ws_protocol_class",
    "config",
    "server_state",
    "app_state",
    "connections",
    "transport",
    "flow",
    "server",
    "client",
    "scheme",
    "logger",
)


async def test_the_http_protocol_the_fence_extends_keeps_its_shape() -> None:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    for name, params in HTTP_METHODS.items():
        fn = getattr(HttpToolsProtocol, name, None)
        assert callable(fn), _broken(f"HttpToolsProtocol.{name} is gone")
        got = list(inspect.signature(fn).parameters)
        assert got == params, _broken(f"HttpToolsProtocol.{name} takes {got}, not {params}")
    config = Config(app=_app, ws="websockets-sansio", log_config=None)
    config.load()
    proto = HttpToolsProtocol(config, ServerState(), app_state={})
    for name in HTTP_ATTRIBUTES:
        assert hasattr(proto, name), _broken(f"HttpToolsProtocol has no .{name}")
    assert proto.scope is None, _broken(
        "HttpToolsProtocol.scope no longer starts as None before the first request"
    )
    source = inspect.getsource(HttpToolsProtocol.handle_websocket_upgrade)
    for step in ("connections.discard", "connection_made", "set_protocol"):
        assert step in source, _broken(f"handle_websocket_upgrade no longer does {step}")


def test_starlette_websocket_states_accept_now_sets() -> None:
    from starlette.websockets import WebSocketState

    ws = WebSocket({"type": "websocket", "path": "/", "headers": []}, _app, _app)
    assert ws.client_state is WebSocketState.CONNECTING, _broken("WebSocket.client_state")
    assert ws.application_state is WebSocketState.CONNECTING, _broken("WebSocket.application_state")
    source = inspect.getsource(WebSocket.accept)
    for needle in ("self.client_state", "receive"):
        assert needle in source, _broken(
            "WebSocket.accept no longer receives the connect event first (accept_now does it)"
        )
