"""WebSocket frames built once per change and written as bytes to every stream.

Server frames are unmasked text frames without extensions (per-message
deflate is off), so the bytes a change is framed into once are valid on
every connection of its environment.
"""

from __future__ import annotations

from websockets.frames import Frame, Opcode

__all__ = ["frame_of", "payload_of"]


def frame_of(payload: bytes) -> bytes:
    """The complete unmasked WebSocket text frame carrying ``payload``."""
    return bytes(Frame(Opcode.TEXT, payload).serialize(mask=False, extensions=[]))


def payload_of(frame: bytes) -> bytes:
    """Inverse of :func:`frame_of` (the fallback path sends payloads through ASGI)."""
    n = frame[1] & 0x7F
    return frame[2:] if n < 126 else frame[4:] if n == 126 else frame[10:]
