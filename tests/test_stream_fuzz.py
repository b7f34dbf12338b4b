"""Fuzzing the live stream endpoint: random bytes and random JSON, text and binary frames.

Each example opens a stream on a real ``flagwire serve`` with a valid SDK
key and sends one frame.  What the server must do is decided by the
protocol's own decoder (``flagwire.core.protocol.decode``):

* a frame over ``MAX_CLIENT_FRAME`` bytes: close 1009 with a reason;
* a frame that is not a valid message, or a message only servers send: close
  4002 with a reason;
* a valid ``ack`` or ``resync``: the stream stays open (it still answers a ping).

Never a crash, never a silent drop: every refusal is a close frame with a
code and a reason.  After the run the server still serves a normal client,
and it logged no error.  Bounded: 60 examples, about 10-20 s.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import websockets
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from flagwire.core.errors import ProtocolError
from flagwire.core.limits import MAX_CLIENT_FRAME
from flagwire.core.protocol import Ack, CloseCode, Resync, decode
from tests.support.builders import flag
from tests.support.invariants import Admin, RawSubscriber, poll, wait_key_known
from tests.support.server import ServerProcess

pytestmark = pytest.mark.timeout(120)

ENV = "production"

_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5)
    ),
    max_leaves=20,
)
_types = st.sampled_from(
    ["ack", "resync", "hello", "snapshot", "patch", "delete", "error", "nonsense", ""]
)
_message_like = st.builds(
    lambda t, fields: {"type": t, **fields},
    _types,
    st.dictionaries(
        st.sampled_from(
            [
                "version",
                "key",
                "kind",
                "data",
                "env",
                "epoch",
                "flags",
                "segments",
                "protocol",
                "code",
                "message",
            ]
        ),
        _json,
        max_size=5,
    ),
)
_payload = st.one_of(
    st.binary(max_size=256),
    st.binary(min_size=MAX_CLIENT_FRAME - 8, max_size=MAX_CLIENT_FRAME + 64),
    st.text(max_size=256),
    # json, not orjson: integers beyond 64 bits must reach the server too.
    _json.map(json.dumps),
    _message_like.map(json.dumps),
)
_frame = st.tuples(_payload, st.booleans())  # (payload, send text payloads as binary)


def expected(data: str | bytes) -> set[int] | None:
    """Close codes allowed for ``data``; None: the stream must stay open."""
    raw = data.encode() if isinstance(data, str) else data
    if len(raw) > MAX_CLIENT_FRAME:
        return {CloseCode.MESSAGE_TOO_BIG}
    try:
        msg = decode(raw, max_size=MAX_CLIENT_FRAME)
    except ProtocolError:
        return {CloseCode.BAD_MESSAGE}
    if isinstance(msg, Ack | Resync):
        return None
    return {CloseCode.BAD_MESSAGE}


async def _one(ws_url: str, key: str, data: str | bytes) -> tuple[int | None, str, bool]:
    """Send one frame; returns (close code, reason, still open)."""
    async with websockets.connect(
        ws_url,
        additional_headers={"Authorization": f"Bearer {key}"},
        compression=None,
        max_size=None,
        open_timeout=5,
        close_timeout=2,
    ) as ws:
        await ws.recv()  # hello
        await ws.send(data)
        try:
            async with asyncio.timeout(0.3 if expected(data) is None else 5):
                async for _msg in ws:
                    pass
        except TimeoutError:
            pong = await ws.ping()
            await asyncio.wait_for(pong, 3)
            return None, "", True
        except websockets.ConnectionClosed:
            pass
        rcvd = ws.protocol.close_rcvd
        return (rcvd.code, rcvd.reason, False) if rcvd else (None, "no close frame", False)


@pytest.fixture
def fuzz_target(server: ServerProcess) -> tuple[ServerProcess, str]:
    async def setup() -> str:
        admin = Admin(server.url, server.admin_key)
        try:
            assert (await admin.put_flag(ENV, flag("k0"))).acked
            _id, sdk = await admin.create_key("sdk", ENV)
            await wait_key_known([server.ws_url], sdk)
            return sdk
        finally:
            await admin.aclose()

    return server, asyncio.run(setup())


def test_stream_survives_random_frames(fuzz_target: tuple[ServerProcess, str]) -> None:
    server, sdk = fuzz_target
    seen: list[Any] = []

    @settings(
        max_examples=60,
        deadline=None,
        database=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.function_scoped_fixture,
        ],
    )
    @given(_frame)
    @example(("not json", False))
    @example(('{"type":"ack","version":1}', False))
    # The endpoint's ack fast path must answer exactly as the decoder does:
    @example(('{"type":"ack","version":0}', True))
    @example(('{"type":"ack","version":01}', False))
    @example(('{"type":"ack","version":}', False))
    @example(('{"type":"ack","version":1a}', True))
    @example(('{"type":"ack","version":123456789012345678}', False))
    @example(('{"type":"ack","version":99999999999999999999}', False))
    @example(('{"type":"resync"}', True))
    @example(("x" * (MAX_CLIENT_FRAME + 1), False))
    @example((b"\xff\xfe\x00garbage", False))
    def run(frame: tuple[str | bytes, bool]) -> None:
        payload, as_binary = frame
        data: str | bytes = payload.encode() if as_binary and isinstance(payload, str) else payload
        want = expected(data)
        code, reason, still_open = asyncio.run(_one(server.ws_url, sdk, data))
        seen.append(want)
        if want is None:
            assert still_open, f"a valid {data!r:.80} closed the stream with {code} {reason!r}"
        else:
            assert not still_open, f"{data!r:.80} left the stream open"
            assert code in want, f"{data!r:.80} closed with {code} {reason!r}, want {want}"
            assert reason, f"{data!r:.80} closed with {code} but no reason"

    run()
    assert server.running, "the server process died"
    assert any(w is None for w in seen), "no example kept the stream open"
    assert any(w for w in seen), "no example closed the stream"

    async def normal_client() -> None:
        admin = Admin(server.url, server.admin_key)
        sub = RawSubscriber(server.ws_url, sdk, "after-fuzz", timeout=5).start()
        try:
            await asyncio.wait_for(sub.first.wait(), 10)
            w = await admin.put_flag(ENV, flag("k0", on=False))
            assert w.acked
            await poll(
                lambda: sub.version == w.env_version,
                10,
                "a normal client to get a change after the fuzzing",
            )
            assert sub.flags["k0"]["on"] is False
        finally:
            await sub.close()
            await admin.aclose()

    asyncio.run(normal_client())
    errors = [r for r in server.log_records() if r.get("level") in ("error", "critical")]
    assert not errors, f"the server logged errors while fuzzed: {errors[:3]}"
