"""Security promises, against a real ``flagwire serve`` (issue 6, "Fuzzing and security tests").

* Browser Origins not on the allow-list are refused at the handshake (403).
* Keys never appear in the server's output: everything the process wrote to
  stdout and stderr (debug level) during a run that creates keys, uses them,
  fails authentication with near-misses and revokes them is searched for
  every secret.
* Repeated bad keys are rate-limited: 429 on the REST API, and refused (429)
  at the stream handshake.
* Compression is off, or bounded: a client offering permessage-deflate is not
  given it, and a compressed frame sent anyway is refused without being
  inflated (or, if negotiated, cannot expand past the frame limit).
* SDK keys cannot call admin routes (403), and nothing is stored.
* Keys are stored only hashed: Redis holds no secret (but does hold its SHA-256).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import socket
import struct
import zlib
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
import websockets

from flagwire import ClientStatus, FlagClient
from flagwire.core.limits import MAX_CLIENT_FRAME, STREAM_PATH
from flagwire.core.protocol import CloseCode
from tests.support.builders import flag
from tests.support.inprocess import InProcessServer
from tests.support.invariants import Admin, RawSubscriber, poll, wait_key_known
from tests.support.server import ServerProcess

pytestmark = pytest.mark.timeout(90)

ENV = "production"
ALLOWED = "https://app.example.com"


async def _handshake(ws_url: str, key: str | None, headers: dict[str, str] | None = None) -> int:
    """HTTP status of the stream handshake (101 when accepted)."""
    all_headers = dict(headers or {})
    if key is not None:
        all_headers["Authorization"] = f"Bearer {key}"
    try:
        ws = await websockets.connect(
            ws_url, additional_headers=all_headers, compression=None, open_timeout=5, max_size=None
        )
    except websockets.InvalidStatus as exc:
        return exc.response.status_code
    await ws.close()
    return 101


async def _setup(server: ServerProcess | InProcessServer) -> tuple[Admin, str, str]:
    admin = Admin(server.url, server.admin_key)
    assert (await admin.put_flag(ENV, flag("k0"))).acked
    key_id, sdk = await admin.create_key("sdk", ENV, name="security sdk")
    await wait_key_known([server.ws_url], sdk)
    return admin, key_id, sdk


async def test_wrong_origin_is_refused_at_the_handshake(
    make_server: Callable[..., ServerProcess],
) -> None:
    server = make_server(env={"FLAGWIRE_ALLOWED_ORIGINS": ALLOWED})
    admin, _id, sdk = await _setup(server)
    try:
        same = f"http://127.0.0.1:{server.port}"
        got = {
            "evil": await _handshake(server.ws_url, sdk, {"Origin": "https://evil.example"}),
            "null": await _handshake(server.ws_url, sdk, {"Origin": "null"}),
            "lookalike": await _handshake(
                server.ws_url, sdk, {"Origin": ALLOWED + ".evil.example"}
            ),
            "other port": await _handshake(
                server.ws_url, sdk, {"Origin": f"http://127.0.0.1:{server.port + 1}"}
            ),
            "evil, bad key": await _handshake(
                server.ws_url, "nope", {"Origin": "https://evil.example"}
            ),
            "allowed": await _handshake(server.ws_url, sdk, {"Origin": ALLOWED}),
            "same origin": await _handshake(server.ws_url, sdk, {"Origin": same}),
            "no origin": await _handshake(server.ws_url, sdk),
        }
        want = {
            "evil": 403,
            "null": 403,
            "lookalike": 403,
            "other port": 403,
            "evil, bad key": 403,
            "allowed": 101,
            "same origin": 101,
            "no origin": 101,
        }
        assert got == want
    finally:
        await admin.aclose()


async def test_keys_never_appear_in_logs(make_server: Callable[..., ServerProcess]) -> None:
    server = make_server(env={"FLAGWIRE_LOG_LEVEL": "debug", "FLAGWIRE_LOG_FORMAT": "json"})
    admin, sdk_id, sdk = await _setup(server)
    secrets_used = [server.admin_key, sdk]
    try:
        admin_id, admin2 = await admin.create_key("admin", None, name="second admin")
        secrets_used.append(admin2)
        await poll(lambda: _accepted(admin, admin2), 10, "the new admin key to be accepted")
        # Authenticated use: a stream, a FlagClient, REST with each key.
        sub = RawSubscriber(server.ws_url, sdk, "logged").start()
        await asyncio.wait_for(sub.first.wait(), 10)
        async with FlagClient(server.url, sdk, start_timeout=10) as client:
            assert client.status is ClientStatus.READY
        r = await admin.request(
            "POST",
            f"/environments/{ENV}/evaluate",
            {"context": {"key": "u"}, "flag": "k0"},
            key=sdk,
        )
        assert r.status_code == 200, r.text
        assert (await admin.request("GET", "/environments", key=admin2)).status_code == 200
        # Failed authentication with near-misses (a typo'd key is nearly the key).
        near = [sdk + "x", sdk[:-1], admin2.upper(), "hunter2-correct-horse-battery"]
        secrets_used.extend(near)
        for bad in near:
            assert (await admin.request("GET", "/environments", key=bad)).status_code == 401
            assert await _handshake(server.ws_url, bad) == 401
        # A key in the wrong place: the URL (it must still not be logged).
        async with httpx.AsyncClient() as http:
            await http.get(f"{server.url}/api/v1/environments?api_key={sdk}")
        assert await _handshake(server.ws_url + f"?key={admin2}", None) == 401
        assert await _handshake(server.ws_url, None, {"Authorization": f"Token {sdk}"}) == 401
        # SDK key on an admin route; then revocation and use of the revoked keys.
        assert (await admin.request("GET", "/keys", key=sdk)).status_code == 403
        for key_id in (sdk_id, admin_id):
            assert (await admin.request("DELETE", f"/keys/{key_id}")).status_code == 200
        await poll(lambda: sub.closes, 5, "the revoked key's stream to close")
        await poll(lambda: _refused(server.ws_url, sdk), 5, "the revoked SDK key to be refused")
        assert (await admin.request("GET", "/environments", key=admin2)).status_code == 401
        await sub.close()
    finally:
        await admin.aclose()
    server.stop()  # flush everything the process had to say
    output = server.output()
    assert len(output) > 1000, "the server wrote almost nothing: is output captured?"
    leaks = []
    for secret in secrets_used:
        for needle in {secret, secret.split("_", 2)[-1]}:
            if len(needle) >= 12 and needle in output:
                line = next(ln for ln in output.splitlines() if needle in ln)
                leaks.append(f"{secret[:10]}...: {line[:200]}")
    assert not leaks, "keys found in the server's logs:\n" + "\n".join(leaks)


async def _accepted(admin: Admin, key: str) -> bool:
    return (await admin.request("GET", "/environments", key=key)).status_code == 200


async def _refused(ws_url: str, key: str) -> bool:
    return await _handshake(ws_url, key) in (401, 403)


async def test_repeated_bad_keys_are_rate_limited(
    make_server: Callable[..., ServerProcess],
) -> None:
    rest = make_server(env={"FLAGWIRE_AUTH_FAIL_LIMIT": "5"})
    async with httpx.AsyncClient(timeout=5) as http:
        statuses = []
        for i in range(12):
            r = await http.get(
                f"{rest.url}/api/v1/environments",
                headers={"Authorization": f"Bearer fw_admin_guess{i:04d}"},
            )
            statuses.append(r.status_code)
            if r.status_code == 429:
                assert r.headers.get("retry-after"), "429 without Retry-After"
                assert r.headers["content-type"].startswith("application/problem+json")
    assert set(statuses) <= {401, 429}, statuses
    assert 429 in statuses[:8], f"REST: no 429 after repeated bad keys: {statuses}"
    first = statuses.index(429)
    assert all(s == 429 for s in statuses[first:]), statuses

    stream = make_server(env={"FLAGWIRE_AUTH_FAIL_LIMIT": "5"})
    codes = [await _handshake(stream.ws_url, f"fw_sdk_guess{i:04d}") for i in range(12)]
    assert set(codes) <= {401, 429}, codes
    assert 429 in codes[:8], f"stream: no refusal after repeated bad keys: {codes}"
    first = codes.index(429)
    assert all(c == 429 for c in codes[first:]), codes


def _frame(payload: bytes, *, opcode: int = 0x1, rsv1: bool = False) -> bytes:
    """A masked client frame."""
    head = bytes([0x80 | (0x40 if rsv1 else 0) | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    mask = os.urandom(4)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def _read_close(s: socket.socket) -> tuple[int | None, str]:
    """Read server frames until a close frame; its (code, reason), or (None, why)."""
    buf = b""

    def need(n: int) -> bool:
        nonlocal buf
        while len(buf) < n:
            chunk = s.recv(65536)
            if not chunk:
                return False
            buf += chunk
        return True

    while True:
        if not need(2):
            return None, "connection ended without a close frame"
        opcode, n = buf[0] & 0x0F, buf[1] & 0x7F
        off = 2
        if n == 126:
            if not need(4):
                return None, "truncated"
            n, off = struct.unpack("!H", buf[2:4])[0], 4
        elif n == 127:
            if not need(10):
                return None, "truncated"
            n, off = struct.unpack("!Q", buf[2:10])[0], 10
        if not need(off + n):
            return None, "truncated"
        payload, buf = buf[off : off + n], buf[off + n :]
        if opcode == 0x8:
            code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
            return code, payload[2:].decode(errors="replace")


def _deflate_probe(port: int, key: str) -> dict[str, Any]:
    """Offer permessage-deflate, then send a compressed frame that inflates to 1 MiB."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        nonce = base64.b64encode(os.urandom(16)).decode()
        s.sendall(
            (
                f"GET {STREAM_PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {nonce}\r\nSec-WebSocket-Version: 13\r\n"
                "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
                f"Authorization: Bearer {key}\r\n\r\n"
            ).encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = s.recv(1)
            assert chunk, "closed during the handshake"
            head += chunk
        lines = head.decode("latin-1").split("\r\n")
        assert lines[0].startswith("HTTP/1.1 101"), lines[0]
        headers = {
            k.strip().lower(): v.strip()
            for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)
        }
        negotiated = "permessage-deflate" in headers.get("sec-websocket-extensions", "")
        bomb = b'{"type":"ack","version":0}' + b" " * (1 << 20)
        c = zlib.compressobj(9, zlib.DEFLATED, -15)
        compressed = c.compress(bomb) + c.flush(zlib.Z_SYNC_FLUSH)
        assert compressed.endswith(b"\x00\x00\xff\xff")
        s.sendall(_frame(compressed[:-4], rsv1=True))
        code, reason = _read_close(s)
        return {
            "negotiated": negotiated,
            "code": code,
            "reason": reason,
            "compressed": len(compressed),
            "headers": headers,
        }
    finally:
        s.close()


async def test_compression_is_off_or_bounded(inprocess_server: InProcessServer) -> None:
    server = inprocess_server
    admin, _id, sdk = await _setup(server)
    try:
        # What a default websockets client (which offers permessage-deflate) is given.
        async with websockets.connect(
            server.ws_url, additional_headers={"Authorization": f"Bearer {sdk}"}, open_timeout=5
        ) as ws:
            offered = ws.request.headers.get("Sec-WebSocket-Extensions", "")
            granted = ws.response.headers.get("Sec-WebSocket-Extensions")
        assert "permessage-deflate" in offered
        probe = await asyncio.to_thread(_deflate_probe, server.port, sdk)
        assert probe["compressed"] < 2048  # a small frame ...
        if granted is None and not probe["negotiated"]:
            # ... sent compressed without negotiation is a protocol error, never inflated.
            assert probe["code"] == CloseCode.PROTOCOL_ERROR, probe
        else:
            # ... cannot expand past the frame limit.
            assert probe["code"] == CloseCode.MESSAGE_TOO_BIG, probe
        assert probe["reason"], probe
        assert server.running
        status, _ = server.get("/readyz")
        assert status == 200
        assert MAX_CLIENT_FRAME < 1 << 20
    finally:
        await admin.aclose()


async def test_sdk_keys_cannot_call_admin_routes(inprocess_server: InProcessServer) -> None:
    server = inprocess_server
    admin, key_id, sdk = await _setup(server)
    try:
        before = (await admin.request("GET", f"/environments/{ENV}/flags/k0")).json()
        calls: list[tuple[str, str, Any]] = [
            ("GET", "/environments", None),
            ("POST", "/environments", {"key": "sneaky", "name": "x"}),
            ("DELETE", f"/environments/{ENV}", None),
            ("GET", f"/environments/{ENV}/flags", None),
            ("GET", f"/environments/{ENV}/flags/k0", None),
            ("POST", f"/environments/{ENV}/flags", flag("sneaky")),
            ("PUT", f"/environments/{ENV}/flags/k0", flag("k0", on=False)),
            ("PATCH", f"/environments/{ENV}/flags/k0", {"on": False}),
            ("DELETE", f"/environments/{ENV}/flags/k0", None),
            ("POST", f"/environments/{ENV}/flags/k0/restore", {"version": 1}),
            ("GET", f"/environments/{ENV}/audit", None),
            ("GET", "/keys", None),
            ("POST", "/keys", {"name": "escalate", "kind": "admin"}),
            ("DELETE", f"/keys/{key_id}", None),
        ]
        wrong = {}
        for method, path, body in calls:
            r = await admin.request(method, path, body, key=sdk)
            problem = r.headers.get("content-type", "").startswith("application/problem+json")
            if r.status_code != 403 or not problem:
                wrong[f"{method} {path}"] = (r.status_code, r.text[:120])
        assert not wrong, f"an SDK key was not refused with a 403 problem: {wrong}"
        after = (await admin.request("GET", f"/environments/{ENV}/flags/k0")).json()
        assert after == before
        envs = (await admin.request("GET", "/environments")).text
        assert "sneaky" not in envs
        keys = (await admin.request("GET", "/keys")).json()
        assert not [k for k in keys["keys"] if k.get("name") == "escalate"]
        assert await _handshake(server.ws_url, sdk) == 101  # the key itself still works
    finally:
        await admin.aclose()


async def test_keys_are_stored_only_hashed(
    inprocess_server: InProcessServer, redis_url: str
) -> None:
    server = inprocess_server
    admin, _id, sdk = await _setup(server)
    try:
        _aid, admin2 = await admin.create_key("admin", None, name="hashed admin")
    finally:
        await admin.aclose()
    r = aioredis.Redis.from_url(redis_url)
    try:
        dump = b""
        async for name in r.scan_iter(match=f"{server.prefix}:*", count=1000):
            kind = (await r.type(name)).decode()
            dump += name + b"\n"
            if kind == "string":
                dump += await r.get(name) or b""
            elif kind == "hash":
                for k, v in (await r.hgetall(name)).items():
                    dump += k + b"=" + v + b"\n"
            elif kind == "list":
                dump += b"\n".join(await r.lrange(name, 0, -1))
            elif kind == "set":
                dump += b"\n".join(await r.smembers(name))
            elif kind == "zset":
                dump += b"\n".join(m for m, _s in await r.zrange(name, 0, -1, withscores=True))
            elif kind == "stream":
                for _i, fields in await r.xrange(name):
                    dump += b"\n".join(k + b"=" + v for k, v in fields.items())
    finally:
        await r.aclose()
    for secret in (sdk, admin2):
        assert secret.encode() not in dump, f"{secret[:10]}... stored in clear in Redis"
        assert secret.split("_", 2)[-1].encode() not in dump, "a secret's random part is stored"
        digest = hashlib.sha256(secret.encode()).hexdigest().encode()
        assert digest in dump, "the key's SHA-256 is not where docs/design.md says"
