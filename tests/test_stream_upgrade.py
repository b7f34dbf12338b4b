"""The plain-upgrade fast path (``stream/upgrade.py``, fence item 7) against websockets' own.

Two promises: a request the fast path reads is one websockets would accept
with a 101 carrying the same path, headers and ``Sec-WebSocket-Accept``; and
through uvicorn's protocol, flagwire's and plain uvicorn's write the same
bytes and build the same scope for any request — a plain one answered by
the fast path, a garbled or oversized one refused by websockets as before.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
from typing import Any

import httptools
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from uvicorn.config import Config
from uvicorn.server import ServerState
from websockets.http11 import MAX_LINE_LENGTH, MAX_NUM_HEADERS, Request
from websockets.server import ServerProtocol

from flagwire_server.cli.serve import HTTP_PROTOCOL, WS_PROTOCOL
from flagwire_server.stream.upgrade import read_upgrade, switching_protocols
from flagwire_server.stream.uvicorn_fence import SCOPE_KEY
from tests.support.inprocess import InProcessServer

KEY = b"dGhlIHNhbXBsZSBub25jZQ=="
PLAIN = [
    (b"Host", b"127.0.0.1:8080"),
    (b"Upgrade", b"websocket"),
    (b"Connection", b"Upgrade"),
    (b"Sec-WebSocket-Key", KEY),
    (b"Sec-WebSocket-Version", b"13"),
    (b"Authorization", b"Bearer sdk-abc"),
]


def _request(headers: list[tuple[bytes, bytes]], line: bytes = b"GET /s?a=1 HTTP/1.1") -> bytes:
    return line + b"\r\n" + b"".join(n + b": " + v + b"\r\n" for n, v in headers) + b"\r\n"


def _websockets(data: bytes) -> tuple[Request | None, Any]:
    """What websockets makes of ``data``: its request (if it parsed one) and its response."""
    proto = ServerProtocol()
    proto.receive_data(data)
    events = proto.events_received()
    if not events:
        return None, None
    (request,) = events
    assert isinstance(request, Request)
    return request, proto.accept(request)


_names = st.sampled_from(
    [
        b"Host",
        b"Upgrade",
        b"upgrade",
        b"Connection",
        b"Sec-WebSocket-Key",
        b"sec-websocket-key",
        b"Sec-WebSocket-Version",
        b"Origin",
        b"Sec-WebSocket-Protocol",
        b"Sec-WebSocket-Extensions",
        b"Content-Length",
        b"Transfer-Encoding",
        b"X-Thing",
        b"Bad Name",
        b"",
        b"N\xe9",
    ]
)
_values = st.sampled_from(
    [
        b"websocket",
        b"WebSocket",
        b"websocket, h2c",
        b"Upgrade",
        b"keep-alive, Upgrade",
        b"keep-alive,,Upgrade",
        b"upgrade ",
        b" Upgrade\t",
        KEY,
        b"dGhlIHNhbXBsZSBub25jZQ",
        b"AAAAAAAAAAAAAAAAAAAAAAAA",
        b"13",
        b"8",
        b"0",
        b"chat",
        b"permessage-deflate",
        b"",
        b"caf\xe9",
        b"a\x01b",
        b"a\rb",
        b"a\nb",
    ]
)
_lines = st.sampled_from(
    [
        b"GET /s?a=1 HTTP/1.1",
        b"GET /s HTTP/1.0",
        b"POST /s HTTP/1.1",
        b"GET  /s HTTP/1.1",
        b"GET /s%20x?q=%41 HTTP/1.1",
        b"GET /\xe9 HTTP/1.1",
        b"GET /s HTTP/1.1 x",
        b"GET",
    ]
)


@st.composite
def _requests(draw: st.DrawFn) -> bytes:
    headers = list(PLAIN)
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(["add", "drop", "replace"]))
        if op == "add" or not headers:
            headers.insert(draw(st.integers(0, len(headers))), (draw(_names), draw(_values)))
        elif op == "drop":
            del headers[draw(st.integers(0, len(headers) - 1))]
        else:
            i = draw(st.integers(0, len(headers) - 1))
            headers[i] = (headers[i][0], draw(_values))
    return _request(headers, draw(_lines))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_requests())
@example(_request(PLAIN))
@example(_request([*PLAIN, (b"Sec-WebSocket-Key", KEY)]))
@example(_request([*PLAIN, (b"X-Long", b"x" * MAX_LINE_LENGTH)]))
@example(_request([*PLAIN, *[(b"X", b"y")] * MAX_NUM_HEADERS]))
@example(_request(PLAIN) + b"\x81\x80\0\0\0\0")
def test_what_the_fast_path_reads_websockets_accepts_alike(data: bytes) -> None:
    upgrade = read_upgrade(data)
    if upgrade is None:
        return
    request, response = _websockets(data)
    assert request is not None
    assert response.status_code == 101, response
    assert upgrade.target == request.path
    assert upgrade.headers == [
        (k.lower().encode(), v.encode("latin-1")) for k, v in request.headers.raw_items()
    ]
    assert upgrade.accept.decode() == response.headers["Sec-WebSocket-Accept"]


def test_flagwire_clients_requests_take_the_fast_path() -> None:
    assert read_upgrade(_request(PLAIN)) is not None
    # As uvicorn re-serialises what httptools parsed: lower-case names.
    lowered = [(n.lower(), v) for n, v in PLAIN]
    assert read_upgrade(_request(lowered, b"GET /api/v1/stream?since=4&epoch=e HTTP/1.1"))
    # Browsers offer extensions and send an Origin: still plain (no extension is enabled).
    browser = [*PLAIN, (b"Origin", b"https://a.example"), (b"Sec-WebSocket-Extensions", b"x")]
    assert read_upgrade(_request(browser)) is not None


def test_the_101_is_websockets_and_uvicorns() -> None:
    request, response = _websockets(_request(PLAIN))
    assert request is not None
    del response.headers["Date"]
    response.headers.update([("date", "Wed, 02 Dec 2026 10:00:00 GMT"), ("x-a", "b")])
    built = switching_protocols(
        response.headers["Sec-WebSocket-Accept"].encode(),
        [(b"date", b"Wed, 02 Dec 2026 10:00:00 GMT"), (b"X-A", b"b")],
    )
    assert built == response.serialize()


# --- through uvicorn's protocol: flagwire's against plain websockets-sansio ----------


def _protocol(ws: str, app: Any) -> Any:
    config = Config(app=app, ws=ws, ws_per_message_deflate=False, log_config=None)
    config.load()
    return config.ws_protocol_class(config, ServerState(), app_state={})  # type: ignore[misc]


def _pair(tcp: bool) -> tuple[socket.socket, socket.socket]:
    if not tcp:
        return socket.socketpair()
    with socket.create_server(("127.0.0.1", 0)) as server:
        theirs = socket.create_connection(server.getsockname())
        ours, _ = server.accept()
    return ours, theirs


def _app(answer: str, seen: list[dict[str, Any]]) -> Any:
    """An app that records its scope and accepts (sends, closes) or denies with a 403."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope)
        await receive()
        if answer == "accept":
            await send({"type": "websocket.accept", "headers": [(b"x-a", b"b")]})
            await send({"type": "websocket.send", "text": "hi"})
            await send({"type": "websocket.close", "code": 1000})
        else:
            start = {"type": "websocket.http.response.start", "status": 403, "headers": []}
            await send(start)
            await send({"type": "websocket.http.response.body", "body": b"no"})

    return app


async def _talk(proto: Any, tasks: set[Any], data: bytes, tcp: bool) -> tuple[bytes, str]:
    """Feed ``data`` to ``proto`` on a real socket; what the peer reads (without the
    time of day websockets' answers carry), and the protocol the transport ends with."""
    loop = asyncio.get_running_loop()
    ours, theirs = _pair(tcp)
    theirs.setblocking(False)
    transport, _ = await loop.connect_accepted_socket(lambda: proto, ours)
    try:
        proto.data_received(data)
        await asyncio.sleep(0)
        for _ in range(50):
            if not tasks:
                break
            await asyncio.sleep(0.01)
        got = b""
        while True:
            try:
                chunk = await asyncio.wait_for(loop.sock_recv(theirs, 65536), 0.3)
            except TimeoutError:
                break
            if not chunk:
                break
            got += chunk
        upgraded = type(transport.get_protocol()).__name__
    finally:
        transport.abort()
        theirs.close()
    return re.sub(rb"(?i)Date: [^\r]*\r\n", b"", got), upgraded


def _scope_of(seen: list[dict[str, Any]]) -> dict[str, Any] | None:
    scope = dict(seen[0]) if seen else None
    if scope is not None:
        scope.pop(SCOPE_KEY, None)
    return scope


async def _exchange(
    ws: str, data: bytes, answer: str, tcp: bool = False
) -> tuple[bytes, dict[str, Any] | None]:
    """Feed ``data`` as uvicorn's HTTP protocol would; what the peer reads, and the scope."""
    seen: list[dict[str, Any]] = []
    proto = _protocol(ws, _app(answer, seen))
    got, _ = await _talk(proto, proto.tasks, data, tcp)
    return got, _scope_of(seen)


_CASES = [
    _request(PLAIN),
    _request([(n.lower(), v) for n, v in PLAIN], b"GET /s%20x?since=3&epoch=e%41 HTTP/1.1"),
    _request([*PLAIN, (b"Origin", b"https://a.example"), (b"Sec-WebSocket-Extensions", b"x")]),
    # Refused by websockets, through the fallback, exactly as before.
    _request([*PLAIN, (b"Sec-WebSocket-Key", KEY)]),
    _request([(n, v) for n, v in PLAIN if n != b"Sec-WebSocket-Key"]),
    _request([(n, b"12" if n == b"Sec-WebSocket-Version" else v) for n, v in PLAIN]),
    _request([(n, b"short" if n == b"Sec-WebSocket-Key" else v) for n, v in PLAIN]),
    _request([(n, v) for n, v in PLAIN if n != b"Upgrade"]),
    _request([(n, b"keep-alive" if n == b"Connection" else v) for n, v in PLAIN]),
    _request([*PLAIN, (b"Origin", b"a"), (b"Origin", b"b")]),
    _request([*PLAIN, (b"Sec-WebSocket-Protocol", b"a b")]),
    _request([*PLAIN, (b"Content-Length", b"3")]),
    _request([*PLAIN, (b"X-Long", b"x" * MAX_LINE_LENGTH)]),
    _request([*PLAIN, *[(b"X", b"y")] * (MAX_NUM_HEADERS + 1)]),
    _request([*PLAIN, (b"Bad Name", b"x")]),
    _request([*PLAIN, (b"X-Latin", b"caf\xe9")]),
    _request(PLAIN, b"POST /s HTTP/1.1"),
    _request(PLAIN, b"GET /s HTTP/1.0"),
    _request(PLAIN)[:-2],  # incomplete: nothing is answered
    b"\x16\x03\x01garbage\r\n\r\n",
]


async def test_flagwire_and_uvicorn_answer_every_request_alike() -> None:
    for data in _CASES:
        for answer in ("accept", "deny"):
            plain = await _exchange("websockets-sansio", data, answer)
            ours = await _exchange(WS_PROTOCOL, data, answer)
            for got in (plain, ours):
                if got[1] is not None:
                    # Fed directly, websockets keeps names as sent and the fast path lower-cases
                    # them (as ASGI wants); behind uvicorn's HTTP protocol, as in a server, both
                    # get them lower-cased (compared from the socket further down).
                    got[1]["headers"] = [(n.lower(), v) for n, v in got[1]["headers"]]
            assert ours == plain, (data, answer)
    fast = sum(read_upgrade(data) is not None for data in _CASES)
    assert fast == 3, "the first three cases are plain and exercise the fast path"


async def test_over_tcp_the_scope_names_the_same_addresses() -> None:
    plain = await _exchange("websockets-sansio", _CASES[1], "accept", tcp=True)
    ours = await _exchange(WS_PROTOCOL, _CASES[1], "accept", tcp=True)
    assert ours[1] is not None
    assert ours[1]["client"][0] == "127.0.0.1"
    # Ports differ between the two connections; everything else is the same.
    for got in (plain, ours):
        assert got[1] is not None
        for end in ("client", "server"):
            assert got[1][end][1] > 0
            got[1][end] = (got[1][end][0], 0)
    assert ours == plain


async def test_the_app_hands_stream_handshakes_to_the_routed_endpoint() -> None:
    """The app's shortcut for the stream path calls the endpoint its route table names."""
    from starlette.routing import WebSocketRoute

    from flagwire.core.limits import STREAM_PATH
    from flagwire_server.app import create_app
    from flagwire_server.config import Settings
    from flagwire_server.stream import endpoint

    app = create_app(Settings.from_env({}, redis_url="redis://127.0.0.1:1/0"))
    (route,) = [r for r in app.routes if getattr(r, "path", None) == STREAM_PATH]
    assert isinstance(route, WebSocketRoute)
    assert route.endpoint is endpoint.stream_endpoint


async def test_the_fast_accept_makes_no_log_record_the_servers_logging_would_drop() -> None:
    """A record built and then dropped by QuietStreamsFilter cost about 7 µs, two per
    accepted stream (5% of a resume in a storm).  With the server's logging (its
    handler filtered, ``observability.logs.log_config``) they are not made; at debug
    level, or with other logging, they are."""
    from flagwire_server.observability.logs import QuietStreamsFilter

    made: list[str] = []

    class Count(logging.Filter):  # a logger's own filters see every record it makes
        def filter(self, record: logging.LogRecord) -> bool:
            made.append(str(record.msg))
            return False

    async def per_handshake() -> int:
        made.clear()
        await _exchange(WS_PROTOCOL, _CASES[0], "accept")
        return sum(m.endswith(("[accepted]", "connection open")) for m in made)

    uv, fw = logging.getLogger("uvicorn.error"), logging.getLogger("flagwire")
    saved = (uv.handlers, uv.propagate, uv.level, fw.level)
    quiet = logging.NullHandler()
    quiet.addFilter(QuietStreamsFilter())
    count = Count()
    uv.addFilter(count)
    uv.setLevel(logging.INFO)
    fw.setLevel(logging.INFO)
    try:
        uv.handlers, uv.propagate = [], True  # the test process's logging
        assert await per_handshake() == 2
        uv.handlers, uv.propagate = [quiet], False  # the server's
        assert await per_handshake() == 0
        fw.setLevel(logging.DEBUG)  # debug keeps everything
        assert await per_handshake() == 2
    finally:
        uv.removeFilter(count)
        uv.handlers, uv.propagate = saved[0], saved[1]
        uv.setLevel(saved[2])
        fw.setLevel(saved[3])


# --- the HTTP protocol's hand-over (fence item 8) and the 101 with hello (item 9) ------


class _Parsed:
    """What uvicorn's HTTP protocol hears from httptools, as its WebSocket protocol passes it on."""

    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        # uvicorn lower-cases names; httptools keeps trailing blanks, which websockets
        # strips when it reads the request uvicorn re-serialises for it.
        self.headers.append((name.lower(), value.strip(b" \t")))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_requests())
@example(_request(PLAIN))
@example(_request([*PLAIN, (b"X", b" padded \t")]))
def test_what_the_fast_path_reads_httptools_reads_alike(data: bytes) -> None:
    """The HTTP protocol hands a request over unparsed only if httptools would have
    read the same upgrade: method, version, target and headers (as uvicorn keeps them)."""
    upgrade = read_upgrade(data)
    if upgrade is None:
        return
    parsed = _Parsed()
    parser = httptools.HttpRequestParser(parsed)
    try:
        parser.feed_data(data)
    except httptools.HttpParserUpgrade:
        pass
    else:
        raise AssertionError("httptools did not see an upgrade")
    assert (parser.get_method(), parser.get_http_version()) == (b"GET", "1.1")
    assert parsed.url.decode() == upgrade.target
    assert parsed.headers == upgrade.headers


async def _exchange_http(http: str, ws: str, data: bytes, answer: str) -> Any:
    """As :func:`_exchange`, from the bytes uvicorn's HTTP protocol reads off the socket;
    also the protocol the transport ends with, and the HTTP protocol."""
    seen: list[dict[str, Any]] = []
    config = Config(
        app=_app(answer, seen), http=http, ws=ws, ws_per_message_deflate=False, log_config=None
    )
    config.load()
    state = ServerState()
    proto = config.http_protocol_class(config=config, server_state=state, app_state={})
    got, upgraded = await _talk(proto, state.tasks, data, tcp=False)
    return got, _scope_of(seen), upgraded, proto


async def test_flagwire_and_uvicorn_answer_every_request_alike_from_the_socket() -> None:
    """Through the HTTP protocol: the same bytes back and the same scope, whether the
    request was handed over unparsed (plain) or went through httptools as before."""
    for data in _CASES:
        for answer in ("accept", "deny"):
            plain = await _exchange_http("httptools", "websockets-sansio", data, answer)
            ours = await _exchange_http(HTTP_PROTOCOL, WS_PROTOCOL, data, answer)
            assert ours[:2] == plain[:2], (data, answer)


async def test_a_plain_upgrade_skips_httptools() -> None:
    from flagwire_server.stream.uvicorn_fence import FlagwireWebSocketProtocol

    _, scope, upgraded, http = await _exchange_http(HTTP_PROTOCOL, WS_PROTOCOL, _CASES[0], "accept")
    assert scope is not None
    assert upgraded == FlagwireWebSocketProtocol.__name__
    assert http.scope is None  # httptools' callbacks never ran (on_message_begin makes it)
    # Not plain (a subprotocol): httptools reads it, and the upgrade happens as uvicorn's.
    chat = _request([*PLAIN, (b"Sec-WebSocket-Protocol", b"chat")])
    _, scope, upgraded, http = await _exchange_http(HTTP_PROTOCOL, WS_PROTOCOL, chat, "accept")
    assert scope is not None
    assert upgraded == FlagwireWebSocketProtocol.__name__
    assert http.scope is not None


async def test_the_101_and_the_greeting_leave_in_one_write(
    inprocess_server: InProcessServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A resume is one system call out (and one read for the client), not two."""
    from asyncio import selector_events

    from flagwire.core.limits import STREAM_PATH
    from tests.support.builders import flag
    from tests.support.invariants import Admin, wait_key_known

    server = inprocess_server
    admin = Admin(server.url, server.admin_key)
    try:
        assert (await admin.put_flag("production", flag("k0"))).acked
        _, sdk = await admin.create_key("sdk", "production", name="one write")
        await wait_key_known([server.ws_url], sdk)
    finally:
        await admin.aclose()

    written: list[bytes] = []
    write = selector_events._SelectorSocketTransport.write

    def recording(self: Any, data: Any) -> None:
        if self.get_extra_info("sockname")[1] == server.port:
            written.append(bytes(data))
        write(self, data)

    monkeypatch.setattr(selector_events._SelectorSocketTransport, "write", recording)

    def greeting(query: str) -> bytes:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
            s.sendall(
                _request(
                    [
                        (n, b"Bearer " + sdk.encode() if n == b"Authorization" else v)
                        for n, v in PLAIN
                    ],
                    f"GET {STREAM_PATH}{query} HTTP/1.1".encode(),
                )
            )
            got = b""
            while b'"type":"hello"' not in got:
                got += s.recv(65536)
            return got

    for query in ("", "?since=1&epoch=x"):  # a snapshot, then a resume with a wrong epoch
        written.clear()
        got = await asyncio.to_thread(greeting, query)
        assert got.startswith(b"HTTP/1.1 101 "), got
        await asyncio.sleep(0.2)
        first = written[0]
        assert first.startswith(b"HTTP/1.1 101 "), written
        assert b'"type":"hello"' in first, written
        assert b'"type":"snapshot"' in first, written
