"""The plain WebSocket upgrade request, read and answered without websockets' HTTP parser.

Why: in a reconnect storm every handshake costs the server CPU, and uvicorn
hands websockets the request it has already parsed with httptools, re-serialised,
for websockets to parse again in Python (a generator step per line, a regex
pair and a ``Headers`` insert per header) and to answer with a ``Response``
object, a formatted date and a serialisation: about a fifth of a resume's
server time (bench/results/capacity-storm-profile.txt).  Here a split and a
few comparisons read the same request, and the 101 is spelled directly.

Only the plain case is read: a request that websockets (configured as
flagwire configures it: no extensions, no subprotocols, no origin list) would
answer with 101.  Anything else — a method or version other than GET
HTTP/1.1, a missing, repeated or malformed ``Sec-WebSocket-Key``,
``Sec-WebSocket-Version``, ``Upgrade`` or ``Connection``, a second ``Origin``,
a subprotocol, a body, a line or header count past websockets' limits, a byte
outside printable ASCII — gives None, and the caller hands the bytes to
websockets as before, so every refusal is still websockets' own, byte for byte.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from websockets.http11 import MAX_LINE_LENGTH, MAX_NUM_HEADERS

__all__ = ["Upgrade", "read_upgrade", "switching_protocols"]

_GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455, section 1.3
#: RFC 9110 tokens, one per line (one regex call checks all header names; no line
#: can hold a LF, so none can pass as two).
_TOKENS: Final = re.compile(rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+(?:\n[-!#$%&'*+.^_`|~0-9a-zA-Z]+)*")
#: Printable ASCII, tabs and line ends: stricter than websockets, which allows obs-text.
_PRINTABLE: Final = re.compile(rb"[\t\r\n\x20-\x7e]*")
#: Headers whose presence alone sends the request to websockets: a body, a subprotocol.
_ELSEWHERE: Final = frozenset((b"transfer-encoding", b"content-length", b"sec-websocket-protocol"))
#: How clients spell the key header.  The HTTP protocol tries every connection's first
#: request here, admin GETs included: without one of these it is not parsed (0.2 µs, not
#: 5); an upgrade spelled otherwise is still read, by httptools and websockets.
_KEY_SPELLINGS: Final = (b"Sec-WebSocket-Key:", b"sec-websocket-key:", b"Sec-Websocket-Key:")
_101: Final = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"


@dataclass(frozen=True, slots=True)
class Upgrade:
    """A plain upgrade request: what the ASGI scope needs, and the key's answer."""

    target: str  #: the request target (path and query), ASCII
    #: As sent, in order; names lower-cased (as ASGI wants them), values stripped of
    #: spaces and tabs.
    headers: list[tuple[bytes, bytes]]
    accept: bytes  #: the ``Sec-WebSocket-Accept`` value for the key


def read_upgrade(data: bytes) -> Upgrade | None:
    """The upgrade request in ``data`` (exactly one, nothing after it), or None if not plain."""
    if not data.endswith(b"\r\n\r\n") or not any(k in data for k in _KEY_SPELLINGS):
        return None
    if not _PRINTABLE.fullmatch(data):
        return None
    lines = data[:-4].split(b"\r\n")
    # A CR or LF anywhere but in the CRLFs, or an empty line (the end of headers) before the end.
    if data.count(b"\n") != len(lines) + 1 or data.count(b"\r") != len(lines) + 1:
        return None
    if len(lines) - 1 > MAX_NUM_HEADERS:
        return None
    method, _, rest = lines[0].partition(b" ")
    target, _, version = rest.partition(b" ")
    if method != b"GET" or version != b"HTTP/1.1" or not target or not target.isascii():
        return None
    connection_upgrade = False
    upgrade = key = ws_version = None
    origins = 0
    headers: list[tuple[bytes, bytes]] = []
    names: list[bytes] = []
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or len(line) + 2 > MAX_LINE_LENGTH:
            return None
        value = value.strip(b" \t")
        lower = name.lower()
        headers.append((lower, value))
        names.append(name)
        if lower == b"connection":
            options = [option.strip(b" \t") for option in value.split(b",")]
            if not _TOKENS.fullmatch(b"\n".join(options)):
                return None
            connection_upgrade |= b"upgrade" in (option.lower() for option in options)
        elif lower == b"upgrade":
            if upgrade is not None:
                return None
            upgrade = value
        elif lower == b"sec-websocket-key":
            if key is not None:
                return None
            key = value
        elif lower == b"sec-websocket-version":
            if ws_version is not None:
                return None
            ws_version = value
        elif lower == b"origin":
            origins += 1
        elif lower in _ELSEWHERE:
            return None
    if (
        not _TOKENS.fullmatch(b"\n".join(names))
        or not connection_upgrade
        or upgrade is None
        or upgrade.lower() != b"websocket"
        or ws_version != b"13"
        or key is None
        or origins > 1
        or len(lines[0]) + 2 > MAX_LINE_LENGTH
    ):
        return None
    try:
        if len(binascii.a2b_base64(key, strict_mode=True)) != 16:
            return None
    except binascii.Error:
        return None
    accept = base64.b64encode(hashlib.sha1(key + _GUID).digest())
    return Upgrade(target.decode("ascii"), headers, accept)


def switching_protocols(accept: bytes, headers: Iterable[tuple[bytes, bytes]]) -> bytes:
    """The 101 response websockets and uvicorn would write: their headers, then ``headers``.

    ``headers`` must be ASCII (uvicorn lower-cases their names, as done here).
    """
    extra = b"".join(b"%s: %s\r\n" % (name.lower(), value) for name, value in headers)
    return b"%sSec-WebSocket-Accept: %s\r\n%s\r\n" % (_101, accept, extra)
