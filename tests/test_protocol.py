"""Wire protocol: frame tables, round trips and a decoder that only raises ProtocolError."""

from __future__ import annotations

import contextlib
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flagwire.core.errors import ProtocolError
from flagwire.core.limits import MAX_CLIENT_FRAME, PROTOCOL_VERSION
from flagwire.core.protocol import (
    Ack,
    CloseCode,
    Delete,
    Error,
    Hello,
    Message,
    Patch,
    Resync,
    SnapshotMessage,
    decode,
    encode,
    patch_template,
)

DOC = {"key": "f", "on": True}

VALID: list[tuple[bytes, Message]] = [
    (
        b'{"type":"hello","protocol":1,"env":"prod","epoch":"e1","version":3,"heartbeat":15}',
        Hello(env="prod", epoch="e1", version=3, heartbeat=15.0),
    ),
    (
        b'{"type":"hello","protocol":1,"server":"x","env":"p","epoch":"","version":0}',
        Hello(env="p", epoch="", version=0, server="x"),
    ),
    (
        b'{"type":"snapshot","env":"p","epoch":"e","version":2,"flags":{"f":{"key":"f","on":true}},'
        b'"segments":{}}',
        SnapshotMessage(env="p", epoch="e", version=2, flags={"f": DOC}, segments={}),
    ),
    (
        b'{"type":"patch","kind":"flag","key":"f","data":{"key":"f","on":true},"version":4}',
        Patch(kind="flag", key="f", data=DOC, version=4),
    ),
    (
        b'{"type":"patch","kind":"segment","key":"s","data":{"key":"s"},"version":5}',
        Patch(kind="segment", key="s", data={"key": "s"}, version=5),
    ),
    (
        b'{"type":"delete","kind":"flag","key":"f","version":6}',
        Delete(kind="flag", key="f", version=6),
    ),
    (
        b'{"type":"error","code":"unauthorized","message":"bad key"}',
        Error(code="unauthorized", message="bad key"),
    ),
    (b'{"type":"ack","version":9}', Ack(version=9)),
    (b'{"type":"resync"}', Resync()),
    (b'{"version":9,"type":"ack","extra":"ignored"}', Ack(version=9)),
]


@pytest.mark.parametrize(("frame", "message"), VALID, ids=[m.type for _, m in VALID])
def test_decode_valid(frame: bytes, message: Message) -> None:
    assert decode(frame) == message
    assert decode(frame.decode()) == message
    assert decode(encode(message)) == message


INVALID: list[tuple[bytes, str]] = [
    (b"", "not valid JSON"),
    (b"{", "not valid JSON"),
    (b"\xff\xfe", "not valid JSON"),
    (b"[]", "must be a JSON object, got list"),
    (b'"ack"', "must be a JSON object, got str"),
    (b"{}", "frame has no type"),
    (b'{"type":"bogus"}', "unknown message type"),
    (b'{"type":7}', "unknown message type"),
    (b'{"type":"ack"}', "ack.version: expected a non-negative integer, got nothing"),
    (b'{"type":"ack","version":-1}', "ack.version: expected a non-negative integer"),
    (b'{"type":"ack","version":1.0}', "ack.version: expected a non-negative integer"),
    (b'{"type":"ack","version":true}', "ack.version: expected a non-negative integer"),
    (
        b'{"type":"hello","protocol":2,"env":"p","epoch":"","version":0}',
        "unsupported protocol version",
    ),
    (
        b'{"type":"hello","protocol":true,"env":"p","epoch":"","version":0}',
        "unsupported protocol version",
    ),
    (b'{"type":"hello","env":"p","epoch":"","version":0}', "unsupported protocol version"),
    (
        b'{"type":"hello","protocol":1,"env":"","epoch":"","version":0}',
        "hello.env: expected a non-empty string",
    ),
    (
        b'{"type":"hello","protocol":1,"env":"p","epoch":"","version":0,"heartbeat":0}',
        "hello.heartbeat",
    ),
    (
        b'{"type":"hello","protocol":1,"env":"p","epoch":"","version":0,"heartbeat":"15"}',
        "hello.heartbeat",
    ),
    (b'{"type":"hello","protocol":1,"env":"p","epoch":5,"version":0}', "hello.epoch"),
    (b'{"type":"patch","kind":"flag","key":"f","data":{"key":"g"},"version":1}', "does not match"),
    (
        b'{"type":"patch","kind":"flag","key":"f","data":[],"version":1}',
        "patch.data: expected an object",
    ),
    (
        b'{"type":"patch","kind":"rule","key":"f","data":{"key":"f"},"version":1}',
        "patch.kind: expected one of flag, segment",
    ),
    (
        b'{"type":"patch","kind":"flag","key":"F F","data":{"key":"F F"},"version":1}',
        "is not a valid key",
    ),
    (b'{"type":"patch","kind":"flag","key":"f","data":{"key":"f"}}', "patch.version"),
    (b'{"type":"delete","kind":"flag","version":1}', "delete.key: expected a string"),
    # the model refuses "f\n" as a key; the protocol must too (one pattern, ending in \Z)
    (
        b'{"type":"patch","kind":"flag","key":"f\\n","data":{"key":"f\\n"},"version":1}',
        "is not a valid key",
    ),
    (b'{"type":"delete","kind":"flag","key":"f\\n","version":1}', "is not a valid key"),
    (
        b'{"type":"snapshot","env":"p","epoch":"e","version":1,'
        b'"flags":{"f\\n":{"key":"f\\n"}},"segments":{}}',
        "is not a valid key",
    ),
    (
        b'{"type":"snapshot","env":"p","epoch":"e","version":1,"flags":[],"segments":{}}',
        "snapshot.flags: expected an object",
    ),
    (
        b'{"type":"snapshot","env":"p","epoch":"e","version":1,"flags":{},"segments":{"S":{}}}',
        "is not a valid key",
    ),
    (
        b'{"type":"snapshot","env":"p","epoch":"e","version":1,"flags":{"f":1},"segments":{}}',
        "expected an object",
    ),
    (b'{"type":"error","code":"x"}', "error.message: expected a string"),
]


@pytest.mark.parametrize(
    ("frame", "fragment"), INVALID, ids=[f.decode("latin-1")[:40] for f, _ in INVALID]
)
def test_decode_invalid(frame: bytes, fragment: str) -> None:
    with pytest.raises(ProtocolError) as info:
        decode(frame)
    assert fragment in str(info.value)


def test_max_size() -> None:
    frame = encode(Ack(version=1))
    assert decode(frame, max_size=len(frame)) == Ack(version=1)
    with pytest.raises(ProtocolError, match="exceeds the limit"):
        decode(b" " * (MAX_CLIENT_FRAME + 1) + frame, max_size=MAX_CLIENT_FRAME)


def test_encoding_field_order() -> None:
    assert encode(Patch(kind="flag", key="f", data=DOC, version=12)) == (
        b'{"type":"patch","kind":"flag","key":"f","data":{"key":"f","on":true},"version":12}'
    )
    assert encode(Delete(kind="segment", key="s", version=3)) == (
        b'{"type":"delete","kind":"segment","key":"s","version":3}'
    )
    hello = orjson.loads(encode(Hello(env="p", epoch="e", version=1)))
    assert list(hello)[:2] == ["type", "protocol"]
    assert hello["protocol"] == PROTOCOL_VERSION


def test_close_codes() -> None:
    assert (CloseCode.RESYNC, CloseCode.UNAUTHORIZED, CloseCode.BAD_MESSAGE) == (4000, 4001, 4002)
    assert (CloseCode.RATE_LIMITED, CloseCode.GOING_AWAY, CloseCode.MESSAGE_TOO_BIG) == (
        4003,
        1001,
        1009,
    )


def test_messages_are_frozen() -> None:
    with pytest.raises(AttributeError):
        Ack(version=1).version = 2  # type: ignore[misc]


# --- properties ---------------------------------------------------------------

text = st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=12)
keys = st.from_regex(r"\A[a-z0-9][a-z0-9._-]{0,20}\Z")
versions = st.integers(0, 2**63 - 1)
json_leaf = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | text
)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=12,
)


@st.composite
def documents(draw: st.DrawFn, key: str) -> dict[str, Any]:
    doc: dict[str, Any] = draw(st.dictionaries(text, json_value, max_size=4))
    doc["key"] = key
    return doc


@st.composite
def keyed_docs(draw: st.DrawFn) -> dict[str, dict[str, Any]]:
    return {k: draw(documents(k)) for k in draw(st.lists(keys, max_size=3, unique=True))}


@st.composite
def patches(draw: st.DrawFn) -> Patch:
    key = draw(keys)
    return Patch(
        kind=draw(st.sampled_from(["flag", "segment"])),
        key=key,
        data=draw(documents(key)),
        version=draw(versions),
    )


messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(
        Hello,
        env=text.filter(bool),
        epoch=text,
        version=versions,
        heartbeat=st.floats(0.001, 86399),
        server=text,
    ),
    st.builds(
        SnapshotMessage,
        env=text.filter(bool),
        epoch=text,
        version=versions,
        flags=keyed_docs(),
        segments=keyed_docs(),
    ),
    patches(),
    st.builds(Delete, kind=st.sampled_from(["flag", "segment"]), key=keys, version=versions),
    st.builds(Error, code=text, message=text),
    st.builds(Ack, version=versions),
    st.just(Resync()),
)


@settings(max_examples=150, deadline=None)
@given(message=messages)
def test_round_trip(message: Message) -> None:
    assert decode(encode(message)) == message


@settings(max_examples=100, deadline=None)
@given(message=patches())
def test_patch_template_splices_the_version(message: Patch) -> None:
    prefix, suffix = patch_template(message.kind, message.key, message.data)
    assert prefix + str(message.version).encode() + suffix == encode(message)
    prefix, suffix = patch_template(message.kind, message.key, None)
    delete = Delete(kind=message.kind, key=message.key, version=message.version)
    assert prefix + str(message.version).encode() + suffix == encode(delete)


@settings(max_examples=500, deadline=None)
@given(data=st.binary(max_size=200))
def test_decode_arbitrary_bytes_raises_only_protocol_error(data: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        decode(data, max_size=100)


fields = st.sampled_from(
    [
        "type",
        "version",
        "kind",
        "key",
        "data",
        "env",
        "epoch",
        "flags",
        "segments",
        "protocol",
        "heartbeat",
        "code",
        "message",
        "server",
    ]
)
type_names = st.sampled_from(["hello", "snapshot", "patch", "delete", "error", "ack", "resync"])


@settings(max_examples=250, deadline=None)
@given(
    obj=st.dictionaries(fields, json_value | type_names | keys | versions, max_size=8) | json_value
)
def test_decode_arbitrary_json_raises_only_protocol_error(obj: Any) -> None:
    frame = orjson.dumps(obj)
    try:
        message = decode(frame)
    except ProtocolError:
        return
    assert decode(encode(message)) == message
