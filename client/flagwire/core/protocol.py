"""flagwire wire protocol, version 1: message types and their one encoding.

Sans-I/O: this module turns bytes into messages and messages into bytes and
knows nothing of sockets.  Every frame is a JSON object (UTF-8, a WebSocket
text frame) with a ``type``.  See ``docs/protocol.md``.

Server → client: ``hello``, ``snapshot``, ``patch``, ``delete``, ``error``, ``watch``.
Client → server: ``ack``, ``resync``, ``identify``, ``summary``.

The fleet-insight messages (``identify``, ``summary``, ``watch``) are defined
and bounded in :mod:`flagwire.core.reports`; they are messages like any other
here.

Every state-changing message carries the environment ``version`` it
produces; versions rise by exactly one per change, so a receiver that sees
``version != current + 1`` has missed something and must resync.

The protocol's constants (``PROTOCOL_VERSION``, ``STREAM_PATH``, the frame
limits, the key pattern) live in :mod:`flagwire.core.limits`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal, TypeAlias

import orjson

from flagwire.core._flags import FlagDocs
from flagwire.core.errors import ProtocolError
from flagwire.core.limits import DEFAULT_HEARTBEAT, KEY_RE, PROTOCOL_VERSION
from flagwire.core.reports import Identify, Summary, Watch, decode_report, report_object

__all__ = [
    "Ack",
    "CloseCode",
    "Delete",
    "Error",
    "Hello",
    "Identify",
    "Kind",
    "Message",
    "Patch",
    "Resync",
    "SnapshotMessage",
    "Summary",
    "Watch",
    "ack_version",
    "decode",
    "encode",
    "patch_template",
]

Kind: TypeAlias = Literal["flag", "segment"]
_KINDS: Final = ("flag", "segment")


class CloseCode:
    """WebSocket close codes and what a client must do on each."""

    NORMAL = 1000
    GOING_AWAY = 1001  # server shutting down: reconnect (elsewhere) and resume
    PROTOCOL_ERROR = 1002
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    TRY_AGAIN_LATER = 1013  # overloaded: reconnect with backoff
    RESYNC = 4000  # fell behind or state unknown: reconnect without ``since``
    UNAUTHORIZED = 4001  # key revoked: stop, do not retry
    BAD_MESSAGE = 4002  # the peer sent a frame that is not a valid message
    RATE_LIMITED = 4003  # too many messages from the client


@dataclass(frozen=True, slots=True)
class Hello:
    """First server message: who is speaking and where the environment stands."""

    env: str
    epoch: str
    version: int
    heartbeat: float = DEFAULT_HEARTBEAT
    server: str = "flagwire"
    protocol: int = PROTOCOL_VERSION
    type: Literal["hello"] = field(default="hello", init=False, repr=False)


@dataclass(frozen=True, slots=True)
class SnapshotMessage:
    """The whole environment at ``version``; replaces whatever the receiver had."""

    env: str
    epoch: str
    version: int
    flags: Mapping[str, dict[str, Any]]
    segments: Mapping[str, dict[str, Any]]
    type: Literal["snapshot"] = field(default="snapshot", init=False, repr=False)


@dataclass(frozen=True, slots=True)
class Patch:
    """One flag or segment created or replaced, producing environment ``version``."""

    kind: Kind
    key: str
    data: dict[str, Any]
    version: int
    type: Literal["patch"] = field(default="patch", init=False, repr=False)


@dataclass(frozen=True, slots=True)
class Delete:
    """One flag or segment deleted, producing environment ``version``."""

    kind: Kind
    key: str
    version: int
    type: Literal["delete"] = field(default="delete", init=False, repr=False)


@dataclass(frozen=True, slots=True)
class Error:
    """Something the receiver should report; usually followed by a close."""

    code: str
    message: str
    type: Literal["error"] = field(default="error", init=False, repr=False)


@dataclass(frozen=True, slots=True)
class Ack:
    """Client → server: every change up to and including ``version`` is applied."""

    version: int
    type: Literal["ack"] = field(default="ack", init=False, repr=False)


@dataclass(frozen=True, slots=True)
class Resync:
    """Client → server: send me a fresh snapshot (I saw a gap or bad data)."""

    type: Literal["resync"] = field(default="resync", init=False, repr=False)


Message: TypeAlias = (
    Hello | SnapshotMessage | Patch | Delete | Error | Ack | Resync | Identify | Summary | Watch
)


def encode(message: Message) -> bytes:
    """Serialise ``message`` to the bytes of one text frame.

    Field order is fixed (``type`` first, ``version`` last on patch and
    delete) so that :func:`patch_template` can produce identical bytes.
    """
    if isinstance(message, Patch):
        obj: dict[str, Any] = {
            "type": "patch",
            "kind": message.kind,
            "key": message.key,
            "data": message.data,
            "version": message.version,
        }
    elif isinstance(message, Delete):
        obj = {
            "type": "delete",
            "kind": message.kind,
            "key": message.key,
            "version": message.version,
        }
    elif isinstance(message, Ack):
        obj = {"type": "ack", "version": message.version}
    elif isinstance(message, SnapshotMessage):
        obj = {
            "type": "snapshot",
            "env": message.env,
            "epoch": message.epoch,
            "version": message.version,
            "flags": _encodable(message.flags),
            "segments": _encodable(message.segments),
        }
    elif isinstance(message, Hello):
        obj = {
            "type": "hello",
            "protocol": message.protocol,
            "server": message.server,
            "env": message.env,
            "epoch": message.epoch,
            "version": message.version,
            "heartbeat": message.heartbeat,
        }
    elif isinstance(message, Error):
        obj = {"type": "error", "code": message.code, "message": message.message}
    elif isinstance(message, Resync):
        obj = {"type": "resync"}
    elif isinstance(message, Identify | Summary | Watch):
        obj = report_object(message)
    else:  # pragma: no cover - exhaustive
        raise TypeError(f"not a flagwire message: {message!r}")
    return orjson.dumps(obj)


def _encodable(docs: Mapping[str, Any]) -> Mapping[str, Any]:
    """Documents orjson can write: a snapshot's flags as the JSON they are kept as."""
    if isinstance(docs, dict):
        return docs
    if isinstance(docs, FlagDocs):
        return {
            key: orjson.Fragment(raw) if isinstance(raw, bytes) else raw
            for key, raw in docs.raw_items()
        }
    return dict(docs)


def patch_template(kind: Kind, key: str, data: dict[str, Any] | None) -> tuple[bytes, bytes]:
    """Return ``(prefix, suffix)`` with ``prefix + str(v) + suffix == encode(message)``.

    The store only learns the environment version inside its atomic write, so
    it stores the change as a template and splices the version in there; the
    encoded bytes are then forwarded to every client untouched.  ``data`` None
    means a delete.
    """
    if data is None:
        body = orjson.dumps({"type": "delete", "kind": kind, "key": key, "version": 0})
    else:
        body = orjson.dumps({"type": "patch", "kind": kind, "key": key, "data": data, "version": 0})
    cut = body.rindex(b"0}")
    return body[:cut], body[cut + 1 :]


# --- decoding -------------------------------------------------------------


def _fail(msg: str) -> ProtocolError:
    return ProtocolError(msg)


def _int(obj: dict[str, Any], name: str, where: str) -> int:
    value = obj.get(name)
    if type(value) is not int or value < 0:
        raise _fail(f"{where}.{name}: expected a non-negative integer, got {_show(value)}")
    return value


def _str(obj: dict[str, Any], name: str, where: str, *, empty: bool = True) -> str:
    value = obj.get(name)
    if not isinstance(value, str) or (not empty and not value):
        raise _fail(
            f"{where}.{name}: expected a {'' if empty else 'non-empty '}string, got {_show(value)}"
        )
    return value


def _key(obj: dict[str, Any], where: str) -> str:
    key = _str(obj, "key", where)
    if not KEY_RE.match(key):
        raise _fail(f"{where}.key: {key[:140]!r} is not a valid key")
    return key


def _kind(obj: dict[str, Any], where: str) -> Kind:
    kind = obj.get("kind")
    if kind == "flag":
        return "flag"
    if kind == "segment":
        return "segment"
    raise _fail(f"{where}.kind: expected one of flag, segment, got {_show(kind)}")


def _doc(value: Any, key: str, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _fail(f"{where}: expected an object, got {_show(value)}")
    if value.get("key") != key:
        raise _fail(f"{where}.key: document key {_show(value.get('key'))} does not match {key!r}")
    return value


def _docs(obj: dict[str, Any], name: str, where: str) -> dict[str, dict[str, Any]]:
    value = obj.get(name)
    if not isinstance(value, dict):
        raise _fail(f"{where}.{name}: expected an object, got {_show(value)}")
    for key, doc in value.items():
        if not KEY_RE.match(key):
            raise _fail(f"{where}.{name}: {key[:140]!r} is not a valid key")
        _doc(doc, key, f"{where}.{name}[{key!r}]")
    return value


def _show(value: Any) -> str:
    if value is None:
        return "nothing"
    text = repr(value)
    return f"{type(value).__name__} {text[:40]}{'...' if len(text) > 40 else ''}"


#: An ack as :func:`encode` writes it, up to the version's digits.
_ACK_PREFIX: Final = b'{"type":"ack","version":'
_ACK_DIGITS: Final = slice(len(_ACK_PREFIX), -1)


def ack_version(frame: bytes) -> int | None:
    """The version of ``frame`` if it is an ack exactly as :func:`encode` writes it.

    Every client sends one per change, so a server reads them without the
    generic :func:`decode`.  None for anything else, including acks spelled
    another way: :func:`decode` then answers, and agrees wherever this does.
    """
    if not (frame.startswith(_ACK_PREFIX) and frame.endswith(b"}")):
        return None
    digits = frame[_ACK_DIGITS]
    if 0 < len(digits) <= 18 and digits.isdigit() and (digits[0] != 48 or len(digits) == 1):
        return int(digits)
    return None


def decode(data: bytes | str, *, max_size: int | None = None) -> Message:
    """Parse one frame into a message.

    Args:
        data: the frame's payload.
        max_size: refuse frames longer than this many bytes.

    Raises:
        ProtocolError: for anything that is not a valid message of protocol
            version 1 — bad JSON, an unknown ``type``, a missing or mistyped
            field, an oversized frame.  Never any other exception.
    """
    try:
        size = len(data)
        if max_size is not None and size > max_size:
            raise _fail(f"frame of {size} bytes exceeds the limit of {max_size}")
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise _fail(f"frame is not valid JSON: {exc}") from None
        if not isinstance(obj, dict):
            raise _fail(f"frame must be a JSON object, got {type(obj).__name__}")
        kind = obj.get("type")
        if kind == "patch":
            key = _key(obj, "patch")
            return Patch(
                kind=_kind(obj, "patch"),
                key=key,
                data=_doc(obj.get("data"), key, "patch.data"),
                version=_int(obj, "version", "patch"),
            )
        if kind == "delete":
            return Delete(
                kind=_kind(obj, "delete"),
                key=_key(obj, "delete"),
                version=_int(obj, "version", "delete"),
            )
        if kind == "ack":
            return Ack(version=_int(obj, "version", "ack"))
        if kind == "snapshot":
            return SnapshotMessage(
                env=_str(obj, "env", "snapshot", empty=False),
                epoch=_str(obj, "epoch", "snapshot"),
                version=_int(obj, "version", "snapshot"),
                flags=_docs(obj, "flags", "snapshot"),
                segments=_docs(obj, "segments", "snapshot"),
            )
        if kind == "hello":
            protocol = obj.get("protocol")
            if protocol != PROTOCOL_VERSION or type(protocol) is not int:
                raise _fail(
                    f"hello.protocol: unsupported protocol version {_show(protocol)}; expected 1"
                )
            heartbeat = obj.get("heartbeat", DEFAULT_HEARTBEAT)
            if type(heartbeat) not in (int, float) or not 0 < heartbeat < 86400:
                got = _show(heartbeat)
                raise _fail(f"hello.heartbeat: expected a positive number of seconds, got {got}")
            return Hello(
                env=_str(obj, "env", "hello", empty=False),
                epoch=_str(obj, "epoch", "hello"),
                version=_int(obj, "version", "hello"),
                heartbeat=float(heartbeat),
                server=_str(obj, "server", "hello") if "server" in obj else "flagwire",
            )
        if kind == "error":
            return Error(code=_str(obj, "code", "error"), message=_str(obj, "message", "error"))
        if kind == "resync":
            return Resync()
        if kind in ("summary", "identify", "watch"):
            return decode_report(kind, obj)
        if kind is None:
            raise _fail("frame has no type")
        raise _fail(f"unknown message type {_show(kind)}")
    except ProtocolError:
        raise
    except (
        Exception
    ) as exc:  # pragma: no cover - defence in depth: decode raises only ProtocolError
        raise _fail(f"undecodable frame: {type(exc).__name__}: {exc}") from None
